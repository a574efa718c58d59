package handoff

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/mcast"
)

// TestDiscovery: the neighbours are the Max nearest gateways that
// answered each probe; the set is given again only when a probe's answers
// change it; a failed probe changes nothing.
func TestDiscovery(t *testing.T) {
	rounds := [][]mcast.Answer{
		{{Name: "gw-2", Addr: "10.0.0.2:7700", Hops: 1}, {Name: "gw-3", Addr: "10.0.0.3:7700", Hops: 1}, {Name: "gw-4", Addr: "10.0.0.4:7700", Hops: 2}},
		{{Name: "gw-2", Addr: "10.0.0.2:7700", Hops: 1}, {Name: "gw-3", Addr: "10.0.0.3:7700", Hops: 1}}, // gw-4 gone: the nearest two unchanged
		nil, // a failed probe
		{{Name: "gw-3", Addr: "10.0.0.3:7700", Hops: 1}, {Name: "", Addr: "10.0.0.9:1", Hops: 1}},
	}
	var mu sync.Mutex
	var sets [][]Peer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	d := &Discovery{Max: 2, Every: time.Millisecond, Set: func(p []Peer) {
		mu.Lock()
		sets = append(sets, p)
		mu.Unlock()
	}, probe: func(context.Context, mcast.Config, int, time.Duration) ([]mcast.Answer, error) {
		defer func() { n++ }()
		switch {
		case n >= len(rounds):
			cancel()
			return nil, ctx.Err()
		case rounds[n] == nil:
			return nil, errors.New("no route")
		}
		return rounds[n], nil
	}}
	d.Run(ctx)
	want := [][]Peer{
		{{"gw-2", "10.0.0.2:7700"}, {"gw-3", "10.0.0.3:7700"}},
		{{"gw-3", "10.0.0.3:7700"}},
	}
	if !slices.EqualFunc(sets, want, func(a, b []Peer) bool { return slices.Equal(a, b) }) {
		t.Fatalf("sets %v, want %v", sets, want)
	}
}

// TestDiscoveryProbers: a gateway whose probe this one answered is a
// neighbour at once (the relation is symmetric), nearest first with those
// that answered, until three rounds pass without its probe.
func TestDiscoveryProbers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sets := make(chan []Peer, 16)
	probed := make(chan mcast.Answer, 4)
	d := &Discovery{Every: 100 * time.Millisecond, Set: func(p []Peer) { sets <- p }, probed: probed,
		probe: func(context.Context, mcast.Config, int, time.Duration) ([]mcast.Answer, error) {
			return []mcast.Answer{{Name: "gw-far", Addr: "10.0.0.9:7700", Hops: 2}}, nil
		}}
	go d.Run(ctx)
	want := func(w ...Peer) {
		t.Helper()
		for deadline := time.After(2 * time.Second); ; {
			select {
			case got := <-sets:
				if slices.Equal(got, w) {
					return
				}
			case <-deadline:
				t.Fatalf("never the set %v", w)
			}
		}
	}
	want(Peer{"gw-far", "10.0.0.9:7700"})
	probed <- mcast.Answer{Name: "gw-near", Addr: "10.0.0.2:7700", Hops: 1}
	want(Peer{"gw-near", "10.0.0.2:7700"}, Peer{"gw-far", "10.0.0.9:7700"})
	want(Peer{"gw-far", "10.0.0.9:7700"}) // its probes stopped: gone after three rounds
}
