package engine

import (
	"net/netip"
	"testing"

	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
)

// TestRefreshTSvalKeepsCorruption: snoop's resend with a fresh TSval
// adjusts the checksum for the TSval alone — a segment whose checksum
// held still holds, one corrupted on its way in (its checksum did not
// hold) still does not, rather than going out with a checksum made anew
// over its corrupted bytes. Timestamps at even and odd offsets.
func TestRefreshTSvalKeepsCorruption(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	src6, dst6 := netip.MustParseAddrPort("[fd00::1]:5001"), netip.MustParseAddrPort("[fd00::2]:80")
	ts := []byte{header.TCPOptTimestamp, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	for _, c := range []struct {
		name     string
		src, dst netip.AddrPort
		opts     []byte
	}{
		{"ipv4, aligned", src, dst, append([]byte{header.TCPOptNop, header.TCPOptNop}, ts...)},
		{"ipv4, odd offset", src, dst, append(append([]byte{header.TCPOptNop}, ts...), header.TCPOptEnd)},
		{"ipv6, aligned", src6, dst6, append([]byte{header.TCPOptNop, header.TCPOptNop}, ts...)},
	} {
		for _, corrupt := range []bool{false, true} {
			pkt := packettest.Segment(c.src, c.dst, header.TCPAck, 1000, 2000, 500, c.opts, []byte("some payload bytes"))
			if corrupt {
				pkt[len(pkt)-1] ^= 0x40
			}
			if !refreshTSval(pkt, 0xdeadbeef) {
				t.Fatalf("%s: no timestamp found", c.name)
			}
			p, ok := parse(pkt)
			if !ok || !p.opts.HasTS || p.opts.TSVal != 0xdeadbeef {
				t.Fatalf("%s: TSval not set: %+v", c.name, p.opts)
			}
			var s, d []byte
			if pkt[0]>>4 == 4 {
				s, d = header.IPv4(pkt).SrcBytes(), header.IPv4(pkt).DstBytes()
			} else {
				s, d = header.IPv6(pkt).SrcBytes(), header.IPv6(pkt).DstBytes()
			}
			if valid := p.tcp.ChecksumValid(s, d); valid == corrupt {
				t.Fatalf("%s, corrupted %v: checksum valid %v after the refresh", c.name, corrupt, valid)
			}
		}
	}
}
