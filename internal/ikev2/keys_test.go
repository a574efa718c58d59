package ikev2_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/ikev2"
)

// recorded returns a recording's messages and the IKE keys charon logged
// (internal/testbed TestStrongSwanIKE).
func recorded(t testing.TB, name string) ([][]byte, []ikev2.Keys) {
	t.Helper()
	dir := filepath.Join("testdata", name)
	paths, err := filepath.Glob(filepath.Join(dir, "msg*.bin"))
	if err != nil || len(paths) < 8 {
		t.Fatalf("%s: %d messages, %v", name, len(paths), err)
	}
	var msgs [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	f, err := os.Open(filepath.Join(dir, "left-charon.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys, err := charonlog.ParseIKE(f, name)
	if err != nil || len(keys) == 0 {
		t.Fatalf("%s: IKE keys %v", name, err)
	}
	return msgs, keys
}

// TestOpenStrongSwan: every encrypted message two strongSwan peers sent
// opens with the keys charon logged — AES-CBC + HMAC-SHA-256, AES-GCM
// (RFC 5282) and ChaCha20-Poly1305 (RFC 7634) SK payloads, both
// directions — into payloads that parse;
// under the wrong key set (the other IKE SA's), or with any bit of the
// message changed, it is ErrIntegrity and nothing is decrypted.
func TestOpenStrongSwan(t *testing.T) {
	for _, name := range []string{"follow", "follow-pfs", "follow-chacha"} {
		msgs, keys := recorded(t, name)
		opened := 0
		for i, b := range msgs {
			m, err := ikev2.Parse(b)
			if err != nil {
				t.Fatalf("%s message %d: %v", name, i+1, err)
			}
			if m.Exchange == ikev2.ExchangeSAInit {
				continue
			}
			ok := 0
			for _, k := range keys {
				ps, err := k.Open(b, &m)
				if errors.Is(err, ikev2.ErrIntegrity) {
					continue
				}
				if err != nil || len(ps) == 0 && m.Exchange != ikev2.ExchangeInformation {
					t.Fatalf("%s message %d: %v", name, i+1, err)
				}
				ok++
				for _, bit := range []int{0, 8*ikev2.HeaderLen + 3, 8*len(b) - 1} {
					c := append([]byte(nil), b...)
					c[bit/8] ^= 1 << (bit % 8)
					cm, err := ikev2.Parse(c)
					if err != nil {
						continue
					}
					if _, err := k.Open(c, &cm); !errors.Is(err, ikev2.ErrIntegrity) {
						t.Fatalf("%s message %d (exchange %d) with bit %d flipped: %v", name, i+1, m.Exchange, bit, err)
					}
				}
			}
			if ok != 1 {
				t.Fatalf("%s message %d opens under %d key sets", name, i+1, ok)
			}
			opened++
		}
		if opened < 6 {
			t.Fatalf("%s: %d messages opened", name, opened)
		}
	}
}

// TestPRFPlusLength: prf+ gives what is asked, up to 255 blocks, and its
// first block is prf(K, S | 0x01) (RFC 7296 §2.13).
func TestPRFPlusLength(t *testing.T) {
	for _, n := range []int{0, 1, 32, 33, 255 * 32} {
		b, err := ikev2.PRFPlus(ikev2.PRFHMACSHA2256, []byte("k"), []byte("s"), n)
		if err != nil || len(b) != n {
			t.Fatalf("%d bytes: %d, %v", n, len(b), err)
		}
	}
	if _, err := ikev2.PRFPlus(ikev2.PRFHMACSHA2256, []byte("k"), []byte("s"), 255*32+1); err == nil {
		t.Fatal("more than 255 blocks")
	}
	if _, err := ikev2.PRFPlus(99, nil, nil, 1); !errors.Is(err, ikev2.ErrUnsupported) {
		t.Fatalf("prf 99: %v", err)
	}
}

// FuzzOpen: whatever the message, opening it with real keys returns an
// error or payloads; it never panics.
func FuzzOpen(f *testing.F) {
	var keys []ikev2.Keys
	for _, name := range []string{"follow", "follow-pfs", "follow-chacha"} {
		msgs, ks := recorded(f, name)
		keys = append(keys, ks...)
		for _, m := range msgs {
			f.Add(m)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ikev2.Parse(b)
		if err != nil {
			return
		}
		for _, k := range keys {
			k.Open(b, &m)
		}
	})
}

// FuzzOpenSealed: what a message's SK payload decrypts to is checked too
// (its padding, the payloads inside): any plaintext, sealed with valid
// AES-CBC + HMAC-SHA-256 keys, opens to payloads or an error, never a
// panic.
func FuzzOpenSealed(f *testing.F) {
	f.Add([]byte{}, byte(0))
	f.Add([]byte{0, 0, 0, 4}, byte(ikev2.PayloadNonce))
	f.Add(bytes.Repeat([]byte{0xff}, 31), byte(ikev2.PayloadDelete))
	f.Add([]byte{0, 0, 0, 8, 3, 4, 0, 1, 0xa, 0xb, 0xc, 0xd, 0, 0, 0, 0}, byte(ikev2.PayloadDelete))
	k := ikev2.Keys{PRF: ikev2.PRFHMACSHA2256, Encr: ikev2.EncrAESCBC, Integ: ikev2.IntegHMACSHA2256128,
		D: make([]byte, 32), Ai: make([]byte, 32), Ar: make([]byte, 32), Ei: make([]byte, 16), Er: make([]byte, 16)}
	f.Fuzz(func(t *testing.T, plain []byte, first byte) {
		if len(plain) > 4096 {
			return
		}
		b := sealCBC(&k, first, plain)
		m, err := ikev2.Parse(b)
		if err != nil {
			t.Fatalf("sealed message does not parse: %v", err)
		}
		k.Open(b, &m)
	})
}

// sealCBC builds an INFORMATIONAL request from the initiator whose SK
// payload holds plain (zero-filled to a block; its last byte is the pad
// length), encrypted and signed with k.
func sealCBC(k *ikev2.Keys, first byte, plain []byte) []byte {
	p := append([]byte(nil), plain...)
	for len(p) == 0 || len(p)%aes.BlockSize != 0 {
		p = append(p, 0)
	}
	iv := make([]byte, aes.BlockSize)
	n := ikev2.HeaderLen + 4 + len(iv) + len(p) + 16
	b := make([]byte, 0, n)
	b = append(b, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 9, ikev2.PayloadSK, 0x20, ikev2.ExchangeInformation, ikev2.FlagInitiator, 0, 0, 0, 1)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, first, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(n-ikev2.HeaderLen))
	b = append(b, iv...)
	block, _ := aes.NewCipher(k.Ei)
	ct := make([]byte, len(p))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, p)
	b = append(b, ct...)
	mac := hmac.New(sha256.New, k.Ai)
	mac.Write(b)
	return append(b, mac.Sum(nil)[:16]...)
}
