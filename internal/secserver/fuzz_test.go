package secserver

import (
	"bytes"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// FuzzToConfig: any bytes an agent sends as an SA give an error or an SA
// the ipsec package builds — never a panic, never a read grant of an AEAD
// SA or one holding an integrity key — and an SA read back from the wire
// form it gives is the same SA.
func FuzzToConfig(f *testing.F) {
	for _, s := range []*pb.SA{
		gcmSA(0x1001, wired, mobile),
		cbcSA(0x3003, mobile, wired, pb.Class_CLASS_READ),
		cbcSA(0x3004, mobile, wired, pb.Class_CLASS_WRITE),
		{Spi: 0x4004, Proto: "ah", Src: wired.AsSlice(), Dst: mobile.AsSlice(), Mode: "transport", Integ: "hmac-sha256-128",
			IntegKey: integKey, Class: pb.Class_CLASS_WRITE},
		{Spi: 0x5005, Proto: "esp", Src: wired.AsSlice(), Dst: mobile.AsSlice(), Mode: "any", Enc: "chacha20-poly1305",
			EncKey: make([]byte, 36), EncapSrcPort: 4500, EncapDstPort: 4500, Esn: true, HardSeconds: 3600, Class: pb.Class_CLASS_WRITE},
		{Spi: 0x6006, Proto: "esp", Src: wired.AsSlice(), Dst: mobile.AsSlice()[:3], Mode: "tunnel", Enc: "aes-gcm16", EncKey: gcmKey},
		{Spi: 1, Proto: "esp", Mode: "tunnel", Enc: "aes-gcm16", EncKey: gcmKey, Class: pb.Class_CLASS_READ, EncapSrcPort: 70000},
	} {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s pb.SA
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		c, err := toConfig(&s)
		if err != nil {
			return
		}
		if c.Class == ipsec.ClassRead && (c.Enc.AEAD() || len(c.IntegKey) != 0) {
			t.Fatalf("a read SA that holds or needs its integrity key: %+v", c)
		}
		back, err := toConfig(toPB(&c, c.Class))
		if err != nil || back.ID() != c.ID() || back.Class != c.Class || string(back.EncKey) != string(c.EncKey) {
			t.Fatalf("round trip: %+v %v", back, err)
		}
	})
}

// FuzzIKEFromPB: any IKE keys message an agent sends is checked into keys
// (which round-trip) or refused, never a panic.
func FuzzIKEFromPB(f *testing.F) {
	gcm := ikeKeysPB(wired, mobile)
	gcm.Encr, gcm.Integ, gcm.SkAi, gcm.SkAr, gcm.SkEi, gcm.SkEr = "aes-gcm16", "none", nil, nil, make([]byte, 20), make([]byte, 20)
	bad := ikeKeysPB(wired, mobile)
	bad.SpiI, bad.HardSeconds = 7, -1
	v6 := ikeKeysPB(netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"))
	v6.SpiI, v6.SpiR, v6.HardSeconds = 1, 2, 3600
	for _, x := range []*pb.IKEKeys{ikeKeysPB(wired, mobile), gcm, bad, v6} {
		b, err := proto.Marshal(x)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var x pb.IKEKeys
		if proto.Unmarshal(b, &x) != nil {
			return
		}
		u, err := ikeFromPB(&x)
		if err != nil {
			return
		}
		again, err := ikeFromPB(ikeToPB(&u))
		if err != nil || again.Keys.PRF != u.Keys.PRF || again.Initiator != u.Initiator || !bytes.Equal(again.Keys.D, u.Keys.D) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
