package testbed

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/internal/host"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
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
	i := strings.LastIndex(out, prefix)
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

// hostPair is two espep hosts in namespaces a and b on one veth, with a
// capture running on a's side.
type hostPair struct {
	b               *Bed
	a, bn           string
	ha, hb, dump    *Proc
	mid             *Proc // the espep command between a and b, if any
	dir, la, lb     string
	saPath, capPath string
}

func startHostPair(t *testing.T, c hostCase) *hostPair { return startHostPairOpt(t, c, true) }

func startHostPairOpt(t *testing.T, c hostCase, capture bool) *hostPair {
	return startHostPairVia(t, c, capture, nil)
}

// startHosts writes the two hosts' configurations for case c (each passed
// through edit, if given), starts a capture on a0 in a and the two espep
// hosts, and waits for them; p's namespaces, addresses and SA file are
// set.
func (p *hostPair) startHosts(t *testing.T, c hostCase, edit func(string) string) {
	t.Helper()
	if edit == nil {
		edit = func(s string) string { return s }
	}
	ta, tb := "", ""
	if c.mode == "tunnel" {
		ta, tb = p.la, p.lb
	}
	b := p.b
	ca, cb := filepath.Join(p.dir, "a.conf"), filepath.Join(p.dir, "b.conf")
	must(t, os.WriteFile(ca, []byte(edit(c.hostConfig(p.saPath, p.la, p.lb, ta, 0x1001))), 0o600))
	must(t, os.WriteFile(cb, []byte(edit(c.hostConfig(p.saPath, p.lb, p.la, tb, 0x1002))), 0o600))
	var err error
	must(t, segmentBeforeCapture(b, p.a, "a0"))
	p.capPath = filepath.Join(p.dir, "wire.pcap")
	p.dump, err = b.Start(p.a, "tcpdump", "-U", "--immediate-mode", "-ni", "a0", "-w", p.capPath, "not arp")
	must(t, err)
	must(t, b.WaitFile(p.capPath, 5*time.Second))
	p.ha, err = b.Start(p.a, espepBin, "host", "--config", ca)
	must(t, err)
	p.hb, err = b.Start(p.bn, espepBin, "host", "--config", cb)
	must(t, err)
	must(t, waitFor(p.ha, "espep host running", 10*time.Second))
	must(t, waitFor(p.hb, "espep host running", 10*time.Second))
}

// startHostPairVia is startHostPairOpt with, when middle is given, a third
// namespace m between a and b in which the espep command middle bridges
// xa (toward a, the wire side) and xb (toward b, the radio side); its
// arguments may name the SA file as {sa} and a state directory as {state}.
func startHostPairVia(t *testing.T, c hostCase, capture bool, middle []string) *hostPair {
	t.Helper()
	return startHostPairMid(t, c, pairOpts{capture: capture, middle: middle})
}

// startHostPairRouted is startHostPairVia with m a router: a on
// 10.77.1.0/24, b on 10.77.2.0/24, m forwarding between them (xa
// 10.77.1.254, xb 10.77.2.254) — so a gateway in TUN mode can sit there;
// with middle nil the kernel forwards. IPv4 outer addresses only.
// With boxes, a and b run on CPU 0 and m on CPU 1, each namespace's
// arriving packets handled on its own CPU (Bed.Box): the router as a
// machine of its own, whose cost does not slow the hosts.
func startHostPairRouted(t *testing.T, c hostCase, middle []string, boxes bool) *hostPair {
	t.Helper()
	if c.outer6 {
		t.Fatal("startHostPairRouted: IPv4 outer addresses only")
	}
	return startHostPairMid(t, c, pairOpts{middle: middle, routed: true, boxes: boxes})
}

// pairOpts says how startHostPairMid builds a pair.
type pairOpts struct {
	capture bool     // tcpdump on a0
	middle  []string // the espep command in m, if any
	routed  bool     // m routes between two subnets
	boxes   bool     // a and b on CPU 0, m on CPU 1 (Bed.Box); needs m
}

// profiles numbers the middles' profiles within a run.
var profiles int

func startHostPairMid(t *testing.T, c hostCase, o pairOpts) *hostPair {
	t.Helper()
	capture, middle, routed := o.capture, o.middle, o.routed
	b := ForTest(t)
	p := &hostPair{b: b, dir: t.TempDir()}
	var err error
	p.a, err = b.NS("a")
	must(t, err)
	p.bn, err = b.NS("b")
	must(t, err)
	a, bn, dir := p.a, p.bn, p.dir
	var m string
	if middle == nil && !routed {
		must(t, b.Veth(a, "a0", bn, "b0"))
	} else {
		m, err = b.NS("m")
		must(t, err)
		must(t, b.Veth(a, "a0", m, "xa"))
		must(t, b.Veth(m, "xb", bn, "b0"))
	}
	if o.boxes {
		if m == "" {
			t.Fatal("startHostPairMid: boxes needs a middle namespace")
		}
		must(t, b.Box(a, "0", "a0"))
		must(t, b.Box(bn, "0", "b0"))
		must(t, b.Box(m, "1", "xa", "xb"))
	}
	oa, ob, plen := "10.77.1.1", "10.77.1.2", "/24"
	if c.outer6 {
		oa, ob, plen = "fd00:77::1", "fd00:77::2", "/64"
	}
	if routed {
		ob = "10.77.2.1"
	}
	// nodad: the address is usable at once (no duplicate detection wait)
	must(t, b.IP(a, "addr", "add", oa+plen, "dev", "a0", "nodad"))
	must(t, b.IP(bn, "addr", "add", ob+plen, "dev", "b0", "nodad"))
	if routed {
		must(t, b.Addr(m, "xa", "10.77.1.254/24"))
		must(t, b.Addr(m, "xb", "10.77.2.254/24"))
		must(t, b.IP(a, "route", "add", "default", "via", "10.77.1.254"))
		must(t, b.IP(bn, "route", "add", "default", "via", "10.77.2.254"))
		for _, sc := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
			_, err := b.Run(m, "sysctl", "-qw", sc)
			must(t, err)
		}
	}
	la, lb, ta, tb := oa, ob, "", ""
	if c.mode == "tunnel" {
		la, lb = "10.78.1.1", "10.78.2.1"
		if c.inner6 {
			la, lb = "fd00:78:1::1", "fd00:78:2::1"
		}
		ta, tb = la, lb
	}
	p.la, p.lb = la, lb
	p.saPath = filepath.Join(dir, "sa.conf")
	must(t, os.WriteFile(p.saPath, []byte(c.saFile(oa, ob)), 0o600))
	if middle != nil {
		args := make([]string, len(middle))
		for i, x := range middle {
			args[i] = strings.ReplaceAll(strings.ReplaceAll(x, "{sa}", p.saPath), "{state}", filepath.Join(dir, "state"))
		}
		cmd := append([]string{espepBin}, args...)
		// HOSTBENCH_PROFILE=PREFIX writes the middle's CPU profile to
		// PREFIX.<test>.<n> (go tool pprof).
		if prof := os.Getenv("HOSTBENCH_PROFILE"); prof != "" {
			profiles++
			name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
			cmd = append([]string{"env", fmt.Sprintf("ESPEP_CPUPROFILE=%s.%s.%d", prof, name, profiles)}, cmd...)
		}
		p.mid, err = b.Start(m, cmd...)
		must(t, err)
		must(t, waitFor(p.mid, " running", 10*time.Second))
	}
	ca, cb := filepath.Join(dir, "a.conf"), filepath.Join(dir, "b.conf")
	must(t, os.WriteFile(ca, []byte(c.hostConfig(p.saPath, la, lb, ta, 0x1001)), 0o600))
	must(t, os.WriteFile(cb, []byte(c.hostConfig(p.saPath, lb, la, tb, 0x1002)), 0o600))
	if capture {
		must(t, segmentBeforeCapture(b, a, "a0"))
		p.capPath = filepath.Join(dir, "wire.pcap")
		p.dump, err = b.Start(a, "tcpdump", "-U", "--immediate-mode", "-ni", "a0", "-w", p.capPath, "not arp")
		must(t, err)
		must(t, b.WaitFile(p.capPath, 5*time.Second))
	}
	p.ha, err = b.Start(a, espepBin, "host", "--config", ca)
	must(t, err)
	p.hb, err = b.Start(bn, espepBin, "host", "--config", cb)
	must(t, err)
	must(t, waitFor(p.ha, "espep host running", 10*time.Second))
	must(t, waitFor(p.hb, "espep host running", 10*time.Second))
	return p
}

// segmentBeforeCapture turns UDP segmentation off on dev, so that a
// capture there sees each datagram espep host sends in a run (one
// sendmsg with UDP_SEGMENT) as the peer receives it, rather than the one
// super-datagram the kernel hands a device that segments.
func segmentBeforeCapture(b *Bed, ns, dev string) error {
	_, err := b.Run(ns, "ethtool", "-K", dev, "tx-udp-segmentation", "off")
	return err
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

// checkWire: no cleartext TCP of the transfer on the wire, and tshark
// finds every ESP ICV good where it can check.
func checkWire(t *testing.T, c hostCase, capPath, saPath string) {
	t.Helper()
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tshark not installed")
		}
		return
	}
	cfgs, err := safile.Load(saPath)
	must(t, err)
	dir := t.TempDir()
	var uat bytes.Buffer
	skipped, err := safile.WriteESPSA(&uat, cfgs)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "esp_sa"), uat.Bytes(), 0o600))
	cmd := exec.Command(tshark, "-r", capPath, "-o", "esp.enable_encryption_decode:TRUE",
		"-o", "esp.enable_authentication_check:TRUE", "-T", "fields", "-E", "separator=|",
		"-e", "frame.protocols", "-e", "esp.icv_good", "-e", "tcp.port")
	cmd.Env = append(os.Environ(), "WIRESHARK_CONFIG_DIR="+dir, "HOME="+dir)
	out, err := cmd.Output()
	must(t, err)
	var ipsecPkts, good, clear int
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(l, "|")
		if len(f) < 3 {
			continue
		}
		protos := ":" + f[0] + ":"
		switch {
		case strings.Contains(protos, ":esp:") || strings.Contains(protos, ":ah:"):
			ipsecPkts++
			if f[1] == "1" {
				good++
			}
		case strings.Contains(protos, ":tcp:") && strings.Contains(f[2], "5001"):
			clear++
		}
	}
	if clear != 0 || ipsecPkts < 100 {
		t.Fatalf("on the wire: %d IPsec packets, %d cleartext TCP packets of the transfer", ipsecPkts, clear)
	}
	canCheck := c.proto == "esp" && len(skipped) == 0 && c.bundleAH == ""
	if canCheck && good != ipsecPkts {
		t.Fatalf("tshark: %d of %d ESP packets with a good ICV", good, ipsecPkts)
	}
	t.Logf("wire: %d IPsec packets, tshark verified %d ICVs", ipsecPkts, good)
	scapyCheck(t, c, cfgs, capPath, ipsecPkts)
}

// scapyCheck has scapy (an independent implementation) open every IPsec
// packet of the capture, ChaCha20 and AH included.
func scapyCheck(t *testing.T, c hostCase, cfgs []ipsec.Config, capPath string, want int) {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import scapy.layers.ipsec").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3-scapy not installed")
		}
		t.Skip("python3-scapy not installed: the packets were not checked by scapy")
	}
	type sa struct {
		SPI      string `json:"spi"`
		Proto    string `json:"proto"`
		Enc      string `json:"enc"`
		EncKey   string `json:"enc_key"`
		Integ    string `json:"integ"`
		IntegKey string `json:"integ_key"`
		Mode     string `json:"mode"`
		Encap    string `json:"encap"`
		Outer6   bool   `json:"outer6"`
	}
	var list []sa
	for _, x := range cfgs {
		e := "none"
		if x.UDPEncap() {
			e = "udp-4500"
		}
		list = append(list, sa{fmt.Sprintf("0x%08x", x.SPI), x.Proto.String(), x.Enc.String(), hex.EncodeToString(x.EncKey),
			x.Integ.String(), hex.EncodeToString(x.IntegKey), x.Mode.String(), e, x.Dst.Is6()})
	}
	js := filepath.Join(t.TempDir(), "sas.json")
	b, _ := json.Marshal(list)
	must(t, os.WriteFile(js, b, 0o600))
	out, err := exec.Command("/usr/bin/python3", "../../ipsec/testdata/scapy/gen.py", "decrypt-pcap", capPath, js).CombinedOutput()
	wantLine := fmt.Sprintf("scapy opened %d of %d IPsec packets", want, want)
	if err != nil || !strings.Contains(string(out), wantLine) {
		t.Fatalf("scapy: %v\n%s", err, lastLines(out, 8))
	}
	t.Log(wantLine)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
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

var (
	hostBench  = flag.Bool("hostbench", false, "run the espep host throughput harness")
	hostRounds = flag.Int("hostrounds", 1, "rounds of the routed measurement with the router on its own CPU (kernel, split, snoop each round), reported as medians")
)

// TestHostThroughput measures TCP (iperf3, CUBIC) between two namespaces
// over a plain veth and, in the same run, through two espep hosts in
// tunnel mode with AES-GCM-128 (raw ESP, and ESP in UDP) and with AES-CBC
// + HMAC-SHA-256, and reports both and their ratio; then the same hosts
// with espep gateway between them — as a transparent bridge (AF_PACKET)
// and in TUN mode in a router, against the hosts through the kernel's
// forwarding there, on shared CPUs and with the router on a CPU of its
// own — with each process's CPU per megabyte. Without -hostbench it runs
// AES-GCM only, 2 s a run, and holds the gateway's cost with loose bounds
// (the figures are in the README); with it:
//
//	go test ./internal/testbed -run TestHostThroughput -hostbench -v
func TestHostThroughput(t *testing.T) {
	// ESP in UDP: the gateway writes a flow's datagrams coalesced.
	udp := hostCase{name: "esp-tunnel-udp-gcm", mode: "tunnel", udp: true, proto: "esp", enc: "aes-gcm16", ekey: 36, integ: "none"}
	secs, cases := 2, []hostCase{hostCases[2], udp}
	if *hostBench {
		secs = 5
		cases = append(cases, hostCase{name: "esp-tunnel-cbc", mode: "tunnel", proto: "esp", enc: "aes-cbc", ekey: 16, integ: "hmac-sha256-128", ikey: 32})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := startHostPairOpt(t, c, false)
			th := &TwoHosts{Bed: p.b, A: p.a, B: p.bn, BAddr: "10.77.1.2"}
			plain := iperf(t, th, "-t", fmt.Sprint(secs)).End.SumReceived.BitsPerSecond / 1e6
			espep, cpu := hostIperf(t, p, secs)
			t.Logf("%s: plain veth %.0f Mbit/s, through espep host %.0f Mbit/s, ratio %.3f (%s)", c.name, plain, espep, espep/plain, cpu)
			// The same hosts with espep gateway between them (AF_PACKET, a
			// transparent bridge, split), sealing on their SA.
			g := startHostPairVia(t, c, false, []string{"gateway", "--wire", "xa", "--radio", "xb", "--sa", "{sa}", "--state-dir", "{state}"})
			via, cpu := hostIperf(t, g, secs)
			g.mid.Stop()
			gc := counters(g.mid.Output(), "gateway:")
			t.Logf("%s: through espep hosts with espep gateway (AF_PACKET, split) between them %.0f Mbit/s, %.3f of the hosts' own (gateway sealed %d; %s)", c.name, via, via/espep, gc["sealed"], cpu)
			// Loose: 0.24–0.41 here alone since the hosts batch their
			// I/O (0.61–0.65 before, when they were a third as fast);
			// CI runs other packages beside this one.
			if via/espep < 0.12 || gc["sealed"] == 0 {
				t.Errorf("espep gateway between espep hosts: %.3f of their own throughput (sealed %d), want ≥ 0.12", via/espep, gc["sealed"])
			}
			// The gateway's routed mode: m a router, the hosts' own
			// throughput measured through the kernel's forwarding there,
			// then with espep gateway in TUN mode in m, split and snoop —
			// on shared CPUs, and with the router on a CPU of its own.
			hostRouted(t, c, secs, false)
			ratios := map[string][]float64{}
			for range max(*hostRounds, 1) {
				for mode, r := range hostRouted(t, c, secs, true) {
					ratios[mode] = append(ratios[mode], r)
				}
			}
			if *hostRounds > 1 {
				for _, mode := range []string{"split", "snoop"} {
					t.Logf("%s, router on its own CPU, %d rounds: %s of the kernel router, median %.2f (%s)",
						c.name, *hostRounds, mode, median(ratios[mode]), fmtRatios(ratios[mode]))
				}
			}
		})
	}
}

// hostRouted measures espep hosts through a kernel router, then through
// espep gateway in TUN mode, split and snoop, in the router. With boxes
// the hosts share CPU 0 and the router has CPU 1, as on a machine of its
// own (Bed.Box): what the gateway then costs the hosts is what it would
// cost them in the field — being the slower hop — not the processor time
// it takes from them on this two-core machine. It returns each mode's
// throughput as a fraction of the kernel router's.
func hostRouted(t *testing.T, c hostCase, secs int, boxes bool) map[string]float64 {
	t.Helper()
	ratios := map[string]float64{}
	where := "on shared CPUs"
	if boxes {
		where = "router on its own CPU"
	}
	k := startHostPairRouted(t, c, nil, boxes)
	fwd, cpu := hostIperf(t, k, secs)
	kio, _ := hostsIO(k)
	t.Logf("%s, %s: espep hosts through a kernel router %.0f Mbit/s (%s; %s)", c.name, where, fwd, cpu, kio)
	for _, mode := range []string{"split", "snoop"} {
		g := startHostPairRouted(t, c, []string{"gateway", "--wire", "tun:gw-wire", "--radio", "tun:gw-radio", "--routes", "--wire-iface", "xa", "--radio-iface", "xb",
			"--sa", "{sa}", "--state-dir", "{state}", "--mode", mode}, boxes)
		via, cpu := hostIperf(t, g, secs)
		ratios[mode] = via / fwd
		g.mid.Stop()
		gc := counters(g.mid.Output(), "gateway:")
		perWrite, perRead := radioPerWrite(g.mid.Output()), wirePerRead(g.mid.Output())
		gio, extra := hostsIO(g)
		ec := counters(g.mid.Output(), "engine:")
		t.Logf("%s, %s: espep hosts with espep gateway (TUN, %s) in the router %.0f Mbit/s, %.3f of the hosts' own through the kernel router (gateway opened %d, sealed %d, early-acked %d, %.1f packets a read from a, %.1f a write toward b; split's sender held by its cwnd %d times, by its pacer %d, by b's window %d; %d timer wake-ups; %s; %s)\n%s",
			c.name, where, mode, via, via/fwd, gc["opened"], gc["sealed"], ec["early-acked"], perRead, perWrite, ec["cwnd-limited"], ec["pace-limited"], ec["window-limited"], ec["timer-fires"], cpu, gio, ioLine(g.mid.Output()))
		// Split answers host a in b's name, on b's SA, no more often than b
		// does (engine: ackSlack, then one for each of b's packets): the
		// gateway's lead over b stays a few score packets however long the
		// transfer. With an ACK every eighth segment it sent a thousand a
		// second more than b at 1.2 Gbit/s.
		if mode == "split" && extra > maxSplitExtra {
			t.Errorf("espep gateway (TUN, split, %s): host a opened %d packets more on b's SA than b sealed, want ≤ %d", where, extra, maxSplitExtra)
		}
		// ESP in UDP toward b leaves in super-packets the kernel takes
		// (GSO_UDP_L4) and b's host opens: 9–25 datagrams a write
		// here; raw ESP is a write per packet.
		if c.udp && perWrite < 3 {
			t.Errorf("espep gateway (TUN, %s, %s): %.1f ESP-in-UDP packets a write toward b, want them coalesced", mode, where, perWrite)
		}
		// Host a sends runs of datagrams (UDP_SEGMENT), which reach the
		// gateway's TUN whole: ~23 a read here.
		if c.udp && perRead < 3 {
			t.Errorf("espep gateway (TUN, %s, %s): %.1f ESP-in-UDP packets a read from a, want runs of them", mode, where, perRead)
		}
		// Loose: alone, 0.39–0.45 on shared CPUs and 0.53–0.95 with the
		// router on its own (raw ESP at the top, ESP in UDP — where the
		// hosts are fastest — at the bottom); CI runs other packages
		// beside this one.
		want := 0.2
		if boxes {
			want = 0.35
		}
		if via/fwd < want || gc["sealed"] == 0 {
			t.Errorf("espep gateway (TUN, %s, %s) between espep hosts: %.3f of their own throughput (sealed %d), want ≥ %.1f", mode, where, via/fwd, gc["sealed"], want)
		}
	}
	return ratios
}

// median returns the median of xs (the mean of the middle two for an
// even count), 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fmtRatios lists xs with two decimals, in the order measured.
func fmtRatios(xs []float64) string {
	f := make([]string, len(xs))
	for i, x := range xs {
		f[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(f, ", ")
}

// maxSplitExtra bounds the packets split may send in host b's name beyond
// b's own in a run of the host harness: the engine's ackSlack (64) and
// its resends and delayed ACKs, which b's packets pay back.
const maxSplitExtra = 200

// hostsIO stops p's hosts and tells how many packets host b opened and
// in how many TUN writes, and how many it sealed back (its TCP's ACKs):
// what a middle box changes in the hosts' work. extra is how many more
// packets host a opened on b's SA than b sealed: a middle box's own (its
// early ACKs, its resends) — by how far it numbers the SA ahead of b.
//
// It also tells what host b's kernel made of them: how many TCP segments
// (GRO super-packets) it took, how many it joined to its receive queue's
// tail (the reader was behind), and how many ACKs it sent: a receiver
// whose reader keeps up acknowledges more often.
func hostsIO(p *hostPair) (line string, extra int) {
	kb, err := kernelTCPCounters(p.b, p.bn)
	kernel := fmt.Sprintf("host b's TCP took %d segments, joined %d to its queue, sent %d ACKs", kb["InSegs"], kb["TCPRcvCoalesce"], kb["OutSegs"])
	if err != nil {
		kernel = err.Error()
	}
	p.ha.Stop()
	p.hb.Stop()
	sa, sb := hostStats(p.ha.Output()), hostStats(p.hb.Output())
	return fmt.Sprintf("host b opened %d in %d TUN writes, sealed %d back (%s); host a sealed %d, opened %d",
		sb["opened"], sb["tun-writes"], sb["sealed"], kernel, sa["sealed"], sa["opened"]), sa["opened"] - sb["sealed"]
}

// ioLine is espep gateway's exit summary of its devices' I/O.
func ioLine(out string) string {
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, "io: ") {
			return strings.TrimSpace(l)
		}
	}
	return "(no io line)"
}

// radioPerWrite reads from espep gateway's exit summary how many
// packets each write system call toward the radio side carried.
func radioPerWrite(out string) float64 {
	return perCall(out, `radio read \d+ in \d+ batches \(\d+ system calls\), wrote (\d+) in \d+ batches \((\d+) system calls\)`)
}

// wirePerRead reads from espep gateway's exit summary how many packets
// each read system call on the wire side brought.
func wirePerRead(out string) float64 {
	return perCall(out, `wire read (\d+) in \d+ batches \((\d+) system calls\)`)
}

// perCall is the ratio of the two numbers expr finds in out.
func perCall(out, expr string) float64 {
	m := regexp.MustCompile(expr).FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	pkts, _ := strconv.ParseFloat(m[1], 64)
	calls, _ := strconv.ParseFloat(m[2], 64)
	if calls == 0 {
		return 0
	}
	return pkts / calls
}

// hostIperf runs iperf3 for secs seconds from p's host a to host b
// through their tunnel and returns the goodput in Mbit/s and, as text,
// the CPU each espep process (host a, host b, the middle) spent per
// megabyte and how busy each CPU was.
func hostIperf(t *testing.T, p *hostPair, secs int) (mbps float64, cpu string) {
	t.Helper()
	procs := []*Proc{p.ha, p.hb, p.mid}
	names := []string{"host a", "host b", "middle"}
	before := make([]time.Duration, len(procs))
	for i, pr := range procs {
		if pr != nil {
			before[i], _ = pr.CPU()
		}
	}
	cpus, cpuErr := ReadCPUTimes()
	r := iperf(t, &TwoHosts{Bed: p.b, A: p.a, B: p.bn, BAddr: p.lb}, "-t", fmt.Sprint(secs), "-B", p.la)
	mb := r.End.SumReceived.Bytes / 1e6
	var parts []string
	for i, pr := range procs {
		if pr == nil || mb == 0 {
			continue
		}
		after, err := pr.CPU()
		if err != nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2f ms CPU/MB", names[i], (after-before[i]).Seconds()*1e3/mb))
	}
	// Which CPU ran out: the processes' own time misses the kernel's
	// forwarding in softirq.
	if later, err := ReadCPUTimes(); cpuErr == nil && err == nil {
		parts = append(parts, "CPUs busy: "+cpus.Busy(later))
	}
	return r.End.SumReceived.BitsPerSecond / 1e6, strings.Join(parts, ", ")
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
