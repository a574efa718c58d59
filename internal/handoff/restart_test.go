package handoff

import (
	"bytes"
	"encoding/gob"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

func openState(t *testing.T, path string) *statedir.Dir {
	t.Helper()
	st, err := statedir.Open(path, statedir.Partition{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestRestartKeepsFlows: plain split flows holding bytes, kept by one
// gateway's stop and resumed by the next gateway on the same state
// directory — every byte, once.
func TestRestartKeepsFlows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	st1 := openState(t, path)
	g1 := idleGateway(t, st1)
	openFlows(g1.Engine(), mobile, 3, 20)
	k1, err := KeepForRestart(st1, g1, time.Now())
	if err != nil || k1.Flows != 3 || k1.Bytes != 3*20*1400 {
		t.Fatalf("kept %+v: %v", k1, err)
	}
	if n := len(g1.Engine().Export(false)); n != 0 {
		t.Fatalf("the stopping gateway still has %d flows", n)
	}
	g1.Close()
	st1.Close()

	st2 := openState(t, path)
	defer st2.Close()
	g2 := idleGateway(t, st2)
	k2, err := ResumeAfterRestart(st2, g2, time.Now())
	if err != nil || k2.Flows != k1.Flows || k2.Bytes != k1.Bytes {
		t.Fatalf("resumed %+v of %+v: %v", k2, k1, err)
	}
	if got := buffered(g2.Engine().Export(false)); got != k1.Bytes {
		t.Fatalf("the new gateway holds %d bytes, the old one kept %d", got, k1.Bytes)
	}
	if k, err := ResumeAfterRestart(st2, g2, time.Now()); err != nil || k.Flows != 0 {
		t.Fatalf("resumed twice: %+v, %v", k, err)
	}
}

// TestRestartNotKept: without a state directory that survives the
// process, a stop that drops flows holding bytes says so; flows kept
// longer than the engine would have held them are not resumed.
func TestRestartNotKept(t *testing.T) {
	for name, st := range map[string]*statedir.Dir{"none": nil, "memory": statedir.Memory()} {
		g := idleGateway(t, st)
		openFlows(g.Engine(), mobile, 2, 3)
		k, err := KeepForRestart(st, g, time.Now())
		if err == nil || !strings.Contains(err.Error(), "8400 bytes acknowledged early lost") || k.Flows != 2 {
			t.Errorf("%s: %+v, %v", name, k, err)
		}
		g = idleGateway(t, st)
		openFlows(g.Engine(), mobile, 1, 0) // a flow holding nothing loses nothing
		if k, err := KeepForRestart(st, g, time.Now()); err != nil || k.Flows != 1 || k.Bytes != 0 {
			t.Errorf("%s, nothing held: %+v, %v", name, k, err)
		}
	}

	path := filepath.Join(t.TempDir(), "state")
	st1 := openState(t, path)
	g1 := idleGateway(t, st1)
	openFlows(g1.Engine(), mobile, 1, 3)
	stop := time.Now()
	if _, err := KeepForRestart(st1, g1, stop); err != nil {
		t.Fatal(err)
	}
	st1.Close()
	st2 := openState(t, path)
	defer st2.Close()
	g2 := idleGateway(t, st2)
	late := stop.Add(g2.Engine().GiveUpAfter() + time.Second)
	if k, err := ResumeAfterRestart(st2, g2, late); err == nil || k.Flows != 0 || len(g2.Engine().Export(false)) != 0 {
		t.Fatalf("resumed flows kept past the engine's give-up time: %+v, %v", k, err)
	}
}

// TestRestartMidTransfer: a download to the mobile through a split
// gateway (AES-GCM tunnel between the routers, 2 % radio loss) whose
// gateway stops halfway — its packet I/O first, then its flows kept in
// its state directory — and a new gateway (a new engine, new SA states,
// the same directory and SA keys) resumes them 200 ms later. The bytes
// the first acknowledged early reach the mobile from the second: the file
// arrives intact, and neither router refuses a packet (the new gateway
// numbers above the old one). The packets that arrive meanwhile wait
// for the new gateway rather than being lost: after a 200 ms blackout
// gVisor's sender, whose whole flight of early-acknowledged segments was
// lost with no SACK to say so, crawls at one or two segments per RTO for
// the rest of the run — through split with or without a restart, which
// end-to-end flows (small flights) do not show; the namespace test
// TestGatewayRestartSplit has Linux senders and a real blackout.
func TestRestartMidTransfer(t *testing.T) {
	n := newTunnelNet(t)
	path := filepath.Join(t.TempDir(), "state")
	start := func() (*gateway.Gateway, *statedir.Dir) {
		st := openState(t, path)
		return n.gateway(t, st, n.ab, n.ba), st
	}
	g1, st1 := start()
	// The middle box's packet I/O: a stop waits for the packet in
	// process, and what arrives while no gateway runs waits for the next.
	var io sync.RWMutex
	cur := g1
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		io.RLock()
		defer io.RUnlock()
		cur.Process(from, pkt)
	})
	done := n.download(t, func() bool { return g1.Stats().Opened >= 1000 })
	io.Lock()
	k1, err := KeepForRestart(st1, g1, time.Now())
	g1.Close()
	st1.Close()
	if err != nil || k1.Flows != 1 || k1.Bytes == 0 || k1.SAs != 2 {
		io.Unlock()
		t.Fatalf("the stop kept %+v (want one flow holding bytes, two SAs): %v", k1, err)
	}
	time.Sleep(200 * time.Millisecond)
	g2, st2 := start()
	defer st2.Close()
	defer g2.Close()
	k2, err := ResumeAfterRestart(st2, g2, time.Now())
	cur = g2
	io.Unlock()
	if err != nil || k2.Flows != k1.Flows || k2.Bytes != k1.Bytes || k2.SAs != k1.SAs || k2.Routes != k1.Routes {
		t.Fatalf("resumed %+v of %+v: %v", k2, k1, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	n.refusedNothing(t)
	if s2 := g2.Stats(); s2.Sealed == 0 || s2.Engine.EarlyAcked == 0 {
		t.Errorf("the new gateway did not carry the flow on: %+v", s2)
	}
	t.Logf("the stop kept one flow holding %d bytes acknowledged early, %d SAs and %d bindings; the new gateway resumed them", k1.Bytes, k1.SAs, k1.Routes)
}

// restartGateway is an idle split gateway holding one AES-GCM tunnel SA
// (192.0.2.1 → 192.0.2.2, SPI 0x1001, key fixed), and that SA's entry.
func restartGateway(t testing.TB) (*gateway.Gateway, *ipsec.Entry) {
	t.Helper()
	c := ipsec.Config{SPI: 0x1001, Proto: ipsec.ESP, Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"),
		Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: bytes.Repeat([]byte{7}, 20), ReplayWindow: 64, Class: ipsec.ClassWrite}
	e, err := ipsec.NewEntry(c)
	if err != nil {
		t.Fatal(err)
	}
	sad := &ipsec.SAD{}
	sad.Add(e)
	g, err := gateway.New(gateway.Config{Engine: engine.Config{Mode: engine.ModeSplit}, Log: slog.New(slog.DiscardHandler), State: statedir.Memory()},
		sad, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g, e
}

// FuzzResumeRestart: whatever a flows file's body holds — it passed the
// state directory's CRC, so it is what a gateway wrote, or a disk's or an
// operator's mistake — resuming it on a gateway that holds the SA it
// names (resumeKept) never panics: each part is taken or refused.
func FuzzResumeRestart(f *testing.F) {
	g, e := restartGateway(f)
	openFlows(g.Engine(), mobile, 2, 3)
	h := g.HandOverAll()
	h.SAs = []gateway.SAHandoff{{ID: e.Config.ID(), KeyID: e.KeyID, Owned: true, Last: 9, MaxIn: 7, Salt: 3, SaltKnown: true, WindowTop: 7, Window: []uint64{0x7f}}}
	h.Routes = []gateway.RouteHandoff{
		{Src: h.Flows[0].Wire, Dst: h.Flows[0].Radio, From: engine.Wire, SA: e.Config.ID()},
		{Src: h.Flows[1].Radio, Dst: h.Flows[1].Wire, From: engine.Radio, SA: e.Config.ID(), Tun: make([]byte, 20)},
	}
	var buf bytes.Buffer
	enc := gob.NewEncoder(&buf)
	for _, p := range []Part{{SAs: h.SAs, Routes: h.Routes}, {Flows: h.Flows[:1]}, {Flows: h.Flows[1:]}} {
		if err := enc.Encode(&p); err != nil {
			f.Fatal(err)
		}
	}
	seed := buf.Bytes()
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(seed[:len(seed)-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, _ := restartGateway(t)
		resumeKept(g, b)
		g.HandOverAll()
	})
}
