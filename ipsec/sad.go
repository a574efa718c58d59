package ipsec

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Entry is an SA in the SAD, of one permission class. Exactly one of Write
// and Read is set for classes write and read; a none-class entry carries
// only its Config (without keys), so a holder can recognise and relay the
// SA's packets and do nothing else.
type Entry struct {
	Config Config // keys removed
	Write  *SA
	Read   *ReadSA
	// KeyID names the SA's keys without revealing them: the first 16
	// bytes of SHA-256 over a label, the transforms and the keys. State a
	// holder keeps about an SA (a gateway's sequence numbers) is kept per
	// ID and KeyID, so that an SPI given again with new keys starts
	// afresh and the same keys given again carry on.
	KeyID [16]byte
	keyed *keyed
}

// keyed is an entry's configuration with its keys, for Keyed.
type keyed struct {
	mu  sync.Mutex
	cfg Config
}

// KeyIDOf computes Entry.KeyID for a configuration that still holds its
// keys.
func KeyIDOf(c *Config) [16]byte {
	h := sha256.New()
	h.Write([]byte("espep sa key id 1\x00"))
	var b [4]byte
	b[0], b[1] = byte(c.Enc), byte(c.Integ)
	binary.BigEndian.PutUint16(b[2:], uint16(len(c.EncKey)))
	h.Write(b[:])
	h.Write(c.EncKey)
	h.Write(c.IntegKey)
	return [16]byte(h.Sum(nil))
}

// Class returns the entry's permission class.
func (e *Entry) Class() Class { return e.Config.Class }

// NewEntry builds the SA for cfg according to its class.
func NewEntry(cfg Config) (*Entry, error) {
	e := &Entry{KeyID: KeyIDOf(&cfg)}
	var err error
	switch cfg.Class {
	case ClassWrite:
		if e.Write, err = New(cfg); err != nil {
			return nil, err
		}
		e.Config = e.Write.Config()
		e.keyed = &keyed{cfg: cfg.CloneKeys()}
	case ClassRead:
		if e.Read, err = NewReader(cfg); err != nil {
			return nil, err
		}
		e.Config = e.Read.Config()
		e.keyed = &keyed{cfg: cfg.CloneKeys()} // no integrity key: NewReader refuses one
	default:
		if err := cfg.validate(); err != nil {
			return nil, fmt.Errorf("sa %v: %w", cfg.ID(), err)
		}
		cfg.EncKey, cfg.IntegKey = nil, nil
		e.Config = cfg
	}
	return e, nil
}

// Keyed returns the entry's configuration with keys of its own (the
// caller wipes them: Config.WipeKeys), for handing the SA on to another
// holder over an authenticated, encrypted channel — a gateway
// pre-provisioning its neighbours. A read-class entry has no integrity
// key to give; after Wipe, and for an entry not made by NewEntry, ok is
// false.
func (e *Entry) Keyed() (cfg Config, ok bool) {
	if e.keyed == nil {
		return Config{}, false
	}
	e.keyed.mu.Lock()
	defer e.keyed.mu.Unlock()
	if e.keyed.cfg.EncKey == nil && e.keyed.cfg.IntegKey == nil {
		return Config{}, false
	}
	return e.keyed.cfg.CloneKeys(), true
}

// Wipe destroys the entry's keys (SA.Wipe, ReadSA.Wipe); every later
// use fails.
func (e *Entry) Wipe() { e.wipe() }

func (e *Entry) wipe() {
	if e.keyed != nil {
		e.keyed.mu.Lock()
		e.keyed.cfg.WipeKeys()
		e.keyed.cfg.EncKey, e.keyed.cfg.IntegKey = nil, nil
		e.keyed.mu.Unlock()
	}
	if e.Write != nil {
		e.Write.Wipe()
	}
	if e.Read != nil {
		e.Read.Wipe()
	}
}

// SAD is the security association database (RFC 4301 §4.4.2): SAs keyed
// by (SPI, destination, protocol), looked up in O(1) without locks. An SA
// whose destination is unspecified (a wildcard, as Wireshark's esp_sa "*"
// allows) matches any destination with that SPI and protocol.
type SAD struct {
	mu sync.Mutex // serialises writers
	m  atomic.Pointer[map[ID]*Entry]
}

// Add inserts an entry; an SA with the same ID must be deleted first.
func (d *SAD) Add(e *Entry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := e.Config.ID()
	old := d.snapshot()
	if _, ok := old[id]; ok {
		return fmt.Errorf("sad: %v already present", id)
	}
	m := make(map[ID]*Entry, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[id] = e
	d.m.Store(&m)
	return nil
}

// Delete removes an SA and wipes its keys.
func (d *SAD) Delete(id ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.snapshot()
	e, ok := old[id]
	if !ok {
		return false
	}
	m := make(map[ID]*Entry, len(old))
	for k, v := range old {
		if k != id {
			m[k] = v
		}
	}
	d.m.Store(&m)
	e.wipe()
	return true
}

func (d *SAD) snapshot() map[ID]*Entry {
	if p := d.m.Load(); p != nil {
		return *p
	}
	return nil
}

// Lookup finds the SA for an inbound packet.
func (d *SAD) Lookup(spi uint32, dst netip.Addr, proto Proto) (*Entry, bool) {
	m := d.snapshot()
	if e, ok := m[ID{SPI: spi, Dst: dst, Proto: proto}]; ok {
		return e, true
	}
	e, ok := m[ID{SPI: spi, Proto: proto}]
	return e, ok
}

// LookupLoc is Lookup for the ESP or AH header Locate found in a packet.
func (d *SAD) LookupLoc(l *Loc) (*Entry, bool) {
	proto := ESP
	if l.Kind == KindAH {
		proto = AH
	}
	return d.Lookup(l.SPI, l.Dst, proto)
}

// Get returns the entry with exactly this ID.
func (d *SAD) Get(id ID) (*Entry, bool) {
	e, ok := d.snapshot()[id]
	return e, ok
}

// Len returns the number of SAs.
func (d *SAD) Len() int { return len(d.snapshot()) }

// Entries returns every entry, in no particular order.
func (d *SAD) Entries() []*Entry {
	m := d.snapshot()
	out := make([]*Entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	return out
}
