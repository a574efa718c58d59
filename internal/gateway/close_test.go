package gateway

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
)

// TestCloseStopsEverything: a gateway whose split flows hold unacknowledged
// data (their retransmission timers armed), with a keep-alive request
// queued and an SA draining (its timer armed), sends nothing once Close
// has returned — no engine timer, request or drain sweep fires — and no
// goroutine of it is left (goleak).
func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	r := newPathRigN(t, ipsec.EncAESGCM16, true, engine.ModeSplit, 4, false, nil)
	for _, f := range r.flows {
		f.batch(32)
		for i := range f.data {
			r.g.Process(engine.Wire, f.data[i]) // no ACKs: the engine's sender keeps resending
		}
	}
	r.g.SetSAD(&ipsec.SAD{}) // every SA leaves the files: the numbered ones drain, with the drain timer armed
	time.Sleep(60 * time.Millisecond)
	if r.out.Load() == 0 {
		t.Fatal("the gateway sent nothing: the test did not test")
	}
	r.g.eng.Request(engine.Request{Wire: r.wire, Radio: r.radio, To: engine.Radio})
	r.g.Close()
	after, eng := r.out.Load(), r.g.Engine().Stats()
	time.Sleep(1500 * time.Millisecond) // past the engine's first RTO (~1.2 s here)
	if n := r.out.Load() - after; n != 0 {
		t.Fatalf("%d packets sent after Close", n)
	}
	if now := r.g.Engine().Stats(); now.Emitted != eng.Emitted || now.SplitRexmits != eng.SplitRexmits || now.Requests != eng.Requests {
		t.Fatalf("the engine worked after Close: %s, then %s", eng.Summary(), now.Summary())
	}
	r.g.Process(engine.Wire, r.data[0])
	if n := r.out.Load() - after; n != 0 {
		t.Fatal("a packet processed after Close")
	}
}
