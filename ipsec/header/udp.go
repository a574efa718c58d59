package header

import (
	"encoding/binary"
	"fmt"
)

//	 0      7 8     15 16    23 24    31
//	+--------+--------+--------+--------+
//	|     Source      |   Destination   |
//	|      Port       |      Port       |
//	+--------+--------+--------+--------+
//	|     Length      |    Checksum     |
//	+--------+--------+--------+--------+
//	                RFC 768

// UDPLen is the length of a UDP header.
const UDPLen = 8

// UDP is a view of a UDP datagram, header first.
type UDP []byte

// ParseUDP checks the header and that its length field fits in b, and
// returns the datagram trimmed to that length.
func ParseUDP(b []byte) (UDP, error) {
	if len(b) < UDPLen {
		return nil, fmt.Errorf("udp header: %d bytes: %w", len(b), ErrTruncated)
	}
	n := int(binary.BigEndian.Uint16(b[4:]))
	if n < UDPLen || n > len(b) {
		return nil, fmt.Errorf("udp header: length %d of %d bytes: %w", n, len(b), ErrMalformed)
	}
	return UDP(b[:n]), nil
}

func (u UDP) SrcPort() uint16      { return binary.BigEndian.Uint16(u) }
func (u UDP) DstPort() uint16      { return binary.BigEndian.Uint16(u[2:]) }
func (u UDP) Length() int          { return int(binary.BigEndian.Uint16(u[4:])) }
func (u UDP) Checksum() uint16     { return binary.BigEndian.Uint16(u[6:]) }
func (u UDP) Payload() []byte      { return u[UDPLen:u.Length()] }
func (u UDP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(u[6:], c) }

// WriteUDP writes a UDP header with a zero checksum, which RFC 3948 §2.1
// permits for ESP in UDP over IPv4 (the ESP ICV protects the payload).
func WriteUDP(b []byte, sport, dport uint16, length int) {
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(length))
	b[6], b[7] = 0, 0
}

// UpdateChecksum computes the checksum of the whole datagram u over the
// pseudo header of src and dst (needed over IPv6, RFC 8200 §8.1).
func (u UDP) UpdateChecksum(src, dst []byte) {
	u[6], u[7] = 0, 0
	c := ^Checksum(u, PseudoHeaderSum(src, dst, ProtoUDP, len(u)))
	if c == 0 {
		c = 0xffff
	}
	u.SetChecksum(c)
}

// ChecksumValid reports whether the checksum of the whole datagram u
// holds over the pseudo header of src and dst. A zero checksum (none,
// which IPv4 allows) is for the caller to accept or not.
func (u UDP) ChecksumValid(src, dst []byte) bool {
	return Checksum(u, PseudoHeaderSum(src, dst, ProtoUDP, len(u))) == 0xffff
}
