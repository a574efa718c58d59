package testbed

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/pcapio"
)

// espepBin is built once for the tests that run `espep` in namespaces.
var espepBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(ipipEnv); spec != "" {
		os.Exit(ipipRouterMain(spec)) // this binary run again as a router
	}
	code := func() int {
		if bin := os.Getenv("ESPEP_BIN"); bin != "" && Available() == nil {
			// A given build (to set two builds side by side in one
			// session: the harnesses' figures move with the machine).
			espepBin = bin
		} else if Available() == nil {
			dir, err := os.MkdirTemp("", "espep-testbed")
			if err != nil {
				panic(err)
			}
			defer os.RemoveAll(dir)
			espepBin = filepath.Join(dir, "espep")
			out, err := exec.Command("go", "build", "-o", espepBin, "github.com/espep/espep/cmd/espep").CombinedOutput()
			if err != nil {
				os.Stderr.Write(out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// TestBedCleansUp makes namespaces and a process and checks Close removes
// both.
func TestBedCleansUp(t *testing.T) {
	b := ForTest(t)
	ns, err := b.NS("x")
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Start(ns, "sleep", "300")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(0); err == nil || strings.Contains(err.Error(), "still running") {
		t.Fatalf("process survived Close: %v", err)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), ns) {
		t.Fatalf("namespace %s survived Close", ns)
	}
}

func TestTwoHostsPing(t *testing.T) {
	b := ForTest(t)
	th, err := NewTwoHosts(b, espepBin, "--delay", "5ms")
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Run(th.A, "ping", "-c", "3", "-i", "0.2", "-W", "2", th.BAddr)
	if err != nil {
		t.Fatalf("%v\n%s\nlinkem:\n%s", err, out, th.Linkem.Output())
	}
	rtt, err := parsePing(string(out), 0) // min: the first ping also waits for ARP
	if err != nil || rtt < 10 || rtt > 15 {
		t.Fatalf("rtt %v ms (want ≈ 10): %v\n%s", rtt, err, out)
	}
}

// TestLinkemCountersAndCapture: linkem prints its counters on SIGUSR1 and
// on exit, and writes what it delivers a→b to a pcap file.
func TestLinkemCountersAndCapture(t *testing.T) {
	b := ForTest(t)
	capPath := filepath.Join(t.TempDir(), "ab.pcap")
	th, err := NewTwoHosts(b, espepBin, "--ab.loss", "20%", "--seed", "3", "--pcap-ab", capPath)
	if err != nil {
		t.Fatal(err)
	}
	b.Run(th.A, "ping", "-c", "40", "-i", "0.01", "-W", "1", th.BAddr)
	th.Linkem.Signal(syscall.SIGUSR1)
	time.Sleep(200 * time.Millisecond)
	if !strings.Contains(th.Linkem.Output(), "drop-loss") {
		t.Fatalf("no counters after SIGUSR1:\n%s", th.Linkem.Output())
	}
	th.Linkem.Stop()
	out := th.Linkem.Output()
	ab, _ := linkemRow(out, "ra→rb") // the last table's
	offered, delivered, lost := ab.offered, ab.delivered, ab.dropLoss
	if offered < 40 || lost == 0 || delivered+lost != offered {
		t.Fatalf("a→b counters: offered %d delivered %d lost %d\n%s", offered, delivered, lost, out)
	}
	frames := 0
	f, err := os.Open(capPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapio.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := r.Next(); err != nil {
			break
		}
		frames++
	}
	if frames != delivered {
		t.Fatalf("capture has %d frames, linkem delivered %d", frames, delivered)
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }
