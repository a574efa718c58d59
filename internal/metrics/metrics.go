// Package metrics exposes espep's counters in the Prometheus text format on
// an HTTP listener. Counters stay where they are counted (atomics and SA
// stats on the packet path); a collector reads them at scrape time, so the
// hot path never touches the metrics library.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/espep/espep/ipsec"
)

// Sample is one counter value with its label values.
type Sample struct {
	Value  float64
	Labels []string
}

// Counter describes a counter family and reads its samples; with Gauge set
// the family is a gauge (a value that goes up and down: bytes held, flows,
// RTT estimates).
type Counter struct {
	Name, Help string
	Labels     []string
	Read       func() []Sample
	Gauge      bool
}

type collector struct {
	counters []Counter
	descs    []*prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for i, k := range c.counters {
		vt := prometheus.CounterValue
		if k.Gauge {
			vt = prometheus.GaugeValue
		}
		for _, s := range k.Read() {
			m, err := prometheus.NewConstMetric(c.descs[i], vt, s.Value, s.Labels...)
			if err == nil {
				ch <- m
			}
		}
	}
}

// Registry builds a registry holding the counters.
func Registry(counters []Counter) (*prometheus.Registry, error) {
	c := &collector{counters: counters}
	for _, k := range counters {
		c.descs = append(c.descs, prometheus.NewDesc(k.Name, k.Help, k.Labels, nil))
	}
	r := prometheus.NewRegistry()
	if err := r.Register(c); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return r, nil
}

// Serve serves /metrics (and /healthz) on addr until ctx is done.
func Serve(ctx context.Context, addr string, r *prometheus.Registry, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// SACounters are the per-SA counter families, read from a SAD at scrape
// time (labels: spi, dst, proto).
func SACounters(prefix string, sad func() *ipsec.SAD) []Counter {
	labels := []string{"spi", "dst", "proto"}
	read := func(f func(ipsec.Stats) uint64) func() []Sample {
		return func() []Sample {
			var out []Sample
			for _, e := range sad().Entries() {
				if e.Write == nil {
					continue
				}
				id := e.Config.ID()
				out = append(out, Sample{float64(f(e.Write.Stats())),
					[]string{"0x" + strconv.FormatUint(uint64(id.SPI), 16), id.Dst.String(), id.Proto.String()}})
			}
			return out
		}
	}
	return []Counter{
		{Name: prefix + "sa_out_packets_total", Help: "Packets sealed on the SA.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.OutPackets })},
		{Name: prefix + "sa_out_bytes_total", Help: "Payload bytes sealed on the SA.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.OutBytes })},
		{Name: prefix + "sa_in_packets_total", Help: "Packets opened on the SA.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.InPackets })},
		{Name: prefix + "sa_in_bytes_total", Help: "Payload bytes opened on the SA.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.InBytes })},
		{Name: prefix + "sa_icv_failures_total", Help: "Packets whose ICV did not verify.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.ICVFailures })},
		{Name: prefix + "sa_replay_drops_total", Help: "Packets the anti-replay window refused.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.ReplayDrops })},
		{Name: prefix + "sa_other_drops_total", Help: "Malformed or misdirected packets for the SA.", Labels: labels, Read: read(func(s ipsec.Stats) uint64 { return s.OtherDrops })},
	}
}
