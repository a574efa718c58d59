package header

import (
	"bytes"
	"net/netip"
	"testing"
)

func seedPackets(f *testing.F) {
	src4, dst4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	src6, dst6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	p4 := make([]byte, 48)
	WriteIPv4(p4, 0, 48, 7, true, 64, ProtoUDP, src4, dst4)
	WriteUDP(p4[20:], 4500, 4500, 28)
	WriteESP(p4[28:], 0x1000, 1)
	f.Add(p4)
	p6 := make([]byte, 40+8+24)
	WriteIPv6(p6, 0, 0, 32, ProtoHopByHop, 64, src6, dst6)
	copy(p6[40:], []byte{ProtoAH, 0, 1, 4, 0, 0, 0, 0})
	WriteAH(p6[48:], ProtoTCP, 24, 0x2000, 9)
	f.Add(p6)
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0, 0, 0, 44, 64})
}

// FuzzIPv4 parses anything as IPv4: no panic, and a packet that parses
// has every accessor in bounds; rewriting its header round-trips.
func FuzzIPv4(f *testing.F) {
	seedPackets(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseIPv4(b)
		if err != nil {
			return
		}
		_ = h.Payload()
		_ = h.Options()
		c := append([]byte(nil), h...)
		WriteIPv4(c, h.TOS(), h.TotalLen(), h.ID(), h.FlagsFrag()&0x4000 != 0, h.TTL(), h.Protocol(), h.Src(), h.Dst())
		if !IPv4(c).ChecksumValid() {
			t.Fatal("written header has a bad checksum")
		}
		g, err := ParseIPv4(c[:20+len(h.Payload())])
		if h.HeaderLen() == 20 && (err != nil || g.Src() != h.Src() || g.Protocol() != h.Protocol()) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzIPv6 parses anything as IPv6 and walks its extension headers.
func FuzzIPv6(f *testing.F) {
	seedPackets(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseIPv6(b)
		if err != nil {
			return
		}
		proto, off, nh, err := h.UpperLayer()
		if err == nil {
			if off > len(h) || nh >= off || (proto != ProtoFragment && IsExtension(proto)) {
				t.Fatalf("upper layer %d at %d, nh at %d, len %d", proto, off, nh, len(h))
			}
			if h[nh] != proto && proto != ProtoFragment {
				t.Fatalf("next header byte %d says %d, walk says %d", nh, h[nh], proto)
			}
		}
		if off, nh, err := h.TransportInsertPoint(); err == nil && (off > len(h) || nh >= off) {
			t.Fatalf("insert point %d (nh %d) of %d", off, nh, len(h))
		}
	})
}

// FuzzIPsecHeaders parses anything as UDP, ESP and AH.
func FuzzIPsecHeaders(f *testing.F) {
	seedPackets(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if u, err := ParseUDP(b); err == nil {
			if len(u.Payload()) != u.Length()-UDPLen {
				t.Fatal("udp payload length")
			}
		}
		if e, err := ParseESP(b); err == nil && e.SPI() < 256 {
			t.Fatal("reserved spi accepted")
		}
		if a, err := ParseAH(b); err == nil {
			if len(a.ICV())+AHFixedLen != a.Len() || a.Len() > len(b) {
				t.Fatal("ah lengths")
			}
			c := make([]byte, a.Len())
			WriteAH(c, a.NextHeader(), a.Len(), a.SPI(), a.Seq())
			if !bytes.Equal(c[:AHFixedLen], append(append([]byte{}, b[:2]...), append([]byte{0, 0}, b[4:12]...)...)) {
				t.Fatalf("ah header round trip: %x vs %x", c[:12], b[:12])
			}
		}
	})
}

// FuzzTCP parses anything as a TCP header and its options.
func FuzzTCP(f *testing.F) {
	f.Add([]byte{0x9c, 0x40, 0x13, 0x89, 0, 0, 3, 0xe8, 0, 0, 7, 0xd0, 0xa0, 0x12, 0xff, 0xff, 0, 0, 0, 0,
		2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7})
	f.Add([]byte{0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x10, 0, 0, 0, 0, 0, 0, 1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseTCP(b)
		if err != nil {
			return
		}
		_ = h.Payload()
		var o TCPOptions
		if ParseTCPOptions(h.Options(), &o) == nil {
			if o.WS > 14 || o.NSACK > 4 {
				t.Fatalf("options out of range: %+v", o)
			}
		}
	})
}
