package gateway

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// TestGatewayHandoff: a download to the mobile through gateway 1 (split,
// AES-GCM tunnel, 2 % radio loss) moves to gateway 2 halfway: gateway 1
// hands over the mobile's flows, SA counters and replay windows; gateway 2
// — its own state directory, in another IV partition — resumes, numbering
// above gateway 1's last and sealing only once an endpoint packet agreed
// with the salt it was given. Packets that reach the path during the move
// go to gateway 2. The bytes arrive intact; neither endpoint refuses a
// packet (no ICV failure, no replay, nothing refused as a replay though
// never accepted); no (SPI, IV) goes out twice on different packets.
func TestGatewayHandoff(t *testing.T) {
	for _, tc := range []struct {
		enc  ipsec.Enc
		mode engine.Mode
	}{
		{ipsec.EncAESGCM16, engine.ModeSplit},
		{ipsec.EncChaCha20Poly1305, engine.ModeSplit},
		{ipsec.EncAESGCM16, engine.ModeSnoop},
	} {
		t.Run(fmt.Sprintf("%v-%v", tc.enc, tc.mode), func(t *testing.T) { gatewayHandoff(t, tc.enc, tc.mode) })
	}
}

func gatewayHandoff(t *testing.T, enc ipsec.Enc, mode engine.Mode) {
	salts := randomSalts()
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 7}
	n := newTestNet(t, enc, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, mode)
	p := newGatewayPair(t, n, Config{Engine: engine.Config{Mode: mode}}, n.freshSAD(t))
	g1, g2 := p.g1, p.g2
	size := 4 << 20
	if mode == engine.ModeSnoop {
		size = 2 << 20 // snoop moves at the end-to-end sender's pace
	}
	done := startTransfer(t, n, size, 60*time.Second, func() bool { return g1.Stats().Opened >= 1000 })
	var h Handoff
	var err error
	start := time.Now()
	p.move(func() {
		h = g1.HandOver(netip.MustParseAddr("192.0.2.2"))
		err = g2.Resume(h)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("handed over %d flows (%d bytes buffered), %d SAs, %d routes in %v", len(h.Flows), buffered(h.Flows), len(h.SAs), len(h.Routes),
		time.Since(start).Round(time.Microsecond))
	if len(h.Flows) != 1 || len(h.SAs) != 2 || len(h.Routes) < 2 {
		t.Fatalf("handed over %+v", h)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v\ngateway 1 %+v\ngateway 2 %+v", err, g1.Stats(), g2.Stats())
	}
	s1, s2 := g1.Stats(), g2.Stats()
	t.Logf("gateway 1: opened %d, sealed %d, early-acked %d; gateway 2: opened %d, sealed %d, early-acked %d, not yet safe %d",
		s1.Opened, s1.Sealed, s1.Engine.EarlyAcked, s2.Opened, s2.Sealed, s2.Engine.EarlyAcked, s2.NotYetSafe)
	for name, sa := range map[string]*ipsec.SA{"router A in": n.aIn, "router B in": n.bIn} {
		if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
			t.Errorf("%s refused packets: %+v", name, s)
		}
	}
	if r := n.refusals(); r.FreshRefused != 0 || r.UnknownSPI != 0 {
		t.Errorf("the routers refused %+v", r)
	}
	if s2.Sealed == 0 || s2.Engine.FlowsMax == 0 || mode == engine.ModeSplit && s2.Engine.EarlyAcked == 0 {
		t.Errorf("gateway 2 did not carry the flow on")
	}
	for _, st := range g2.SAs() {
		for _, old := range h.SAs {
			if st.ID == old.ID && old.Owned && st.GatewaySeq <= old.Last {
				t.Errorf("sa %v: gateway 2 is at %d, gateway 1 had reached %d", st.ID, st.GatewaySeq, old.Last)
			}
		}
	}
	n.ivs.mu.Lock()
	defer n.ivs.mu.Unlock()
	if n.ivs.reuse != 0 {
		t.Fatalf("%d (SPI, IV) pairs reused on different packets", n.ivs.reuse)
	}
}

func buffered(flows []engine.FlowState) int {
	b := 0
	for i := range flows {
		b += flows[i].Buffered()
	}
	return b
}

// TestTakeoverGone: the old gateway is gone (crashed mid-download) and
// no handoff comes. Gateway 2 was provisioned the SAs by gateway 1; it
// meets the flow mid-stream and, with nothing handed over, numbers the
// SAs TakeoverJump above the endpoints — above what gateway 1 used, which
// only gateway 1 knew (its lead: its own resends, which over a long
// flow outgrow any replay window). In snoop mode (no early
// acknowledgements: nothing is lost with gateway 1) the download
// completes and neither router refuses a fresh packet.
func TestTakeoverGone(t *testing.T) {
	n, p := provisionedPair(t, netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 11})
	g1, g2 := p.g1, p.g2
	done := startTransfer(t, n, 2<<20, 30*time.Second, func() bool { return g1.Stats().Sealed >= 500 })
	p.move(g1.Close) // gone: nothing it had reaches anyone
	last := map[ipsec.ID]uint64{}
	for _, st := range g1.SAs() {
		last[st.ID] = st.GatewaySeq
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v\n%s", err, n.diag(p.g1, p.g2))
	}
	if r := n.refusals(); r.FreshRefused != 0 || r.UnknownSPI != 0 {
		t.Fatalf("the routers refused %+v", r)
	}
	for name, sa := range map[string]*ipsec.SA{"router A in": n.aIn, "router B in": n.bIn} {
		if s := sa.Stats(); s.ICVFailures != 0 || s.OtherDrops != 0 {
			t.Errorf("%s: %+v", name, s)
		}
	}
	s2 := g2.Stats()
	t.Logf("gateway 1 had numbered up to %v; gateway 2 %+v, sealed %d", last, g2.SAs(), s2.Sealed)
	for _, st := range g2.SAs() {
		if st.Owned && st.GatewaySeq < last[st.ID]+1<<15 {
			t.Errorf("sa %v: gateway 2 at %d, gateway 1 had reached %d: no jump", st.ID, st.GatewaySeq, last[st.ID])
		}
	}
	if s2.Sealed == 0 {
		t.Fatalf("gateway 2 never sealed: %+v", s2)
	}
}

// gatewayPair is two gateways on a test network, in IV partitions 0 and
// 1 of 2, each with a state directory of its own: gateway 1 (with the
// network's SAs) in the middle until move puts gateway 2 there.
type gatewayPair struct {
	g1, g2 *Gateway
	mu     sync.RWMutex
	cur    *Gateway
}

// newGatewayPair makes the pair, gateway 2 with sad2.
func newGatewayPair(t *testing.T, n *testNet, cfg Config, sad2 *ipsec.SAD) *gatewayPair {
	t.Helper()
	gw := func(k uint32, sad *ipsec.SAD) *Gateway {
		st, err := statedir.Open(filepath.Join(t.TempDir(), "state"), statedir.Partition{K: k, N: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		c := cfg
		c.State = st
		g, err := New(c, sad, n.output)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Close)
		return g
	}
	p := &gatewayPair{g1: gw(0, n.freshSAD(t)), g2: gw(1, sad2)}
	p.cur = p.g1
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		p.mu.RLock()
		g := p.cur
		p.mu.RUnlock()
		g.Process(from, pkt)
	})
	return p
}

// move runs f with no packet in either gateway's hands, then puts
// gateway 2 in the middle.
func (p *gatewayPair) move(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f()
	p.cur = p.g2
}

// startTransfer starts a download of size from A to B and returns once
// ready holds (failing the test if the download ends first); the channel
// gives the download's result.
func startTransfer(t *testing.T, n *testNet, size int, timeout time.Duration, ready func() bool) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := gvhost.Transfer(n.A, n.B, 5001, size, timeout)
		done <- err
	}()
	for !ready() {
		select {
		case err := <-done:
			t.Fatalf("the transfer ended too soon: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return done
}

// TestHeldBounded: held packets are bounded in number and bytes across
// mobiles, released in the order they came and only once, and cleared by
// Close.
func TestHeldBounded(t *testing.T) {
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, Log: slog.New(slog.DiscardHandler)}, &ipsec.SAD{}, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	e, err := ipsec.NewEntry(tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16))
	if err != nil {
		t.Fatal(err)
	}
	st := g.newState(e)
	st.handed.Store(true) // released packets are dropped: the engine is not the point here
	a, b := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	pkt := make([]byte, 1400)
	for i := range maxHeld + 10 {
		m := a
		if i%2 == 1 {
			m = b
		}
		g.hold(m, heldPkt{st: st, orig: pkt, inner: pkt})
	}
	if g.held.n != maxHeld || g.held.bytes > maxHeldBytes {
		t.Fatalf("%d packets, %d bytes held", g.held.n, g.held.bytes)
	}
	big := make([]byte, maxHeldBytes)
	g.hold(a, heldPkt{st: st, orig: big})
	if g.held.bytes > maxHeldBytes {
		t.Fatalf("%d bytes held", g.held.bytes)
	}
	g.ReleaseHeld(a)
	if n := len(g.held.pkts[a]); n != 0 || g.held.n != maxHeld/2 {
		t.Fatalf("after releasing one mobile: %d of its packets, %d in all", n, g.held.n)
	}
	g.ReleaseHeld(a) // nothing left: nothing happens
	g.Close()
	if g.held.n != 0 || g.held.bytes != 0 || len(g.held.pkts) != 0 {
		t.Fatalf("after Close: %d packets, %d bytes", g.held.n, g.held.bytes)
	}
}

// TestGatewayHandoffIPIP: a mobile whose ESP tunnel runs inside an
// IP-in-IP tunnel (a Mobile IP home agent's, RFC 2003) moves: its flows go
// with their outer header, and gateway 2 wraps what it sends in it at
// once. The download arrives intact, nothing reaches an endpoint outside
// the tunnel, nothing is refused. A handed outer header that is not one
// is not taken.
func TestGatewayHandoffIPIP(t *testing.T) {
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
	salts := randomSalts()
	n := newTestNetWrap(t, ab, ba, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSplit, ipsec.ClassWrite, true)
	p := newGatewayPair(t, n, Config{Engine: engine.Config{Mode: engine.ModeSplit}}, n.freshSAD(t))
	done := startTransfer(t, n, 4<<20, 60*time.Second, func() bool { return p.g1.Stats().Opened >= 1000 })
	var h Handoff
	var err error
	p.move(func() {
		h = p.g1.HandOver(netip.MustParseAddr("192.0.2.2"))
		err = p.g2.Resume(h)
	})
	if err != nil {
		t.Fatal(err)
	}
	tunnels := 0
	for _, r := range h.Routes {
		if validTunnel(r.Tun) {
			tunnels++
		}
	}
	if len(h.Flows) != 1 || tunnels < 2 {
		t.Fatalf("handed over %d flows, %d routes with their tunnel: %+v", len(h.Flows), tunnels, h.Routes)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v\n%s", err, n.diag(p.g1, p.g2))
	}
	s2 := p.g2.Stats()
	if s2.Sealed == 0 || s2.IPIP == 0 {
		t.Fatalf("gateway 2 did not carry the flow in the tunnel: %+v", s2)
	}
	for _, sa := range n.receivers() {
		if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
			t.Fatalf("endpoint refused packets: %+v", s)
		}
	}
	if r := n.refusals(); r.NotInTunnel != 0 || r.FreshRefused != 0 {
		t.Fatalf("the endpoints refused %+v", r)
	}
	for _, bad := range [][]byte{nil, make([]byte, 20), append([]byte{0x46}, make([]byte, 23)...), make([]byte, 40)} {
		if validTunnel(bad) {
			t.Errorf("%x taken as an outer header", bad)
		}
	}
}

// provisionedPair is the network of the tests of a gateway that dies: two
// snoop gateways on AES-GCM SAs, the second provisioned with the SAs by
// the first. Snoop: what a dead gateway held is the endpoints' to resend,
// so a transfer completes (split's early-acked bytes would die with it).
func provisionedPair(t *testing.T, radio netem.Config) (*testNet, *gatewayPair) {
	t.Helper()
	salts := randomSalts()
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSnoop)
	p := newGatewayPair(t, n, Config{Engine: engine.Config{Mode: engine.ModeSnoop}}, &ipsec.SAD{})
	var cfgs []ipsec.Config
	for _, c := range n.cfgs {
		cfgs = append(cfgs, c.CloneKeys())
	}
	if err := p.g2.Provision("gw-1", cfgs, time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	return n, p
}

// TestUnansweredBeforeFirstPacket: when the ask for a mobile comes back
// empty before any packet of one of its SAs reaches the gateway, that SA
// still jumps twice TakeoverJump when its first packet comes: the dead
// gateway before numbered it too (TestGatewayGoneHosts in namespaces
// failed 1 run in 3 without this: the SA toward the wired host jumped
// once, into the dead gateway's numbers, and the host refused it).
func TestUnansweredBeforeFirstPacket(t *testing.T) {
	n, p := provisionedPair(t, netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Seed: 12})
	g1, g2 := p.g1, p.g2
	done := startTransfer(t, n, 2<<20, 30*time.Second, func() bool { return g1.Stats().Sealed >= 500 })
	for _, c := range n.cfgs {
		g2.Unanswered(c.Dst) // before g2 has a state of any SA
	}
	p.move(g1.Close)
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v\n%s", err, n.diag(p.g1, p.g2))
	}
	if r := n.refusals(); r.FreshRefused != 0 {
		t.Fatalf("the routers refused %+v", r)
	}
	// The lead starts at twice TakeoverJump and then erodes by each
	// endpoint packet gateway 2 does not seal on (a duplicate ACK snoop
	// answers itself, say: the endpoint's number moves, the gateway's
	// does not) — CI saw 131,059 of 131,072, cause not found. One jump
	// leaves it near TakeoverJump (65,537 when tried).
	owned := 0
	for _, st := range g2.SAs() {
		if st.Owned {
			owned++
			if st.Lead <= 3*(1<<16)/2 {
				t.Errorf("sa %v: gateway 2 leads by %d, want about twice TakeoverJump (%d); it suppressed %d duplicate ACKs",
					st.ID, st.Lead, 2*(1<<16), g2.Stats().Engine.SuppressedDupAcks)
			}
		}
	}
	if owned == 0 {
		t.Fatalf("gateway 2 numbers no SA: %+v", g2.SAs())
	}
}

// TestRecentAddrsBounded: the unanswered mobiles are the most recent
// maxUnanswered; the oldest goes first, an address given again stays once.
func TestRecentAddrsBounded(t *testing.T) {
	var r recentAddrs
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	for i := range maxUnanswered + 10 {
		r.add(addr(i))
		r.add(addr(i))
	}
	if len(r.set) != maxUnanswered || len(r.order) != maxUnanswered {
		t.Fatalf("%d addresses kept, %d in order", len(r.set), len(r.order))
	}
	if r.has(addr(9)) || !r.has(addr(10)) || !r.has(addr(maxUnanswered+9)) {
		t.Fatal("not the most recent ones")
	}
}

// TestResumeRestartBypassed: what a restarted TUN gateway meets. Gateway
// 1 stops mid-download (HandOverAll: what its successor resumes); for
// 300 ms the path forwards the endpoints' packets as they are, as the
// kernel does once a TUN gateway's routes have left with it, and router
// B takes the wired end's numbers, which in split mode run ahead of the
// gateway's; then gateway 2 resumes (ResumeRestart). It seals on an SA
// only once a verified packet has shown the endpoint's numbers, and above
// them: no packet it seals is refused as a replay, and the download
// completes. With Resume instead — which carries on from gateway 1's last
// number — gateway 2's packets fall below router B's window and the
// download stalls.
func TestResumeRestartBypassed(t *testing.T) {
	salts := randomSalts()
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 7}
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSplit)
	p := newGatewayPair(t, n, Config{Engine: engine.Config{Mode: engine.ModeSplit}}, n.freshSAD(t))
	var bypass atomic.Bool
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		if bypass.Load() {
			n.Send(1-from, append([]byte(nil), pkt...))
			return
		}
		p.mu.RLock()
		defer p.mu.RUnlock()
		p.cur.Process(from, pkt)
	})
	done := startTransfer(t, n, 4<<20, 60*time.Second, func() bool { return p.g1.Stats().Opened >= 1000 })
	var h Handoff
	p.mu.Lock()
	h = p.g1.HandOverAll()
	bypass.Store(true)
	p.cur = p.g2
	p.mu.Unlock()
	if len(h.Flows) != 1 || buffered(h.Flows) == 0 || len(h.SAs) != 2 {
		t.Fatalf("gateway 1 handed over %d flows holding %d bytes, %d SAs", len(h.Flows), buffered(h.Flows), len(h.SAs))
	}
	var ahead bool
	for _, st := range p.g1.SAs() {
		ahead = ahead || st.EndpointSeq > st.GatewaySeq
	}
	// No gateway in the path for less than the sender's shortest timeout
	// (200 ms). For 300 ms, one run in 3 to 35 stalled: the sender
	// (gVisor) had sent up to 1.4 MB straight onto the radio — its window
	// was the mobile's 4 MB one — into a queue of 200 packets, timed out,
	// and then sent one or two segments per ~300 ms for over a minute,
	// although gateway 2 acknowledged each within 40 ms. The engine now
	// takes the receiver's ACK past what it holds (skipTo), passes its
	// SACK blocks on, and takes no RTT sample from what it resends after
	// an import (importQuarantine): 20 runs in 20 pass in ~3 s. With the
	// mobile's window at 256 KB, about half the runs take ~30 s or more:
	// what the sender sent during the bypass lay beyond the mobile's
	// window and is gone, gateway 2 holds nothing and SACKs the sender's
	// last segment past the hole, and gVisor's sender resends the hole one
	// or two segments per timeout (its TCP probe: after each timeout it
	// goes back into SACK recovery and counts the hole as in flight). The
	// router's replay drops are the mobile's own ACKs during the bypass,
	// below gateway 1's numbers. Linux's sender recovers from the same
	// event at once: TestGatewayTUNRestart/window-256k.
	time.Sleep(150 * time.Millisecond)
	p.mu.Lock()
	err := p.g2.ResumeRestart(h)
	bypass.Store(false)
	p.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // what the bypass had on the links arrives
	before := n.bIn.Stats().ReplayDrops + n.aIn.Stats().ReplayDrops
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v\n%s", err, n.diag(p.g1, p.g2))
	}
	if d := n.bIn.Stats().ReplayDrops + n.aIn.Stats().ReplayDrops - before; d != 0 {
		t.Errorf("the routers refused %d of gateway 2's packets as replays\n%s", d, n.diag(p.g2))
	}
	if !ahead {
		t.Errorf("no endpoint was ahead of gateway 1 when it stopped: the bypass tested nothing\n%s", n.diag(p.g1))
	}
	if s := p.g2.Stats(); s.Sealed == 0 || s.Engine.EarlyAcked == 0 {
		t.Errorf("gateway 2 did not carry the flow on: %+v", s)
	}
}
