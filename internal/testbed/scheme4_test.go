package testbed

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
)

// TestScheme4Hosts: the security server makes the SAs (scheme 4). Two
// espep hosts in namespaces a (wired) and b (the mobile, behind a 20
// Mbit/s radio at 2 % loss), no SA file anywhere: each host's policy says
// sa = server, and each host's espep agent asks the server for the pair
// and installs it through the host's control socket. The gateway (espep
// linkem, split) in m between them gets the pair pushed to the mobile's
// area, takes the flow over and re-seals it; the file crosses intact and
// neither host refuses a packet. A second gateway instance takes its
// place (the first stopped), with no state from it: the receiver refuses
// the first few packets it seals, behind the first one's numbers (bounded
// here; issue 15 passes that state). Then it is SIGKILLed and a
// plain bridge takes its place: its lease lapses, the server orders both
// agents to rekey, the pair is replaced, and the hosts talk again — the
// outage after the crash is measured, and bounded by the lease (2 s here)
// plus the agents' round trip, not by the SA's lifetime.
func TestScheme4Hosts(t *testing.T) {
	b := ForTest(t)
	dir := t.TempDir()
	a, err := b.NS("a")
	must(t, err)
	m, err := b.NS("m")
	must(t, err)
	bn, err := b.NS("b")
	must(t, err)
	must(t, b.Veth(a, "a0", m, "xa"))
	must(t, b.Veth(m, "xb", bn, "b0"))
	const la, lb = "10.77.1.1", "10.77.1.2"
	must(t, b.IP(a, "addr", "add", la+"/24", "dev", "a0", "nodad"))
	must(t, b.IP(bn, "addr", "add", lb+"/24", "dev", "b0", "nodad"))

	keys := newSecPKI(t, dir)
	keys.issue(t, "gw", pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}})
	keys.issue(t, "agent-a", pki.Identity{Role: pki.RoleAgent, Name: "wired-a", Addrs: []netip.Addr{netip.MustParseAddr(la)}})
	keys.issue(t, "agent-b", pki.Identity{Role: pki.RoleAgent, Name: "mobile-b", Addrs: []netip.Addr{netip.MustParseAddr(lb)}})
	tlsFlags := keys.flags
	// The server, the agents and the gateway share m's loopback; the
	// agents reach their hosts' control sockets through the file system.
	const addr = "127.0.0.1:7444"
	const lease = 2 * time.Second
	srv := keys.startServer(t, b, m, addr, "--lease", lease.String())
	radio := []string{"--rate", "20mbit", "--delay", "10ms", "--queue", "200p", "--ab.loss", "2%", "--seed", "3"}
	startGateway := func(n int) *Proc {
		gw, err := b.Start(m, append(append(append([]string{espepBin, "linkem", "--a", "xa", "--b", "xb", "--secserver", addr,
			"--state-dir", filepath.Join(dir, fmt.Sprintf("gw-state-%d", n))}, engineFlags("split")...),
			radio...), tlsFlags("secserver-", "gw")...)...)
		must(t, err)
		must(t, waitFor(gw, fmt.Sprintf("IV partition from the security server\" partition=%d/65536", n), 10*time.Second))
		return gw
	}
	gw := startGateway(1)
	must(t, waitFor(gw, `msg="gateway: SAs pushed by the security server" given=0 removed=0 whole=true`, 10*time.Second))

	hostConf := func(side, self, peer string) (conf, sock string) {
		hd := filepath.Join(dir, "host-"+side)
		must(t, os.Mkdir(hd, 0o700))
		conf = filepath.Join(hd, "host.conf")
		must(t, os.WriteFile(conf, []byte(fmt.Sprintf(`espep-host 1
[host]
tun = esp0
route = %[2]s/32
state-dir = state
control = ctl.sock
metrics = 127.0.0.1:9101

[policy]
name = tcp
local = %[1]s
remote = %[2]s
proto = tcp
action = protect
sa = server
self = %[1]s
peer = %[2]s
proxy = write

[policy]
name = rest
action = bypass
`, self, peer)), 0o600))
		return conf, filepath.Join(hd, "ctl.sock")
	}
	confA, sockA := hostConf("a", la, lb)
	confB, sockB := hostConf("b", lb, la)
	ha, err := b.Start(a, espepBin, "host", "--config", confA)
	must(t, err)
	hb, err := b.Start(bn, espepBin, "host", "--config", confB)
	must(t, err)
	must(t, waitFor(ha, "espep host running", 10*time.Second))
	must(t, waitFor(hb, "espep host running", 10*time.Second))
	// The mobile's agent says where it is; the wired one is in no area.
	agentB, err := b.Start(m, append([]string{espepBin, "agent", "--secserver", addr, "--host-socket", sockB, "--area", "cell-1",
		"--interval", "200ms"}, tlsFlags("", "agent-b")...)...)
	must(t, err)
	agentA, err := b.Start(m, append([]string{espepBin, "agent", "--secserver", addr, "--host-socket", sockA,
		"--interval", "200ms"}, tlsFlags("", "agent-a")...)...)
	must(t, err)
	must(t, waitFor(agentA, "agent: pair installed", 10*time.Second))
	must(t, waitFor(agentB, "agent: pair installed", 10*time.Second))
	must(t, waitFor(gw, `msg="gateway: SAs pushed by the security server" given=2`, 10*time.Second))

	send := func(size int, timeout time.Duration) (time.Duration, error) {
		return ncSend(t, b, a, bn, lb, dir, size, timeout)
	}
	size := *gatewaySize << 20
	took, err := send(size, 300*time.Second)
	if err != nil {
		t.Fatalf("%v\nhost a: %s\nhost b: %s\ngateway:\n%s", err, ha.Output(), hb.Output(), lastLines([]byte(gw.Output()), 10))
	}
	viaServer := float64(size*8) / took.Seconds() / 1e6
	t.Logf("%d MB through the gateway on the server's pair: %.1f Mbit/s", size>>20, viaServer)
	defer func() {
		// Last, in the same run: the same transfer on an SA file. A few
		// megabytes at 2 % loss, on a machine running other packages'
		// tests beside this one, vary threefold (seen in CI: 4.2 against
		// 11.8 Mbit/s): there only a gateway that did not take the flow
		// over (end-to-end CUBIC, ~1 Mbit/s) fails; at 50 MB and more the
		// two must be within 20 %.
		viaFile := fileFedGoodput(t, size, radio)
		bound := 0.25
		if *gatewaySize >= 50 {
			bound = 0.8
		}
		t.Logf("server pair %.1f Mbit/s, SA file %.1f (%.2f)", viaServer, viaFile, viaServer/viaFile)
		if viaServer < bound*viaFile {
			t.Errorf("on the server's pair the gateway moved %.1f Mbit/s, on an SA file %.1f (bound %.1f)", viaServer, viaFile, bound)
		}
	}()

	// Each host must have opened traffic on the pair: b the data, a only
	// ACKs — which split sends no more often than b acknowledges, and b,
	// taking the gateway's bursts a batch at a time, acknowledges every
	// 30th segment or so (a opened 95 for 2,980 sealed in one CI run).
	refused := func(when string, bound int) {
		t.Helper()
		for _, h := range []struct {
			ns, name string
			least    int
		}{{a, "a", 20}, {bn, "b", 100}} {
			c := hostMetrics(t, b, h.ns, "127.0.0.1:9101")
			t.Logf("host %s %s: %v", h.name, when, c)
			if n := c["open_error"] + c["seal_error"] + c["policy_drop"] + c["not_ours"]; n > bound || c["opened"] < h.least {
				t.Fatalf("host %s refused %d packets %s (bound %d): %v", h.name, n, when, bound, c)
			}
		}
	}
	refused("after the transfer through the gateway", 0)
	gw.Signal(syscall.SIGTERM)
	gw.Wait(5 * time.Second)
	gc, ec := counters(gw.Output(), "gateway:"), counters(gw.Output(), "engine:")
	t.Logf("gateway %v\nengine %v", gc, ec)
	if gc["opened"] < 1000 || gc["sealed"] < 1000 || gc["icv-failures"]+gc["seal-errors"] != 0 || ec["early-acked"] < size {
		t.Fatalf("the gateway did not take the flow over: gateway %v engine %v", gc, ec)
	}

	// A second gateway instance (its own identifier, so its own IV
	// partition) is pushed the pair, carries a flow — numbering the pair
	// and naming it in its heartbeats — and is SIGKILLed; a plain bridge
	// takes its place.
	gw = startGateway(2)
	must(t, waitFor(gw, `msg="gateway: SAs pushed by the security server" given=2 removed=0 whole=true`, 10*time.Second))
	if _, err := send(1<<20, 60*time.Second); err != nil {
		t.Fatalf("through the second gateway: %v\n%s", err, lastLines([]byte(gw.Output()), 10))
	}
	// The second gateway knows nothing of the numbers the first sealed
	// on the pair (no state passed between them: issue 15's handoff), so
	// the first few it seals fall behind the receiver's replay window
	// until its own numbering passes the first's lead.
	refused("after the second gateway took over", 50)
	gw.Signal(syscall.SIGKILL)
	gw.Wait(5 * time.Second)
	killed := time.Now()
	bridge, err := b.Start(m, espepBin, "linkem", "--a", "xa", "--b", "xb")
	must(t, err)
	must(t, waitFor(bridge, " running", 10*time.Second))
	var back time.Duration
	for {
		_, err := send(64<<10, time.Second)
		t.Logf("%v after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
		if err == nil {
			back = time.Since(killed)
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("no traffic 30 s after the gateway died\nagent a:\n%s\nagent b:\n%s\nserver:\n%s", agentA.Output(), agentB.Output(),
				lastLines([]byte(srv.Output()), 10))
		}
	}
	t.Logf("after the gateway was killed the hosts talked again in %v (lease %v)", back.Round(time.Millisecond), lease)
	if back > lease+5*time.Second { // loose: the machine may be busy; the SA's lifetime is an hour
		t.Errorf("the outage after the crash, %v, is not bounded by the lease", back)
	}
	for _, p := range []*Proc{agentA, agentB, ha, hb, bridge, srv} {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range []*Proc{agentA, agentB, ha, hb, bridge, srv} {
		p.Wait(5 * time.Second)
	}
	sa, sb := hostStats(ha.Output()), hostStats(hb.Output())
	t.Logf("host a %v\nhost b %v", sa, sb)
	rekeyed := installedAfter(t, agentA.Output()+agentB.Output(), killed)
	t.Logf("the pair was replaced %v after the gateway was killed", rekeyed.Round(time.Millisecond))
	if rekeyed <= 0 || rekeyed > lease+5*time.Second {
		t.Errorf("the pair was replaced %v after the crash: want within the lease and a few seconds", rekeyed)
	}
	if sa["seal-errors"]+sb["seal-errors"]+sa["policy-drops"]+sb["policy-drops"] != 0 {
		t.Fatalf("a host refused a packet: a %v b %v", sa, sb)
	}
	if !strings.Contains(agentA.Output(), "replaced=true") && !strings.Contains(agentB.Output(), "replaced=true") {
		t.Fatalf("no agent replaced the pair after the lease lapsed:\n%s\n%s", agentA.Output(), agentB.Output())
	}
	audit := srv.Output()
	if !strings.Contains(audit, "lease lapsed") || strings.Count(audit, `"msg":"generated"`) < 4 {
		t.Fatalf("the server's audit log:\n%s", lastLines([]byte(audit), 12))
	}
	if bytes.Contains([]byte(audit), []byte("enc-key")) {
		t.Fatal("a key in the audit log")
	}
}

// hostMetrics reads an espep host's packet counters from its Prometheus
// listener in namespace ns (event label → value).
func hostMetrics(t *testing.T, b *Bed, ns, addr string) map[string]int {
	t.Helper()
	out, err := b.Run(ns, "python3", "-c", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://"+addr+"/metrics', timeout=5).read().decode())")
	must(t, err)
	c := map[string]int{}
	for _, l := range strings.Split(string(out), "\n") {
		var ev string
		var v float64
		if _, err := fmt.Sscanf(l, "espep_host_packets_total{event=%q} %g", &ev, &v); err == nil {
			c[ev] = int(v)
		}
	}
	return c
}

// installedAfter is when, after t0, an agent's log first says it
// installed a replacement pair (slog's time= field), as a duration from
// t0; 0 if none did.
func installedAfter(t *testing.T, logs string, t0 time.Time) time.Duration {
	t.Helper()
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, "agent: pair installed") || !strings.Contains(l, "replaced=true") {
			continue
		}
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "time=") {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time="))
		if err == nil && at.After(t0) {
			return at.Sub(t0)
		}
	}
	return 0
}

// ncSend moves size random bytes over TCP from namespace from to dst:5001
// in namespace to (nc), within timeout, and checks their SHA-256; it
// returns how long it took.
func ncSend(t *testing.T, b *Bed, from, to, dst, dir string, size int, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	return ncSendPort(t, b, from, to, dst, dir, 5001, size, timeout)
}

// ncSendPort is ncSend on TCP port port, its files named after the port.
func ncSendPort(t *testing.T, b *Bed, from, to, dst, dir string, port, size int, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	payload := make([]byte, size)
	rand.Read(payload)
	in, out := filepath.Join(dir, fmt.Sprintf("in-%d.bin", port)), filepath.Join(dir, fmt.Sprintf("out-%d.bin", port))
	os.Remove(out)
	must(t, os.WriteFile(in, payload, 0o600))
	secs := int(timeout / time.Second)
	rx, err := b.Start(to, "sh", "-c", fmt.Sprintf("exec timeout %d nc -l -s %s -p %d > %s", secs+5, dst, port, out))
	must(t, err)
	must(t, b.WaitListen(to, "tcp", port, 5*time.Second))
	start := time.Now()
	o, err := b.Run(from, "sh", "-c", fmt.Sprintf("timeout %d nc -N -w %d %s %d < %s", secs, secs, dst, port, in))
	if err != nil {
		rx.Signal(syscall.SIGTERM) // no connection: try again now, not at the listener's timeout (timeout passes it on to nc)
	}
	rx.Wait(time.Duration(secs+10) * time.Second)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("send: %v\n%s", err, o)
	}
	got, _ := os.ReadFile(out)
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		return took, fmt.Errorf("received %d of %d bytes, sha256 differs", len(got), size)
	}
	return took, nil
}

// fileFedGoodput is the same transfer between two espep hosts whose SA
// pair (AES-GCM, transport) is in an SA file the gateway is also given,
// over the same radio: the yardstick for the server-fed run.
func fileFedGoodput(t *testing.T, size int, radio []string) float64 {
	t.Helper()
	var mbps float64
	t.Run("sa-file", func(t *testing.T) {
		c := hostCases[0]
		p := startHostPairVia(t, c, false, append(append([]string{"linkem", "--a", "xa", "--b", "xb", "--sa", "{sa}", "--state-dir", "{state}"},
			engineFlags("split")...), radio...))
		took, err := ncSend(t, p.b, p.a, p.bn, p.lb, p.dir, size, 300*time.Second)
		if err != nil {
			t.Fatalf("%v\n%s", err, lastLines([]byte(p.mid.Output()), 10))
		}
		mbps = float64(size*8) / took.Seconds() / 1e6
		t.Logf("%d MB through the gateway on an SA file: %.1f Mbit/s", size>>20, mbps)
	})
	return mbps
}
