package gateway

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
)

// TestProvision: SAs a neighbour offers enter the SAD with their
// provenance; they expire; the set is bounded, the oldest going first; an
// SA another source gives is taken from there, whichever came first.
func TestProvision(t *testing.T) {
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, Log: slog.New(slog.DiscardHandler)}, &ipsec.SAD{}, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	now := time.Now()
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	if err := g.Provision("gw-7", []ipsec.Config{ab}, time.Minute, now); err != nil {
		t.Fatal(err)
	}
	if p, ok := g.ProvenanceOf(ab.ID()); !ok || p.From != "gw-7" || !p.Expires.Equal(now.Add(time.Minute)) {
		t.Fatalf("provenance: %+v %v", p, ok)
	}
	if _, ok := g.sad.Load().Get(ab.ID()); !ok {
		t.Fatal("a provisioned SA is not in the SAD")
	}
	// The same SA from an SA file (another source, started later) wins.
	fileCopy := ab
	fileCopy.EncKey = append([]byte(nil), ab.EncKey...)
	e, err := ipsec.NewEntry(fileCopy)
	if err != nil {
		t.Fatal(err)
	}
	g.SetSource("file", []*ipsec.Entry{e}) // reports the neighbours' copy, which gives way

	if got, _ := g.sad.Load().Get(ab.ID()); got != e {
		t.Fatal("the provisioned copy shadows the file's")
	}
	if err := g.ExpireProvisioned(now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.ProvenanceOf(ab.ID()); ok {
		t.Fatal("an expired SA kept")
	}
	// The bound.
	var many []ipsec.Config
	for i := range MaxProvisioned + 1 {
		many = append(many, tunnelConfig(uint32(0x10000+i), "192.0.2.1", fmt.Sprintf("10.%d.%d.1", i>>8, i&0xff), ipsec.EncAESGCM16))
	}
	g.Provision("gw-8", many[:1], time.Hour, now)
	g.Provision("gw-8", many[1:], time.Hour, now.Add(time.Second))
	if _, ok := g.ProvenanceOf(many[0].ID()); ok {
		t.Fatal("the oldest provisioned SA kept past the bound")
	}
	if _, ok := g.ProvenanceOf(many[len(many)-1].ID()); !ok {
		t.Fatal("the newest provisioned SA dropped")
	}
	if n := g.sad.Load().Len(); n < MaxProvisioned {
		t.Fatalf("%d SAs in the SAD", n)
	}
}
