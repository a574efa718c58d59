package gateway

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/ctable"
	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
)

// TestGatewayFetchesSAs: a gateway that starts with no SA relays the
// tunnel's first packets untouched, asks the security server (gRPC over
// mutual TLS, certificates from internal/pki) for the SAs between the two
// routers, gets those the routers' agent uploaded from the gateway's
// area, and takes the next connections over: split, 1 MB each way over a
// 2 % radio, bytes intact, nothing refused by either router, every
// release audited. (The connection whose SYN passed before the SAs came
// is relayed untouched to its end: the engine opens flows only on a SYN.)
// A gateway of another area gets nothing and keeps relaying.
func TestGatewayFetchesSAs(t *testing.T) {
	w := sectest.Start(t)
	salts := randomSalts()
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 5}
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSplit)
	n.G.SetSAD(&ipsec.SAD{}) // no SA but what the server gives

	agent := w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "router-b", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
	if err := agent.Upload(context.Background(), "cell-17", n.cfgs); err != nil {
		t.Fatal(err)
	}
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	src := NewServerSAs(n.G, gw, ServerOptions{})
	var firstWant, installed atomic.Int64
	inner := *n.G.want.Load()
	wrapped := func(a, b netip.Addr) {
		firstWant.CompareAndSwap(0, time.Now().UnixNano())
		inner(a, b)
	}
	n.G.want.Store(&wrapped)
	src.Fetched = func(_ [2]netip.Addr, k int) {
		if k > 0 {
			installed.CompareAndSwap(0, time.Now().UnixNano())
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx)

	// The first connection's SYN passes before the SAs are there: the
	// engine never sees it open, and relays that connection untouched.
	first := n.transfer(t, n.A, n.B, 5001, 256<<10)
	if st := n.G.Stats(); st.Unknown == 0 || st.Engine.EarlyAcked != 0 {
		t.Fatalf("the first connection was not relayed while the SAs were fetched: %+v", st)
	}
	down := n.transfer(t, n.A, n.B, 5002, 1<<20)
	up := n.transfer(t, n.B, n.A, 5003, 1<<20)
	gs, ss := n.G.Stats(), src.Stats()
	t.Logf("first (relayed) %.1f Mbit/s, down %.1f Mbit/s, up %.1f Mbit/s; first unknown packet → SAs installed %v; source %+v; gateway %+v",
		first, down, up, time.Duration(installed.Load()-firstWant.Load()), ss, gs)
	if ss.Installed != 2 || ss.Failed != 0 || installed.Load() == 0 {
		t.Fatalf("the SAs were not fetched: %+v", ss)
	}
	if gs.Opened == 0 || gs.Sealed == 0 || gs.Engine.EarlyAcked < 2<<20 {
		t.Fatalf("the gateway did not take the flows over: %+v", gs)
	}
	checkEndpoints(t, n, 0)
	if log := w.Audit.String(); strings.Count(log, `"msg":"released"`) < 2 || !strings.Contains(log, `"who":"gw-17/`) {
		t.Fatalf("audit:\n%s", log)
	}

	// A gateway of another area: refused, counted, and the traffic passes.
	other := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSplit)
	other.G.SetSAD(&ipsec.SAD{})
	osrc := NewServerSAs(other.G, w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-99", Areas: []string{"cell-99"}}), ServerOptions{})
	go osrc.Run(ctx)
	if err := agent.Upload(context.Background(), "cell-17", other.cfgs); err != nil {
		t.Fatal(err)
	}
	other.transfer(t, other.A, other.B, 5004, 256<<10)
	if st, gs := osrc.Stats(), other.G.Stats(); st.Installed != 0 || st.Failed == 0 || gs.Sealed != 0 {
		t.Fatalf("a gateway of another area: source %+v, gateway %+v", st, gs)
	}
	if !strings.Contains(w.Audit.String(), "does not serve") {
		t.Fatal("the refusal was not audited")
	}
}

// fakeFetcher answers from a table and counts questions.
type fakeFetcher struct {
	mu   sync.Mutex
	asks int
	sas  []ipsec.Config
}

func (f *fakeFetcher) Fetch(context.Context, netip.Addr, netip.Addr) ([]ipsec.Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks++
	return f.sas, nil
}

// TestServerSAsBounded: a flood of packets on unknown SPIs between many
// pairs makes at most one question per pair per interval, remembers a
// negative answer, forgets the oldest pairs beyond its table, and never
// blocks the packet path (what its queue cannot hold is dropped).
func TestServerSAsBounded(t *testing.T) {
	g, err := New(Config{Engine: engine.Config{}}, nil, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	f := &fakeFetcher{}
	s := NewServerSAs(g, f, ServerOptions{MinInterval: time.Hour, NegativeFor: time.Hour, MaxPairs: 8, Queue: 4})
	a := netip.MustParseAddr("192.0.2.1")
	want := *g.want.Load()
	t0 := time.Now()
	for i := 0; i < 100000; i++ {
		want(a, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("100000 wants took %v: the packet path waited", d)
	}
	if st := s.Stats(); st.Dropped < 100000-4 {
		t.Fatalf("the queue held more than its bound: %+v", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	b := netip.MustParseAddr("192.0.2.2")
	for i := 0; i < 50; i++ {
		want(a, b)
		want(b, a)
		time.Sleep(time.Millisecond)
	}
	waitFor(t, func() bool { return s.Stats().Answered >= 5 })
	s.mu.Lock()
	pairs := len(s.pairs)
	s.mu.Unlock()
	f.mu.Lock()
	asks := f.asks
	f.mu.Unlock()
	if pairs > 8 {
		t.Fatalf("%d pairs remembered, bound 8", pairs)
	}
	if asks != 5 { // the four queued, then a ↔ b once
		t.Fatalf("%d questions, want 5 (one per pair)", asks)
	}
	if st := s.Stats(); st.Negative != 5 {
		t.Fatalf("stats %+v", st)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}

// TestGatewayWatchesSAs: pushed by the security server, the SAs are at the
// gateway before the tunnel's first packet, so the very first connection
// is split; when the agent withdraws them the gateway drops them (its
// later packets are relayed, unknown) without asking.
func TestGatewayWatchesSAs(t *testing.T) {
	w := sectest.Start(t)
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 5}
	salts := randomSalts()
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSplit)
	n.G.SetSAD(&ipsec.SAD{})
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	src := NewServerSAs(n.G, gw, ServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Watch(ctx, gw)
	go src.Run(ctx)                                            // asks only if a packet shows a pair it lacks: none should
	waitFor(t, func() bool { return src.Stats().Pushes >= 1 }) // the (empty) whole state
	agent := w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "router-b", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
	t0 := time.Now()
	if err := agent.Upload(context.Background(), "cell-17", n.cfgs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(n.G.sad.Load().Entries()) == 2 })
	t.Logf("upload → SAs at the gateway: %v", time.Since(t0))
	n.transfer(t, n.A, n.B, 5001, 1<<20)
	if gs := n.G.Stats(); gs.Unknown != 0 || gs.Engine.EarlyAcked < 1<<20 || gs.Sealed == 0 {
		t.Fatalf("the first connection was not split: %+v", gs)
	}
	checkEndpoints(t, n, 0)
	var ids []ipsec.ID
	for _, c := range n.cfgs {
		ids = append(ids, c.ID())
	}
	if err := agent.Withdraw(context.Background(), ids); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(n.G.sad.Load().Entries()) == 0 })
	if st := src.Stats(); st.Asked != 0 {
		t.Fatalf("the gateway had to ask: %+v", st)
	}
}

// TestGatewayRekeyFromServer: the routers rekey in the middle of a 6 MB
// split transfer and their agent delegates the new pair and withdraws the
// old one; the security server pushes both changes and the gateway follows
// as it follows an SA file: it seals on the new SAs, neither router
// refuses a packet, none arrives on an SA a router deleted.
func TestGatewayRekeyFromServer(t *testing.T) {
	w := sectest.Start(t)
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	n := newTestNetSAs(t, ab, ba, seqivIV{0x77}, seqivIV{0x99}, radio, engine.ModeSplit, ipsec.ClassWrite)
	n.G.SetSAD(&ipsec.SAD{})
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	src := NewServerSAs(n.G, gw, ServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Watch(ctx, gw)
	go src.Run(ctx)
	waitFor(t, func() bool { return src.Stats().Pushes >= 1 })
	agent := w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "routers", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
	if err := agent.Upload(ctx, "cell-17", []ipsec.Config{ab, ba}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(n.G.sad.Load().Entries()) == 2 })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("source %+v\ngateway %+v\nSAs %+v\nrefusals %+v", src.Stats(), n.G.Stats(), n.G.SAs(), n.refusals())
			for _, sa := range append(n.receivers(), n.rekeyedIns[0x3003], n.rekeyedIns[0x4004]) {
				if sa != nil {
					t.Logf("router's %v: %+v", sa.ID(), sa.Stats())
				}
			}
		}
	})
	ab2 := tunnelConfig(0x3003, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba2 := tunnelConfig(0x4004, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	done := make(chan error, 1)
	go func() {
		time.Sleep(800 * time.Millisecond)
		if err := agent.Upload(ctx, "cell-17", []ipsec.Config{ab2, ba2}); err != nil {
			done <- err
			return
		}
		n.rekey(t, ab2, ba2, seqivIV{0x1177}, seqivIV{0x1199})
		time.Sleep(500 * time.Millisecond)
		n.deleteOld()
		done <- agent.Withdraw(ctx, []ipsec.ID{ab.ID(), ba.ID()})
	}()
	n.transfer(t, n.A, n.B, 5001, 6<<20)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n.transfer(t, n.B, n.A, 5002, 256<<10) // a new flow, on the new SAs only
	owned := 0
	for _, s := range n.G.SAs() {
		if s.Owned && (s.ID.SPI == 0x3003 || s.ID.SPI == 0x4004) {
			owned++
		}
	}
	gs := n.G.Stats()
	t.Logf("source %+v; gateway %+v", src.Stats(), gs)
	if owned != 2 || gs.Engine.EarlyAcked < 6<<20 {
		t.Fatalf("the gateway did not follow the rekey (%d new SAs sealed on): %+v", owned, gs)
	}
	checkEndpoints(t, n, 0)
	for _, sa := range []*ipsec.SA{n.rekeyedIns[0x3003], n.rekeyedIns[0x4004]} {
		if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
			t.Fatalf("a router refused packets on %v: %+v", sa.ID(), s)
		}
	}
	if r := n.refusals(); r.ToDeleted != 0 {
		t.Fatalf("%d packets on a deleted SA", r.ToDeleted)
	}
}

// TestGatewayCrashOrdersRekey: a gateway keeps a lease naming the SAs it
// numbers (after a split transfer it numbers both); when its heartbeats
// stop — a crash — the security server orders the routers' agent to rekey
// exactly those SAs, within the lease (here 1 s) and a quarter.
func TestGatewayCrashOrdersRekey(t *testing.T) {
	w := sectest.Start(t)
	w.Server.SetLease(time.Second) // heartbeats every 333 ms: a busy machine does not miss one
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Server.Run(ctx)
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{0x71}, seqivIV{0x72}, radio, engine.ModeSplit)
	n.G.SetSAD(&ipsec.SAD{})
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	src := NewServerSAs(n.G, gw, ServerOptions{})
	gctx, crash := context.WithCancel(ctx)
	go src.Watch(gctx, gw)
	go src.Lease(gctx, gw, 0)
	waitFor(t, func() bool { return src.Stats().Pushes >= 1 })
	agent := w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "routers", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
	type order struct {
		id ipsec.ID
		at time.Time
	}
	orders := make(chan order, 8)
	go agentOrders(ctx, agent, func(id ipsec.ID) { orders <- order{id, time.Now()} })
	if err := agent.Upload(ctx, "cell-17", n.cfgs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(n.G.sad.Load().Entries()) == 2 })
	n.transfer(t, n.A, n.B, 5001, 1<<20)
	time.Sleep(time.Second) // a heartbeat names what it numbers now
	select {
	case o := <-orders:
		t.Fatalf("a rekey ordered while the gateway lived: %v", o.id)
	default:
	}
	crash()
	stopped := time.Now()
	got := map[uint32]time.Duration{}
	for len(got) < 2 {
		select {
		case o := <-orders:
			got[o.id.SPI] = o.at.Sub(stopped)
		case <-time.After(5 * time.Second):
			t.Fatalf("after the crash, rekeys ordered for %v only", got)
		}
	}
	t.Logf("rekeys ordered after the crash: %v", got)
	for _, c := range n.cfgs {
		if _, ok := got[c.SPI]; !ok {
			t.Fatalf("no rekey of %#x", c.SPI)
		}
	}
}

// agentOrders passes each SA an agent is ordered to rekey to do.
func agentOrders(ctx context.Context, c interface {
	Orders(context.Context, func([]ipsec.ID, string)) error
}, do func(ipsec.ID)) {
	c.Orders(ctx, func(ids []ipsec.ID, _ string) {
		for _, id := range ids {
			do(id)
		}
	})
}

// fakeLeaser forgets the first identifier it gave once it has been
// beaten for, as a restarted server does.
type fakeLeaser struct {
	mu         sync.Mutex
	registered []uint64
	beats      map[uint64]int
}

type forgotten struct{}

func (forgotten) Error() string       { return "not registered" }
func (forgotten) NotRegistered() bool { return true }

func (f *fakeLeaser) Register(context.Context) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := uint64(len(f.registered) + 1)
	f.registered = append(f.registered, id)
	return id, nil
}

func (f *fakeLeaser) Heartbeat(_ context.Context, id uint64, _ []ipsec.ID) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beats[id]++
	if id == 1 && f.beats[id] > 1 {
		return 0, forgotten{}
	}
	return 30 * time.Millisecond, nil
}

// TestLeaseReregisters: a server that no longer knows the gateway's
// identifier (restarted) gets a new registration, and the heartbeats go
// on under the new identifier.
func TestLeaseReregisters(t *testing.T) {
	g, err := New(Config{Engine: engine.Config{}}, nil, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	f := &fakeLeaser{beats: map[uint64]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go NewServerSAs(g, &fakeFetcher{}, ServerOptions{}).Lease(ctx, f, 0)
	waitFor(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.beats[2] >= 2
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.registered) != 2 {
		t.Fatalf("registered %v", f.registered)
	}
}

// TestServerSAsCounters: every field of ServerStats has a row in the
// source's counter table, and the Prometheus families and the summary line
// read the same counts.
func TestServerSAsCounters(t *testing.T) {
	if err := ctable.CheckTable(ServerCounterTable(), ServerStats{}); err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{Engine: engine.Config{}}, nil, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	s := NewServerSAs(g, &fakeFetcher{}, ServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	want := *g.want.Load()
	for i := range 3 {
		want(netip.MustParseAddr("192.0.2.1"), netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
	}
	waitFor(t, func() bool { return s.Stats().Negative == 3 })
	got := map[string]float64{}
	for _, c := range s.Counters("x_") {
		for _, v := range c.Read() {
			got[c.Name] = v.Value
		}
	}
	if got["x_secserver_asked_total"] != 3 || got["x_secserver_negative_total"] != 3 || got["x_secserver_sas_installed_total"] != 0 {
		t.Fatalf("families %v", got)
	}
	if sum := s.Stats().Summary(); !strings.Contains(sum, "asked 3") || !strings.Contains(sum, "negative 3") {
		t.Fatalf("summary %q", sum)
	}
}
