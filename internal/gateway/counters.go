package gateway

import (
	"sync/atomic"

	"github.com/espep/espep/internal/ctable"
)

// Counters. Every counter is a row of counterTable, from which Stats, the
// Prometheus families (Counters) and the CLI's summary (Summary) are made;
// TestCounterTable fails if a Stats field has no row.
//
// The values live in stripes, each on cache lines of its own: a packet's
// counts go to the stripe of the goroutine's call (Process) or of the
// engine shard whose lock is held (engineOut), so cores counting at once
// do not fight over one line; rare events go to stripe 0. Stats sums the
// stripes.

// counter names a row of counterTable.
type counter uint8

const (
	cPackets counter = iota
	cOpened
	cSealed
	cRelayed
	cUnknown
	cClassNone
	cClassRead
	cIKE
	cICV
	cReplays
	cOpenErrors
	cOriginals
	cNotYetSafe
	cDowngrades
	cSealErrors
	cIPIP
	cMalformed
	cNoRoute
	cRekeys
	cElicits
	cRetries
	cUndeliverable
	cSelectors
	cBindingViolations
	cNoState
	cSeqWaits
	cSeqExhausted
	cEvicted
	cRebinds
	cReadStale
	cDrains
	cWiped
	cFragments
	cKeepalives
	cNotIPsec
	cHandedOver
	cHeldForHandoff
	cReleased
	cBehind
	cBadChecksums
	numCounters
)

const packetsHelp = "Packets the gateway received, by what became of them."

// outcome is a row of the packets_total family.
func outcome(field, name, label string) ctable.Def {
	return ctable.Def{Field: field, Name: name, Family: "packets_total", LabelName: "outcome", Label: label, Help: packetsHelp}
}

func family(field, name, fam, help string) ctable.Def {
	return ctable.Def{Field: field, Name: name, Family: fam, Help: help}
}

// counterTable is the gateway's counters, in the summary's order.
var counterTable = [numCounters]ctable.Def{
	cPackets:           family("Packets", "packets", "packets_received_total", "Packets the gateway received."),
	cOpened:            outcome("Opened", "opened", "opened"),
	cSealed:            family("Sealed", "sealed", "sealed_total", "Packets the gateway sealed on an endpoint's SA."),
	cRelayed:           outcome("Relayed", "relayed", "relayed"),
	cUnknown:           outcome("Unknown", "unknown", "unknown_sa"),
	cClassNone:         outcome("ClassNone", "class-none", "class_none"),
	cClassRead:         outcome("ClassRead", "class-read", "class_read"),
	cIKE:               outcome("IKE", "ike", "ike"),
	cICV:               outcome("ICVFailures", "icv-failures", "icv_failure"),
	cReplays:           outcome("Replays", "replays", "replay"),
	cOpenErrors:        outcome("OpenErrors", "open-errors", "open_error"),
	cOriginals:         family("Originals", "originals", "originals_total", "Packets passed on as they came while an SA's IV generator was unconfirmed."),
	cNotYetSafe:        family("NotYetSafe", "not-yet-safe", "not_yet_safe_total", "Engine packets dropped: nothing safe to seal them with yet."),
	cDowngrades:        family("NonceDowngrades", "nonce-downgrades", "nonce_downgrades_total", "SAs the gateway will never seal on: their IVs are not seq XOR salt."),
	cSealErrors:        family("SealErrors", "seal-errors", "seal_errors_total", "Packets the gateway could not seal."),
	cIPIP:              family("IPIP", "ipip", "ipip_total", "Packets that came in an IP-in-IP tunnel."),
	cMalformed:         outcome("Malformed", "malformed", "malformed"),
	cNoRoute:           family("NoRoute", "no-route", "no_route_total", "Engine packets dropped: no route for the flow (forgotten, or not yet seen since a restart)."),
	cRekeys:            family("Rekeys", "rekeys", "rekeys_total", "Flows seen moving to a new SA (the endpoints rekeyed)."),
	cElicits:           family("Elicits", "elicits", "elicits_total", "Keep-alives asked of the engine to have an endpoint show its new SA."),
	cRetries:           family("Retries", "retries", "retries_total", "Flows the engine resent at once when a route appeared for what it had sent without one."),
	cUndeliverable:     outcome("Undeliverable", "undeliverable", "undeliverable"),
	cSelectors:         outcome("Selectors", "selectors", "outside_selectors"),
	cBindingViolations: outcome("BindingViolations", "binding-violations", "binding_violation"),
	cNoState:           outcome("NoState", "no-state", "no_state_dir"),
	cSeqWaits:          family("SeqWaits", "seq-waits", "seq_waits_total", "Seals given up: the SA's next sequence numbers not reserved on disk in time."),
	cSeqExhausted:      family("SeqExhausted", "seq-exhausted", "seq_exhausted_total", "Seals refused: the SA's sequence numbers ran out (no ESN)."),
	cEvicted:           family("Evicted", "evicted", "evicted_total", "Flows forgotten, idle longest first, to make room in a full table."),
	cRebinds:           family("Rebinds", "rebinds", "rebinds_total", "SAs whose verified packets showed new UDP ports (NAT rebinding)."),
	cReadStale:         family("ReadStale", "read-stale", "read_stale_total", "Read-class resends not sent: out of the receiver's replay window."),
	cDrains:            family("Drains", "drains", "drains_total", "SAs the gateway numbers that left the SA files and were kept while in use."),
	cWiped:             family("Wiped", "wiped", "wiped_total", "SA entries whose keys the gateway wiped."),
	cFragments:         outcome("Fragments", "fragments", "fragment"),
	cKeepalives:        outcome("Keepalives", "keepalives", "keepalive"),
	cNotIPsec:          outcome("NotIPsec", "not-ipsec", "not_ipsec"),
	cHandedOver:        outcome("HandedOver", "handed-over", "handed_over"),
	cHeldForHandoff:    outcome("HeldForHandoff", "held-for-handoff", "held_for_handoff"),
	cReleased:          outcome("Released", "released", "released_after_handoff"),
	cBehind:            outcome("Behind", "behind", "behind_dropped"),
	cBadChecksums:      outcome("BadChecksums", "bad-checksums", "bad_checksum"),
}

// CounterTable returns the gateway's counter table (Stats fields, CLI
// words, Prometheus families).
func CounterTable() []ctable.Def { return counterTable[:] }

// stripe is one set of the counters, padded to cache lines of its own.
type stripe struct {
	v    [numCounters]atomic.Uint64
	busy atomic.Int64 // Process calls of this stripe under way (Close waits for none)
	_    [64]byte
}

func (s *stripe) add(c counter) { s.v[c].Add(1) }

// counters are the stripes.
type counters []stripe

// rare is the stripe of events too rare to contend.
func (cs counters) rare() *stripe { return &cs[0] }

// sum returns every counter summed over the stripes.
func (cs counters) sum() (out [numCounters]uint64) {
	for i := range cs {
		for c := range out {
			out[c] += cs[i].v[c].Load()
		}
	}
	return out
}

// fill sets st's counter fields from the stripes, through the table.
func (cs counters) fill(st *Stats) {
	sum := cs.sum()
	ctable.Fill(counterTable[:], st, func(i int) uint64 { return sum[i] })
}
