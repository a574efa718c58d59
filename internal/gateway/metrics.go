package gateway

import (
	"sync"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/ipsec"
)

// Counters are the gateway's metric families: its counter table
// (counters.go), the engine's (engine.CounterTable: counters and gauges)
// and RTT estimates, and per-SA counters of the SAs in force.
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
	cs := metrics.FromTable(prefix, CounterTable(), func() any { return stats() })
	cs = append(cs, metrics.FromTable(prefix+"engine_", engine.CounterTable, func() any { return stats().Engine })...)
	cs = append(cs,
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
