package host

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// Host is a running endpoint: the SAD and SPD, the state directory that
// keeps its outbound sequence numbers, and a link — its packet I/O (link.go).
//
// Goroutines: Run starts the link's readers, the lifetime checker and
// the metrics listener, and returns when ctx ends or on the first of them
// to fail, having stopped the others. Close, after Run has returned,
// closes the link (its routes, rules, device and sockets) and then the
// state directory, recording the sequence numbers used.
type Host struct {
	cfg  *Config
	log  *slog.Logger
	link link
	mu   sync.RWMutex // guards sad, spd, leases and accepts on reload
	sad  *ipsec.SAD
	spd  *ipsec.SPD
	// state keeps the outbound SAs' sequence numbers (and so their
	// counter IVs: IV = seq) across restarts; each outbound SA seals only
	// numbers its lease allows.
	state  *statedir.Dir
	leases map[ipsec.ID]*statedir.Lease
	// accepts records the peers' numbers each SA accepted, so that a
	// restarted host refuses them (its replay windows outlive it).
	accepts map[ipsec.ID]*statedir.Accepts
	c       counters
	// file is the configuration last loaded, eff what the host runs on:
	// file with the installed pairs of its sa = server policies (gen,
	// gen.go). eff is guarded by mu; genMu, taken before mu, guards
	// file and gen.
	genMu sync.Mutex
	file  *Config
	gen   map[string]*pair
	eff   *Config
	// switchWait, if set, replaces switchAfter (gen.go; tests). Guarded
	// by genMu.
	switchWait time.Duration
}

// New sets up the host's state, SAs and link (on Linux: the TUN device,
// routes and sockets); Run moves packets.
func New(cfg *Config, log *slog.Logger) (*Host, error) {
	h, err := newHost(cfg, log)
	if err != nil {
		return nil, err
	}
	if h.link, err = openLink(h.cfg, h.log); err != nil {
		h.closeState()
		return nil, err
	}
	return h, nil
}

// newHost is New without the link.
func newHost(cfg *Config, log *slog.Logger) (*Host, error) {
	if log == nil {
		log = slog.Default()
	}
	h := &Host{cfg: cfg, log: log, file: cfg, gen: map[string]*pair{}}
	if cfg.StateDir != "" {
		d, err := statedir.Open(cfg.StateDir, statedir.Partition{}, log)
		if err != nil {
			return nil, fmt.Errorf("host: %w", err)
		}
		h.state = d
	}
	if err := h.apply(cfg); err != nil {
		h.closeState()
		return nil, err
	}
	h.setMTU()
	return h, nil
}

// setMTU makes the TUN MTU leave room for the largest IPsec overhead (of
// one SA or of a policy's bundle), so the kernel's TCP never hands over a
// packet that cannot be sent sealed.
func (h *Host) setMTU() {
	cfg := h.cfg
	over := 0
	for _, e := range h.sad.Entries() {
		if e.Write != nil {
			over = max(over, e.Write.MaxOverhead())
		}
	}
	for _, g := range cfg.PolicyGen { // pairs installed later
		if g != nil {
			over = max(over, g.overhead())
		}
	}
	for _, p := range cfg.Policies { // a bundle adds up
		sum := 0
		for _, id := range p.SAs {
			if e, ok := h.sad.Get(id); ok && e.Write != nil {
				sum += e.Write.MaxOverhead()
			}
		}
		over = max(over, sum)
	}
	if cfg.MTU == 0 {
		cfg.MTU = cfg.LinkMTU - over
	} else if cfg.MTU+over > cfg.LinkMTU {
		h.log.Warn("tun mtu plus the largest sa overhead exceeds the link mtu: big packets will not be sent",
			"mtu", cfg.MTU, "overhead", over, "link-mtu", cfg.LinkMTU)
	}
}

// Stats returns the counters.
func (h *Host) Stats() Stats { return h.c.snapshot() }

// Run moves packets until ctx is done, or until the link, the lifetime
// checker or the metrics listener fails: then it stops the others and
// returns that error.
func (h *Host) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	// Everything that can fail to start does so before any goroutine runs.
	var reg *prometheus.Registry
	if h.cfg.Metrics != "" {
		var err error
		if reg, err = metrics.Registry(h.counters()); err != nil {
			return err
		}
	}
	var ctl net.Listener
	if h.cfg.Control != "" {
		var err error
		if ctl, err = listenControl(h.cfg.Control); err != nil {
			return err
		}
	}
	errc := make(chan error, 4) // room for every goroutine below, so none blocks on exit
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f(ctx)
			if err == nil && ctx.Err() == nil {
				err = fmt.Errorf("host: %s stopped", name)
			}
			if err != nil {
				errc <- err
				cancel() // the first failure stops the others
			}
		}()
	}
	run("link", func(ctx context.Context) error { return h.link.run(ctx, h) })
	run("lifetimes", h.lifetimeLoop)
	if reg != nil {
		run("metrics", func(ctx context.Context) error { return metrics.Serve(ctx, h.cfg.Metrics, reg, h.log) })
	}
	if ctl != nil {
		run("control socket", func(ctx context.Context) error { return h.serveControl(ctx, ctl) })
	}
	h.log.Info("espep host running", "tun", h.cfg.TUN, "mtu", h.cfg.MTU, "sas", len(h.cfg.SAs), "policies", len(h.cfg.Policies))
	wg.Wait()
	close(errc)
	return <-errc // the first failure, or nil when ctx ended
}

// Close closes the link (routes and rules, device, sockets) and then
// records the sequence numbers used and closes the state directory. Call
// it after Run has returned.
func (h *Host) Close() error {
	defer h.closeState()
	if h.link != nil {
		return h.link.close()
	}
	return nil
}

// Reload applies a new configuration's SAs and policies. The TUN, its
// addresses and routes stay as they were started.
func (h *Host) Reload(cfg *Config) error {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	h.reloadPairs(cfg)
	if err := h.apply(cfg); err != nil {
		return err
	}
	h.file = cfg
	h.log.Info("espep host reloaded", "sas", len(cfg.SAs), "policies", len(cfg.Policies))
	return nil
}

// load builds the SAD and SPD from a configuration. An SA that is already
// installed with the same ID, transforms and mode is kept as it is, with
// its sequence counter and replay window, so a reload does not disturb
// the flows on it; SAs no longer listed are deleted and wiped.
func (h *Host) load(cfg *Config) error {
	old, _ := h.tables()
	var sad ipsec.SAD
	for _, c := range cfg.SAs {
		if old != nil {
			if e, ok := old.Get(c.ID()); ok && sameSA(e.Config, c) {
				if err := sad.Add(e); err != nil {
					return fmt.Errorf("host: %w", err)
				}
				continue
			}
		}
		e, err := ipsec.NewEntry(c)
		if err != nil {
			return fmt.Errorf("host: %w", err)
		}
		if err := sad.Add(e); err != nil {
			return fmt.Errorf("host: %w", err)
		}
	}
	var spd ipsec.SPD
	spd.Set(cfg.Policies)
	leases, accepts := h.leaseSAs(&sad, cfg), h.acceptSAs(&sad)
	h.mu.Lock()
	h.sad, h.spd, h.leases, h.accepts = &sad, &spd, leases, accepts
	h.mu.Unlock()
	if old != nil {
		for _, e := range old.Entries() {
			if _, kept := sad.Get(e.Config.ID()); !kept {
				old.Delete(e.Config.ID()) // wipes its keys
			}
		}
	}
	return nil
}

// leaseSAs gives each outbound SA (one a protect policy seals with) its
// lease on its sequence space: an SA it already had keeps its lease; a new
// one starts above every number a predecessor may have used. Leases of SAs
// gone are dropped.
func (h *Host) leaseSAs(sad *ipsec.SAD, cfg *Config) map[ipsec.ID]*statedir.Lease {
	if h.state == nil {
		return nil
	}
	h.mu.RLock()
	old, oldSAD := h.leases, h.sad
	h.mu.RUnlock()
	leases := map[ipsec.ID]*statedir.Lease{}
	for _, p := range cfg.Policies {
		for _, id := range p.SAs {
			e, ok := sad.Get(id)
			if !ok || e.Write == nil || leases[id] != nil {
				continue
			}
			if l := old[id]; l != nil && oldSAD != nil {
				if oe, _ := oldSAD.Get(id); oe == e {
					leases[id] = l
					continue
				}
			}
			l := h.state.Lease(statedir.SeqKey{ID: id, KeyID: e.KeyID})
			e.Write.SetOutSeq(max(e.Write.OutSeq(), l.Floor()))
			l.Want(l.Floor() + seqBlock)
			leases[id] = l
		}
	}
	for id, l := range old {
		if leases[id] != l {
			l.Drop()
		}
	}
	return leases
}

// acceptSAs gives each SA its record of the peer's numbers it accepted:
// an SA it already had keeps its record (and its window); a new one
// counts every number up to what a predecessor recorded as seen. Records
// of SAs gone are dropped.
func (h *Host) acceptSAs(sad *ipsec.SAD) map[ipsec.ID]*statedir.Accepts {
	if h.state == nil {
		return nil
	}
	h.mu.RLock()
	old, oldSAD := h.accepts, h.sad
	h.mu.RUnlock()
	accepts := map[ipsec.ID]*statedir.Accepts{}
	for _, e := range sad.Entries() {
		id := e.Config.ID()
		if e.Write == nil {
			continue
		}
		if a := old[id]; a != nil && oldSAD != nil {
			if oe, _ := oldSAD.Get(id); oe == e {
				accepts[id] = a
				continue
			}
		}
		a := h.state.Accepts(statedir.SeqKey{ID: id, KeyID: e.KeyID})
		if f := a.Floor(); f > 0 {
			e.Write.SeenThrough(f)
		}
		accepts[id] = a
	}
	for id, a := range old {
		if accepts[id] != a {
			a.Drop()
		}
	}
	return accepts
}

// seqBlock is how many sequence numbers the host reserves on an SA at a
// time, asking for the next block when half of this one is used.
const seqBlock = 4096

// reserved reports whether the SA's next sequence number is reserved on
// disk, waiting briefly if it is about to be.
func reserved(l *statedir.Lease, sa *ipsec.SA) bool {
	if l == nil {
		return true
	}
	next := sa.OutSeq() + 1
	if next+seqBlock/2 > l.Allowed() {
		l.Want(next + seqBlock)
	}
	return next <= l.Allowed() || l.Await(next+seqBlock, 100*time.Millisecond)
}

// closeState records the last numbers the outbound SAs used and closes
// the state directory.
func (h *Host) closeState() {
	if h.state == nil {
		return
	}
	h.mu.RLock()
	for id, l := range h.leases {
		if e, ok := h.sad.Get(id); ok && e.Write != nil {
			l.Release(e.Write.OutSeq())
		}
	}
	for id, a := range h.accepts {
		if e, ok := h.sad.Get(id); ok && e.Write != nil {
			a.Release(e.Write.InTop())
		}
	}
	h.mu.RUnlock()
	if err := h.state.Close(); err != nil {
		h.log.Error("host: state dir: the last sequence numbers were not recorded", "err", err)
	}
	h.state = nil
}

func sameSA(a, b ipsec.Config) bool {
	return a.Src == b.Src && a.Dst == b.Dst && a.Mode == b.Mode && a.Enc == b.Enc && a.Integ == b.Integ &&
		a.ESN == b.ESN && a.EncapSrcPort == b.EncapSrcPort && a.EncapDstPort == b.EncapDstPort && a.Class == b.Class
}

func (h *Host) tables() (*ipsec.SAD, *ipsec.SPD) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sad, h.spd
}

// lifetimeLoop enforces SA lifetimes (RFC 4301 §4.4.2.1): a soft limit is
// logged and counted once, a hard one removes the SA (wiping its keys);
// without a key manager here, replacing it is the operator's job (SIGHUP
// with new SAs).
func (h *Host) lifetimeLoop(ctx context.Context) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	soft := map[ipsec.ID]bool{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			h.retire(now)
		}
		h.checkLifetimes(soft)
	}
}

// checkLifetimes is one round of lifetimeLoop.
func (h *Host) checkLifetimes(soft map[ipsec.ID]bool) {
	sad, _ := h.tables()
	for _, e := range sad.Entries() {
		if e.Write == nil {
			continue
		}
		id := e.Config.ID()
		if e.Write.SoftExpired() && !soft[id] {
			soft[id] = true
			h.c.add(cSoftExpired)
			h.log.Warn("sa soft lifetime reached: replace it", "sa", id.String())
		}
		if e.Write.HardExpired() {
			sad.Delete(id)
			h.c.add(cHardExpired)
			h.log.Warn("sa hard lifetime reached: removed", "sa", id.String())
		}
	}
}

// counters describes the host's counters for Prometheus: its table, and
// the SAs'.
func (h *Host) counters() []metrics.Counter {
	cs := metrics.FromTable("espep_host_", CounterTable(), func() any { return h.Stats() })
	return append(metrics.SACounters("espep_host_", func() *ipsec.SAD { sad, _ := h.tables(); return sad }), cs...)
}
