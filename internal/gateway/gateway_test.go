package gateway

import (
	"crypto/rand"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// TestGatewayTunnel: gVisor TCP through ESP tunnels (every AEAD, with the
// endpoints' IVs made as Linux and strongSwan make them) and the gateway
// in split and snoop mode over a lossy radio. Both endpoints accept every
// packet (no ICV failure, no replay drop), the bytes arrive, the gateway
// worked on the flows and sealed on both SAs, and no (SPI, IV) pair went
// out twice on different packets.
func TestGatewayTunnel(t *testing.T) {
	for _, tc := range []struct {
		enc  ipsec.Enc
		mode engine.Mode
	}{
		{ipsec.EncAESGCM16, engine.ModeSplit},
		{ipsec.EncChaCha20Poly1305, engine.ModeSplit},
		{ipsec.EncAESGCM16, engine.ModeSnoop},
	} {
		t.Run(fmt.Sprintf("%v-%v", tc.enc, tc.mode), func(t *testing.T) {
			salts := randomSalts()
			radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 5}
			n := newTestNet(t, tc.enc, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, tc.mode)
			seen := watchGauges(t, n.G)
			down := n.transfer(t, n.A, n.B, 5001, 1<<20)
			up := n.transfer(t, n.B, n.A, 5002, 1<<20)
			checkGauges(t, seen(), tc.mode)
			gs := n.G.Stats()
			t.Logf("down %.1f Mbit/s, up %.1f Mbit/s; gateway %+v", down, up, gs)
			for name, sa := range map[string]*ipsec.SA{"router A in": n.aIn, "router B in": n.bIn} {
				if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
					t.Errorf("%s refused packets: %+v", name, s)
				}
			}
			if gs.Opened == 0 || gs.Sealed == 0 || gs.ICVFailures != 0 || gs.NonceDowngrades != 0 {
				t.Errorf("gateway: %+v", gs)
			}
			if tc.mode == engine.ModeSplit && gs.Engine.EarlyAcked < 2<<20 || tc.mode == engine.ModeSnoop && gs.Engine.Cached == 0 {
				t.Errorf("the engine did not work on the flows: %+v", gs.Engine)
			}
			// Once the IVs are confirmed the gateway numbers every packet on
			// both SAs, in either mode.

			owned := 0
			for _, s := range n.G.SAs() {
				t.Logf("%+v", s)
				if !s.NonceConfirmed {
					t.Errorf("SA %v: IV generator not confirmed: %+v", s.ID, s)
				}
				if s.Owned {
					owned++
				}
			}
			if owned != 2 {
				t.Errorf("%d SAs taken over, want 2", owned)
			}
			n.ivs.mu.Lock()
			defer n.ivs.mu.Unlock()
			t.Logf("%d ESP packets, %d distinct (SPI, IV) pairs", n.ivs.n, len(n.ivs.seen))
			if n.ivs.reuse != 0 {
				t.Fatalf("%d (SPI, IV) pairs reused on different packets", n.ivs.reuse)
			}
		})
	}
}

// watchGauges reads the gateway's metric gauges every 20 ms until the test
// ends (flows are forgotten once closed, so they must be read while live);
// the function it returns gives the largest value seen of each sample.
func watchGauges(t *testing.T, g *Gateway) func() map[string]float64 {
	var mu sync.Mutex
	most := map[string]float64{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, c := range g.Counters("x_") {
				if !c.Gauge {
					continue
				}
				for _, s := range c.Read() {
					k := strings.Join(append([]string{c.Name}, s.Labels...), " ")
					mu.Lock()
					most[k] = max(most[k], s.Value)
					mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() map[string]float64 {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(most)
	}
}

// checkGauges wants the gauges to have shown the flows, what the engine
// held for them and a plausible RTT estimate for the radio leg (5 ms each
// way on the test's radio).
func checkGauges(t *testing.T, most map[string]float64, mode engine.Mode) {
	t.Helper()
	t.Logf("gauges (largest seen): %v", most)
	held := "x_engine_buffered_bytes"
	if mode == engine.ModeSnoop {
		held = "x_engine_cached_bytes"
	}
	if most["x_engine_flows"] < 1 || most[held] <= 0 {
		t.Errorf("gauges did not show the flows or the bytes held: %v", most)
	}
	if r := most["x_engine_srtt_seconds radio mean"]; r < 0.008 || r > 2 {
		t.Errorf("radio leg SRTT %.3f s, want about the radio's 10 ms RTT and its queue", r)
	}
	if w, ok := most["x_engine_srtt_seconds wire mean"]; ok != (mode == engine.ModeSplit) || ok && w <= 0 {
		t.Errorf("wire leg SRTT %v (present %v): split measures it, snoop cannot", w, ok)
	}
}

// TestGatewayRandomIVs: an endpoint whose IVs are random gives the gateway
// no disjoint range it can prove, so the gateway never seals on its SA and
// relays the flows untouched; the transfer still completes and nothing is
// refused.
func TestGatewayRandomIVs(t *testing.T) {
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Seed: 5}
	n := newTestNet(t, ipsec.EncAESGCM16, randomIV{}, randomIV{}, radio, engine.ModeSplit)
	n.transfer(t, n.A, n.B, 5001, 256<<10)
	gs := n.G.Stats()
	if gs.NonceDowngrades != 2 || gs.Sealed != 0 {
		t.Fatalf("gateway: %+v", gs)
	}
	for _, sa := range n.receivers() {
		if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 {
			t.Fatalf("endpoint refused packets: %+v", s)
		}
	}
}

// TestGatewayReadClass: with read-class SAs (AES-CBC + HMAC: separate
// keys) the gateway holds no integrity key, snoops on the decrypted
// headers, and forwards and resends only the ciphertext as it came; the
// endpoints accept every packet they did not already have (a resend of a
// packet that had arrived is a replay, rightly refused), with a replay
// window wide enough for a local resend to arrive inside it.
func TestGatewayReadClass(t *testing.T) {
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 5}
	n := newTestNetClass(t, ipsec.EncAESCBC, nil, nil, radio, engine.ModeSplit, ipsec.ClassRead, 1024)
	for id, dst := range map[uint32]string{0x1001: "192.0.2.2", 0x2002: "192.0.2.1"} {
		e, _ := n.sad.Lookup(id, netip.MustParseAddr(dst), ipsec.ESP)
		if e == nil || e.Write != nil || e.Read == nil || len(e.Config.IntegKey) != 0 {
			t.Fatalf("the gateway's read-class SA %#x holds more than a decryption key: %+v", id, e)
		}
	}
	n.transfer(t, n.A, n.B, 5001, 1<<20)
	gs := n.G.Stats()
	t.Logf("gateway %+v", gs)
	if gs.ClassRead == 0 || gs.Sealed != 0 || gs.Engine.LocalRexmits+gs.Engine.TimeoutRexmits == 0 || gs.Engine.EarlyAcked != 0 {
		t.Fatalf("the gateway did not snoop on ciphertext: %+v", gs)
	}
	for _, sa := range n.receivers() {
		s := sa.Stats()
		t.Logf("endpoint: %+v", s)
		if s.ICVFailures != 0 || s.OtherDrops != 0 {
			t.Fatalf("endpoint refused packets: %+v", s)
		}
	}
	if n.refusals().FreshRefused != 0 {
		t.Fatalf("%d packets refused as replays that the receiver never had", n.refusals().FreshRefused)
	}
	n.ivs.mu.Lock()
	defer n.ivs.mu.Unlock()
	if n.ivs.reuse != 0 {
		t.Fatalf("%d (SPI, IV) pairs on different packets", n.ivs.reuse)
	}
}

// TestGatewayFailOpen: the gateway first has no SAs (it relays the flow as
// it came), gets them in the middle of a transfer (takes the SAs over;
// the flow itself, first seen mid-stream, is relayed by the engine), and
// is then replaced by a fresh gateway with nothing but its state
// directory, as after a restart. The transfer completes; the only packets
// the endpoints refuse as replays are ones sealed by the old gateway and
// still in flight at the switch (the new one numbers above its
// predecessor's reservations). Throughout, bad packets arrive from both sides — ESP with
// a known SPI and a broken ICV, ESP cut short, an unknown SPI: each is
// counted and relayed for the receiver to judge, and nothing else suffers.
func TestGatewayFailOpen(t *testing.T) {
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
	var salts = [2]uint64{0x1234, 0x5678}
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{salts[0]}, seqivIV{salts[1]}, radio, engine.ModeSplit)
	n.G.SetSAD(nil)
	var g2 *Gateway
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond)
		n.G.SetSAD(n.freshSAD(t)) // the SAs arrive mid-transfer
		time.Sleep(400 * time.Millisecond)
		var err error
		g2, err = New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, State: n.state}, n.freshSAD(t), n.G.out)
		if err != nil {
			return
		}
		n.swap(g2) // the gateway restarts with nothing but its state directory
	}()
	// Bad packets from both sides while the transfers run.
	var injected atomic.Int64
	stop := make(chan struct{})
	badDone := make(chan struct{})
	go func() {
		defer close(badDone)
		// A packet of SA ab far ahead of its numbers (a sequence number the
		// gateway's replay window lets through to the ICV check).
		forge, err := ipsec.New(tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16))
		if err != nil {
			panic(err)
		}
		inner := packettest.Segment(netip.MustParseAddrPort("10.0.0.1:9"), netip.MustParseAddrPort("10.0.0.2:9"), header.TCPAck, 1, 1, 1000, nil, make([]byte, 100))
		buf := make([]byte, ipsec.MaxHeadroom+len(inner)+ipsec.MaxTailroom)
		copy(buf[ipsec.MaxHeadroom:], inner)
		good, err := forge.SealWith(buf, ipsec.MaxHeadroom, len(inner), 1<<20, nil)
		if err != nil {
			panic(err)
		}
		bad := [][]byte{
			append(append([]byte(nil), good[:len(good)-1]...), good[len(good)-1]^1), // ICV broken
			good[:20+10], // ESP cut short
			func() []byte { b := append([]byte(nil), good...); b[20] ^= 0xff; return b }(), // unknown SPI
		}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			n.cur.Load().Process(engine.Side(i%2), bad[i%len(bad)])
			injected.Add(1)
		}
	}()
	n.transfer(t, n.A, n.B, 5001, 4<<20)
	<-done
	n.transfer(t, n.A, n.B, 5002, 1<<20) // a new flow through the restarted gateway: split again
	close(stop)
	<-badDone
	if g2 == nil {
		t.Fatal("no second gateway")
	}
	g1s, g2s := n.old.Stats(), g2.Stats()
	t.Logf("first gateway %+v\nsecond gateway %+v\nrefused as replays, never accepted: %d", g1s, g2s, n.refusals().FreshRefused)
	if g1s.Unknown == 0 || g1s.Opened == 0 || g2s.Opened == 0 || g2s.Sealed == 0 || g2s.Engine.EarlyAcked < 1<<20 {
		t.Fatalf("the gateways did not relay, take over and split as expected")
	}
	var refused uint64
	for _, sa := range n.receivers() {
		s := sa.Stats()
		refused += s.ICVFailures + s.OtherDrops
	}
	// The routers refuse the bad packets relayed to them (router A's SA is
	// the wrong one for those from A's side, and some are lost on the
	// radio), and nothing else.
	if refused > uint64(injected.Load()) {
		t.Fatalf("endpoints refused %d packets, %d bad ones were injected", refused, injected.Load())
	}
	if g1s.ICVFailures+g2s.ICVFailures == 0 || g1s.Malformed+g2s.Malformed == 0 || g2s.Unknown == 0 {
		t.Fatalf("the bad packets were not counted")
	}
	if n.refusals().FreshRefused > 200 {
		t.Fatalf("%d packets refused as replays: more than were in flight at the switch", n.refusals().FreshRefused)
	}
	n.ivs.mu.Lock()
	defer n.ivs.mu.Unlock()
	if n.ivs.reuse != 0 {
		t.Fatalf("%d (SPI, IV) pairs on two different packets across the restart", n.ivs.reuse)
	}
}

// TestGatewayVariants: the same gateway over transport mode, ESP in UDP
// 4500, AH (alone: integrity only), and an IPv6 outer tunnel around IPv4,
// each way sealed the way the endpoint's packets showed; split mode, 1 %
// loss, every packet accepted, the bytes intact.
func TestGatewayVariants(t *testing.T) {
	transport := func(c *ipsec.Config, ab bool) {
		c.Mode = ipsec.Transport
		c.Src, c.Dst = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
		if !ab {
			c.Src, c.Dst = c.Dst, c.Src
		}
	}
	for _, v := range []struct {
		name   string
		mod    func(c *ipsec.Config, ab bool)
		bundle bool // AH in transport mode around the ESP
	}{
		{"transport", transport, false},
		{"udp4500", func(c *ipsec.Config, ab bool) { c.EncapSrcPort, c.EncapDstPort = 4500, 4500 }, false},
		{"ah-transport", func(c *ipsec.Config, ab bool) {
			c.Proto, c.Enc, c.EncKey = ipsec.AH, ipsec.EncNone, nil
			c.Integ, c.IntegKey = ipsec.IntegSHA256_128, make([]byte, 32)
			rand.Read(c.IntegKey)
			c.Mode = ipsec.Transport
			c.Src, c.Dst = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
			if !ab {
				c.Src, c.Dst = c.Dst, c.Src
			}
		}, false},
		{"ah+esp-transport", transport, true},
		{"ipv6-outer", func(c *ipsec.Config, ab bool) {
			c.Src, c.Dst = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
			if !ab {
				c.Src, c.Dst = c.Dst, c.Src
			}
		}, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
			ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
			v.mod(&ab, true)
			v.mod(&ba, false)
			radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
			var ivA, ivB ipsec.IVSource = seqivIV{0x77}, seqivIV{0x99}
			if ab.Proto == ipsec.AH {
				ivA, ivB = nil, nil
			}
			var outerAB, outerBA *ipsec.Config
			if v.bundle {
				ah := func(spi uint32, ab bool) *ipsec.Config {
					c := tunnelConfig(spi, "192.0.2.1", "192.0.2.2", ipsec.EncNone)
					c.Proto, c.EncKey = ipsec.AH, nil
					c.Integ, c.IntegKey = ipsec.IntegSHA256_128, make([]byte, 32)
					rand.Read(c.IntegKey)
					transport(&c, ab)
					return &c
				}
				outerAB, outerBA = ah(0x3003, true), ah(0x4004, false)
			}
			n := newTestNetBundle(t, ab, ba, outerAB, outerBA, ivA, ivB, radio, engine.ModeSplit, ipsec.ClassWrite, false)
			n.transfer(t, n.A, n.B, 5001, 1<<20)
			n.transfer(t, n.B, n.A, 5002, 256<<10)
			gs := n.G.Stats()
			if gs.Opened == 0 || gs.Sealed == 0 || gs.Engine.EarlyAcked < 1<<20 || gs.ICVFailures+gs.OpenErrors+gs.SealErrors != 0 {
				t.Fatalf("gateway: %+v", gs)
			}
			if v.bundle {
				// Both layers of each direction numbered by the gateway.
				owned := 0
				for _, sa := range n.G.SAs() {
					if sa.Owned {
						owned++
					}
				}
				if owned != 4 {
					t.Fatalf("the gateway sealed on %d of the bundle's 4 SAs: %+v", owned, n.G.SAs())
				}
				if n.aInOuter.Stats().InPackets == 0 {
					t.Fatalf("the AH layer never reached router A")
				}
			}
			for _, sa := range n.receivers() {
				if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
					t.Fatalf("endpoint refused packets: %+v", s)
				}
			}
			if n.ivs.reuse != 0 {
				t.Fatalf("%d (SPI, IV) pairs reused", n.ivs.reuse)
			}
		})
	}
}

// TestGatewayIPIP: the ESP tunnel itself travels in an IP-in-IP tunnel
// between two Mobile IP home agents (RFC 2003). The gateway strips the
// outer header to reach ESP and TCP and puts it back on everything it
// sends; the endpoints see every packet in the tunnel and accept it.
func TestGatewayIPIP(t *testing.T) {
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
	n := newTestNetWrap(t, ab, ba, seqivIV{0x77}, seqivIV{0x99}, radio, engine.ModeSplit, ipsec.ClassWrite, true)
	n.transfer(t, n.A, n.B, 5001, 1<<20)
	gs := n.G.Stats()
	t.Logf("gateway %+v", gs)
	if gs.IPIP == 0 || gs.Sealed == 0 || gs.Engine.EarlyAcked < 1<<20 {
		t.Fatalf("the gateway did not work inside the IP-in-IP tunnel: %+v", gs)
	}
	for _, sa := range n.receivers() {
		if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
			t.Fatalf("endpoint refused packets: %+v", s)
		}
	}
	if n.refusals().NotInTunnel != 0 {
		t.Fatalf("%d packets reached an endpoint outside the IP-in-IP tunnel", n.refusals().NotInTunnel)
	}
}

// TestGatewayRekey: the endpoints' SAs end mid-transfer, as IKE rekeys
// them (CREATE_CHILD_SA, then DELETE of the old pair) or as their hard
// lifetime runs out, with the gateway given the new SAs at the rekey (what
// save-keys or the security server does). The transfer completes through
// the gateway in split mode at 1 % loss, every packet that reaches a
// router is accepted, none arrives on an SA the router had deleted, and
// the gateway sealed on the new SAs.
func TestGatewayRekey(t *testing.T) {
	for _, tc := range []struct {
		name     string
		lifetime bool // the old SAs die by their hard lifetime, not by DELETE
		size     int
		at       time.Duration // when the endpoints rekey
		idle     bool          // the sender keeps the connection open, silent, once it has written
	}{
		{"delete", false, 6 << 20, 800 * time.Millisecond, false},
		{"hard-lifetime", true, 6 << 20, 800 * time.Millisecond, false},
		// The sender has sent everything (the gateway holds it, early
		// acknowledged) and is silent when the endpoints rekey: only the
		// gateway's keep-alives make it show its new SA.
		{"delete-sender-idle", false, 2 << 20, 600 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			radio := netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}
			ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
			ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
			if tc.lifetime {
				ab.Lifetime.HardTime, ba.Lifetime.HardTime = 1500*time.Millisecond, 1500*time.Millisecond
			}
			n := newTestNetSAs(t, ab, ba, seqivIV{0x77}, seqivIV{0x99}, radio, engine.ModeSplit, ipsec.ClassWrite)
			ab2 := tunnelConfig(0x3003, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
			ba2 := tunnelConfig(0x4004, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
			done := make(chan struct{})
			go func() {
				defer close(done)
				time.Sleep(tc.at)
				// The new SAs reach the gateway and the routers together.
				sad := &ipsec.SAD{}
				for _, c := range []ipsec.Config{ab, ba, ab2, ba2} {
					e, _ := ipsec.NewEntry(c)
					sad.Add(e)
				}
				n.G.SetSAD(sad)
				n.rekey(t, ab2, ba2, seqivIV{0x1177}, seqivIV{0x1199})
				if tc.lifetime {
					return // the old SAs die by themselves, here and at the gateway
				}
				time.Sleep(500 * time.Millisecond)
				n.deleteOld()
				sad = &ipsec.SAD{}
				for _, c := range []ipsec.Config{ab2, ba2} {
					e, _ := ipsec.NewEntry(c)
					sad.Add(e)
				}
				n.G.SetSAD(sad)
			}()
			if tc.idle {
				if _, err := gvhost.TransferHeld(n.A, n.B, 5001, tc.size, 30*time.Second); err != nil {
					t.Fatal(err)
				}
			} else {
				n.transfer(t, n.A, n.B, 5001, tc.size)
			}
			<-done
			n.transfer(t, n.B, n.A, 5002, 256<<10) // and a new flow, on the new SAs only
			gs := n.G.Stats()
			t.Logf("gateway %+v\nSAs %+v\nrefused as replays, never accepted: %d; on deleted SAs: %d", gs, n.G.SAs(), n.refusals().FreshRefused, n.refusals().ToDeleted)

			owned := 0
			for _, s := range n.G.SAs() {
				if s.Owned && (s.ID.SPI == 0x3003 || s.ID.SPI == 0x4004) {
					owned++
				}
			}
			if owned != 2 {
				t.Fatalf("the gateway did not seal on both new SAs")
			}
			for _, sa := range append(n.receivers(), n.rekeyedIns[0x3003], n.rekeyedIns[0x4004]) {
				if s := sa.Stats(); s.ICVFailures != 0 || s.ReplayDrops != 0 || s.OtherDrops != 0 {
					t.Fatalf("router refused packets on %v: %+v", sa.ID(), s)
				}
			}
			if n.refusals().ToDeleted != 0 {
				t.Fatalf("%d packets reached a router on an SA it had deleted (router A %d, router B %d)",
					n.refusals().ToDeleted, n.routerA.Counts().ToDeleted, n.routerB.Counts().ToDeleted)
			}
			if tc.idle && gs.Elicits == 0 {
				t.Fatalf("the gateway never asked the silent sender for a packet")
			}
		})
	}
}
