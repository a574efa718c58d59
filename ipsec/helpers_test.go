package ipsec

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/espep/espep/internal/packettest"
)

var (
	v4a, v4b = netip.MustParseAddr("10.77.1.1"), netip.MustParseAddr("10.77.2.1")
	v6a, v6b = netip.MustParseAddr("fd00:77:1::1"), netip.MustParseAddr("fd00:77:2::1")
)

// tcpPacket builds an IPv4 or IPv6 TCP packet with valid checksums.
func tcpPacket(src, dst netip.Addr, payload []byte) []byte {
	return packettest.TCP(src, dst, payload)
}

// inBuf copies pkt into a fresh buffer with headroom and tailroom.
func inBuf(pkt []byte) ([]byte, int) {
	buf := make([]byte, MaxHeadroom+len(pkt), MaxHeadroom+len(pkt)+MaxTailroom)
	copy(buf[MaxHeadroom:], pkt)
	return buf, MaxHeadroom
}

func key(n int, seed byte) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = seed*17 + byte(i)*7
	}
	return k
}

type suite struct {
	name  string
	proto Proto
	enc   Enc
	ekey  int
	integ Integ
}

var suites = []suite{
	{"aes128gcm16", ESP, EncAESGCM16, 20, IntegNone},
	{"aes256gcm16", ESP, EncAESGCM16, 36, IntegNone},
	{"aes128gcm12", ESP, EncAESGCM12, 20, IntegNone},
	{"chacha20poly1305", ESP, EncChaCha20Poly1305, 36, IntegNone},
	{"aes128-sha256", ESP, EncAESCBC, 16, IntegSHA256_128},
	{"aes256-sha256", ESP, EncAESCBC, 32, IntegSHA256_128},
	{"aes128-sha1", ESP, EncAESCBC, 16, IntegSHA1_96},
	{"aes256-sha512", ESP, EncAESCBC, 32, IntegSHA512_256},
	{"aes128ctr-sha256", ESP, EncAESCTR, 20, IntegSHA256_128},
	{"aes256ctr-sha384", ESP, EncAESCTR, 36, IntegSHA384_192},
	{"null-sha256", ESP, EncNull, 0, IntegSHA256_128},
	{"ah-sha256", AH, EncNone, 0, IntegSHA256_128},
	{"ah-sha1", AH, EncNone, 0, IntegSHA1_96},
	{"ah-sha512", AH, EncNone, 0, IntegSHA512_256},
}

func (s suite) config(mode Mode, udp, v6, esn bool) Config {
	c := Config{SPI: 0xc0de0001, Proto: s.proto, Src: v4a, Dst: v4b, Mode: mode,
		Enc: s.enc, EncKey: key(s.ekey, 1), Integ: s.integ, IntegKey: key(s.integ.keyLen(), 2),
		ESN: esn, Class: ClassWrite}
	if v6 {
		c.Src, c.Dst = v6a, v6b
	}
	if udp {
		c.EncapSrcPort, c.EncapDstPort = 4500, 4500
	}
	return c
}

func mustSA(t testing.TB, c Config) *SA {
	t.Helper()
	sa, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return sa
}

func eq(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s:\n got  %x\n want %x", what, got, want)
	}
}
