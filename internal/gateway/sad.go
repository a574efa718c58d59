package gateway

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// The SAs the gateway works with: the SAD it is given (replaced whole by
// SetSAD), the state it keeps per write-class SA, and the SAs it numbers
// that have left the SAD (draining).
//
// Keys are wiped when an SA leaves every table: an entry dropped from the
// SAD is wiped at once unless the gateway numbers its SA, in which case it
// drains — its packets are still opened and re-sealed, because relaying
// them with the endpoint's own numbers would have the receiver refuse
// them all (the gateway's lead) — and is wiped once none has come for
// DrainIdle, or at Close.

// saState is what the gateway keeps per write-class SA.
type saState struct {
	e     *ipsec.Entry
	key   statedir.SeqKey
	nonce *noncePlan
	// peer is the outer source and destination of the SA — as configured,
	// or for a wildcard SA as its first verified packet showed them — which
	// decides whether a flow may move to it (flows.go).
	peer [2]netip.Addr

	// accepted records the endpoint's numbers the gateway accepted (nil
	// without a state directory), every so often and exactly at a clean
	// stop: a successor counts every number up to the record as seen
	// (takeAccepted). Set before the state is published; an heir carries
	// its predecessor's.
	accepted *statedir.Accepts

	mu    sync.Mutex
	owned bool
	lease *statedir.Lease // from the moment the gateway numbers the SA
	maxIn uint64          // highest sequence number seen from the endpoint
	// relayed is the highest endpoint number the receiver may have seen
	// since the gateway took the SA over: originals relayed on a path
	// where the gateway could not seal. Its next number is above it.
	relayed   uint64
	last      uint64 // last number the gateway sealed with
	exhausted bool   // the SA's sequence numbers ran out at the gateway
	// provisioned: a neighbour gave the SA (provision.go); unanswered:
	// the mobile's flows on it came mid-stream and no neighbour handed
	// them over (Unanswered); resumed: a handoff brought the last number
	// the gateway before used on it. Without resumed, another gateway may
	// have numbered the SA ahead of the endpoint (takeoverJump).
	provisioned, unanswered, resumed bool
	// awaitIn: resumed after a restart (ResumeRestart), the SA is sealed
	// on only once a verified packet of the endpoint's shows how far its
	// own numbers went meanwhile — while no gateway was in the path they
	// may have reached the receiver directly (a TUN gateway's routes go
	// with it) — and the gateway then numbers above them.
	awaitIn bool
	// frame is the outer form the gateway seals in when the SA's
	// configuration does not state it (esp_sa lines carry no mode and no
	// UDP ports) or a NAT moved the ports: learned from verified packets.
	frame   *ipsec.Frame
	learned bool
	// outer is the SA whose packets carried this one's last (the next
	// layer of an AH+ESP bundle), nil when this SA is the outermost.
	outer *saState
	// next is the SA the flows of this one moved to (a rekey), or the
	// entry that replaced this one for the same SA in the SAD: where its
	// flows' packets are sealed once this one cannot be used.
	next *saState
	// heir is the state a new entry for the same SA took this one's
	// numbers over to (inherit), nil until then. Unlike next, which a
	// flow's packets may also set back toward an older state, it only
	// ever points at a newer state: following it ends.
	heir *saState
	// gen counts the rekeys behind this SA: one more than the SA its
	// flows moved from (0: none seen).
	gen int

	// handed: the SA went to another gateway with a mobile (HandOver);
	// set under mu. This gateway neither seals on it nor relays its
	// packets (their numbers are behind what the receiver saw) until it
	// is handed back (Resume).
	handed   atomic.Bool
	dead     atomic.Bool  // past its hard lifetime at the gateway, or wiped
	draining atomic.Bool  // left the SAD; kept while its packets come
	lastUse  atomic.Int64 // while draining: unix nanoseconds of its last verified packet or seal (from when it began to drain)
}

// numbered reports whether the gateway numbers the SA: its packets reach
// the receiver with the gateway's sequence numbers.
func (st *saState) numbered() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.owned
}

// lastHeir is the newest state that took st's numbers over, nil if none
// has.
func (st *saState) lastHeir() *saState {
	var h *saState
	for s, i := st, 0; i < maxHeirs; i++ {
		s.mu.Lock()
		n := s.heir
		s.mu.Unlock()
		if n == nil {
			break
		}
		h, s = n, n
	}
	return h
}

// maxHeirs bounds the walk along heirs (one per SetSAD that gave the SA
// again while a packet was on its way).
const maxHeirs = 8

func (st *saState) generation() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.gen
}

// forget ends the state's leases: the gateway no longer keeps the SA
// (their reservations stay the floors of any later leases).
func (st *saState) forget() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.lease != nil {
		st.lease.Drop()
		st.lease = nil
	}
	if st.accepted != nil {
		st.accepted.Drop() // not cleared: a packet opened just before the wipe may still note on it, which writes nothing more
	}
}

// release records the last number the gateway used on the SA, and the
// endpoint's highest it accepted, for a successor on the same state
// directory. No packet is opened any more.
func (st *saState) release() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.owned && st.lease != nil {
		st.lease.Release(st.last)
	}
	if st.accepted != nil {
		st.accepted.Release(st.e.Write.InTop())
	}
}

// behind reports whether the endpoint's numbers on st are a replay window
// or more behind the last number the gateways numbering it have used: a
// packet relayed as it came would be refused as a replay.
func (st *saState) behind() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	w := uint64(max(st.e.Config.ReplayWindow, 0))
	if w == 0 {
		w = 32 // the smallest common default
	}
	return st.owned && st.maxIn+w <= st.last
}

// noteRelayed records that an original of st's SA (and of each SA around
// it) went out with the endpoint's own number: the gateway numbers above
// it from now on.
func (st *saState) noteRelayed() {
	for i := 0; st != nil && i < maxBundle; i++ {
		st.mu.Lock()
		if st.owned {
			st.relayed = max(st.relayed, st.maxIn)
		}
		next := st.outer
		st.mu.Unlock()
		st = next
	}
}

func (g *Gateway) newState(e *ipsec.Entry) *saState {
	st := &saState{e: e, key: statedir.SeqKey{ID: e.Config.ID(), KeyID: e.KeyID}, nonce: newNoncePlan(e.Config, g.ivs)}
	st.peer = [2]netip.Addr{e.Config.Src, e.Config.Dst}
	_, st.provisioned = g.provEntries.Load(e)
	if g.cfg.State != nil {
		if salt, ok := g.cfg.State.Salt(st.key); ok {
			st.nonce.recall(salt)
		}
	}
	return st
}

// takeAccepted takes a new state's record of the endpoint's numbers (a
// state that inherits none): everything up to the last number recorded —
// accepted by a gateway process before this one, or by a state of this
// one since forgotten — counts as seen on the SA. Without it any packet
// the endpoint ever sent on the SA, replayed after a restart, would open
// again and be re-sealed with a fresh number: new to the receiver
// (DESIGN.md rule 3).
func (g *Gateway) takeAccepted(st *saState) {
	if g.cfg.State == nil {
		return
	}
	st.accepted = g.cfg.State.Accepts(st.key)
	if f := st.accepted.Floor(); f > 0 {
		st.e.Write.SeenThrough(f)
	}
}

// lookup finds the entry of an ESP or AH header: in the SAD, or among the
// draining SAs.
func (g *Gateway) lookup(l *ipsec.Loc) *ipsec.Entry {
	if e, _ := g.sad.Load().LookupLoc(l); e != nil {
		return e
	}
	proto := ipsec.ESP
	if l.Kind == ipsec.KindAH {
		proto = ipsec.AH
	}
	g.smu.Lock()
	defer g.smu.Unlock()
	st := g.draining[ipsec.ID{SPI: l.SPI, Dst: l.Dst, Proto: proto}]
	if st == nil {
		st = g.draining[ipsec.ID{SPI: l.SPI, Proto: proto}]
	}
	if st == nil {
		return nil
	}
	return st.e
}

// state returns the gateway's state for a write-class entry.
func (g *Gateway) state(e *ipsec.Entry) *saState {
	// Every packet asks: the answer is cached, lock-free, until the
	// tables change (clearStateCache).
	if st, ok := g.stateCache.Load(e); ok {
		return st.(*saState)
	}
	id := e.Config.ID()
	g.smu.Lock()
	defer g.smu.Unlock()
	st := g.states[id]
	switch {
	case st != nil && st.e == e:
	case g.draining[id] != nil && g.draining[id].e == e:
		st = g.draining[id]
	case st != nil && st.e.KeyID == e.KeyID && !g.inSAD(e):
		// e is from a SAD replaced since the packet's lookup, by one
		// giving the same SA again (the same keys): the state of the
		// entry that replaced it carries on. A state on e would seal with
		// keys about to be wiped, and take numbers the current state
		// takes too (TestSealAcrossEntryReplacement).
	default:
		st = g.newState(e)
		if old := g.states[id]; old != nil && old.e.KeyID == e.KeyID {
			g.inherit(st, old)
		} else {
			g.takeAccepted(st)
		}
		g.states[id] = st
	}
	g.stateCache.Store(e, st)
	return st
}

// inSAD reports whether e is the entry the gateway's SAD holds for its
// SA now (g.smu held: SetSAD swaps the SAD under it).
func (g *Gateway) inSAD(e *ipsec.Entry) bool {
	cur, ok := g.sad.Load().Get(e.Config.ID())
	return ok && cur == e
}

// clearStateCache forgets state's answers, after the tables changed
// (g.smu held).
func (g *Gateway) clearStateCache() { g.stateCache.Clear() }

// inherit carries what the gateway did on an SA over to a new entry for
// it (the same keys): its numbers continue, the outer form learned stays,
// its replay window goes on in the new entry — the old one opens nothing
// from here — and the old entry's flows move to the new one. A packet
// whose open on the old entry fails from then on opens on the heir
// (openLayer), which it finds under old.mu, so never before the window is
// there. Nobody has opened on nst's entry yet: its state is new.
func (g *Gateway) inherit(nst, old *saState) {
	old.mu.Lock()
	defer old.mu.Unlock()
	nst.e.Write.TakeInbound(old.e.Write)
	nst.owned, nst.last, nst.maxIn, nst.lease, nst.exhausted = old.owned, old.last, old.maxIn, old.lease, old.exhausted
	nst.relayed, nst.provisioned, nst.unanswered, nst.resumed = old.relayed, old.provisioned, old.unanswered, old.resumed
	nst.accepted = old.accepted
	nst.peer = old.peer
	nst.gen = old.gen // the same SA: as many rekeys behind it
	if old.learned {
		nst.learned = true
		if old.frame != nil {
			// The frame holds no key: rebuild it on the new entry's SA.
			m := old.frame.Mode()
			sp, dp := old.frame.Ports()
			if f, err := nst.e.Write.NewFrame(m, sp, dp, old.peer[0], old.peer[1]); err == nil {
				nst.frame = f
			}
		}
	}
	nst.nonce.mu.Lock()
	old.nonce.mu.Lock()
	if !old.nonce.broken && old.nonce.seen > 0 {
		nst.nonce.salt, nst.nonce.seen, nst.nonce.firstSeq = old.nonce.salt, old.nonce.seen, old.nonce.firstSeq
	}
	nst.nonce.broken = old.nonce.broken
	old.nonce.mu.Unlock()
	nst.nonce.mu.Unlock()
	old.next, old.heir = nst, nst
}

// SetSAD replaces the SAs the gateway works with, taking ownership of the
// new SAD's entries. An entry given again for the same SA with the same
// keys carries the gateway's state on (numbers, outer form, salt); an SA
// no longer present stops being used — its flows' packets are sealed on
// the SAs those flows moved to, if any — and its keys are wiped, unless
// the gateway numbers it: then it drains.
func (g *Gateway) SetSAD(sad *ipsec.SAD) {
	if sad == nil {
		sad = &ipsec.SAD{}
	}
	// Swapped under smu: a packet that finds a new entry asks for its
	// state (state), which waits until the states below are in place — so
	// none makes a state of its own for an SA that is about to inherit
	// one.
	g.smu.Lock()
	defer g.smu.Unlock()
	old := g.sad.Swap(sad)
	keep := map[*ipsec.Entry]bool{}
	for _, e := range sad.Entries() {
		keep[e] = true
	}
	now := time.Now()
	wiped := g.retire(sad, keep, now)
	if old != nil {
		held := func(m map[ipsec.ID]*saState, e *ipsec.Entry) bool {
			st := m[e.Config.ID()]
			return st != nil && st.e == e
		}
		for _, e := range old.Entries() {
			if !keep[e] && !held(g.states, e) && !held(g.draining, e) && !wiped[e] {
				g.wipe(e)
			}
		}
	}
	for id := range g.readLast {
		if _, ok := sad.Get(id); !ok {
			delete(g.readLast, id)
		}
	}
	g.revive(sad)
	g.clearStateCache()
	g.sweepLocked(now)
}

// retire goes through the SAs the gateway keeps state for against the new
// SAD: a new entry with the same keys inherits the state; an SA gone
// drains if the gateway numbers it, else is forgotten and (unless the new
// SAD keeps its entry) wiped. It returns the entries it wiped (g.smu
// held).
func (g *Gateway) retire(sad *ipsec.SAD, keep map[*ipsec.Entry]bool, now time.Time) (wiped map[*ipsec.Entry]bool) {
	wiped = map[*ipsec.Entry]bool{}
	for id, st := range g.states {
		ne, ok := sad.Get(id)
		switch {
		case ok && ne == st.e:
			continue
		case ok && ne.KeyID == st.e.KeyID && ne.Class() == ipsec.ClassWrite:
			// A new entry for the same SA: carry on, now.
			nst := g.newState(ne)
			g.inherit(nst, st)
			g.states[id] = nst
			st.dead.Store(true)
			if !keep[st.e] {
				g.wipe(st.e)
				wiped[st.e] = true
			}
			continue
		}
		delete(g.states, id)
		st.mu.Lock()
		owned := st.owned && !st.exhausted
		st.mu.Unlock()
		if owned && !st.dead.Load() && !keep[st.e] {
			st.draining.Store(true)
			st.lastUse.Store(now.UnixNano()) // its idle time counts from here
			g.draining[id] = st
			g.c.rare().add(cDrains)
			continue
		}
		if !keep[st.e] {
			g.wipe(st.e)
			wiped[st.e] = true
		}
		st.forget()
	}
	return wiped
}

// revive takes back the draining SAs the new SAD holds again with the
// same keys: their state goes on there (g.smu held).
func (g *Gateway) revive(sad *ipsec.SAD) {
	for id, st := range g.draining {
		e, ok := sad.Get(id)
		if !ok || e.KeyID != st.e.KeyID || e.Class() != ipsec.ClassWrite {
			continue
		}
		delete(g.draining, id)
		st.draining.Store(false)
		if e == st.e {
			g.states[id] = st
			continue
		}
		nst := g.newState(e)
		g.inherit(nst, st)
		g.states[id] = nst
		st.dead.Store(true)
		g.wipe(st.e)
	}
}

// wipe destroys an entry's keys (g.smu held).
func (g *Gateway) wipe(e *ipsec.Entry) {
	if e.Class() == ipsec.ClassNone {
		return
	}
	e.Wipe()
	g.c.rare().add(cWiped)
}

// sweepLocked wipes the draining SAs whose packets stopped coming, and
// arms a timer for the rest (g.smu held).
func (g *Gateway) sweepLocked(now time.Time) {
	for id, st := range g.draining {
		if now.Sub(time.Unix(0, st.lastUse.Load())) >= g.cfg.DrainIdle || st.dead.Load() {
			delete(g.draining, id)
			g.clearStateCache()
			st.dead.Store(true)
			g.wipe(st.e)
			st.forget()
		}
	}
	if len(g.draining) > 0 && !g.closed.Load() {
		if g.drainT == nil {
			g.drainT = time.AfterFunc(g.cfg.DrainIdle/2, func() {
				g.smu.Lock()
				defer g.smu.Unlock()
				g.drainT = nil
				g.sweepLocked(time.Now())
			})
		}
	}
}
