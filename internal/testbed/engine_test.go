package testbed

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEngineLinuxTCP: the Linux kernel's TCP (CUBIC and BBR) sends a file
// from the wired host through the snoop engine and a radio link with 2 %
// loss (espep linkem --engine snoop); the bytes arrive intact and the
// engine repaired losses itself.
func TestEngineLinuxTCP(t *testing.T) {
	for _, cc := range []string{"cubic", "bbr"} {
		t.Run(cc, func(t *testing.T) {
			b := ForTest(t)
			th, err := NewTwoHosts(b, espepBin, "--engine", "snoop", "--rate", "50mbit", "--delay", "5ms",
				"--queue", "200p", "--ab.loss", "2%", "--seed", "9")
			must(t, err)
			dir := t.TempDir()
			payload := make([]byte, 2<<20)
			rand.Read(payload)
			in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
			must(t, os.WriteFile(in, payload, 0o600))
			srv, err := b.Start(th.B, "sh", "-c", fmt.Sprintf("timeout 60 nc -l -s %s -p 5001 > %s", th.BAddr, out))
			must(t, err)
			must(t, b.WaitListen(th.B, "tcp", 5001, 5*time.Second))
			// A namespace may only default to reno or bbr here, so the sender
			// sets its congestion control per socket (root may).
			send := fmt.Sprintf(`import socket
s = socket.create_connection((%q, 5001))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b%q)
s.sendall(open(%q, "rb").read())
s.shutdown(socket.SHUT_WR)
s.recv(1)`, th.BAddr, cc, in)
			if o, err := b.Run(th.A, "timeout", "60", "/usr/bin/python3", "-c", send); err != nil {
				t.Fatalf("%v\n%s\n%s", err, o, th.Linkem.Output())
			}
			must(t, srv.Wait(30*time.Second))
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, payload) {
				t.Fatalf("received %d of %d bytes, or different bytes", len(got), len(payload))
			}
			th.Linkem.Signal(syscall.SIGTERM)
			th.Linkem.Wait(5 * time.Second)
			ec := counters(th.Linkem.Output(), "engine:")
			cached, local, timeout := ec["cached"], ec["local-rexmits"], ec["timeout-rexmits"]
			t.Logf("%s: engine cached %d, resent %d on dupacks, %d on timeouts", cc, cached, local, timeout)
			if cached < 1000 || local+timeout == 0 {
				t.Fatalf("the engine did not work on the flow:\n%s", lastLines([]byte(th.Linkem.Output()), 6))
			}
		})
	}
}

var (
	engineBench = flag.Bool("enginens", false, "run the Linux TCP through-the-engine goodput harness")
	engineModes = flag.String("enginens.modes", "none,snoop,snoop-forward", "engine modes to compare")
	engineLoss  = flag.String("enginens.loss", "0%,1%,2%,5%", "losses toward the mobile")
)

// TestEngineLinuxGoodput: Linux CUBIC and BBR through linkem, radio
// 20 Mbit/s, RTT 100 ms, 2 % loss toward the mobile, with and without the
// snoop engine. Run with:
//
//	go test ./internal/testbed -run TestEngineLinuxGoodput -enginens -v
func TestEngineLinuxGoodput(t *testing.T) {
	if !*engineBench {
		t.Skip("harness: run with -enginens")
	}
	var rows []string
	modes := strings.Split(*engineModes, ",")
	for _, loss := range strings.Split(*engineLoss, ",") {
		for _, cc := range []string{"cubic", "bbr"} {
			row := fmt.Sprintf("loss %-4s %-5s", loss, cc)
			var base float64
			for i, eng := range modes {
				th, err := NewTwoHosts(ForTest(t), espepBin, "--engine", eng, "--rate", "20mbit", "--delay", "50ms",
					"--queue", "250kb", "--ab.loss", loss, "--seed", "1")
				must(t, err)
				gp := iperf(t, th, "-C", cc, "-t", "15", "-O", "2").End.SumReceived.BitsPerSecond / 1e6
				if i == 0 {
					base = gp
					row += fmt.Sprintf("  %s %6.2f", eng, gp)
				} else {
					row += fmt.Sprintf("  %s %6.2f (%.1f×)", eng, gp, gp/base)
				}
			}
			rows = append(rows, row)
			t.Log(row)
		}
	}
	t.Logf("Linux TCP through espep linkem (20 Mbit/s, RTT 100 ms, loss toward the mobile), engine off vs snoop:\n%s", strings.Join(rows, "\n"))
}
