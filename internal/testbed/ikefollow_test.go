package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/ipsec"
)

// TestGatewayFollowsIKE: scheme 2 with unmodified strongSwan peers. The
// gateway (espep linkem, split, 20 Mbit/s radio with 2 % loss toward the
// right) is given only the IKE SA keys, after IKE_AUTH is over (it held
// the exchange's messages until they came):
//
//   - "file": the test reads them from the left charon's log (ike = 4)
//     and writes them to the gateway's --ike-keys file;
//   - "secserver": the right peer's espep agent (--ike-charon-log) uploads
//     them to the security server, which pushes them to the gateway
//     (--secserver): the delegation as deployed, no CHILD_SA key
//     anywhere but in the peers;
//   - "pfs": as "secserver", with PFS on the CHILD_SA: the rekeys carry
//     KE payloads, the gateway cannot derive them, asks the server
//     (scheme 3: the agent also uploads the CHILD_SAs, --charon-log) and
//     counts it.
//
// The gateway derives the CHILD_SA, takes the flow over and follows two
// CHILD_SA rekeys (swanctl --rekey, once from each end) during the
// transfer; without PFS also an IKE SA rekey (the new IKE SA's keys
// delegated again, bound by the message they verify) and a CHILD_SA rekey
// on the new IKE SA. The file crosses intact, neither charon logs a replay or an
// integrity failure, and what the gateway derives is what charon
// installed (the same follower run on the capture of the IKE messages,
// compared key for key with both charon logs; tshark, given the same IKE
// keys, decrypts the same messages and finds the same CHILD_SA SPIs).
func TestGatewayFollowsIKE(t *testing.T) {
	needStrongSwan(t)
	for _, c := range []struct {
		name        string
		server, pfs bool
	}{{"file", false, false}, {"secserver", true, false}, {"pfs", true, true}} {
		t.Run(c.name, func(t *testing.T) { gatewayFollowsIKE(t, c.server, c.pfs) })
	}
}

func gatewayFollowsIKE(t *testing.T, server, pfs bool) {
	b := ForTest(t)
	dir := t.TempDir()
	middle := append(append([]string{"linkem", "--a", "ra", "--b", "rb", "--state-dir", filepath.Join(dir, "state")},
		engineFlags("split")...), "--rate", "20mbit", "--delay", "10ms", "--queue", "200p", "--ab.loss", "2%", "--seed", "3")
	keyPath := filepath.Join(dir, "ike.keys")
	if !server {
		must(t, os.WriteFile(keyPath, []byte("espep-ike 1\n"), 0o600))
		middle = append(middle, "--ike-keys", keyPath)
	}
	esp := "aes128gcm16"
	if pfs {
		esp = "aes128gcm16-x25519"
	}
	const addr = "127.0.0.1:7446"
	var srv *Proc
	var keys *secPKI
	var before func(*StrongSwan) error
	if server {
		keys = newSecPKI(t, dir)
		keys.issue(t, "gw", pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}})
		keys.issue(t, "agent", pki.Identity{Role: pki.RoleAgent, Name: "right-peer", Addrs: []netip.Addr{netip.MustParseAddr(SSRightOuter)}})
		middle = append(append(middle, "--secserver", addr), keys.flags("secserver-", "gw")...)
		before = func(s *StrongSwan) error {
			srv = keys.startServer(t, b, s.Radio, addr)
			return nil
		}
	}
	s, err := NewStrongSwanBefore(b, espepBin, dir, middle, before)
	must(t, err)
	capPath := filepath.Join(dir, "ike.pcap")
	dump, err := b.Start(s.GW, "tcpdump", "-U", "--immediate-mode", "-ni", "gr", "-w", capPath, "udp port 500 or (udp port 4500 and udp[8:4] = 0)")
	must(t, err)
	must(t, b.WaitFile(capPath, 5*time.Second))
	must(t, s.StartCharon(esp))
	// The delegating party: every IKE SA key set charon logs goes to the
	// gateway.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var agent *Proc
	if server {
		// charon writes its log for all to read; it holds keys, and the
		// agent refuses a key source open to others.
		must(t, os.Chmod(s.CharonLog("right"), 0o600))
		args := []string{espepBin, "agent", "--secserver", addr, "--ike-charon-log", s.CharonLog("right"), "--area", "cell-1", "--interval", "200ms"}
		if pfs {
			args = append(args, "--charon-log", s.CharonLog("right"))
		}
		agent, err = b.Start(s.Radio, append(args, keys.flags("", "agent")...)...)
		must(t, err)
	} else {
		go delegateIKE(ctx, t, s.CharonLog("left"), keyPath)
	}
	must(t, waitFor(s.Linkem, `msg="gateway: IKE: CHILD_SA derived"`, 10*time.Second))
	giveKeys(t, s, "", false) // the tunnel carries

	size := max(*gatewaySize, 24) << 20 // long enough for the rekeys
	x := newPeerTransfer(t, s, dir, size, 0, 300)
	began := time.Now()
	sender, err := b.Start(s.Left, x.sender...)
	must(t, err)
	// Two CHILD_SA rekeys, one from each end; without PFS then an IKE SA
	// rekey (its new keys delegated again: charon logs them) and a
	// CHILD_SA rekey on the new IKE SA.
	rekeys := []string{"left", "right", "ike", "left"}
	if pfs {
		rekeys = rekeys[:2]
	}
	children := 0
	for i, side := range rekeys {
		time.Sleep(2 * time.Second)
		start := time.Now()
		must(t, s.Rekey(side))
		if side == "ike" {
			// Nothing to derive. Wait for the rekey to complete (the
			// initiator's log has the new IKE SA's keys): a request lost
			// on the radio is sent again after 4 s, and the next CHILD_SA
			// rekey must be on the new IKE SA.
			for strings.Count(readLog(s.CharonLog("left")), "Sk_d secret") < 2 {
				if time.Since(start) > 20*time.Second {
					t.Fatalf("the IKE SA rekey did not complete in 20 s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			continue // the next rekey shows the new keys came
		}
		children++
		want := 2 * (children + 1) // two SAs per CHILD_SA derived, IKE_AUTH's first
		pattern := `msg="gateway: IKE: CHILD_SA derived"`
		if pfs {
			pattern = `msg="gateway: IKE: CHILD_SA with PFS; asking the security server"`
			want = children
		}
		for strings.Count(s.Linkem.Output(), pattern) < want {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("rekey %d: the gateway did not follow it:\n%s", i+1, lastLines([]byte(s.Linkem.Output()), 12))
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("rekey %d (%s): the gateway had it %v after swanctl --rekey was run", i+1, side, time.Since(start).Round(time.Millisecond))
	}
	if err := sender.Wait(300 * time.Second); err != nil {
		t.Fatalf("sender: %v\n%s", err, lastLines([]byte(s.Linkem.Output()), 10))
	}
	took := time.Since(began)
	if err := x.received(); err != nil {
		t.Fatalf("%v\n%s", err, lastLines([]byte(s.Linkem.Output()), 10))
	}
	// End-to-end CUBIC at 2 % loss moves 1.2 Mbit/s here (DESIGN.md):
	// well above it, the gateway split the flow across the rekeys.
	mbps := float64(size) * 8 / took.Seconds() / 1e6
	t.Logf("%d MB across the rekeys at %.1f Mbit/s", size>>20, mbps)
	if mbps < 4 {
		t.Errorf("%.1f Mbit/s: the gateway did not keep the flow split across the rekeys", mbps)
	}
	if !pfs {
		// The last rekey's Delete exchange may have been lost on the
		// radio (2 %) and come again only when charon retransmits, 4 s
		// later — after a short transfer's end: wait for the gateway to
		// have withdrawn all six SAs before the charons go.
		for start := time.Now(); strings.Count(s.Linkem.Output(), `msg="gateway: IKE: SA removed"`) < 6 && time.Since(start) < 20*time.Second; {
			time.Sleep(20 * time.Millisecond)
		}
	}
	charonClean(t, s)
	dump.Stop()
	procs := []*Proc{s.Linkem}
	if server {
		procs = append(procs, agent, srv)
	}
	for _, p := range procs {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		p.Wait(5 * time.Second)
	}
	out := s.Linkem.Output()
	gc, ec, ic := counters(out, "gateway:"), counters(out, "engine:"), counters(out, "ike:")
	t.Logf("gateway %v\nengine %v\nike %v", gc, ec, ic)
	if gc["opened"] < 1000 || gc["sealed"] < 1000 || gc["icv-failures"]+gc["nonce-downgrades"]+gc["seal-errors"] != 0 || ec["early-acked"] < size/2 {
		t.Fatalf("the gateway did not work on the flow:\n%s", lastLines([]byte(out), 60))
	}
	if ic["integrity"]+ic["malformed"]+ic["queue-drops"] != 0 || pfs && ic["bound"] != 1 {
		t.Errorf("ike counters %v", ic)
	}
	if pfs {
		if ic["children"] != 1 || ic["pfs"] != 2 || ic["pfs-fallbacks"] != 2 {
			t.Errorf("with PFS: ike counters %v, want IKE_AUTH's CHILD_SA derived and both rekeys handed to the server", ic)
		}
	} else if ic["children"] != 4 || ic["installed"] != 8 || ic["removed"] != 6 || ic["ike-rekeys"] != 1 || ic["bound"] != 2 {
		t.Errorf("ike counters %v, want 4 CHILD_SAs derived, the 3 rekeyed away removed, the IKE SA's rekey bound to its new keys", ic)
	}
	for _, m := range reseals.FindAllStringSubmatch(out, -1) {
		t.Logf("first packet re-sealed on a derived SA (spi %s) %s after the exchange's last message", m[1], m[2])
	}
	checkDerived(t, s, capPath, pfs)
}

var reseals = regexp.MustCompile(`msg="gateway: IKE: first packet re-sealed on a derived SA" spi=(\d+) after=(\S+)`)

// readLog is the text of a log file ("" if it cannot be read yet).
func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// delegateIKE writes the IKE SA keys of a charon log to an IKE key file
// whenever the log shows new ones, until ctx ends.
func delegateIKE(ctx context.Context, t *testing.T, log, path string) {
	n := 0
	for ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		f, err := os.Open(log)
		if err != nil {
			continue
		}
		keys, err := charonlog.ParseIKE(f, log)
		f.Close()
		if err != nil || len(keys) == n {
			continue
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, ikefollow.AppendKeyFile(nil, keys...), 0o600); err == nil && os.Rename(tmp, path) == nil {
			n = len(keys)
		}
	}
}

// checkDerived runs the follower on the capture of the IKE messages with
// the keys charon logged and compares what it derives with what both
// charons installed; tshark, with the same keys, must find the same
// CHILD_SA SPIs in the decrypted messages.
func checkDerived(t *testing.T, s *StrongSwan, capPath string, pfs bool) {
	t.Helper()
	f, err := os.Open(s.CharonLog("left"))
	must(t, err)
	keys, err := charonlog.ParseIKE(f, "left")
	f.Close()
	must(t, err)
	fl := ikefollow.New(ikefollow.Config{})
	var derived []ipsec.Config
	for _, k := range keys {
		r, err := fl.AddKeys(k)
		must(t, err)
		derived = append(derived, r.Created...)
	}
	for _, p := range ikePackets(t, capPath) {
		derived = append(derived, fl.Observe(p).Created...)
	}
	for _, side := range []string{"left", "right"} {
		f, err := os.Open(s.CharonLog(side))
		must(t, err)
		installed, err := charonlog.Parse(f, side)
		f.Close()
		must(t, err)
		if pfs {
			installed = installed[:2] // IKE_AUTH's CHILD_SA; the rekeys' were not derivable
		}
		if len(derived) != len(installed) {
			t.Errorf("%s: derived %d SAs, charon installed %d", side, len(derived), len(installed))
		}
		for _, c := range installed {
			ok := false
			for _, d := range derived {
				ok = ok || d.SPI == c.SPI && d.Dst == c.Dst && bytes.Equal(d.EncKey, c.EncKey) && bytes.Equal(d.IntegKey, c.IntegKey)
			}
			if !ok {
				t.Errorf("%s: charon's SA %#08x→%v was not derived with its keys", side, c.SPI, c.Dst)
			}
		}
	}
	t.Logf("the follower, on the capture: %d SAs derived, the same as both charons installed", len(derived))
	tsharkSPIs(t, capPath, keys, derived)
}

// tsharkSPIs has tshark decrypt the capture's IKE messages with the same
// IKE keys (its ikev2_decryption_table, which needs each IKE SA's SPIs:
// those of the messages the keys open) and checks that the ESP SPIs in
// what it decrypted are the ones derived (with PFS: among them).
func tsharkSPIs(t *testing.T, capPath string, keys []ikev2.Keys, derived []ipsec.Config) {
	t.Helper()
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("tshark: %v", err)
		}
		t.Skipf("tshark not installed: %v", err)
	}
	var table strings.Builder
	for _, k := range keys {
		for _, p := range ikePackets(t, capPath) {
			m, err := ikev2.Parse(p.Msg)
			if err != nil || m.Exchange == ikev2.ExchangeSAInit {
				continue
			}
			if _, err := k.Open(p.Msg, &m); err == nil {
				fmt.Fprintf(&table, "%016x,%016x,%x,%x,%q,%x,%x,%q\n", m.SPIi, m.SPIr, k.Ei, k.Er, wiresharkEncr(k), k.Ai, k.Ar, wiresharkInteg(k))
				break
			}
		}
	}
	home := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(home, ".config", "wireshark"), 0o700))
	must(t, os.WriteFile(filepath.Join(home, ".config", "wireshark", "ikev2_decryption_table"), []byte(table.String()), 0o600))
	cmd := exec.Command(tshark, "-r", capPath, "-T", "fields", "-e", "isakmp.spi")
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	seen := map[uint32]bool{}
	for _, f := range strings.FieldsFunc(string(out), func(r rune) bool { return r == ',' || r == '\n' || r == '\t' }) {
		if len(f) == 8 {
			v, err := strconv.ParseUint(f, 16, 32)
			must(t, err)
			seen[uint32(v)] = true
		}
	}
	mine := map[uint32]bool{}
	for _, d := range derived {
		mine[d.SPI] = true
		if !seen[d.SPI] {
			t.Errorf("tshark, with the same IKE keys, did not find the derived SPI %#08x (it found %v)", d.SPI, seen)
		}
	}
	if len(mine) == len(derived) && len(seen) == 0 {
		t.Fatal("tshark decrypted nothing")
	}
	t.Logf("tshark decrypted the IKE messages with the delegated keys: %d ESP SPIs, %d of them derived", len(seen), len(mine))
}

// wiresharkEncr and wiresharkInteg name an IKE SA's transforms as
// Wireshark's ikev2_decryption_table does.
func wiresharkEncr(k ikev2.Keys) string {
	switch k.Encr {
	case ikev2.EncrAESCBC:
		return fmt.Sprintf("AES-CBC-%d [RFC3602]", 8*len(k.Ei))
	case ikev2.EncrAESGCM16:
		return fmt.Sprintf("AES-GCM-%d with 16 octet ICV [RFC5282]", 8*(len(k.Ei)-4))
	case ikev2.EncrAESGCM12:
		return fmt.Sprintf("AES-GCM-%d with 12 octet ICV [RFC5282]", 8*(len(k.Ei)-4))
	}
	return "?"
}

func wiresharkInteg(k ikev2.Keys) string {
	switch k.Integ {
	case ikev2.IntegHMACSHA2256128:
		return "HMAC_SHA2_256_128 [RFC4868]"
	case ikev2.IntegHMACSHA2384192:
		return "HMAC_SHA2_384_192 [RFC4868]"
	case ikev2.IntegHMACSHA2512256:
		return "HMAC_SHA2_512_256 [RFC4868]"
	}
	return "NONE [RFC4306]"
}
