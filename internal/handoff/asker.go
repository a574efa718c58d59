package handoff

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/espep/espep/internal/gateway"
)

// Asker asks other gateways for a mobile whose flows this gateway meets
// mid-stream (gateway.SetMissing): the gateway its SAs came from first
// (their provenance, when a neighbour provisioned them), then every
// neighbour, one at a time, until one hands the mobile over. While it
// asks, the mobile's packets are held (as many as the gateway's bound
// allows; the rest dropped, and TCP resends them) and handed on when the
// asking ends (gateway.ReleaseHeld); after an answer — flows or none — the
// mobile is not asked about again for a while, and its unknown flows are
// relayed as before.
type Asker struct {
	G     *gateway.Gateway
	Peers Peers // the neighbours, by name (nil: none; Missing holds nothing)
	Log   *slog.Logger
	// Timeout bounds one ask (default 2 s): how long a mobile's packets
	// may be held when a neighbour does not answer (gone: crashed or cut
	// off). Quiet is how long after an ask the mobile is not asked about
	// again (default 30 s).
	Timeout, Quiet time.Duration
	// Done, if set, is told of every ask when it ends: the mobile, how
	// many flows came, and how long from the first held packet to the
	// last part resumed.
	Done func(mobile netip.Addr, flows int, took time.Duration)

	mu    sync.Mutex
	asked map[netip.Addr]time.Time // pending (zero) or answered at
}

// maxAsked bounds the mobiles remembered.
const maxAsked = 4096

// Missing is the gateway's hook: true (hold the packet) while the mobile
// is being asked for.
func (a *Asker) Missing(mobile netip.Addr) bool {
	if a.Peers == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.asked == nil {
		a.asked = map[netip.Addr]time.Time{}
	}
	at, seen := a.asked[mobile]
	switch {
	case seen && at.IsZero():
		return true // being asked
	case seen && time.Since(at) < a.quiet():
		return false // answered lately: relay
	}
	// Only a new ask looks at the neighbours (a copy of the set): the
	// packets of flows relayed after an answer pass above, at a map lookup.
	if len(a.Peers.All()) == 0 {
		return false // no one to ask: relay, as before handoffs
	}
	if len(a.asked) >= maxAsked {
		for m, t := range a.asked {
			if !t.IsZero() {
				delete(a.asked, m) // any answered one goes; pending ones stay
				break
			}
		}
		if len(a.asked) >= maxAsked {
			return false // every slot asking: do not hold more
		}
	}
	a.asked[mobile] = time.Time{}
	go a.ask(mobile)
	return true
}

// Asking reports whether the mobile is being asked for now (for
// Server.Arriving).
func (a *Asker) Asking(mobile netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, seen := a.asked[mobile]
	return seen && at.IsZero()
}

func (a *Asker) quiet() time.Duration {
	if a.Quiet > 0 {
		return a.Quiet
	}
	return 30 * time.Second
}

// ask asks the provenance gateway and the neighbours in turn.
func (a *Asker) ask(mobile netip.Addr) {
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	var flows int
	for _, c := range a.order(mobile) {
		n, err := c.Take(ctx, mobile, a.G.Resume)
		if err != nil && a.Log != nil {
			a.Log.Warn("handoff: take", "mobile", mobile, "err", err)
		}
		if flows += n; n > 0 || ctx.Err() != nil {
			break
		}
	}
	took := time.Since(start)
	if a.Log != nil {
		a.Log.Info("handoff: asked for a mobile", "mobile", mobile, "flows", flows, "took", took.Round(time.Microsecond))
	}
	if a.Done != nil {
		a.Done(mobile, flows, took)
	}
	if flows == 0 {
		a.G.Unanswered(mobile) // whoever carried it is gone, its numbers with it
	}
	a.mu.Lock()
	a.asked[mobile] = time.Now()
	a.mu.Unlock()
	// Answered first: a packet that comes now goes on, not into the hold
	// that is being emptied.
	a.G.ReleaseHeld(mobile)
}

// order is whom to ask: the gateways the mobile's SAs came from, then
// the other neighbours.
func (a *Asker) order(mobile netip.Addr) []*Client {
	var out []*Client
	seen := map[*Client]bool{}
	for _, from := range a.G.ProvenanceOfPeer(mobile) {
		if c := a.Peers.Get(from); c != nil && !seen[c] {
			out, seen[c] = append(out, c), true
		}
	}
	for _, c := range a.Peers.All() {
		if !seen[c] {
			out, seen[c] = append(out, c), true
		}
	}
	return out
}
