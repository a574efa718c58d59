package testbed

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
}

var hostCases = []hostCase{
	{"esp-transport-gcm", "transport", false, "esp", "aes-gcm16", 20, "none", 0},
	{"esp-transport-udp-cbc", "transport", true, "esp", "aes-cbc", 16, "hmac-sha256-128", 32},
	{"esp-tunnel-gcm", "tunnel", false, "esp", "aes-gcm16", 36, "none", 0},
	{"esp-tunnel-udp-chacha", "tunnel", true, "esp", "chacha20-poly1305", 36, "none", 0},
	{"ah-transport-sha256", "transport", false, "ah", "none", 0, "hmac-sha256-128", 32},
	{"ah-tunnel-sha1", "tunnel", false, "ah", "none", 0, "hmac-sha1-96", 20},
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
		if c.ikey > 0 {
			fmt.Fprintf(&b, "integ-key = %s\n", keyHex(c.ikey, byte(i+7)))
		}
	}
	return b.String()
}

// hostConfig is one side's configuration: protect TCP between the two
// (inner) addresses with the side's outbound SA, let everything else pass.
func (c hostCase) hostConfig(saPath, local, remote, tunAddr string, outSPI int) string {
	s := fmt.Sprintf("espep-host 1\n\n[host]\ntun = esp0\nmtu = 1400\nsa-file = %s\nroute = %s/32\n", saPath, remote)
	if tunAddr != "" {
		s += "addr = " + tunAddr + "/32\n"
	}
	s += fmt.Sprintf("\n[policy]\nname = protect-tcp\nlocal = %s\nremote = %s\nproto = tcp\naction = protect\nsa = %#x\n", local, remote, outSPI)
	s += "\n[policy]\nname = rest\naction = bypass\n"
	return s
}

var hostStatRE = regexp.MustCompile(`([a-z-]+) (\d+)`)

func hostStats(out string) map[string]int {
	i := strings.LastIndex(out, "espep host:")
	m := map[string]int{}
	if i < 0 {
		return m
	}
	for _, x := range hostStatRE.FindAllStringSubmatch(out[i:], -1) {
		m[x[1]], _ = strconv.Atoi(x[2])
	}
	return m
}

// TestHostFileTransfer: two espep host instances in namespaces, the Linux
// kernel's TCP between them, a 2 MB file with matching SHA-256, for each
// mode, encapsulation and transform family; the packets on the wire are
// checked by tshark (ESP ICV, not for ChaCha20 or AH, which Wireshark 4.0
// cannot verify) and the hosts' counters show that everything went
// through IPsec.
func TestHostFileTransfer(t *testing.T) {
	payload := make([]byte, 2<<20)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	for _, c := range hostCases {
		t.Run(c.name, func(t *testing.T) {
			b := ForTest(t)
			dir := t.TempDir()
			a, err := b.NS("a")
			if err != nil {
				t.Fatal(err)
			}
			bn, err := b.NS("b")
			if err != nil {
				t.Fatal(err)
			}
			must(t, b.Veth(a, "a0", bn, "b0"))
			must(t, b.Addr(a, "a0", "10.77.1.1/24"))
			must(t, b.Addr(bn, "b0", "10.77.1.2/24"))
			la, lb, ta, tb := "10.77.1.1", "10.77.1.2", "", ""
			if c.mode == "tunnel" {
				la, lb, ta, tb = "10.78.1.1", "10.78.2.1", "10.78.1.1", "10.78.2.1"
			}
			saPath := filepath.Join(dir, "sa.conf")
			must(t, os.WriteFile(saPath, []byte(c.saFile("10.77.1.1", "10.77.1.2")), 0o600))
			ca, cb := filepath.Join(dir, "a.conf"), filepath.Join(dir, "b.conf")
			must(t, os.WriteFile(ca, []byte(c.hostConfig(saPath, la, lb, ta, 0x1001)), 0o600))
			must(t, os.WriteFile(cb, []byte(c.hostConfig(saPath, lb, la, tb, 0x1002)), 0o600))
			capPath := filepath.Join(dir, "wire.pcap")
			dump, err := b.Start(a, "tcpdump", "-U", "--immediate-mode", "-ni", "a0", "-w", capPath, "not arp")
			must(t, err)
			must(t, b.WaitFile(capPath, 5*time.Second))
			ha, err := b.Start(a, espepBin, "host", "--config", ca)
			must(t, err)
			hb, err := b.Start(bn, espepBin, "host", "--config", cb)
			must(t, err)
			must(t, waitFor(ha, "espep host running", 10*time.Second))
			must(t, waitFor(hb, "espep host running", 10*time.Second))

			in, out := filepath.Join(dir, "in.bin"), filepath.Join(dir, "out.bin")
			must(t, os.WriteFile(in, payload, 0o600))
			srv, err := b.Start(bn, "sh", "-c", fmt.Sprintf("timeout 30 nc -l -s %s -p 5001 > %s", lb, out))
			must(t, err)
			must(t, b.WaitListen(bn, "tcp", 5001, 5*time.Second))
			if o, err := b.Run(a, "sh", "-c", fmt.Sprintf("timeout 30 nc -N -w 10 %s 5001 < %s", lb, in)); err != nil {
				t.Fatalf("send: %v\n%s\nhost a:\n%s\nhost b:\n%s", err, o, ha.Output(), hb.Output())
			}
			must(t, srv.Wait(15*time.Second))
			got, err := os.ReadFile(out)
			must(t, err)
			if sha256.Sum256(got) != want {
				t.Fatalf("received %d bytes, sha256 differs", len(got))
			}
			time.Sleep(200 * time.Millisecond)
			dump.Stop()
			ha.Signal(syscall.SIGTERM)
			hb.Signal(syscall.SIGTERM)
			ha.Wait(5 * time.Second)
			hb.Wait(5 * time.Second)
			sa, sb := hostStats(ha.Output()), hostStats(hb.Output())
			t.Logf("host a: %v\nhost b: %v", sa, sb)
			if sa["sealed"] < 100 || sb["opened"] < 100 || sb["sealed"] < 10 || sa["opened"] < 10 ||
				sa["open-errors"]+sb["open-errors"]+sa["policy-drops"]+sb["policy-drops"] != 0 {
				t.Fatalf("counters do not show the transfer going through IPsec")
			}
			checkWire(t, c, capPath, saPath)
		})
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
		"-e", "ip.proto", "-e", "esp.icv_good", "-e", "tcp.dstport", "-e", "tcp.srcport")
	cmd.Env = append(os.Environ(), "WIRESHARK_CONFIG_DIR="+dir, "HOME="+dir)
	out, err := cmd.Output()
	must(t, err)
	var ipsecPkts, good, clear int
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(l, "|")
		if len(f) < 4 {
			continue
		}
		proto := strings.Split(f[0], ",")[0]
		switch {
		case proto == "50" || proto == "51" || (proto == "17" && c.udp):
			ipsecPkts++
			if f[1] == "1" {
				good++
			}
		case proto == "6" && (f[2] == "5001" || f[3] == "5001"):
			clear++
		}
	}
	if clear != 0 || ipsecPkts < 100 {
		t.Fatalf("on the wire: %d IPsec packets, %d cleartext TCP packets of the transfer", ipsecPkts, clear)
	}
	canCheck := c.proto == "esp" && len(skipped) == 0
	if canCheck && good != ipsecPkts {
		t.Fatalf("tshark: %d of %d ESP packets with a good ICV", good, ipsecPkts)
	}
	t.Logf("wire: %d IPsec packets, tshark verified %d ICVs", ipsecPkts, good)
	_ = ipsec.ESP
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
