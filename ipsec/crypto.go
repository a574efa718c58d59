package ipsec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash"

	"golang.org/x/crypto/chacha20poly1305"
)

// espCipher protects an ESP packet e that starts at the SPI:
// e = SPI ‖ Seq ‖ IV ‖ plaintext-with-trailer ‖ ICV.
// An espCipher keeps scratch state and is used by one goroutine at a time
// (the SA's inbound or outbound lock holder).
// espLens are an ESP transform's fixed lengths (its espCipher's ivLen,
// align and icvLen), kept beside the SA so the packet path reads them
// without three interface calls.
type espLens struct{ iv, align, icv int }

type espCipher interface {
	ivLen() int
	align() int  // the ciphertext (payload ‖ padding ‖ trailer) is a multiple of this
	icvLen() int // ICV bytes that follow the ciphertext
	// seal encrypts e[8+ivLen:end] in place and writes the ICV at e[end:].
	seal(e []byte, end int, seqHi uint32, esn bool)
	// open verifies the ICV at the tail of e in constant time and then
	// decrypts in place; on a bad ICV nothing is decrypted.
	open(e []byte, seqHi uint32, esn bool) error
}

// espDecrypter decrypts without verifying, into a separate buffer: what a
// read-class SA can do. dst must have room for the ciphertext.
type espDecrypter interface {
	ivLen() int
	icvLen() int
	decrypt(dst, e []byte) []byte
}

func newESPCipher(enc Enc, ekey []byte, integ Integ, ikey []byte) (espCipher, error) {
	if err := enc.checkKey(ekey); err != nil {
		return nil, err
	}
	if enc.AEAD() {
		if integ != IntegNone {
			return nil, fmt.Errorf("%v is a combined-mode transform and takes no integrity transform, got %v", enc, integ)
		}
		return newAEADCipher(enc, ekey)
	}
	if integ == IntegNone {
		return nil, fmt.Errorf("%v needs an integrity transform (RFC 8221 forbids ESP without integrity)", enc)
	}
	mac, err := newHMAC(integ, ikey)
	if err != nil {
		return nil, err
	}
	switch enc {
	case EncNull:
		return &nullCipher{mac: mac}, nil
	case EncAESCBC:
		c, err := newCBC(ekey)
		if err != nil {
			return nil, err
		}
		c.mac = mac
		return c, nil
	case EncAESCTR:
		c, err := newCTR(ekey)
		if err != nil {
			return nil, err
		}
		c.mac = mac
		return c, nil
	}
	return nil, fmt.Errorf("unsupported encryption transform %v", enc)
}

// newESPDecrypter builds the decrypt-only half for a read-class SA.
func newESPDecrypter(enc Enc, ekey []byte, integ Integ) (espDecrypter, error) {
	if enc.AEAD() {
		return nil, fmt.Errorf("%v: %w", enc, ErrReadAEAD)
	}
	if err := enc.checkKey(ekey); err != nil {
		return nil, err
	}
	icv := integ.icvLen()
	switch enc {
	case EncNull:
		return &nullCipher{mac: &hmacAuth{icv: icv}}, nil
	case EncAESCBC:
		c, err := newCBC(ekey)
		if err != nil {
			return nil, err
		}
		c.mac = &hmacAuth{icv: icv}
		return c, nil
	case EncAESCTR:
		c, err := newCTR(ekey)
		if err != nil {
			return nil, err
		}
		c.mac = &hmacAuth{icv: icv}
		return c, nil
	}
	return nil, fmt.Errorf("unsupported encryption transform %v", enc)
}

// putAAD writes the RFC 4106 §5 / RFC 7634 §2.1 AAD: SPI ‖ Seq, or with
// ESN SPI ‖ Seq-high ‖ Seq-low, and returns it.
func putAAD(aad *[12]byte, e []byte, seqHi uint32, esn bool) []byte {
	copy(aad[:4], e[:4])
	if !esn {
		copy(aad[4:8], e[4:8])
		return aad[:8]
	}
	binary.BigEndian.PutUint32(aad[4:], seqHi)
	copy(aad[8:12], e[4:8])
	return aad[:12]
}

// aeadCipher is AES-GCM (RFC 4106) or ChaCha20-Poly1305 (RFC 7634): the
// nonce is salt ‖ 8-byte IV.
type aeadCipher struct {
	aead  cipher.AEAD
	nonce [12]byte
	aad   [12]byte
}

func newAEADCipher(enc Enc, k []byte) (*aeadCipher, error) {
	key, salt := k[:len(k)-4], k[len(k)-4:]
	c := &aeadCipher{}
	copy(c.nonce[:4], salt)
	var err error
	switch enc {
	case EncChaCha20Poly1305:
		c.aead, err = chacha20poly1305.New(key)
	default:
		var b cipher.Block
		if b, err = aes.NewCipher(key); err == nil {
			tag := 16
			if enc == EncAESGCM12 {
				tag = 12
			}
			c.aead, err = cipher.NewGCMWithTagSize(b, tag)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%v: %w", enc, err)
	}
	return c, nil
}

func (c *aeadCipher) ivLen() int  { return 8 }
func (c *aeadCipher) align() int  { return 4 }
func (c *aeadCipher) icvLen() int { return c.aead.Overhead() }

func (c *aeadCipher) seal(e []byte, end int, seqHi uint32, esn bool) {
	copy(c.nonce[4:], e[8:16])
	pt := e[16:end]
	c.aead.Seal(pt[:0], c.nonce[:], pt, putAAD(&c.aad, e, seqHi, esn))
}

func (c *aeadCipher) open(e []byte, seqHi uint32, esn bool) error {
	copy(c.nonce[4:], e[8:16])
	ct := e[16:]
	if _, err := c.aead.Open(ct[:0], c.nonce[:], ct, putAAD(&c.aad, e, seqHi, esn)); err != nil {
		return ErrICV
	}
	return nil
}

// hmacAuth is the integrity half of a non-AEAD ESP transform, and of AH.
// With ESN the high 32 bits of the sequence number are appended to the
// authenticated data (RFC 4303 §2.2.1, RFC 4302 §2.5.1).
type hmacAuth struct {
	h   hash.Hash // nil in a read-class SA: no integrity key
	icv int
	sum [64]byte
	hi  [4]byte
}

func newHMAC(i Integ, key []byte) (*hmacAuth, error) {
	var f func() hash.Hash
	switch i {
	case IntegSHA1_96:
		f = sha1.New
	case IntegSHA256_128:
		f = sha256.New
	case IntegSHA384_192:
		f = sha512.New384
	case IntegSHA512_256:
		f = sha512.New
	default:
		return nil, fmt.Errorf("unsupported integrity transform %v", i)
	}
	if len(key) != i.keyLen() {
		return nil, fmt.Errorf("%v key must be %d bytes, got %d", i, i.keyLen(), len(key))
	}
	return &hmacAuth{h: hmac.New(f, key), icv: i.icvLen()}, nil
}

func (a *hmacAuth) begin()         { a.h.Reset() }
func (a *hmacAuth) write(p []byte) { a.h.Write(p) }
func (a *hmacAuth) finish(seqHi uint32, esn bool) []byte {
	if esn {
		binary.BigEndian.PutUint32(a.hi[:], seqHi)
		a.h.Write(a.hi[:])
	}
	return a.h.Sum(a.sum[:0])[:a.icv]
}

func (a *hmacAuth) mac(p []byte, seqHi uint32, esn bool) []byte {
	a.begin()
	a.write(p)
	return a.finish(seqHi, esn)
}

// verify checks the ICV at the tail of e in constant time.
func (a *hmacAuth) verify(e []byte, seqHi uint32, esn bool) error {
	n := len(e) - a.icv
	if subtle.ConstantTimeCompare(a.mac(e[:n], seqHi, esn), e[n:]) != 1 {
		return ErrICV
	}
	return nil
}

// nullCipher is ENCR_NULL (RFC 2410) with an HMAC: integrity only.
type nullCipher struct{ mac *hmacAuth }

func (c *nullCipher) ivLen() int  { return 0 }
func (c *nullCipher) align() int  { return 4 }
func (c *nullCipher) icvLen() int { return c.mac.icv }
func (c *nullCipher) seal(e []byte, end int, seqHi uint32, esn bool) {
	copy(e[end:end+c.mac.icv], c.mac.mac(e[:end], seqHi, esn))
}
func (c *nullCipher) open(e []byte, seqHi uint32, esn bool) error {
	return c.mac.verify(e, seqHi, esn)
}
func (c *nullCipher) decrypt(dst, e []byte) []byte {
	return append(dst[:0], e[8:len(e)-c.mac.icv]...)
}

// ivSetter is implemented by the standard library's CBC modes; it lets one
// BlockMode serve every packet without allocating.
type ivSetter interface{ SetIV([]byte) }

// cbcCipher is AES-CBC (RFC 3602) with an HMAC, encrypt-then-MAC.
type cbcCipher struct {
	enc, dec cipher.BlockMode
	mac      *hmacAuth
}

func newCBC(key []byte) (*cbcCipher, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes-cbc: %w", err)
	}
	var zero [aes.BlockSize]byte
	c := &cbcCipher{enc: cipher.NewCBCEncrypter(b, zero[:]), dec: cipher.NewCBCDecrypter(b, zero[:])}
	if _, ok := c.enc.(ivSetter); !ok {
		return nil, fmt.Errorf("aes-cbc: standard library CBC cannot reset its IV")
	}
	return c, nil
}

func (c *cbcCipher) ivLen() int  { return aes.BlockSize }
func (c *cbcCipher) align() int  { return aes.BlockSize }
func (c *cbcCipher) icvLen() int { return c.mac.icv }

func (c *cbcCipher) seal(e []byte, end int, seqHi uint32, esn bool) {
	c.enc.(ivSetter).SetIV(e[8:24])
	c.enc.CryptBlocks(e[24:end], e[24:end])
	copy(e[end:end+c.mac.icv], c.mac.mac(e[:end], seqHi, esn))
}

func (c *cbcCipher) open(e []byte, seqHi uint32, esn bool) error {
	if err := c.mac.verify(e, seqHi, esn); err != nil {
		return err
	}
	ct := e[24 : len(e)-c.mac.icv]
	c.dec.(ivSetter).SetIV(e[8:24])
	c.dec.CryptBlocks(ct, ct)
	return nil
}

func (c *cbcCipher) decrypt(dst, e []byte) []byte {
	ct := e[24 : len(e)-c.mac.icv]
	dst = dst[:len(ct)]
	c.dec.(ivSetter).SetIV(e[8:24])
	c.dec.CryptBlocks(dst, ct)
	return dst
}

// ctrCipher is AES-CTR (RFC 3686) with an HMAC. The counter block is
// nonce ‖ IV ‖ block counter starting at 1. cipher.NewCTR allocates per
// packet and cannot take a new IV, so the key stream comes from AES-GCM
// under the same key: GCM encrypts with the counter blocks nonce ‖ IV ‖
// i+2 (NIST SP 800-38D, 12-byte IV), which are RFC 3686's blocks from
// the second on. The first block, and the 16 bytes that GCM's tag
// overwrites at the end, are made with single block encryptions.
type ctrCipher struct {
	block cipher.Block
	gcm   cipher.AEAD
	nonce [12]byte // nonce ‖ IV
	ctr   [aes.BlockSize]byte
	ks    [aes.BlockSize]byte
	save  [aes.BlockSize]byte
	mac   *hmacAuth
}

// ctrViaGCM is the shortest input worth the GCM call.
const ctrViaGCM = 64

func newCTR(k []byte) (*ctrCipher, error) {
	b, err := aes.NewCipher(k[:len(k)-4])
	if err != nil {
		return nil, fmt.Errorf("aes-ctr: %w", err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("aes-ctr: %w", err)
	}
	c := &ctrCipher{block: b, gcm: g}
	copy(c.nonce[:4], k[len(k)-4:])
	return c, nil
}

func (c *ctrCipher) ivLen() int  { return 8 }
func (c *ctrCipher) align() int  { return 4 }
func (c *ctrCipher) icvLen() int { return c.mac.icv }

// xor XORs src with the RFC 3686 key stream for iv into dst (same length;
// equal or not overlapping).
func (c *ctrCipher) xor(dst, src, iv []byte) {
	copy(c.nonce[4:], iv)
	n := len(src)
	if n < ctrViaGCM {
		c.xorAt(dst, src, 0)
		return
	}
	tail := n - aes.BlockSize
	copy(c.save[:], src[tail:])
	c.xorAt(dst[:aes.BlockSize], src[:aes.BlockSize], 0)
	// Bytes 16 … tail-1; the 16-byte tag lands on dst[tail:n].
	c.gcm.Seal(dst[aes.BlockSize:aes.BlockSize], c.nonce[:], src[aes.BlockSize:tail], nil)
	c.xorAt(dst[tail:n], c.save[:], tail)
}

// xorAt XORs src into dst with the key stream from byte offset off on.
func (c *ctrCipher) xorAt(dst, src []byte, off int) {
	copy(c.ctr[:12], c.nonce[:])
	for len(src) > 0 {
		in := off % aes.BlockSize
		binary.BigEndian.PutUint32(c.ctr[12:], uint32(off/aes.BlockSize+1))
		c.block.Encrypt(c.ks[:], c.ctr[:])
		m := min(aes.BlockSize-in, len(src))
		subtle.XORBytes(dst[:m], src[:m], c.ks[in:in+m])
		dst, src, off = dst[m:], src[m:], off+m
	}
}

func (c *ctrCipher) seal(e []byte, end int, seqHi uint32, esn bool) {
	c.xor(e[16:end], e[16:end], e[8:16])
	copy(e[end:end+c.mac.icv], c.mac.mac(e[:end], seqHi, esn))
}

func (c *ctrCipher) open(e []byte, seqHi uint32, esn bool) error {
	if err := c.mac.verify(e, seqHi, esn); err != nil {
		return err
	}
	ct := e[16 : len(e)-c.mac.icv]
	c.xor(ct, ct, e[8:16])
	return nil
}

func (c *ctrCipher) decrypt(dst, e []byte) []byte {
	ct := e[16 : len(e)-c.mac.icv]
	dst = dst[:len(ct)]
	c.xor(dst, ct, e[8:16])
	return dst
}
