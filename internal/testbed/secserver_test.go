package testbed

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestGatewaySecServer: no SA file anywhere. Two unmodified strongSwan
// peers (UDP-encapsulated AES-GCM tunnel), an espep gateway between them
// (split) with --secserver, and beside it espep secserver and the right
// peer's espep agent, all on certificates from internal/pki. The gateway
// registers with the server at its start and takes its IV partition from
// the identifier it gets. The agent delegates the CHILD_SA keys it finds
// in the right peer's key file (the esp_sa lines strongSwan's save-keys
// plugin writes; here made from charon's log); the server pushes them to
// the gateway of the agent's area, which relayed the tunnel untouched
// until then, and it takes the next flow over. The file crosses intact,
// neither charon logs a replay or an integrity failure, the gateway opened
// and re-sealed and the engine split the flow, and the server audited the
// release without the key. Cases: espep gateway on the veths, and espep
// linkem's gateway behind a 20 Mbit/s radio at 2 % loss — there beside the
// same gateway fed an SA file, in the same run: the goodput must match
// (within 20 % with -gateway.mb=100, the issue's 100 MB; only grossly at
// the default few megabytes).
func TestGatewaySecServer(t *testing.T) {
	needStrongSwan(t)
	radio := []string{"--rate", "20mbit", "--delay", "10ms", "--queue", "200p", "--ab.loss", "2%", "--seed", "3"}
	secserverCase(t, "gateway", []string{"gateway", "--wire", "ra", "--radio", "rb", "--mode", "split"}, true)
	viaServer := secserverCase(t, "linkem-2%", append(append([]string{"linkem", "--a", "ra", "--b", "rb"}, engineFlags("split")...), radio...), true)
	viaFile := secserverCase(t, "linkem-2%-safile", append(append([]string{"linkem", "--a", "ra", "--b", "rb"}, engineFlags("split")...), radio...), false)
	t.Logf("2 %% loss: %.2f Mbit/s with SAs from the server, %.2f with an SA file (%.2f)", viaServer, viaFile, viaServer/viaFile)
	// A few megabytes on a machine running other packages' tests beside
	// this one measure the start of a flow and the CPU as much as the
	// gateway: there only a gross difference fails; at the issue's 100 MB
	// the two must be within 20 %.
	bound := 0.4
	if *gatewaySize >= 50 {
		bound = 0.8
	}
	if viaServer < bound*viaFile {
		t.Errorf("with the SAs from the server the gateway moved %.2f Mbit/s, with an SA file %.2f (bound %.1f)", viaServer, viaFile, bound)
	}
}

// secserverCase runs one case of TestGatewaySecServer with middle (an
// espep command bridging ra and rb) and returns the goodput in Mbit/s;
// with fromServer false the gateway is fed an SA file instead.
func secserverCase(t *testing.T, name string, middle []string, fromServer bool) float64 {
	var mbps float64
	t.Run(name, func(t *testing.T) {
		mbps = secserverRun(t, middle, fromServer)
	})
	return mbps
}

func secserverRun(t *testing.T, middle []string, fromServer bool) float64 {
	b := ForTest(t)
	dir := t.TempDir()
	if !fromServer {
		saPath := filepath.Join(dir, "gateway.sa")
		must(t, os.WriteFile(saPath, nil, 0o600))
		s, err := NewStrongSwanWith(b, espepBin, dir, append(middle, "--sa", saPath, "--state-dir", filepath.Join(dir, "state")))
		must(t, err)
		must(t, s.StartCharon("aes128gcm16"))
		giveKeys(t, s, saPath, true)
		return secserverTransfer(t, s, dir, nil, nil)
	}
	keys := newSecPKI(t, dir)
	keys.issue(t, "gw", pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}})
	keys.issue(t, "agent", pki.Identity{Role: pki.RoleAgent, Name: "right-peer", Addrs: []netip.Addr{netip.MustParseAddr(SSRightOuter)}})
	tlsFlags := keys.flags
	const addr = "127.0.0.1:7443"
	var srv *Proc
	// The server first: the gateway registers at its start and takes its
	// IV partition from the identifier it gets.
	s, err := NewStrongSwanBefore(b, espepBin, dir, append(append(middle, "--secserver", addr, "--state-dir", filepath.Join(dir, "state")),
		tlsFlags("secserver-", "gw")...), func(s *StrongSwan) error {
		srv = keys.startServer(t, b, s.Radio, addr)
		return nil
	})
	must(t, err)
	if !strings.Contains(s.Linkem.Output(), `msg="gateway: IV partition from the security server" partition=1/65536`) {
		t.Fatalf("the gateway did not take its IV partition from the server:\n%s", lastLines([]byte(s.Linkem.Output()), 10))
	}
	must(t, s.StartCharon("aes128gcm16"))
	giveKeys(t, s, "", false) // the tunnel is up; the gateway relays it, having no SA

	cfgs := charonKeys(t, s, "right")
	var lines bytes.Buffer
	if _, err := safile.WriteESPSA(&lines, cfgs); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "right.keys")
	must(t, os.WriteFile(keyFile, lines.Bytes(), 0o600))
	// The gateway watches once it has had the (empty) whole state.
	must(t, waitFor(s.Linkem, `msg="gateway: SAs pushed by the security server" given=0 removed=0 whole=true`, 10*time.Second))
	out, err := b.Run(s.Radio, append([]string{espepBin, "agent", "--secserver", addr, "--keys", keyFile, "--area", "cell-1", "--once"},
		tlsFlags("", "agent")...)...)
	if err != nil || !strings.Contains(string(out), "2 uploaded") {
		t.Fatalf("agent: %v\n%s", err, out)
	}
	// The server pushes them to the gateway of the area.
	uploaded := time.Now()
	for !strings.Contains(s.Linkem.Output(), `msg="gateway: SAs pushed by the security server" given=2`) {
		if time.Since(uploaded) > 10*time.Second {
			t.Fatalf("the gateway never got the SAs:\n%s", lastLines([]byte(s.Linkem.Output()), 10))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("SAs at the gateway within %v of the agent's upload", time.Since(uploaded).Round(time.Millisecond))

	mbps := secserverTransfer(t, s, dir, srv, cfgs)
	if middle[0] == "gateway" {
		// espep gateway's exit summary has the security server's counts.
		if sc := counters(s.Linkem.Output(), "secserver:"); sc["installed"] < 2 || sc["pushes"] < 2 {
			t.Errorf("the gateway's security server counts: %v\n%s", sc, lastLines([]byte(s.Linkem.Output()), 4))
		}
	}
	return mbps
}

// secserverTransfer moves the file through the tunnel and checks it, the
// charon logs, the gateway's counters and (with srv) the server's audit
// log; it returns the goodput in Mbit/s.
func secserverTransfer(t *testing.T, s *StrongSwan, dir string, srv *Proc, cfgs []ipsec.Config) float64 {
	b := s.Bed
	x := newPeerTransfer(t, s, dir, *gatewaySize<<20, 0, 300)
	start := time.Now()
	if o, err := b.Run(s.Left, x.sender...); err != nil {
		t.Fatalf("%v\n%s\n%s", err, o, s.Linkem.Output())
	}
	if err := x.received(); err != nil {
		t.Fatalf("%v\n%s", err, lastLines([]byte(s.Linkem.Output()), 8))
	}
	secs := time.Since(start).Seconds()
	charonClean(t, s)
	s.Linkem.Signal(syscall.SIGTERM)
	s.Linkem.Wait(5 * time.Second)
	mbps := float64(len(x.payload)*8) / secs / 1e6
	gc, ec := counters(s.Linkem.Output(), "gateway:"), counters(s.Linkem.Output(), "engine:")
	t.Logf("%.1f Mbit/s; gateway %v; engine %v", mbps, gc, ec)
	if gc["opened"] < 1000 || gc["sealed"] < 1000 || gc["icv-failures"]+gc["nonce-downgrades"]+gc["seal-errors"] != 0 || ec["early-acked"] < len(x.payload) {
		t.Fatalf("the gateway did not take the tunnel over:\n%s", lastLines([]byte(s.Linkem.Output()), 8))
	}
	if srv == nil {
		return mbps
	}
	srv.Signal(syscall.SIGTERM)
	srv.Wait(5 * time.Second)
	audit := srv.Output()
	if strings.Count(audit, `"msg":"released"`) < 2 || !strings.Contains(audit, `"who":"gw-1/`) {
		t.Fatalf("the server's audit log:\n%s", lastLines([]byte(audit), 10))
	}
	for _, c := range cfgs {
		if strings.Contains(audit, fmt.Sprintf("%x", c.EncKey)) {
			t.Fatal("a key in the audit log")
		}
	}
	return mbps
}

var hexDumpRE = regexp.MustCompile(`(?m)^\S+ \d+\[\w+\]\s+\d+: [0-9A-F]{2} .*$`)

// charonClean fails the test if either charon logged a replay or an
// integrity failure, showing the lines.
func charonClean(t *testing.T, s *StrongSwan) {
	t.Helper()
	for _, side := range []string{"left", "right"} {
		if bad := charonComplaints(s, side); len(bad) > 0 {
			t.Errorf("%s: charon logged a replay or an integrity failure:\n%s", side, strings.Join(bad, "\n"))
		}
	}
}

// charonComplaints returns the lines (at most six) of side's charon log
// that speak of a replay or an integrity failure. Not in the hex dumps of
// keys and messages (ike = 4): their ASCII columns can spell anything, and
// both peers dump the same messages — a message whose bytes read "icv"
// once failed CI on both sides at once.
func charonComplaints(s *StrongSwan, side string) []string {
	log, _ := os.ReadFile(s.CharonLog(side))
	log = hexDumpRE.ReplaceAll(log, nil)
	var lines []string
	for _, l := range strings.Split(string(log), "\n") {
		low := strings.ToLower(l)
		for _, bad := range []string{"verification failed", "replay", "icv"} {
			if strings.Contains(low, bad) && len(lines) < 6 {
				lines = append(lines, l)
				break
			}
		}
	}
	return lines
}
