package ipsec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"
)

// An IVSource fills the IV of each packet an SA seals. The SA calls it with
// its outbound lock held, once per packet, with the packet's 64-bit
// sequence number.
//
// For the counter-mode and AEAD transforms the IV must never repeat under a
// key (RFC 4106 §3.1, RFC 7634 §2): that, not secrecy, is the requirement.
// For AES-CBC it must be unpredictable (RFC 3602 §2.3).
type IVSource interface {
	NextIV(iv []byte, seq uint64) error
}

// SeqIV uses the sequence number as the IV, zero-extended on the left. It is
// unique per key for as long as the sender's sequence numbers are, and it is
// what most implementations send for GCM and ChaCha20. Not for AES-CBC.
type SeqIV struct{}

func (SeqIV) NextIV(iv []byte, seq uint64) error {
	clear(iv)
	binary.BigEndian.PutUint64(iv[len(iv)-8:], seq)
	return nil
}

// CounterIV hands out the IVs Next, Next+1, … up to but excluding End and
// then fails with ErrIVExhausted. A gateway that seals on an endpoint's SA
// gives itself a range the endpoint never uses (DESIGN.md rule 1).
type CounterIV struct {
	mu        sync.Mutex
	Next, End uint64
}

func (c *CounterIV) NextIV(iv []byte, _ uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Next >= c.End {
		return fmt.Errorf("counter iv %#x: %w", c.Next, ErrIVExhausted)
	}
	clear(iv)
	binary.BigEndian.PutUint64(iv[len(iv)-8:], c.Next)
	c.Next++
	return nil
}

// cbcIV makes unpredictable IVs cheaply: AES under a random per-SA key of a
// counter, the construction of RFC 3602 §2.3's "encrypted counter" kind
// (and Linux's seqiv for CBC).
type cbcIV struct {
	b   cipher.Block
	ctr [aes.BlockSize]byte
	n   uint64
}

func newCBCIV() (*cbcIV, error) {
	var k [16]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, fmt.Errorf("cbc iv key: %w", err)
	}
	b, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, err
	}
	clear(k[:])
	return &cbcIV{b: b}, nil
}

func (c *cbcIV) NextIV(iv []byte, seq uint64) error {
	c.n++
	binary.BigEndian.PutUint64(c.ctr[:8], c.n)
	binary.BigEndian.PutUint64(c.ctr[8:], seq)
	c.b.Encrypt(iv[:aes.BlockSize], c.ctr[:])
	return nil
}

// FixedIV always returns the same IV. It exists for known-answer tests
// against vectors made elsewhere; never use it for traffic.
type FixedIV []byte

func (f FixedIV) NextIV(iv []byte, _ uint64) error {
	if len(f) != len(iv) {
		return fmt.Errorf("fixed iv is %d bytes, transform needs %d", len(f), len(iv))
	}
	copy(iv, f)
	return nil
}
