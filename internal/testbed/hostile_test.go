package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// macOf returns an interface's MAC address in a namespace.
func macOf(t *testing.T, b *Bed, ns, ifc string) string {
	t.Helper()
	out, err := b.Run(ns, "cat", "/sys/class/net/"+ifc+"/address")
	must(t, err)
	return strings.TrimSpace(string(out))
}

// TestGatewayHostileMix: strongSwan peers (AES-GCM tunnel in UDP 4500)
// with espep gateway between them (split, plain = yes, a state
// directory), and scapy (testdata/hostile.py) sending hostile frames from
// both sides of the gateway while a 4 MB transfer runs beside them: every
// AH length, ESP cut short and with lying UDP lengths, IPv4 and IPv6
// headers whose lengths lie, extension chains too long or running off the
// packet, fragments, IP-in-IP six deep and cut short, cleartext TCP with
// the protected flow's addresses and ports, every flag and broken options.
// The gateway keeps running (it counts, relays or drops each), the file
// arrives intact, the engine split the flow, the CHILD_SAs stay
// installed.
func TestGatewayHostileMix(t *testing.T) {
	needStrongSwan(t)
	if err := exec.Command("/usr/bin/python3", "-c", "import scapy.all").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3-scapy not installed")
		}
		t.Skip("python3-scapy not installed")
	}
	b := ForTest(t)
	dir := t.TempDir()
	saPath := filepath.Join(dir, "gateway.sa")
	must(t, os.WriteFile(saPath, nil, 0o600))
	s, err := NewStrongSwanWith(b, espepBin, dir, []string{"gateway", "--wire", "ra", "--radio", "rb", "--sa", saPath,
		"--state-dir", filepath.Join(dir, "state"), "--mode", "split", "--plain"})
	must(t, err)
	must(t, s.StartCharon("aes128gcm16"))
	cfgs := giveKeys(t, s, saPath, false)
	var spis []string
	for _, c := range cfgs {
		spis = append(spis, fmt.Sprintf("%#x", c.SPI))
	}
	script, err := filepath.Abs("testdata/hostile.py")
	must(t, err)

	x := newPeerTransfer(t, s, dir, 4<<20, 40000, 120)
	// The attackers: in the gateway's wired neighbour, toward the right
	// peer through the gateway; in the right peer's namespace, toward the
	// left. Each aims at the flow's own addresses and ports too.
	var attackers []*Proc
	for _, a := range []struct{ ns, ifc, dstNS, dstIfc, osrc, odst, isrc, idst string }{
		{s.GW, "gr", s.Right, "r0", SSLeftOuter, SSRightOuter, SSLeftInner, SSRightInner},
		{s.Right, "r0", s.GW, "gr", SSRightOuter, SSLeftOuter, SSRightInner, SSLeftInner},
	} {
		p, err := b.Start(a.ns, "/usr/bin/python3", script, a.ifc, macOf(t, b, a.dstNS, a.dstIfc), a.osrc, a.odst, a.isrc, a.idst,
			strings.Join(spis, ","), "6", "7")
		must(t, err)
		attackers = append(attackers, p)
	}
	if o, err := b.Run(s.Left, x.sender...); err != nil {
		t.Fatalf("%v\n%s\n%s", err, o, s.Linkem.Output())
	}
	receivedErr := x.received()
	for _, p := range attackers {
		if err := p.Wait(120 * time.Second); err != nil || !strings.Contains(p.Output(), "hostile.py sent") {
			t.Fatalf("attacker: %v\n%s", err, lastLines([]byte(p.Output()), 10))
		}
		t.Log(strings.TrimSpace(p.Output()))
	}
	must(t, receivedErr)
	// Still running: a signal 0 finds it.
	if err := syscall.Kill(s.Linkem.cmd.Process.Pid, 0); err != nil {
		t.Fatalf("the gateway is gone: %v\n%s", err, lastLines([]byte(s.Linkem.Output()), 20))
	}
	for _, side := range []string{"left", "right"} {
		sas, err := s.SAs(side)
		must(t, err)
		if !strings.Contains(sas, "INSTALLED") {
			t.Errorf("%s: the CHILD_SA is not INSTALLED:\n%s", side, sas)
		}
	}
	s.Linkem.Signal(syscall.SIGTERM)
	if err := s.Linkem.Wait(5 * time.Second); err != nil {
		t.Fatalf("gateway exit: %v\n%s", err, lastLines([]byte(s.Linkem.Output()), 20))
	}
	if strings.Contains(s.Linkem.Output(), "panic") {
		t.Fatalf("the gateway panicked:\n%s", lastLines([]byte(s.Linkem.Output()), 30))
	}
	gc, ec := counters(s.Linkem.Output(), "gateway:"), counters(s.Linkem.Output(), "engine:")
	t.Logf("gateway %v\nengine %v", gc, ec)
	if gc["malformed"] == 0 || gc["icv-failures"]+gc["replays"] == 0 || gc["unknown"] == 0 || gc["fragments"] == 0 || gc["binding-violations"] == 0 {
		t.Errorf("the hostile frames were not all seen and counted: %v", gc)
	}
	if ec["early-acked"] < len(x.payload) || ec["resets"] != 0 {
		t.Errorf("the engine did not split the flow untouched: %v", ec)
	}
}
