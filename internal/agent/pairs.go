package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/espep/espep/internal/hostctl"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/ipsec"
)

// Scheme 4: each sa = server policy of each espep host the agent serves
// gets the pair the security server makes. The agent asks when the policy
// has none, when the server ordered the pair replaced (a gateway that
// numbered it is gone, or the peer's agent replaced it), and otherwise
// every pairCheck — which is how a renewal at two-thirds of the pair's
// lifetime, or an order this agent missed while disconnected, reaches the
// host. The host keeps a replaced pair's inbound SA for a while
// (host.retireAfter, 30 s), longer than pairCheck, so a peer that learns
// of a new pair late still has its packets opened.

// pairCheck is how often a policy's pair is asked for when nothing else
// prompts it.
const pairCheck = 10 * time.Second

// pairState is what the agent knows of the pairs it installed.
type pairState struct {
	mu      sync.Mutex
	checked map[string]time.Time   // socket and policy → last asked
	held    map[ipsec.ID]bool      // the SAs of the pairs installed
	replace map[ipsec.ID]time.Time // ordered replaced, not yet asked
	kick    chan struct{}          // wakes Run for an order
}

func newPairState() pairState {
	return pairState{checked: map[string]time.Time{}, held: map[ipsec.ID]bool{}, replace: map[ipsec.ID]time.Time{},
		kick: make(chan struct{}, 1)}
}

// order takes a rekey order: true if id is an SA of a pair this agent
// installed (it will be replaced at once), false if it is not the
// agent's to replace.
func (s *pairState) order(id ipsec.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.held[id] {
		return false
	}
	s.replace[id] = time.Now()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return true
}

// syncPairs brings every sa = server policy of the agent's hosts to the
// server's pair.
func (a *Agent) syncPairs(ctx context.Context) error {
	var errs []error
	for _, path := range a.cfg.HostSockets {
		c := &hostctl.Client{Path: path}
		pairs, err := c.Pairs(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("agent: %s: %w", path, err))
			continue
		}
		for _, p := range pairs {
			if err := a.syncPair(ctx, c, p); err != nil {
				errs = append(errs, fmt.Errorf("agent: %s: policy %q: %w", path, p.Policy, err))
			}
		}
	}
	return errors.Join(errs...)
}

// syncPair asks the server for one policy's pair, when due, and installs
// it if it is not the one the host has.
func (a *Agent) syncPair(ctx context.Context, c *hostctl.Client, p hostctl.Pair) error {
	key := c.Path + "\x00" + p.Policy
	out := ipsec.ID{SPI: p.Out, Dst: p.Peer, Proto: ipsec.ESP}
	in := ipsec.ID{SPI: p.In, Dst: p.Self, Proto: ipsec.ESP}
	s := &a.pairs
	s.mu.Lock()
	var replace []ipsec.ID
	for _, id := range []ipsec.ID{out, in} {
		if _, ok := s.replace[id]; ok {
			replace = append(replace, id)
		}
	}
	due := p.Out == 0 || len(replace) > 0 || time.Since(s.checked[key]) >= pairCheck
	s.mu.Unlock()
	if !due {
		return nil
	}
	w, err := wantOf(p, a.cfg.Area)
	if err != nil {
		return err
	}
	w.Replace = replace
	gout, gin, err := a.srv.Generate(ctx, w)
	if err != nil {
		return err
	}
	defer func() { gout.WipeKeys(); gin.WipeKeys() }()
	if gout.SPI != p.Out || gin.SPI != p.In {
		if err := c.Install(ctx, p.Policy, gout, gin); err != nil {
			return err
		}
		a.Installs++
		a.cfg.Log.Info("agent: pair installed", "policy", p.Policy, "out", fmt.Sprintf("%#08x", gout.SPI), "in", fmt.Sprintf("%#08x", gin.SPI),
			"replaced", len(replace) > 0)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checked[key] = time.Now()
	for _, id := range replace {
		delete(s.replace, id)
	}
	delete(s.held, out)
	delete(s.held, in)
	s.held[gout.ID()], s.held[gin.ID()] = true, true
	return nil
}

// wantOf is the request for a host's policy.
func wantOf(p hostctl.Pair, area string) (secserver.Want, error) {
	w := secserver.Want{Local: p.Self, Remote: p.Peer, Area: area}
	var err error
	switch p.Mode {
	case "transport":
		w.Mode = ipsec.Transport
	case "tunnel":
		w.Mode = ipsec.Tunnel
	default:
		return w, fmt.Errorf("mode %q", p.Mode)
	}
	if w.Enc, err = ipsec.ParseEnc(p.Enc); err != nil {
		return w, err
	}
	if p.Integ != "" {
		if w.Integ, err = ipsec.ParseInteg(p.Integ); err != nil {
			return w, err
		}
	}
	if w.Class, err = ipsec.ParseClass(p.Class); err != nil {
		return w, err
	}
	return w, nil
}
