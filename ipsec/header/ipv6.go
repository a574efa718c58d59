package header

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version| Traffic Class |           Flow Label                  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Payload Length        |  Next Header  |   Hop Limit   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 Source Address (128 bits)                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|              Destination Address (128 bits)                   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	                          RFC 8200 §3
//
// Extension headers (RFC 8200 §4) follow as a chain, each naming the next:
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Header  |  Hdr Ext Len  |  ... (Hdr Ext Len + 1) * 8 bytes
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

// IPv6Len is the length of the fixed IPv6 header.
const IPv6Len = 40

// maxExtHeaders bounds the extension header walk (RFC 8504 suggests limits).
const maxExtHeaders = 16

// IPv6 is a view of an IPv6 packet, fixed header first.
type IPv6 []byte

// ParseIPv6 checks the fixed header and that the payload length fits in b,
// and returns the packet trimmed to 40 + payload length. Jumbograms
// (payload length 0) are refused.
func ParseIPv6(b []byte) (IPv6, error) {
	if len(b) < IPv6Len {
		return nil, fmt.Errorf("ipv6 header: %d bytes: %w", len(b), ErrTruncated)
	}
	if b[0]>>4 != 6 {
		return nil, fmt.Errorf("ipv6 header: version %d: %w", b[0]>>4, ErrMalformed)
	}
	pl := int(binary.BigEndian.Uint16(b[4:]))
	if pl == 0 && b[6] == ProtoHopByHop {
		return nil, fmt.Errorf("ipv6 header: jumbogram: %w", ErrMalformed)
	}
	if IPv6Len+pl > len(b) {
		return nil, fmt.Errorf("ipv6 header: payload length %d > %d bytes: %w", pl, len(b)-IPv6Len, ErrTruncated)
	}
	return IPv6(b[:IPv6Len+pl]), nil
}

func (h IPv6) TrafficClass() uint8 { return h[0]<<4 | h[1]>>4 }
func (h IPv6) PayloadLen() int     { return int(binary.BigEndian.Uint16(h[4:])) }
func (h IPv6) NextHeader() uint8   { return h[6] }
func (h IPv6) HopLimit() uint8     { return h[7] }
func (h IPv6) SrcBytes() []byte    { return h[8:24] }
func (h IPv6) DstBytes() []byte    { return h[24:40] }
func (h IPv6) Src() netip.Addr     { return netip.AddrFrom16([16]byte(h[8:24])) }
func (h IPv6) Dst() netip.Addr     { return netip.AddrFrom16([16]byte(h[24:40])) }
func (h IPv6) SetPayloadLen(n int) { binary.BigEndian.PutUint16(h[4:], uint16(n)) }
func (h IPv6) SetNextHeader(p uint8) {
	h[6] = p
}

// IsExtension reports whether proto is an IPv6 extension header that a walk
// to the upper layer passes over (ESP and AH are not: they are what IPsec
// looks for).
func IsExtension(proto uint8) bool {
	switch proto {
	case ProtoHopByHop, ProtoRouting, ProtoFragment, ProtoDestOpts:
		return true
	}
	return false
}

// extLen returns the length of the extension header at b[off:] of type proto.
func extLen(b []byte, off int, proto uint8) (int, error) {
	if off+8 > len(b) {
		return 0, fmt.Errorf("ipv6 extension header %d at %d: %w", proto, off, ErrTruncated)
	}
	n := 8
	switch proto {
	case ProtoFragment:
	case ProtoAH:
		n = (int(b[off+1]) + 2) * 4
	default:
		n = (int(b[off+1]) + 1) * 8
	}
	if off+n > len(b) {
		return 0, fmt.Errorf("ipv6 extension header %d at %d: length %d: %w", proto, off, n, ErrTruncated)
	}
	return n, nil
}

// ExtLen returns the length of the IPv6 extension header or AH of type proto
// that starts at b[off:], checking that it fits.
func ExtLen(b []byte, off int, proto uint8) (int, error) { return extLen(b, off, proto) }

// UpperLayer walks the extension header chain and returns the first protocol
// that is not an extension header (for example TCP, UDP, ESP, AH), its
// offset, and the offset of the byte that names it. A fragment header ends
// the walk with ProtoFragment unless it is an atomic fragment (offset 0, no
// more fragments: a whole packet, RFC 6946): what follows a later fragment
// is not a header, and a first fragment carries only part of its upper
// layer, which nobody may take for the whole.
func (h IPv6) UpperLayer() (proto uint8, off, nhOff int, err error) {
	proto, off, nhOff = h[6], IPv6Len, 6
	for i := 0; IsExtension(proto); i++ {
		if i == maxExtHeaders {
			return 0, 0, 0, fmt.Errorf("ipv6: more than %d extension headers: %w", maxExtHeaders, ErrMalformed)
		}
		n, err := extLen(h, off, proto)
		if err != nil {
			return 0, 0, 0, err
		}
		if proto == ProtoFragment && binary.BigEndian.Uint16(h[off+2:])&0xfff9 != 0 {
			return ProtoFragment, off, nhOff, nil
		}
		nhOff = off
		proto = h[off]
		off += n
	}
	return proto, off, nhOff, nil
}

// TransportInsertPoint returns where a transport-mode ESP or AH header goes
// (RFC 4303 §3.1.1, RFC 4302 §3.1.1): after Hop-by-Hop, Routing and
// Fragment headers and any Destination Options header that precedes a
// Routing header; before everything else. It returns the offset and the
// offset of the next-header byte to rewrite. Packets that are already
// fragments cannot be protected and return an error.
func (h IPv6) TransportInsertPoint() (off, nhOff int, err error) {
	proto, off, nhOff := h[6], IPv6Len, 6
	for i := 0; i < maxExtHeaders; i++ {
		switch proto {
		case ProtoHopByHop, ProtoRouting:
		case ProtoDestOpts:
			if off+1 > len(h) || h[off] != ProtoRouting {
				return off, nhOff, nil
			}
		case ProtoFragment:
			return 0, 0, fmt.Errorf("ipv6: cannot protect a fragment: %w", ErrMalformed)
		default:
			return off, nhOff, nil
		}
		n, err := extLen(h, off, proto)
		if err != nil {
			return 0, 0, err
		}
		nhOff = off
		proto = h[off]
		off += n
	}
	return 0, 0, fmt.Errorf("ipv6: more than %d extension headers: %w", maxExtHeaders, ErrMalformed)
}

// WriteIPv6 writes a fixed IPv6 header into b (at least IPv6Len bytes).
func WriteIPv6(b []byte, tclass uint8, flow uint32, payloadLen int, next, hopLimit uint8, src, dst netip.Addr) {
	binary.BigEndian.PutUint32(b, 6<<28|uint32(tclass)<<20|flow&0xfffff)
	binary.BigEndian.PutUint16(b[4:], uint16(payloadLen))
	b[6] = next
	b[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
}
