package ipsec

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/espep/espep/ipsec/header"
)

// Per-packet framing shared by ESP and AH: where the protected part of a
// packet starts, and the outer headers put in front of it.

// MaxHeadroom is enough headroom for any SA: an IPv6 outer header and UDP
// and the ESP header with a 16-byte IV (72 bytes), or an IPv6 outer header
// and the largest AH header (88). It is a multiple of 16 so that in tunnel
// mode, where the plaintext stays where the caller put it, an aligned
// buffer gives the cipher aligned blocks.
const MaxHeadroom = 128

// MaxTailroom is enough tailroom for any SA: padding, trailer and ICV.
const MaxTailroom = 16 + 2 + 32

// plainLayout describes a cleartext packet about to be sealed.
type plainLayout struct {
	v6    bool // the packet's family
	hlen  int  // transport: IP header (+ extension headers) kept in front; tunnel: 0
	nhOff int  // transport: offset of the next-header byte to rewrite
	next  uint8
}

// Frame is an outer form an SA seals in: transport or tunnel mode, raw
// ESP or ESP in UDP (RFC 3948) with its ports, and in tunnel mode the
// outer addresses. An SA seals in the form its Config states; a holder
// that learns the form from the packets — Wireshark esp_sa lines carry no
// mode and no ports, a NAT may move the ports — makes another with
// NewFrame and seals with SealFramed. A Frame holds no key and no
// counter: the SA's outbound state (keys, sequence numbers, IVs) is the
// one the SA owns, whatever the frame, and Wipe ends it for every frame.
type Frame struct {
	mode         Mode
	sport, dport uint16
	dst          netip.Addr // the SA's destination, whose family a transport-mode packet must have (zero: any)
	tmpl         outerTemplate
}

// NewFrame makes a frame for sa: mode Tunnel or Transport, UDP ports
// (0, 0: raw ESP; ESP only), and for tunnel mode the outer source and
// destination (zero: the SA's own, which a wildcard SA lacks). The
// addresses come from a packet the caller verified.
func (sa *SA) NewFrame(mode Mode, sport, dport uint16, src, dst netip.Addr) (*Frame, error) {
	if mode != Tunnel && mode != Transport {
		return nil, fmt.Errorf("sa %v: frame: mode %v: want tunnel or transport", sa.id, mode)
	}
	if (sport == 0) != (dport == 0) || sport != 0 && sa.cfg.Proto != ESP {
		return nil, fmt.Errorf("sa %v: frame: UDP ports %d, %d", sa.id, sport, dport)
	}
	f := &Frame{mode: mode, sport: sport, dport: dport, dst: sa.cfg.Dst}
	if mode == Tunnel {
		if !src.IsValid() {
			src = sa.cfg.Src
		}
		if !dst.IsValid() {
			dst = sa.cfg.Dst
		}
		if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
			return nil, fmt.Errorf("sa %v: frame: tunnel mode needs outer addresses of one family, have %v and %v", sa.id, src, dst)
		}
		f.tmpl, f.dst = newOuterTemplate(src, dst), dst
	}
	return f, nil
}

// Mode returns the frame's mode.
func (f *Frame) Mode() Mode { return f.mode }

// Ports returns the frame's UDP encapsulation ports (0, 0: none).
func (f *Frame) Ports() (src, dst uint16) { return f.sport, f.dport }

func (f *Frame) udp() bool { return f.sport != 0 }

// outer6 reports whether a tunnel-mode frame's outer header is IPv6.
func (f *Frame) outer6() bool { return f.tmpl.v6 }

// layoutFor parses pkt and decides what is protected: the upper layer in
// transport mode, the whole packet in tunnel mode (RFC 4301 §4.1).
func (sa *SA) layoutFor(pkt []byte, fr *Frame) (plainLayout, error) {
	var pl plainLayout
	if len(pkt) == 0 {
		return pl, fmt.Errorf("empty packet: %w", ErrMalformed)
	}
	switch pkt[0] >> 4 {
	case 4:
		h, err := header.ParseIPv4(pkt)
		if err != nil {
			return pl, err
		}
		if len(h) != len(pkt) {
			return pl, fmt.Errorf("ipv4 total length %d, packet %d bytes: %w", len(h), len(pkt), ErrMalformed)
		}
		pl.nhOff, pl.hlen, pl.next = 9, h.HeaderLen(), h.Protocol()
		if fr.mode != Tunnel && h.IsFragment() {
			return pl, fmt.Errorf("transport mode cannot protect a fragment: %w", ErrMalformed)
		}
	case 6:
		h, err := header.ParseIPv6(pkt)
		if err != nil {
			return pl, err
		}
		if len(h) != len(pkt) {
			return pl, fmt.Errorf("ipv6 payload length %d, packet %d bytes: %w", len(h)-header.IPv6Len, len(pkt), ErrMalformed)
		}
		pl.v6 = true
		if fr.mode != Tunnel {
			if pl.hlen, pl.nhOff, err = h.TransportInsertPoint(); err != nil {
				return pl, err
			}
			pl.next = pkt[pl.nhOff]
		}
	default:
		return pl, fmt.Errorf("ip version %d: %w", pkt[0]>>4, ErrMalformed)
	}
	if fr.mode == Tunnel {
		pl.hlen, pl.nhOff = 0, -1
		pl.next = header.ProtoIPIP
		if pl.v6 {
			pl.next = header.ProtoIPv6
		}
		return pl, nil
	}
	if fr.dst.IsValid() && pl.v6 != fr.dst.Is6() {
		return pl, fmt.Errorf("transport mode sa to %v, ipv%d packet: %w", fr.dst, pkt[0]>>4, ErrFamily)
	}
	return pl, nil
}

// outerLen is the length of the IP header the sealed packet starts with.
func (f *Frame) outerLen(pl plainLayout) int {
	if f.mode == Tunnel {
		if f.outer6() {
			return header.IPv6Len
		}
		return header.IPv4MinLen
	}
	return pl.hlen
}

// outerV6 reports whether the sealed packet's outer header is IPv6.
func (f *Frame) outerV6(pl plainLayout) bool {
	if f.mode == Tunnel {
		return f.outer6()
	}
	return pl.v6
}

// finishOuter writes or moves the IP header in front of the sealed packet
// out (which starts with it) whose protected part starts at protoOff and
// carries protocol proto; inner is the original packet, still intact in its
// first bytes only if transport mode moved them (the caller copied them).
func (sa *SA) finishOuter(out []byte, fr *Frame, pl plainLayout, proto uint8, innerTOS uint8, innerDF bool) {
	if fr.mode == Tunnel {
		sa.out.id++
		fr.tmpl.write(out, proto, innerTOS, innerDF, sa.out.id)
		return
	}
	out[pl.nhOff] = proto
	if pl.v6 {
		header.IPv6(out).SetPayloadLen(len(out) - header.IPv6Len)
		return
	}
	h := header.IPv4(out)
	h.SetTotalLen(len(out))
	h.UpdateChecksum()
}

// innerTOS returns the traffic class and DF bit to copy to a tunnel header
// (RFC 4301 §5.1.2.1: DSCP and, RFC 6040 normal mode, ECN are copied).
func innerTOS(pkt []byte) (tos uint8, df bool) {
	if pkt[0]>>4 == 4 {
		h := header.IPv4(pkt)
		return h.TOS(), h.FlagsFrag()&0x4000 != 0
	}
	return header.IPv6(pkt).TrafficClass(), false
}

// restoreTransport rewrites a decapsulated transport-mode packet whose IP
// header (hl bytes, next-header byte at nhOff) sits right before payload
// end: pkt[:end] is the whole packet.
func restoreTransport(pkt []byte, nhOff int, next uint8) {
	pkt[nhOff] = next
	if pkt[0]>>4 == 6 {
		header.IPv6(pkt).SetPayloadLen(len(pkt) - header.IPv6Len)
		return
	}
	h := header.IPv4(pkt)
	h.SetTotalLen(len(pkt))
	h.UpdateChecksum()
}

// espTrailer splits a decrypted ESP body (payload ‖ padding ‖ pad length ‖
// next header, RFC 4303 §2.4) into the payload and the next header.
func espTrailer(id ID, body []byte) (payload []byte, next uint8, err error) {
	padLen, next := int(body[len(body)-2]), body[len(body)-1]
	if padLen+2 > len(body) {
		return nil, 0, fmt.Errorf("sa %v: pad length %d of %d bytes: %w", id, padLen, len(body), ErrMalformed)
	}
	return body[:len(body)-2-padLen], next, nil
}

// trimInner returns the inner IP packet at the start of p, cut to the
// length its header gives (dropping TFC padding, RFC 4303 §2.4).
func trimInner(p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, fmt.Errorf("empty inner packet: %w", ErrMalformed)
	}
	switch p[0] >> 4 {
	case 4:
		h, err := header.ParseIPv4(p)
		if err != nil {
			return nil, fmt.Errorf("inner: %w", err)
		}
		return h, nil
	case 6:
		h, err := header.ParseIPv6(p)
		if err != nil {
			return nil, fmt.Errorf("inner: %w", err)
		}
		return h, nil
	}
	return nil, fmt.Errorf("inner ip version %d: %w", p[0]>>4, ErrMalformed)
}

// tunnelFor decides the mode of an inbound packet from the SA's mode and,
// for ModeAny, the packet's next header.
func (c *Config) tunnelFor(next uint8) bool {
	switch c.Mode {
	case Tunnel:
		return true
	case Transport:
		return false
	}
	return next == header.ProtoIPIP || next == header.ProtoIPv6
}

// outerTemplate is a tunnel SA's outer IP header, made once: per packet
// only the traffic class, length, identification, DF bit, next header and
// (IPv4) checksum change, and the checksum of the constant words is kept.
type outerTemplate struct {
	v6  bool
	hdr [header.IPv6Len]byte
	sum uint32 // IPv4: one's complement sum of TTL and the addresses
}

// outerTTL is the hop limit of tunnel headers (RFC 4301 §5.1.2.1 leaves it
// to the implementation; 64 is the common default).
const outerTTL = 64

func newOuterTemplate(src, dst netip.Addr) outerTemplate {
	t := outerTemplate{v6: dst.Is6()}
	if t.v6 {
		header.WriteIPv6(t.hdr[:], 0, 0, 0, 0, outerTTL, src, dst)
		return t
	}
	header.WriteIPv4(t.hdr[:], 0, 0, 0, false, outerTTL, 0, src, dst)
	t.sum = uint32(outerTTL)<<8 + uint32(header.Checksum(t.hdr[12:20], 0))
	return t
}

func (t *outerTemplate) write(out []byte, proto, tos uint8, df bool, id uint16) {
	if t.v6 {
		copy(out[:header.IPv6Len], t.hdr[:])
		out[0] = 0x60 | tos>>4
		out[1] = tos << 4
		binary.BigEndian.PutUint16(out[4:], uint16(len(out)-header.IPv6Len))
		out[6] = proto
		return
	}
	copy(out[:header.IPv4MinLen], t.hdr[:header.IPv4MinLen])
	ff := uint16(0)
	if df {
		ff = 0x4000
	}
	out[1] = tos
	binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
	binary.BigEndian.PutUint16(out[4:], id)
	binary.BigEndian.PutUint16(out[6:], ff)
	out[9] = proto
	s := t.sum + 0x4500 + uint32(tos) + uint32(len(out)&0xffff) + uint32(id) + uint32(ff) + uint32(proto)
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	binary.BigEndian.PutUint16(out[10:], ^uint16(s))
}
