package header

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version|  IHL  |Type of Service|          Total Length         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Identification        |Flags|      Fragment Offset    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Time to Live |    Protocol   |         Header Checksum       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       Source Address                          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Destination Address                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Options                    |    Padding    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	                          RFC 791 §3.1

// IPv4MinLen is the length of an IPv4 header without options.
const IPv4MinLen = 20

// IPv4 is a view of an IPv4 packet, header first.
type IPv4 []byte

// ParseIPv4 checks that b starts with a well-formed IPv4 header whose total
// length fits in b, and returns the packet trimmed to that total length.
func ParseIPv4(b []byte) (IPv4, error) {
	if len(b) < IPv4MinLen {
		return nil, fmt.Errorf("ipv4 header: %d bytes: %w", len(b), ErrTruncated)
	}
	if b[0]>>4 != 4 {
		return nil, fmt.Errorf("ipv4 header: version %d: %w", b[0]>>4, ErrMalformed)
	}
	ihl := int(b[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if ihl < IPv4MinLen || total < ihl {
		return nil, fmt.Errorf("ipv4 header: ihl %d total %d: %w", ihl, total, ErrMalformed)
	}
	if total > len(b) {
		return nil, fmt.Errorf("ipv4 header: total length %d > %d bytes: %w", total, len(b), ErrTruncated)
	}
	return IPv4(b[:total]), nil
}

func (h IPv4) HeaderLen() int        { return int(h[0]&0xf) * 4 }
func (h IPv4) TOS() uint8            { return h[1] }
func (h IPv4) TotalLen() int         { return int(binary.BigEndian.Uint16(h[2:])) }
func (h IPv4) ID() uint16            { return binary.BigEndian.Uint16(h[4:]) }
func (h IPv4) FlagsFrag() uint16     { return binary.BigEndian.Uint16(h[6:]) }
func (h IPv4) TTL() uint8            { return h[8] }
func (h IPv4) Protocol() uint8       { return h[9] }
func (h IPv4) Checksum() uint16      { return binary.BigEndian.Uint16(h[10:]) }
func (h IPv4) SrcBytes() []byte      { return h[12:16] }
func (h IPv4) DstBytes() []byte      { return h[16:20] }
func (h IPv4) Src() netip.Addr       { return netip.AddrFrom4([4]byte(h[12:16])) }
func (h IPv4) Dst() netip.Addr       { return netip.AddrFrom4([4]byte(h[16:20])) }
func (h IPv4) Options() []byte       { return h[IPv4MinLen:h.HeaderLen()] }
func (h IPv4) Payload() []byte       { return h[h.HeaderLen():h.TotalLen()] }
func (h IPv4) SetTOS(v uint8)        { h[1] = v }
func (h IPv4) SetTotalLen(n int)     { binary.BigEndian.PutUint16(h[2:], uint16(n)) }
func (h IPv4) SetID(v uint16)        { binary.BigEndian.PutUint16(h[4:], v) }
func (h IPv4) SetFlagsFrag(v uint16) { binary.BigEndian.PutUint16(h[6:], v) }
func (h IPv4) SetTTL(v uint8)        { h[8] = v }
func (h IPv4) SetProtocol(p uint8)   { h[9] = p }

// IsFragment reports whether the packet is a fragment (MF set or offset ≠ 0).
func (h IPv4) IsFragment() bool { return h.FlagsFrag()&0x3fff != 0 }

// UpdateChecksum recomputes the header checksum.
func (h IPv4) UpdateChecksum() {
	h[10], h[11] = 0, 0
	if h.HeaderLen() == IPv4MinLen {
		binary.BigEndian.PutUint16(h[10:], ^ipv4HeaderSum(h))
		return
	}
	binary.BigEndian.PutUint16(h[10:], ^Checksum(h[:h.HeaderLen()], 0))
}

// ChecksumValid reports whether the header checksum is correct.
func (h IPv4) ChecksumValid() bool { return Checksum(h[:h.HeaderLen()], 0) == 0xffff }

// WriteIPv4 writes a 20-byte IPv4 header without options into b and fills
// its checksum. b must hold at least IPv4MinLen bytes.
func WriteIPv4(b []byte, tos uint8, totalLen int, id uint16, df bool, ttl, proto uint8, src, dst netip.Addr) {
	b[0] = 0x45
	b[1] = tos
	binary.BigEndian.PutUint16(b[2:], uint16(totalLen))
	binary.BigEndian.PutUint16(b[4:], id)
	var ff uint16
	if df {
		ff = 0x4000
	}
	binary.BigEndian.PutUint16(b[6:], ff)
	b[8] = ttl
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	IPv4(b).UpdateChecksum()
}
