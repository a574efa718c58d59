package ipsec_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// needTool finds an interop peer. Outside CI a missing tool skips the test;
// in CI (CI=true, where .ci/run installs them) it fails it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (.ci/run must install it): %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

func needScapy(t *testing.T) string {
	t.Helper()
	py := needTool(t, "/usr/bin/python3")
	if err := exec.Command(py, "-c", "import scapy.layers.ipsec").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3-scapy not installed: %v", err)
		}
		t.Skip("python3-scapy not installed")
	}
	return py
}

// TestScapyOpensEspep seals the plaintext of every scapy vector with
// espep's own IV sources and sequence numbers and has scapy open the result.
func TestScapyOpensEspep(t *testing.T) {
	py := needScapy(t)
	vs := ipsec.LoadScapyVectors(t)
	for i := range vs {
		v := &vs[i]
		sa, err := ipsec.New(v.Config(t))
		if err != nil {
			t.Fatal(err)
		}
		sa.SetOutSeq(v.Seq - 1) // scapy is told the ESN high half from v.Seq
		plain, _ := hex.DecodeString(v.Plain)
		buf, off := ipsec.InBuf(plain)
		wire, err := sa.Seal(buf, off, len(plain))
		if err != nil {
			t.Fatalf("%s: seal: %v", v.Name, err)
		}
		v.Wire = hex.EncodeToString(wire)
	}
	f := filepath.Join(t.TempDir(), "espep.json")
	b, _ := json.Marshal(vs)
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "testdata/scapy/gen.py", "check", f).CombinedOutput()
	want := fmt.Sprintf("scapy opened %d of %d espep packets", len(vs), len(vs))
	if err != nil || !bytes.Contains(out, []byte(want)) {
		t.Fatalf("scapy check: %v\n%s", err, out)
	}
	t.Log(want)
}

// TestTsharkOpensEspep writes espep-sealed ESP packets of every transform
// Wireshark 4.0 knows (all but ChaCha20-Poly1305), in both modes, raw and
// in UDP 4500, over IPv4 and IPv6, and checks that tshark finds every ICV
// good and decrypts the TCP payload espep put in.
func TestTsharkOpensEspep(t *testing.T) {
	tshark := needTool(t, "tshark")
	type tc struct {
		enc          ipsec.Enc
		ekey         int
		integ        ipsec.Integ
		mode         ipsec.Mode
		udp, v6, in6 bool
	}
	var cases []tc
	for _, s := range []struct {
		enc   ipsec.Enc
		ekey  int
		integ ipsec.Integ
	}{
		{ipsec.EncAESGCM16, 20, ipsec.IntegNone}, {ipsec.EncAESGCM16, 36, ipsec.IntegNone},
		{ipsec.EncAESGCM12, 20, ipsec.IntegNone},
		{ipsec.EncAESCBC, 16, ipsec.IntegSHA256_128}, {ipsec.EncAESCBC, 32, ipsec.IntegSHA512_256},
		{ipsec.EncAESCBC, 16, ipsec.IntegSHA1_96}, {ipsec.EncAESCTR, 20, ipsec.IntegSHA384_192},
		{ipsec.EncNull, 0, ipsec.IntegSHA256_128},
	} {
		for _, mode := range []ipsec.Mode{ipsec.Transport, ipsec.Tunnel} {
			for _, udp := range []bool{false, true} {
				for _, v6 := range []bool{false, true} {
					cases = append(cases, tc{s.enc, s.ekey, s.integ, mode, udp, v6, v6 != (mode == ipsec.Tunnel)})
				}
			}
		}
	}
	dir := t.TempDir()
	var pcap bytes.Buffer
	w, err := pcapio.NewWriter(&pcap, pcapio.LinkEthernet)
	if err != nil {
		t.Fatal(err)
	}
	var cfgs []ipsec.Config
	var payloads []string
	for i, c := range cases {
		src, dst := netip.MustParseAddr("10.77.1.1"), netip.MustParseAddr("10.77.2.1")
		if c.v6 {
			src, dst = netip.MustParseAddr("fd00:77:1::1"), netip.MustParseAddr("fd00:77:2::1")
		}
		cfg := ipsec.Config{SPI: 0xe5e50100 + uint32(i), Proto: ipsec.ESP, Src: src, Dst: dst, Mode: c.mode,
			Enc: c.enc, EncKey: ipsec.Key(c.ekey, byte(i)), Integ: c.integ, IntegKey: ipsec.Key(integKeyLen(c.integ), byte(i+50)),
			Class: ipsec.ClassWrite}
		if c.udp {
			cfg.EncapSrcPort, cfg.EncapDstPort = 4500, 4500
		}
		sa, err := ipsec.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfgs = append(cfgs, cfg)
		isrc, idst := src, dst
		if c.mode == ipsec.Tunnel {
			isrc, idst = netip.MustParseAddr("10.78.1.1"), netip.MustParseAddr("10.78.2.1")
			if c.in6 {
				isrc, idst = netip.MustParseAddr("fd00:78:1::1"), netip.MustParseAddr("fd00:78:2::1")
			}
		}
		payload := []byte(fmt.Sprintf("espep case %d: %v %v udp=%v", i, c.enc, c.mode, c.udp))
		payloads = append(payloads, hex.EncodeToString(payload))
		plain := ipsec.TCPPacket(isrc, idst, payload)
		buf, off := ipsec.InBuf(plain)
		wire, err := sa.Seal(buf, off, len(plain))
		if err != nil {
			t.Fatal(err)
		}
		frame := make([]byte, 14, 14+len(wire))
		copy(frame, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1})
		et := uint16(0x0800)
		if c.v6 {
			et = 0x86dd
		}
		binary.BigEndian.PutUint16(frame[12:], et)
		if err := w.Write(testTime, append(frame, wire...), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	pcapPath := filepath.Join(dir, "espep.pcap")
	if err := os.WriteFile(pcapPath, pcap.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var uat bytes.Buffer
	if skipped, err := safile.WriteESPSA(&uat, cfgs); err != nil || len(skipped) > 0 {
		t.Fatalf("esp_sa: %v, skipped %d", err, len(skipped))
	}
	if err := os.WriteFile(filepath.Join(dir, "esp_sa"), uat.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tshark, "-r", pcapPath, "-o", "esp.enable_encryption_decode:TRUE",
		"-o", "esp.enable_authentication_check:TRUE", "-o", "tcp.check_checksum:TRUE",
		"-T", "fields", "-E", "separator=|", "-e", "frame.number", "-e", "esp.spi", "-e", "esp.icv_good",
		"-e", "tcp.payload", "-e", "tcp.checksum.status") // status 1: good
	cmd.Env = append(os.Environ(), "WIRESHARK_CONFIG_DIR="+dir, "HOME="+dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(cases) {
		t.Fatalf("tshark printed %d lines for %d packets:\n%s", len(lines), len(cases), out)
	}
	for i, l := range lines {
		f := strings.Split(l, "|")
		if len(f) < 5 || f[2] != "1" || f[3] != payloads[i] || f[4] != "1" {
			t.Errorf("case %d %+v: tshark says %q (want icv good, payload %s, tcp checksum good)", i, cases[i], l, payloads[i])
		}
	}
	t.Logf("tshark opened %d espep packets with a good ICV", len(lines))
}

func integKeyLen(i ipsec.Integ) int {
	switch i {
	case ipsec.IntegSHA1_96:
		return 20
	case ipsec.IntegSHA256_128:
		return 32
	case ipsec.IntegSHA384_192:
		return 48
	case ipsec.IntegSHA512_256:
		return 64
	}
	return 0
}

var testTime = time.Unix(1795700000, 0)
