package host

import (
	"net/netip"
	"testing"

	"github.com/espep/espep/ipsec/header"
)

// udpPacket builds an IP packet carrying a UDP datagram of n payload
// bytes (each byte its index in the run, i).
func udpPacket(src, dst netip.Addr, sport, dport uint16, tos uint8, n int, i byte) []byte {
	hl := header.IPv4MinLen
	if src.Is6() {
		hl = header.IPv6Len
	}
	pkt := make([]byte, hl+header.UDPLen+n)
	if src.Is6() {
		header.WriteIPv6(pkt, tos, 0, header.UDPLen+n, header.ProtoUDP, 64, src, dst)
	} else {
		header.WriteIPv4(pkt, tos, len(pkt), 0, false, 64, header.ProtoUDP, src, dst)
	}
	header.WriteUDP(pkt[hl:], sport, dport, header.UDPLen+n)
	for j := hl + header.UDPLen; j < len(pkt); j++ {
		pkt[j] = i
	}
	return pkt
}

var (
	gsoA  = netip.MustParseAddr("10.0.0.1")
	gsoB  = netip.MustParseAddr("10.0.0.2")
	gsoC  = netip.MustParseAddr("10.0.0.3")
	gsoA6 = netip.MustParseAddr("fd00::1")
	gsoB6 = netip.MustParseAddr("fd00::2")
)

func TestAsDatagram(t *testing.T) {
	ok4 := udpPacket(gsoA, gsoB, 4500, 4500, 0x28, 100, 0)
	ok6 := udpPacket(gsoA6, gsoB6, 4500, 4501, 0xb8, 100, 0)
	options := append([]byte{0x46}, ok4[1:]...)
	options = append(options[:20], append([]byte{1, 1, 1, 1}, options[20:]...)...)
	options[3] += 4 // total length
	frag := append([]byte(nil), ok4...)
	frag[6] = 0x20 // more fragments
	long := append(append([]byte(nil), ok4...), 0, 0)
	tcp := append([]byte(nil), ok4...)
	tcp[9] = header.ProtoTCP
	shortUDP := append([]byte(nil), ok4...)
	shortUDP[24], shortUDP[25] = 0, 50 // UDP length less than the packet's
	for _, c := range []struct {
		name string
		pkt  []byte
		port uint16
		want bool
		tos  uint8
	}{
		{"ipv4", ok4, 4500, true, 0x28},
		{"ipv6", ok6, 4500, true, 0xb8},
		{"another source port", ok4, 4501, false, 0},
		{"no port configured", ok4, 0, false, 0},
		{"ipv4 options", options, 4500, false, 0},
		{"fragment", frag, 4500, false, 0},
		{"trailing bytes", long, 4500, false, 0},
		{"tcp", tcp, 4500, false, 0},
		{"udp length short", shortUDP, 4500, false, 0},
		{"truncated", ok4[:24], 4500, false, 0},
		{"empty", nil, 4500, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var d datagram
			got := asDatagram(c.pkt, c.port, &d)
			if got != c.want {
				t.Fatalf("asDatagram = %v, want %v", got, c.want)
			}
			if got && (len(d.payload) != 100 || d.tos != c.tos || d.sport != 4500) {
				t.Fatalf("datagram %+v: want 100 bytes of payload, tos %#x, source port 4500", d, c.tos)
			}
		})
	}
}

func TestGSORun(t *testing.T) {
	dg := func(dst netip.Addr, dport uint16, tos uint8, n int) datagram {
		var d datagram
		if !asDatagram(udpPacket(gsoA, dst, 4500, dport, tos, n, 0), 4500, &d) {
			t.Fatal("not a datagram")
		}
		return d
	}
	same := func(k, n int) []datagram {
		ds := make([]datagram, k)
		for i := range ds {
			ds[i] = dg(gsoB, 4500, 0, n)
		}
		return ds
	}
	for _, c := range []struct {
		name string
		ds   []datagram
		want int
	}{
		{"none", nil, 0},
		{"one", same(1, 1400), 1},
		{"equal", same(10, 1400), 10},
		{"last shorter", append(same(3, 1400), dg(gsoB, 4500, 0, 300)), 4},
		{"shorter ends the run", append(same(3, 1400), dg(gsoB, 4500, 0, 300), dg(gsoB, 4500, 0, 300)), 4},
		{"longer one starts another", append(same(3, 1000), dg(gsoB, 4500, 0, 1400)), 3},
		{"another peer", append(same(2, 1400), dg(gsoC, 4500, 0, 1400)), 2},
		{"another port", append(same(2, 1400), dg(gsoB, 4501, 0, 1400)), 2},
		{"another tos", append(same(2, 1400), dg(gsoB, 4500, 4, 1400)), 2},
		{"not a datagram", append(same(2, 1400), datagram{pkt: []byte{0x45}}), 2},
		{"segment limit", same(100, 100), maxGSOSegs},
		{"byte limit", same(60, 1400), maxGSOBytes / 1400},
		{"empty first", same(3, 0), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := gsoRun(c.ds); got != c.want {
				t.Fatalf("gsoRun = %d, want %d", got, c.want)
			}
		})
	}
}

func TestJoined(t *testing.T) {
	for _, c := range []struct {
		n, seg, want int
		ok           bool
	}{
		{0, 0, 0, false}, // an empty datagram
		{0, 1400, 0, false},
		{1, 0, 1, true}, // a NAT keepalive
		{1400, 0, 1, true},
		{1400, 1400, 1, true},
		{1400, 2000, 1, true},
		{2800, 1400, 2, true},
		{2801, 1400, 3, true},
		{64 * 100, 100, 64, true},
		{64*100 + 1, 100, 0, false},
		{65000, 1, 0, false},
		{100, -5, 1, true},
	} {
		got, size, ok := joined(c.n, c.seg, 64)
		if ok != c.ok || ok && (got != c.want || size <= 0 || size > c.n || (got-1)*size >= c.n) {
			t.Errorf("joined(%d, %d) = %d at %d, %v; want %d, %v", c.n, c.seg, got, size, ok, c.want, c.ok)
		}
	}
}
