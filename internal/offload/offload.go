// Package offload finishes what a Linux device with its offloads left on
// hands to user space (a packet socket with PACKET_VNET_HDR, a TUN device
// with IFF_VNET_HDR): checksums only begun and GSO/GRO super-packets,
// described by the virtio_net_hdr before each. It turns them into the
// packets the wire would have carried. It does not coalesce (GRO) on the
// way back: that is the TUN writer's job.
package offload

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/espep/espep/ipsec/header"
)

// A NIC (or a veth, or the stack routing into a TUN device) with its
// offloads left on hands user space frames the kernel has not finished: checksums only begun
// (CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the rest is
// the NIC's job), and GSO/GRO super-frames that carry many segments'
// payload under one header. Forwarded as they are, the receiver drops
// them. With PACKET_VNET_HDR each frame comes after a virtio_net_hdr
// that says so; finish completes the checksum and cuts a super-frame
// into the segments the wire would have carried, so that everything
// after it — netem, the engine, the gateway — sees ordinary frames.
//
//	struct virtio_net_hdr {          (little-endian on the hosts here)
//	    u8  flags;                   VIRTIO_NET_HDR_F_NEEDS_CSUM = 1, _DATA_VALID = 2
//	    u8  gso_type;                NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5; | ECN 0x80
//	    u16 hdr_len;                 headers before the payload (a hint)
//	    u16 gso_size;                payload bytes per segment
//	    u16 csum_start;              where checksumming starts (from the frame's start)
//	    u16 csum_offset;             where, from csum_start, the sum goes
//	};

// HdrLen is the length of struct virtio_net_hdr.
const HdrLen = 10

// The header's flags and GSO types.
const (
	NeedsCsum = 1
	DataValid = 2 // the kernel verified the packet's checksum (CHECKSUM_UNNECESSARY)
	GSONone   = 0
	GSOTCPv4  = 1
	GSOUDP    = 3 // UFO: IP fragmentation, which no current kernel produces
	GSOTCPv6  = 4
	GSOUDPL4  = 5
	GSOECN    = 0x80
)

// Hdr is a parsed virtio_net_hdr.
type Hdr struct {
	Flags, GSOType                         uint8
	HdrLen, GSOSize, CsumStart, CsumOffset int
}

// ParseHdr reads the virtio_net_hdr at the start of b.
func ParseHdr(b []byte) (Hdr, error) {
	if len(b) < HdrLen {
		return Hdr{}, fmt.Errorf("virtio_net_hdr: %d bytes: %w", len(b), header.ErrTruncated)
	}
	return Hdr{Flags: b[0], GSOType: b[1], HdrLen: int(binary.LittleEndian.Uint16(b[2:])),
		GSOSize: int(binary.LittleEndian.Uint16(b[4:])), CsumStart: int(binary.LittleEndian.Uint16(b[6:])),
		CsumOffset: int(binary.LittleEndian.Uint16(b[8:]))}, nil
}

// ErrOffload is what a frame the package cannot finish is refused with.
var ErrOffload = errors.New("offloaded frame")

// Finish turns frame — what a read gave after h: l2 bytes of link-layer
// header (an Ethernet header; none from a TUN device), then an IP packet —
// into the frames the wire would carry, each handed to emit (in place
// where it can, segments in scratch: emit must not keep its argument).
// It reports whether it completed a checksum and how many segments a
// super-frame became (0: none was).
func Finish(h Hdr, frame []byte, l2 int, scratch []byte, emit func([]byte)) (csum bool, segs int, err error) {
	switch h.GSOType &^ GSOECN {
	case GSONone:
		if h.Flags&NeedsCsum != 0 {
			if err := CompleteChecksum(frame, h.CsumStart, h.CsumOffset); err != nil {
				return false, 0, err
			}
			csum = true
		}
		emit(frame)
		return csum, 0, nil
	case GSOTCPv4, GSOTCPv6, GSOUDPL4:
		// Every segment's checksum is computed whole: the partial one
		// goes with the super-frame.
		n, err := segment(frame, l2, h.GSOSize, scratch, emit)
		return false, n, err
	}
	return false, 0, fmt.Errorf("gso type %d: %w", h.GSOType, ErrOffload)
}

// CompleteChecksum finishes a CHECKSUM_PARTIAL frame: the one's
// complement sum from start to the end of the frame (the field at
// start+off holds the pseudo-header sum), folded, complemented, stored.
func CompleteChecksum(frame []byte, start, off int) error {
	if start < 0 || off < 0 || start+off+2 > len(frame) {
		return fmt.Errorf("checksum at %d+%d outside a %d-byte frame: %w", start, off, len(frame), ErrOffload)
	}
	binary.BigEndian.PutUint16(frame[start+off:], ^header.Checksum(frame[start:], 0))
	return nil
}

// EtherLen is the length of the Ethernet header before an Ethernet
// frame's payload: 14, or 18 with a VLAN tag.
func EtherLen(frame []byte) int {
	if len(frame) >= 18 && binary.BigEndian.Uint16(frame[12:]) == 0x8100 {
		return 18
	}
	return 14
}

// MaxSegments bounds what one super-frame may become (64 KB of 536-byte
// segments is 123).
const MaxSegments = 128

// segment cuts a TCP or UDP super-frame into frames of at most mss
// payload bytes each, with headers made as the sender's stack would have
// made them: IPv4 identification counting up, lengths, TCP sequence
// numbers, FIN and PSH on the last segment only, CWR on the first only,
// and every checksum whole. Each frame is built in scratch (or a buffer of
// its own if scratch is too small) and valid only during its emit.
func segment(frame []byte, eth, mss int, scratch []byte, emit func([]byte)) (int, error) {
	c, err := cut(frame, eth, mss)
	if err != nil {
		return 0, err
	}
	if c.n <= 1 {
		f := frame[:c.hdrs+len(c.payload)]
		finishL4(f, eth, &c.ip)
		emit(f)
		return 1, nil
	}
	buf := scratch
	if cap(buf) < c.hdrs+mss {
		buf = make([]byte, c.hdrs+mss)
	}
	for i := range c.n {
		emit(c.build(buf, frame, eth, mss, i))
	}
	return c.n, nil
}

// SegmentInto is segment for a TUN device's super-packet (an IP packet,
// no link-layer header) after h: segment i goes to bufs[i][off:], its
// length to sizes[i]. It returns how many segments there are, or an error
// (nothing usable written) if the packet cannot be cut or they do not
// fit in bufs. pkt may be bufs[0][off:] itself — the reader's first
// buffer, read into — because segment 0, whose headers every other
// segment copies, is built last, where its payload already is.
func SegmentInto(h Hdr, pkt []byte, bufs [][]byte, off int, sizes []int) (int, error) {
	switch h.GSOType &^ GSOECN {
	case GSOTCPv4, GSOTCPv6, GSOUDPL4:
	default:
		return 0, fmt.Errorf("gso type %d: %w", h.GSOType, ErrOffload)
	}
	c, err := cut(pkt, 0, h.GSOSize)
	if err != nil {
		return 0, err
	}
	n := max(c.n, 1) // a super-packet without payload is its headers
	if n > len(bufs) || n > len(sizes) {
		return 0, fmt.Errorf("%d segments for %d buffers: %w", n, min(len(bufs), len(sizes)), ErrOffload)
	}
	for i := range n {
		if need := off + c.hdrs + min(h.GSOSize, len(c.payload)-i*h.GSOSize); len(bufs[i]) < need {
			return 0, fmt.Errorf("segment %d: %d bytes for %d: %w", i, len(bufs[i]), need, ErrOffload)
		}
	}
	if n == 1 {
		f := pkt[:c.hdrs+len(c.payload)]
		finishL4(f, 0, &c.ip)
		sizes[0] = copy(bufs[0][off:], f)
		return 1, nil
	}
	for i := c.n - 1; i >= 0; i-- {
		sizes[i] = len(c.build(bufs[i][off:], pkt, 0, h.GSOSize, i))
	}
	return c.n, nil
}

// cutting is a super-frame's layout: its parsed IP headers, the length
// of all headers before the payload, the payload, and how many segments
// of the size asked it makes.
type cutting struct {
	ip      header.Parsed
	hdrs, n int
	payload []byte
}

// cut checks a super-frame (eth bytes of link-layer header first) and
// lays it out in segments of mss payload bytes.
func cut(frame []byte, eth, mss int) (cutting, error) {
	var c cutting
	if eth < 0 || len(frame) <= eth {
		return c, fmt.Errorf("%d-byte frame: %w", len(frame), header.ErrTruncated)
	}
	if err := header.Parse(frame[eth:], &c.ip); err != nil {
		return c, err
	}
	ip := &c.ip
	if ip.Fragment || ip.Proto != header.ProtoTCP && ip.Proto != header.ProtoUDP || mss <= 0 {
		return c, fmt.Errorf("gso of protocol %d (fragment %v, size %d): %w", ip.Proto, ip.Fragment, mss, ErrOffload)
	}
	pkt := frame[eth : eth+ip.Len]
	hl := header.UDPLen
	if ip.Proto == header.ProtoTCP {
		t, err := header.ParseTCP(pkt[ip.L4:])
		if err != nil {
			return c, err
		}
		hl = t.HeaderLen()
	} else if len(pkt) < ip.L4+hl {
		return c, fmt.Errorf("udp header: %w", header.ErrTruncated)
	}
	c.hdrs = eth + ip.L4 + hl
	c.payload = frame[c.hdrs : eth+ip.Len]
	c.n = (len(c.payload) + mss - 1) / mss
	if c.n > MaxSegments {
		return c, fmt.Errorf("%d segments: %w", c.n, ErrOffload)
	}
	return c, nil
}

// build makes segment i of frame in buf (which has room for the headers
// and mss bytes) and returns it.
func (c *cutting) build(buf, frame []byte, eth, mss, i int) []byte {
	chunk := c.payload[i*mss : min((i+1)*mss, len(c.payload))]
	f := buf[:c.hdrs+len(chunk)]
	copy(f, frame[:c.hdrs])
	copy(f[c.hdrs:], chunk)
	fixLengths(f, eth, &c.ip, i, i == 0, i == c.n-1)
	if c.ip.Proto == header.ProtoTCP {
		t := header.TCP(f[eth+c.ip.L4:])
		t.SetSeq(t.Seq() + uint32(i*mss))
	}
	finishL4(f, eth, &c.ip)
	return f
}

// fixLengths makes frame f (segment i of a super-frame whose headers ip
// describes) say its own length; TCP flags as the segment's position
// wants.
func fixLengths(f []byte, eth int, ip *header.Parsed, i int, first, last bool) {
	pkt := f[eth:]
	if ip.Version == 4 {
		h := header.IPv4(pkt)
		h.SetTotalLen(len(pkt))
		h.SetID(h.ID() + uint16(i))
		h.UpdateChecksum()
	} else {
		binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-header.IPv6Len))
	}
	l4 := pkt[ip.L4:]
	if ip.Proto == header.ProtoUDP {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		return
	}
	t := header.TCP(l4)
	flags := t.Flags()
	if !last {
		flags &^= header.TCPFin | header.TCPPsh
	}
	if !first {
		flags &^= header.TCPCwr
	}
	t.SetFlags(flags)
}

// finishL4 computes a segment's TCP or UDP checksum whole.
func finishL4(f []byte, eth int, ip *header.Parsed) {
	pkt := f[eth:]
	l4 := pkt[ip.L4:]
	// The addresses from the header itself (netip's AsSlice allocates).
	src, dst := pkt[12:16], pkt[16:20]
	if ip.Version == 6 {
		src, dst = pkt[8:24], pkt[24:40]
	}
	sum := header.PseudoHeaderSum(src, dst, ip.Proto, len(l4))
	if ip.Proto == header.ProtoTCP {
		l4[16], l4[17] = 0, 0
		binary.BigEndian.PutUint16(l4[16:], ^header.Checksum(l4, sum))
		return
	}
	l4[6], l4[7] = 0, 0
	c := ^header.Checksum(l4, sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[6:], c)
}
