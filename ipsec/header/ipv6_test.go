package header

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestIPv6Fragments: a first fragment, a later one and an atomic fragment
// (RFC 6946). Only the atomic one is a whole packet whose upper layer a
// walk may reach; a first fragment once passed for a whole TCP segment.
func TestIPv6Fragments(t *testing.T) {
	for _, tc := range []struct {
		name    string
		offFlag uint16
		want    uint8
	}{
		{"first", 0x0001, ProtoFragment},
		{"later", 0x0008, ProtoFragment},
		{"last", 0x0010, ProtoFragment},
		{"atomic", 0x0000, ProtoTCP},
	} {
		p := make([]byte, IPv6Len+8+20)
		WriteIPv6(p, 0, 0, 28, ProtoFragment, 64, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"))
		p[IPv6Len] = ProtoTCP
		binary.BigEndian.PutUint16(p[IPv6Len+2:], tc.offFlag)
		h, err := ParseIPv6(p)
		if err != nil {
			t.Fatal(err)
		}
		proto, _, _, err := h.UpperLayer()
		if err != nil || proto != tc.want {
			t.Errorf("%s fragment: upper layer %d, %v; want %d", tc.name, proto, err, tc.want)
		}
	}
}
