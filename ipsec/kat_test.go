package ipsec

import (
	"net/netip"
	"testing"

	"github.com/espep/espep/ipsec/header"
)

// RFC 3602 §4, test cases 5–8: ESP packets with AES-CBC-128 (the RFC
// gives them without an ICV). Cases 5 and 6 carry ICMP (transport mode),
// 7 and 8 an IPv4 packet (tunnel mode). The ESP bytes start at the SPI.
var rfc3602 = []struct {
	name, key, iv string
	spi           uint32
	seq           uint64
	payload, esp  string
	tunnel        bool
}{
	{"case5", "90d382b410eeba7ad938c46cec1a82bf", "e96e8c08ab465763fd098d45dd3ff893", 0x4321, 1,
		"08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637",
		"0000432100000001e96e8c08ab465763fd098d45dd3ff893f663c25d325c18c6a9453e194e120849a4870b66cc6b9965330013b4898dc856a4699e523a55db080b59ec3a8e4b7e52775b07d1db34ed9c538ab50c551b874aa269add047ad2d5913ac19b7cfbad4a6", false},
	{"case6", "90d382b410eeba7ad938c46cec1a82bf", "69d08df7d203329db093fc4924e5bd80", 0x4321, 8,
		"0800b5e8a80a0500a69c083d0b660e00777777777777777777777777",
		"000043210000000869d08df7d203329db093fc4924e5bd80f51995881ec4e0c4488987ce742e8109689bb379d2d750c0d915dca346a89f75", false},
	{"case7", "0123456789abcdef0123456789abcdef", "f4e765244f6407adf13dc1380f673f37", 0x8765, 2,
		"45000054090400004001f988c0a87b03c0a87bc808009f76a90a0100b49c083d02a2040008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637",
		"0000876500000002f4e765244f6407adf13dc1380f673f37773b5241a4c449225e4f3ce5ed611b0c237ca96cf74a93013c1b0ea1a0cf70f8e4ecaec78ac53aad7a0f022b859243c647752e94a859352b8a4d4d2decd136e5c177f132ad3fbfb2201ac9904c74ee0a109e0ca1e4dfe9d5a100b842f1c22f0d", true},
	{"case8", "0123456789abcdef0123456789abcdef", "85d47224b5f3dd5d2101d4ea8dffab22", 0x8765, 5,
		"45000044090c00004001f990c0a87b03c0a87bc80800d63caa0a0200c69c083da3de0300ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
		"000087650000000585d47224b5f3dd5d2101d4ea8dffab2215b92683819596a8047232cc00f7048fe45318e11f8a0f62ede3c3fc61203bb50f980a08c9843fd3a1b06d5c07ff9639b7eb7dfb3512e5de435e7207ed971ef3d2726d9b5ef6affc6d17a0decbb13892", true},
}

func TestRFC3602(t *testing.T) {
	src, dst := netip.MustParseAddr("192.168.123.100"), netip.MustParseAddr("192.168.123.200")
	for _, v := range rfc3602 {
		t.Run(v.name, func(t *testing.T) {
			c := Config{SPI: v.spi, Proto: ESP, Src: src, Dst: dst, Mode: Transport, Class: ClassWrite,
				Enc: EncAESCBC, EncKey: unhex(t, v.key), Integ: IntegSHA256_128, IntegKey: key(32, 3)}
			if v.tunnel {
				c.Mode = Tunnel
			}
			payload := unhex(t, v.payload)
			plain := payload
			if !v.tunnel { // an IPv4 header around the ICMP message
				plain = make([]byte, 20, 20+len(payload))
				header.WriteIPv4(plain, 0, 20+len(payload), 1, false, 64, header.ProtoICMP, src, dst)
				plain = append(plain, payload...)
			}
			sa := mustSA(t, c)
			buf, off := inBuf(plain)
			wire, err := sa.SealWith(buf, off, len(plain), v.seq, FixedIV(unhex(t, v.iv)))
			if err != nil {
				t.Fatal(err)
			}
			l, _ := Locate(wire)
			espBytes := wire[l.Off : len(wire)-16] // drop our ICV: encrypt-then-MAC
			eq(t, "esp", espBytes, unhex(t, v.esp))

			// Open the RFC's packet with a read-class SA: no ICV to check.
			rc := c
			rc.Class, rc.Integ, rc.IntegKey = ClassRead, IntegNone, nil
			r, err := NewReader(rc)
			if err != nil {
				t.Fatal(err)
			}
			pkt := make([]byte, 20, 20+len(v.esp)/2)
			header.WriteIPv4(pkt, 0, 20+len(v.esp)/2, 1, false, 64, header.ProtoESP, src, dst)
			pkt = append(pkt, unhex(t, v.esp)...)
			got, err := r.Decrypt(make([]byte, 0, len(pkt)), pkt)
			if err != nil {
				t.Fatal(err)
			}
			if v.tunnel {
				eq(t, "inner", got, payload)
			} else {
				eq(t, "payload", got[20:], payload)
				if got[9] != header.ProtoICMP {
					t.Fatalf("next header %d", got[9])
				}
			}
		})
	}
}

// RFC 3686 §6, test vector #1: AES-CTR-128, one block.
func TestRFC3686Vector1(t *testing.T) {
	k := unhex(t, "ae6852f8121067cc4bf7a5765577f39e"+"00000030") // key ‖ nonce
	c, err := newCTR(k)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16)
	c.xor(got, []byte("Single block msg"), make([]byte, 8))
	eq(t, "ciphertext", got, unhex(t, "e4095d4fb7a7b3792d6175a3261311b8"))
}

// RFC 4868 §2.7.2.2, authenticator test case AUTH256-1.
func TestRFC4868Auth256(t *testing.T) {
	k := make([]byte, 32)
	for i := range k {
		k[i] = 0x0b
	}
	a, err := newHMAC(IntegSHA256_128, k)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "icv", a.mac([]byte("Hi There"), 0, false), unhex(t, "198a607eb44bfbc69903a0f1cf2bbdc5"))
}
