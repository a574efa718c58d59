package engine_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/simnet"
	"github.com/espep/espep/ipsec/header"
)

// Net is host A on the wire side and host B on the radio side, joined by
// a wired link, the engine (or a plain relay) and a radio link:
//
//	A ── wired (netem) ── engine ── radio (netem) ── B
type Net struct {
	*simnet.Net
	A, B *gvhost.Host // the wired host and the mobile
	E    atomic.Pointer[engine.Engine]
	out  func(to engine.Side, pkt []byte) // the engines' output
	// moving is held (written) while a flow moves between engines: the
	// packets that arrive meanwhile wait for the new one, as a handoff
	// forwards them, instead of reaching the old one.
	moving sync.RWMutex
	cfg    *engine.Config
}

// snoop and split are the engine configurations the tests use; nil runs
// the hosts end to end through a plain relay.
var (
	snoop = &engine.Config{}
	split = &engine.Config{Mode: engine.ModeSplit}
)

func newNet(t testing.TB, ecfg *engine.Config, wired, radio netem.Config, sack bool) *Net {
	return newNetCC(t, ecfg, wired, radio, sack, "")
}

// newNetCC builds a simnet network whose base station is the engine in
// n.E (replaceable: a flow moving), or a plain relay when ecfg is nil.
func newNetCC(t testing.TB, ecfg *engine.Config, wired, radio netem.Config, sack bool, cc string) *Net {
	t.Helper()
	sn, err := simnet.New(simnet.Config{Wired: wired, Radio: radio, Hosts: gvhost.Options{SACK: sack, CC: cc}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sn.Close)
	n := &Net{Net: sn, A: sn.Wired, B: sn.Mobile, out: sn.Send, cfg: ecfg}
	if ecfg != nil {
		n.E.Store(mustEngine(t, *ecfg, n.out))
		n.SetMiddle(func(from engine.Side, pkt []byte) {
			n.moving.RLock()
			defer n.moving.RUnlock()
			n.E.Load().Process(from, pkt)
		})
	}
	return n
}

// transfer sends size random bytes from src to dst and checks them
// (gvhost.Transfer); it returns the goodput in Mbit/s.
func transfer(t testing.TB, src, dst *gvhost.Host, size int, timeout time.Duration) float64 {
	t.Helper()
	gp, err := gvhost.Transfer(src, dst, 5001, size, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return gp
}

var (
	wiredLink = netem.Config{Rate: 100e6, Delay: 20 * time.Millisecond}
	radioLink = netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200}
)

// radioCases are the radio impairments the end-to-end tests run under,
// with SACK on or off at the hosts.
var radioCases = []struct {
	name string
	sack bool
	mod  func(*netem.Config)
}{
	{"loss2%-sack", true, func(c *netem.Config) { c.Loss = 0.02 }},
	{"loss2%-nosack", false, func(c *netem.Config) { c.Loss = 0.02 }},
	{"reorder", true, func(c *netem.Config) { c.Loss = 0.01; c.Reorder = 0.02 }},
	{"outage", true, func(c *netem.Config) {
		c.Loss = 0.01
		c.Outages = []netem.Outage{{From: 300 * time.Millisecond, To: 500 * time.Millisecond}}
	}},
}

// TestEndToEnd moves 1 MB each way between two gVisor TCP stacks through
// the engine over a lossy radio link, with SACK on and off, and checks the
// bytes; the engine must have repaired losses itself.
func TestEndToEnd(t *testing.T) {
	for _, tc := range radioCases {
		t.Run(tc.name, func(t *testing.T) {
			radio := radioLink
			radio.Seed = 7
			tc.mod(&radio)
			n := newNet(t, snoop, wiredLink, radio, tc.sack)
			// gVisor's own sender at 2 % loss backs its RTO off to tens of
			// seconds when the machine is starved (the race detector beside
			// other packages in CI): a shorter transfer and a generous bound.
			size := 1 << 20
			if testing.Short() {
				size = 256 << 10
			}
			down := transfer(t, n.A, n.B, size, 120*time.Second)
			up := transfer(t, n.B, n.A, size, 120*time.Second)
			st := n.E.Load().Stats()
			t.Logf("down %.1f Mbit/s, up %.1f Mbit/s; %+v", down, up, st)
			if st.LocalRexmits+st.TimeoutRexmits == 0 || st.Cached == 0 {
				t.Fatalf("the engine repaired nothing: %+v", st)
			}
		})
	}
}

var (
	goodput      = flagBool("enginebench")
	benchTime    = flag.Duration("enginebench.time", 20*time.Second, "length of each goodput run")
	benchCC      = flag.String("enginebench.cc", "cubic", "the hosts' congestion control (cubic or reno)")
	benchSACK    = flag.String("enginebench.sack", "off,on", "SACK settings to run")
	benchOnly    = flag.String("enginebench.cases", "", "run only these radio cases (comma-separated names)")
	benchMode    = flag.String("enginebench.modes", "e2e,snoop,split", "modes to run (e2e is the baseline)")
	benchSplitCC = flag.String("enginebench.splitcc", engine.CCBBR, "the split sender's congestion controller")
	benchDupAcks = flag.String("enginebench.dupacks", "auto", "snoop's duplicate-ACK policy (auto, forward, swallow)")
)

// timedTransfer sends from src to dst for d and returns the goodput the
// receiver saw, in Mbit/s.
func timedTransfer(t testing.TB, src, dst *gvhost.Host, d time.Duration) float64 {
	t.Helper()
	ln, err := dst.Listen(5002)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		dur time.Duration
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{}
			return
		}
		defer c.Close()
		start := time.Now()
		c.SetReadDeadline(start.Add(d))
		n, _ := io.Copy(io.Discard, c)
		got <- result{n, time.Since(start)}
	}()
	c, err := src.Dial(context.Background(), netip.AddrPortFrom(dst.Addr(), 5002))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	c.SetWriteDeadline(time.Now().Add(d))
	for {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	r := <-got
	return float64(r.n*8) / r.dur.Seconds() / 1e6
}

// TestGoodput compares end-to-end TCP with snoop and split over the radio
// (20 Mbit/s, wired RTT 80 ms + radio RTT 20 ms) across a loss grid.
// Harness: run with
//
//	go test ./internal/engine -run TestGoodput -enginebench -v
func TestGoodput(t *testing.T) {
	if !*goodput {
		t.Skip("harness: run with -enginebench")
	}
	wired := netem.Config{Rate: 1e9, Delay: 40 * time.Millisecond}
	ge, _ := netem.GEFromMean(0.02, 4)
	cases := []struct {
		name string
		mod  func(*netem.Config)
		p    float64
	}{
		{"0%", func(*netem.Config) {}, 0},
		{"0.5%", func(c *netem.Config) { c.Loss = 0.005 }, 0.005},
		{"1%", func(c *netem.Config) { c.Loss = 0.01 }, 0.01},
		{"2%", func(c *netem.Config) { c.Loss = 0.02 }, 0.02},
		{"5%", func(c *netem.Config) { c.Loss = 0.05 }, 0.05},
		{"GE 2%/4", func(c *netem.Config) { c.GE = &ge }, 0.02},
		{"outage 200ms", func(c *netem.Config) { c.Outages = []netem.Outage{{From: time.Second, To: 1200 * time.Millisecond}} }, 0},
	}
	var rows []string
	for _, sack := range []bool{false, true} {
		if !strings.Contains(*benchSACK, map[bool]string{false: "off", true: "on"}[sack]) {
			continue
		}
		for _, c := range cases {
			if *benchOnly != "" && !slices.Contains(strings.Split(*benchOnly, ","), c.name) {
				continue
			}
			var gp [3]float64
			splitCC := *split
			splitCC.CC = *benchSplitCC
			snoopDA := *snoop
			snoopDA.DupAcks = map[string]engine.DupAckPolicy{"forward": engine.DupAcksForward, "swallow": engine.DupAcksSwallow}[*benchDupAcks]
			for i, ecfg := range []*engine.Config{nil, &snoopDA, &splitCC} {
				if !strings.Contains(*benchMode, []string{"e2e", "snoop", "split"}[i]) {
					continue
				}
				// queue: one bandwidth-delay product (20 Mbit/s × 100 ms)
				radio := netem.Config{Rate: 20e6, Delay: 10 * time.Millisecond, QueuePackets: 170, Seed: 3}
				c.mod(&radio)
				n := newNetCC(t, ecfg, wired, radio, sack, *benchCC)
				gp[i] = timedTransfer(t, n.A, n.B, *benchTime)
				if testing.Verbose() {
					t.Logf("%s %v SACK %v: %.2f Mbit/s; sender %s", c.name, []string{"e2e", "snoop", "split"}[i], sack, gp[i], senderStats(n.A))
				}
			}
			limit := 20 * (1 - c.p) * 1448 / 1500
			rows = append(rows, fmt.Sprintf("| %-5v | %-12s | %6.2f (%.2f) | %6.2f (%.2f, %4.1f×) | %6.2f (%.2f, %4.1f×) |",
				sack, c.name, gp[0], gp[0]/limit, gp[1], gp[1]/limit, gp[1]/gp[0], gp[2], gp[2]/limit, gp[2]/gp[0]))
			t.Log(rows[len(rows)-1])
		}
	}
	t.Logf("split sender %s; gVisor TCP (%s), radio 20 Mbit/s with a 1-BDP queue, RTT 80 ms wired + 20 ms radio, %v runs; Mbit/s (ratio to C·(1−p), ratio to e2e):\n"+
		"| SACK | radio | e2e | snoop | split |\n|---|---|---|---|---|\n%s", *benchSplitCC, *benchCC, *benchTime, strings.Join(rows, "\n"))
}

// senderStats summarizes what a host's TCP did to recover from loss.
func senderStats(h *gvhost.Host) string {
	st := h.Stack.Stats().TCP
	return fmt.Sprintf("retransmits %d (fast recovery %d, SACK recovery %d, TLP %d, spurious %d), RTOs %d (spurious %d)",
		st.Retransmits.Value(), st.FastRecovery.Value(), st.SACKRecovery.Value(), st.TLPRecovery.Value(),
		st.SpuriousRecovery.Value(), st.Timeouts.Value(), st.SpuriousRTORecovery.Value())
}

// TestHandoff moves the flow (snoop: its cache; split: the bytes it
// acknowledged early and holds) to a second engine (through JSON) in the
// middle of a transfer over a lossy radio — while the sender is still
// sending, and (split) once the engine has taken every byte from it. The
// packets that arrive during the move wait for the new engine (as a
// handoff forwards them). No byte is lost, the new engine goes on
// repairing, and the segments it imported in flight give it no RTT sample
// (their send time is the old engine's): its minimum RTT stays above the
// radio's propagation delay.
func TestHandoff(t *testing.T) {
	const size = 4 << 20
	for _, tc := range []struct {
		name string
		cfg  *engine.Config
		// taken says when to move: after this much of the sender's data
		// passed the engine
		taken func(engine.Stats) bool
	}{
		{"snoop", snoop, func(s engine.Stats) bool { return s.Cached >= 700 }},
		{"split-mid", split, func(s engine.Stats) bool { return s.EarlyAcked >= 1<<20 }},
		{"split-all", split, func(s engine.Stats) bool { return s.EarlyAcked >= size }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			radio := radioLink
			radio.Seed, radio.Loss = 11, 0.02
			n := newNet(t, tc.cfg, wiredLink, radio, true)
			done := make(chan error, 1)
			var moved, held int
			go func() {
				states, err := n.moveFlow(t, tc.taken, nil)
				moved = len(states)
				if len(states) == 1 && states[0].Split != nil {
					held = states[0].Split.Streams[engine.Wire].Held()
				}
				done <- err
			}()
			transfer(t, n.A, n.B, size, 60*time.Second)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			e := n.E.Load()
			st := e.Stats()
			t.Logf("moved %d flow(s) holding %d bytes acknowledged early; new engine: %+v", moved, held, st)
			if moved != 1 || st.Cached == 0 && st.Emitted == 0 || tc.cfg == split && held == 0 {
				t.Fatalf("the flow did not move mid-transfer (moved %d, new engine %+v)", moved, st)
			}
			splits := 0
			for _, fi := range e.Flows() {
				if !fi.Split {
					continue
				}
				splits++
				// netem's timers deliver up to a few hundred µs early; a
				// sample from a segment the receiver already had is µs.
				if r, floor := fi.Down.MinRTT, 2*radio.Delay*3/4; r < floor {
					t.Errorf("minimum RTT toward the radio %v, below %v (the propagation delay is %v): a sample from a segment the receiver already had", r, floor, 2*radio.Delay)
				}
			}
			if tc.cfg == split && splits != 1 {
				t.Errorf("%d split flows on the new engine after the transfer, want the moved one", splits)
			}
		})
	}
}

// moveFlow waits (up to 30 s) until taken says the engine has taken
// enough, then moves its flows to a new engine as a handoff does (their
// state through JSON, the packets that arrive meanwhile waiting), with
// edit (if not nil) applied to each first. It returns the states moved.
func (n *Net) moveFlow(t testing.TB, taken func(engine.Stats) bool, edit func(*engine.FlowState)) ([]engine.FlowState, error) {
	old := n.E.Load()
	for deadline := time.Now().Add(30 * time.Second); !taken(old.Stats()); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the engine never took enough of the transfer: %+v", old.Stats())
		}
	}
	n.moving.Lock()
	defer n.moving.Unlock()
	b, err := json.Marshal(old.Export(true))
	if err != nil {
		return nil, err
	}
	var states []engine.FlowState
	if err := json.Unmarshal(b, &states); err != nil {
		return nil, err
	}
	if edit != nil {
		for i := range states {
			edit(&states[i])
		}
	}
	next := mustEngine(t, *n.cfg, n.out)
	if err := next.Import(states); err != nil {
		return nil, err
	}
	n.E.Store(next)
	return states, nil
}

func mustEngine(t testing.TB, cfg engine.Config, out func(engine.Side, []byte)) *engine.Engine {
	t.Helper()
	e, err := engine.New(cfg, func(to engine.Side, pkt []byte, _ engine.Emitted) { out(to, pkt) })
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSplitEndToEnd moves 1 MB each way between two gVisor TCP stacks
// through the engine in split mode over a lossy radio link, with SACK on
// and off, reordering and an outage, and checks the bytes; the engine must
// have acknowledged early and resent on its own.
func TestSplitEndToEnd(t *testing.T) {
	for _, tc := range radioCases {
		t.Run(tc.name, func(t *testing.T) {
			radio := radioLink
			radio.Seed = 7
			tc.mod(&radio)
			n := newNet(t, split, wiredLink, radio, tc.sack)
			down := transfer(t, n.A, n.B, 1<<20, 60*time.Second)
			up := transfer(t, n.B, n.A, 1<<20, 60*time.Second)
			st := n.E.Load().Stats()
			t.Logf("down %.1f Mbit/s, up %.1f Mbit/s; %+v", down, up, st)
			if st.EarlyAcked < 2<<20 || st.SplitRexmits == 0 {
				t.Fatalf("the engine did not split the flows: %+v", st)
			}
		})
	}
}

var shortFlows = flagBool("enginebench.short")

// TestShortResponses is a harness (not a unit test) for app-limited flows,
// where a loss at the tail of a burst has nothing behind it to reveal it:
// the mobile (gVisor, SACK on) asks the wired host for 16 KB, 200 times
// on one connection, over the radio at 5 % loss; it prints the response
// times end to end and through split with and without tail loss probes.
//
//	go test ./internal/engine -run TestShortResponses -enginebench.short -v
func TestShortResponses(t *testing.T) {
	if !*shortFlows {
		t.Skip("harness: run with -enginebench.short")
	}
	const rounds, size = 200, 16 << 10
	noTLP := *split
	noTLP.NoTailProbes = true
	wired := netem.Config{Rate: 1e9, Delay: 40 * time.Millisecond}
	var rows []string
	for i, ecfg := range []*engine.Config{nil, &noTLP, split} {
		name := []string{"e2e", "split, no TLP", "split"}[i]
		radio := netem.Config{Rate: 20e6, Delay: 10 * time.Millisecond, QueuePackets: 170, Loss: 0.05, Seed: 3}
		n := newNetCC(t, ecfg, wired, radio, true, "cubic")
		ln, err := n.A.Listen(5003)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			req, resp := make([]byte, 100), make([]byte, size)
			for {
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				if _, err := c.Write(resp); err != nil {
					return
				}
			}
		}()
		c, err := n.B.Dial(context.Background(), netip.AddrPortFrom(n.A.Addr(), 5003))
		if err != nil {
			t.Fatal(err)
		}
		req, resp := make([]byte, 100), make([]byte, size)
		var took []time.Duration
		for range rounds {
			start := time.Now()
			c.SetDeadline(start.Add(30 * time.Second))
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, resp); err != nil {
				t.Fatal(err)
			}
			took = append(took, time.Since(start))
		}
		c.Close()
		ln.Close()
		slices.Sort(took)
		var sum time.Duration
		for _, d := range took {
			sum += d
		}
		st := engine.Stats{}
		if ecfg != nil {
			st = n.E.Load().Stats()
		}
		q := func(p float64) time.Duration { return took[int(p*float64(len(took)-1))].Round(time.Millisecond) }
		rows = append(rows, fmt.Sprintf("| %s | %v | %v | %v | %v | %v | %d | %d |", name, (sum/rounds).Round(time.Millisecond),
			q(0.5), q(0.9), q(0.99), took[len(took)-1].Round(time.Millisecond), st.TailProbes, st.SplitTimeouts))
		t.Log(rows[len(rows)-1])
		t.Logf("%s: the mobile's TCP (requests): %s", name, senderStats(n.B))
	}
	t.Logf("%d responses of %d bytes, radio 5 %% loss, RTT 80 ms wired + 20 ms radio:\n"+
		"| mode | mean | p50 | p90 | p99 | max | tail probes | timeouts |\n|---|---|---|---|---|---|---|---|\n%s",
		rounds, size, strings.Join(rows, "\n"))
}

// TestSplitForgedLive: an attacker on the radio side sends a cleartext
// split flow's wire host RSTs at every plausible sequence number (in the
// window and out of it), ACKs for bytes the engine has not sent and ACKs
// for bytes long acknowledged, while 2 MB crosses a radio with 1 % loss.
// The engine takes them as a careful endpoint would (RFC 5961): no reset,
// no early-acknowledged byte released, the bytes arrive. (The flow is
// cleartext — every packet Plain — because only there can anyone send
// its packets: a protected flow's ACK of bytes the engine holds but has
// not sent is the receiver's own, and taken; TestSplitAckOfRelayedBytes.)
func TestSplitForgedLive(t *testing.T) {
	radio := radioLink
	radio.Seed, radio.Loss = 7, 0.01
	n := newNet(t, split, wiredLink, radio, true)
	n.SetMiddle(func(from engine.Side, pkt []byte) { n.E.Load().ProcessPlain(from, pkt) })
	var sent atomic.Uint32 // the highest sequence number sent toward the radio host
	n.E.Store(mustEngine(t, *split, func(to engine.Side, pkt []byte) {
		if to == engine.Radio && len(pkt) >= 40 {
			tcp := header.TCP(pkt[20:])
			if end := tcp.Seq() + uint32(len(tcp.Payload())); int32(end-sent.Load()) > 0 {
				sent.Store(end)
			}
		}
		n.out(to, pkt)
	}))
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		var w, r netip.AddrPort
		for !stop.Load() && !w.IsValid() {
			for _, f := range n.E.Load().Flows() {
				if f.Split {
					w, r = f.Wire, f.Radio
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		for i := uint32(1); !stop.Load(); i++ {
			var p []byte
			switch i % 3 {
			case 0: // RSTs anywhere in the radio host's sequence space
				p = packettest.Segment(r, w, header.TCPRst|header.TCPAck, i*0x9e3779b1, i*7919, 0, nil, nil)
			case 1: // ACKs for bytes not sent yet
				p = packettest.Segment(r, w, header.TCPAck, i*0x9e3779b1, sent.Load()+1<<20+i, 65535, nil, nil)
			case 2: // ACKs far below everything acknowledged
				p = packettest.Segment(r, w, header.TCPAck, i*0x9e3779b1, sent.Load()-1<<28-i, 65535, nil, nil)
			}
			n.E.Load().ProcessPlain(engine.Radio, p)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	transfer(t, n.A, n.B, 2<<20, 60*time.Second)
	stop.Store(true)
	<-done
	st := n.E.Load().Stats()
	t.Logf("%+v", st)
	if st.Resets != 0 || st.AckIgnored < 100 || st.EarlyAcked < 2<<20 {
		t.Fatalf("the forgeries were not refused, or the flow was reset: %+v", st)
	}
}
