package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
)

// TestUnroutedBounded: the table of flows dropped for want of a route
// holds at most maxOwed; a full one takes a new flow only in place of one
// older than unroutedKeep, and a verified packet on any route ages it out
// — so a flood of flows that never get a route neither grows it nor keeps
// the per-packet check alive.
func TestUnroutedBounded(t *testing.T) {
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}}, &ipsec.SAD{}, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	flow := func(i int) route {
		return route{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 80),
			netip.MustParseAddrPort("10.9.0.1:40000")}
	}
	for i := range maxOwed + 50 {
		g.noteUnrouted(flow(i), engine.Radio)
	}
	if n := g.unroutedN.Load(); n != maxOwed || len(g.unrouted) != maxOwed {
		t.Fatalf("%d entries (counted %d) after %d flows; the bound is %d", len(g.unrouted), n, maxOwed+50, maxOwed)
	}
	if _, ok := g.unrouted[flow(maxOwed+1)]; ok {
		t.Fatal("a full table of fresh entries took a new flow")
	}

	old := time.Now().Add(-unroutedKeep - time.Second)
	for r, u := range g.unrouted {
		u.at = old
		g.unrouted[r] = u
	}
	g.noteUnrouted(flow(maxOwed+1), engine.Radio)
	if _, ok := g.unrouted[flow(maxOwed+1)]; !ok || len(g.unrouted) != 1 {
		t.Fatalf("a full table of stale entries: the new flow kept %v, %d entries", ok, len(g.unrouted))
	}

	g.noteUnrouted(flow(0), engine.Radio)
	u := g.unrouted[flow(0)]
	u.at = old
	g.unrouted[flow(0)] = u
	g.unroutedSwept = old
	g.retryUnrouted(flow(5)) // a packet on a route not in the table
	if _, ok := g.unrouted[flow(0)]; ok || g.unroutedN.Load() != 1 {
		t.Fatalf("a verified packet left a stale entry: %d entries", g.unroutedN.Load())
	}
	g.retryUnrouted(flow(maxOwed + 1)) // its route came: no split flow, but the entry goes
	if g.unroutedN.Load() != 0 {
		t.Fatalf("%d entries after the last flow's route came", g.unroutedN.Load())
	}
}
