// Package ikefollow follows IKEv2 for a gateway (DESIGN.md's scheme 2):
// given an IKE SA's keys by a party that holds them, it reads the IKE
// messages the gateway relays, opens their SK payloads, and derives the
// keys of every CHILD_SA they create — the one in IKE_AUTH and each
// CREATE_CHILD_SA rekey without PFS — with their SPIs, addresses, mode,
// encapsulation and selectors, ready for the gateway's SAD. It also says
// what it cannot follow: a CHILD_SA with PFS (its keys need the
// Diffie-Hellman secret only the peers have) and an IKE SA rekey (the new
// IKE SA's keys must be delegated anew).
//
// What is not verified changes nothing that matters: the radio side may
// send anything. Before keys are known, messages are held (bounded) or
// dropped; with keys, an SK payload whose integrity check fails is counted
// and ignored. IKE_SA_INIT is cleartext, so its nonces could be forged;
// if two different ones are seen for an IKE SA, its IKE_AUTH CHILD_SA is
// not derived (counted as missed) rather than derived from the wrong one.
// Every table has a bound; unkeyed state goes first.
//
// It does not decrypt fragmented messages (RFC 7383 SKF), and follows
// CHILD_SAs whose traffic selectors are one range each exactly; others
// get selectors that admit any traffic (the SA's addresses still decide).
package ikefollow

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
)

// Config bounds a Follower.
type Config struct {
	MaxIKESAs    int              // IKE SAs tracked (default 4096); the least recently seen unkeyed one goes first
	MaxUnbound   int              // delegated key sets not yet bound to an IKE SA (default 16); the oldest goes
	MaxHeld      int              // messages held per IKE SA until its keys come (default 8)
	MaxHeldBytes int              // messages held in all (default 1 MiB)
	Now          func() time.Time // default time.Now
	Log          *slog.Logger
}

func (c *Config) defaults() {
	if c.MaxIKESAs <= 0 {
		c.MaxIKESAs = 4096
	}
	if c.MaxUnbound <= 0 {
		c.MaxUnbound = 16
	}
	if c.MaxHeld <= 0 {
		c.MaxHeld = 8
	}
	if c.MaxHeldBytes <= 0 {
		c.MaxHeldBytes = 1 << 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Stats count what a Follower saw and did.
type Stats struct {
	Messages    uint64 // IKE messages observed
	Malformed   uint64 // that did not parse, or whose SK payload did not
	Integrity   uint64 // whose SK payload failed its integrity check under the IKE SA's keys
	Held        uint64 // held until their IKE SA's keys come
	Unkeyed     uint64 // dropped: no keys came in time, or a bound was reached
	Unsupported uint64 // SKF fragments, transforms not supported
	Bound       uint64 // delegated key sets bound to an IKE SA (by SPIs or by a verified message)
	Handed      uint64 // IKE SAs' keys taken from a neighbour gateway (AddHanded)
	Children    uint64 // CHILD_SAs whose keys were derived
	PFS         uint64 // CHILD_SAs with PFS: not derivable, left to another source
	Missed      uint64 // CHILD_SAs not derived for want of (unambiguous) IKE_SA_INIT nonces
	IKERekeys   uint64 // IKE SA rekeys seen (the new IKE SA needs its keys delegated)
	Deletes     uint64 // CHILD_SAs a verified Delete removed
	Evicted     uint64 // IKE SAs forgotten to stay within MaxIKESAs, or whose handed keys lapsed unused
}

// Packet is one IKE message as the gateway relays it: the UDP addresses
// and the message (after the UDP header, and after port 4500's non-ESP
// marker).
type Packet struct {
	Src, Dst netip.AddrPort
	Msg      []byte
}

// PacketAt is the IKE message of pkt, an IP packet that ipsec.Locate
// found to be IKE (l.Kind KindIKE: UDP at l.Off, on port 500, or on 4500
// behind the non-ESP marker), with its addresses. Msg is a view into
// pkt: a caller that keeps the Packet copies it.
func PacketAt(pkt []byte, l ipsec.Loc) (Packet, bool) {
	if l.Kind != ipsec.KindIKE || l.Off+8 > l.Len || l.Len > len(pkt) {
		return Packet{}, false
	}
	udp := pkt[l.Off:l.Len]
	sp, dp := binary.BigEndian.Uint16(udp), binary.BigEndian.Uint16(udp[2:])
	msg := udp[8:]
	if sp != ipsec.PortIKE && dp != ipsec.PortIKE {
		if len(msg) < 4 {
			return Packet{}, false // no non-ESP marker: a Loc not from Locate
		}
		msg = msg[4:]
	}
	return Packet{Src: netip.AddrPortFrom(l.Src, sp), Dst: netip.AddrPortFrom(l.Dst, dp), Msg: msg}, true
}

// PacketOfFrame is PacketAt for a captured frame of the link type (the
// Msg a view into frame): how tools and tests read IKE from a capture.
func PacketOfFrame(linkType uint32, frame []byte) (Packet, bool) {
	off, _, ok, err := pcapio.IPOffset(linkType, frame)
	if err != nil || !ok {
		return Packet{}, false
	}
	l, err := ipsec.Locate(frame[off:])
	if err != nil {
		return Packet{}, false
	}
	return PacketAt(frame[off:], l)
}

// Result is what one call found: the SAs exchanges created (both
// directions of each CHILD_SA, keys included: the caller owns and wipes
// them), the SAs verified deletes removed, and the CHILD_SAs that cannot
// be followed (with PFS), by the address pair whose SAs another source
// must give.
type Result struct {
	Created []ipsec.Config
	Deleted []ipsec.ID
	PFS     [][2]netip.Addr
}

// Follower follows the IKE SAs whose keys it is given. Its methods may be
// called from several goroutines; each call holds one lock throughout
// (IKE is a few messages per SA per hour: no concurrency is needed).
type Follower struct {
	cfg Config

	mu        sync.Mutex
	sas       map[spis]*ikeSA
	inits     map[uint64]*initReq // IKE_SA_INIT requests by SPIi, answered or not
	unkeyed   *list.List          // of *ikeSA without keys, least recently seen first
	unbound   []ikev2.Keys        // delegated without SPIs, oldest first
	heldBytes int
	stats     Stats
}

type spis struct{ i, r uint64 }

// New makes a Follower.
func New(cfg Config) *Follower {
	cfg.defaults()
	return &Follower{cfg: cfg, sas: map[spis]*ikeSA{}, inits: map[uint64]*initReq{}, unkeyed: list.New()}
}

// Stats returns the counts so far.
func (f *Follower) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// AddKeys gives the follower an IKE SA's keys (it keeps its own copy).
// Keys with SPIs bind to that IKE SA at once; keys without are bound to
// the first IKE SA whose message they verify. Messages held for the IKE
// SA are then read.
func (f *Follower) AddKeys(k ikev2.Keys) (Result, error) {
	if err := k.Validate(); err != nil {
		return Result{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var res Result
	if f.known(&k) {
		return res, nil // given again (a server resends what it gave)
	}
	k = k.Clone()
	if k.SPIi == 0 && k.SPIr == 0 {
		if len(f.unbound) == f.cfg.MaxUnbound {
			f.unbound[0].Wipe()
			f.unbound = f.unbound[1:]
		}
		f.unbound = append(f.unbound, k)
		// Perhaps an IKE SA already waits for them: only the new keys
		// are tried (the others were, on each message as it came).
		for e := f.unkeyed.Front(); e != nil; e = e.Next() {
			sa := e.Value.(*ikeSA)
			if f.tryBind(sa, sa.held, len(f.unbound)-1) {
				f.release(sa, &res)
				break
			}
		}
		return res, nil
	}
	sa := f.lookup(spis{k.SPIi, k.SPIr}, true)
	if sa == nil {
		k.Wipe()
		return res, errors.New("ikefollow: no room for another IKE SA")
	}
	f.bind(sa, k)
	f.release(sa, &res)
	return res, nil
}

// Observe reads one IKE message the gateway relays and returns what it
// completed. The message is copied where it must be kept.
func (f *Follower) Observe(p Packet) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Messages++
	var res Result
	m, err := ikev2.Parse(p.Msg)
	if err != nil || m.Version>>4 != 2 {
		f.stats.Malformed++
		return res
	}
	if m.Exchange == ikev2.ExchangeSAInit {
		f.saInit(p, &m)
		return res
	}
	if m.SPIr == 0 {
		f.stats.Malformed++
		return res
	}
	sa := f.lookup(spis{m.SPIi, m.SPIr}, true)
	if sa == nil {
		f.stats.Unkeyed++
		return res
	}
	sa.seen, sa.handedUntil = f.cfg.Now(), time.Time{} // its traffic is here: no longer a neighbour's offer
	if sa.keys == nil {
		if !f.hold(sa, p) || !f.tryBind(sa, sa.held[len(sa.held)-1:], 0) {
			return res // a message is tried once against the unbound keys: a flood costs ≤ MaxUnbound checks each
		}
		f.release(sa, &res)
		return res
	}
	f.read(sa, p, &m, &res)
	return res
}

// known reports whether the follower has keys with k's SK_d already,
// bound or not.
func (f *Follower) known(k *ikev2.Keys) bool {
	for i := range f.unbound {
		if bytes.Equal(f.unbound[i].D, k.D) {
			return true
		}
	}
	for _, sa := range f.sas {
		if sa.keys != nil && bytes.Equal(sa.keys.D, k.D) {
			return true
		}
	}
	return false
}

// lookup returns the IKE SA s, making it (unkeyed, evicting the least
// recently seen unkeyed one when full) if create.
func (f *Follower) lookup(s spis, create bool) *ikeSA {
	if sa := f.sas[s]; sa != nil {
		if sa.elem != nil {
			f.unkeyed.MoveToBack(sa.elem)
		}
		return sa
	}
	if !create {
		return nil
	}
	if len(f.sas) >= f.cfg.MaxIKESAs {
		if victim := f.unkeyed.Front(); victim != nil {
			f.forget(victim.Value.(*ikeSA))
		} else if victim := f.lapsedHanded(); victim != nil {
			f.forget(victim)
		} else {
			return nil // every tracked IKE SA has keys: they came from a trusted source
		}
		f.stats.Evicted++
	}
	sa := &ikeSA{spis: s, seen: f.cfg.Now(), pending: map[reqKey]*request{}}
	if in := f.inits[s.i]; in != nil && in.spiR == s.r {
		sa.init = in
	}
	sa.elem = f.unkeyed.PushBack(sa)
	f.sas[s] = sa
	return sa
}

// forget drops an IKE SA and what it holds, wiping its keys.
func (f *Follower) forget(sa *ikeSA) {
	if sa.elem != nil {
		f.unkeyed.Remove(sa.elem)
		sa.elem = nil
	}
	for _, h := range sa.held {
		f.heldBytes -= len(h.Msg)
	}
	sa.held = nil
	if sa.keys != nil {
		sa.keys.Wipe()
	}
	delete(f.sas, sa.spis)
	if in := f.inits[sa.spis.i]; in != nil && in.spiR == sa.spis.r {
		delete(f.inits, sa.spis.i)
	}
}

// bind gives sa its keys.
func (f *Follower) bind(sa *ikeSA, k ikev2.Keys) {
	if sa.keys != nil {
		sa.keys.Wipe()
	}
	k.SPIi, k.SPIr = sa.spis.i, sa.spis.r
	sa.keys = &k
	if sa.elem != nil {
		f.unkeyed.Remove(sa.elem)
		sa.elem = nil
	}
	f.stats.Bound++
}

// tryBind looks for an unbound key set, from index from on, that
// verifies one of msgs (held messages of sa), and binds it to sa.
func (f *Follower) tryBind(sa *ikeSA, msgs []Packet, from int) bool {
	for _, h := range msgs {
		m, err := ikev2.Parse(h.Msg)
		if err != nil {
			continue
		}
		for i := from; i < len(f.unbound); i++ {
			k := &f.unbound[i]
			if _, err := k.Open(h.Msg, &m); err == nil {
				f.bind(sa, *k)
				f.unbound = append(f.unbound[:i], f.unbound[i+1:]...)
				return true
			}
		}
	}
	return false
}

// hold keeps a copy of a message of an IKE SA whose keys have not come;
// false if a bound refused it.
func (f *Follower) hold(sa *ikeSA, p Packet) bool {
	if len(sa.held) >= f.cfg.MaxHeld || f.heldBytes+len(p.Msg) > f.cfg.MaxHeldBytes {
		f.stats.Unkeyed++
		return false
	}
	p.Msg = append([]byte(nil), p.Msg...)
	sa.held = append(sa.held, p)
	f.heldBytes += len(p.Msg)
	f.stats.Held++
	return true
}

// release reads the messages held for sa, now that it has keys.
func (f *Follower) release(sa *ikeSA, res *Result) {
	held := sa.held
	sa.held = nil
	for _, h := range held {
		f.heldBytes -= len(h.Msg)
		m, err := ikev2.Parse(h.Msg)
		if err != nil {
			continue
		}
		f.read(sa, h, &m, res)
	}
}
