package gateway

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/espep/espep/ipsec"
)

// Pre-provisioning (DESIGN.md, handoff): a gateway offers the SAs it
// obtains to its neighbours, which keep them — with their provenance,
// which gateway gave them and when — as one more SA source. When the
// mobile's traffic reaches such a neighbour, it already has the keys, and
// it knows whom to ask for the mobile's flows.
//
// Provisioned SAs are a bounded set (MaxProvisioned; the oldest goes
// when full) that expires (each offer says for how long, at most
// MaxProvisionTTL), so no neighbour can fill or pin a gateway's SAD. They
// are the last source: an SA a file or the security server also gives is
// taken from there.

// provisionSource is the provisioned SAs' name among the SA sources.
const provisionSource = "neighbours"

// Bounds on what neighbours provision.
const (
	MaxProvisioned  = 4096
	MaxProvisionTTL = time.Hour
)

// Provenance is where a provisioned SA came from.
type Provenance struct {
	From    string // the offering gateway (its certificate's name)
	At      time.Time
	Expires time.Time
}

// provisioned is the source's table.
type provisioned struct {
	mu  sync.Mutex
	sas map[ipsec.ID]*offered
}

type offered struct {
	cfg ipsec.Config // keys included: the SAD is rebuilt from them
	Provenance
}

// provisionTTL is how long what a neighbour offers for ttl is kept: at
// least a second, at most MaxProvisionTTL.
func provisionTTL(ttl time.Duration) time.Duration {
	return min(max(ttl, time.Second), MaxProvisionTTL)
}

// Provision takes SAs a neighbour offered (from: its name) for ttl and
// puts them in the SAD. An SA already provisioned is replaced (its
// provenance too). It returns an error for what the SAD refused.
func (g *Gateway) Provision(from string, cfgs []ipsec.Config, ttl time.Duration, now time.Time) error {
	ttl = provisionTTL(ttl)
	p := &g.prov
	p.mu.Lock()
	if p.sas == nil {
		p.sas = map[ipsec.ID]*offered{}
	}
	for _, c := range cfgs {
		if old := p.sas[c.ID()]; old != nil {
			old.cfg.WipeKeys()
		}
		p.sas[c.ID()] = &offered{cfg: c.CloneKeys(), Provenance: Provenance{From: from, At: now, Expires: now.Add(ttl)}}
	}
	p.evict(now)
	err := g.applyProvisioned(p)
	p.mu.Unlock()
	return err
}

// ExpireProvisioned drops the provisioned SAs whose time is up.
func (g *Gateway) ExpireProvisioned(now time.Time) error {
	p := &g.prov
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.sas)
	p.evict(now)
	if len(p.sas) == n {
		return nil
	}
	return g.applyProvisioned(p)
}

// ProvenanceOf says where a provisioned SA came from.
func (g *Gateway) ProvenanceOf(id ipsec.ID) (Provenance, bool) {
	p := &g.prov
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.sas[id]
	if !ok {
		return Provenance{}, false
	}
	return o.Provenance, true
}

// evict drops what expired, then the oldest beyond the bound (p.mu held).
func (p *provisioned) evict(now time.Time) {
	for id, o := range p.sas {
		if !now.Before(o.Expires) {
			o.cfg.WipeKeys()
			delete(p.sas, id)
		}
	}
	for len(p.sas) > MaxProvisioned {
		var oldest ipsec.ID
		var at time.Time
		for id, o := range p.sas {
			if at.IsZero() || o.At.Before(at) {
				oldest, at = id, o.At
			}
		}
		p.sas[oldest].cfg.WipeKeys()
		delete(p.sas, oldest)
	}
}

// applyProvisioned gives the gateway the provisioned SAs as its
// "neighbours" source (p.mu held).
func (g *Gateway) applyProvisioned(p *provisioned) error {
	var entries []*ipsec.Entry
	var errs []error
	g.provEntries.Clear()
	for _, o := range p.sas {
		e, err := ipsec.NewEntry(o.cfg.CloneKeys()) // the entry's own keys: o.cfg's are wiped when it goes, the entry may drain on
		if err != nil {
			errs = append(errs, err)
			continue
		}
		entries = append(entries, e)
		g.provEntries.Store(e, struct{}{})
	}
	errs = append(errs, g.SetSource(provisionSource, entries))
	return errors.Join(errs...)
}

// wipeProvisioned destroys the provisioned SAs' keys (Close).
func (g *Gateway) wipeProvisioned() {
	p := &g.prov
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, o := range p.sas {
		o.cfg.WipeKeys()
		delete(p.sas, id)
	}
}

// ProvenanceOfPeer names the gateways that provisioned SAs of the peer
// (an SA from or to it), newest first, each once.
func (g *Gateway) ProvenanceOfPeer(peer netip.Addr) []string {
	p := &g.prov
	p.mu.Lock()
	defer p.mu.Unlock()
	var os []*offered
	for _, o := range p.sas {
		if o.cfg.Src == peer || o.cfg.Dst == peer {
			os = append(os, o)
		}
	}
	slices.SortFunc(os, func(a, b *offered) int { return b.At.Compare(a.At) })
	var out []string
	for _, o := range os {
		if !slices.Contains(out, o.From) {
			out = append(out, o.From)
		}
	}
	return out
}

// Offerable is an SA a gateway may offer its neighbours, keys included.
type Offerable struct {
	Config ipsec.Config
	From   string // the neighbour that provisioned it here; empty: this gateway's own (files, the security server)
}

// Offerable returns the SAs this gateway offers its neighbours, keys
// included (the caller wipes them: Config.WipeKeys): every SA it obtained
// itself, and every SA a neighbour provisioned that has since carried
// verified traffic here — the mobile is here now, and its next move is
// to one of this gateway's neighbours (DESIGN.md, handoff). A read-class
// SA a neighbour provisioned is not offered on: without an integrity key
// no packet on it is verified here, so its traffic is not seen.
func (g *Gateway) Offerable() []Offerable {
	type cand struct {
		e    *ipsec.Entry
		mine bool
	}
	var cands []cand
	s := &g.sources
	s.mu.Lock()
	for _, name := range s.order {
		for _, e := range s.sets[name] {
			cands = append(cands, cand{e, name != provisionSource})
		}
	}
	s.mu.Unlock()
	var out []Offerable
	for _, c := range cands {
		id := c.e.Config.ID()
		var from string
		if !c.mine {
			prov, ok := g.ProvenanceOf(id)
			if !ok || !g.carried(id) {
				continue
			}
			from = prov.From
		}
		if cfg, ok := c.e.Keyed(); ok {
			out = append(out, Offerable{Config: cfg, From: from})
		}
	}
	return out
}

// carried reports whether the gateway has verified a packet on SA id.
func (g *Gateway) carried(id ipsec.ID) bool {
	g.smu.Lock()
	st := g.states[id]
	g.smu.Unlock()
	if st == nil {
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.maxIn > 0
}
