package testbed

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEngineLinuxTCP: the Linux kernel's TCP (CUBIC and BBR) sends a file
// from the wired host through the engine (snoop and split) and a radio
// link with 2 % loss (espep linkem --engine …); the bytes arrive intact and
// the engine repaired losses itself — in split mode after acknowledging
// everything early, with the Linux receiver accepting every packet the
// engine built.
func TestEngineLinuxTCP(t *testing.T) {
	for _, tc := range []struct{ cc, mode string }{{"cubic", "snoop"}, {"bbr", "snoop"}, {"cubic", "split"}, {"bbr", "split"}} {
		cc := tc.cc
		t.Run(tc.mode+"-"+cc, func(t *testing.T) {
			b := ForTest(t)
			th, err := NewTwoHosts(b, espepBin, append(engineFlags(tc.mode), "--rate", "50mbit", "--delay", "5ms",
				"--queue", "200p", "--ab.loss", "2%", "--seed", "9")...)
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
			// The receiving kernel dropped nothing the engine built: no bad
			// checksum, no PAWS or out-of-window rejection.
			for _, ns := range []string{th.A, th.B} {
				k, err := kernelTCPCounters(b, ns)
				must(t, err)
				for _, c := range []string{"InCsumErrors", "InErrs", "PAWSEstab", "TCPACKSkippedPAWS", "TCPACKSkippedSeq", "TCPRcvQDrop", "TCPZeroWindowDrop"} {
					if k[c] != 0 {
						t.Errorf("%s: the kernel counted %s %d", ns, c, k[c])
					}
				}
			}
			if tc.mode == "split" {
				early, rexmits, relayed := ec["early-acked"], ec["split-rexmits"], ec["relayed"]
				t.Logf("%s: engine acknowledged %d bytes early, resent %d segments, relayed %d packets", cc, early, rexmits, relayed)
				if early < len(payload) || rexmits == 0 {
					t.Fatalf("the engine did not split the flow:\n%s", lastLines([]byte(th.Linkem.Output()), 6))
				}
				return
			}
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
	engineModes = flag.String("enginens.modes", "none,snoop,split", "engine modes to compare")
	engineCases = flag.String("enginens.cases", "0%,0.5%,1%,2%,5%,ge,outage", "radio cases: a loss toward the mobile, ge (Gilbert-Elliott 2 %, bursts of 4) or outage (200 ms)")
	engineSecs  = flag.Int("enginens.time", 15, "seconds per run")
)

// TestEngineLinuxGoodput: Linux CUBIC and BBR from the wired host to the
// mobile through espep linkem: a wired leg of 80 ms RTT, then the engine
// (none, snoop or split), then a radio of 20 Mbit/s and 20 ms RTT with a
// one-BDP queue and loss toward the mobile. Run with:
//
//	go test ./internal/testbed -run TestEngineLinuxGoodput -enginens -v
func TestEngineLinuxGoodput(t *testing.T) {
	if !*engineBench {
		t.Skip("harness: run with -enginens")
	}
	var rows []string
	modes := strings.Split(*engineModes, ",")
	for _, c := range strings.Split(*engineCases, ",") {
		radio, p := []string{"--ab.loss", c}, 0.0
		switch c {
		case "ge":
			radio, p = []string{"--ab.ge-loss", "2%", "--ab.ge-burst", "4"}, 0.02
		case "outage":
			radio = []string{"--outage", "6s-6.2s"}
		default:
			v, err := strconv.ParseFloat(strings.TrimSuffix(c, "%"), 64)
			must(t, err)
			p = v / 100
		}
		limit := 20 * (1 - p) * 1448 / 1500
		for _, cc := range []string{"cubic", "bbr"} {
			row := fmt.Sprintf("| %-6s | %-5s |", c, cc)
			var base float64
			for i, eng := range modes {
				args := append(append(engineFlags(eng), "--rate", "20mbit", "--delay", "10ms", "--queue", "250kb",
					"--wire.delay", "40ms", "--seed", "1"), radio...)
				bed := ForTest(t)
				th, err := NewTwoHosts(bed, espepBin, args...)
				must(t, err)
				gp := iperf(t, th, "-C", cc, "-t", strconv.Itoa(*engineSecs), "-O", "2").End.SumReceived.BitsPerSecond / 1e6
				if eng != "none" && testing.Verbose() {
					th.Linkem.Signal(syscall.SIGTERM)
					th.Linkem.Wait(5 * time.Second)
					t.Logf("%s %s %s: %.2f Mbit/s; engine %v", c, cc, eng, gp, counters(th.Linkem.Output(), "engine:"))
				}
				// Each run's namespaces and processes go now, not at the end:
				// forty idle linkems and iperf servers beside the next run.
				must(t, bed.Close())
				if i == 0 {
					base = gp
					row += fmt.Sprintf(" %6.2f (%.2f) |", gp, gp/limit)
				} else {
					row += fmt.Sprintf(" %6.2f (%.2f, %4.1f×) |", gp, gp/limit, gp/base)
				}
			}
			rows = append(rows, row)
			t.Log(row)
		}
	}
	t.Logf("Linux TCP through espep linkem: wired RTT 80 ms, radio 20 Mbit/s, RTT 20 ms, 250 kB queue, loss toward the mobile; "+
		"Mbit/s (ratio to C·(1−p), ratio to the first mode):\n| radio | sender | %s |\n%s", strings.Join(modes, " | "), strings.Join(rows, "\n"))
}

// kernelTCPCounters reads the TCP counters of /proc/net/snmp and
// /proc/net/netstat in a namespace.
func kernelTCPCounters(b *Bed, ns string) (map[string]int, error) {
	return kernelCounters(b, ns, "Tcp:", "TcpExt:")
}

// kernelCounters reads the counter lines of /proc/net/snmp and
// /proc/net/netstat with the given prefixes in a namespace.
func kernelCounters(b *Bed, ns string, prefixes ...string) (map[string]int, error) {
	out, err := b.Run(ns, "cat", "/proc/net/snmp", "/proc/net/netstat")
	if err != nil {
		return nil, fmt.Errorf("kernel counters: %w", err)
	}
	return parseCounters(string(out), prefixes...), nil
}

// pidCounters reads the counter lines with the given prefixes of the
// namespace process pid is in, from this process — no command started,
// so that two readings a known time apart are that time apart.
func pidCounters(pid int, prefixes ...string) (map[string]int, error) {
	var out []byte
	for _, f := range []string{"snmp", "netstat"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			return nil, fmt.Errorf("kernel counters: %w", err)
		}
		out = append(out, b...)
	}
	return parseCounters(string(out), prefixes...), nil
}

// parseCounters takes the counters of the /proc/net/snmp and
// /proc/net/netstat lines (a line of names, then one of values) with the
// given prefixes; a name met twice keeps its first value.
func parseCounters(out string, prefixes ...string) map[string]int {
	m := map[string]int{}
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || len(names) != len(values) || names[0] != values[0] || !slices.Contains(prefixes, names[0]) {
			continue
		}
		for j := 1; j < len(names); j++ {
			if _, dup := m[names[j]]; !dup {
				m[names[j]], _ = strconv.Atoi(values[j])
			}
		}
		i++
	}
	return m
}
