package gateway

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Hostile input, in one process: gVisor endpoints behind ESP routers, the
// gateway between them over a lossy radio, and an attacker on either side.
// Each test checks that the transfer arrives intact, that the endpoints
// refuse nothing they did not already have, and that no (SPI, IV) pair
// went out on two different packets. Restarts and sequence space are in
// sequence_test.go.

var lossyRadio = netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 5}

// inject runs f every gap until the returned stop is called.
func inject(gap time.Duration, f func(i int)) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			case <-time.After(gap):
			}
			f(i)
		}
	}()
	return func() { close(quit); <-done }
}

// checkEndpoints fails the test if a router refused a packet it did not
// already have (beyond maxBad relayed bad packets), or if an (SPI, IV)
// pair went out twice.
func checkEndpoints(t *testing.T, n *testNet, maxFresh int, maxBad ...uint64) {
	t.Helper()
	var bad uint64
	for _, sa := range n.receivers() {
		s := sa.Stats()
		bad += s.ICVFailures + s.OtherDrops
	}
	bad += uint64(n.refusals().UnknownSPI) // a relayed packet on an SPI the router never had
	if len(maxBad) == 0 && bad != 0 || len(maxBad) > 0 && bad > maxBad[0] {
		t.Errorf("routers refused %d packets for ICV, form or SPI", bad)
	}
	fresh := n.refusals().FreshRefused
	if fresh > maxFresh {
		t.Errorf("%d packets refused as replays that the receiver never had (at most %d allowed)", fresh, maxFresh)
	}
	n.ivs.mu.Lock()
	defer n.ivs.mu.Unlock()
	if n.ivs.reuse != 0 {
		t.Errorf("%d (SPI, IV) pairs on two different packets", n.ivs.reuse)
	}
}

// flowTuple returns the split flow's endpoints the gateway tracks: what an
// attacker who knew everything would aim at.
func flowTuple(t *testing.T, g *Gateway) (wire, radio netip.AddrPort) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, f := range g.Engine().Flows() {
			if f.Split && f.Down.EarlyAcked > 0 {
				return f.Wire, f.Radio
			}
		}
	}
	t.Fatal("no split flow")
	return
}

// TestGatewayForgedCleartext: with plain = yes, an attacker on the radio
// side who knows the protected flow's addresses, ports and sequence
// numbers sends it cleartext RSTs (exactly at the next byte), ACKs for
// everything the gateway holds, and data. None of it reaches the flow:
// the transfer arrives intact, nothing was reset, and the forgeries are
// counted. Before, one such segment made the flow "unprotected" and its
// held bytes went out in the clear.
func TestGatewayForgedCleartext(t *testing.T) {
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{0x77}, seqivIV{0x99}, lossyRadio, engine.ModeSplit)
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, Plain: true, State: n.state}, n.freshSAD(t), n.G.out)
	if err != nil {
		t.Fatal(err)
	}
	n.swap(g)
	var clear atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		w, r := flowTuple(t, g)
		stop := inject(5*time.Millisecond, func(i int) {
			var una, nxt uint32
			for _, f := range g.Engine().Flows() {
				if f.Wire == w {
					una, nxt = 0, uint32(f.Down.EarlyAcked)
				}
			}
			_ = una
			var p []byte
			switch i % 3 {
			case 0: // an RST from the radio host, at every plausible number
				p = packettest.Segment(r, w, header.TCPRst|header.TCPAck, uint32(i*997), nxt, 0, nil, nil)
			case 1: // an ACK for everything held
				p = packettest.Segment(r, w, header.TCPAck, uint32(i), ^uint32(0)>>1+uint32(i)*1000, 65535, nil, nil)
			case 2: // data toward the wire host
				p = packettest.Segment(r, w, header.TCPAck|header.TCPPsh, uint32(i*1000), 0, 65535, nil, []byte("forged"))
			}
			g.Process(engine.Radio, p)
			clear.Add(1)
		})
		<-time.After(1500 * time.Millisecond)
		stop()
	}()
	n.transfer(t, n.A, n.B, 5001, 4<<20)
	<-done
	st := g.Stats()
	t.Logf("forged %d, binding violations %d, engine resets %d", clear.Load(), st.BindingViolations, st.Engine.Resets)
	if st.BindingViolations < uint64(clear.Load())/2 || st.Engine.Resets != 0 || st.Engine.EarlyAcked < 4<<20 {
		t.Fatalf("the forgeries reached the flow: %+v", st)
	}
	checkEndpoints(t, n, 0)
}

// TestGatewayForeignSA: a third peer holds a genuine SA toward the radio
// host's router (192.0.2.3 → 192.0.2.2) and sends verified packets on it
// that claim the protected flow (an RST at its next byte). Without traffic
// selectors the flow's binding to its peers refuses them; with selectors
// the inbound check (RFC 4301 §5.2) does first.
func TestGatewayForeignSA(t *testing.T) {
	for _, withTS := range []bool{false, true} {
		name := map[bool]string{false: "binding", true: "selectors"}[withTS]
		t.Run(name, func(t *testing.T) {
			n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{0x77}, seqivIV{0x99}, lossyRadio, engine.ModeSplit)
			cb := tunnelConfig(0x5005, "192.0.2.3", "192.0.2.2", ipsec.EncAESGCM16)
			if withTS {
				cb.TS = ipsec.Selector{Proto: ipsec.ProtoAny}
				cb.TS.Local, _ = ipsec.ParseAddrRange("10.0.0.3")
			}
			n.cfgs = append(n.cfgs, cb)
			g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, State: n.state}, n.freshSAD(t), n.G.out)
			if err != nil {
				t.Fatal(err)
			}
			n.swap(g)
			attacker, err := ipsec.New(cb)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				w, r := flowTuple(t, g)
				stop := inject(5*time.Millisecond, func(i int) {
					// From the wire host's address, toward the radio host:
					// the direction of the flow the C → B SA can claim.
					p := packettest.Segment(w, r, header.TCPRst|header.TCPAck, uint32(i*4093), 0, 0, nil, nil)
					g.Process(engine.Wire, seal(attacker, p))
				})
				<-time.After(time.Second)
				stop()
			}()
			n.transfer(t, n.A, n.B, 5001, 3<<20)
			<-done
			st := g.Stats()
			t.Logf("%+v", st)
			if withTS && st.Selectors == 0 || !withTS && st.BindingViolations == 0 || st.Engine.Resets != 0 {
				t.Fatalf("the foreign SA's packets were not refused: selectors %d, binding %d, resets %d", st.Selectors, st.BindingViolations, st.Engine.Resets)
			}
			checkEndpoints(t, n, 0)
		})
	}
}

// TestGatewayIPIPSpoofed: the ESP tunnel runs in an IP-in-IP tunnel; an
// attacker sends 70,000 IP-in-IP packets from other tunnel addresses
// carrying ESP the gateway cannot verify, for the same inner hosts. The
// gateway learns a flow's tunnel only from verified packets, so every
// packet it sends stays in the real tunnel, and nothing is flushed.
func TestGatewayIPIPSpoofed(t *testing.T) {
	if testing.Short() {
		t.Skip("-short (the race run): 70,000 packets")
	}
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	n := newTestNetWrap(t, ab, ba, seqivIV{0x77}, seqivIV{0x99}, lossyRadio, engine.ModeSplit, ipsec.ClassWrite, true)
	forge, err := ipsec.New(tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)) // the right SPI, the wrong key
	if err != nil {
		t.Fatal(err)
	}
	forge.SetIVSource(ipsec.FixedIV{0x7f, 1, 2, 3, 4, 5, 6, 7}) // an IV no real sender here uses: the IV log counts reuse by (SPI, IV)
	inner := packettest.TCP(netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1"), []byte("spoofed"))
	esp := seal(forge, inner)
	var sent atomic.Int64
	stop := inject(time.Millisecond, func(i int) {
		for k := range 100 {
			src := netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(k)})
			p := make([]byte, 20+len(esp))
			header.WriteIPv4(p, 0, len(p), 1, false, 60, header.ProtoIPIP, src, netip.MustParseAddr("198.51.100.1"))
			copy(p[20:], esp)
			n.cur.Load().Process(engine.Radio, p)
			sent.Add(1)
		}
	})
	n.transfer(t, n.A, n.B, 5001, 2<<20)
	for sent.Load() < 70000 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	n.transfer(t, n.B, n.A, 5002, 256<<10)
	out := n.refusals().NotInTunnel
	if out != 0 {
		t.Fatalf("%d packets left outside the real IP-in-IP tunnel", out)
	}
	if st := n.G.Stats(); st.Sealed == 0 || st.ICVFailures+st.Replays < 70000 {
		t.Fatalf("%+v", st)
	}
	checkEndpoints(t, n, 0, uint64(sent.Load())) // the forgeries are relayed for the receiver to refuse
}

// TestGatewayReadForgedSeq: with read-class SAs, an attacker replays a
// sender's packets with forged sequence numbers far ahead (a read gateway
// can verify nothing). Before, one such number made the gateway drop
// every later packet of the SA as "out of the receiver's window"; now the
// last number seen only stops local resends until the sender's next
// packet, and forwarding never depends on it.
func TestGatewayReadForgedSeq(t *testing.T) {
	radio := lossyRadio
	radio.Loss = 0.02
	n := newTestNetClass(t, ipsec.EncAESCBC, nil, nil, radio, engine.ModeSplit, ipsec.ClassRead, 1024)
	c := n.cfgs[0] // the A → B SA, with the integrity key the attacker lacks: it only makes the bytes valid
	c.Class, c.IntegKey = ipsec.ClassWrite, make([]byte, 32)
	forge, err := ipsec.New(c)
	if err != nil {
		t.Fatal(err)
	}
	stop := inject(2*time.Millisecond, func(i int) {
		forge.SetOutSeq(uint64(1<<31 + i))
		p := packettest.Segment(netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:40000"), header.TCPAck, 1, 1, 100, nil, nil)
		n.cur.Load().Process(engine.Wire, seal(forge, p))
	})
	n.transfer(t, n.A, n.B, 5001, 2<<20)
	stop()
	st := n.G.Stats()
	t.Logf("%+v", st)
	if st.ClassRead == 0 || st.Engine.LocalRexmits+st.Engine.TimeoutRexmits == 0 {
		t.Fatalf("the gateway did not snoop: %+v", st)
	}
}

// TestGatewayDrain: the SAs the gateway numbers leave its SAD in the
// middle of a transfer (a file edited), while the endpoints go on using
// them: the gateway keeps opening and re-sealing their packets — relayed
// with the endpoints' own numbers, every one would be refused — and wipes
// the SAs once their packets stop for DrainIdle.
func TestGatewayDrain(t *testing.T) {
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{0x77}, seqivIV{0x99}, lossyRadio, engine.ModeSplit)
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, State: n.state, DrainIdle: 300 * time.Millisecond}, n.freshSAD(t), n.G.out)
	if err != nil {
		t.Fatal(err)
	}
	n.swap(g)
	// The SAD goes once the gateway numbers both SAs, not at a fixed
	// time: on a loaded machine the transfer may not have begun yet, and
	// SAs that never carried a packet are wiped, not drained.
	var dropped bool
	stop := inject(20*time.Millisecond, func(int) {
		owned := 0
		for _, sa := range g.SAs() {
			if sa.Owned && sa.GatewaySeq >= 50 {
				owned++
			}
		}
		if !dropped && owned == 2 {
			g.SetSAD(nil)
			dropped = true
		}
	})
	n.transfer(t, n.A, n.B, 5001, 4<<20)
	stop()
	st := g.Stats()
	if st.Drains != 2 {
		t.Fatalf("drains: %+v", st)
	}
	checkEndpoints(t, n, 0)
	time.Sleep(time.Second) // idle: the SAs are wiped
	for _, sa := range g.SAs() {
		if sa.Draining {
			t.Fatalf("an SA still drains after DrainIdle: %+v", sa)
		}
	}
	if st := g.Stats(); st.Wiped < 2 {
		t.Fatalf("the drained SAs were not wiped: %+v", st)
	}
}

// TestGatewayFlood: while a transfer runs, the radio side floods the
// gateway with spoofed SYNs (plain = yes), tiny out-of-order segments on
// flows it opened, ESP with unknown SPIs and ESP on 20,000 SAs the gateway
// holds (none of which verifies). Every table is bounded and forgets what
// is idle longest, the buffers have their global bounds, the flows opened
// in the clear have their own share of the engine's table: the live heap
// grows by less than floodHeap under the flood (measured: 92 MB with the
// 20,002 SAs loaded, 61 MB more under it), and the transfer arrives
// intact.
func TestGatewayFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("the flood runs for seconds")
	}
	const floodHeap = 128 << 20
	n := newTestNet(t, ipsec.EncAESGCM16, seqivIV{0x77}, seqivIV{0x99}, lossyRadio, engine.ModeSplit)
	for i := range 20000 {
		c := tunnelConfig(uint32(0x10000+i), "192.0.2.9", "192.0.2.1", ipsec.EncAESGCM16)
		n.cfgs = append(n.cfgs, c)
	}
	ecfg := engine.Config{Mode: engine.ModeSplit, MaxFlows: 8192, BufferTotal: 64 << 20, HandshakeTimeout: time.Second}
	g, err := New(Config{Engine: ecfg, Plain: true, State: n.state}, n.freshSAD(t), n.G.out)
	if err != nil {
		t.Fatal(err)
	}
	n.swap(g)
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	junk, err := ipsec.New(tunnelConfig(0x10000, "192.0.2.9", "192.0.2.1", ipsec.EncAESGCM16)) // the SPIs' form, not their keys
	if err != nil {
		t.Fatal(err)
	}
	radio := netip.MustParseAddr("10.0.0.1")
	var sent atomic.Int64
	var peak atomic.Uint64
	stop := inject(time.Millisecond, func(i int) {
		for k := range 200 {
			j := i*200 + k
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 66, byte(j >> 8), byte(j)}), uint16(1024+j%50000))
			dst := netip.AddrPortFrom(radio, 80)
			var p []byte
			switch k % 5 {
			case 0: // a SYN, answered by a spoofed SYN-ACK: a flow opened
				g.Process(engine.Radio, packettest.Segment(src, dst, header.TCPSyn, 1, 0, 65535, []byte{header.TCPOptSACKPerm, 2}, nil))
				p = packettest.Segment(dst, src, header.TCPSyn|header.TCPAck, 7, 2, 65535, []byte{header.TCPOptSACKPerm, 2}, nil)
				g.Process(engine.Wire, p)
				p = packettest.Segment(src, dst, header.TCPAck, 2, 8, 65535, nil, nil)
			case 1: // tiny segments far apart: out-of-order ranges
				p = packettest.Segment(src, dst, header.TCPAck, uint32(2+(j%64)*3000), 8, 65535, nil, []byte{1})
			case 2: // an unknown SPI
				p = seal(junk, packettest.TCP(src.Addr(), dst.Addr(), []byte("x")))
				binary.BigEndian.PutUint32(p[20:], uint32(0x90000000+j))
			case 3: // one of the SAs the gateway holds, with the wrong key
				junk.SetOutSeq(uint64(j))
				p = seal(junk, packettest.TCP(src.Addr(), dst.Addr(), []byte("x")))
				binary.BigEndian.PutUint32(p[20:], uint32(0x10000+j%20000))
			case 4:
				p = packettest.Segment(src, dst, header.TCPRst, uint32(j), 0, 0, nil, nil)
			}
			g.Process(engine.Radio, p)
			sent.Add(1)
		}
		if i%100 == 0 { // the live heap, not the flood's own garbage
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	})
	n.transfer(t, n.A, n.B, 5001, 8<<20)
	stop()
	st := g.Stats()
	grew := peak.Load() - min(peak.Load(), base.HeapInuse)
	t.Logf("flood of %d packets; heap in use %d MB before it (20,002 SAs loaded), at most %d MB more under it; engine flows %d (max %d), expired %d, buffered %d MB; gateway %+v",
		sent.Load(), base.HeapInuse>>20, grew>>20, st.Engine.Flows, st.Engine.FlowsMax, st.Engine.Expired, st.Engine.BufferedBytes>>20, st)
	if grew > floodHeap {
		t.Fatalf("heap grew %d MB under the flood (bound %d MB)", grew>>20, floodHeap>>20)
	}
	if sent.Load() < 200000 || st.Engine.FlowsMax > ecfg.MaxFlows {
		t.Fatalf("flood too small or flows unbounded: sent %d, flows max %d", sent.Load(), st.Engine.FlowsMax)
	}
	checkEndpoints(t, n, 0, 2*uint64(sent.Load())) // the flood is relayed (fail open), and the SYN-ACKs the other way too
}

// TestGatewayNATRebind: an SA as save-keys gives it (esp_sa: no mode, no
// ports, a wildcard source) whose endpoint sends ESP in UDP from behind a
// NAT: the gateway seals in the form the verified packets show — tunnel
// mode, their ports, their source address — and when the NAT moves the
// endpoint's port, follows the newest verified packet; a forged packet or
// a replay with other ports moves nothing.
func TestGatewayNATRebind(t *testing.T) {
	cfg := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	cfg.EncapSrcPort, cfg.EncapDstPort = 4500, 4500
	tx, err := ipsec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tx.SetIVSource(seqivIV{0xabc})
	rx, _ := ipsec.New(cfg)
	wild := cfg
	wild.Mode, wild.Src, wild.EncapSrcPort, wild.EncapDstPort = ipsec.ModeAny, netip.Addr{}, 0, 0
	sad := &ipsec.SAD{}
	e, err := ipsec.NewEntry(wild)
	if err != nil {
		t.Fatal(err)
	}
	sad.Add(e)
	var out [][]byte
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSnoop}, State: statedir.Memory(), Log: quietLog()},
		sad, func(_ engine.Side, p []byte) { out = append(out, append([]byte(nil), p...)) })
	if err != nil {
		t.Fatal(err)
	}
	w, r := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:40000")
	seq := uint32(100)
	send := func(fr *ipsec.Frame) []byte {
		inner := packettest.Segment(w, r, header.TCPAck, seq, 1, 100, nil, []byte("data"))
		seq += 4
		buf := make([]byte, ipsec.MaxHeadroom+len(inner)+ipsec.MaxTailroom)
		copy(buf[ipsec.MaxHeadroom:], inner)
		p, err := tx.SealFramed(buf, ipsec.MaxHeadroom, len(inner), 0, nil, fr)
		if err != nil {
			t.Fatal(err)
		}
		p = append([]byte(nil), p...)
		g.Process(engine.Wire, p)
		return p
	}
	lastPorts := func() (uint16, uint16, netip.Addr) {
		t.Helper()
		p := out[len(out)-1]
		l, err := ipsec.Locate(p)
		if err != nil || l.UDPOff < 0 {
			t.Fatalf("not ESP in UDP: %v", err)
		}
		if _, err := rx.Open(append([]byte(nil), p...)); err != nil {
			t.Fatalf("the receiver refused the gateway's packet: %v", err)
		}
		return binary.BigEndian.Uint16(p[l.UDPOff:]), binary.BigEndian.Uint16(p[l.UDPOff+2:]), l.Src
	}
	for range 3 {
		send(nil)
	}
	if sp, dp, src := lastPorts(); sp != 4500 || dp != 4500 || src != cfg.Src || g.Stats().Sealed == 0 {
		t.Fatalf("sealed from %v:%d to :%d; %+v", src, sp, dp, g.Stats())
	}
	nat, err := tx.NewFrame(ipsec.Tunnel, 31000, 4500, netip.Addr{}, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	old := send(nat)
	send(nat)
	if sp, _, _ := lastPorts(); sp != 31000 || g.Stats().Rebinds != 1 {
		t.Fatalf("the gateway did not follow the NAT: port %d, %+v", sp, g.Stats())
	}
	// A replay of an old packet with other ports, and a forgery: nothing moves.
	replay := append([]byte(nil), old...)
	l, _ := ipsec.Locate(replay)
	binary.BigEndian.PutUint16(replay[l.UDPOff:], 40000)
	g.Process(engine.Wire, replay)
	forged := send(nat)
	forged = append([]byte(nil), forged...)
	binary.BigEndian.PutUint16(forged[l.UDPOff:], 40001)
	forged[len(forged)-1] ^= 1
	g.Process(engine.Wire, forged)
	send(nat)
	if sp, _, _ := lastPorts(); sp != 31000 || g.Stats().Rebinds != 1 {
		t.Fatalf("a replay or a forgery moved the ports: %d, %+v", sp, g.Stats())
	}
}
