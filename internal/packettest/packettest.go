// Package packettest builds well-formed IP packets for tests. It is not on
// any packet path.
package packettest

import (
	"encoding/binary"
	"net/netip"

	"github.com/espep/espep/ipsec/header"
)

// TCP builds an IPv4 or IPv6 TCP packet (ports 40000 → 5001, PSH|ACK)
// with valid checksums around payload.
func TCP(src, dst netip.Addr, payload []byte) []byte {
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5001)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	binary.BigEndian.PutUint32(tcp[8:], 2000)
	tcp[12] = 5 << 4
	tcp[13] = 0x18
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	var ip []byte
	if src.Is4() {
		ip = make([]byte, 20, 20+len(tcp))
		header.WriteIPv4(ip, 0, 20+len(tcp), 1, true, 64, header.ProtoTCP, src, dst)
	} else {
		ip = make([]byte, 40, 40+len(tcp))
		header.WriteIPv6(ip, 0, 0, len(tcp), header.ProtoTCP, 64, src, dst)
	}
	s, d := src.AsSlice(), dst.AsSlice()
	binary.BigEndian.PutUint16(tcp[16:], ^header.Checksum(tcp, header.PseudoHeaderSum(s, d, header.ProtoTCP, len(tcp))))
	return append(ip, tcp...)
}

// Segment builds an IPv4 or IPv6 TCP segment with the given header fields,
// options (padded to a multiple of four) and payload, checksums valid.
func Segment(src, dst netip.AddrPort, flags uint8, seq, ack uint32, win uint16, opts, payload []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptNop)
	}
	tl := 20 + len(opts)
	tcp := make([]byte, tl+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = byte(tl/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], win)
	copy(tcp[20:], opts)
	copy(tcp[tl:], payload)
	var ip []byte
	if src.Addr().Is4() {
		ip = make([]byte, 20, 20+len(tcp))
		header.WriteIPv4(ip, 0, 20+len(tcp), 1, true, 64, header.ProtoTCP, src.Addr(), dst.Addr())
	} else {
		ip = make([]byte, 40, 40+len(tcp))
		header.WriteIPv6(ip, 0, 0, len(tcp), header.ProtoTCP, 64, src.Addr(), dst.Addr())
	}
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	binary.BigEndian.PutUint16(tcp[16:], ^header.Checksum(tcp, header.PseudoHeaderSum(s, d, header.ProtoTCP, len(tcp))))
	return append(ip, tcp...)
}

// UDP builds an IPv4 or IPv6 UDP datagram with a valid checksum.
func UDP(src, dst netip.AddrPort, payload []byte) []byte {
	n := header.UDPLen + len(payload)
	var b []byte
	var l int
	if src.Addr().Is4() {
		l = header.IPv4MinLen
		b = make([]byte, l+n)
		header.WriteIPv4(b, 0, l+n, 1, true, 64, header.ProtoUDP, src.Addr(), dst.Addr())
	} else {
		l = header.IPv6Len
		b = make([]byte, l+n)
		header.WriteIPv6(b, 0, 0, n, header.ProtoUDP, 64, src.Addr(), dst.Addr())
	}
	u := b[l:]
	header.WriteUDP(u, src.Port(), dst.Port(), n)
	copy(u[header.UDPLen:], payload)
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	if c := ^header.Checksum(u, header.PseudoHeaderSum(s, d, header.ProtoUDP, n)); c != 0 {
		binary.BigEndian.PutUint16(u[6:], c)
	} else {
		binary.BigEndian.PutUint16(u[6:], 0xffff)
	}
	return b
}
