package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
)

// TestGatewayHandoffHosts: a mobile moves between two gateways. Two espep
// hosts (a wired, b the mobile; AES-GCM transport SAs from a file) and two
// parallel paths between them, each through its own espep linkem gateway
// (split, 20 Mbit/s, 1 % loss toward b; the same SA file, IV partitions 0
// and 1 of 2), the gateways joined by a control link:
//
//	      ┌─ a1 ── [m1: gateway 1] ── b1 ─┐
//	[a] ──┤                ╎ c1–c2         ├── [b]
//	      └─ a2 ── [m2: gateway 2] ── b2 ─┘
//
// Halfway through a download the routes of a and b move to the second
// path. Gateway 2 meets the flow mid-stream, holds its packets, asks
// gateway 1 (its neighbour) over mutual TLS and resumes the flow, its SA
// counters and windows. The file arrives intact and neither host refuses
// a packet. (The same switch without the handoff loses the bytes gateway
// 1 acknowledged early: the download never completes.)
func TestGatewayHandoffHosts(t *testing.T) {
	b, ns, dir, c, saPath := hostsOnTwoPaths(t)
	gws := handoffGateways(t, b, ns, dir, [2]string{saPath, saPath})
	hosts := handoffHosts(t, b, ns, dir, c, saPath, la, lb)
	// The download, and the move halfway.
	size := max(*gatewaySize, 8) << 20
	done := make(chan error, 1)
	var took time.Duration
	go func() {
		var err error
		took, err = ncSend(t, b, ns["a"], ns["b"], lb, dir, size, 120*time.Second)
		done <- err
	}()
	whenOpened(t, b, ns, size/1400/2, gws[0]) // halfway, through gateway 1
	moved := time.Now()
	moveToPath2(t, b, ns, la, lb)
	after := grewIn(filepath.Join(dir, "out-5001.bin"), 2*time.Second)
	t.Logf("the 2 s after the move: %.1f Mbit/s (TestGatewayNoHandoffHosts: the same switch with no state transfer)", float64(after*8)/2e6)
	if err := <-done; err != nil {
		t.Fatalf("%v\ngateway 1:\n%s\ngateway 2:\n%s", err, lastLines([]byte(gws[0].Output()), 10), lastLines([]byte(gws[1].Output()), 10))
	}
	t.Logf("%d MB in %v (%.1f Mbit/s), moved to gateway 2 after %v", size>>20, took.Round(time.Millisecond),
		float64(size*8)/took.Seconds()/1e6, moved.Sub(time.Now().Add(-took)).Round(time.Millisecond))
	for _, h := range []string{"a", "b"} {
		m := hostMetrics(t, b, ns[h], "127.0.0.1:9101")
		t.Logf("host %s: %v", h, m)
		if m["open_error"]+m["policy_drop"]+m["not_ours"]+m["seal_error"] != 0 {
			t.Errorf("host %s refused packets: %v", h, m)
		}
	}
	for _, p := range append(gws, hosts...) {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range append(gws, hosts...) {
		p.Wait(5 * time.Second)
	}
	g1, g2 := counters(gws[0].Output(), "gateway:"), counters(gws[1].Output(), "gateway:")
	e2 := counters(gws[1].Output(), "engine:")
	t.Logf("gateway 1 %v\ngateway 2 %v", g1, g2)
	if i := strings.Index(gws[1].Output(), `msg="handoff: asked for a mobile"`); i >= 0 {
		line, _, _ := strings.Cut(gws[1].Output()[i:], "\n")
		t.Logf("gateway 2: %s", line)
	}
	if !strings.Contains(gws[1].Output(), `msg="handoff: asked for a mobile" mobile=`+lb+" flows=1") || !strings.Contains(gws[0].Output(), `msg="handed over"`) {
		t.Fatalf("gateway 2 did not ask gateway 1 for the mobile:\n%s\n%s", lastLines([]byte(gws[1].Output()), 12), lastLines([]byte(gws[0].Output()), 12))
	}
	// The wired sender is fast: gateway 1 may have acknowledged every
	// byte early before the move, so gateway 2 delivers what it was
	// handed (sealing it) rather than acknowledging more.
	if g2["sealed"] < 500 || g2["held-for-handoff"] == 0 {
		t.Fatalf("gateway 2 did not take the flow over: gateway %v engine %v", g2, e2)
	}
}

// twoPaths builds the namespaces a (wired), b (the mobile), m1 and m2 (a
// gateway's each) and two parallel paths between a and b, one through
// each of m1 and m2, with a control link c1–c2 between m1 (10.99.0.1)
// and m2 (10.99.0.2). a and b have la and lb on their loopbacks and reach
// each other over the first path (a1, b1); moving a route to a2 or b2
// moves the traffic to the second. It returns the namespaces by name.
func twoPaths(t *testing.T, b *Bed, la, lb string) map[string]string {
	t.Helper()
	ns := map[string]string{}
	for _, n := range []string{"a", "b", "m1", "m2"} {
		x, err := b.NS(n)
		must(t, err)
		ns[n] = x
	}
	for _, l := range [][4]string{{"a", "a1", "m1", "xa"}, {"m1", "xb", "b", "b1"}, {"a", "a2", "m2", "xa"}, {"m2", "xb", "b", "b2"}, {"m1", "c1", "m2", "c2"}} {
		must(t, b.Veth(ns[l[0]], l[1], ns[l[2]], l[3]))
	}
	must(t, b.Addr(ns["m1"], "c1", "10.99.0.1/24"))
	must(t, b.Addr(ns["m2"], "c2", "10.99.0.2/24"))
	for _, h := range []struct{ ns, self, peer, dev string }{{"a", la, lb, "a1"}, {"b", lb, la, "b1"}} {
		must(t, b.Addr(ns[h.ns], "lo", h.self+"/32"))
		must(t, b.IP(ns[h.ns], "route", "add", h.peer+"/32", "dev", h.dev, "src", h.self))
		for _, sc := range []string{"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
			_, err := b.Run(ns[h.ns], "sysctl", "-qw", sc)
			must(t, err)
		}
		for _, dev := range []string{h.dev[:1] + "1", h.dev[:1] + "2"} {
			_, err := b.Run(ns[h.ns], "sysctl", "-qw", "net.ipv4.conf."+dev+".rp_filter=0")
			must(t, err)
		}
	}
	return ns
}

// handoffGateways starts espep linkem gateways gw-1 in m1 and gw-2 in m2
// (split, 20 Mbit/s, 5 ms, 1 % loss toward b; IV partitions 0 and 1 of
// 2) with the SA files sa, each the other's handoff neighbour over the
// control link, with certificates of one CA.
func handoffGateways(t *testing.T, b *Bed, ns map[string]string, dir string, sa [2]string, extra ...[]string) []*Proc {
	t.Helper()
	return pathGateways(t, b, ns, dir, sa, true, extra...)
}

// pathGateways is handoffGateways, without the handoff flags when
// handoff is false: two gateways that know nothing of each other. extra,
// if given, are more flags for gateway 1, then gateway 2.
func pathGateways(t *testing.T, b *Bed, ns map[string]string, dir string, sa [2]string, handoff bool, extra ...[]string) []*Proc {
	t.Helper()
	keys := newSecPKI(t, dir)
	keys.issue(t, "gw-1", pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}})
	keys.issue(t, "gw-2", pki.Identity{Role: pki.RoleGateway, Name: "gw-2", Areas: []string{"cell-2"}})
	var gws []*Proc
	for i, g := range []struct{ ns, self, peer, peerAddr string }{{"m1", "gw-1", "gw-2", "10.99.0.2"}, {"m2", "gw-2", "gw-1", "10.99.0.1"}} {
		self := map[string]string{"gw-1": "10.99.0.1", "gw-2": "10.99.0.2"}[g.self]
		args := []string{espepBin, "linkem", "--a", "xa", "--b", "xb", "--sa", sa[i],
			"--state-dir", filepath.Join(dir, g.self+"-state"), "--iv-partition", fmt.Sprintf("%d/2", i), "--mode", "split",
			"--rate", "20mbit", "--delay", "5ms", "--queue", "200p", "--ab.loss", "1%", "--seed", "3"}
		if handoff {
			args = append(append(args, "--handoff-listen", self+":7700", "--handoff-peer", g.peer+"@"+g.peerAddr+":7700"),
				keys.flags("secserver-", g.self)...)
		}
		if i < len(extra) {
			args = append(args, extra[i]...)
		}
		p, err := b.Start(ns[g.ns], args...)
		must(t, err)
		must(t, waitFor(p, "linkem running", 10*time.Second))
		gws = append(gws, p)
	}
	return gws
}

// TestGatewayHandoffStrongSwan: the handoff between unmodified strongSwan
// peers (charon with its userspace ESP, IKEv2, an AES-GCM tunnel in UDP
// 4500): left in a (wired), right in b (the mobile), over the two paths
// of TestGatewayHandoffHosts. Gateway 1 is given the CHILD_SA's keys (an
// SA file from charon's log); gateway 2 is given nothing — gateway 1
// offers them to it (pre-provisioning over mutual TLS). Halfway through a
// download the peers' routes move to the second path: gateway 2 meets the
// flow mid-stream, asks gateway 1 and resumes it. The file arrives intact,
// charon logs no replay or verification failure on either side, and the
// CHILD_SA stays installed.
func TestGatewayHandoffStrongSwan(t *testing.T) {
	b, ns, dir := strongSwanTwoPaths(t)
	sa1, sa2 := filepath.Join(dir, "gw-1.sa"), filepath.Join(dir, "gw-2.sa")
	for _, p := range []string{sa1, sa2} {
		must(t, os.WriteFile(p, []byte("espep-sa 1\n"), 0o600))
	}
	gws := handoffGateways(t, b, ns, dir, [2]string{sa1, sa2})
	s := startCharonsOnPaths(t, b, ns, dir, gws[0])
	cfgs := giveKeys(t, s, sa1, false)
	// Gateway 1 offers what its file gave it to its neighbour.
	must(t, waitFor(gws[1], `msg=provisioned from=gw-1`, 10*time.Second))
	size := max(*gatewaySize, 8) << 20
	x := newPeerTransfer(t, s, dir, size, 0, 300)
	sent := make(chan error, 1)
	start := time.Now()
	go func() {
		o, err := b.Run(s.Left, x.sender...)
		if err != nil {
			err = fmt.Errorf("%w: %s", err, o)
		}
		sent <- err
	}()
	halfway(t, filepath.Join(dir, "out"), size, gws[0])
	moved := time.Since(start)
	moveToPath2(t, b, ns, SSLeftOuter, SSRightOuter)
	if err := <-sent; err != nil {
		t.Fatalf("sender: %v", err)
	}
	if err := x.received(); err != nil {
		t.Fatalf("%v\ngateway 1:\n%s\ngateway 2:\n%s", err, lastLines([]byte(gws[0].Output()), 10), lastLines([]byte(gws[1].Output()), 10))
	}
	took := time.Since(start)
	t.Logf("%d MB in %v (%.1f Mbit/s), moved to gateway 2 after %v", size>>20, took.Round(time.Millisecond),
		float64(size*8)/took.Seconds()/1e6, moved.Round(time.Millisecond))
	for _, side := range []string{"left", "right"} {
		sas, err := s.SAs(side)
		must(t, err)
		if !strings.Contains(sas, "INSTALLED") {
			t.Errorf("%s: the CHILD_SA is not INSTALLED:\n%s", side, sas)
		}
	}
	charonClean(t, s)
	for _, p := range gws {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range gws {
		p.Wait(5 * time.Second)
	}
	g2 := counters(gws[1].Output(), "gateway:")
	t.Logf("gateway 1 %v\ngateway 2 %v", counters(gws[0].Output(), "gateway:"), g2)
	mobile := cfgs[0].Dst.String()
	if cfgs[0].Dst.String() == SSLeftOuter {
		mobile = cfgs[0].Src.String()
	}
	if i := strings.Index(gws[1].Output(), `msg="handoff: asked for a mobile"`); i >= 0 {
		line, _, _ := strings.Cut(gws[1].Output()[i:], "\n")
		t.Logf("gateway 2: %s", line)
	}
	if !strings.Contains(gws[1].Output(), `msg="handoff: asked for a mobile" mobile=`+mobile+" flows=1") || !strings.Contains(gws[0].Output(), `msg="handed over"`) {
		t.Fatalf("gateway 2 did not ask gateway 1 for the mobile:\n%s\n%s", lastLines([]byte(gws[1].Output()), 12), lastLines([]byte(gws[0].Output()), 12))
	}
	if g2["sealed"] < 500 {
		t.Fatalf("gateway 2 did not carry the flow on: %v", g2)
	}
}

// strongSwanTwoPaths is the topology of TestGatewayHandoffHosts for two
// strongSwan peers: a (left) and b (right, the mobile) on two paths, the
// tunnel's inner addresses on their loopbacks.
func strongSwanTwoPaths(t *testing.T) (b *Bed, ns map[string]string, dir string) {
	t.Helper()
	needStrongSwan(t)
	b = ForTest(t)
	dir = t.TempDir()
	ns = twoPaths(t, b, SSLeftOuter, SSRightOuter)
	must(t, b.Addr(ns["a"], "lo", SSLeftInner+"/32"))
	must(t, b.Addr(ns["b"], "lo", SSRightInner+"/32"))
	return b, ns, dir
}

// startCharonsOnPaths starts charon in a and b (AES-GCM tunnel) with gw,
// the first path's gateway, as the testbed's middle box.
func startCharonsOnPaths(t *testing.T, b *Bed, ns map[string]string, dir string, gw *Proc) *StrongSwan {
	t.Helper()
	s := &StrongSwan{Bed: b, Dir: dir, Left: ns["a"], Right: ns["b"], Linkem: gw, charon: map[string]*Proc{}}
	must(t, s.StartCharon("aes128gcm16"))
	return s
}

// halfway waits (at most 60 s) until the download into out has more than
// half of its size bytes; gw's log tail says why if it never does.
func halfway(t *testing.T, out string, size int, gw *Proc) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		if fi, err := os.Stat(out); err == nil && fi.Size() > int64(size/2) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the download did not get halfway:\n%s", lastLines([]byte(gw.Output()), 8))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handoffHosts starts espep host in a (la) and b (lb) with case c's SAs
// from saPath, each serving metrics on 127.0.0.1:9101.
func handoffHosts(t *testing.T, b *Bed, ns map[string]string, dir string, c hostCase, saPath, la, lb string) []*Proc {
	t.Helper()
	var hosts []*Proc
	for _, h := range []struct {
		ns, self, peer string
		spi            int
	}{{"a", la, lb, 0x1001}, {"b", lb, la, 0x1002}} {
		conf := filepath.Join(dir, h.ns+".conf")
		text := strings.Replace(c.hostConfig(saPath, h.self, h.peer, "", h.spi), "[host]\n", "[host]\nmetrics = 127.0.0.1:9101\n", 1)
		must(t, os.WriteFile(conf, []byte(text), 0o600))
		p, err := b.Start(ns[h.ns], espepBin, "host", "--config", conf)
		must(t, err)
		must(t, waitFor(p, "espep host running", 10*time.Second))
		hosts = append(hosts, p)
	}
	return hosts
}

// TestGatewayGoneHosts: the gateway a mobile leaves is SIGKILLed as it
// leaves — no handoff can come. The topology of TestGatewayHandoffHosts;
// a download is under way through gateway 1 when it is killed and the
// hosts' routes move to gateway 2. Gateway 2 meets the flow mid-stream,
// asks gateway 1, is refused (nothing listens), and carries the mobile's
// traffic on, numbering the SAs TakeoverJump above the endpoints (gateway
// 1's lead is unknown to it). What the endpoints see: the download under
// way stalls (the bytes gateway 1 acknowledged early died with it); a new
// download right after works, through gateway 2; the hosts refuse only
// the first packet or two of each SA, which gateway 2 relays as they came
// before it may seal.
func TestGatewayGoneHosts(t *testing.T) {
	b, ns, dir, c, saPath := hostsOnTwoPaths(t)
	gws := handoffGateways(t, b, ns, dir, [2]string{saPath, saPath})
	hosts := handoffHosts(t, b, ns, dir, c, saPath, la, lb)
	first := make(chan error, 1)
	go func() {
		_, err := ncSendPort(t, b, ns["a"], ns["b"], lb, dir, 5001, 64<<20, 15*time.Second)
		first <- err
	}()
	whenOpened(t, b, ns, 3000, gws[0])
	must(t, gws[0].Signal(syscall.SIGKILL))
	moveToPath2(t, b, ns, la, lb)
	killed := time.Now()
	took, err := ncSendPort(t, b, ns["a"], ns["b"], lb, dir, 5002, 8<<20, 60*time.Second)
	if err != nil {
		gws[1].Signal(syscall.SIGTERM)
		gws[1].Wait(5 * time.Second)
		for _, h := range []string{"a", "b"} {
			t.Logf("host %s: %v", h, hostMetrics(t, b, ns[h], "127.0.0.1:9101"))
		}
		t.Fatalf("a new download after gateway 1 was killed: %v\ngateway 2:\n%s", err, lastLines([]byte(gws[1].Output()), 40))
	}
	t.Logf("gateway 1 killed; a new 8 MB download took %v (%.1f Mbit/s) through gateway 2, started %v after the kill",
		took.Round(time.Millisecond), float64(8<<20*8)/took.Seconds()/1e6, time.Since(killed).Round(time.Millisecond)-took.Round(time.Millisecond))
	err = <-first
	t.Logf("the download under way when gateway 1 was killed: %v", err)
	if err == nil {
		t.Log("it completed: gateway 1 had acknowledged nothing early that it had not delivered")
	}
	refused := map[string]int{}
	for _, h := range []string{"a", "b"} {
		m := hostMetrics(t, b, ns[h], "127.0.0.1:9101")
		refused[h] = m["open_error"]
		if m["policy_drop"]+m["not_ours"]+m["seal_error"] != 0 {
			t.Errorf("host %s refused packets: %v", h, m)
		}
	}
	for _, p := range append(gws[1:], hosts...) {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range append(gws[1:], hosts...) {
		p.Wait(5 * time.Second)
	}
	g2 := counters(gws[1].Output(), "gateway:")
	t.Logf("gateway 2 %v", g2)
	if !strings.Contains(gws[1].Output(), `msg="handoff: asked for a mobile" mobile=`+lb+" flows=0") {
		t.Errorf("gateway 2 did not ask for the mobile and get nothing:\n%s", lastLines([]byte(gws[1].Output()), 12))
	}
	if g2["sealed"] < 1000 {
		t.Errorf("gateway 2 did not carry the new download: %v", g2)
	}
	// Until gateway 2 has seen two verified packets of an SA that agree
	// on the endpoint's IVs it may not seal on it (nonce.go): it relays
	// them as they came, with the endpoint's numbers, which are behind
	// what gateway 1 used — the hosts refuse those as replays (their TCP
	// sends them again). Nothing else may be refused.
	if refused["a"]+refused["b"] > g2["originals"] {
		t.Errorf("the hosts refused %v packets; gateway 2 relayed only %d as they came", refused, g2["originals"])
	}
	t.Logf("refused by the hosts: %v (gateway 2 relayed %d as they came before it could seal)", refused, g2["originals"])
	// Gateway 2 took the SAs over TakeoverJump above the endpoints:
	// gateway 1's lead died with it (gateway.Unanswered).
	leads := leadRE.FindAllStringSubmatch(gws[1].Output(), -1)
	if len(leads) == 0 {
		t.Fatalf("gateway 2 numbers no SA:\n%s", lastLines([]byte(gws[1].Output()), 8))
	}
	for _, m := range leads {
		if lead, _ := strconv.Atoi(m[2]); lead < 1<<15 {
			t.Errorf("sa %s: gateway 2 took it over only %d above the endpoint", m[1], lead)
		}
	}
}

// grewIn is how much the file at path grows in the next d.
func grewIn(path string, d time.Duration) int64 {
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	before := size()
	time.Sleep(d)
	return size() - before
}

// TestGatewayNoHandoffHosts: the baseline of TestGatewayHandoffHosts —
// the same two gateways and the same switch halfway through a download,
// but the gateways know nothing of each other (no handoff, no state
// transfer; gateway 2 has the SAs from its file). What gateway 1
// acknowledged early is stranded with it: the download stops at the
// move, where with the handoff it goes on at the radio's rate.
func TestGatewayNoHandoffHosts(t *testing.T) {
	b, ns, dir, c, saPath := hostsOnTwoPaths(t)
	gws := pathGateways(t, b, ns, dir, [2]string{saPath, saPath}, false)
	hosts := handoffHosts(t, b, ns, dir, c, saPath, la, lb)
	size := 8 << 20
	done := make(chan error, 1)
	go func() {
		_, err := ncSendPort(t, b, ns["a"], ns["b"], lb, dir, 5001, size, 8*time.Second)
		done <- err
	}()
	whenOpened(t, b, ns, size/1400/2, gws[0])
	moveToPath2(t, b, ns, la, lb)
	after := grewIn(filepath.Join(dir, "out-5001.bin"), 2*time.Second)
	err := <-done
	t.Logf("the 2 s after the move with no state transfer: %.2f Mbit/s; the download: %v", float64(after*8)/2e6, err)
	if err == nil || after > 256<<10 {
		t.Fatalf("the download went on (%d bytes in the 2 s after the move, %v): then the handoff proves nothing", after, err)
	}
	for _, p := range append(gws, hosts...) {
		p.Signal(syscall.SIGTERM)
	}
}

// whenOpened returns once host b (metrics on 127.0.0.1:9101) has opened
// more than n packets, failing the test after 30 s (gw's log shown).
func whenOpened(t *testing.T, b *Bed, ns map[string]string, n int, gw *Proc) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c := hostMetrics(t, b, ns["b"], "127.0.0.1:9101"); c["opened"] > n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host b opened no more than %d packets in 30 s:\n%s", n, lastLines([]byte(gw.Output()), 8))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// moveToPath2 moves a's route to lb and b's to la onto the second path
// of twoPaths.
func moveToPath2(t *testing.T, b *Bed, ns map[string]string, la, lb string) {
	t.Helper()
	must(t, b.IP(ns["a"], "route", "replace", lb+"/32", "dev", "a2", "src", la))
	must(t, b.IP(ns["b"], "route", "replace", la+"/32", "dev", "b2", "src", lb))
}

// la and lb are the espep hosts' addresses on twoPaths.
const la, lb = "10.77.0.1", "10.77.0.2"

// hostsOnTwoPaths is the set-up of the espep-host tests on twoPaths: the
// namespaces, a directory, and an SA file of AES-GCM transport SAs
// between la and lb (hostCases[0]).
func hostsOnTwoPaths(t *testing.T) (b *Bed, ns map[string]string, dir string, c hostCase, saPath string) {
	t.Helper()
	b = ForTest(t)
	dir = t.TempDir()
	ns = twoPaths(t, b, la, lb)
	c = hostCases[0]
	saPath = filepath.Join(dir, "sa.conf")
	must(t, os.WriteFile(saPath, []byte(c.saFile(la, lb)), 0o600))
	return b, ns, dir, c, saPath
}
