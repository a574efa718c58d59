package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

const ssDir = "../../ipsec/testdata/strongswan"

// readPcap returns the link type and every frame of a capture.
func readPcap(t *testing.T, path string) (uint32, [][]byte) {
	t.Helper()
	link, frames, err := pcapio.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return link, frames
}

// countESP counts the ESP packets in a capture, independently of pcaptool.
func countESP(t *testing.T, link uint32, frames [][]byte) int {
	n := 0
	for _, f := range frames {
		off, _, ok, err := pcapio.IPOffset(link, f)
		if err != nil || !ok {
			continue
		}
		if l, err := ipsec.Locate(f[off:]); err == nil && l.Kind == ipsec.KindESP {
			n++
		}
	}
	return n
}

func espep(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(args, &stdout, &stderr)
	return stderr.String(), err
}

var statRE = regexp.MustCompile(`([a-z-]+) (\d+)`)

func stats(s string) map[string]int {
	m := map[string]int{}
	for _, x := range statRE.FindAllStringSubmatch(s, -1) {
		n, _ := strconv.Atoi(x[2])
		m[x[1]] = n
	}
	return m
}

// TestDecryptStrongSwanCaptures runs `espep pcap decrypt` on captures of
// real strongSwan traffic and requires every ESP packet to open.
func TestDecryptStrongSwanCaptures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(ssDir, "*", "cap.pcap"))
	if len(dirs) < 5 {
		t.Fatalf("want 5 strongSwan captures, found %d", len(dirs))
	}
	for _, capPath := range dirs {
		dir := filepath.Dir(capPath)
		for _, saFile := range []string{"esp_sa", "sa.native"} {
			sa := filepath.Join(dir, saFile)
			if b, _ := os.ReadFile(sa); !bytes.Contains(b, []byte("0x")) {
				continue // no esp_sa lines for ChaCha20 (Wireshark 4.0 lacks it)
			}
			t.Run(filepath.Base(dir)+"/"+saFile, func(t *testing.T) {
				link, in := readPcap(t, capPath)
				want := countESP(t, link, in)
				out := filepath.Join(t.TempDir(), "out.pcap")
				summary, err := espep(t, "pcap", "decrypt", "--sa", sa, capPath, out)
				if err != nil {
					t.Fatalf("%v\n%s", err, summary)
				}
				st := stats(summary)
				if st["opened"] != want || want < 10 || st["failed-icv"] != 0 || st["unknown-spi"] != 0 || st["malformed"] != 0 {
					t.Fatalf("want all %d ESP packets opened: %s", want, summary)
				}
				_, got := readPcap(t, out)
				if len(got) != len(in) {
					t.Fatalf("%d packets in, %d out", len(in), len(got))
				}
				var hello bool
				for i, f := range got {
					if bytes.Equal(f, in[i]) {
						continue
					}
					off, _, _, _ := pcapio.IPOffset(link, f)
					h, err := header.ParseIPv4(f[off:])
					if err != nil || !h.ChecksumValid() || h.Src().String()[:6] != "10.78." {
						t.Errorf("packet %d: bad inner packet %x: %v", i+1, f[off:], err)
					}
					hello = hello || bytes.Contains(f, []byte("hello through strongSwan libipsec ESP"))
				}
				if !hello {
					t.Error("the TCP payload strongSwan carried is not in the decrypted capture")
				}
			})
		}
	}
}

// TestDecryptCountsTamperedAndReplayed flips a byte in one ESP packet and
// duplicates another: the first is counted as failed ICV, the second as
// replayed, and both are copied unchanged.
func TestDecryptCountsTamperedAndReplayed(t *testing.T) {
	dir := filepath.Join(ssDir, "aes128-sha256")
	link, in := readPcap(t, filepath.Join(dir, "cap.pcap"))
	var esp []int
	for i, f := range in {
		off, _, ok, _ := pcapio.IPOffset(link, f)
		if l, err := ipsec.Locate(f[off:]); ok && err == nil && l.Kind == ipsec.KindESP {
			esp = append(esp, i)
		}
	}
	frames := append([][]byte(nil), in...)
	tampered := append([]byte(nil), in[esp[0]]...)
	tampered[len(tampered)-20] ^= 1
	frames[esp[0]] = tampered
	frames = append(frames, in[esp[1]]) // a replay of an already opened packet
	src := filepath.Join(t.TempDir(), "in.pcap")
	writePcap(t, src, link, frames)
	out := filepath.Join(t.TempDir(), "out.pcap")
	summary, err := espep(t, "pcap", "decrypt", "--sa", filepath.Join(dir, "esp_sa"), src, out)
	if err != nil {
		t.Fatal(err)
	}
	st := stats(summary)
	if st["failed-icv"] != 1 || st["replayed"] != 1 || st["opened"] != len(esp)-1 {
		t.Fatalf("want 1 failed, 1 replayed, %d opened: %s", len(esp)-1, summary)
	}
	_, got := readPcap(t, out)
	if !bytes.Equal(got[esp[0]], tampered) || !bytes.Equal(got[len(got)-1], in[esp[1]]) {
		t.Fatal("failed packets were not copied unchanged")
	}
}

func writePcap(t *testing.T, path string, link uint32, frames [][]byte) {
	t.Helper()
	var b bytes.Buffer
	w, err := pcapio.NewWriter(&b, link)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if err := w.Write(testTime, f, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestEncryptDecryptRoundTrip decrypts a strongSwan capture, encrypts the
// plaintext again with `espep pcap encrypt` (tunnel mode, UDP 4500, the
// same keys, selectors for each direction), and decrypts that: the two
// plaintext captures must be identical.
func TestEncryptDecryptRoundTrip(t *testing.T) {
	dir := filepath.Join(ssDir, "chacha20poly1305")
	tmp := t.TempDir()
	plain, again, sealed := filepath.Join(tmp, "plain.pcap"), filepath.Join(tmp, "again.pcap"), filepath.Join(tmp, "sealed.pcap")
	native := filepath.Join(dir, "sa.native")
	if s, err := espep(t, "pcap", "decrypt", "--sa", native, filepath.Join(dir, "cap.pcap"), plain); err != nil {
		t.Fatalf("%v %s", err, s)
	}
	// Add traffic selectors: left 10.78.1.1 ⇄ right 10.78.2.1.
	b, _ := os.ReadFile(native)
	s := string(b)
	s = strings.Replace(s, "src = 10.77.2.1\n", "src = 10.77.2.1\nts-local = 10.78.2.1\nts-remote = 10.78.1.1\n", 1)
	s = strings.Replace(s, "src = 10.77.1.1\n", "src = 10.77.1.1\nts-local = 10.78.1.1\nts-remote = 10.78.2.1\n", 1)
	withTS := filepath.Join(tmp, "ts.native")
	if err := os.WriteFile(withTS, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	summary, err := espep(t, "pcap", "encrypt", "--sa", withTS, plain, sealed)
	if err != nil {
		t.Fatalf("%v %s", err, summary)
	}
	link, p := readPcap(t, plain)
	if st := stats(summary); st["sealed"] != countESP(t, link, readFrames(t, filepath.Join(dir, "cap.pcap"))) || st["failed"] != 0 {
		t.Fatalf("encrypt: %s", summary)
	}
	if s, err := espep(t, "pcap", "decrypt", "--sa", native, sealed, again); err != nil || stats(s)["failed-icv"] != 0 {
		t.Fatalf("%v %s", err, s)
	}
	_, a := readPcap(t, again)
	for i := range p {
		if !bytes.Equal(p[i], a[i]) {
			t.Fatalf("packet %d differs after encrypt+decrypt:\n%x\n%x", i+1, p[i], a[i])
		}
	}
}

func readFrames(t *testing.T, path string) [][]byte {
	_, f := readPcap(t, path)
	return f
}

func TestCLIErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no subcommand"},
		{[]string{"nope"}, "unknown subcommand"},
		{[]string{"pcap"}, "want decrypt or encrypt"},
		{[]string{"pcap", "decrypt", "a", "b"}, "need --sa"},
		{[]string{"pcap", "decrypt", "--sa", "/nonexistent", "a", "b"}, "no such file"},
	} {
		_, err := espep(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("espep %v: err %v, want %q", tc.args, err, tc.want)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("espep-sa 1\n[sa]\nspi = 0x1000\nenc = rot13\n"), 0o600)
	_, err := espep(t, "pcap", "decrypt", "--sa", bad, "a", "b")
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s:4: field enc", bad)) {
		t.Errorf("bad sa file: %v", err)
	}
}

// TestRawIPLinkAllFramings seals a raw-IP capture of IPv4 and IPv6 TCP with
// several SAs (raw ESP transport over IPv6, AH tunnel over IPv4, ESP-in-UDP
// tunnel over IPv4 carrying IPv6) using `espep pcap encrypt`, checks the
// framing of what came out, and gets the original back with decrypt.
func TestRawIPLinkAllFramings(t *testing.T) {
	tmp := t.TempDir()
	a4, b4 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.2.0.1")
	a6, b6 := netip.MustParseAddr("fd00:1::1"), netip.MustParseAddr("fd00:2::1")
	c6, d6 := netip.MustParseAddr("fd00:3::1"), netip.MustParseAddr("fd00:4::1")
	var frames [][]byte
	for i := 0; i < 6; i++ {
		frames = append(frames,
			packettest.TCP(a6, b6, []byte(fmt.Sprintf("v6 transport %d", i))),
			packettest.TCP(a4, b4, []byte(fmt.Sprintf("v4 via AH tunnel %d", i))),
			packettest.TCP(c6, d6, []byte(fmt.Sprintf("v6 in v4 udp tunnel %d", i))))
	}
	plain := filepath.Join(tmp, "plain.pcap")
	writePcap(t, plain, pcapio.LinkRaw, frames)
	sa := filepath.Join(tmp, "sa.native")
	os.WriteFile(sa, []byte(`espep-sa 1
[sa]
spi = 0x1001
src = fd00:1::1
dst = fd00:2::1
mode = transport
enc = aes-gcm16
enc-key = 0x000102030405060708090a0b0c0d0e0f10111213

[sa]
spi = 0x1002
proto = ah
src = 192.0.2.1
dst = 192.0.2.2
mode = tunnel
integ = hmac-sha256-128
integ-key = 0x000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f
ts-local = 10.1.0.0/16
ts-remote = 10.2.0.0/16

[sa]
spi = 0x1003
src = 192.0.2.1
dst = 192.0.2.3
mode = tunnel
encap = udp 4500 4500
enc = aes-cbc
enc-key = 0x000102030405060708090a0b0c0d0e0f
integ = hmac-sha1-96
integ-key = 0x000102030405060708090a0b0c0d0e0f10111213
ts-local = fd00:3::/64
`), 0o600)
	sealed, again := filepath.Join(tmp, "sealed.pcap"), filepath.Join(tmp, "again.pcap")
	if s, err := espep(t, "pcap", "encrypt", "--sa", sa, plain, sealed); err != nil || stats(s)["sealed"] != len(frames) {
		t.Fatalf("encrypt: %v %s", err, s)
	}
	_, out := readPcap(t, sealed)
	for i, f := range out {
		l, err := ipsec.Locate(f)
		if err != nil {
			t.Fatal(err)
		}
		want := []struct {
			kind ipsec.Kind
			v    uint8
			udp  bool
			spi  uint32
		}{{ipsec.KindESP, 6, false, 0x1001}, {ipsec.KindAH, 4, false, 0x1002}, {ipsec.KindESP, 4, true, 0x1003}}[i%3]
		if l.Kind != want.kind || l.Version != want.v || (l.UDPOff >= 0) != want.udp || l.SPI != want.spi {
			t.Fatalf("packet %d: %+v, want %+v", i, l, want)
		}
	}
	if s, err := espep(t, "pcap", "decrypt", "--sa", sa, sealed, again); err != nil || stats(s)["opened"] != len(frames) {
		t.Fatalf("decrypt: %v %s", err, s)
	}
	_, back := readPcap(t, again)
	for i := range frames {
		if !bytes.Equal(back[i], frames[i]) {
			t.Fatalf("packet %d:\n got  %x\n want %x", i, back[i], frames[i])
		}
	}
}
