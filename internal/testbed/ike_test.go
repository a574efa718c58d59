package testbed

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pcapio"
)

var ikeRecord = flag.String("ikerecord", "", "TestStrongSwanIKE: also write strongSwan's IKEv2 messages and charon logs under this directory, one subdirectory per case (the vectors of internal/ikev2)")

// ikeCase is one recording of TestStrongSwanIKE: the IKE and ESP
// proposals, and the rekeys done after the CHILD_SA is up, in order — each
// "left" or "right" (a CHILD_SA rekey started by that side) or "ike" (the
// IKE SA rekeyed by the left).
type ikeCase struct {
	name, ike, esp string
	rekeys         []string
}

var ikeCases = []ikeCase{
	// The parser's vectors: one CHILD_SA rekey.
	{"strongswan", "aes128-sha256-x25519", "aes128gcm16", []string{"left"}},
	// A gateway following IKE without PFS: AES-CBC + HMAC for both IKE
	// and ESP (the key split of RFC 7296 §2.17 has two keys per
	// direction), a CHILD_SA rekey from each side, an IKE SA rekey, and a
	// CHILD_SA rekey on the new IKE SA.
	{"follow", "aes128-sha256-x25519", "aes128-sha256", []string{"left", "right", "ike", "left"}},
	// With PFS: AES-GCM for IKE's SK payload (RFC 5282) and ESP; the rekey
	// carries a KE payload the gateway cannot follow.
	{"follow-pfs", "aes128gcm16-prfsha256-x25519", "aes128gcm16-x25519", []string{"left"}},
	// ChaCha20-Poly1305 for IKE's SK payload (RFC 7634) and ESP.
	{"follow-chacha", "chacha20poly1305-prfsha256-x25519", "chacha20poly1305", []string{"left"}},
}

// TestStrongSwanIKE: the IKEv2 messages two strongSwan peers exchange —
// IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA rekeys, the INFORMATIONALs that
// delete what they replace, each request and response — captured between
// them and read by internal/ikev2: every one parses and round-trips, the
// exchanges come in order (retransmissions and liveness checks allowed
// beside them). With -ikerecord DIR it also writes each case's messages
// (one file per message: the UDP payload without the non-ESP marker; and
// the capture, ike.pcap) and
// both charon logs (with the IKE and CHILD_SA keys) to DIR/<case>, the
// vectors of internal/ikev2:
//
//	go test ./internal/testbed -run TestStrongSwanIKE -ikerecord $PWD/internal/ikev2/testdata -v
func TestStrongSwanIKE(t *testing.T) {
	needStrongSwan(t)
	for _, c := range ikeCases {
		t.Run(c.name, func(t *testing.T) { strongSwanIKE(t, c) })
	}
}

func strongSwanIKE(t *testing.T, c ikeCase) {
	b := ForTest(t)
	s, err := NewStrongSwan(b, espepBin, t.TempDir())
	must(t, err)
	s.IKEProposals = c.ike
	capPath := filepath.Join(s.Dir, "ike.pcap")
	dump, err := b.Start(s.GW, "tcpdump", "-U", "--immediate-mode", "-ni", "gr", "-w", capPath, "udp port 500 or udp port 4500")
	must(t, err)
	must(t, b.WaitFile(capPath, 5*time.Second))
	must(t, s.StartCharon(c.esp))
	for _, r := range c.rekeys {
		must(t, s.Rekey(r))
		time.Sleep(time.Second)
	}
	dump.Stop()
	dir := t.TempDir()
	if *ikeRecord != "" {
		dir = filepath.Join(*ikeRecord, c.name)
	}
	must(t, os.MkdirAll(dir, 0o755))
	msgs := readIKE(t, capPath)
	pcap, err := os.ReadFile(capPath)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "ike.pcap"), pcap, 0o644))
	for i, m := range msgs {
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("msg%02d.bin", i+1)), m, 0o644))
	}
	for _, side := range []string{"left", "right"} {
		log, err := os.ReadFile(s.CharonLog(side))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, side+"-charon.log"), log, 0o644))
	}
	t.Logf("%d IKE messages in %s", len(msgs), dir)
	// Every message parses and round-trips; the exchanges come in order.
	// Under load a peer may retransmit, or a liveness check may pass:
	// other messages may come between.
	var seen []string
	var spi uint64
	for i, b := range msgs {
		m, err := ikev2.Parse(b)
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		again, err := m.Append(nil)
		if err != nil || string(again) != string(b) {
			t.Fatalf("message %d does not round-trip: %v", i+1, err)
		}
		seen = append(seen, fmt.Sprintf("%d/%v", m.Exchange, m.Response()))
		if i == 0 {
			spi = m.SPIi
		} else if m.SPIi != spi && !slices.Contains(c.rekeys, "ike") {
			t.Fatalf("message %d on IKE SA %#x, not %#x", i+1, m.SPIi, spi)
		}
	}
	want := []string{"34/false", "34/true", "35/false", "35/true"} // SA_INIT, AUTH
	for range c.rekeys {
		want = append(want, "36/false", "36/true") // CREATE_CHILD_SA
	}
	k := 0
	for _, kind := range seen {
		if k < len(want) && kind == want[k] {
			k++
		}
	}
	if k < len(want) {
		t.Fatalf("exchanges %v: want %s among them, in that order", seen, strings.Join(want, " "))
	}
}

// readIKE returns the IKE messages of a capture, in order.
func readIKE(t *testing.T, path string) [][]byte {
	t.Helper()
	var msgs [][]byte
	for _, p := range ikePackets(t, path) {
		msgs = append(msgs, p.Msg)
	}
	return msgs
}

// ikePackets reads the IKE messages of a capture, with their addresses
// (each Msg its own copy).
func ikePackets(t *testing.T, path string) []ikefollow.Packet {
	t.Helper()
	link, frames, err := pcapio.ReadFile(path)
	must(t, err)
	var out []ikefollow.Packet
	for _, fr := range frames {
		if p, ok := ikefollow.PacketOfFrame(link, fr); ok {
			out = append(out, p)
		}
	}
	return out
}
