package testbed

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// espepBin is built once for the tests that run `espep` in namespaces.
var espepBin string

func TestMain(m *testing.M) {
	code := func() int {
		if Available() == nil {
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
