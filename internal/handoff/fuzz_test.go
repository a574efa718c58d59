package handoff

import (
	"bytes"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	hpb "github.com/espep/espep/internal/handoff/pb"
	"github.com/espep/espep/internal/ikefollow"
)

// FuzzDecodeChunk: a chunk from another gateway — authenticated, but
// possibly broken — never panics the decoder or the engine that imports
// it; it is taken or refused.
func FuzzDecodeChunk(f *testing.F) {
	e, err := engine.New(engine.Config{Mode: engine.ModeSplit}, func(engine.Side, []byte, engine.Emitted) {})
	if err != nil {
		f.Fatal(err)
	}
	openFlows(e, mobile, 2, 3)
	var seed []byte
	h := gateway.Handoff{Flows: e.Export(false), SAs: []gateway.SAHandoff{{Owned: true, Last: 9, Window: []uint64{1, 2}}},
		Routes: []gateway.RouteHandoff{{From: engine.Radio}}}
	if err := sendChunks(h, func(b []byte) error { seed = append([]byte(nil), b...); return nil }); err != nil {
		f.Fatal(err)
	}
	e.Close()
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		part, err := DecodeChunk(b)
		if err != nil {
			return
		}
		flows := part.Flows
		e, err := engine.New(engine.Config{Mode: engine.ModeSplit}, func(engine.Side, []byte, engine.Emitted) {})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		e.Import(flows)
	})
}

// FuzzOfferedIKE: the IKE SAs of an offer — a neighbour's, authenticated
// but possibly broken — are taken whole or refused, never a panic; what
// is taken has its SPIs and valid keys, and writes back to the same keys.
func FuzzOfferedIKE(f *testing.F) {
	good := ikefollow.AppendKeyFile(nil, testIKEKeys(1))
	noSPIs := testIKEKeys(2)
	noSPIs.SPIi, noSPIs.SPIr = 0, 0
	f.Add(good, true)
	f.Add(good[:len(good)/2], false)
	f.Add(ikefollow.AppendKeyFile(nil, noSPIs), false)
	f.Add(ikefollow.AppendKeyFile(nil, testIKEKeys(3), testIKEKeys(4)), true)
	f.Add([]byte("espep-ike 1\n[ike]\n"), false)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, b []byte, encap bool) {
		ks, err := offeredIKE([]*hpb.OfferedIKE{{Keys: b, Encap: encap}})
		if err != nil {
			return
		}
		if len(ks) != 1 || ks[0].Encap != encap || ks[0].Keys.SPIi == 0 || ks[0].Keys.SPIr == 0 || ks[0].Keys.Validate() != nil {
			t.Fatalf("taken: %+v", ks)
		}
		again, err := offeredIKE([]*hpb.OfferedIKE{{Keys: ikefollow.AppendKeyFile(nil, ks[0].Keys), Encap: encap}})
		if err != nil || !bytes.Equal(again[0].Keys.D, ks[0].Keys.D) || again[0].Keys.SPIi != ks[0].Keys.SPIi || again[0].Keys.Encr != ks[0].Keys.Encr {
			t.Fatalf("written back and read: %+v, %v", again, err)
		}
	})
}
