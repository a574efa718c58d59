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
// one make-before-break. The two hosts' agents install their halves
// independently, a few milliseconds apart or more, so:
//
//   - the new inbound SA opens from the moment it is installed, and the
//     old one still opens for retireAfter, then is deleted and wiped;
//   - the old outbound SA goes on sealing until the peer shows it has the
//     new pair — a packet verified on the new inbound SA, which only the
//     peer's new outbound SA makes — or switchAfter has passed, by which
//     time the peer's agent, ordered at the same moment, has installed its
//     half too (lifetimeLoop looks every 250 ms). A host that sealed on the new SA at once would have its
//     first packets dropped by a peer that had not (seen in
//     TestAgentPairs: not-ours, under CI's load).
//
// Until a policy has a pair its traffic is dropped (counted as
// awaiting-sa), never sent in the clear.
//
// genMu is taken before mu (host.go) and never the other way round; it
// orders Install, Reload, the switch to a new outbound SA and the
// retiring of old SAs, each of which rebuilds the tables from the file
// configuration and the pairs.

// retireAfter is how long an inbound SA a new pair replaced keeps opening.
const retireAfter = 30 * time.Second

// switchAfter is the longest a new pair's outbound SA waits for the peer
// to show it has the pair before it seals (the old one sealing till then):
// long against two agents' installs of one order, short against the
// outage that a gateway's lapsed lease — the rekey's usual cause — has
// already cost.
const switchAfter = 500 * time.Millisecond

// pair is one policy's installed pair, the outbound SA it replaced while
// that still seals (prevOut; nil once out seals), and the inbound SAs it
// replaced.
type pair struct {
	out, in  ipsec.Config // with keys: the tables are rebuilt from them
	prevOut  *ipsec.Config
	switchAt time.Time // when out seals at the latest
	retiring []retiring
}

// sealing is the outbound SA the pair's policy seals with now.
func (p *pair) sealing() *ipsec.Config {
	if p.prevOut != nil {
		return p.prevOut
	}
	return &p.out
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
	var unused *ipsec.Config // an outbound SA the new pair makes moot, never to seal
	if old != nil {
		now := time.Now()
		p.retiring = append(slices.Clone(old.retiring), retiring{old.in, now.Add(retireAfter)})
		wait := switchAfter
		if h.switchWait > 0 {
			wait = h.switchWait
		}
		p.prevOut, p.switchAt, unused = old.sealing(), now.Add(wait), &old.out
		if old.prevOut == nil {
			unused = nil // old.out still seals, as p.prevOut
		}
	}
	h.gen[policy] = p
	if err := h.apply(file); err != nil {
		h.gen[policy] = old
		return err
	}
	if unused != nil {
		unused.WipeKeys()
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
		if p.prevOut != nil {
			eff.SAs = append(eff.SAs, *p.prevOut)
		}
		for _, r := range p.retiring {
			eff.SAs = append(eff.SAs, r.c)
		}
		eff.Policies[i].SAs = []ipsec.ID{p.sealing().ID()}
		eff.PolicySPIs[i] = []uint32{p.sealing().SPI}
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

// retire moves each new pair's sealing to its outbound SA once the peer
// has shown it has the pair, or at its switchAt (gen.go's comment), and
// deletes the replaced inbound SAs whose time is up.
func (h *Host) retire(now time.Time) {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	changed := false
	var wipe []*ipsec.Config // once the tables no longer hold them
	sad, _ := h.tables()
	for _, p := range h.gen {
		if p.prevOut == nil {
			continue
		}
		e, ok := sad.Get(p.in.ID())
		if peerHas := ok && e.Write != nil && e.Write.InTop() > 0; peerHas || !now.Before(p.switchAt) {
			wipe = append(wipe, p.prevOut)
			p.prevOut, changed = nil, true
		}
	}
	for _, p := range h.gen {
		keep := p.retiring[:0]
		for _, r := range p.retiring {
			if now.Before(r.until) {
				keep = append(keep, r)
				continue
			}
			wipe = append(wipe, &r.c)
			changed = true
		}
		p.retiring = keep
	}
	if changed {
		if err := h.apply(h.file); err != nil {
			h.log.Error("host: retiring replaced SAs", "err", err)
		}
	}
	for _, c := range wipe {
		c.WipeKeys()
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
		if p.prevOut != nil {
			generated[p.prevOut.ID()] = true
		}
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
	if p.prevOut != nil {
		p.prevOut.WipeKeys()
	}
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
