package gateway

import (
	"slices"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
)

// TestReplayAcrossEntryReplacement: an SA given again with the same keys
// (a security server's push, a reload) keeps its replay window at the
// gateway: a packet opened before is refused after, as it would have been
// without the new entry (DESIGN.md rule 3).
func TestReplayAcrossEntryReplacement(t *testing.T) {
	r := newPathRig(t, ipsec.EncAESGCM16, true, engine.ModeSplit)
	r.batch(4)
	old := slices.Clone(r.data[1])
	for i := range 3 {
		r.g.Process(engine.Wire, slices.Clone(r.data[i]))
	}
	before := r.g.Stats()
	sad := &ipsec.SAD{}
	for _, c := range r.cfgs {
		c.EncKey, c.IntegKey = slices.Clone(c.EncKey), slices.Clone(c.IntegKey)
		e, err := ipsec.NewEntry(c)
		if err != nil {
			t.Fatal(err)
		}
		sad.Add(e)
	}
	r.g.SetSAD(sad)
	r.g.Process(engine.Wire, old)
	after := r.g.Stats()
	if after.Opened != before.Opened || after.Replays != before.Replays+1 {
		t.Fatalf("a packet opened before the SA was given again: opened %d → %d, replays %d → %d", before.Opened, after.Opened, before.Replays, after.Replays)
	}
	r.g.Process(engine.Wire, slices.Clone(r.data[3]))
	if got := r.g.Stats().Opened; got != after.Opened+1 {
		t.Fatalf("the next packet on the SA: opened %d → %d", after.Opened, got)
	}
}
