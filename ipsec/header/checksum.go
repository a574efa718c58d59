package header

import "encoding/binary"

// Checksum returns the one's complement sum (RFC 1071) of b added to
// initial, folded to 16 bits but not complemented.
func Checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		sum += v >> 32
		sum += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return uint16(sum)
}

// PseudoHeaderSum returns the unfolded sum of the IPv4 or IPv6 pseudo header
// (RFC 768, RFC 8200 §8.1) used by TCP and UDP checksums.
func PseudoHeaderSum(src, dst []byte, proto uint8, length int) uint32 {
	s := uint32(Checksum(src, 0)) + uint32(Checksum(dst, 0))
	s += uint32(proto) + uint32(length&0xffff) + uint32(length>>16)
	return s
}

// ipv4HeaderSum is Checksum for the common 20-byte IPv4 header, unrolled.
func ipv4HeaderSum(b []byte) uint16 {
	_ = b[19]
	s := uint32(binary.BigEndian.Uint16(b[0:])) + uint32(binary.BigEndian.Uint16(b[2:])) +
		uint32(binary.BigEndian.Uint16(b[4:])) + uint32(binary.BigEndian.Uint16(b[6:])) +
		uint32(binary.BigEndian.Uint16(b[8:])) + uint32(binary.BigEndian.Uint16(b[10:])) +
		uint32(binary.BigEndian.Uint16(b[12:])) + uint32(binary.BigEndian.Uint16(b[14:])) +
		uint32(binary.BigEndian.Uint16(b[16:])) + uint32(binary.BigEndian.Uint16(b[18:]))
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return uint16(s)
}
