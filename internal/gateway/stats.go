package gateway

import (
	"cmp"
	"github.com/espep/espep/internal/ctable"
	"slices"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
)

// Stats are the gateway's counters: one field per row of counterTable
// (counters.go), which gives each its meaning.
type Stats struct {
	Packets                    uint64
	Relayed                    uint64 // passed on as they came, for any reason below
	IKE, Keepalives, Fragments uint64
	IPIP                       uint64 // packets that came in an IP-in-IP tunnel
	NotIPsec                   uint64 // plain packets (relayed, or to the engine with Plain)
	Unknown                    uint64 // ESP/AH with no SA here
	ClassNone, ClassRead       uint64
	Opened                     uint64
	ICVFailures, Replays       uint64
	OpenErrors                 uint64 // other failures to open
	Malformed                  uint64
	Undeliverable              uint64 // verified, but nothing to deliver (dummy, bad trailer, bad inner packet): dropped
	Selectors                  uint64 // verified, but outside the SA's traffic selectors (RFC 4301 §5.2): dropped
	BindingViolations          uint64 // packets claiming a protected flow in the clear or on another peer's SA: dropped
	BadChecksums               uint64 // plain TCP segments whose checksum did not hold: dropped, as the receiver's TCP would
	NoState                    uint64 // packets of counter-IV SAs relayed for want of a state directory
	Sealed, SealErrors         uint64
	SeqWaits                   uint64 // seals held back: the SA's next numbers not yet reserved on disk
	SeqExhausted               uint64 // seals refused: the SA's sequence numbers ran out (no ESN)
	Originals                  uint64 // engine passed a packet on unchanged: its original ciphertext sent
	NotYetSafe                 uint64 // engine packets dropped: the SA's IV generator not confirmed
	NonceDowngrades            uint64 // SAs the gateway will never seal on
	NoRoute                    uint64 // engine packets dropped: no route for the flow (forgotten, or not yet seen since a restart)
	Evicted                    uint64 // flows forgotten, idle longest first, to make room
	Rekeys                     uint64 // flows seen moving to a new SA
	Rebinds                    uint64 // SAs whose verified packets showed new UDP ports (NAT rebinding)
	Elicits                    uint64 // keep-alives sent to have an endpoint show its new SA
	Retries                    uint64 // flows resent at once when a route appeared for what the engine sent without one
	ReadStale                  uint64 // read-class resends not sent: out of the receiver's replay window
	Drains                     uint64 // SAs the gateway numbers that left the SAD and were kept while their packets came
	Wiped                      uint64 // SA entries whose keys the gateway wiped
	HandedOver                 uint64 // verified packets on SAs handed to another gateway: dropped, never relayed with the endpoint's numbers
	HeldForHandoff             uint64 // verified packets of flows being asked of another gateway: held (as many as fit, ReleaseHeld) or dropped
	Released                   uint64 // held packets handed to the engine when the asking ended
	Behind                     uint64 // packets not relayed as they came while the gateway could not yet seal: their numbers a replay window behind what the gateway before it had used
	Engine                     engine.Stats
}

// SAStats is one SA's view.
type SAStats struct {
	ID             ipsec.ID
	Owned          bool   // the gateway numbers this SA's packets
	EndpointSeq    uint64 // highest sequence number seen from the endpoint
	GatewaySeq     uint64 // last sequence number the gateway sealed with
	Lead           int64  // GatewaySeq − EndpointSeq: the endpoint packets a receiver would drop if the gateway left now
	NonceConfirmed bool
	NonceBroken    bool
	Draining       bool // left the SAD; kept while its packets come
}

// Stats returns the counters (summed over their stripes) and the
// engine's.
func (g *Gateway) Stats() Stats {
	st := Stats{Engine: g.eng.Stats()}
	g.c.fill(&st)
	return st
}

// SAs returns the state of every write-class SA the gateway keeps (in the
// SAD or draining), by SPI.
func (g *Gateway) SAs() []SAStats {
	g.smu.Lock()
	defer g.smu.Unlock()
	out := make([]SAStats, 0, len(g.states)+len(g.draining))
	for _, m := range []map[ipsec.ID]*saState{g.states, g.draining} {
		for id, st := range m {
			st.mu.Lock()
			st.nonce.mu.Lock()
			out = append(out, SAStats{ID: id, Owned: st.owned, EndpointSeq: st.maxIn, GatewaySeq: st.last,
				Lead: int64(st.last) - int64(st.maxIn), NonceConfirmed: !st.nonce.sensitive || st.nonce.seen >= 2 && !st.nonce.broken && !st.nonce.noState,
				NonceBroken: st.nonce.broken, Draining: st.draining.Load()})
			st.nonce.mu.Unlock()
			st.mu.Unlock()
		}
	}
	slices.SortFunc(out, func(a, b SAStats) int { return cmp.Compare(a.ID.SPI, b.ID.SPI) })
	return out
}

// Summary is the CLI's one-line summary of the gateway's counters (the
// engine's: s.Engine.Summary()).
func (s Stats) Summary() string { return ctable.Line(CounterTable(), s) }
