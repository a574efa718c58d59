package testbed

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

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
