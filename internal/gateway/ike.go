package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/ctable"
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/ipsec"
)

// IKE following (DESIGN.md's scheme 2) as an SA source. The packet path
// hands a copy of every IKE message it relays to a queue (never
// blocking; a full queue drops, counted); one goroutine reads the queue
// into an ikefollow.Follower, which, with the IKE SA keys delegated to
// the gateway, derives the CHILD_SAs the exchanges create. They become
// the "ike" share of the SAD the moment an exchange's response passes;
// a verified Delete withdraws them. A CHILD_SA with PFS cannot be
// derived: the security server is asked for the pair at once (scheme 3,
// when the gateway has one), and it is counted.
//
// Ownership: the packet path only copies into the queue; Run owns the
// follower's results and, under mu, the source's entries.

// IKEStats count the source's work beside the follower's own.
type IKEStats struct {
	ikefollow.Stats
	Queued, QueueDrops uint64 // IKE messages handed to the follower, and dropped for a full queue
	Installed, Removed uint64 // SAs derived and installed; withdrawn by a verified Delete
	Full               uint64 // derived SAs not installed: the source holds maxDerived already
	Fallbacks          uint64 // CHILD_SAs with PFS handed to the security server
	Unfollowed         uint64 // CHILD_SAs with PFS and no security server to ask
	// InstallUs is the time from the arrival of the response that
	// completed the last exchange to its SAs being in the SAD, in
	// microseconds; InstallMaxUs the longest so far.
	InstallUs, InstallMaxUs uint64
	// ResealMs is the time from that response's arrival to the gateway's
	// first packet sealed on an SA it created, in milliseconds (polled
	// every millisecond: ±1 ms) — mostly the endpoint's time to switch to
	// the new SA; ResealMaxMs the longest. SAs whose exchange was held
	// until its keys came are not timed.
	ResealMs, ResealMaxMs uint64
}

// IKESAs follows IKE for a gateway.
type IKESAs struct {
	g   *Gateway
	f   *ikefollow.Follower
	in  chan arrival
	log *slog.Logger

	queued, drops atomic.Uint64

	mu     sync.Mutex
	sas    map[ipsec.ID]*ipsec.Entry
	stats  IKEStats
	timing map[ipsec.ID]time.Time // derived, not yet sealed on: when its exchange completed
}

// arrival is an IKE message and when the packet path saw it.
type arrival struct {
	p  ikefollow.Packet
	at time.Time
}

// ikeQueue bounds the IKE messages waiting for the follower; maxDerived
// the SAs the source holds (each IKE SA's Delete takes its CHILD_SAs
// away; a missed one leaves them until then).
const (
	ikeQueue   = 256
	maxDerived = 1 << 16
)

// NewIKESAs makes IKE following a source of g's SAs and has the packet
// path hand it IKE messages; Run does the following.
func NewIKESAs(g *Gateway, f *ikefollow.Follower) *IKESAs {
	s := &IKESAs{g: g, f: f, in: make(chan arrival, ikeQueue), log: g.log,
		sas: map[ipsec.ID]*ipsec.Entry{}, timing: map[ipsec.ID]time.Time{}}
	offer := s.offer
	g.ike.Store(&offer)
	return s
}

// offer is the packet path's hand-over (dispatch.go): pkt holds an IKE
// message in UDP at l.Off. It never blocks; it copies only what it
// queues.
func (s *IKESAs) offer(pkt []byte, l ipsec.Loc) {
	p, ok := ikefollow.PacketAt(pkt, l)
	if !ok {
		return
	}
	if len(s.in) == cap(s.in) {
		s.drops.Add(1)
		return
	}
	p.Msg = append([]byte(nil), p.Msg...)
	select {
	case s.in <- arrival{p, time.Now()}:
		s.queued.Add(1)
	default:
		s.drops.Add(1)
	}
}

// AddKeys gives the follower an IKE SA's keys (delegated: a file, the
// security server) and installs what messages held for them complete.
func (s *IKESAs) AddKeys(k ikev2.Keys) error {
	res, err := s.f.AddKeys(k)
	if err != nil {
		return err
	}
	s.apply(res, time.Time{}) // exchanges that ended before their keys came: not timed
	return nil
}

// Keyed returns the keys of the IKE SAs this gateway follows (copies:
// the caller wipes them), for its neighbours (handoff.Offerer).
func (s *IKESAs) Keyed() []ikefollow.KeyedSA { return s.f.Keyed() }

// ProvisionIKE takes IKE SA keys a neighbour gateway handed over (from,
// its certificate name), each kept for ttl unless its IKE SA's messages
// come here (bounded as Provision bounds SAs), and installs what messages
// held for them complete.
func (s *IKESAs) ProvisionIKE(from string, keys []ikefollow.KeyedSA, ttl time.Duration) error {
	ttl = provisionTTL(ttl)
	var errs []error
	for _, k := range keys {
		res, err := s.f.AddHanded(k, ttl)
		if err != nil {
			errs = append(errs, fmt.Errorf("ike keys from %s: %w", from, err))
			continue
		}
		s.apply(res, time.Time{})
	}
	return errors.Join(errs...)
}

// Run follows the queued messages until ctx ends, and times the first
// re-seal on each SA it installs.
func (s *IKESAs) Run(ctx context.Context) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		var tc <-chan time.Time
		s.mu.Lock()
		if len(s.timing) > 0 {
			tc = tick.C
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case a := <-s.in:
			s.apply(s.f.Observe(a.p), a.at)
		case <-tc:
			s.timeReseals(time.Now())
		}
	}
}

// apply installs what the follower derived, withdraws what was deleted,
// and hands PFS pairs to the security server; at is when the response
// that completed the exchange arrived (zero: not timed).
func (s *IKESAs) apply(res ikefollow.Result, at time.Time) {
	if len(res.Created) == 0 && len(res.Deleted) == 0 && len(res.PFS) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range res.Created {
		e, err := ipsec.NewEntry(c)
		c.WipeKeys()
		if err != nil {
			s.log.Warn("gateway: IKE: derived an unusable SA", "spi", c.SPI, "err", err)
			continue
		}
		id := e.Config.ID()
		if len(s.sas) >= maxDerived {
			e.Wipe()
			s.stats.Full++
			continue
		}
		if old := s.sas[id]; old != nil {
			// The same SA again (an exchange read twice): keep the one
			// in use, with its numbers.
			e.Wipe()
			continue
		}
		s.sas[id] = e
		if !at.IsZero() {
			s.timing[id] = at
		}
		s.stats.Installed++
		s.log.Info("gateway: IKE: CHILD_SA derived", "spi", c.SPI, "src", c.Src, "dst", c.Dst, "enc", c.Enc)
	}
	for _, id := range res.Deleted {
		if _, ok := s.sas[id]; ok {
			delete(s.sas, id)
			delete(s.timing, id)
			s.stats.Removed++
			s.log.Info("gateway: IKE: SA removed", "sa", id)
		}
	}
	for _, p := range res.PFS {
		if w := s.g.want.Load(); w != nil {
			(*w)(p[0], p[1])
			s.stats.Fallbacks++
			s.log.Info("gateway: IKE: CHILD_SA with PFS; asking the security server", "a", p[0], "b", p[1])
		} else {
			s.stats.Unfollowed++
			s.log.Warn("gateway: IKE: CHILD_SA with PFS and no security server: its traffic is relayed", "a", p[0], "b", p[1])
		}
	}
	all := make([]*ipsec.Entry, 0, len(s.sas))
	for _, e := range s.sas {
		all = append(all, e)
	}
	if err := s.g.SetSource("ike", all); err != nil {
		s.log.Warn("gateway: IKE", "err", err)
	}
	if len(res.Created) > 0 && !at.IsZero() {
		us := uint64(time.Since(at).Microseconds())
		s.stats.InstallUs = us
		s.stats.InstallMaxUs = max(s.stats.InstallMaxUs, us)
	}
}

// timeReseals records, for each SA derived and not yet sealed on, whether
// the gateway has now sealed a packet on it.
func (s *IKESAs) timeReseals(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, at := range s.timing {
		e := s.sas[id]
		if e == nil || e.Write == nil {
			delete(s.timing, id)
			continue
		}
		if e.Write.Stats().OutPackets == 0 {
			if now.Sub(at) > time.Minute {
				delete(s.timing, id) // an SA in a direction the gateway does not seal
			}
			continue
		}
		ms := uint64(now.Sub(at).Milliseconds())
		s.stats.ResealMs = ms
		s.stats.ResealMaxMs = max(s.stats.ResealMaxMs, ms)
		delete(s.timing, id)
		s.log.Info("gateway: IKE: first packet re-sealed on a derived SA", "spi", id.SPI, "after", now.Sub(at))
	}
}

// Stats returns the counts so far.
func (s *IKESAs) Stats() IKEStats {
	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	st.Stats = s.f.Stats()
	st.Queued, st.QueueDrops = s.queued.Load(), s.drops.Load()
	return st
}

// ikeTable is the IKE source's counter table (ctable).
var ikeTable = []ctable.Def{
	{Field: "Messages", Name: "messages", Family: "ike_messages_total", Help: "IKE messages the follower read."},
	{Field: "Queued", Name: "queued", Family: "ike_queued_total", Help: "IKE messages the packet path handed to the follower."},
	{Field: "QueueDrops", Name: "queue-drops", Family: "ike_queue_drops_total", Help: "IKE messages dropped for a full queue (relayed all the same)."},
	{Field: "Malformed", Name: "malformed", Family: "ike_malformed_total", Help: "IKE messages that did not parse, or whose SK payload did not."},
	{Field: "Integrity", Name: "integrity", Family: "ike_integrity_failures_total", Help: "SK payloads that failed the integrity check under their IKE SA's keys."},
	{Field: "Held", Name: "held", Family: "ike_held_total", Help: "IKE messages held until their IKE SA's keys came."},
	{Field: "Unkeyed", Name: "unkeyed", Family: "ike_unkeyed_total", Help: "IKE messages dropped: no keys came in time, or a bound was reached."},
	{Field: "Unsupported", Name: "unsupported", Family: "ike_unsupported_total", Help: "IKE messages or CHILD_SAs with transforms (or fragments) the follower does not handle."},
	{Field: "Bound", Name: "bound", Family: "ike_keys_bound_total", Help: "Delegated IKE SA keys bound to an IKE SA."},
	{Field: "Handed", Name: "handed", Family: "ike_keys_handed_total", Help: "IKE SA keys taken from a neighbour gateway."},
	{Field: "Children", Name: "children", Family: "ike_children_total", Help: "CHILD_SAs whose keys the follower derived."},
	{Field: "PFS", Name: "pfs", Family: "ike_pfs_total", Help: "CHILD_SAs with PFS: not derivable from the IKE SA keys."},
	{Field: "Missed", Name: "missed", Family: "ike_missed_total", Help: "IKE_AUTH CHILD_SAs not derived for want of unambiguous IKE_SA_INIT nonces."},
	{Field: "IKERekeys", Name: "ike-rekeys", Family: "ike_rekeys_total", Help: "IKE SA rekeys seen (the new IKE SA needs its keys delegated)."},
	{Field: "Deletes", Name: "deletes", Family: "ike_deletes_total", Help: "CHILD_SAs named by a verified Delete."},
	{Field: "Evicted", Name: "evicted", Family: "ike_evicted_total", Help: "IKE SAs forgotten to stay within the follower's bound."},
	{Field: "Installed", Name: "installed", Family: "ike_sas_installed_total", Help: "Derived SAs installed in the gateway's SAD."},
	{Field: "Removed", Name: "removed", Family: "ike_sas_removed_total", Help: "Derived SAs withdrawn by a verified Delete."},
	{Field: "Full", Name: "full", Family: "ike_sas_full_total", Help: "Derived SAs not installed: the IKE source held its most already."},
	{Field: "Fallbacks", Name: "pfs-fallbacks", Family: "ike_pfs_fallbacks_total", Help: "CHILD_SAs with PFS whose SAs were asked of the security server."},
	{Field: "Unfollowed", Name: "unfollowed", Family: "ike_unfollowed_total", Help: "CHILD_SAs with PFS and no security server to ask: relayed."},
	{Field: "InstallUs", Name: "install-us", Family: "ike_install_last_us", Help: "Microseconds from the arrival of the response that completed the last exchange to its SAs in the SAD.", Gauge: true},
	{Field: "InstallMaxUs", Name: "install-max-us", Family: "ike_install_max_us", Help: "The longest such time.", Gauge: true},
	{Field: "ResealMs", Name: "reseal-ms", Family: "ike_reseal_last_ms", Help: "Milliseconds from the last exchange's response to the first packet re-sealed on an SA it created.", Gauge: true},
	{Field: "ResealMaxMs", Name: "reseal-max-ms", Family: "ike_reseal_max_ms", Help: "The longest such time.", Gauge: true},
}

// IKECounterTable is the IKE source's counter table.
func IKECounterTable() []ctable.Def { return ikeTable }

// Summary is the counts as the CLI prints them.
func (st IKEStats) Summary() string { return ctable.Line(ikeTable, st) }

// Counters are the source's Prometheus families, named with prefix.
func (s *IKESAs) Counters(prefix string) []metrics.Counter {
	return metrics.FromTable(prefix, ikeTable, func() any { return s.Stats() })
}
