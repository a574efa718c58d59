package testbed

import (
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

// TestGatewaySecServerRekey: scheme 3 through two CHILD_SA rekeys. Two
// unmodified strongSwan peers, the gateway (espep linkem, split, 2 % loss
// toward the right) with --secserver, and the right peer's espep agent
// reading charon's own log (--charon-log: the CHILD_SAs charon holds, not
// those rekeyed away). During one transfer the CHILD_SA is rekeyed twice
// with swanctl --rekey, once from each end: each time the agent uploads
// the new pair and withdraws the old, the server pushes both changes to
// the gateway, and the gateway follows. The file crosses intact and
// neither charon logs a replay or an integrity failure.
func TestGatewaySecServerRekey(t *testing.T) {
	needStrongSwan(t)
	b := ForTest(t)
	dir := t.TempDir()
	keys := newSecPKI(t, dir)
	keys.issue(t, "gw", pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}})
	keys.issue(t, "agent", pki.Identity{Role: pki.RoleAgent, Name: "right-peer", Addrs: []netip.Addr{netip.MustParseAddr(SSRightOuter)}})
	const addr = "127.0.0.1:7445"
	var srv *Proc
	middle := append(append(append([]string{"linkem", "--a", "ra", "--b", "rb", "--secserver", addr, "--state-dir", filepath.Join(dir, "state")},
		engineFlags("split")...), "--rate", "20mbit", "--delay", "10ms", "--queue", "200p", "--ab.loss", "2%", "--seed", "3"),
		keys.flags("secserver-", "gw")...)
	s, err := NewStrongSwanBefore(b, espepBin, dir, middle, func(s *StrongSwan) error {
		srv = keys.startServer(t, b, s.Radio, addr)
		return nil
	})
	must(t, err)
	must(t, s.StartCharon("aes128gcm16"))
	giveKeys(t, s, "", false)
	must(t, waitFor(s.Linkem, `msg="gateway: SAs pushed by the security server" given=0 removed=0 whole=true`, 10*time.Second))
	// charon writes its log for all to read; it holds keys, and the agent
	// refuses a key source open to others.
	must(t, os.Chmod(s.CharonLog("right"), 0o600))
	agent, err := b.Start(s.Radio, append([]string{espepBin, "agent", "--secserver", addr, "--charon-log", s.CharonLog("right"),
		"--area", "cell-1", "--interval", "200ms"}, keys.flags("", "agent")...)...)
	must(t, err)
	must(t, waitFor(s.Linkem, `msg="gateway: SAs pushed by the security server" given=2`, 10*time.Second))

	size := max(*gatewaySize, 16) << 20 // long enough for two rekeys
	x := newPeerTransfer(t, s, dir, size, 0, 300)
	sender, err := b.Start(s.Left, x.sender...)
	must(t, err)
	for i, side := range []string{"left", "right"} {
		time.Sleep(2 * time.Second)
		pushes := strings.Count(s.Linkem.Output(), `msg="gateway: SAs pushed by the security server"`)
		start := time.Now()
		if out, err := exec.Command("swanctl", "--rekey", "--child", "pep", "--uri", s.vici(side)).CombinedOutput(); err != nil {
			t.Fatalf("swanctl --rekey (%s): %v\n%s", side, err, out)
		}
		// The new pair, then the old one's withdrawal (or both at once).
		for strings.Count(s.Linkem.Output(), `msg="gateway: SAs pushed by the security server"`) < pushes+2 &&
			!strings.Contains(s.Linkem.Output()[len(s.Linkem.Output())/2:], "given=2 removed=2") {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("rekey %d: the gateway was not pushed the new pair:\nagent:\n%s\ngateway:\n%s", i+1,
					lastLines([]byte(agent.Output()), 8), lastLines([]byte(s.Linkem.Output()), 8))
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("rekey %d (from the %s): the gateway had the new pair %v after swanctl --rekey returned", i+1, side, time.Since(start).Round(time.Millisecond))
	}
	if err := sender.Wait(300 * time.Second); err != nil {
		t.Fatalf("sender: %v\n%s", err, lastLines([]byte(s.Linkem.Output()), 10))
	}
	if err := x.received(); err != nil {
		t.Fatalf("%v\n%s", err, lastLines([]byte(s.Linkem.Output()), 10))
	}
	charonClean(t, s)
	if keep := os.Getenv("ESPEP_KEEP_CHARON_LOGS"); keep != "" { // vectors for internal/charonlog
		for _, side := range []string{"left", "right"} {
			log, _ := os.ReadFile(s.CharonLog(side))
			os.WriteFile(filepath.Join(keep, "rekey-"+side+".log"), log, 0o600)
		}
	}
	sas, err := s.SAs("right")
	must(t, err)
	for _, p := range []*Proc{agent, s.Linkem, srv} {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range []*Proc{agent, s.Linkem, srv} {
		p.Wait(5 * time.Second)
	}
	gc, ec := counters(s.Linkem.Output(), "gateway:"), counters(s.Linkem.Output(), "engine:")
	t.Logf("gateway %v\nengine %v\n%s", gc, ec, sas)
	if gc["opened"] < 1000 || gc["sealed"] < 1000 || gc["icv-failures"]+gc["nonce-downgrades"]+gc["seal-errors"] != 0 || ec["early-acked"] < size/2 {
		t.Fatalf("the gateway did not work on the flow:\n%s", lastLines([]byte(s.Linkem.Output()), 8))
	}
	if n := strings.Count(agent.Output(), "agent: withdrawn"); n < 4 {
		t.Fatalf("the agent withdrew %d SAs: want both of each rekeyed-away pair\n%s", n, agent.Output())
	}
}
