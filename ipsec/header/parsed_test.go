package header

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestParse: each kind of packet gives the facts the stages need.
func TestParse(t *testing.T) {
	src4, dst4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	src6, dst6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	tcp4 := make([]byte, 40)
	WriteIPv4(tcp4, 0, 40, 1, true, 64, ProtoTCP, src4, dst4)
	binary.BigEndian.PutUint16(tcp4[20:], 5001)
	binary.BigEndian.PutUint16(tcp4[22:], 80)
	frag4 := append([]byte(nil), tcp4...)
	IPv4(frag4).SetFlagsFrag(0x2000) // MF: a first fragment, ports still there
	later4 := append([]byte(nil), tcp4...)
	IPv4(later4).SetFlagsFrag(0x0010)
	tcp6 := make([]byte, 40+8+20)
	WriteIPv6(tcp6, 0, 0, 28, ProtoDestOpts, 64, src6, dst6)
	copy(tcp6[40:], []byte{ProtoTCP, 0, 1, 4, 0, 0, 0, 0})
	binary.BigEndian.PutUint16(tcp6[48:], 443)
	binary.BigEndian.PutUint16(tcp6[50:], 40000)
	frag6 := make([]byte, 40+8+20)
	WriteIPv6(frag6, 0, 0, 28, ProtoFragment, 64, src6, dst6)
	copy(frag6[40:], []byte{ProtoTCP, 0, 0, 1, 0, 0, 0, 7}) // offset 0, M: first fragment
	icmp := make([]byte, 28)
	WriteIPv4(icmp, 0, 28, 1, true, 64, ProtoICMP, src4, dst4)
	icmp[20], icmp[21] = 8, 0
	for _, tc := range []struct {
		name      string
		pkt       []byte
		want      Parsed
		tcp       bool
		wantError bool
	}{
		{"tcp4", tcp4, Parsed{Version: 4, Len: 40, Src: src4, Dst: dst4, Proto: ProtoTCP, NHOff: 9, L4: 20, HasPorts: true, SrcPort: 5001, DstPort: 80}, true, false},
		{"first fragment4", frag4, Parsed{Version: 4, Len: 40, Src: src4, Dst: dst4, Proto: ProtoTCP, NHOff: 9, L4: 20, Fragment: true, HasPorts: true, SrcPort: 5001, DstPort: 80}, false, false},
		{"later fragment4", later4, Parsed{Version: 4, Len: 40, Src: src4, Dst: dst4, Proto: ProtoTCP, NHOff: 9, L4: 20, Fragment: true}, false, false},
		{"tcp6 after options", tcp6, Parsed{Version: 6, Len: 68, Src: src6, Dst: dst6, Proto: ProtoTCP, NHOff: 40, L4: 48, HasPorts: true, SrcPort: 443, DstPort: 40000}, true, false},
		{"fragment6", frag6, Parsed{Version: 6, Len: 68, Src: src6, Dst: dst6, Proto: ProtoFragment, NHOff: 6, L4: 40, Fragment: true}, false, false},
		{"icmp echo", icmp, Parsed{Version: 4, Len: 28, Src: src4, Dst: dst4, Proto: ProtoICMP, NHOff: 9, L4: 20, HasPorts: true, SrcPort: 8 << 8}, false, false},
		{"truncated", tcp4[:30], Parsed{}, false, true},
		{"version 5", []byte{0x50, 0, 0, 20}, Parsed{}, false, true},
		{"empty", nil, Parsed{}, false, true},
	} {
		var p Parsed
		err := Parse(tc.pkt, &p)
		if (err != nil) != tc.wantError || err == nil && (p != tc.want || p.IsTCP() != tc.tcp) {
			t.Errorf("%s: %+v (err %v), want %+v", tc.name, p, err, tc.want)
		}
	}
}

// FuzzParse: anything parses or errs without a panic, every offset lies
// inside the packet, and the facts agree with the header views' own.
func FuzzParse(f *testing.F) {
	seedPackets(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Parsed
		if err := Parse(b, &p); err != nil {
			return
		}
		if p.Len > len(b) || p.L4 > p.Len || p.NHOff >= p.L4 {
			t.Fatalf("offsets out of the packet: %+v, %d bytes", p, len(b))
		}
		_ = p.Upper(b)
		if p.HasPorts && p.Proto != ProtoICMP && p.Proto != ProtoICMPv6 && binary.BigEndian.Uint16(b[p.L4:]) != p.SrcPort {
			t.Fatalf("source port %d, the bytes say otherwise", p.SrcPort)
		}
		if b[p.NHOff] != p.Proto && !(p.Version == 6 && p.Fragment) {
			t.Fatalf("next header byte %d, proto %d", b[p.NHOff], p.Proto)
		}
	})
}
