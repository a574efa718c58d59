package gateway

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
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
	gw := func(k uint32) *Gateway {
		st, err := statedir.Open(filepath.Join(t.TempDir(), "state"), statedir.Partition{K: k, N: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		g, err := New(Config{Engine: engine.Config{Mode: mode}, State: st}, n.freshSAD(t), n.output)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Close)
		return g
	}
	g1, g2 := gw(0), gw(1)
	var moving sync.RWMutex
	cur := g1
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		moving.RLock()
		g := cur
		moving.RUnlock()
		g.Process(from, pkt)
	})
	done := make(chan error, 1)
	size := 4 << 20
	if mode == engine.ModeSnoop {
		size = 2 << 20 // snoop moves at the end-to-end sender's pace
	}
	go func() {
		_, err := gvhost.Transfer(n.A, n.B, 5001, size, 60*time.Second)
		done <- err
	}()
	for g1.Stats().Opened < 1000 {
		select {
		case err := <-done:
			t.Fatalf("the transfer ended before the move: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	moving.Lock()
	start := time.Now()
	h := g1.HandOver(netip.MustParseAddr("192.0.2.2"))
	err := g2.Resume(h)
	cur = g2
	moving.Unlock()
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
	salts := randomSalts()
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 11}
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSnoop)
	gw := func(k uint32, sad *ipsec.SAD) *Gateway {
		st, err := statedir.Open(filepath.Join(t.TempDir(), "state"), statedir.Partition{K: k, N: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSnoop}, State: st}, sad, n.output)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Close)
		return g
	}
	g1, g2 := gw(0, n.freshSAD(t)), gw(1, &ipsec.SAD{})
	var cfgs []ipsec.Config
	for _, c := range n.cfgs {
		cfgs = append(cfgs, c.CloneKeys())
	}
	if err := g2.Provision("gw-1", cfgs, time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	var moving sync.RWMutex
	cur := g1
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		moving.RLock()
		g := cur
		moving.RUnlock()
		g.Process(from, pkt)
	})
	done := make(chan error, 1)
	go func() {
		_, err := gvhost.Transfer(n.A, n.B, 5001, 2<<20, 30*time.Second)
		done <- err
	}()
	for g1.Stats().Sealed < 500 {
		select {
		case err := <-done:
			t.Fatalf("the transfer ended before the crash: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	moving.Lock()
	g1.Close() // gone: nothing it had reaches anyone
	cur = g2
	moving.Unlock()
	last := map[ipsec.ID]uint64{}
	for _, st := range g1.SAs() {
		last[st.ID] = st.GatewaySeq
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
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
