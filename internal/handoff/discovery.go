package handoff

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/espep/espep/internal/mcast"
)

// Discovery finds a gateway's neighbours by TTL-limited multicast
// (DESIGN.md, scheme B), for deployments where base-station locations are
// unknown: it answers other gateways' probes (mcast.Serve) and, every
// Every, probes the group with TTL and takes the Max nearest gateways that
// answered (fewest hops) as its neighbours. Answers are not authenticated
// — anyone can send one — so they only name candidates: Neighbours dials
// each over mutual TLS and admits only the certificate of the name the
// answer gave.
type Discovery struct {
	Config mcast.Config // the group, the interface, this gateway's name and handoff address
	TTL    int          // default 2: the gateways one multicast router away
	// Every is how often to probe (default 30 s), Wait how long to gather
	// answers (default 1 s), Max how many neighbours to keep (default 8).
	Every, Wait time.Duration
	Max         int
	// Set is given the neighbours after every probe whose answers changed
	// them (the first probe's always).
	Set func([]Peer)
	Log *slog.Logger

	probe func(context.Context, mcast.Config, int, time.Duration) ([]mcast.Answer, error) // mcast.Probe; tests replace it
}

// Run answers and probes until ctx ends.
func (d *Discovery) Run(ctx context.Context) {
	ttl, every, wait, most := d.TTL, d.Every, d.Wait, d.Max
	if ttl <= 0 {
		ttl = 2
	}
	if every <= 0 {
		every = 30 * time.Second
	}
	if wait <= 0 {
		wait = time.Second
	}
	if most <= 0 {
		most = 8
	}
	probe := d.probe
	if probe == nil {
		probe = mcast.Probe
		go func() {
			if err := mcast.Serve(ctx, d.Config); err != nil && ctx.Err() == nil && d.Log != nil {
				d.Log.Warn("handoff: multicast discovery: not answering probes", "err", err)
			}
		}()
	}
	var last []Peer
	first := true
	for {
		answers, err := probe(ctx, d.Config, ttl, wait)
		switch {
		case err != nil:
			if d.Log != nil {
				d.Log.Warn("handoff: multicast discovery: probe", "err", err)
			}
		default:
			peers := nearest(answers, most)
			if first || !slices.Equal(peers, last) {
				d.Set(peers)
				if d.Log != nil {
					d.Log.Info("handoff: neighbours from multicast discovery", "neighbours", len(peers), "answered", len(answers))
				}
			}
			last, first = peers, false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// nearest is the first most answers (mcast.Probe sorts them nearest
// first) as peers.
func nearest(answers []mcast.Answer, most int) []Peer {
	var out []Peer
	for _, a := range answers {
		if len(out) == most {
			break
		}
		if a.Name != "" && a.Addr != "" {
			out = append(out, Peer{Name: a.Name, Addr: a.Addr})
		}
	}
	return out
}
