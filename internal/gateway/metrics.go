package gateway

import (
	"sync"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/ipsec"
)

// Counters are the gateway's metric families: packets by what became of
// them, the engine's counters and gauges (flows, bytes held, RTT
// estimates), and per-SA counters of the SAs in force.
// Keys never appear: SAs are named by SPI, destination and protocol.
func (g *Gateway) Counters(prefix string) []metrics.Counter {
	// One snapshot serves a whole scrape: Stats walks every flow under the
	// engine's lock, and a scrape reads some twenty families.
	var mu sync.Mutex
	var last Stats
	var at time.Time
	stats := func() Stats {
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); now.Sub(at) > statsMaxAge {
			last, at = g.Stats(), now
		}
		return last
	}
	one := func(f func(Stats) uint64) func() []metrics.Sample {
		return func() []metrics.Sample { return []metrics.Sample{{Value: float64(f(stats()))}} }
	}
	outcome := func() []metrics.Sample {
		s := stats()
		var out []metrics.Sample
		for _, x := range []struct {
			name string
			v    uint64
		}{{"opened", s.Opened}, {"relayed", s.Relayed}, {"ike", s.IKE}, {"keepalive", s.Keepalives}, {"fragment", s.Fragments},
			{"not_ipsec", s.NotIPsec}, {"unknown_sa", s.Unknown}, {"class_none", s.ClassNone}, {"class_read", s.ClassRead},
			{"icv_failure", s.ICVFailures}, {"replay", s.Replays}, {"open_error", s.OpenErrors}, {"malformed", s.Malformed},
			{"undeliverable", s.Undeliverable}, {"outside_selectors", s.Selectors}, {"binding_violation", s.BindingViolations},
			{"no_state_dir", s.NoState}} {
			out = append(out, metrics.Sample{Value: float64(x.v), Labels: []string{x.name}})
		}
		return out
	}
	eng := func(f func(Stats) uint64) func() []metrics.Sample { return one(f) }
	cs := []metrics.Counter{
		{Name: prefix + "packets_total", Help: "Packets the gateway received, by what became of them.", Labels: []string{"outcome"}, Read: outcome},
		{Name: prefix + "sealed_total", Help: "Packets the gateway sealed on an endpoint's SA.", Read: one(func(s Stats) uint64 { return s.Sealed })},
		{Name: prefix + "seal_errors_total", Help: "Packets the gateway could not seal.", Read: one(func(s Stats) uint64 { return s.SealErrors })},
		{Name: prefix + "originals_total", Help: "Packets passed on as they came while an SA's IV generator was unconfirmed.", Read: one(func(s Stats) uint64 { return s.Originals })},
		{Name: prefix + "not_yet_safe_total", Help: "Engine packets dropped: nothing safe to seal them with yet.", Read: one(func(s Stats) uint64 { return s.NotYetSafe })},
		{Name: prefix + "nonce_downgrades_total", Help: "SAs the gateway will never seal on: their IVs are not seq XOR salt.", Read: one(func(s Stats) uint64 { return s.NonceDowngrades })},
		{Name: prefix + "no_route_total", Help: "Engine packets dropped: the flow's route was forgotten (table full).", Read: one(func(s Stats) uint64 { return s.NoRoute })},
		{Name: prefix + "rekeys_total", Help: "Flows seen moving to a new SA (the endpoints rekeyed).", Read: one(func(s Stats) uint64 { return s.Rekeys })},
		{Name: prefix + "elicits_total", Help: "Keep-alives sent to have an endpoint show its new SA.", Read: one(func(s Stats) uint64 { return s.Elicits })},
		{Name: prefix + "seq_waits_total", Help: "Seals given up: the SA's next sequence numbers not reserved on disk in time.", Read: one(func(s Stats) uint64 { return s.SeqWaits })},
		{Name: prefix + "seq_exhausted_total", Help: "Seals refused: the SA's sequence numbers ran out (no ESN).", Read: one(func(s Stats) uint64 { return s.SeqExhausted })},
		{Name: prefix + "evicted_total", Help: "Flows forgotten, idle longest first, to make room in a full table.", Read: one(func(s Stats) uint64 { return s.Evicted })},
		{Name: prefix + "rebinds_total", Help: "SAs whose verified packets showed new UDP ports (NAT rebinding).", Read: one(func(s Stats) uint64 { return s.Rebinds })},
		{Name: prefix + "read_stale_total", Help: "Read-class resends not sent: out of the receiver's replay window.", Read: one(func(s Stats) uint64 { return s.ReadStale })},
		{Name: prefix + "drains_total", Help: "SAs the gateway numbers that left the SA files and were kept while in use.", Read: one(func(s Stats) uint64 { return s.Drains })},
		{Name: prefix + "wiped_total", Help: "SA entries whose keys the gateway wiped.", Read: one(func(s Stats) uint64 { return s.Wiped })},
		{Name: prefix + "engine_expired_total", Help: "Flows the engine forgot: idle, never established, or reset.", Read: eng(func(s Stats) uint64 { return s.Engine.Expired })},
		{Name: prefix + "engine_challenge_acks_total", Help: "ACKs the engine sent for RSTs and ACKs it did not accept (RFC 5961).", Read: eng(func(s Stats) uint64 { return s.Engine.ChallengeAcks })},
		{Name: prefix + "engine_ignored_total", Help: "Segments the engine did not accept: RSTs not at the next byte, ACKs for bytes never sent, plain packets for protected flows.", Labels: []string{"what"},
			Read: func() []metrics.Sample {
				e := stats().Engine
				return []metrics.Sample{{Value: float64(e.RSTIgnored), Labels: []string{"rst"}}, {Value: float64(e.AckIgnored), Labels: []string{"ack"}},
					{Value: float64(e.PlainRefused), Labels: []string{"plain"}}}
			}},
		{Name: prefix + "engine_early_acked_bytes_total", Help: "Bytes acknowledged early on the receivers' behalf (split).", Read: eng(func(s Stats) uint64 { return s.Engine.EarlyAcked })},
		{Name: prefix + "engine_local_rexmits_total", Help: "Segments resent by the engine (snoop and split).", Read: eng(func(s Stats) uint64 {
			return s.Engine.LocalRexmits + s.Engine.TimeoutRexmits + s.Engine.SplitRexmits
		})},
		{Name: prefix + "engine_suppressed_dupacks_total", Help: "Duplicate ACKs snoop answered itself.", Read: eng(func(s Stats) uint64 { return s.Engine.SuppressedDupAcks })},
		{Name: prefix + "engine_timeouts_total", Help: "Retransmission timeouts of the engine's sender (split).", Read: eng(func(s Stats) uint64 { return s.Engine.SplitTimeouts })},
		{Name: prefix + "engine_tail_probes_total", Help: "Tail loss probes of the engine's sender (split, RFC 8985).", Read: eng(func(s Stats) uint64 { return s.Engine.TailProbes })},
	}
	gauge := func(name, help string, f func(engine.Stats) float64) metrics.Counter {
		return metrics.Counter{Name: prefix + name, Help: help, Gauge: true,
			Read: func() []metrics.Sample { return []metrics.Sample{{Value: f(stats().Engine)}} }}
	}
	cs = append(cs,
		gauge("engine_flows", "TCP flows the engine tracks.", func(s engine.Stats) float64 { return float64(s.Flows) }),
		gauge("engine_buffered_bytes", "Bytes split holds: acknowledged early, not yet by the receiver (whole chunks).",
			func(s engine.Stats) float64 { return float64(s.BufferedBytes) }),
		gauge("engine_cached_bytes", "Bytes of segments snoop holds for local resends.",
			func(s engine.Stats) float64 { return float64(s.CachedBytes) }),
		metrics.Counter{Name: prefix + "engine_srtt_seconds", Gauge: true, Labels: []string{"leg", "stat"},
			Help: "The flows' smoothed RTT estimates of each leg (min, mean, max over the flows that have one).",
			Read: func() []metrics.Sample {
				s := stats().Engine
				var out []metrics.Sample
				for _, l := range []struct {
					leg string
					r   engine.RTTSummary
				}{{"radio", s.RadioRTT}, {"wire", s.WireRTT}} {
					if l.r.Flows == 0 {
						continue
					}
					for _, v := range []struct {
						stat string
						d    time.Duration
					}{{"min", l.r.Min}, {"mean", l.r.Mean}, {"max", l.r.Max}} {
						out = append(out, metrics.Sample{Value: v.d.Seconds(), Labels: []string{l.leg, v.stat}})
					}
				}
				return out
			}})
	return append(cs, metrics.SACounters(prefix, func() *ipsec.SAD { return g.sad.Load() })...)
}

// statsMaxAge is how long one snapshot of the counters serves metric reads.
const statsMaxAge = 100 * time.Millisecond
