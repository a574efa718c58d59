package testbed

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestGatewayStrongSwan: two unmodified strongSwan peers (userspace ESP,
// UDP-encapsulated tunnel) with espep's gateway on the path
// (espep linkem --sa FILE --engine split|snoop: the gateway at the wired
// end of an emulated radio with 1 % loss toward the right peer). The
// gateway starts with an empty SA file; the test appends the CHILD_SA keys
// from charon's log once IKE is done, as strongSwan's save-keys plugin
// would, and the gateway takes them without a restart. A file crosses the
// tunnel intact; the gateway opened and re-sealed the traffic; neither
// charon logs a replay or integrity failure; the SAs stay INSTALLED.
func TestGatewayStrongSwan(t *testing.T) {
	needStrongSwan(t)
	for _, tc := range []struct {
		esp, mode string
		command   bool // espep gateway (no radio emulation), else espep linkem --sa
		espSA     bool // the SA file in Wireshark esp_sa lines (no mode, no UDP ports), as save-keys writes it
	}{
		{"aes128gcm16", "split", false, false},
		{"aes128gcm16", "snoop", false, false},
		{"aes256gcm16", "split", true, true},
		{"aes256gcm16", "snoop", false, true},
		{"aes256-sha256", "split", true, false},
		{"aes256-sha256", "snoop", false, false},
		{"chacha20poly1305", "split", true, false},
		{"chacha20poly1305", "snoop", false, false},
	} {
		mode := tc.mode
		name := map[bool]string{false: "linkem", true: "gateway"}[tc.command]
		if tc.espSA {
			name += "-esp_sa"
		}
		t.Run(tc.esp+"-"+mode+"-"+name, func(t *testing.T) {
			b := ForTest(t)
			dir := t.TempDir()
			saPath := filepath.Join(dir, "gateway.sa")
			must(t, os.WriteFile(saPath, nil, 0o600))
			var s *StrongSwan
			var err error
			if tc.command {
				s, err = NewStrongSwanWith(b, espepBin, dir, []string{"gateway", "--wire", "ra", "--radio", "rb", "--sa", saPath,
					"--state-dir", filepath.Join(dir, "state"), "--mode", mode, "--metrics", "127.0.0.1:9465"})
			} else {
				s, err = NewStrongSwan(b, espepBin, dir, append(engineFlags(mode), "--sa", saPath, "--state-dir", filepath.Join(dir, "state"),
					"--rate", "20mbit", "--delay", "10ms", "--queue", "200p", "--ab.loss", "1%", "--seed", "3")...)
			}
			must(t, err)
			must(t, s.StartCharon(tc.esp))
			cfgs := giveKeys(t, s, saPath, tc.espSA)

			// Count the ESP packets sent toward each peer, to hold against
			// what the peer says it accepted.
			caps, dumps := captureESP(t, s, dir)
			inBefore := map[string]int{"left": espPacketsIn(t, s, "left"), "right": espPacketsIn(t, s, "right")}
			udpBefore := map[string]int{}
			for side, ns := range map[string]string{"left": s.Left, "right": s.Right} {
				u, err := kernelCounters(b, ns, "Udp:")
				must(t, err)
				udpBefore[side] = u["RcvbufErrors"]
			}
			x := newPeerTransfer(t, s, dir, *gatewaySize<<20, 0, 300)
			payload := x.payload
			start := time.Now()
			if o, err := b.Run(s.Left, x.sender...); err != nil {
				t.Fatalf("%v\n%s\n%s", err, o, s.Linkem.Output())
			}
			if err := x.received(); err != nil {
				t.Fatalf("%v\n%s", err, lastLines([]byte(s.Linkem.Output()), 8))
			}
			secs := time.Since(start).Seconds()
			time.Sleep(300 * time.Millisecond)
			for _, d := range dumps {
				d.Stop()
			}
			overflows := map[string]int{} // by the side's outer address
			for _, side := range []string{"left", "right"} {
				sas, err := s.SAs(side)
				must(t, err)
				if !strings.Contains(sas, "INSTALLED") {
					t.Errorf("%s: the CHILD_SA is not INSTALLED:\n%s", side, sas)
				}
				// Every ESP packet that reached the peer was accepted by it —
				// save those its kernel dropped before charon could read them
				// (its UDP socket buffer overflowing in a burst).
				arrived := countESP(t, caps[side])
				accepted := espPacketsIn(t, s, side) - inBefore[side]
				u, err := kernelCounters(b, map[string]string{"left": s.Left, "right": s.Right}[side], "Udp:")
				must(t, err)
				overflow := u["RcvbufErrors"] - udpBefore[side]
				overflows[map[string]string{"left": SSLeftOuter, "right": SSRightOuter}[side]] = overflow
				t.Logf("%s: %d ESP packets arrived, strongSwan accepted %d, its socket buffer overflowed for %d", side, arrived, accepted, overflow)
				if arrived < 100 || accepted+overflow != arrived {
					log, _ := os.ReadFile(s.CharonLog(side))
					var esp []string
					for _, l := range strings.Split(string(log), "\n") {
						if strings.Contains(l, "[ESP]") || strings.Contains(l, "[KNL]") {
							esp = append(esp, l)
						}
					}
					t.Errorf("%s: %d ESP packets arrived, strongSwan accepted %d; charon's ESP lines:\n%s", side, arrived, accepted,
						lastLines([]byte(strings.Join(esp, "\n")), 12))
				}
				if bad := charonComplaints(s, side); len(bad) > 0 {
					t.Errorf("%s: charon logged a replay or an integrity failure:\n%s", side, strings.Join(bad, "\n"))
				}
			}
			if tc.command {
				// The metrics name SAs by SPI, never by key.
				page, err := b.Run(s.Radio, "/usr/bin/python3", "-c",
					`import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9465/metrics").read().decode())`)
				must(t, err)
				if !bytes.Contains(page, []byte("espep_gateway_sealed_total")) || !bytes.Contains(page, []byte("espep_gateway_sa_in_packets_total")) {
					t.Errorf("metrics page:\n%s", lastLines(page, 10))
				}
				for _, c := range cfgs {
					if bytes.Contains(page, []byte(fmt.Sprintf("%x", c.EncKey))) {
						t.Error("a key appears on the metrics page")
					}
				}
			}
			s.Linkem.Signal(syscall.SIGTERM)
			s.Linkem.Wait(5 * time.Second)
			gc := counters(s.Linkem.Output(), "gateway:")
			ec := counters(s.Linkem.Output(), "engine:")
			t.Logf("%s %s: %.1f Mbit/s; gateway %v; engine %v", tc.esp, mode, float64(len(payload)*8)/secs/1e6, gc, ec)
			if gc["opened"] < 1000 || gc["sealed"] < 1000 || gc["icv-failures"]+gc["nonce-downgrades"]+gc["seal-errors"] != 0 {
				t.Fatalf("the gateway did not take the tunnel over:\n%s", lastLines([]byte(s.Linkem.Output()), 8))
			}
			if mode == "split" && ec["early-acked"] < len(payload) || mode == "snoop" && ec["cached"] < 1000 {
				t.Fatalf("the engine did not work on the flow: %v", ec)
			}
			// The gateway's lead over each endpoint: with a state directory
			// no jump, only its own extra packets — split's resends, not an
			// ACK per segment: at most the engine's ACK slack (64) more than
			// it resent. Its resends: one for each packet the receiving
			// charon's socket buffer dropped (its kernel counts them) and
			// the 1 % loss, and after each retransmission timeout up to
			// three send quanta (the window's bulk on this path: the flight
			// is presumed lost). Timeouts are rare here alone; in CI, with
			// charon starved of CPU by the suite beside it, one run saw four,
			// resends at 367 with 51 drops. (Snoop's local resends add to
			// the lead as well; logged.)
			rexmits, timeouts := ec["split-rexmits"], ec["split-timeouts"]
			for _, m := range leadRE.FindAllStringSubmatch(s.Linkem.Output(), -1) {
				lead, _ := strconv.Atoi(m[2])
				dropped := 0
				if dst := leadDstRE.FindStringSubmatch(m[1]); dst != nil {
					dropped = overflows[dst[1]]
				}
				t.Logf("SA %s: lead %d (its receiver's socket dropped %d; split resent %d, %d timeouts)", m[1], lead, dropped, rexmits, timeouts)
				if mode == "split" && lead > rexmits+splitACKSlack {
					t.Errorf("SA %s: the gateway's lead grew to %d, %d more than it resent", m[1], lead, lead-rexmits)
				}
				if mode == "split" && lead > len(payload)/1448/10+dropped+timeouts*3*(64<<10)/1448 {
					t.Errorf("SA %s: the gateway's lead grew to %d over a %d MB transfer (%d dropped at the receiver, %d timeouts)", m[1], lead, len(payload)>>20, dropped, timeouts)
				}
			}
		})
	}
}

// peerTransfer is a file of random bytes from the left strongSwan peer's
// inner address to the right's, port 5001, through the tunnel. Once made,
// the right peer is listening; sender is the command to run in the left
// namespace.
type peerTransfer struct {
	payload []byte
	out     string
	srv     *Proc
	sender  []string
}

// newPeerTransfer prepares size bytes, sent from source port srcPort (0:
// any), each end giving up after timeout seconds.
func newPeerTransfer(t *testing.T, s *StrongSwan, dir string, size, srcPort, timeout int) *peerTransfer {
	t.Helper()
	return newTransfer(t, s.Bed, dir, size, timeout, SSLeftInner, srcPort, s.Right, SSRightInner)
}

// newTransfer is newPeerTransfer between any two namespaces: the receiver
// listens on toAddr:5001 in namespace to (started here), the sender (to
// start in the namespace that holds fromAddr) sends from fromAddr:srcPort.
func newTransfer(t *testing.T, b *Bed, dir string, size, timeout int, fromAddr string, srcPort int, to, toAddr string) *peerTransfer {
	t.Helper()
	x := &peerTransfer{payload: make([]byte, size), out: filepath.Join(dir, "out")}
	rand.Read(x.payload)
	in := filepath.Join(dir, "in")
	must(t, os.WriteFile(in, x.payload, 0o600))
	var err error
	x.srv, err = b.Start(to, "sh", "-c", fmt.Sprintf("timeout %d nc -l -s %s -p 5001 > %s", timeout, toAddr, x.out))
	must(t, err)
	must(t, b.WaitListen(to, "tcp", 5001, 5*time.Second))
	script := fmt.Sprintf(`import socket
s = socket.create_connection((%q, 5001), source_address=(%q, %d))
s.sendall(open(%q, "rb").read())
s.shutdown(socket.SHUT_WR)
s.recv(1)`, toAddr, fromAddr, srcPort, in)
	x.sender = []string{"timeout", strconv.Itoa(timeout), "/usr/bin/python3", "-c", script}
	return x
}

// received waits for the receiver and says what is wrong with what it got.
func (x *peerTransfer) received() error {
	if err := x.srv.Wait(30 * time.Second); err != nil {
		got, _ := os.ReadFile(x.out)
		return fmt.Errorf("receiver, after %d of %d bytes: %w", len(got), len(x.payload), err)
	}
	if got, _ := os.ReadFile(x.out); !bytes.Equal(got, x.payload) {
		return fmt.Errorf("received %d of %d bytes, or different bytes", len(got), len(x.payload))
	}
	return nil
}

var (
	// splitACKSlack is the engine's ackSlack: how many packets split may
	// send in an endpoint's name beyond the endpoint's own before its
	// ACKs wait for the endpoint's.
	splitACKSlack = 64
	leadRE        = regexp.MustCompile(`gateway sa (.*?): owned true .* lead (-?\d+)`)
	leadDstRE     = regexp.MustCompile(`dst=(\S+)`)
)

// TestGatewayHosts: espep's gateway between two espep host endpoints, for
// what strongSwan cannot do here — transport mode, raw ESP, AH, AH+ESP,
// IPv6, ESP in UDP, each transform family (the host cases): the Linux
// kernel's TCP in namespaces a and b, the gateway (espep linkem --sa, split
// or snoop) in m with 1 % loss toward b. The file arrives intact, both
// hosts open every packet they get (no ICV, replay or policy failure),
// tshark and scapy verify the IPsec on a's side of the gateway — what the
// gateway re-sealed — and the gateway opened, sealed and worked on the
// flow.
func TestGatewayHosts(t *testing.T) {
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	for _, c := range hostCases {
		for _, mode := range []string{"split", "snoop"} {
			if mode == "snoop" && c.name != "esp-tunnel-gcm" && c.name != "ah+esp-transport" {
				continue // snoop on two cases; split on every one
			}
			t.Run(c.name+"-"+mode, func(t *testing.T) {
				p := startHostPairVia(t, c, true, []string{"linkem", "--a", "xa", "--b", "xb", "--sa", "{sa}", "--state-dir", "{state}", "--mode", mode,
					"--rate", "50mbit", "--delay", "5ms", "--queue", "200p", "--ab.loss", "1%", "--seed", "3"})
				hostTransfer(t, c, p, payload)
				gc, ec := counters(p.mid.Output(), "gateway:"), counters(p.mid.Output(), "engine:")
				t.Logf("gateway %v\nengine %v", gc, ec)
				if gc["opened"] < 500 || gc["sealed"] < 500 || gc["icv-failures"]+gc["nonce-downgrades"]+gc["seal-errors"]+gc["replays"] != 0 {
					t.Fatalf("the gateway did not take the flow over:\n%s", lastLines([]byte(p.mid.Output()), 8))
				}
				if mode == "split" && ec["early-acked"] < len(payload) || mode == "snoop" && ec["cached"] < 500 {
					t.Fatalf("the engine did not work on the flow: %v", ec)
				}
			})
		}
	}
}

// espPacketsIn is the inbound packet count of a peer's CHILD_SA, as
// swanctl --list-sas shows it ("in  c1234567, 1000 bytes, 10 packets").
func espPacketsIn(t *testing.T, s *StrongSwan, side string) int {
	t.Helper()
	sas, err := s.SAs(side)
	must(t, err)
	for _, line := range strings.Split(sas, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "in" {
			for i := 1; i+1 < len(f); i++ {
				if strings.HasPrefix(f[i+1], "packets") {
					n, err := strconv.Atoi(f[i])
					must(t, err)
					return n
				}
			}
			return 0 // no traffic yet: swanctl leaves the counts out
		}
	}
	t.Fatalf("%s: no inbound CHILD_SA in\n%s", side, sas)
	return 0
}

// countESP counts the ESP packets (not IKE, not keepalives) in a capture.
func countESP(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	r, err := pcapio.NewReader(f)
	must(t, err)
	n := 0
	for {
		rec, err := r.Next()
		if err != nil {
			break
		}
		off, _, ok, err := pcapio.IPOffset(r.LinkType, rec.Data)
		if err != nil || !ok {
			continue
		}
		if l, err := ipsec.Locate(rec.Data[off:]); err == nil && l.Kind == ipsec.KindESP {
			n++
		}
	}
	return n
}

// giveKeys waits for the CHILD_SA (a ping through the tunnel), takes its
// keys from charon's log and appends them to the gateway's SA file, as
// strongSwan's save-keys plugin would, then waits until the gateway has
// loaded them. With saPath empty it only waits for the tunnel.
func giveKeys(t *testing.T, s *StrongSwan, saPath string, espSA bool) []ipsec.Config {
	t.Helper()
	if out, err := s.Bed.Run(s.Left, "ping", "-c", "2", "-i", "0.2", "-I", SSLeftInner, SSRightInner); err != nil {
		t.Fatalf("ping through the tunnel: %v\n%s", err, out)
	}
	if saPath == "" {
		return nil
	}
	cfgs := charonKeys(t, s, "left")
	var sa bytes.Buffer
	if espSA {
		// What save-keys writes: no mode, no ports; the gateway learns the
		// outer form from the packets.
		skipped, err := safile.WriteESPSA(&sa, cfgs)
		if err != nil || len(skipped) != 0 {
			t.Fatalf("esp_sa lines: %v, %d skipped", err, len(skipped))
		}
	} else {
		for i := range cfgs {
			cfgs[i].EncapSrcPort, cfgs[i].EncapDstPort = 4500, 4500 // libipsec's tunnel is in UDP
		}
		must(t, safile.WriteNative(&sa, cfgs))
	}
	must(t, os.WriteFile(saPath, sa.Bytes(), 0o600))
	// Not just "SAs loaded": the empty file at the start logged that too.
	must(t, waitFor(s.Linkem, fmt.Sprintf(`msg="gateway: SAs loaded" files=1 sas=%d`, len(cfgs)), 5*time.Second))
	return cfgs
}

// charonKeys are the CHILD_SA pair charon's log on side shows.
func charonKeys(t *testing.T, s *StrongSwan, side string) []ipsec.Config {
	t.Helper()
	f, err := os.Open(s.CharonLog(side))
	must(t, err)
	cfgs, err := charonlog.Parse(f, side)
	f.Close()
	if err != nil || len(cfgs) != 2 {
		t.Fatalf("keys from charon's log: %v, %d SAs", err, len(cfgs))
	}
	return cfgs
}

var (
	gatewaySize    = flag.Int("gateway.mb", 4, "megabytes each TestGatewayStrongSwan transfer moves (the issue's figure is 100)")
	gatewayBench   = flag.Bool("gatewaybench", false, "run the strongSwan-through-the-gateway goodput harness")
	gatewayLoss    = flag.String("gatewaybench.loss", "0%,1%,2%,5%", "losses toward the mobile")
	gatewaySecs    = flag.Int("gatewaybench.time", 15, "seconds per run")
	gatewayESP     = flag.String("gatewaybench.esp", "aes128gcm16", "the CHILD_SA's proposal")
	gatewayModes   = flag.String("gatewaybench.modes", "none,split,snoop", "what sits at the base station: none, split, snoop")
	gatewayVerbose = flag.Bool("gatewaybench.v", false, "log the gateway's counters after each run")
)

// TestGatewayGoodput: Linux CUBIC and BBR from the left host to the right
// one through a strongSwan tunnel, a wired leg (RTT 80 ms), espep's gateway
// and a radio (20 Mbit/s, RTT 20 ms, 250 kB queue, loss toward the right
// host): no gateway (the linkem alone), the gateway in split mode, in
// snoop mode. Goodput as a ratio to C·(1−p), every byte IPsec-protected on
// both legs. Run with:
//
//	go test ./internal/testbed -run TestGatewayGoodput -gatewaybench -v
func TestGatewayGoodput(t *testing.T) {
	if !*gatewayBench {
		t.Skip("harness: run with -gatewaybench")
	}
	needStrongSwan(t)
	var rows []string
	for _, loss := range strings.Split(*gatewayLoss, ",") {
		v, err := strconv.ParseFloat(strings.TrimSuffix(loss, "%"), 64)
		must(t, err)
		// TCP payload in a 20 Mbit/s frame stream: a 1400-byte inner packet
		// (libipsec's TUN MTU) carries 1348 bytes of TCP payload and makes a
		// 1478-byte frame (ESP-in-UDP with AES-GCM or ChaCha20-Poly1305, IPv4,
		// Ethernet); 1490 with AES-CBC and HMAC (16-byte IV and padding).
		frame := 1478.0
		if strings.Contains(*gatewayESP, "sha") {
			frame = 1490
		}
		limit := 20 * (1 - v/100) * 1348 / frame
		for _, cc := range []string{"cubic", "bbr"} {
			row := fmt.Sprintf("| %-4s | %-5s |", loss, cc)
			for _, mode := range []string{"none", "split", "snoop"} {
				if !strings.Contains(*gatewayModes, mode) {
					row += "  |"
					continue
				}
				b := ForTest(t)
				dir := t.TempDir()
				flags := append(engineFlags(mode), "--rate", "20mbit", "--delay", "10ms", "--queue", "250kb",
					"--wire.delay", "40ms", "--ab.loss", loss, "--seed", "1")
				saPath := ""
				if mode != "none" {
					saPath = filepath.Join(dir, "gateway.sa")
					must(t, os.WriteFile(saPath, nil, 0o600))
					flags = append(flags, "--sa", saPath, "--state-dir", filepath.Join(dir, "state"))
				}
				s, err := NewStrongSwan(b, espepBin, dir, flags...)
				must(t, err)
				must(t, s.StartCharon(*gatewayESP))
				giveKeys(t, s, saPath, false)
				srv, err := b.Start(s.Right, "iperf3", "-s", "-1", "-p", "5201", "-B", SSRightInner)
				must(t, err)
				must(t, b.WaitListen(s.Right, "tcp", 5201, 5*time.Second))
				out, err := b.Run(s.Left, "iperf3", "-c", SSRightInner, "-B", SSLeftInner, "-p", "5201", "--json",
					"-C", cc, "-t", strconv.Itoa(*gatewaySecs), "-O", "2")
				if err != nil {
					t.Fatalf("iperf3: %v\n%s", err, out)
				}
				srv.Wait(5 * time.Second)
				r, err := ParseIperf(out)
				must(t, err)
				gp := r.End.SumReceived.BitsPerSecond / 1e6
				row += fmt.Sprintf(" %6.2f (%.2f) |", gp, gp/limit)
				if *gatewayVerbose {
					s.Linkem.Signal(syscall.SIGTERM)
					s.Linkem.Wait(5 * time.Second)
					t.Logf("%s %s %s: %.2f Mbit/s, retransmits %d\n%s", loss, cc, mode, gp, r.End.SumSent.Retransmits, lastLines([]byte(s.Linkem.Output()), 6))
				}
				b.Close()
			}
			rows = append(rows, row)
			t.Log(row)
		}
	}
	t.Logf("Linux TCP through strongSwan (%s, UDP-encapsulated tunnel), wired RTT 80 ms + radio 20 Mbit/s RTT 20 ms; Mbit/s (ratio to C·(1−p)):\n"+
		"| loss | sender | no gateway | gateway split | gateway snoop |\n|---|---|---|---|---|\n%s", *gatewayESP, strings.Join(rows, "\n"))
}

// TestGatewayTUN: espep gateway in its TUN mode (--wire tun:… --radio
// tun:… and a --config file for the rest) in a router namespace whose
// kernel forwards, policy routing steering each side's traffic into its
// device; two espep hosts with an ESP tunnel through it. The file arrives
// intact, both hosts open every packet, and the gateway split the flow.
func TestGatewayTUN(t *testing.T) {
	b := ForTest(t)
	p, c, g, start := tunGatewaySetup(t, b, "10.82", "10.78", "buffer-per-flow = 2MiB\n")
	p.mid = start()
	// routes = yes: the gateway brought its devices up and installed the
	// rules.
	out, err := b.Run(g, "ip", "rule", "show")
	must(t, err)
	rules := string(out)
	if !strings.Contains(rules, "iif ga lookup 100") || !strings.Contains(rules, "iif gb lookup 101") {
		t.Fatalf("the gateway's rules are not installed:\n%s", rules)
	}
	p.startHosts(t, c, nil)

	payload := make([]byte, 1<<20)
	rand.Read(payload)
	hostTransfer(t, c, p, payload)
	gc, ec := counters(p.mid.Output(), "gateway:"), counters(p.mid.Output(), "engine:")
	t.Logf("gateway %v\nengine %v", gc, ec)
	if gc["opened"] < 500 || gc["sealed"] < 500 || gc["icv-failures"]+gc["seal-errors"]+gc["replays"] != 0 {
		t.Fatalf("the gateway did not take the tunnel over:\n%s", lastLines([]byte(p.mid.Output()), 8))
	}
	if ec["early-acked"] < len(payload) {
		t.Fatalf("the engine did not split the flow: %v", ec)
	}
	// On exit the gateway removed its rules (the devices, and their
	// routes, went with it); hostTransfer stopped it.
	for _, fam := range []string{"-4", "-6"} {
		out, err := b.Run(g, "ip", fam, "rule", "show")
		must(t, err)
		if after := string(out); strings.Contains(after, "iif ga") || strings.Contains(after, "iif gb") {
			t.Fatalf("the gateway left its rules behind:\n%s", after)
		}
	}
	if links, _ := b.Run(g, "ip", "link", "show"); strings.Contains(string(links), "gw-wire") {
		t.Fatalf("the gateway left its devices behind:\n%s", links)
	}
}

// captureESP captures the ESP packets toward each strongSwan peer where
// the middle box puts them on the wire (every ESP packet passes it): at
// the peers, GRO (the veths keep their offloads) may merge several into
// one frame before the capture sees them. By destination, with a large
// capture buffer: at these rates tcpdump's default one (and -Q out) lost
// frames. It returns the files by side ("left", "right") and the
// captures, to stop.
func captureESP(t *testing.T, s *StrongSwan, dir string) (map[string]string, []*Proc) {
	t.Helper()
	caps := map[string]string{"left": filepath.Join(dir, "left.pcap"), "right": filepath.Join(dir, "right.pcap")}
	var dumps []*Proc
	for side := range caps {
		ifc := map[string]string{"left": "ra", "right": "rb"}[side]
		peer := map[string]string{"left": SSLeftOuter, "right": SSRightOuter}[side]
		d, err := s.Bed.Start(s.Radio, "tcpdump", "-U", "--immediate-mode", "-B", "65536", "-ni", ifc, "-w", caps[side], "udp port 4500 and dst host "+peer)
		must(t, err)
		must(t, s.Bed.WaitFile(caps[side], 5*time.Second))
		dumps = append(dumps, d)
	}
	return caps, dumps
}

// tunGatewaySetup builds TestGatewayTUN's network: routedThree on net
// ("10.82": a, g and b), espep hosts a and b with an AES-GCM tunnel
// between inner addresses in ("10.78"), and the configuration of an espep
// gateway in g in TUN mode with routes = yes, split, and the lines extra;
// start starts that gateway (the hosts are not started).
func tunGatewaySetup(t *testing.T, b *Bed, net, in, extra string) (p *hostPair, c hostCase, g string, start func() *Proc) {
	t.Helper()
	dir := t.TempDir()
	ns := routedThree(t, b, net)
	g = ns["g"]
	c = hostCase{name: "esp-tunnel-gcm", mode: "tunnel", proto: "esp", enc: "aes-gcm16", ekey: 36, integ: "none"}
	p = &hostPair{b: b, a: ns["a"], bn: ns["b"], dir: dir, la: in + ".1.1", lb: in + ".2.1"}
	p.saPath = filepath.Join(dir, "sa.conf")
	must(t, os.WriteFile(p.saPath, []byte(c.saFile(net+".1.1", net+".2.1")), 0o600))
	conf := filepath.Join(dir, "gateway.conf")
	must(t, os.WriteFile(conf, []byte("espep-gateway 1\nwire = tun:gw-wire\nradio = tun:gw-radio\nroutes = yes\nwire-iface = ga\nradio-iface = gb\n"+
		"sa-file = sa.conf\nstate-dir = state\nmode = split\n"+extra), 0o600))
	start = func() *Proc {
		mid, err := b.Start(g, espepBin, "gateway", "--config", conf)
		must(t, err)
		must(t, waitFor(mid, "gateway running", 10*time.Second))
		return mid
	}
	return p, c, g, start
}

// TestGatewayLeavesPath: what the package doc says happens when the
// gateway dies for good, with strongSwan at both ends. After a transfer
// through the gateway (split, with a state directory), it is SIGKILLed and
// a plain bridge takes its place: the receivers have seen the gateway's
// numbers, and refuse the endpoints' own until they pass them — the
// gateway's lead, which is its own resends (no jump: the state directory
// covers restarts). Pings every 10 ms from the left show how many
// packets that costs; then the tunnel carries traffic again, with no
// rekey.
func TestGatewayLeavesPath(t *testing.T) {
	needStrongSwan(t)
	b := ForTest(t)
	dir := t.TempDir()
	saPath := filepath.Join(dir, "gateway.sa")
	must(t, os.WriteFile(saPath, nil, 0o600))
	s, err := NewStrongSwanWith(b, espepBin, dir, []string{"linkem", "--a", "ra", "--b", "rb", "--mode", "split", "--sa", saPath,
		"--state-dir", filepath.Join(dir, "state"), "--ab.loss", "1%", "--seed", "3"})
	must(t, err)
	must(t, s.StartCharon("aes128gcm16"))
	giveKeys(t, s, saPath, false)
	send := func(size int) error {
		out := filepath.Join(dir, "out")
		os.Remove(out)
		payload := make([]byte, size)
		rand.Read(payload)
		in := filepath.Join(dir, "in")
		must(t, os.WriteFile(in, payload, 0o600))
		srv, err := b.Start(s.Right, "sh", "-c", fmt.Sprintf("timeout 20 nc -l -s %s -p 5001 > %s", SSRightInner, out))
		must(t, err)
		must(t, b.WaitListen(s.Right, "tcp", 5001, 5*time.Second))
		if o, err := b.Run(s.Left, "sh", "-c", fmt.Sprintf("timeout 20 nc -N -w 5 -s %s %s 5001 < %s", SSLeftInner, SSRightInner, in)); err != nil {
			return fmt.Errorf("send: %v\n%s", err, o)
		}
		srv.Wait(10 * time.Second)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, payload) {
			return fmt.Errorf("received %d of %d bytes", len(got), size)
		}
		return nil
	}
	if err := send(4 << 20); err != nil {
		t.Fatalf("through the gateway: %v\n%s", err, lastLines([]byte(s.Linkem.Output()), 12))
	}
	s.Linkem.Signal(syscall.SIGKILL)
	s.Linkem.Wait(5 * time.Second)

	// The gateway is gone; a plain bridge takes its place.
	s.Linkem, err = b.Start(s.Radio, espepBin, "linkem", "--a", "ra", "--b", "rb")
	must(t, err)
	must(t, waitFor(s.Linkem, " running", 10*time.Second))
	out, _ := b.Run(s.Left, "ping", "-c", "1500", "-i", "0.01", "-W", "1", "-I", SSLeftInner, SSRightInner)
	first := -1
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.Index(l, "icmp_seq="); i >= 0 && strings.Contains(l, "bytes from") {
			fmt.Sscanf(l[i+len("icmp_seq="):], "%d", &first)
			break
		}
	}
	t.Logf("after the gateway died for good, the first ping answered was number %d (10 ms apart)", first)
	if first < 0 || first > 1000 {
		t.Fatalf("the tunnel carried nothing for %d pings after the gateway died:\n%s", first, lastLines(out, 4))
	}
	must(t, send(256<<10))
}

// routedThree makes namespaces a, g and b, a—g—b over veths, with
// NET.1.0/24 between a and g and NET.2.0/24 between g and b (a at .1.1, b
// at .2.1, g at .254 on both), g routing between them with reverse-path
// filtering off: where TUN-mode tests put espep gateway.
func routedThree(t *testing.T, b *Bed, net string) map[string]string {
	t.Helper()
	ns := map[string]string{}
	for _, n := range []string{"a", "g", "b"} {
		x, err := b.NS(n)
		must(t, err)
		ns[n] = x
	}
	g := ns["g"]
	must(t, b.Veth(ns["a"], "a0", g, "ga"))
	must(t, b.Veth(g, "gb", ns["b"], "b0"))
	must(t, b.Addr(ns["a"], "a0", net+".1.1/24"))
	must(t, b.Addr(g, "ga", net+".1.254/24"))
	must(t, b.Addr(g, "gb", net+".2.254/24"))
	must(t, b.Addr(ns["b"], "b0", net+".2.1/24"))
	must(t, b.IP(ns["a"], "route", "add", "default", "via", net+".1.254"))
	must(t, b.IP(ns["b"], "route", "add", "default", "via", net+".2.254"))
	for _, sc := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		_, err := b.Run(g, "sysctl", "-qw", sc)
		must(t, err)
	}
	return ns
}
