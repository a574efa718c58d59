package gateway

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// pathRig drives a gateway with TCP flows, each through an ESP tunnel of
// its own between hosts of its own: the wire host's data segments (1448
// bytes) and the radio host's ACK of each, sealed by the endpoints' own
// SAs outside the timed part. The rig's first flow is embedded, for the
// single-flow benchmarks and tests.
type pathRig struct {
	g     *Gateway
	out   atomic.Int64
	flows []*pathFlow
	*pathFlow
}

// pathFlow is one flow of a pathRig, with its tunnel's two SAs.
type pathFlow struct {
	aOut, bOut  *ipsec.SA
	wire, radio netip.AddrPort
	seqW, seqR  uint32
	data, acks  [][]byte
	payload     []byte
	ipip        bool           // every packet in an IP-in-IP tunnel
	cfgs        []ipsec.Config // the flow's SAs as configured, keys kept (for tests that give them again)
}

// wrap puts pkt in the flow's IP-in-IP tunnel, if it has one.
func (r *pathFlow) wrap(pkt []byte) []byte {
	if !r.ipip {
		return pkt
	}
	b := make([]byte, 20+len(pkt))
	header.WriteIPv4(b, 0, len(b), 7, true, 64, header.ProtoIPIP, netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"))
	copy(b[20:], pkt)
	return b
}

func newPathRig(tb testing.TB, enc ipsec.Enc, withSAs bool, mode engine.Mode) *pathRig {
	return newPathRigN(tb, enc, withSAs, mode, 1, false, nil)
}

// newPathRigN makes a rig of n flows, each with its handshake done; with
// shared, all in one tunnel (one SA each way, a replay window of 4096).
// out, if not nil, sees every packet the gateway sends.
func newPathRigN(tb testing.TB, enc ipsec.Enc, withSAs bool, mode engine.Mode, n int, shared bool, out func([]byte)) *pathRig {
	return newPathRigIPIP(tb, enc, withSAs, mode, n, shared, out, false)
}

// newPathRigIPIP is newPathRigN with, if ipip, every packet the endpoints
// send carried in an IP-in-IP tunnel (RFC 2003) between two home agents.
func newPathRigIPIP(tb testing.TB, enc ipsec.Enc, withSAs bool, mode engine.Mode, n int, shared bool, out func([]byte), ipip bool) *pathRig {
	r := &pathRig{}
	sad := &ipsec.SAD{}
	var aOut, bOut *ipsec.SA
	for i := range n {
		f := newPathFlow(i)
		f.ipip = ipip
		r.flows = append(r.flows, f)
		if shared && i > 0 {
			f.aOut, f.bOut = aOut, bOut
			continue
		}
		ab := tunnelConfig(0x1001+uint32(i)<<8, fmt.Sprintf("192.0.2.%d", 2*i+1), fmt.Sprintf("192.0.2.%d", 2*i+2), enc)
		ba := tunnelConfig(0x2002+uint32(i)<<8, fmt.Sprintf("192.0.2.%d", 2*i+2), fmt.Sprintf("192.0.2.%d", 2*i+1), enc)
		if shared {
			ab.ReplayWindow, ba.ReplayWindow = 4096, 4096
		}
		for _, c := range []ipsec.Config{ab, ba} {
			c.EncKey, c.IntegKey = slices.Clone(c.EncKey), slices.Clone(c.IntegKey)
			f.cfgs = append(f.cfgs, c)
		}
		var err error
		if f.aOut, err = ipsec.New(ab); err != nil {
			tb.Fatal(err)
		}
		if f.bOut, err = ipsec.New(ba); err != nil {
			tb.Fatal(err)
		}
		f.aOut.SetIVSource(seqivIV{0x1111})
		f.bOut.SetIVSource(seqivIV{0x2222})
		aOut, bOut = f.aOut, f.bOut
		if withSAs {
			for _, c := range []ipsec.Config{ab, ba} {
				e, _ := ipsec.NewEntry(c)
				sad.Add(e)
			}
		}
	}
	r.pathFlow = r.flows[0]
	var err error
	r.g, err = New(Config{Engine: engine.Config{Mode: mode}, State: statedir.Memory()}, sad, func(_ engine.Side, pkt []byte) {
		r.out.Add(1)
		if out != nil {
			out(pkt)
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.g.Close)
	r.handshakes()
	return r
}

// newPlainRig is a one-flow rig whose gateway accelerates cleartext TCP
// (Config.Plain) and whose endpoints seal nothing: the path of the TUN
// harness's split (--plain).
func newPlainRig(tb testing.TB) *pathRig {
	f := newPathFlow(0)
	r := &pathRig{flows: []*pathFlow{f}, pathFlow: f}
	var err error
	r.g, err = New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, Plain: true, State: statedir.Memory()}, &ipsec.SAD{},
		func(engine.Side, []byte) { r.out.Add(1) })
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.g.Close)
	r.handshakes()
	return r
}

// newPathFlow is a rig's flow i, between hosts of its own, without SAs.
func newPathFlow(i int) *pathFlow {
	return &pathFlow{wire: netip.MustParseAddrPort(fmt.Sprintf("10.0.%d.1:5001", i)),
		radio: netip.MustParseAddrPort(fmt.Sprintf("10.0.%d.2:40000", i)), seqW: 1000, seqR: 9000, payload: make([]byte, 1448)}
}

// handshakes gives the gateway each flow's three-way handshake.
func (r *pathRig) handshakes() {
	syn := []byte{header.TCPOptMSS, 4, 0x05, 0xb4, header.TCPOptSACKPerm, 2}
	for _, f := range r.flows {
		r.g.Process(engine.Wire, f.wrap(f.maybeSeal(f.aOut, packettest.Segment(f.wire, f.radio, header.TCPSyn, f.seqW-1, 0, 65535, syn, nil))))
		r.g.Process(engine.Radio, f.wrap(f.maybeSeal(f.bOut, packettest.Segment(f.radio, f.wire, header.TCPSyn|header.TCPAck, f.seqR-1, f.seqW, 65535, syn, nil))))
		r.g.Process(engine.Wire, f.wrap(f.maybeSeal(f.aOut, packettest.Segment(f.wire, f.radio, header.TCPAck, f.seqW, f.seqR, 65535, nil, nil))))
	}
}

// maybeSeal seals pkt with sa, or leaves it clear in a flow without SAs.
func (r *pathFlow) maybeSeal(sa *ipsec.SA, pkt []byte) []byte {
	if sa == nil {
		return pkt
	}
	return seal(sa, pkt)
}

// batch makes the next n data segments and their ACKs, sealed if the
// flow has SAs.
func (r *pathFlow) batch(n int) {
	r.data, r.acks = r.data[:0], r.acks[:0]
	for range n {
		r.data = append(r.data, r.wrap(r.maybeSeal(r.aOut, packettest.Segment(r.wire, r.radio, header.TCPAck|header.TCPPsh, r.seqW, r.seqR, 65535, nil, r.payload))))
		r.seqW += uint32(len(r.payload))
		r.acks = append(r.acks, r.wrap(r.maybeSeal(r.bOut, packettest.Segment(r.radio, r.wire, header.TCPAck, r.seqR, r.seqW, 65535, nil, nil))))
	}
}

// run processes the flows' batches, each flow in a goroutine of its own,
// and returns how long that took.
func (r *pathRig) run() time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	for _, f := range r.flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range f.data {
				r.g.Process(engine.Wire, f.data[i])
				r.g.Process(engine.Radio, f.acks[i])
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkPacketPath: what one core moves through the gateway — open,
// engine, seal — against a plain relay (no SAs: every packet passed on as
// it came) in the same run. Reports Gbit/s of TCP payload.
//
//	go test ./internal/gateway -run - -bench PacketPath
func BenchmarkPacketPath(b *testing.B) {
	for _, tc := range []struct {
		name string
		enc  ipsec.Enc
		sas  bool
		mode engine.Mode
	}{
		{"relay", ipsec.EncAESGCM16, false, engine.ModeSplit},
		{"split-aes128gcm16", ipsec.EncAESGCM16, true, engine.ModeSplit},
		{"snoop-aes128gcm16", ipsec.EncAESGCM16, true, engine.ModeSnoop},
		{"split-chacha20poly1305", ipsec.EncChaCha20Poly1305, true, engine.ModeSplit},
		{"split-aescbc-hmacsha256", ipsec.EncAESCBC, true, engine.ModeSplit},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := newPathRig(b, tc.enc, tc.sas, tc.mode)
			const batch = 512
			b.ReportAllocs()
			b.ResetTimer()
			done := 0
			for done < b.N {
				b.StopTimer()
				r.batch(batch)
				b.StartTimer()
				for i := 0; i < batch && done < b.N; i++ {
					r.g.Process(engine.Wire, r.data[i])
					r.g.Process(engine.Radio, r.acks[i])
					done++
				}
			}
			b.ReportMetric(float64(done*len(r.payload)*8)/b.Elapsed().Seconds()/1e9, "Gbit/s")
			if tc.sas {
				if st := r.g.Stats(); st.Sealed == 0 || st.Opened == 0 {
					b.Fatalf("the gateway did not work: %+v", st)
				}
			}
		})
	}
}

// TestGatewayZeroAllocs: open, engine and seal of a data segment and its
// ACK allocate nothing in steady state — split and snoop, every AEAD and
// AES-CBC with HMAC, and in an IP-in-IP tunnel.
func TestGatewayZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's sync.Pool drops pooled calls at random")
	}
	for _, tc := range []struct {
		name string
		enc  ipsec.Enc
		mode engine.Mode
		ipip bool
	}{
		{"split-aes128gcm16", ipsec.EncAESGCM16, engine.ModeSplit, false},
		{"snoop-aes128gcm16", ipsec.EncAESGCM16, engine.ModeSnoop, false},
		{"split-chacha20poly1305", ipsec.EncChaCha20Poly1305, engine.ModeSplit, false},
		{"split-aescbc-hmacsha256", ipsec.EncAESCBC, engine.ModeSplit, false},
		{"split-aes128gcm16-ipip", ipsec.EncAESGCM16, engine.ModeSplit, true},
		{"snoop-aes128gcm16-ipip", ipsec.EncAESGCM16, engine.ModeSnoop, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newPathRigIPIP(t, tc.enc, true, tc.mode, 1, false, nil, tc.ipip)
			r.batch(1200)
			i := 0
			step := func() {
				r.g.Process(engine.Wire, r.data[i])
				r.g.Process(engine.Radio, r.acks[i])
				i++
			}
			for range 100 {
				step()
			}
			if a := testing.AllocsPerRun(1000, step); a != 0 {
				t.Fatalf("%.2f allocations per segment and ACK", a)
			}
			// 1,101 segments on (split: and an early ACK for every second one back).
			st := r.g.Stats()
			if st.Sealed < 1100 || st.Opened < 2000 || tc.ipip && st.IPIP < 2000 {
				t.Fatalf("the gateway did not seal and open: %s", st.Summary())
			}
		})
	}
}

// BenchmarkPacketPathCores: the packet path on one core and on two, in the
// same run — eight flows, each in a tunnel of its own (a cell site's many
// mobiles), each fed by a goroutine of its own, split mode; GOMAXPROCS 1
// and then 2 (the gateway's engine gets one shard per core). Reports the
// Gbit/s of TCP payload each way and their ratio.
//
//	go test ./internal/gateway -run - -bench PacketPathCores -benchtime 5x
func BenchmarkPacketPathCores(b *testing.B) {
	for _, tc := range []struct {
		name string
		enc  ipsec.Enc
	}{
		{"aes128gcm16", ipsec.EncAESGCM16},
		{"chacha20poly1305", ipsec.EncChaCha20Poly1305},
		{"aescbc-hmacsha256", ipsec.EncAESCBC},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var rate [2]float64
			for range b.N {
				for i, procs := range []int{1, 2} {
					rate[i] += coresRun(b, tc.enc, procs) / float64(b.N)
				}
			}
			b.ReportMetric(rate[0], "Gbit/s-1core")
			b.ReportMetric(rate[1], "Gbit/s-2cores")
			b.ReportMetric(rate[1]/rate[0], "x")
		})
	}
}

// coresRun pushes a fixed load through a fresh eight-flow rig with
// GOMAXPROCS procs and returns the payload rate in Gbit/s.
func coresRun(tb testing.TB, enc ipsec.Enc, procs int) float64 {
	const flows, rounds, batch = 8, 12, 256
	prev := runtime.GOMAXPROCS(procs)
	defer runtime.GOMAXPROCS(prev)
	r := newPathRigN(tb, enc, true, engine.ModeSplit, flows, false, nil)
	defer r.g.Close()
	var d time.Duration
	for range rounds {
		for _, f := range r.flows {
			f.batch(batch)
		}
		runtime.GC() // the sealing's garbage, not collected on the timed part's cores
		d += r.run()
	}
	if st := r.g.Stats(); st.Sealed == 0 || st.Opened < flows*rounds*batch {
		tb.Fatalf("the gateway did not work: %+v", st)
	}
	return float64(flows*rounds*batch*1448*8) / d.Seconds() / 1e9
}

// BenchmarkBurstAfterIdle: what the packet path (open, engine, seal;
// split, with AES-128-GCM tunnels and on cleartext as the TUN harness
// runs it; GOMAXPROCS 1) spends on one burst of 29 segments and their
// ACKs — a radio's 20 Mbit/s reaches the gateway as ~60 such bursts a
// second (the tunbench harness's split@20M) — by what came before the
// burst: the last burst at once (hot); 16 ms asleep, the CPU left to halt
// (asleep); 16 ms of a loop that keeps the CPU busy and touches no memory
// (busy); a write to every cache line of 64 MiB, as the hosts, iperf3 and
// the kernel take the caches between a radio's bursts (swept). The
// packets are in the cache in every case, as a device read leaves them.
// No system calls, no journal, the same packets and work each time: what
// the code's own instructions and data cost on a CPU that did something
// else for a while. Reports µs a burst for each and each one's ratio to
// hot, interleaved in one run. (A sweep that went on for 16 ms slowed
// every case for a while after, hot included: it measured the machine.)
//
//	go test ./internal/gateway -run - -bench BurstAfterIdle -benchtime 200x
func BenchmarkBurstAfterIdle(b *testing.B) {
	b.Run("esp-aes128gcm16", func(b *testing.B) { burstAfterIdle(b, newPathRig(b, ipsec.EncAESGCM16, true, engine.ModeSplit)) })
	b.Run("plain", func(b *testing.B) { burstAfterIdle(b, newPlainRig(b)) })
}

// touchSink keeps touch's reads from being optimized away.
var touchSink byte

// touch reads every cache line of the packets, as a device read leaves
// them: in the cache, without running any of the gateway's code.
func touch(sets ...[][]byte) (sum byte) {
	for _, set := range sets {
		for _, p := range set {
			for i := 0; i < len(p); i += 64 {
				sum += p[i]
			}
		}
	}
	return sum
}

func burstAfterIdle(b *testing.B, r *pathRig) {
	const burst, gap = 29, 16 * time.Millisecond
	// One P, as package procs leaves espep gateway at a radio's rate: with
	// two, each burst also pays for waking a second thread, which the
	// governor exists to avoid.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	sweep := make([]byte, 64<<20)
	before := []struct {
		name string
		wait func()
	}{
		{"hot", func() {}},
		{"asleep", func() { time.Sleep(gap) }},
		{"busy", func() {
			for end := time.Now().Add(gap); time.Now().Before(end); {
			}
		}},
		{"swept", func() {
			for i := 0; i < len(sweep); i += 64 {
				sweep[i]++
			}
		}},
	}
	took := make([]time.Duration, len(before))
	b.ResetTimer()
	for range b.N {
		for k, c := range before {
			r.batch(burst)
			c.wait()
			touchSink += touch(r.data, r.acks) // the packets just read: in the cache, as the kernel's copy leaves them
			start := time.Now()
			for i := range burst {
				r.g.Process(engine.Wire, r.data[i])
				r.g.Process(engine.Radio, r.acks[i])
			}
			took[k] += time.Since(start)
		}
	}
	b.StopTimer()
	for k, c := range before {
		b.ReportMetric(float64(took[k].Microseconds())/float64(b.N), "µs-"+c.name)
		if k > 0 {
			b.ReportMetric(float64(took[k])/float64(took[0]), c.name+"/hot")
		}
	}
	sent := len(before) * burst * b.N
	if st, es := r.g.Stats(), r.g.Engine().Stats(); st.Packets < uint64(2*sent) || r.out.Load() < int64(sent) || es.EarlyAcked < uint64(sent*len(r.payload)) {
		b.Fatalf("the gateway did not split: %d packets out; %s; engine: %s", r.out.Load(), st.Summary(), es.Summary())
	}
}
