package gateway

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/espep/espep/ipsec"
)

// Nonce safety (DESIGN.md rule 1).
//
// AES-GCM, ChaCha20-Poly1305 and AES-CTR ESP carry an 8-byte IV that, with
// the key and the SA's salt, is the cipher's nonce: one (key, IV) pair used
// twice — by the endpoint and the gateway together — breaks confidentiality
// and, for the AEADs, lets anyone forge. The gateway seals on the
// endpoint's SA, so it must use IVs the endpoint will never use.
//
// What the endpoints do: Linux (crypto/seqiv.c) and strongSwan (iv_gen_seq)
// send IV = BE64(seq) ⊕ salt, with a random 64-bit salt per SA, and espep's
// own SA sends IV = BE64(seq) (salt 0). The sequence number seq of an SA
// without ESN stays below 2^32 (the SA must be rekeyed before it wraps), and
// with ESN below 2^63 for any lifetime an SA can have. So the endpoint's IVs
// lie in {s ⊕ salt : s < 2^63}, and the gateway takes the other half:
// IV = c ⊕ salt for c = 2^63, 2^63+1, … — disjoint, whatever c reaches.
//
// The gateway recovers the salt as IV ⊕ seq from a packet it has verified
// (so an attacker cannot feed it a salt), and believes it only once a
// second verified packet with a different sequence number gives the same
// salt: an endpoint whose IVs are random (or anything but seq ⊕ salt) fails
// that test with probability 1 − 2^-64, and the gateway then never seals on
// the SA (it relays the SA's packets untouched: read behaviour) and logs
// it. Until the salt is confirmed the gateway does not seal either; the
// engine's packets for that SA are dropped (counted), and TCP repairs that.
// AES-CBC needs unpredictable IVs, not unique ones, and the gateway's own
// random-keyed IV generator provides them; NULL and AH have no IV.

// noncePlan is what the gateway knows of an SA's IV generator.
type noncePlan struct {
	mu        sync.Mutex
	sensitive bool   // the transform has counter IVs
	salt      uint64 // IV ⊕ seq, as first seen
	seen      int    // verified packets whose salt agreed
	firstSeq  uint64
	broken    bool // the endpoint's IVs are not seq ⊕ salt
	iv        *saltedCounterIV
	carried   uint64 // the counter a previous entry for the SA reached (0: none)
}

// counterBase is the first counter the gateway uses: the half of the IV
// space no endpoint sequence number reaches.
const counterBase = 1 << 63

func newNoncePlan(cfg ipsec.Config) *noncePlan {
	p := &noncePlan{sensitive: cfg.Enc == ipsec.EncAESCTR || cfg.Enc.AEAD()}
	return p
}

// observe learns from a verified packet: iv is its 8-byte IV, seq its
// 64-bit sequence number. It returns an error the first time the IV shows
// that the endpoint does not use seq ⊕ salt.
func (p *noncePlan) observe(iv []byte, seq uint64) error {
	if !p.sensitive || len(iv) != 8 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken {
		return nil
	}
	salt := binary.BigEndian.Uint64(iv) ^ seq
	switch {
	case p.seen == 0:
		p.salt, p.seen, p.firstSeq = salt, 1, seq
	case salt != p.salt:
		p.broken = true
		return fmt.Errorf("the endpoint's IVs are not its sequence number XOR a fixed salt (seq %d and %d disagree): never sealing on this SA", p.firstSeq, seq)
	case seq != p.firstSeq:
		p.seen++
	}
	if seq >= counterBase {
		p.broken = true
		return fmt.Errorf("sequence number %d reaches the gateway's IV range: never sealing on this SA", seq)
	}
	return nil
}

// carry continues old's IV counter in p (a new entry for the same SA, whose
// key may be the same): the gateway's IVs never go back, and the salt is
// learned again from the endpoint's packets.
func (p *noncePlan) carry(old *noncePlan) {
	old.mu.Lock()
	defer old.mu.Unlock()
	if old.iv != nil {
		old.iv.mu.Lock()
		p.carried = old.iv.next
		old.iv.mu.Unlock()
	}
	p.carried = max(p.carried, old.carried)
}

// isBroken reports whether the gateway will never seal on the SA.
func (p *noncePlan) isBroken() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken
}

// ivSource returns the IV source the gateway may seal with, or nil while
// it may not (salt not confirmed, or the endpoint's generator unknown).
func (p *noncePlan) ivSource() (ipsec.IVSource, bool) {
	if !p.sensitive {
		return nil, true // the SA's own source: random-keyed for CBC, none for NULL/AH
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken || p.seen < 2 {
		return nil, false
	}
	if p.iv == nil {
		p.iv = &saltedCounterIV{salt: p.salt, next: max(counterBase, p.carried)}
	}
	return p.iv, true
}

// saltedCounterIV hands out c ⊕ salt for c = 2^63, 2^63+1, …: IVs in the
// half of the space the endpoint's seq ⊕ salt never reaches.
type saltedCounterIV struct {
	mu   sync.Mutex
	salt uint64
	next uint64
}

func (s *saltedCounterIV) NextIV(iv []byte, _ uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == 0 { // wrapped past 2^64 − 1: never happens within a lifetime
		return fmt.Errorf("gateway iv range: %w", ipsec.ErrIVExhausted)
	}
	clear(iv)
	binary.BigEndian.PutUint64(iv[len(iv)-8:], s.next^s.salt)
	s.next++
	return nil
}
