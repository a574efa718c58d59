package handoff

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/espep/espep/internal/mcast"
)

// Discovery finds a gateway's neighbours by TTL-limited multicast
// (DESIGN.md, scheme B), for deployments where base-station locations are
// unknown: it answers other gateways' probes (mcast.Serve) and, every
// Every, probes the group with TTL; its neighbours are the Max nearest
// (fewest hops) of the gateways that answered its last probe and those
// whose probes it answered within the last three rounds — the relation
// is symmetric, so a gateway that starts after this one's probe is its
// neighbour from its own first probe on, not 30 s later. Answers and
// probes are not authenticated — anyone can send one — so they only name
// candidates: Neighbours dials each over mutual TLS and admits only the
// certificate of the name given. A forged one can still name a wrong
// address for a gateway (the pin refuses it, and that neighbour is
// unreachable until the next probe): discovery is as trustworthy as the
// network that carries it, which is why the proxy management service
// (scheme A) and fixed peers exist beside it.
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

	probe  func(context.Context, mcast.Config, int, time.Duration) ([]mcast.Answer, error) // mcast.Probe; tests replace it
	probed chan mcast.Answer                                                               // the probes answered; tests feed it
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
	probed := d.probed
	if probed == nil {
		probed = make(chan mcast.Answer, 64)
	}
	probe := d.probe
	if probe == nil {
		probe = mcast.Probe
		cfg := d.Config
		cfg.Probed = func(a mcast.Answer) {
			select {
			case probed <- a:
			default: // a flood of probes: the set is refreshed from the next ones
			}
		}
		go func() {
			if err := mcast.Serve(ctx, cfg); err != nil && ctx.Err() == nil && d.Log != nil {
				d.Log.Warn("handoff: multicast discovery: not answering probes", "err", err)
			}
		}()
	}
	heard := map[string]heardAt{} // probers, by name
	var answers []mcast.Answer
	var last []Peer
	first := true
	next := time.Now()
	for {
		if !time.Now().Before(next) {
			got, err := probe(ctx, d.Config, ttl, wait)
			if err != nil && d.Log != nil {
				d.Log.Warn("handoff: multicast discovery: probe", "err", err)
			}
			if err == nil {
				answers = got
			}
			next = time.Now().Add(every)
		}
		for name, h := range heard {
			if time.Since(h.at) > 3*every {
				delete(heard, name)
			}
		}
		peers := nearest(union(answers, heard), most)
		if first || !slices.Equal(peers, last) {
			d.Set(peers)
			if d.Log != nil {
				d.Log.Info("handoff: neighbours from multicast discovery", "neighbours", len(peers), "answered", len(answers), "probed-by", len(heard))
			}
		}
		last, first = peers, false
		select {
		case <-ctx.Done():
			return
		case a := <-probed:
			if len(heard) < maxHeard || heard[a.Name].at != (time.Time{}) {
				heard[a.Name] = heardAt{a, time.Now()}
			}
		case <-time.After(time.Until(next)):
		}
	}
}

// maxHeard bounds the probers remembered (probes are not authenticated).
const maxHeard = 256

// heardAt is a gateway whose probe this one answered, and when.
type heardAt struct {
	a  mcast.Answer
	at time.Time
}

// union is the answers and the probers heard, fewest hops first (the
// fewer of the two for a gateway in both), then by name.
func union(answers []mcast.Answer, heard map[string]heardAt) []mcast.Answer {
	best := map[string]mcast.Answer{}
	for _, a := range answers {
		best[a.Name] = a
	}
	for name, h := range heard {
		if a, ok := best[name]; !ok || h.a.Hops < a.Hops {
			best[name] = h.a
		}
	}
	out := make([]mcast.Answer, 0, len(best))
	for _, a := range best {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b mcast.Answer) int {
		if a.Hops != b.Hops {
			return a.Hops - b.Hops
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// nearest is the first most answers (sorted nearest first) as peers.
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
