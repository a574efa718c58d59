package host

import (
	"fmt"
	"slices"
	"time"

	"github.com/espep/espep/ipsec"
)

// Scheme 4: a policy with sa = server gets its SA pair from the security
// server, which espep agent asks for and installs here (Install, over the
// control socket). What the host runs on is then its file configuration
// with the installed pairs added (effective). A new pair replaces the old
// one make-before-break: the new outbound SA seals from the moment it is
// installed, the old inbound SA still opens for retireAfter (the peer's
// agent may install its half a little later), then it is deleted and
// wiped. Until a policy has a pair its traffic is dropped (counted as
// awaiting-sa), never sent in the clear.
//
// genMu is taken before mu (host.go) and never the other way round; it
// orders Install, Reload and the retiring of old SAs, each of which
// rebuilds the tables from the file configuration and the pairs.

// retireAfter is how long an inbound SA a new pair replaced keeps opening.
const retireAfter = 30 * time.Second

// pair is one policy's installed pair and the inbound SAs it replaced.
type pair struct {
	out, in  ipsec.Config // with keys: the tables are rebuilt from them
	retiring []retiring
}

type retiring struct {
	c     ipsec.Config
	until time.Time
}

// Install makes out and in the SA pair of the policy named (one with sa =
// server): out seals from the host's address to the peer, in opens the
// other way. Installing the pair it already has changes nothing.
func (h *Host) Install(policy string, out, in ipsec.Config) error {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	file := h.file
	i := slices.IndexFunc(file.Policies, func(p ipsec.Policy) bool { return p.Name == policy })
	if i < 0 || file.PolicyGen[i] == nil {
		return fmt.Errorf("host: install: no policy %q with sa = server", policy)
	}
	g := file.PolicyGen[i]
	switch {
	case out.Src != g.Self || out.Dst != g.Peer || in.Src != g.Peer || in.Dst != g.Self:
		return fmt.Errorf("host: install %q: the pair is %v→%v, %v→%v; the policy's ends are %v, %v", policy, out.Src, out.Dst, in.Src, in.Dst, g.Self, g.Peer)
	case out.Mode != g.Mode || in.Mode != g.Mode:
		return fmt.Errorf("host: install %q: mode %v; the policy says %v", policy, out.Mode, g.Mode)
	case out.Class != ipsec.ClassWrite || in.Class != ipsec.ClassWrite:
		return fmt.Errorf("host: install %q: an endpoint needs every key (class write)", policy)
	}
	old := h.gen[policy]
	if old != nil && old.out.ID() == out.ID() && old.in.ID() == in.ID() &&
		ipsec.KeyIDOf(&old.out) == ipsec.KeyIDOf(&out) && ipsec.KeyIDOf(&old.in) == ipsec.KeyIDOf(&in) {
		return nil
	}
	p := &pair{out: out.CloneKeys(), in: in.CloneKeys()}
	if old != nil {
		p.retiring = append(old.retiring, retiring{old.in, time.Now().Add(retireAfter)})
	}
	prev := h.gen[policy]
	h.gen[policy] = p
	if err := h.apply(file); err != nil {
		h.gen[policy] = prev
		return err
	}
	if old != nil {
		old.out.WipeKeys()
	}
	h.log.Info("host: pair installed", "policy", policy, "out", fmt.Sprintf("%#08x", out.SPI), "in", fmt.Sprintf("%#08x", in.SPI))
	return nil
}

// apply rebuilds the tables from file and the installed pairs.
func (h *Host) apply(file *Config) error {
	eff := *file
	eff.SAs = slices.Clone(file.SAs)
	eff.Policies = slices.Clone(file.Policies)
	eff.PolicySPIs = slices.Clone(file.PolicySPIs)
	for i, g := range file.PolicyGen {
		p := h.gen[file.Policies[i].Name]
		if g == nil || p == nil {
			continue
		}
		eff.SAs = append(eff.SAs, p.out, p.in)
		for _, r := range p.retiring {
			eff.SAs = append(eff.SAs, r.c)
		}
		eff.Policies[i].SAs = []ipsec.ID{p.out.ID()}
		eff.PolicySPIs[i] = []uint32{p.out.SPI}
	}
	if err := h.load(&eff); err != nil {
		return err
	}
	h.mu.Lock()
	h.eff = &eff
	h.mu.Unlock()
	return nil
}

// reloadPairs keeps the pairs of the policies a new file configuration
// still has with the same ends and transforms, and drops the others.
func (h *Host) reloadPairs(file *Config) {
	for name, p := range h.gen {
		i := slices.IndexFunc(file.Policies, func(p ipsec.Policy) bool { return p.Name == name })
		if i >= 0 {
			if g := file.PolicyGen[i]; g != nil && g.Self == p.out.Src && g.Peer == p.out.Dst && g.Mode == p.out.Mode &&
				g.Enc == p.out.Enc && g.Integ == p.out.Integ {
				continue
			}
		}
		wipePair(p)
		delete(h.gen, name)
	}
}

// retire deletes the replaced inbound SAs whose time is up.
func (h *Host) retire(now time.Time) {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	changed := false
	for _, p := range h.gen {
		keep := p.retiring[:0]
		for _, r := range p.retiring {
			if now.Before(r.until) {
				keep = append(keep, r)
				continue
			}
			r.c.WipeKeys()
			changed = true
		}
		p.retiring = keep
	}
	if changed {
		if err := h.apply(h.file); err != nil {
			h.log.Error("host: retiring replaced SAs", "err", err)
		}
	}
}

// Pairs describes the policies with sa = server: their ends and
// transforms, the class they permit a proxy, and the SPIs installed (0:
// none yet).
func (h *Host) Pairs() []PairState {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	var out []PairState
	for i, g := range h.file.PolicyGen {
		if g == nil {
			continue
		}
		s := PairState{Policy: h.file.Policies[i].Name, Generated: *g, Class: h.file.PolicyProxy[i]}
		if p := h.gen[s.Policy]; p != nil {
			s.Out, s.In = p.out.ID(), p.in.ID()
			s.Expires = p.out.Lifetime.HardTime
		}
		out = append(out, s)
	}
	return out
}

// PairState is one sa = server policy as Pairs reports it.
type PairState struct {
	Policy string
	Generated
	Class   ipsec.Class
	Out, In ipsec.ID      // zero: nothing installed
	Expires time.Duration // the installed pair's hard lifetime
}

// Delegable returns the outbound SAs of the host's files that its
// policies permit a proxy, in that class, as it runs on them (reloads
// included; not those a hard lifetime removed): what an agent uploads
// (scheme 3). The installed pairs are not among them: the server made
// them and holds them already.
func (h *Host) Delegable() []ipsec.Config {
	h.genMu.Lock() // no pair is wiped while its keys are copied
	defer h.genMu.Unlock()
	h.mu.RLock()
	eff, sad := h.eff, h.sad
	h.mu.RUnlock()
	var out []ipsec.Config
	generated := map[ipsec.ID]bool{}
	for _, p := range h.gen {
		generated[p.out.ID()] = true
	}
	for _, c := range eff.Delegable() {
		if _, ok := sad.Get(c.ID()); ok && !generated[c.ID()] { // not one a hard lifetime removed, nor one the server made
			out = append(out, c.CloneKeys())
		}
	}
	return out
}

func wipePair(p *pair) {
	p.out.WipeKeys()
	p.in.WipeKeys()
	for i := range p.retiring {
		p.retiring[i].c.WipeKeys()
	}
}

// overhead is the most a pair of g's transforms adds to a packet.
func (g *Generated) overhead() int {
	c := ipsec.Config{SPI: 0x100, Proto: ipsec.ESP, Src: g.Self, Dst: g.Peer, Mode: g.Mode, Enc: g.Enc, Integ: g.Integ,
		EncKey: make([]byte, g.Enc.KeyLen()), IntegKey: make([]byte, g.Integ.KeyLen()), Class: ipsec.ClassWrite}
	sa, err := ipsec.New(c)
	if err != nil {
		return 0
	}
	defer sa.Wipe()
	return sa.MaxOverhead()
}
