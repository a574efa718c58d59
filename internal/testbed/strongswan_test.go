package testbed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/pcaptool"
	"github.com/espep/espep/ipsec"
)

func needStrongSwan(t *testing.T) {
	t.Helper()
	if err := StrongSwanAvailable(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v (.ci/run must install it)", err)
		}
		t.Skip(err)
	}
}

// TestStrongSwanThroughRadio brings up the strongSwan pair across the
// gateway and an emulated radio link (10 ms each way), sends traffic
// through the tunnel, captures it on the gateway's radio side, and opens
// every ESP packet with the keys from charon's log — a live version of
// what ipsec/testdata/strongswan holds.
func TestStrongSwanThroughRadio(t *testing.T) {
	needStrongSwan(t)
	b := ForTest(t)
	s, err := NewStrongSwan(b, espepBin, t.TempDir(), "--delay", "10ms")
	if err != nil {
		t.Fatal(err)
	}
	cap := filepath.Join(s.Dir, "gw.pcap")
	dump, err := b.Start(s.GW, "tcpdump", "-U", "--immediate-mode", "-ni", "gr", "-w", cap, "udp port 4500")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFile(cap, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.StartCharon("aes128gcm16"); err != nil {
		t.Fatal(err)
	}
	out, err := b.Run(s.Left, "ping", "-c", "5", "-i", "0.2", "-I", SSLeftInner, SSRightInner)
	if err != nil {
		t.Fatalf("ping through the tunnel: %v\n%s", err, out)
	}
	rtt, _ := parsePing(string(out), 1)
	if rtt < 20 {
		t.Fatalf("rtt %.2f ms: traffic did not cross the emulated radio link", rtt)
	}
	sas, _ := s.SAs("left")
	if !strings.Contains(sas, "TUNNEL-in-UDP") || !strings.Contains(sas, "AES_GCM_16") {
		t.Fatalf("unexpected SA:\n%s", sas)
	}
	time.Sleep(300 * time.Millisecond)
	dump.Stop()

	f, err := os.Open(s.CharonLog("left"))
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := charonlog.Parse(f, "left")
	f.Close()
	if err != nil || len(cfgs) != 2 {
		t.Fatalf("keys from charon's log: %v, %d SAs", err, len(cfgs))
	}
	var sad ipsec.SAD
	for _, c := range cfgs {
		e, err := ipsec.NewEntry(c)
		if err != nil {
			t.Fatal(err)
		}
		sad.Add(e)
	}
	in, err := os.Open(cap)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var plain strings.Builder
	st, err := pcaptool.Decrypt(in, &nopWriter{&plain}, &sad)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capture on the gateway: %v", st)
	// 5 echo requests and 5 replies, each one ESP packet.
	if st.Opened < 10 || st.ICVFailed+st.Replayed+st.UnknownSPI+st.Malformed+st.NotIPsec != 0 {
		t.Fatalf("want every ESP packet opened: %v", st)
	}
}

type nopWriter struct{ b *strings.Builder }

func (w *nopWriter) Write(p []byte) (int, error) { return w.b.Write(p) }
