package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
)

// TestSecServerHA: three espep secserver replicas on a three-member etcd
// cluster (Debian's etcd-server), all in the radio namespace beside the
// gateway. The gateway (espep linkem, split, 2 % loss) and the right
// peer's agent are given all three replicas' addresses and use the first.
// During a transfer between unmodified strongSwan peers that replica and
// one etcd member are SIGKILLed: the transfer is unaffected (the gateway
// holds the SAs it has), the gateway's watch and the agent move to a live
// replica with the same identifier and lease, and a later rekey (swanctl
// --rekey) is uploaded, pushed and followed as before. Neither charon
// logs a replay or an integrity failure.
func TestSecServerHA(t *testing.T) {
	needStrongSwan(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("etcd missing (.ci/run installs etcd-server)")
		}
		t.Skip("SKIP (loud): etcd not installed (apt-get install etcd-server)")
	}
	b := ForTest(t)
	dir := t.TempDir()
	keys := newSecPKI(t, dir)
	keys.issue(t, "gw", pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}})
	keys.issue(t, "agent", pki.Identity{Role: pki.RoleAgent, Name: "right-peer", Addrs: []netip.Addr{netip.MustParseAddr(SSRightOuter)}})
	replicas := []string{"127.0.0.1:7451", "127.0.0.1:7452", "127.0.0.1:7453"}
	var etcds, servers []*Proc
	middle := append(append(append([]string{"linkem", "--a", "ra", "--b", "rb", "--secserver", strings.Join(replicas, ","),
		"--state-dir", filepath.Join(dir, "state")}, engineFlags("split")...),
		"--rate", "20mbit", "--delay", "10ms", "--queue", "200p", "--ab.loss", "2%", "--seed", "3"), keys.flags("secserver-", "gw")...)
	s, err := NewStrongSwanBefore(b, espepBin, dir, middle, func(s *StrongSwan) error {
		etcds = startEtcdIn(t, b, s.Radio, etcdBin, filepath.Join(dir, "etcd"), 3)
		var clients []string
		for i := range etcds {
			clients = append(clients, fmt.Sprintf("http://127.0.0.1:%d", 23790+2*i))
		}
		for _, addr := range replicas {
			servers = append(servers, keys.startServer(t, b, s.Radio, addr, "--db", "", "--etcd", strings.Join(clients, ","), "--lease", "3s"))
		}
		return nil
	})
	must(t, err)
	must(t, s.StartCharon("aes128gcm16"))
	giveKeys(t, s, "", false)
	must(t, os.Chmod(s.CharonLog("right"), 0o600))
	agent, err := b.Start(s.Radio, append([]string{espepBin, "agent", "--secserver", strings.Join(replicas, ","), "--charon-log", s.CharonLog("right"),
		"--area", "cell-1", "--interval", "200ms"}, keys.flags("", "agent")...)...)
	must(t, err)
	for start := time.Now(); pushedGiven(s.Linkem.Output()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the gateway was not pushed the pair:\n%s", lastLines([]byte(s.Linkem.Output()), 10))
		}
	}

	size := max(*gatewaySize, 16) << 20
	x := newPeerTransfer(t, s, dir, size, 0, 300)
	sender, err := b.Start(s.Left, x.sender...)
	must(t, err)
	time.Sleep(2 * time.Second)
	etcds[0].Signal(syscall.SIGKILL)
	servers[0].Signal(syscall.SIGKILL)
	t.Log("killed etcd member 0 and replica 0 during the transfer")
	if err := sender.Wait(300 * time.Second); err != nil {
		t.Fatalf("sender: %v\n%s", err, lastLines([]byte(s.Linkem.Output()), 10))
	}
	if err := x.received(); err != nil {
		t.Fatalf("%v\n%s", err, lastLines([]byte(s.Linkem.Output()), 10))
	}

	// Later: a rekey goes through the surviving replicas to the gateway.
	given := pushedGiven(s.Linkem.Output())
	start := time.Now()
	if out, err := exec.Command("swanctl", "--rekey", "--child", "pep", "--uri", s.vici("left")).CombinedOutput(); err != nil {
		t.Fatalf("swanctl --rekey: %v\n%s", err, out)
	}
	for pushedGiven(s.Linkem.Output()) < given+2 {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("after the losses the gateway was not pushed the rekeyed pair:\nagent:\n%s\ngateway:\n%s",
				lastLines([]byte(agent.Output()), 10), lastLines([]byte(s.Linkem.Output()), 10))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("after the losses, the gateway had the rekeyed pair %v after swanctl --rekey returned", time.Since(start).Round(time.Millisecond))
	y := newPeerTransfer(t, s, dir, 2<<20, 0, 60)
	if o, err := b.Run(s.Left, y.sender...); err != nil {
		t.Fatalf("after the rekey: %v\n%s", err, o)
	}
	if err := y.received(); err != nil {
		t.Fatalf("after the rekey: %v", err)
	}
	charonClean(t, s)
	s.Linkem.Signal(syscall.SIGTERM)
	s.Linkem.Wait(5 * time.Second)
	gc, ec := counters(s.Linkem.Output(), "gateway:"), counters(s.Linkem.Output(), "engine:")
	t.Logf("gateway %v\nengine %v", gc, ec)
	if gc["opened"] < 1000 || gc["icv-failures"]+gc["seal-errors"] != 0 || ec["early-acked"] < size {
		t.Fatalf("the gateway did not work on the flows:\n%s", lastLines([]byte(s.Linkem.Output()), 8))
	}
	if strings.Contains(s.Linkem.Output(), "registered with the security server") && strings.Count(s.Linkem.Output(), "gateway_id=") > 1 {
		t.Errorf("the gateway registered again after the replica died (its identifier and lease are in etcd):\n%s", s.Linkem.Output())
	}
}

// startEtcdIn starts an n-member etcd cluster in namespace ns, member i
// serving clients at 127.0.0.1:23790+2i, and waits for each to listen.
func startEtcdIn(t *testing.T, b *Bed, ns, bin, dir string, n int) []*Proc {
	t.Helper()
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, 23791+2*i))
	}
	var procs []*Proc
	for i := range n {
		client, peer := fmt.Sprintf("http://127.0.0.1:%d", 23790+2*i), fmt.Sprintf("http://127.0.0.1:%d", 23791+2*i)
		p, err := b.Start(ns, bin, "--name", fmt.Sprintf("m%d", i), "--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i)),
			"--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer, "--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", "espep-testbed", "--log-level", "error")
		must(t, err)
		procs = append(procs, p)
	}
	for i := range n {
		must(t, b.WaitListen(ns, "tcp", 23790+2*i, 10*time.Second))
	}
	return procs
}

// pushedGiven adds up the SAs the security server pushed to a gateway
// after its first whole state (replicas on etcd push each SA as its own
// event).
func pushedGiven(out string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, `msg="gateway: SAs pushed by the security server"`) || !strings.Contains(l, "whole=false") {
			continue
		}
		if i := strings.Index(l, " given="); i >= 0 {
			var g int
			fmt.Sscanf(l[i+len(" given="):], "%d", &g)
			n += g
		}
	}
	return n
}
