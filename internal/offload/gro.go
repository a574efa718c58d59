package offload

import (
	"bytes"
	"encoding/binary"

	"github.com/espep/espep/ipsec/header"
)

// Coalescing (GRO) for writes into a TUN device with its virtio header
// on. A batch's TCP segments of one flow that follow each other in
// sequence become one GSO super-packet: the kernel takes it through its
// stack once and cuts it (tcp_gso_segment) only where it must — on the
// way out of a device without TSO — into exactly the segments that went
// in. That is what makes a write of many packets cost about one packet.
// With Coalescer.UDP, a flow's UDP datagrams of one size (the last may be
// shorter) do the same (GSO_UDP_L4, __udp_gso_segment): ESP in UDP, a
// datagram per packet, is what a gateway writes most.
//
// Only what the kernel's segmentation gives back unchanged is merged:
// IPv4 without options or fragments, its identification counting up by
// one, and TOS, TTL and flags equal; IPv6 without extension headers, its
// first word and hop limit equal; TCP with only ACK set (PSH allowed on
// the last segment merged), the same acknowledgment, window and options,
// sequence numbers contiguous, every segment the first's size but the
// last (which may be shorter, and ends the super-packet). Anything else
// is written as it is, and ends its flow's open super-packet, so that a
// flow's packets keep their order. UDP: the same IP rules, the UDP
// length field the datagram's, at most maxUDPSegs datagrams (the kernel
// refuses more, UDP_MAX_SEGMENTS); the segmentation computes every
// datagram's checksum, so one sent without (zero, over IPv4) comes out
// with one — the same datagram to its receiver.

// maxOpen bounds the super-packets a batch keeps open at once (flows
// interleaved in one batch); beyond it, the oldest is closed.
const maxOpen = 8

// maxUDPSegs bounds the datagrams of a UDP super-packet: the kernel's
// UDP_MAX_SEGMENTS (64 before Linux 6.10, 128 since).
const maxUDPSegs = 64

// Coalescer merges a batch's segments; it keeps its scratch state
// between calls, so one per writer.
type Coalescer struct {
	// UDP: merge UDP datagrams too. The device must take GSO_UDP_L4
	// (TUN_F_USO4 and TUN_F_USO6 set, Linux 6.2 on); TCP alone otherwise.
	UDP bool

	items []groItem // one per packet to write, in order
	open  []int     // items still open to more segments
	sums  []Sum     // this call's: what stands in each packet's checksums
}

// Sum says what stands in a packet's checksums (CoalesceSums).
type Sum uint8

const (
	// SumAsCame: the checksums it came with, unverified — summed before
	// the packet is merged (intact).
	SumAsCame Sum = iota
	// SumKnown: whole, made by the writer itself — a segment it built, a
	// datagram it sealed — so merging it needs no sum of it: what intact
	// guards against is a packet corrupted or forged on its way in, and
	// this one did not come in.
	SumKnown
	// SumPartial: made by the writer, its TCP or UDP checksum left
	// partial — the pseudo header's sum alone (header.TCP's
	// SetPartialChecksum) — and its IPv4 header checksum whole. Written
	// alone it goes with VIRTIO_NET_HDR_F_NEEDS_CSUM, and the kernel, or
	// the NIC, or nobody (a veth's peer takes it as verified) completes
	// it; merged, like any segment, its sum is the super-packet's.
	SumPartial
)

// groItem is one packet to write: alone, or a super-packet being built
// in bufs[idx].
type groItem struct {
	idx     int    // the batch entry (the super-packet grows in it)
	ipLen   int    // IP header length
	l4Len   int    // TCP or UDP header length
	size    int    // payload bytes per segment (the first's)
	segs    int    // segments merged, the first included; 0: not a candidate
	nextSeq uint32 // TCP: sequence number the next segment must have
	nextID  uint16 // IPv4 identification it must have
	proto   uint8  // header.ProtoTCP or header.ProtoUDP
	v6      bool
}

// Coalesce merges bufs — each offset bytes of headroom (at least HdrLen),
// then an IP packet with whole checksums — in place and writes a
// virtio_net_hdr in the HdrLen bytes before each packet it returns the
// index of, in out (appended, in the order to write them). A merged
// super-packet grows within its first segment's buffer (up to its
// capacity; 64 KiB of IP packet at most); the other segments' entries
// are not returned.
func (c *Coalescer) Coalesce(bufs [][]byte, offset int, out []int) []int {
	return c.CoalesceSums(bufs, nil, offset, out)
}

// CoalesceSums is Coalesce where sums[i] (when sums is long enough) says
// what stands in packet i's checksums; a packet it says nothing of is
// SumAsCame.
func (c *Coalescer) CoalesceSums(bufs [][]byte, sums []Sum, offset int, out []int) []int {
	c.items, c.open, c.sums = c.items[:0], c.open[:0], sums
	for i := range bufs {
		c.merge(bufs, offset, i)
	}
	for k := range c.items {
		it := &c.items[k]
		out = append(out, it.idx)
		it.finish(bufs[it.idx], offset, c.sum(it.idx) == SumPartial)
	}
	c.sums = nil
	return out
}

// merge adds packet i to its flow's open super-packet if it may, or else
// makes it an item of its own, which later segments may merge into.
func (c *Coalescer) merge(bufs [][]byte, offset, i int) {
	pkt := bufs[i][offset:]
	ipLen, l4Len, payload, proto := candidate(pkt, c.UDP)
	at := c.find(bufs, offset, pkt)
	if at >= 0 {
		it := &c.items[c.open[at]]
		first := bufs[it.idx][offset:]
		if proto == it.proto && mergeable(it, first, pkt, ipLen, l4Len, payload) && cap(bufs[it.idx]) >= offset+len(first)+payload &&
			c.intact(it, first, pkt, i) {
			b := append(bufs[it.idx], pkt[ipLen+l4Len:]...)
			bufs[it.idx] = b
			it.segs++
			it.nextSeq += uint32(payload)
			it.nextID++
			if proto == header.ProtoUDP {
				if payload < it.size || it.segs == maxUDPSegs {
					c.close(at) // nothing may follow a short datagram
				}
				return
			}
			if tcp := header.TCP(pkt[ipLen:]); payload < it.size || tcp.Has(header.TCPPsh) {
				b[offset+ipLen+13] |= tcp.Flags() & header.TCPPsh
				c.close(at) // nothing may follow a short or pushed segment
			}
			return
		}
		c.close(at) // a packet of the flow that does not continue it
	}
	it := groItem{idx: i}
	if proto != 0 && payload > 0 && (proto == header.ProtoUDP || !header.TCP(pkt[ipLen:]).Has(header.TCPPsh)) {
		it = groItem{idx: i, ipLen: ipLen, l4Len: l4Len, size: payload, segs: 1, proto: proto, v6: pkt[0]>>4 == 6}
		if proto == header.ProtoTCP {
			it.nextSeq = header.TCP(pkt[ipLen:]).Seq() + uint32(payload)
		}
		if !it.v6 {
			it.nextID = header.IPv4(pkt).ID() + 1
		}
		if len(c.open) == maxOpen {
			c.close(0)
		}
		c.open = append(c.open, len(c.items))
	}
	c.items = append(c.items, it)
}

// find returns the position in c.open of pkt's flow's open super-packet
// (same protocol, addresses and ports), or -1.
func (c *Coalescer) find(bufs [][]byte, offset int, pkt []byte) int {
	ipLen, addrs, proto, ok := flowOf(pkt)
	if !ok {
		return -1
	}
	v6 := pkt[0]>>4 == 6
	for k, n := range c.open {
		it := &c.items[n]
		if it.v6 != v6 || it.proto != proto {
			continue
		}
		first := bufs[it.idx][offset:]
		fa := first[12:20]
		if v6 {
			fa = first[8:40]
		}
		if bytes.Equal(fa, addrs) && bytes.Equal(first[it.ipLen:it.ipLen+4], pkt[ipLen:ipLen+4]) {
			return k
		}
	}
	return -1
}

// close takes c.open[k] off the open list (its item stays).
func (c *Coalescer) close(k int) { c.open = append(c.open[:k], c.open[k+1:]...) }

// flowOf returns a TCP or UDP packet's IP header length, its addresses
// (as they sit in the header) and its protocol, if it is one whose flow
// find can match.
func flowOf(pkt []byte) (ipLen int, addrs []byte, proto uint8, ok bool) {
	switch {
	case len(pkt) >= header.IPv4MinLen && pkt[0]>>4 == 4 && (pkt[9] == header.ProtoTCP || pkt[9] == header.ProtoUDP):
		ipLen = int(pkt[0]&0xf) * 4
		return ipLen, pkt[12:20], pkt[9], ipLen >= header.IPv4MinLen && len(pkt) >= ipLen+4
	case len(pkt) >= header.IPv6Len+4 && pkt[0]>>4 == 6 && (pkt[6] == header.ProtoTCP || pkt[6] == header.ProtoUDP):
		return header.IPv6Len, pkt[8:40], pkt[6], true
	}
	return 0, nil, 0, false
}

// candidate reports whether pkt may be part of a super-packet, and its
// protocol if so (0 if not): TCP directly in IPv4 without options or
// fragments, or in IPv6 without extension headers, lengths consistent,
// only ACK (and PSH) set, no urgent pointer; with udp, UDP likewise, its
// length field the datagram's. (Its checksums are checked only if it is
// merged: intact.)
func candidate(pkt []byte, udp bool) (ipLen, l4Len, payload int, proto uint8) {
	switch {
	case len(pkt) >= header.IPv4MinLen && pkt[0] == 0x45:
		h := header.IPv4(pkt)
		if h.IsFragment() || h.TotalLen() != len(pkt) {
			return 0, 0, 0, 0
		}
		ipLen, proto = header.IPv4MinLen, h.Protocol()
	case len(pkt) >= header.IPv6Len && pkt[0]>>4 == 6:
		if int(binary.BigEndian.Uint16(pkt[4:]))+header.IPv6Len != len(pkt) {
			return 0, 0, 0, 0
		}
		ipLen, proto = header.IPv6Len, pkt[6]
	default:
		return 0, 0, 0, 0
	}
	if proto == header.ProtoUDP && udp {
		if len(pkt) < ipLen+header.UDPLen || header.UDP(pkt[ipLen:]).Length() != len(pkt)-ipLen {
			return 0, 0, 0, 0
		}
		return ipLen, header.UDPLen, len(pkt) - ipLen - header.UDPLen, proto
	}
	if proto != header.ProtoTCP || len(pkt) < ipLen+header.TCPMinLen {
		return 0, 0, 0, 0
	}
	tcp := header.TCP(pkt[ipLen:])
	l4Len = tcp.HeaderLen()
	if l4Len < header.TCPMinLen || ipLen+l4Len > len(pkt) || tcp.Flags()&^header.TCPPsh != header.TCPAck || tcp[18]|tcp[19] != 0 {
		return 0, 0, 0, 0
	}
	return ipLen, l4Len, len(pkt) - ipLen - l4Len, proto
}

// intact reports whether pkt, and the super-packet's first segment if
// nothing has been merged into it yet, have valid checksums. A
// super-packet's checksums are made anew (the kernel's segmentation
// completes them per segment), so merging a packet whose checksum is
// wrong — corrupted, or forged, on its way to a relay — would turn it
// into one the receiver accepts; such a packet is written as it came, for
// the receiver to drop (as Linux's own GRO verifies before merging). Only
// packets that are merged are summed: one written alone keeps its
// checksum either way.
// A packet the writer says it made (SumKnown, SumPartial) is not summed.
func (c *Coalescer) intact(it *groItem, first, pkt []byte, i int) bool {
	return (it.segs > 1 || c.sum(it.idx) != SumAsCame || header.ChecksumsValid(first, it.ipLen, it.proto)) &&
		(c.sum(i) != SumAsCame || header.ChecksumsValid(pkt, it.ipLen, it.proto))
}

func (c *Coalescer) sum(i int) Sum {
	if i < len(c.sums) {
		return c.sums[i]
	}
	return SumAsCame
}

// mergeable reports whether pkt continues super-packet it (whose first
// segment's headers are first's).
func mergeable(it *groItem, first, pkt []byte, ipLen, l4Len, payload int) bool {
	if it.segs == 0 || ipLen != it.ipLen || l4Len != it.l4Len || payload > it.size || payload == 0 {
		return false
	}
	if !it.v6 && len(first)+payload > 65535 || it.v6 && len(first)-header.IPv6Len+payload > 65535 {
		return false
	}
	if it.v6 {
		if !bytes.Equal(first[:4], pkt[:4]) || first[7] != pkt[7] {
			return false // traffic class, flow label, hop limit
		}
	} else {
		h, f := header.IPv4(pkt), header.IPv4(first)
		if h.TOS() != f.TOS() || h.TTL() != f.TTL() || h.FlagsFrag() != f.FlagsFrag() || h.ID() != it.nextID {
			return false
		}
	}
	if it.proto == header.ProtoUDP {
		return true // the ports matched in find
	}
	t, ft := header.TCP(pkt[ipLen:]), header.TCP(first[ipLen:])
	return t.Seq() == it.nextSeq && t.Ack() == ft.Ack() && t.Window() == ft.Window() &&
		bytes.Equal(t[header.TCPMinLen:l4Len], ft[header.TCPMinLen:l4Len])
}

// finish writes the virtio_net_hdr in the HdrLen bytes before the
// packet at b[offset:]: for a packet alone, nothing asked (its checksums
// are whole) or, partial, the completion of its TCP or UDP checksum;
// for a super-packet, its new lengths and IPv4 header checksum, and
// segmentation with the TCP or UDP checksum left partial (the
// pseudo-header sum), which the kernel completes per segment
// (VIRTIO_NET_HDR_F_NEEDS_CSUM).
func (it *groItem) finish(b []byte, offset int, partial bool) {
	vh := b[offset-HdrLen : offset]
	clear(vh)
	if it.segs < 2 {
		if partial {
			needsCsum(vh, b[offset:])
		}
		return
	}
	pkt := b[offset:]
	gso, csum := uint8(GSOTCPv4), 16
	src, dst := pkt[12:16], pkt[16:20]
	if it.v6 {
		gso, src, dst = GSOTCPv6, pkt[8:24], pkt[24:40]
		binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-header.IPv6Len))
	} else {
		h := header.IPv4(pkt)
		h.SetTotalLen(len(pkt))
		h.UpdateChecksum()
	}
	l4 := len(pkt) - it.ipLen
	if it.proto == header.ProtoUDP {
		gso, csum = GSOUDPL4, 6
		binary.BigEndian.PutUint16(pkt[it.ipLen+4:], uint16(l4))
	}
	binary.BigEndian.PutUint16(pkt[it.ipLen+csum:], header.Checksum(nil, header.PseudoHeaderSum(src, dst, it.proto, l4)))
	vh[0], vh[1] = NeedsCsum, gso
	binary.LittleEndian.PutUint16(vh[2:], uint16(it.ipLen+it.l4Len))
	binary.LittleEndian.PutUint16(vh[4:], uint16(it.size))
	binary.LittleEndian.PutUint16(vh[6:], uint16(it.ipLen))
	binary.LittleEndian.PutUint16(vh[8:], uint16(csum))
}

// needsCsum writes into vh the completion of pkt's TCP or UDP checksum,
// left partial (SumPartial), with no segmentation. pkt is one the writer
// made: IPv4 (options allowed) or IPv6 without extension headers. A
// packet of another protocol is written as it is.
func needsCsum(vh, pkt []byte) {
	ipLen, _, proto, ok := flowOf(pkt)
	if !ok {
		return
	}
	csum, l4Len := 16, header.TCPMinLen
	switch {
	case proto == header.ProtoUDP:
		csum, l4Len = 6, header.UDPLen
	case ipLen+header.TCPMinLen <= len(pkt):
		l4Len = max(l4Len, header.TCP(pkt[ipLen:]).HeaderLen())
	}
	if ipLen+l4Len > len(pkt) {
		return
	}
	vh[0] = NeedsCsum
	binary.LittleEndian.PutUint16(vh[2:], uint16(ipLen+l4Len))
	binary.LittleEndian.PutUint16(vh[6:], uint16(ipLen))
	binary.LittleEndian.PutUint16(vh[8:], uint16(csum))
}
