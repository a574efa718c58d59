package testbed

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/host"
)

type hostCase struct {
	name  string
	mode  string // transport | tunnel
	udp   bool
	proto string // esp | ah
	enc   string
	ekey  int
	integ string
	ikey  int
	life  string // lifetime of the a→b SA, native syntax
	// outer6: the hosts talk IPv6; inner6: tunnel-mode inner addresses are IPv6
	outer6, inner6 bool
	// bundleAH, if set, wraps the ESP in transport-mode AH with this
	// integrity transform (SAs 0x1003 a→b and 0x1004 b→a)
	bundleAH string
}

var hostCases = []hostCase{
	{name: "esp-transport-gcm", mode: "transport", proto: "esp", enc: "aes-gcm16", ekey: 20, integ: "none"},
	{name: "esp-transport-udp-cbc", mode: "transport", udp: true, proto: "esp", enc: "aes-cbc", ekey: 16, integ: "hmac-sha256-128", ikey: 32},
	{name: "esp-tunnel-gcm", mode: "tunnel", proto: "esp", enc: "aes-gcm16", ekey: 36, integ: "none"},
	{name: "esp-tunnel-udp-chacha", mode: "tunnel", udp: true, proto: "esp", enc: "chacha20-poly1305", ekey: 36, integ: "none"},
	{name: "ah-transport-sha256", mode: "transport", proto: "ah", integ: "hmac-sha256-128", ikey: 32},
	{name: "ah-tunnel-sha1", mode: "tunnel", proto: "ah", integ: "hmac-sha1-96", ikey: 20},
	{name: "v6-esp-transport-gcm", mode: "transport", proto: "esp", enc: "aes-gcm16", ekey: 20, integ: "none", outer6: true},
	{name: "v6-esp-tunnel-udp-ctr-v4inside", mode: "tunnel", udp: true, proto: "esp", enc: "aes-ctr", ekey: 20, integ: "hmac-sha384-192", ikey: 48, outer6: true},
	{name: "v6-esp-tunnel-cbc-v6inside", mode: "tunnel", proto: "esp", enc: "aes-cbc", ekey: 32, integ: "hmac-sha512-256", ikey: 64, outer6: true, inner6: true},
	{name: "v6-ah-transport-sha256", mode: "transport", proto: "ah", integ: "hmac-sha256-128", ikey: 32, outer6: true},
	{name: "ah+esp-transport", mode: "transport", proto: "esp", enc: "aes-cbc", ekey: 16, integ: "hmac-sha256-128", ikey: 32, bundleAH: "hmac-sha256-128"},
	{name: "ah+esp-tunnel", mode: "tunnel", proto: "esp", enc: "aes-gcm16", ekey: 20, integ: "none", bundleAH: "hmac-sha1-96"},
}

func keyHex(n int, seed byte) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)*13
	}
	return fmt.Sprintf("0x%x", b)
}

// saFile writes the two SAs (a→b 0x1001, b→a 0x1002) of a case.
func (c hostCase) saFile(aOut, bOut string) string {
	var b strings.Builder
	b.WriteString("espep-sa 1\n")
	for i, d := range [][2]string{{aOut, bOut}, {bOut, aOut}} {
		fmt.Fprintf(&b, "\n[sa]\nspi = %#x\nproto = %s\nsrc = %s\ndst = %s\nmode = %s\n", 0x1001+i, c.proto, d[0], d[1], c.mode)
		if c.udp {
			b.WriteString("encap = udp 4500 4500\n")
		}
		if c.proto == "esp" {
			fmt.Fprintf(&b, "enc = %s\nenc-key = %s\n", c.enc, keyHex(c.ekey, byte(i+1)))
		}
		fmt.Fprintf(&b, "integ = %s\n", c.integ)
		if i == 0 && c.life != "" {
			fmt.Fprintf(&b, "lifetime = %s\n", c.life)
		}
		if c.ikey > 0 {
			fmt.Fprintf(&b, "integ-key = %s\n", keyHex(c.ikey, byte(i+7)))
		}
	}
	if c.bundleAH != "" {
		n := map[string]int{"hmac-sha1-96": 20, "hmac-sha256-128": 32}[c.bundleAH]
		for i, d := range [][2]string{{aOut, bOut}, {bOut, aOut}} {
			fmt.Fprintf(&b, "\n[sa]\nspi = %#x\nproto = ah\nsrc = %s\ndst = %s\nmode = transport\ninteg = %s\ninteg-key = %s\n",
				0x1003+i, d[0], d[1], c.bundleAH, keyHex(n, byte(i+20)))
		}
	}
	return b.String()
}

// hostConfig is one side's configuration: protect TCP between the two
// (inner) addresses with the side's outbound SA, let everything else pass.
func (c hostCase) hostConfig(saPath, local, remote, tunAddr string, outSPI int) string {
	host := func(a string) string {
		if strings.Contains(a, ":") {
			return a + "/128"
		}
		return a + "/32"
	}
	s := fmt.Sprintf("espep-host 1\n\n[host]\ntun = esp0\nsa-file = %s\nroute = %s\nstate-dir = state-%x\n", saPath, host(remote), outSPI)
	if tunAddr != "" {
		s += "addr = " + host(tunAddr) + "\n"
	}
	s += fmt.Sprintf("\n[policy]\nname = protect-tcp\nlocal = %s\nremote = %s\nproto = tcp\naction = protect\nsa = %#x\n", local, remote, outSPI)
	if c.bundleAH != "" {
		s += fmt.Sprintf("sa = %#x\n", outSPI+2) // AH around the ESP
	}
	s += "\n[policy]\nname = rest\naction = bypass\n"
	return s
}

var counterRE = regexp.MustCompile(`([a-z-]+) (\d+)`)

// counters reads the "name N" pairs of the last output line that starts
// with prefix (espep host's and linkem's engine counter lines).
func counters(out, prefix string) map[string]int {
	m := map[string]int{}
	// At a line's start: a log line after it may name the prefix too
	// ("… msg=\"gateway: flows kept …\"").
	i := strings.LastIndex("\n"+out, "\n"+prefix)
	if i < 0 {
		return m
	}
	line, _, _ := strings.Cut(out[i:], "\n")
	for _, x := range counterRE.FindAllStringSubmatch(line, -1) {
		m[x[1]], _ = strconv.Atoi(x[2])
	}
	return m
}

func hostStats(out string) map[string]int { return counters(out, "espep host:") }

// TestHostFileTransfer: two espep host instances in namespaces, the Linux
// kernel's TCP between them, a 1 MB file with matching SHA-256, for each
// mode, encapsulation and transform family; the packets on the wire are
// checked by tshark (ESP ICV, not for ChaCha20 or AH, which Wireshark 4.0
// cannot verify) and the hosts' counters show that everything went
// through IPsec.
func TestHostFileTransfer(t *testing.T) {
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	for _, c := range hostCases {
		t.Run(c.name, func(t *testing.T) {
			hostTransfer(t, c, startHostPair(t, c), payload)
		})
	}
}

// hostTransfer sends payload from host a to host b over TCP (nc), checks
// its SHA-256, stops the hosts (and the command between them), checks
// that their counters show the transfer going through IPsec with nothing
// refused, and has tshark and scapy check the capture.
func hostTransfer(t *testing.T, c hostCase, p *hostPair, payload []byte) {
	t.Helper()
	want := sha256.Sum256(payload)
	b, a, bn, ha, hb, dir, lb, saPath, capPath, dump := p.b, p.a, p.bn, p.ha, p.hb, p.dir, p.lb, p.saPath, p.capPath, p.dump
	in, out := filepath.Join(dir, "in.bin"), filepath.Join(dir, "out.bin")
	must(t, os.WriteFile(in, payload, 0o600))
	srv, err := b.Start(bn, "sh", "-c", fmt.Sprintf("timeout 30 nc -l -s %s -p 5001 > %s", lb, out))
	must(t, err)
	must(t, b.WaitListen(bn, "tcp", 5001, 5*time.Second))
	if o, err := b.Run(a, "sh", "-c", fmt.Sprintf("timeout 30 nc -N -w 10 %s 5001 < %s", lb, in)); err != nil {
		mid := ""
		if p.mid != nil {
			mid = p.mid.Output()
		}
		t.Fatalf("send: %v\n%s\nhost a:\n%s\nhost b:\n%s\nbetween:\n%s", err, o, ha.Output(), hb.Output(), lastLines([]byte(mid), 10))
	}
	must(t, srv.Wait(15*time.Second))
	got, err := os.ReadFile(out)
	must(t, err)
	if sha256.Sum256(got) != want {
		t.Fatalf("received %d bytes, sha256 differs", len(got))
	}
	time.Sleep(200 * time.Millisecond)
	if dump != nil {
		dump.Stop()
	}
	for _, h := range []*Proc{ha, hb, p.mid} {
		if h != nil {
			h.Signal(syscall.SIGTERM)
		}
	}
	for _, h := range []*Proc{ha, hb, p.mid} {
		if h != nil {
			h.Wait(5 * time.Second)
		}
	}
	sa, sb := hostStats(ha.Output()), hostStats(hb.Output())
	t.Logf("host a: %v\nhost b: %v", sa, sb)
	if sa["sealed"] < 100 || sb["opened"] < 100 || sb["sealed"] < 10 || sa["opened"] < 10 ||
		sa["open-errors"]+sb["open-errors"]+sa["policy-drops"]+sb["policy-drops"] != 0 {
		t.Fatalf("counters do not show the transfer going through IPsec with every packet accepted")
	}
	// Batched I/O: what one round of reads opened is one TUN write (here
	// 11–40 packets a write), and a run of ESP in UDP is one send (~20
	// datagrams a send). Only between hosts on one link: with routers and
	// a radio between them (p.mid) packets arrive paced, and rounds are
	// short (1.8 packets a write seen).
	if p.mid == nil && (sb["tun-writes"] == 0 || sb["opened"] < 2*sb["tun-writes"]) {
		t.Errorf("host b wrote %d opened packets in %d TUN writes, want them batched", sb["opened"], sb["tun-writes"])
	}
	if sends := sa["net-sends"] - sa["bypassed"]; c.udp && (sends <= 0 || sa["sealed"] < 3*sends) {
		t.Errorf("host a sent %d sealed datagrams in %d system calls, want runs of them in one", sa["sealed"], sends)
	}
	if capPath != "" {
		checkWire(t, c, capPath, saPath)
	}
}

// TestHostHostileSockets: before a transfer, host b's sockets get what
// anyone on the network can send — UDP 4500 datagrams empty, of one byte
// (a NAT keepalive), with the IKE marker, of every length up to 2,000 with
// SPIs it does not know, runs of them the kernel joins (sent with
// UDP_SEGMENT, down to 1-byte datagrams), and raw ESP and AH of every
// short length. It counts them, and the transfer afterwards goes through
// as if they had not been (the counters' checks in hostTransfer).
func TestHostHostileSockets(t *testing.T) {
	c := hostCases[1] // transport, ESP in UDP: the UDP socket and the raw ones all listen
	p := startHostPairOpt(t, c, false)
	script := `
import os, socket, struct, sys
b = sys.argv[1]
def junk(i, n):
    return (struct.pack("!I", 0xdead0000 + i) + os.urandom(max(0, n - 4)))[:n]
mark = int(sys.argv[2])  # espep host's own mark: past host a's TUN, straight to b
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
sent = 0
for d in [b"", b"\xff", b"\x00" * 4 + os.urandom(40)] + [junk(i, i) for i in range(1, 2001, 7)]:
    u.sendto(d, (b, 4500)); sent += 1
for seg, n in [(200, 64 * 200), (1, 64), (1000, 4500), (3, 10)]:
    u.setsockopt(17, 103, seg)  # UDP_SEGMENT: a run the kernel may hand b's socket joined
    u.sendto(junk(seg, n), (b, 4500)); sent += 1
for proto in (50, 51):
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    r.setsockopt(socket.SOL_SOCKET, 36, mark)
    for i in range(0, 64):
        r.sendto(junk(i, i), (b, 0)); sent += 1
print("hostile sent", sent)
`
	out, err := p.b.Run(p.a, "/usr/bin/python3", "-c", script, "10.77.1.2", fmt.Sprint(host.Mark))
	if err != nil || !strings.Contains(string(out), "hostile sent") {
		t.Fatalf("hostile sender: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if !p.hb.Running() {
		t.Fatalf("host b exited:\n%s", lastLines([]byte(p.hb.Output()), 10))
	}
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	hostTransfer(t, c, p, payload)
	sb := hostStats(p.hb.Output())
	// The runs arrive joined: fewer reads than datagrams.
	if sb["not-ours"] < 300 || sb["ike"] < 1 || sb["keepalives"] < 1 || sb["net-reads"] >= sb["net-in"] {
		t.Errorf("host b counted not-ours %d, ike %d, keepalives %d in %d packets from %d reads; want the hostile packets counted, the runs read joined",
			sb["not-ours"], sb["ike"], sb["keepalives"], sb["net-in"], sb["net-reads"])
	}
}

// TestHostLifetimes: the a→b SA has a soft limit of 100 kB and a hard one
// of 300 kB: the host says so once each, removes the SA at the hard limit,
// and no more than 300 kB of the 1 MB transfer gets through.
func TestHostLifetimes(t *testing.T) {
	c := hostCases[0]
	c.life = "soft-bytes=100000 hard-bytes=300000"
	p := startHostPair(t, c)
	payload := make([]byte, 1<<20)
	in, out := filepath.Join(p.dir, "in.bin"), filepath.Join(p.dir, "out.bin")
	must(t, os.WriteFile(in, payload, 0o600))
	srv, err := p.b.Start(p.bn, "sh", "-c", fmt.Sprintf("timeout 4 nc -l -s %s -p 5001 > %s", p.lb, out))
	must(t, err)
	must(t, p.b.WaitListen(p.bn, "tcp", 5001, 5*time.Second))
	p.b.Run(p.a, "sh", "-c", fmt.Sprintf("timeout 3 nc -N -w 2 %s 5001 < %s", p.lb, in))
	srv.Wait(6 * time.Second)
	p.ha.Signal(syscall.SIGTERM)
	p.ha.Wait(5 * time.Second)
	got, _ := os.ReadFile(out)
	st := hostStats(p.ha.Output())
	if st["soft-expired"] != 1 || st["hard-expired"] != 1 || len(got) > 300000 || len(got) < 100000 {
		t.Fatalf("received %d bytes; host a: %v\n%s", len(got), st, p.ha.Output())
	}
	for _, want := range []string{"soft lifetime reached", "hard lifetime reached: removed"} {
		if strings.Count(p.ha.Output(), want) != 1 {
			t.Fatalf("want one %q in the log:\n%s", want, p.ha.Output())
		}
	}
}

// TestHostRouter is the seed's security gateway: host C has no IPsec and
// sits on a LAN behind router R (espep host, tunnel mode for the LAN);
// terminal T runs espep host itself. C and T exchange a file over TCP.
//
//	[C] c0 10.80.0.2 ── r0 10.80.0.1 [R] rw 10.77.1.1 ── tw 10.77.1.2 [T] esp0 10.78.2.1
func TestHostRouter(t *testing.T) {
	b := ForTest(t)
	dir := t.TempDir()
	var c, r, tm string
	var err error
	for _, x := range []struct {
		dst  *string
		name string
	}{{&c, "c"}, {&r, "r"}, {&tm, "t"}} {
		*x.dst, err = b.NS(x.name)
		must(t, err)
	}
	must(t, b.Veth(c, "c0", r, "r0"))
	must(t, b.Veth(r, "rw", tm, "tw"))
	must(t, b.Addr(c, "c0", "10.80.0.2/24"))
	must(t, b.Addr(r, "r0", "10.80.0.1/24"))
	must(t, b.Addr(r, "rw", "10.77.1.1/24"))
	must(t, b.Addr(tm, "tw", "10.77.1.2/24"))
	must(t, b.IP(c, "route", "add", "default", "via", "10.80.0.1"))
	_, err = b.Run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	must(t, err)
	hc := hostCase{mode: "tunnel", proto: "esp", enc: "aes-gcm16", ekey: 20, integ: "none"}
	saPath := filepath.Join(dir, "sa.conf")
	must(t, os.WriteFile(saPath, []byte(hc.saFile("10.77.1.1", "10.77.1.2")), 0o600))
	rconf := fmt.Sprintf("espep-host 1\n[host]\ntun = esp0\nsa-file = %s\nroute = 10.78.2.1/32\nstate-dir = state-r\n"+
		"[policy]\nname = lan-to-t\nlocal = 10.80.0.0/24\nremote = 10.78.2.1\naction = protect\nsa = 0x1001\n", saPath)
	tconf := fmt.Sprintf("espep-host 1\n[host]\ntun = esp0\nsa-file = %s\naddr = 10.78.2.1/32\nroute = 10.80.0.0/24\nmetrics = 127.0.0.1:9101\nstate-dir = state-t\n"+
		"[policy]\nname = t-to-lan\nlocal = 10.78.2.1\nremote = 10.80.0.0/24\naction = protect\nsa = 0x1002\n", saPath)
	rc, tc := filepath.Join(dir, "r.conf"), filepath.Join(dir, "t.conf")
	must(t, os.WriteFile(rc, []byte(rconf), 0o600))
	must(t, os.WriteFile(tc, []byte(tconf), 0o600))
	hr, err := b.Start(r, espepBin, "host", "--config", rc)
	must(t, err)
	ht, err := b.Start(tm, espepBin, "host", "--config", tc)
	must(t, err)
	must(t, waitFor(hr, "espep host running", 10*time.Second))
	must(t, waitFor(ht, "espep host running", 10*time.Second))

	payload := make([]byte, 1<<20)
	rand.Read(payload)
	in, out := filepath.Join(dir, "in.bin"), filepath.Join(dir, "out.bin")
	must(t, os.WriteFile(in, payload, 0o600))
	srv, err := b.Start(tm, "sh", "-c", fmt.Sprintf("timeout 30 nc -l -s 10.78.2.1 -p 5001 > %s", out))
	must(t, err)
	must(t, b.WaitListen(tm, "tcp", 5001, 5*time.Second))
	if o, err := b.Run(c, "sh", "-c", fmt.Sprintf("timeout 30 nc -N -w 10 10.78.2.1 5001 < %s", in)); err != nil {
		t.Fatalf("send from C: %v\n%s\nrouter:\n%s\nterminal:\n%s", err, o, hr.Output(), ht.Output())
	}
	must(t, srv.Wait(15*time.Second))
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, payload) {
		t.Fatalf("terminal got %d bytes, want the %d sent", len(got), len(payload))
	}
	// The terminal's Prometheus endpoint (in its namespace's loopback).
	m, err := b.Run(tm, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9101; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3")
	if !strings.Contains(string(m), `espep_host_packets_total{event="opened"}`) ||
		!strings.Contains(string(m), `espep_host_sa_in_packets_total{dst="10.77.1.2",proto="esp",spi="0x1001"}`) {
		t.Fatalf("metrics: %v\n%s", err, lastLines(m, 20))
	}
	hr.Signal(syscall.SIGTERM)
	ht.Signal(syscall.SIGTERM)
	hr.Wait(5 * time.Second)
	ht.Wait(5 * time.Second)
	sr, st := hostStats(hr.Output()), hostStats(ht.Output())
	if sr["sealed"] < 50 || st["opened"] < 50 || st["sealed"] < 5 || sr["opened"] < 5 {
		t.Fatalf("router %v\nterminal %v", sr, st)
	}
}

// TestHostReload: SIGHUP in the middle of a TCP transfer reloads the
// configuration — here with one more SA — and the flow carries on: the SAs
// in use keep their sequence counters and replay windows.
func TestHostReload(t *testing.T) {
	c := hostCases[2] // tunnel, GCM
	p := startHostPairOpt(t, c, false)
	th := &TwoHosts{Bed: p.b, A: p.a, B: p.bn, BAddr: p.lb}
	// Add an SA to the file the hosts read; reload picks it up.
	f, err := os.OpenFile(p.saPath, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	fmt.Fprintf(f, "\n[sa]\nspi = 0x2001\nsrc = 10.77.1.1\ndst = 10.77.1.2\nmode = tunnel\nenc = aes-gcm16\nenc-key = %s\n", keyHex(20, 99))
	f.Close()
	go func() {
		time.Sleep(1500 * time.Millisecond) // mid-transfer
		p.ha.Signal(syscall.SIGHUP)
		p.hb.Signal(syscall.SIGHUP)
	}()
	r := iperf(t, th, "-t", "3", "-B", p.la)
	p.ha.Signal(syscall.SIGTERM)
	p.hb.Signal(syscall.SIGTERM)
	p.ha.Wait(5 * time.Second)
	p.hb.Wait(5 * time.Second)
	for _, h := range []*Proc{p.ha, p.hb} {
		if !strings.Contains(h.Output(), "espep host reloaded") || !strings.Contains(h.Output(), "sas=3") {
			t.Fatalf("no reload with the new SA in the log:\n%s", h.Output())
		}
	}
	sa, sb := hostStats(p.ha.Output()), hostStats(p.hb.Output())
	if sa["open-errors"]+sb["open-errors"] != 0 || r.End.SumReceived.BitsPerSecond < 50e6 {
		t.Fatalf("flow hurt by the reload: %.0f Mbit/s, open errors a %d b %d", r.End.SumReceived.BitsPerSecond/1e6, sa["open-errors"], sb["open-errors"])
	}
	t.Logf("%.0f Mbit/s across the reload, no open errors", r.End.SumReceived.BitsPerSecond/1e6)
}

// TestHostKilled: espep host a (AES-GCM tunnel to host b) is SIGKILLed
// three times between TCP transfers to b, and started again with the same
// SA file and state directory. Every ESP packet on a's wire is captured:
// no (SPI, IV) on two different packets — IV = sequence number, and the
// numbers reserved on disk carry over — and b accepts a's packets after
// each restart (its replay window would refuse numbers a used before).
func TestHostKilled(t *testing.T) {
	c := hostCases[2] // tunnel, GCM
	p := startHostPairOpt(t, c, true)
	th := &TwoHosts{Bed: p.b, A: p.a, B: p.bn, BAddr: p.lb}
	ca := filepath.Join(p.dir, "a.conf")
	for i := range 4 {
		if r := iperf(t, th, "-t", "1", "-B", p.la); r.End.SumReceived.Bytes < 1e6 {
			t.Fatalf("round %d: %.0f bytes through the restarted host", i, r.End.SumReceived.Bytes)
		}
		if i == 3 {
			break
		}
		must(t, p.ha.Signal(syscall.SIGKILL))
		p.ha.Wait(5 * time.Second)
		var err error
		p.ha, err = p.b.Start(p.a, espepBin, "host", "--config", ca)
		must(t, err)
		must(t, waitFor(p.ha, "espep host running", 10*time.Second))
	}
	time.Sleep(200 * time.Millisecond)
	p.dump.Stop()
	ivs := newIVTally()
	for _, pk := range readESP(t, p.capPath) {
		ivs.add(pk)
	}
	if ivs.n < 150 || ivs.reuse != 0 {
		t.Fatalf("%d ESP packets, %d (SPI, IV) pairs on two different packets", ivs.n, ivs.reuse)
	}
	t.Logf("%d ESP packets over three SIGKILLs of host a, all (SPI, IV) distinct", ivs.n)
}
