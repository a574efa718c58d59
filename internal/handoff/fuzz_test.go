package handoff

import (
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
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
