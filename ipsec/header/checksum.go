package header

import (
	"encoding/binary"
	"math/bits"
)

// Checksum returns the one's complement sum (RFC 1071) of b added to
// initial, folded to 16 bits but not complemented.
//
// It adds 64-bit words with the carry chained through (RFC 1071 §2(C):
// the sum of 16-bit words can be formed in larger words, the carries
// folded back at the end), four words a round: about four times the
// speed of adding 32-bit halves, which matters because every segment the
// gateway builds or coalesces is summed whole.
func Checksum(b []byte, initial uint32) uint16 {
	sum, carry := uint64(initial), uint64(0)
	for len(b) >= 32 {
		sum, carry = bits.Add64(sum, binary.BigEndian.Uint64(b), carry)
		sum, carry = bits.Add64(sum, binary.BigEndian.Uint64(b[8:]), carry)
		sum, carry = bits.Add64(sum, binary.BigEndian.Uint64(b[16:]), carry)
		sum, carry = bits.Add64(sum, binary.BigEndian.Uint64(b[24:]), carry)
		b = b[32:]
	}
	for len(b) >= 8 {
		sum, carry = bits.Add64(sum, binary.BigEndian.Uint64(b), carry)
		b = b[8:]
	}
	// The end-around carry, then the tail: at most 3 16-bit words and a
	// byte, which cannot overflow what the fold below takes.
	sum, carry = bits.Add64(sum, carry, 0)
	sum += carry
	var tail uint64
	for len(b) >= 2 {
		tail += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		tail += uint64(b[0]) << 8
	}
	sum, carry = bits.Add64(sum, tail, 0)
	sum += carry
	// Fold 64 bits to 16, end-around each time.
	sum = (sum >> 32) + (sum & 0xffffffff)
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return uint16(sum)
}

// ChecksumUpdate returns what a checksum field that holds check becomes
// when bytes of the region it covers change from old to new — the same
// span, starting at an even offset of the region, before and after — by
// RFC 1624's equation 3, HC' = ~(~HC + ~m + m'), without summing the rest.
// Unlike a sum made anew, it keeps a region that was corrupted corrupted:
// a packet whose checksum did not hold still does not.
func ChecksumUpdate(check uint16, old, new []byte) uint16 {
	sum := uint32(^check) + uint32(^Checksum(old, 0)) + uint32(Checksum(new, 0))
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ChecksumsValid reports whether a TCP or UDP packet's checksum holds —
// and over IPv4 its header checksum too. pkt is the whole IP packet (as
// long as its header says), l4 the offset of its TCP or UDP header, proto
// which it is. A UDP datagram over IPv4 without a checksum (zero) passes:
// RFC 768 lets it go unchecked. A packet too short for its IP header or
// for l4 does not hold.
func ChecksumsValid(pkt []byte, l4 int, proto uint8) bool {
	v6 := len(pkt) > 0 && pkt[0]>>4 == 6
	if l4 < 0 || l4 > len(pkt) || len(pkt) < IPv4MinLen || v6 && len(pkt) < IPv6Len {
		return false
	}
	src, dst := pkt[12:16], pkt[16:20]
	if v6 {
		src, dst = pkt[8:24], pkt[24:40]
	} else if !IPv4(pkt).ChecksumValid() {
		return false
	}
	if proto == ProtoUDP {
		u := UDP(pkt[l4:])
		return !v6 && u.Checksum() == 0 || u.ChecksumValid(src, dst)
	}
	return TCP(pkt[l4:]).ChecksumValid(src, dst)
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
