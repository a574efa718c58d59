package gateway

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// Nonce safety (DESIGN.md rule 1).
//
// AES-GCM, ChaCha20-Poly1305 and AES-CTR ESP carry an 8-byte IV that, with
// the key and the SA's salt, is the cipher's nonce: one (key, IV) pair used
// twice — by the endpoint and the gateway together, or by two lives of
// the gateway — breaks confidentiality and, for the AEADs, lets anyone
// forge. The gateway seals on the endpoint's SA, so it must use IVs the
// endpoint will never use, and never one it used itself before.
//
// What the endpoints do: Linux (crypto/seqiv.c) and strongSwan (iv_gen_seq)
// send IV = BE64(seq) ⊕ salt, with a random 64-bit salt per SA, and espep's
// own SA sends IV = BE64(seq) (salt 0). The sequence number seq of an SA
// without ESN stays below 2^32 (the SA must be rekeyed before it wraps), and
// with ESN below 2^63 for any lifetime an SA can have. So the endpoint's IVs
// lie in {s ⊕ salt : s < 2^63}, and the gateway takes the other half:
// IV = c ⊕ salt with c ≥ 2^63 — disjoint from the endpoint's, whatever c.
//
// The gateway's own counters c never repeat, across SAs, restarts and
// crashes: c = 2^63 | b·2^32 | n, where b is a block of 2^32 counters the
// state directory reserved for this process — on disk, synced, before the
// first use (package statedir argues it) — and n counts within the block,
// one counter for every SA. A key the gateway forgot (its state pruned,
// its SA given again, the process restarted) gets counters it has never
// had. Without a state directory nothing survives a restart, so the
// gateway never seals on these SAs (it relays them untouched and says so
// once); AES-CBC needs unpredictable IVs, not unique ones (the SA's own
// random-keyed generator gives them), and NULL and AH have no IV.
//
// The gateway recovers the salt as IV ⊕ seq from a packet it has verified
// (so an attacker cannot feed it a salt), and believes it only once a
// second verified packet with a different sequence number gives the same
// salt: an endpoint whose IVs are random (or anything but seq ⊕ salt) fails
// that test with probability 1 − 2^-64, and the gateway then never seals on
// the SA (it relays the SA's packets untouched: read behaviour) and logs
// it. Until the salt is confirmed the gateway does not seal either; the
// engine's packets for that SA are dropped (counted), and TCP repairs that.
// A confirmed salt is public (every packet shows IV and seq) and goes to
// the state directory, so that a restarted gateway needs only one
// verified packet — one that agrees with it — before it seals again.

// noncePlan is what the gateway knows of an SA's IV generator.
type noncePlan struct {
	mu        sync.Mutex
	sensitive bool   // the transform has counter IVs
	noState   bool   // sensitive, and no state directory: never sealed on
	salt      uint64 // IV ⊕ seq, as first seen
	seen      int    // verified packets whose salt agreed
	firstSeq  uint64
	broken    bool // the endpoint's IVs are not seq ⊕ salt
	iv        *saltedCounterIV
	space     *ivSpace
}

// counterBase is the top bit every gateway counter has: the half of the IV
// space no endpoint sequence number reaches.
const counterBase = 1 << 63

func newNoncePlan(cfg ipsec.Config, space *ivSpace) *noncePlan {
	p := &noncePlan{sensitive: cfg.Enc == ipsec.EncAESCTR || cfg.Enc.AEAD(), space: space}
	p.noState = p.sensitive && space == nil
	return p
}

// observe learns from a verified packet: iv is its 8-byte IV, seq its
// 64-bit sequence number. It reports whether this packet confirmed the
// salt, and returns an error the first time the IV shows that the
// endpoint does not use seq ⊕ salt.
func (p *noncePlan) observe(iv []byte, seq uint64) (confirmed bool, err error) {
	if !p.sensitive || len(iv) != 8 {
		return false, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken {
		return false, nil
	}
	salt := binary.BigEndian.Uint64(iv) ^ seq
	switch {
	case p.seen == 0:
		p.salt, p.seen, p.firstSeq = salt, 1, seq
	case salt != p.salt:
		p.broken = true
		return false, fmt.Errorf("the endpoint's IVs are not its sequence number XOR a fixed salt (seq %d and %d disagree): never sealing on this SA", p.firstSeq, seq)
	case seq != p.firstSeq:
		p.seen++
		confirmed = p.seen == 2
	}
	if seq >= counterBase {
		p.broken = true
		return false, fmt.Errorf("sequence number %d reaches the gateway's IV range: never sealing on this SA", seq)
	}
	return confirmed, nil
}

// recall starts the plan with a salt confirmed by an earlier life of the
// gateway (statedir): the first verified packet must agree with it, as a
// second one would, and the gateway seals from that packet on.
func (p *noncePlan) recall(salt uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sensitive && p.seen == 0 {
		p.salt, p.seen, p.firstSeq = salt, 1, ^uint64(0)
	}
}

// refused reports whether the gateway will never seal on the SA.
func (p *noncePlan) refused() bool {
	if p.noState {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken
}

// confirmed reports whether the gateway may seal (the salt confirmed, or
// no counter IVs at all).
func (p *noncePlan) confirmed() bool {
	if !p.sensitive {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.broken && !p.noState && p.seen >= 2
}

// ivSource returns the IV source the gateway may seal with, or nil while
// it may not (salt not confirmed, or the endpoint's generator unknown).
func (p *noncePlan) ivSource() (ipsec.IVSource, bool) {
	if !p.sensitive {
		return nil, true // the SA's own source: random-keyed for CBC, none for NULL/AH
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken || p.noState || p.seen < 2 {
		return nil, false
	}
	if p.iv == nil {
		p.iv = &saltedCounterIV{salt: p.salt, space: p.space}
	}
	return p.iv, true
}

// saltedCounterIV hands out c ⊕ salt for counters c from the gateway's IV
// space: IVs in the half of the space the endpoint's seq ⊕ salt never
// reaches, each counter once.
type saltedCounterIV struct {
	salt  uint64
	space *ivSpace
}

func (s *saltedCounterIV) NextIV(iv []byte, _ uint64) error {
	c, err := s.space.next()
	if err != nil {
		return err
	}
	clear(iv)
	binary.BigEndian.PutUint64(iv[len(iv)-8:], c^s.salt)
	return nil
}

// ivSpace is the gateway's IV counter: c = 2^63 | b·2^32 | n over blocks b
// the state directory reserves durably, one block at a time. Sealing on
// any SA takes the next n of the current block with one atomic add, so
// seals on several cores share no lock; the block is replaced under mu,
// as a new object, so a counter taken from an old block can never be
// taken again from the new one.
type ivSpace struct {
	mu  sync.Mutex // serialises reserving a block
	dir *statedir.Dir
	cur atomic.Pointer[ivBlock] // nil: none reserved yet
}

// ivBlock is one reserved block and the next counter in it.
type ivBlock struct {
	b uint64
	n atomic.Uint64
}

func (s *ivSpace) next() (uint64, error) {
	for {
		blk := s.cur.Load()
		if blk != nil {
			if n := blk.n.Add(1) - 1; n < 1<<32 {
				return counterBase | blk.b<<32 | n, nil
			}
		}
		if err := s.refill(blk); err != nil {
			return 0, err
		}
	}
}

// refill reserves a new block unless another goroutine already replaced
// used, the block the caller found empty (or nil).
func (s *ivSpace) refill(used *ivBlock) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != used {
		return nil
	}
	b, err := s.dir.IVBlock()
	if err != nil {
		return fmt.Errorf("gateway iv space: %w: %w", err, ipsec.ErrIVExhausted)
	}
	if b == 0 || b > statedir.MaxBlock {
		return fmt.Errorf("gateway iv space: block %d: %w", b, ipsec.ErrIVExhausted)
	}
	s.cur.Store(&ivBlock{b: b})
	return nil
}
