package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
)

// probeGroup is the multicast group TestNeighboursMulticast's probes go to.
const probeGroup = "239.77.0.1"

// TestNeighboursMulticast: discovery scheme B across real multicast
// routing. Gateway g0 probes; g1 sits one multicast router away (r1),
// g2 two (r1, r2). The routers forward the group with static multicast
// routes (Debian's smcroute) and unicast as usual:
//
//	g0 ── r1 ── r2 ── g2
//	      │
//	      g1
//
// With TTL 1 nobody answers (both are beyond a router); with TTL 2 only
// g1 (1 hop: r2 gets the probe with TTL 1 and may not forward it); with
// TTL 3 both, g1 first (fewer hops). The TTL really bounds who answers.
//
// A kernel built without multicast routing (CONFIG_IP_MROUTE: smcrouted
// then has no routes to install) cannot be a multicast router, so there
// the routed checks are skipped, loudly, and what needs no multicast
// router still runs on the same namespaces: r1 bridges g0's and g1's
// links into one segment (and still routes unicast between their
// subnets), so g0's probes reach g1 at 0 hops, and never g2, beyond r1's
// routing; then the gateways' discovery and pre-provisioning.
func TestNeighboursMulticast(t *testing.T) {
	routed := kernelRoutesMulticast()
	if _, err := exec.LookPath("smcrouted"); err != nil && routed {
		if os.Getenv("CI") != "" {
			t.Fatal("smcroute missing (.ci/run installs it)")
		}
		t.Skip("SKIP (loud): smcroute not installed (apt-get install smcroute)")
	}
	b := ForTest(t)
	dir := t.TempDir()
	ns := neighbourNet(t, b, dir, routed)
	for g, addr := range map[string]string{"g1": "10.90.1.2:7700", "g2": "10.90.3.2:7700"} {
		p, err := b.Start(ns[g], espepBin, "neighbours", "answer", "--group", probeGroup+":7777", "--name", "gw-"+g, "--addr", addr, "--iface", "e0")
		must(t, err)
		must(t, waitFor(p, "answering probes", 5*time.Second))
	}
	probe := func(ttl int) string {
		out, err := b.Run(ns["g0"], espepBin, "neighbours", "probe", "--group", probeGroup+":7777", "--ttl", fmt.Sprint(ttl), "--name", "gw-g0",
			"--iface", "e0", "--wait", "500ms")
		if err != nil {
			t.Fatalf("probe: %v\n%s", err, out)
		}
		return string(out)
	}
	if !routed {
		// One segment: g1 at 0 hops whatever the TTL, g2 never.
		for _, ttl := range []int{1, 3} {
			if out := probe(ttl); !strings.Contains(out, "1 answered") || !strings.HasPrefix(out, "gw-g1 10.90.1.2:7700 hops=0 from=10.90.1.2") {
				t.Fatalf("TTL %d on one segment: want g1 alone, at 0 hops:\n%s", ttl, out)
			}
		}
		discoverGateways(t, b, ns, dir)
		t.Skip("SKIP (loud): this kernel has no multicast routing (no /proc/net/ip_mr_vif: CONFIG_IP_MROUTE unset), so the probes' TTL " +
			"across multicast routers was not tested; discovery and pre-provisioning on one segment passed")
	}
	// smcrouted installs its routes as it starts: wait until TTL 3 reaches both.
	var out string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if out = probe(3); strings.Contains(out, "2 answered") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with TTL 3 not both answered:\n%s", out)
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasPrefix(lines[0], "gw-g1 10.90.1.2:7700 hops=1 from=10.90.1.2") || !strings.HasPrefix(lines[1], "gw-g2 10.90.3.2:7700 hops=2 from=10.90.3.2") {
		t.Fatalf("TTL 3: want g1 at 1 hop first, then g2 at 2:\n%s", out)
	}
	if out := probe(2); !strings.Contains(out, "1 answered") || !strings.Contains(out, "gw-g1") {
		t.Fatalf("TTL 2: want g1 only:\n%s", out)
	}
	if out := probe(1); !strings.Contains(out, "0 answered") {
		t.Fatalf("TTL 1: want no one (both are beyond a router):\n%s", out)
	}
	discoverGateways(t, b, ns, dir)
}

// kernelRoutesMulticast reports whether the kernel can route IPv4
// multicast: with CONFIG_IP_MROUTE every namespace has /proc/net/ip_mr_vif.
func kernelRoutesMulticast() bool {
	_, err := os.Stat("/proc/net/ip_mr_vif")
	return err == nil
}

// neighbourNet builds TestNeighboursMulticast's namespaces and returns
// their names: with routed, r1 and r2 multicast routers (smcrouted's
// static routes for the group, its log printed if the test fails);
// without, r1's links to g0 and g1 one bridge (multicast snooping off, so
// the group floods), which keeps both their gateway addresses and routes
// unicast between the two subnets.
func neighbourNet(t *testing.T, b *Bed, dir string, routed bool) map[string]string {
	t.Helper()
	ns := map[string]string{}
	for _, n := range []string{"g0", "g1", "g2", "r1", "r2"} {
		x, err := b.NS(n)
		must(t, err)
		ns[n] = x
	}
	for _, l := range []struct{ n1, if1, a1, n2, if2, a2 string }{
		{"g0", "e0", "10.90.0.2/24", "r1", "ra", "10.90.0.1/24"},
		{"g1", "e0", "10.90.1.2/24", "r1", "rb", "10.90.1.1/24"},
		{"r1", "rc", "10.90.2.1/24", "r2", "ra", "10.90.2.2/24"},
		{"g2", "e0", "10.90.3.2/24", "r2", "rb", "10.90.3.1/24"},
	} {
		must(t, b.Veth(ns[l.n1], l.if1, ns[l.n2], l.if2))
		must(t, b.Addr(ns[l.n1], l.if1, l.a1))
		if !routed && l.n2 == "r1" {
			continue // the bridge's, below
		}
		must(t, b.Addr(ns[l.n2], l.if2, l.a2))
	}
	if !routed {
		must(t, b.IP(ns["r1"], "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"))
		for _, port := range []string{"ra", "rb"} {
			must(t, b.IP(ns["r1"], "link", "set", port, "master", "br0"))
		}
		must(t, b.IP(ns["r1"], "link", "set", "br0", "up"))
		must(t, b.Addr(ns["r1"], "br0", "10.90.0.1/24"))
		must(t, b.Addr(ns["r1"], "br0", "10.90.1.1/24"))
	}
	for g, via := range map[string]string{"g0": "10.90.0.1", "g1": "10.90.1.1", "g2": "10.90.3.1", "r2": "10.90.2.1"} {
		must(t, b.IP(ns[g], "route", "add", "default", "via", via))
	}
	must(t, b.IP(ns["r1"], "route", "add", "10.90.3.0/24", "via", "10.90.2.2"))
	for _, r := range []string{"r1", "r2"} {
		for _, sc := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
			_, err := b.Run(ns[r], "sysctl", "-qw", sc)
			must(t, err)
		}
	}
	if !routed {
		return ns
	}
	routes := map[string]string{"r1": "mroute from ra group " + probeGroup + " to rb rc\n", "r2": "mroute from ra group " + probeGroup + " to rb\n"}
	for r, conf := range routes {
		path := filepath.Join(dir, r+".conf")
		must(t, os.WriteFile(path, []byte(conf), 0o600))
		p, err := b.Start(ns[r], "smcrouted", "-n", "-f", path, "-u", filepath.Join(dir, r+".sock"), "-P", filepath.Join(dir, r+".pid"),
			"-i", "espep-"+r, "-l", "info")
		must(t, err)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("smcrouted %s:\n%s", r, p.Output())
			}
		})
	}
	return ns
}

// discoverGateways: the same routing with espep gateways (espep linkem,
// IPsec gateway, between two idle interfaces of their own) finding their
// neighbours by --discover (TTL 2, on another port of the group). g0
// holds an SA from its file; once its probe finds g1 — one router away,
// with g2 two away left out — it offers g1 the SA over mutual TLS, name
// pinned, and g1 takes it: g1's own probe went out before g0 was up, so
// g0 is its neighbour because g1 answered g0's probe (the relation is
// symmetric). Discovery → neighbour set → pre-provisioning, in the
// gateway. (The first version of this test found that asymmetry: g1
// refused g0's offers for 30 s, until its next probe.)
func discoverGateways(t *testing.T, b *Bed, ns map[string]string, dir string) {
	keys := newSecPKI(t, dir)
	addrs := map[string]string{"g0": "10.90.0.2", "g1": "10.90.1.2", "g2": "10.90.3.2"}
	gws := map[string]*Proc{}
	for _, g := range []string{"g1", "g2", "g0"} { // g0, the prober, last: the others answer its first probe
		name := "gw-" + g
		keys.issue(t, name, pki.Identity{Role: pki.RoleGateway, Name: name, Areas: []string{"cell-" + g}})
		must(t, b.Veth(ns[g], "xa", ns[g], "xb"))
		sa := filepath.Join(dir, g+".sa")
		body := "espep-sa 1\n"
		if g == "g0" {
			body = hostCases[0].saFile("10.77.0.1", "10.77.0.2")
		}
		must(t, os.WriteFile(sa, []byte(body), 0o600))
		args := append([]string{espepBin, "linkem", "--a", "xa", "--b", "xb", "--sa", sa, "--state-dir", filepath.Join(dir, g+"-state"),
			"--handoff-listen", addrs[g] + ":7700", "--discover", "239.77.0.1:7778", "--discover-ttl", "2", "--discover-iface", "e0"},
			keys.flags("secserver-", name)...)
		p, err := b.Start(ns[g], args...)
		must(t, err)
		must(t, waitFor(p, "linkem running", 10*time.Second))
		gws[g] = p
	}
	must(t, waitFor(gws["g0"], "neighbours from multicast discovery", 10*time.Second))
	must(t, waitFor(gws["g1"], "msg=provisioned from=gw-g0", 10*time.Second))
	time.Sleep(500 * time.Millisecond)
	if strings.Contains(gws["g2"].Output(), "from=gw-g0") {
		t.Fatalf("g2, two routers away (or beyond a router that does not route multicast), was provisioned by g0 with TTL 2:\n%s", lastLines([]byte(gws["g2"].Output()), 8))
	}
	line := gws["g0"].Output()
	if i := strings.Index(line, "neighbours from multicast discovery"); i >= 0 {
		line, _, _ = strings.Cut(line[i:], "\n")
	}
	t.Logf("g0: %s", line)
	if !strings.Contains(line, "neighbours=1") {
		t.Fatalf("g0's neighbours: %s", line)
	}
}
