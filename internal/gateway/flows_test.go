package gateway

import (
	"net/netip"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// TestRekeyNotEntryReplacement: a flow follows its endpoints' rekey, and
// only a rekey — not the SAD given again with the old SAs beside the new
// ones, which gives the old SAs new entries (new states carrying theirs
// on). The flow whose sender is silent is marked stale when the other
// direction moves to its new SA, and stays stale — the gateway asking its
// endpoint for a packet — until a packet shows the sender's new SA: an
// answer the sender gave on its old SA, just before it rekeyed, does not
// end the wait. It did: under CI's load TestGatewayRekey's idle sender
// answered on its old SA, that answer cleared the mark, and the gateway
// sealed on the old SA until the routers had deleted it.
func TestRekeyNotEntryReplacement(t *testing.T) {
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	ab2 := tunnelConfig(0x3003, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba2 := tunnelConfig(0x4004, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, State: statedir.Memory()}, sadOf(t, []ipsec.Config{ab, ba}), func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	state := func(c ipsec.Config) *saState {
		t.Helper()
		e, ok := g.sad.Load().Lookup(c.SPI, c.Dst, c.Proto)
		if !ok {
			t.Fatalf("SA %#x not in the SAD", c.SPI)
		}
		return g.state(e)
	}
	sender := route{netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:5001")}
	receiver := sender.reverse()
	note := func(r route, c ipsec.Config, from engine.Side) {
		t.Helper()
		if !g.noteRoute(r, state(c), from, nil) {
			t.Fatalf("a packet of %v on SA %#x refused", r, c.SPI)
		}
	}
	check := func(when string, wantSPI uint32, wantStale bool) {
		t.Helper()
		tb := g.routesOf(sender)
		tb.mu.Lock()
		v, ok := tb.flows.peek(sender)
		tb.mu.Unlock()
		switch {
		case !ok:
			t.Fatalf("%s: no route for the sender's flow", when)
		case v.st.e.Config.SPI != wantSPI || v.stale != wantStale:
			t.Fatalf("%s: the sender's flow on SA %#x, stale %v; want %#x, stale %v", when, v.st.e.Config.SPI, v.stale, wantSPI, wantStale)
		}
	}
	rekeys := func() uint64 { return g.Stats().Rekeys }

	note(sender, ab, engine.Wire)
	note(receiver, ba, engine.Radio)
	check("before the rekey", 0x1001, false)

	// Given again and again (a security server's pushes) while the flow
	// is quiet: its next packet comes on a state many entries newer.
	for range 10 {
		g.SetSAD(sadOf(t, []ipsec.Config{ab, ba, ab2, ba2}))
		state(ab)
		state(ba)
	}
	note(receiver, ba, engine.Radio) // the receiver's ACK on its old SA's newest entry
	check("the SAD given again", 0x1001, false)
	if n := rekeys(); n != 0 {
		t.Fatalf("a new entry for the same SA counted as %d rekeys", n)
	}

	note(receiver, ba2, engine.Radio) // the receiver rekeyed
	check("the receiver rekeyed", 0x1001, true)

	note(sender, ab, engine.Wire) // the sender's answer, sent before it rekeyed
	check("the sender answered on its old SA", 0x1001, true)

	note(sender, ab2, engine.Wire)
	check("the sender answered on its new SA", 0x3003, false)
	if n := rekeys(); n != 2 {
		t.Fatalf("%d rekeys counted, want 2 (one each way)", n)
	}
	if g := state(ab2).generation(); g != 1 {
		t.Fatalf("the new SA's generation %d, want 1", g)
	}
}
