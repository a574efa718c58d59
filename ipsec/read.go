package ipsec

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/espep/espep/ipsec/header"
)

// ReadSA is a read-class SA (DESIGN.md "Permission classes"): it holds the
// decryption key and no integrity key, so it can read what a packet carries
// but can neither verify nor make a packet. Its only operation, Decrypt,
// writes into a separate buffer and leaves the original ciphertext intact
// for the holder to forward or resend.
type ReadSA struct {
	cfg        Config
	id         ID
	otherDrops atomic.Uint64

	mu sync.Mutex
	d  espDecrypter // ESP; nil for AH, which has nothing to decrypt
	ok bool

	packets, bytes uint64
}

// Stats returns the SA's counters (inbound only: a read SA cannot seal).
func (r *ReadSA) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{InPackets: r.packets, InBytes: r.bytes, OtherDrops: r.otherDrops.Load()}
}

// NewReader makes a read-class SA. cfg.Class must be ClassRead, cfg must
// carry no integrity key, and the transform must not be combined-mode
// (its key would also forge: ErrReadAEAD).
func NewReader(cfg Config) (*ReadSA, error) {
	if cfg.Class != ClassRead {
		return nil, fmt.Errorf("sa %v: class %v: NewReader makes read-class SAs", cfg.ID(), cfg.Class)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("sa %v: %w", cfg.ID(), err)
	}
	if len(cfg.IntegKey) != 0 {
		return nil, fmt.Errorf("sa %v: a read-class SA must not hold an integrity key", cfg.ID())
	}
	r := &ReadSA{cfg: cfg, id: cfg.ID(), ok: true}
	if cfg.Proto == ESP {
		var err error
		if r.d, err = newESPDecrypter(cfg.Enc, cfg.EncKey, cfg.Integ); err != nil {
			return nil, fmt.Errorf("sa %v: %w", r.id, err)
		}
	}
	r.cfg.EncKey = nil
	return r, nil
}

// ID returns the SA's SAD key.
func (r *ReadSA) ID() ID { return r.id }

// Config returns the configuration without keys.
func (r *ReadSA) Config() Config { return r.cfg }

// Wipe drops the key; later Decrypts fail.
func (r *ReadSA) Wipe() {
	r.mu.Lock()
	r.d, r.ok = nil, false
	r.mu.Unlock()
}

// Decrypt decrypts the IPsec packet pkt, without verifying it, into dst
// (which needs len(pkt) bytes of capacity) and returns the packet inside as
// SA.Open would. pkt is not modified. The result is unauthenticated: a
// read-class holder may look at it, never act on it as if verified.
func (r *ReadSA) Decrypt(dst, pkt []byte) ([]byte, error) {
	l, err := Locate(pkt)
	if err != nil {
		r.otherDrops.Add(1)
		return nil, fmt.Errorf("sa %v: decrypt: %w", r.id, err)
	}
	if (l.Kind != KindESP && l.Kind != KindAH) || Proto(l.Kind.proto()) != r.cfg.Proto || l.SPI != r.cfg.SPI ||
		(r.cfg.Dst.IsValid() && l.Dst != r.cfg.Dst) {
		r.otherDrops.Add(1)
		return nil, fmt.Errorf("sa %v: %v spi=%#08x: %w", r.id, l.Kind, l.SPI, ErrWrongSA)
	}
	pkt = pkt[:l.Len]
	if cap(dst) < len(pkt) {
		return nil, fmt.Errorf("sa %v: decrypt needs %d bytes, dst holds %d: %w", r.id, len(pkt), cap(dst), ErrNoRoom)
	}
	dst = dst[:cap(dst)]
	hl := l.HeaderLen()
	var payload []byte
	var next uint8
	if l.Kind == KindAH {
		a := header.AH(pkt[l.Off:])
		if err := checkAHLen(r.cfg.Integ, a.Len()); err != nil {
			r.otherDrops.Add(1)
			return nil, fmt.Errorf("sa %v: %w", r.id, err)
		}
		payload = append(dst[hl:hl], a.Payload()...)
		next = a.NextHeader()
	} else {
		r.mu.Lock()
		if !r.ok {
			r.mu.Unlock()
			return nil, fmt.Errorf("sa %v: %w", r.id, ErrHardExpired)
		}
		e := pkt[l.Off:]
		ct := len(e) - header.ESPLen - r.d.ivLen() - r.d.icvLen()
		if ct < 2 || (r.cfg.Enc == EncAESCBC && ct%16 != 0) {
			r.mu.Unlock()
			r.otherDrops.Add(1)
			return nil, fmt.Errorf("sa %v: esp ciphertext of %d bytes: %w", r.id, ct, ErrMalformed)
		}
		body := r.d.decrypt(dst[hl:], e)
		r.mu.Unlock()
		var err error
		if payload, next, err = espTrailer(r.id, body); err != nil {
			r.otherDrops.Add(1)
			return nil, err
		}
	}
	r.mu.Lock()
	r.packets++
	r.bytes += uint64(len(payload))
	r.mu.Unlock()
	if next == header.ProtoNoNext {
		return nil, fmt.Errorf("sa %v: %w", r.id, ErrDummy)
	}
	if r.cfg.tunnelFor(next) {
		return trimInner(payload)
	}
	copy(dst[:hl], pkt[:hl])
	out := dst[:hl+len(payload)]
	restoreTransport(out, l.NHOff, next)
	return out, nil
}
