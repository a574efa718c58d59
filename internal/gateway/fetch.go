package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/ctable"
	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/ipsec"
)

// The security server as an SA source. The first IKE packet, or the
// first ESP/AH packet on an SPI the gateway does not hold, between two
// addresses makes the gateway ask the server for the SAs between them —
// from the packet path, without waiting: the packet is relayed untouched,
// as every packet is until the SA is there. The asking is bounded: one
// question per pair at a time and at most one per MinInterval, a negative
// answer remembered for NegativeFor, a table of at most MaxPairs pairs
// (the least recently asked go first), a queue that drops what it cannot
// hold. What the server gives replaces, pair by pair, what it gave before
// (an SA it no longer lists is withdrawn here too).

// Fetcher asks for the SAs between two addresses, both directions
// (secserver.Client).
type Fetcher interface {
	Fetch(ctx context.Context, a, b netip.Addr) ([]ipsec.Config, error)
}

// ServerOptions bound the questions a gateway asks.
type ServerOptions struct {
	MinInterval time.Duration // between two questions on one pair (default 1 s)
	NegativeFor time.Duration // an empty answer is believed this long (default 2 s)
	Timeout     time.Duration // for one question (default 2 s)
	MaxPairs    int           // pairs remembered (default 4096)
	Queue       int           // questions waiting (default 256)
}

func (o *ServerOptions) defaults() {
	if o.MinInterval <= 0 {
		o.MinInterval = time.Second
	}
	if o.NegativeFor <= 0 {
		o.NegativeFor = 2 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.MaxPairs <= 0 {
		o.MaxPairs = 4096
	}
	if o.Queue <= 0 {
		o.Queue = 256
	}
}

// ServerStats count what the source did.
type ServerStats struct {
	Asked, Answered, Negative, Failed, Dropped, Installed uint64
	Pushes                                                uint64 // batches the server pushed
}

// ServerSAs is the security server as one of the gateway's SA sources.
type ServerSAs struct {
	g    *Gateway
	f    Fetcher
	o    ServerOptions
	asks chan [2]netip.Addr
	log  *slog.Logger

	mu    sync.Mutex
	pairs map[[2]netip.Addr]*pairAsk
	sas   map[ipsec.ID]*ipsec.Entry // what the server gave
	stats ServerStats

	dropped atomic.Uint64
	// Fetched, when set, is told of each installation (tests, the lab).
	Fetched func(pair [2]netip.Addr, n int)
}

type pairAsk struct {
	last     time.Time // when last asked
	negative time.Time // until when an empty answer holds
}

// NewServerSAs makes the server a source of g's SAs and has g ask it;
// Run does the asking.
func NewServerSAs(g *Gateway, f Fetcher, o ServerOptions) *ServerSAs {
	o.defaults()
	s := &ServerSAs{g: g, f: f, o: o, asks: make(chan [2]netip.Addr, o.Queue), log: g.log,
		pairs: map[[2]netip.Addr]*pairAsk{}, sas: map[ipsec.ID]*ipsec.Entry{}}
	want := s.want
	g.want.Store(&want)
	return s
}

// pairOf orders two addresses, so that a pair is the same both ways.
func pairOf(a, b netip.Addr) [2]netip.Addr {
	if b.Less(a) {
		a, b = b, a
	}
	return [2]netip.Addr{a, b}
}

// want is the packet path's question: never blocks.
func (s *ServerSAs) want(a, b netip.Addr) {
	select {
	case s.asks <- pairOf(a, b):
	default:
		s.dropped.Add(1)
	}
}

// Stats returns the counts so far.
func (s *ServerSAs) Stats() ServerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Dropped = s.dropped.Load()
	return st
}

// Run asks the server what the packet path wants until ctx ends.
func (s *ServerSAs) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-s.asks:
			if s.due(p, time.Now()) {
				s.ask(ctx, p)
			}
		}
	}
}

// due reports whether pair p may be asked about now, and notes it asked.
func (s *ServerSAs) due(p [2]netip.Addr, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.pairs[p]
	if a == nil {
		if len(s.pairs) >= s.o.MaxPairs {
			s.evictOldest()
		}
		a = &pairAsk{}
		s.pairs[p] = a
	}
	if now.Sub(a.last) < s.o.MinInterval || now.Before(a.negative) {
		return false
	}
	a.last = now
	s.stats.Asked++
	return true
}

// evictOldest forgets the pair asked about least recently (s.mu held).
func (s *ServerSAs) evictOldest() {
	var old [2]netip.Addr
	var t time.Time
	first := true
	for p, a := range s.pairs {
		if first || a.last.Before(t) {
			old, t, first = p, a.last, false
		}
	}
	delete(s.pairs, old)
}

// ask puts one question and installs the answer.
func (s *ServerSAs) ask(ctx context.Context, p [2]netip.Addr) {
	qctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	cfgs, err := s.f.Fetch(qctx, p[0], p[1])
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.stats.Failed++
		s.log.Warn("gateway: security server", "pair", p, "err", err)
		return
	}
	s.stats.Answered++
	if len(cfgs) == 0 {
		s.stats.Negative++
		if a := s.pairs[p]; a != nil {
			a.negative = time.Now().Add(s.o.NegativeFor)
		}
	}
	// The answer is the pair's whole set: what the server gave for the
	// pair before and no longer lists goes.
	dropped := 0
	for id, e := range s.sas {
		if pairOf(e.Config.Src, e.Config.Dst) == p {
			delete(s.sas, id)
			dropped++
		}
	}
	n := s.take(cfgs)
	if n+dropped == 0 {
		return // nothing here, nothing there: the SAD stays as it is
	}
	s.install()
	s.log.Info("gateway: SAs fetched from the security server", "pair", p, "sas", n)
	if s.Fetched != nil {
		s.Fetched(p, n)
	}
}

// take builds entries for cfgs, replacing those of the same SAs, and
// clears the keys given (s.mu held); it returns how many it took.
func (s *ServerSAs) take(cfgs []ipsec.Config) int {
	n := 0
	for _, c := range cfgs {
		e, err := ipsec.NewEntry(c)
		c.WipeKeys() // the entry holds its own copy
		if err != nil {
			s.log.Warn("gateway: security server gave an unusable SA", "spi", c.SPI, "err", err)
			continue
		}
		s.sas[e.Config.ID()] = e
		n++
	}
	s.stats.Installed += uint64(n)
	return n
}

// install gives the gateway what the server gave, as one source (s.mu
// held). Entries that left s.sas leave the SAD and are wiped (SetSAD).
func (s *ServerSAs) install() {
	all := make([]*ipsec.Entry, 0, len(s.sas))
	for _, e := range s.sas {
		all = append(all, e)
	}
	if err := s.g.SetSource("secserver", all); err != nil {
		s.log.Warn("gateway: security server", "err", err)
	}
}

// Watcher streams the SAs a gateway may hold as they change
// (secserver.Client): whole is true for the first batch, the complete
// state.
type Watcher interface {
	Watch(ctx context.Context, apply func(add []ipsec.Config, remove []ipsec.ID, whole bool)) error
}

// Watch keeps the gateway's SAs in step with what the server pushes until
// ctx ends, reconnecting (after 1 s, doubling to 30 s) when the stream
// breaks; each reconnection starts from the server's whole state.
func (s *ServerSAs) Watch(ctx context.Context, w Watcher) {
	backoff := time.Second
	for ctx.Err() == nil {
		got := false
		err := w.Watch(ctx, func(add []ipsec.Config, remove []ipsec.ID, whole bool) {
			got = true
			s.mu.Lock()
			defer s.mu.Unlock()
			if whole {
				clear(s.sas)
			}
			for _, id := range remove {
				delete(s.sas, id)
			}
			n := s.take(add)
			s.stats.Pushes++
			s.install()
			s.log.Info("gateway: SAs pushed by the security server", "given", n, "removed", len(remove), "whole", whole)
		})
		if ctx.Err() != nil {
			return
		}
		if got {
			backoff = time.Second
		}
		s.log.Warn("gateway: security server watch ended; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Leaser is the security server as a gateway's lessor (secserver.Client).
// A heartbeat error with a NotRegistered() true method says the server no
// longer knows the identifier.
type Leaser interface {
	Register(ctx context.Context) (uint64, error)
	Heartbeat(ctx context.Context, id uint64, numbered []ipsec.ID) (time.Duration, error)
}

// Lease keeps the lease of gateway identifier id (registering first when
// id is 0) until ctx ends: a heartbeat every third of the lease names the
// SAs the gateway numbers, so that if it vanishes their agents are told
// to rekey (the crash bound). A failed heartbeat is tried again a second
// later.
func (s *ServerSAs) Lease(ctx context.Context, l Leaser, id uint64) {
	for ctx.Err() == nil {
		for id == 0 && ctx.Err() == nil {
			var err error
			if id, err = l.Register(ctx); err != nil {
				s.log.Warn("gateway: security server: register", "err", err)
				sleepCtx(ctx, time.Second)
			}
		}
		var numbered []ipsec.ID
		for _, st := range s.g.SAs() {
			if st.Owned {
				numbered = append(numbered, st.ID)
			}
		}
		ttl, err := l.Heartbeat(ctx, id, numbered)
		next := ttl / 3
		if err != nil || next <= 0 {
			if err != nil {
				s.log.Warn("gateway: security server: heartbeat", "err", err)
				var nr interface{ NotRegistered() bool }
				if errors.As(err, &nr) && nr.NotRegistered() {
					// The server no longer knows the identifier (it
					// restarted: leases live in its memory): a new lease
					// under a new one. The IV partition taken from the
					// old identifier stays this instance's, as no one
					// else is ever given it.
					id = 0
				}
			}
			next = time.Second
		}
		sleepCtx(ctx, next)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// serverTable is the security server source's counter table (ctable):
// its Stats, its Prometheus families, its summary line.
var serverTable = []ctable.Def{
	{Field: "Asked", Name: "asked", Family: "secserver_asked_total", Help: "Questions put to the security server (pairs the packet path lacked SAs for)."},
	{Field: "Answered", Name: "answered", Family: "secserver_answered_total", Help: "Questions the security server answered."},
	{Field: "Negative", Name: "negative", Family: "secserver_negative_total", Help: "Answers with no SA (kept a while: the pair is not asked again meanwhile)."},
	{Field: "Failed", Name: "failed", Family: "secserver_failed_total", Help: "Questions that failed (server unreachable or refusing)."},
	{Field: "Dropped", Name: "dropped", Family: "secserver_dropped_total", Help: "Questions the packet path wanted that the full queue dropped."},
	{Field: "Installed", Name: "installed", Family: "secserver_sas_installed_total", Help: "SAs taken from the security server (fetched or pushed)."},
	{Field: "Pushes", Name: "pushes", Family: "secserver_pushes_total", Help: "Batches of SAs the security server pushed."},
}

// ServerCounterTable is the security server source's counter table.
func ServerCounterTable() []ctable.Def { return serverTable }

// Summary is the counts as the CLI prints them.
func (st ServerStats) Summary() string { return ctable.Line(serverTable, st) }

// Counters are the source's Prometheus families, named with prefix.
func (s *ServerSAs) Counters(prefix string) []metrics.Counter {
	return metrics.FromTable(prefix, serverTable, func() any { return s.Stats() })
}
