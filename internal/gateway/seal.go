package gateway

import (
	"errors"
	"fmt"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Sealing: what the engine sends on goes out sealed on the SA that carries
// its flow, numbered by the gateway (re-sequencing, rule 2), with IVs from
// the gateway's own counter space (nonce.go); or, for a packet the engine
// passed on unchanged while the gateway may not seal, as it came.

// seqBlock is how many sequence numbers the gateway reserves on an SA at a
// time; it asks for the next block when half of this one is used, so the
// hot path waits for the disk only if it outruns a whole half block (and
// at an SA's first packet after a start), for at most seqAwait.
const (
	seqBlock = 4096
	seqAwait = 100 * time.Millisecond
)

// engineOut takes what the engine sends on, which says what it is
// (engine.Emitted): the packet being processed, passed on unchanged; a
// packet resent from snoop's cache; or one the engine built. It runs
// under the lock of engine shard m.Shard, whose buffers it seals in.
func (g *Gateway) engineOut(to engine.Side, pkt []byte, m engine.Emitted) {
	ps := &g.shards[m.Shard]
	ctr := ps.ctr
	switch {
	case m.Opaque:
		// A read-class packet as it came, or the engine's cached copy of
		// one — unless the receiver's replay window has left the copy
		// behind (never the packet as it came: its number is the last
		// seen).
		if m.Origin == engine.Cached && g.staleRead(pkt) {
			ctr.add(cReadStale)
			return
		}
		g.out(to, pkt)
		return
	case m.Origin == engine.Forwarded:
		c, _ := m.Tag.(*call)
		if c == nil || c.st == nil {
			// Not IPsec (plain TCP, or not the gateway's): as it came.
			if c != nil {
				g.sendOut(to, c.orig, holdIf(c.checked))
				return
			}
			g.out(to, pkt)
			return
		}
		// Until the gateway may seal on the SA (and on every SA of its
		// bundle), the packet goes out as it came; from then on the
		// gateway numbers every packet on them.
		if !g.maySeal(c.st) {
			if c.st.behind() {
				ctr.add(cBehind) // the receiver would refuse it: its number is behind
				return
			}
			ctr.add(cOriginals)
			c.st.noteRelayed()
			g.sendOut(to, c.orig, holdIf(c.checked))
			return
		}
		g.sealFlow(to, pkt, routeOf(&c.ip), ps, sumsAsCame)
		return
	}
	// Built or Cached: a cached segment resent is the endpoint's, with
	// the checksum it came with — not one the gateway may vouch for.
	s := sumsAsCame
	switch {
	case m.Partial:
		s = sumsPartial
	case m.Origin == engine.Built:
		s = sumsHold
	}
	g.sealFlow(to, pkt, route{m.Src, m.Dst}, ps, s)
}

// sealFlow seals pkt, a packet of flow r the engine sends on, on the SA
// that carries the flow, in ps's buffers. s says what stands in pkt's
// checksums; what the gateway seals is its own either way, a partial
// checksum completed first.
func (g *Gateway) sealFlow(to engine.Side, pkt []byte, r route, ps *perShard, s sums) {
	ctr := ps.ctr
	t := g.routesOf(r)
	t.mu.Lock()
	vp, ok := t.flows.peek(r)
	if !ok {
		vp, ok = t.plain.peek(r)
	}
	var v via
	if ok {
		v = *vp
	}
	t.mu.Unlock()
	switch {
	case !ok:
		// Never in the clear what the gateway has not seen in the clear: a
		// flow it no longer has a route for (its table was full) waits for
		// the endpoint's next packet.
		ctr.add(cNoRoute)
		g.noteUnrouted(r, to)
		return
	case v.st == nil:
		g.send(to, pkt, v.tun, ps, s) // a flow that came unprotected (Plain)
		return
	}
	st := g.live(v.st)
	ready := st != nil && g.maySeal(st)
	if v.stale || !ready {
		// The endpoint's packets will show its newest SA, or confirm an
		// SA's IV generator: ask it for some.
		g.askLater(r, v)
	}
	if !ready {
		ctr.add(cNotYetSafe) // no usable SA, or its IV generator not confirmed
		g.smu.Lock()
		if _, ok := g.owed[r]; !ok && len(g.owed) < maxOwed {
			g.owed[r] = v
			g.owedN.Add(1)
		}
		g.smu.Unlock()
		return
	}
	// Seal innermost first, each SA of the bundle around what the one
	// before made, in place in ps.seal.
	buf := ps.seal
	off := maxBundle * ipsec.MaxHeadroom
	n := len(pkt)
	if off+n+maxBundle*ipsec.MaxTailroom > len(buf) {
		ctr.add(cSealErrors)
		return
	}
	copy(buf[off:], pkt)
	if s == sumsPartial {
		header.CompleteTCPIn(buf[off : off+n])
	}
	var outer []byte
	for i := 0; st != nil && i < maxBundle; i++ {
		var err error
		if outer, st, err = g.sealOn(ctr, st, buf[:off+n], off, n); err != nil {
			if errors.Is(err, errHandedOver) {
				ctr.add(cHandedOver) // the flow left with the mobile; its timer fired first
			} else if !errors.Is(err, errSeqWait) { // counted as SeqWaits
				ctr.add(cSealErrors)
				if now := time.Now().UnixNano(); now-g.sealLogged.Load() > int64(time.Second) { // a packet can cause it: at most once a second
					g.sealLogged.Store(now)
					g.log.Warn("gateway: seal (further ones this second only counted)", "err", err)
				}
			}
			return
		}
		off, n = len(buf)-cap(outer), len(outer)
	}
	ctr.add(cSealed)
	g.send(to, outer, v.tun, ps, sumsHold)
}

// usable reports whether st's SA may carry packets: in the SAD (or, with
// drainingOK, draining), alive.
func (g *Gateway) usable(st *saState, drainingOK bool) bool {
	if st.dead.Load() {
		return false
	}
	if st.draining.Load() {
		return drainingOK
	}
	c := &st.e.Config
	e, _ := g.sad.Load().Lookup(c.SPI, c.Dst, c.Proto)
	return e == st.e
}

// live returns the SA a flow routed on st is sealed on: st while usable,
// else the SA its flows moved to (following a rekey or a new entry), or
// nil. A draining SA serves its flows only when they have moved nowhere.
func (g *Gateway) live(st *saState) *saState {
	first := st
	for range 8 {
		if g.usable(st, false) {
			return st
		}
		st.mu.Lock()
		next := st.next
		st.mu.Unlock()
		if next == nil {
			break
		}
		st = next
	}
	if first.draining.Load() && !first.dead.Load() {
		return first
	}
	return nil
}

// askLater has the endpoint behind flow r send a packet, at most every
// elicitGap: the engine's lock is held here, so the request is queued and
// served once it is released.
func (g *Gateway) askLater(r route, v via) {
	now := time.Now()
	t := g.routesOf(r)
	t.mu.Lock()
	cur, ok := t.flows.peek(r)
	if !ok || cur.st != v.st || now.Sub(cur.elicited) < elicitGap {
		t.mu.Unlock()
		return
	}
	cur.elicited = now
	t.mu.Unlock()
	g.elicit(r, v.from)
}

// elicitGap spaces the keep-alives that ask an endpoint for a packet.
const elicitGap = 20 * time.Millisecond

// elicit asks the engine for a keep-alive toward the endpoint that sends
// flow r (on side at), which answers it on its newest SA. The request is
// queued (engine.Request), so it may be made with an engine shard's lock
// held.
func (g *Gateway) elicit(r route, at engine.Side) {
	wire, radio := r.src, r.dst
	if at == engine.Radio {
		wire, radio = radio, wire
	}
	if g.eng.Request(engine.Request{Wire: wire, Radio: radio, To: at, Kind: engine.RequestElicit}) {
		g.c.rare().add(cElicits)
	}
}

// maySeal reports whether the gateway may seal on st's SA and on every SA
// around it: each usable (in the SAD or draining: live chose it), each IV
// generator confirmed, numbers left.
func (g *Gateway) maySeal(st *saState) bool {
	for i := 0; st != nil; i++ {
		if i == maxBundle || !g.usable(st, true) || !st.nonce.confirmed() {
			return false
		}
		st.mu.Lock()
		next, ex, await := st.outer, st.exhausted, st.awaitIn
		st.mu.Unlock()
		if ex || await {
			return false
		}
		st = next
	}
	return true
}

// errHandedOver: the SA went to another gateway (handoff.go).
var errHandedOver = errors.New("handed over to another gateway")

// errSeqWait: the SA's next sequence number is not reserved on disk yet.
var errSeqWait = errors.New("sequence numbers not yet reserved")

// sealOn seals buf[off:off+n] on st's SA with the next sequence number the
// gateway owns on it, and returns the sealed packet (within buf's
// capacity) and the SA to seal that in next, if the SA is part of a
// bundle.
func (g *Gateway) sealOn(ctr *stripe, st *saState, buf []byte, off, n int) ([]byte, *saState, error) {
	st = lockCurrent(st)
	defer st.mu.Unlock()
	ivs, ok := st.nonce.ivSource()
	if !ok {
		return nil, nil, fmt.Errorf("sa %v: iv generator not confirmed", st.e.Config.ID())
	}
	if st.handed.Load() {
		return nil, nil, fmt.Errorf("sa %v: %w", st.e.Config.ID(), errHandedOver)
	}
	if !st.owned {
		st.owned = true
		st.last = st.maxIn
		if g.cfg.State != nil {
			g.reserve(st)
			st.last = max(st.last, st.lease.Floor())
		}
		st.last += uint64(g.cfg.SeqJump) + g.takeoverJump(st)
	}
	// Above the gateway's own last number, and above any endpoint number
	// relayed since the takeover. Not above the endpoint's highest: in
	// split mode the endpoint runs ahead of what the engine has sent on
	// (the engine holds its bytes), and following it would waste numbers
	// — the lead a receiver must wait out if the gateway stops.
	seq := max(st.last, st.relayed) + 1
	if l := st.lease; l != nil {
		if seq+seqBlock/2 > l.Allowed() {
			l.Want(seq + seqBlock)
		}
		// Outrun (the first packets after a start, or a burst past half a
		// block before the disk answered): wait for the write rather than
		// drop the packet — a lone TCP retransmission dropped here costs
		// its sender a doubled timeout.
		if seq > l.Allowed() && !l.Await(seq+seqBlock, seqAwait) {
			ctr.add(cSeqWaits)
			return nil, nil, fmt.Errorf("sa %v: seq %d: %w", st.e.Config.ID(), seq, errSeqWait)
		}
	}
	out, err := st.e.Write.SealFramed(buf, off, n, seq, ivs, st.frame)
	if err != nil {
		switch {
		case errors.Is(err, ipsec.ErrHardExpired):
			st.dead.Store(true)
		case errors.Is(err, ipsec.ErrSeqOverflow):
			st.exhausted = true
			ctr.add(cSeqExhausted)
		}
		return nil, nil, fmt.Errorf("sa %v: %w", st.e.Config.ID(), err)
	}
	st.last = seq
	if st.draining.Load() {
		st.lastUse.Store(time.Now().UnixNano())
	}
	return out, st.outer, nil
}

// lockCurrent locks and returns the state that carries st's SA now: st,
// or the state a new entry for the same SA took over from it (its heir,
// set by inherit under st.mu) after the caller chose st. Sealing on st
// then would use keys about to be wiped, or a number the heir takes
// again — the receiver's replay window drops the second
// (TestSealAcrossEntryReplacement; TestGatewayFollowsIKE failed so once
// under CI's load: a seal 3 ms after the security server gave the SAs
// again found its entry wiped). Heirs
// are always newer states, so the walk ends; next is not followed (a
// flow's packets can point it back at an older state: a cycle).
func lockCurrent(st *saState) *saState {
	st.mu.Lock()
	for st.heir != nil {
		heir := st.heir
		st.mu.Unlock()
		st = heir
		st.mu.Lock()
	}
	return st
}

// takeoverJump is how much further above the endpoint the gateway starts
// numbering st when it takes it over (st.mu held), unless a handoff said
// how far the gateway before went (Resume): TakeoverJump if another
// gateway may have numbered it — a neighbour gave it, or the gateway has
// handoff neighbours (SetMissing), one of which may have carried the
// mobile on it (and may be gone, its lead with it) — and twice that once
// the mobile's flows came mid-stream and no neighbour handed them over
// (Unanswered): the gateway before jumped once itself.
func (g *Gateway) takeoverJump(st *saState) uint64 {
	switch {
	case st.resumed || !st.provisioned && g.missing.Load() == nil:
		return 0
	case st.unanswered || g.wasUnanswered(st.peer):
		// Also for an SA whose first packet came after the ask ended:
		// the gateway before numbered it too (found by
		// TestGatewayGoneHosts, 1 run in 3: the mobile's SA toward the
		// wired host came after the ask and jumped into the dead
		// gateway's numbers).
		return 2 * uint64(g.cfg.TakeoverJump)
	}
	return uint64(g.cfg.TakeoverJump)
}

// reserve takes st's lease on its sequence space and asks for the first
// block above the endpoint's numbers, so that it is on disk by the time
// the gateway may seal (st.mu held).
func (g *Gateway) reserve(st *saState) {
	if st.lease != nil || g.cfg.State == nil {
		return
	}
	st.lease = g.cfg.State.Lease(st.key)
	st.lease.Want(max(st.maxIn, st.lease.Floor()) + uint64(g.cfg.SeqJump) + seqBlock)
}

// staleRead reports whether l, a read-class SA's packet the engine is
// resending from its cache, lies a replay window or more below the last
// sequence number seen on the SA: the receiver would refuse it (the SA's
// window as the file gives it, else 32, the smallest common default —
// strongSwan's and Linux's). The last number, not the highest: nothing
// verifies a read-class packet, so a forged number stops resends only
// until the sender's next packet.
//
// The engine's cache holds the bytes only, so the copy's headers are read
// here again: once per local resend, not per packet.
func (g *Gateway) staleRead(pkt []byte) bool {
	var p header.Parsed
	if header.Parse(pkt, &p) != nil {
		return false
	}
	if in, _, ok := peelIPIP(pkt, &p); ok {
		pkt = in
		if header.Parse(pkt, &p) != nil {
			return false
		}
	}
	l, err := ipsec.LocateParsed(pkt, &p)
	if err != nil {
		return false
	}
	e, _ := g.sad.Load().LookupLoc(&l)
	if e == nil || e.Class() != ipsec.ClassRead {
		return false
	}
	w := e.Config.ReplayWindow
	if w <= 0 {
		w = 32
	}
	g.smu.Lock()
	last, ok := g.readLast[e.Config.ID()]
	g.smu.Unlock()
	return ok && int64(int32(last-l.Seq)) >= int64(w)
}

// maxOwed bounds the flows remembered in owed.
const maxOwed = 1024

// payOwed has the engine send a fresh ACK on each flow whose packets were
// dropped for want of a ready SA, once the SA is ready. The engine's lock
// must not be held.
func (g *Gateway) payOwed() {
	type debt struct {
		r route
		v via
	}
	var due []debt
	g.smu.Lock()
	for r, v := range g.owed {
		due = append(due, debt{r, v})
	}
	g.smu.Unlock()
	for _, d := range due {
		st := g.live(d.v.st)
		hopeless := st == nil || st.nonce.refused() // it will never be ready
		if !hopeless && !g.maySeal(st) {
			continue // not yet
		}
		g.smu.Lock()
		delete(g.owed, d.r)
		g.owedN.Add(-1)
		g.smu.Unlock()
		if hopeless {
			continue
		}
		// The packet that could not go out went toward the side the flow's
		// packets did not come from.
		to := 1 - d.v.from
		wire, radio := d.r.src, d.r.dst
		if d.v.from == engine.Radio {
			wire, radio = radio, wire
		}
		g.eng.Ack(wire, radio, to)
	}
}

// unroutedAt is an unrouted flow's entry: the side its engine packets
// went toward, and when one last did.
type unroutedAt struct {
	to engine.Side
	at time.Time
}

// unroutedKeep is how long an unrouted flow waits for its route; when
// the table is full, older entries make room.
const unroutedKeep = 10 * time.Second

// noteUnrouted remembers that an engine packet of flow r toward to was
// dropped for want of a route. The table is bounded by maxOwed: a full
// one forgets entries older than unroutedKeep, and refuses the new one
// if there are none (the flow then waits for its retransmission timer).
func (g *Gateway) noteUnrouted(r route, to engine.Side) {
	now := time.Now()
	g.smu.Lock()
	defer g.smu.Unlock()
	if len(g.unrouted) >= maxOwed {
		g.forgetUnroutedLocked(now)
	}
	if _, ok := g.unrouted[r]; !ok && len(g.unrouted) >= maxOwed {
		return
	}
	g.unrouted[r] = unroutedAt{to, now}
	g.unroutedN.Store(int32(len(g.unrouted)))
}

// forgetUnroutedLocked drops the unrouted entries older than
// unroutedKeep: flows whose route never came (they ended, or their
// endpoint went). g.smu must be held.
func (g *Gateway) forgetUnroutedLocked(now time.Time) {
	g.unroutedSwept = now
	for k, u := range g.unrouted {
		if now.Sub(u.at) > unroutedKeep {
			delete(g.unrouted, k)
		}
	}
	g.unroutedN.Store(int32(len(g.unrouted)))
}

// retryUnrouted has the engine send again what it sent on flow r while
// the gateway had no route for it, now that a verified packet has shown
// one (toEngine, after noteRoute). It runs for every verified packet
// while the table holds anything, so it also ages the table out, once
// per unroutedKeep: entries whose route never comes do not keep every
// packet on this path. The engine's lock must not be held.
func (g *Gateway) retryUnrouted(r route) {
	now := time.Now()
	g.smu.Lock()
	u, ok := g.unrouted[r]
	if ok {
		delete(g.unrouted, r)
		g.unroutedN.Store(int32(len(g.unrouted)))
	}
	if now.Sub(g.unroutedSwept) > unroutedKeep {
		g.forgetUnroutedLocked(now)
	}
	g.smu.Unlock()
	if !ok || now.Sub(u.at) > unroutedKeep {
		return
	}
	// r runs toward u.to: its source is the other side's endpoint.
	wire, radio := r.src, r.dst
	if u.to == engine.Wire {
		wire, radio = radio, wire
	}
	if g.eng.Retry(wire, radio, u.to) {
		g.c.rare().add(cRetries)
	}
}
