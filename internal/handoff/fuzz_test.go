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
	if err := sendChunks(h, 1, func(ch *hpb.TakeChunk) error { seed = append([]byte(nil), ch.Flows...); return nil }); err != nil {
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

// FuzzAssemble: a version-2 stream from another gateway — a part's
// header, then its data in two chunks cut anywhere — never panics the
// assembler or the engine that imports what it completes; a part it
// completes holds exactly the bytes its header announced and was sent.
func FuzzAssemble(f *testing.F) {
	e, err := engine.New(engine.Config{Mode: engine.ModeSplit}, func(engine.Side, []byte, engine.Emitted) {})
	if err != nil {
		f.Fatal(err)
	}
	openFlows(e, mobile, 2, 3)
	var chunks []*hpb.TakeChunk
	if err := sendChunks(gateway.Handoff{Flows: e.Export(false)}, 2, overWire(f, func(ch *hpb.TakeChunk) error { chunks = append(chunks, ch); return nil })); err != nil {
		f.Fatal(err)
	}
	e.Close()
	var data []byte
	for _, ch := range chunks[1:] {
		data = append(data, ch.Data...)
	}
	hdr := chunks[0].Flows
	f.Add(hdr, data, uint16(len(data)/2))
	f.Add(hdr, data[:len(data)-1], uint16(3))
	f.Add(hdr, append(data, 1), uint16(0))
	f.Add(hdr[:len(hdr)/2], data, uint16(1))
	f.Add(hdr, []byte{}, uint16(0))
	f.Add([]byte{}, data, uint16(7))
	f.Fuzz(func(t *testing.T, hdr, data []byte, cut uint16) {
		a := assembler{version: 2}
		c := min(int(cut), len(data))
		var parts []Part
		for _, ch := range []*hpb.TakeChunk{{Version: 2, Flows: hdr}, {Version: 2, Data: data[:c]}, {Version: 2, Data: data[c:]}} {
			part, whole, err := a.add(ch)
			if err != nil {
				return
			}
			if whole {
				parts = append(parts, part)
			}
		}
		if a.end() != nil {
			return
		}
		got := 0
		for _, p := range parts {
			got += buffered(p.Flows)
		}
		if got != len(data) {
			t.Fatalf("parts hold %d bytes; %d were sent", got, len(data))
		}
		e, err := engine.New(engine.Config{Mode: engine.ModeSplit}, func(engine.Side, []byte, engine.Emitted) {})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		for _, p := range parts {
			e.Import(p.Flows)
		}
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
