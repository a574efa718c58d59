package gateway

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/espep/espep/ipsec"
)

// SA sources: the gateway's SAD is the union of what each source gives —
// the SA files (safile.go), the security server (fetch.go), neighbours
// (provision.go) — each replacing its own share whole. An SA two sources
// give is taken from the one that gave SAs first (neighbours always
// last); the other's entry is wiped at once.

// sources are the shares of the SAD.
type sources struct {
	mu    sync.Mutex
	order []string
	sets  map[string][]*ipsec.Entry
}

// SetSource replaces the SAs of source name (taking ownership of the
// entries) and gives the gateway the union of every source's. It returns
// the SAs another source already gives (their entries here are wiped).
func (g *Gateway) SetSource(name string, entries []*ipsec.Entry) error {
	s := &g.sources
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sets == nil {
		s.sets = map[string][]*ipsec.Entry{}
	}
	if _, ok := s.sets[name]; !ok {
		s.order = append(s.order, name)
		// What neighbours provisioned is the last source, whenever the
		// others start: an SA a file or the security server gives is
		// taken from there (provision.go).
		if i := slices.Index(s.order, provisionSource); i >= 0 && i != len(s.order)-1 {
			s.order = append(slices.Delete(s.order, i, i+1), provisionSource)
		}
	}
	s.sets[name] = entries
	sad := &ipsec.SAD{}
	var errs []error
	for _, n := range s.order {
		kept := s.sets[n][:0]
		for _, e := range s.sets[n] {
			if e.Write != nil && e.Write.HardExpired() {
				// Wiped — refused here before, while another source gave
				// its SA — or past its hard lifetime: never into the SAD,
				// where a state would take the SA over and seal with no
				// keys. (The IKE follower offers again what it derived;
				// once the security server withdrew the SA it had given
				// first, the follower's wiped copy came in: a seal error,
				// TestGatewayFollowsIKE/pfs under load.)
				continue
			}
			if err := sad.Add(e); err != nil {
				errs = append(errs, fmt.Errorf("gateway: source %s: %w (source %s gave it first)", n, err, ownerOf(s, e.Config.ID())))
				if n == name {
					e.Wipe() // never entered the SAD: nothing else will wipe it
				}
				continue
			}
			kept = append(kept, e)
		}
		s.sets[n] = kept
	}
	g.SetSAD(sad)
	return errors.Join(errs...)
}

// ownerOf names the first source that gives SA id.
func ownerOf(s *sources, id ipsec.ID) string {
	for _, n := range s.order {
		for _, e := range s.sets[n] {
			if e.Config.ID() == id {
				return n
			}
		}
	}
	return "?"
}
