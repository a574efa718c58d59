package ipsec

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"testing"
)

// TestCTRKeyStream compares the GCM-derived RFC 3686 key stream with the
// standard library's CTR mode for every length up to 300 and a few large
// ones, in place and into another buffer.
func TestCTRKeyStream(t *testing.T) {
	k := key(20, 9)
	c, err := newCTR(k)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := aes.NewCipher(k[:16])
	iv := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	lengths := []int{1400, 1401, 8192, 9000}
	for n := 0; n <= 300; n++ {
		lengths = append(lengths, n)
	}
	for _, n := range lengths {
		src := key(n, byte(n))
		ctr := make([]byte, 16)
		copy(ctr, k[16:])
		copy(ctr[4:], iv)
		ctr[15] = 1
		want := make([]byte, n)
		cipher.NewCTR(blk, ctr).XORKeyStream(want, src)

		got := make([]byte, n)
		c.xor(got, src, iv)
		if !bytes.Equal(got, want) {
			t.Fatalf("n=%d: out of place differs", n)
		}
		inplace := append([]byte(nil), src...)
		c.xor(inplace, inplace, iv)
		if !bytes.Equal(inplace, want) {
			t.Fatalf("n=%d: in place differs", n)
		}
	}
}
