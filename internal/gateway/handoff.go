package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Handing a mobile to another gateway (DESIGN.md, handoff; rules 2 and 5).
//
// HandOver, on the gateway the mobile leaves, removes the mobile's flows
// from the engine — buffered bytes, acknowledged early, included — and
// returns them with the state of the SAs between the mobile and its peers
// and the bindings of the flows to them. Resume, on the gateway the
// mobile reaches, takes the SAs' state first and the flows after:
//
//   - Sequence numbers (rule 2): the old gateway numbered the SA ahead of
//     the endpoint; the receiver has seen its numbers. The new gateway
//     numbers above the old one's last (and above the endpoint's highest
//     it verified), so the receiver's window never sees a number twice.
//   - IVs (rule 1): the new gateway's IVs come from its own IV space
//     (its state directory's blocks, in its partition — the security
//     server gives every gateway instance a distinct one), disjoint from
//     the old gateway's and, by construction, from the endpoint's. The
//     endpoint's salt comes along, but only as a recalled salt: one
//     verified packet of the endpoint's that agrees with it is still
//     needed before the new gateway seals (nonce.go), so a wrong salt
//     from the old gateway can never make it reuse an endpoint IV.
//   - Replay window (rule 3): the inbound window comes along, so a packet
//     the old gateway accepted is a replay at the new one too.
//   - No acknowledged byte lost (rule 5): the flows' bytes move with
//     them; the new engine resends what the radio host lacks, oldest
//     first.
//
// Flows inside an IP-in-IP tunnel go with their outer header (the new
// gateway learns it again from their next packet, should the move have
// changed it). Not handed over: read-class SAs (nothing is numbered on
// them). After HandOver the old gateway stops sealing on the
// SAs, and drops (counts, HandedOver) the packets that still reach it on
// them: relayed, their endpoint numbers would fall behind what the
// receiver has seen. They are not forwarded to the new gateway (a
// choice: few arrive, and the endpoints' TCP resends them).

// SAHandoff is an SA's state as one gateway passes it to the next.
type SAHandoff struct {
	ID        ipsec.ID
	KeyID     [16]byte // the SA's keys, named: state applies only to the same keys
	Owned     bool     // the old gateway numbered the SA
	Last      uint64   // the last number it sealed with
	MaxIn     uint64   // the endpoint's highest number it verified
	Relayed   uint64   // the highest endpoint number the receiver may have seen
	Salt      uint64   // IV ⊕ seq of the endpoint's packets, when confirmed
	SaltKnown bool
	WindowTop uint64   // the inbound replay window
	Window    []uint64 // its bitmap
}

// RouteHandoff binds one direction of a flow to the SA its packets came
// on, and to the IP-in-IP tunnel they came in, if any.
type RouteHandoff struct {
	Src, Dst netip.AddrPort
	From     engine.Side
	SA       ipsec.ID
	// Tun is the outer IPv4 or IPv6 header of the flow's IP-in-IP tunnel
	// (RFC 2003/2473), nil when none: what the new gateway wraps the
	// flow's packets in until its own next packet shows the tunnel again
	// (a care-of address that changed with the move, say).
	Tun []byte
}

// Handoff is what a gateway hands over for one mobile.
type Handoff struct {
	Flows  []engine.FlowState
	SAs    []SAHandoff
	Routes []RouteHandoff
}

// HandOver removes mobile's flows (those on SAs whose peer is mobile)
// from the gateway and returns them with their SAs' state.
func (g *Gateway) HandOver(mobile netip.Addr) Handoff {
	return g.handOver(func(peer [2]netip.Addr) bool { return peer[0] == mobile || peer[1] == mobile }, false)
}

// HandOverAll removes every flow from the gateway — plain ones and
// those on SAs it does not number too — and returns them with the state
// of every SA it numbers: what a gateway that stops hands its successor
// (the state directory keeps it between them). Packets that reach the
// gateway afterwards on those SAs are dropped, as after HandOver; call
// it once the packet I/O has stopped.
func (g *Gateway) HandOverAll() Handoff {
	return g.handOver(func([2]netip.Addr) bool { return true }, true)
}

// handOver hands over the flows on the SAs whose peers are mine, and
// with all every other flow too.
func (g *Gateway) handOver(mine func(peer [2]netip.Addr) bool, all bool) Handoff {
	var h Handoff
	sts := map[*saState]bool{}
	g.smu.Lock()
	for _, m := range []map[ipsec.ID]*saState{g.states, g.draining} {
		for _, st := range m {
			st.mu.Lock()
			ok := mine(st.peer)
			st.mu.Unlock()
			if ok && st.e.Write != nil {
				sts[st] = true
				// Before the flows go: a packet in process now that finds
				// its flow gone finds the SA handed too, and is dropped
				// rather than taken for a mobile arriving (heldForHandoff).
				st.handed.Store(true)
			}
		}
	}
	g.smu.Unlock()
	radioEnds := map[netip.AddrPort]bool{}
	for i := range g.routes {
		t := &g.routes[i]
		t.mu.Lock()
		var gone []route
		t.flows.each(func(r route, v *via) {
			if !sts[v.st] || !r.tcp() {
				return
			}
			rh := RouteHandoff{Src: r.src, Dst: r.dst, From: v.from, SA: v.st.e.Config.ID()}
			if v.tun != nil {
				rh.Tun = slices.Clone(v.tun.b)
			}
			h.Routes = append(h.Routes, rh)
			if v.from == engine.Radio {
				radioEnds[r.src] = true
			} else {
				radioEnds[r.dst] = true
			}
			gone = append(gone, r)
		})
		for _, r := range gone {
			t.flows.delete(r)
		}
		t.mu.Unlock()
	}
	match := func(_, radio netip.AddrPort) bool { return radioEnds[radio] }
	if all {
		match = nil
	}
	h.Flows = g.eng.ExportWhere(match, true)
	for st := range sts {
		h.SAs = append(h.SAs, st.handoff())
	}
	return h
}

// handoff is st's state for the next gateway; from now on this gateway
// no longer seals on the SA (a seal under way finished before: both take
// mu), so every number it used is in Last.
func (st *saState) handoff() SAHandoff {
	st.mu.Lock()
	st.handed.Store(true)
	s := SAHandoff{ID: st.e.Config.ID(), KeyID: st.e.KeyID, Owned: st.owned, Last: st.last, MaxIn: st.maxIn, Relayed: st.relayed}
	st.mu.Unlock()
	st.nonce.mu.Lock()
	if st.nonce.sensitive && st.nonce.seen >= 2 && !st.nonce.broken {
		s.Salt, s.SaltKnown = st.nonce.salt, true
	}
	st.nonce.mu.Unlock()
	s.WindowTop, s.Window = st.e.Write.WindowState()
	return s
}

// Resume takes over what another gateway handed over: the SAs' state (an
// SA this gateway does not hold with the same keys is skipped, and
// logged), the flows' bindings and the flows. It is called once per part
// of a streamed handoff; only an engine that cannot take the flows (its
// table full) is an error.
func (g *Gateway) Resume(h Handoff) error { return g.resume(h, false) }

// ResumeRestart is Resume for what this gateway's own predecessor handed
// over when it stopped (package handoff, restart.go). Between the two,
// no gateway was in the path, and the endpoints' own packets may have
// reached the receivers (a TUN gateway's routes leave with it): the new
// gateway seals on each SA only once a verified packet has shown how far
// the endpoint's numbers went, and numbers above them.
func (g *Gateway) ResumeRestart(h Handoff) error { return g.resume(h, true) }

func (g *Gateway) resume(h Handoff, restart bool) error {
	sad := g.sad.Load()
	var missing int
	for _, s := range h.SAs {
		e, ok := sad.Get(s.ID)
		if !ok || e.KeyID != s.KeyID || e.Write == nil {
			missing++
			continue
		}
		g.state(e).resume(g, &s, restart)
	}
	for _, r := range h.Routes {
		e, ok := sad.Get(r.SA)
		if !ok || e.Write == nil || r.Tun != nil && !validTunnel(r.Tun) {
			continue
		}
		g.noteRoute(route{r.Src, r.Dst}, g.state(e), r.From, r.Tun)
	}
	if missing > 0 {
		// Not an error that stops the handoff: the flows still come (the
		// old gateway no longer has them); those on an SA missing here
		// cannot be sealed on, and TCP sees their packets dropped.
		g.log.Warn("gateway: resume: SAs not held here with the same keys", "missing", missing, "of", len(h.SAs))
	}
	if err := g.eng.ImportMoved(h.Flows); err != nil {
		return fmt.Errorf("gateway: resume: %w", err)
	}
	return nil
}

// validTunnel reports whether b is an outer header peelIPIP would have
// taken: IPv4 without options or IPv6 without extension headers, carrying
// IPv4 or IPv6. A handoff comes from an authenticated gateway, but what it
// says is checked like a packet.
func validTunnel(b []byte) bool {
	switch {
	case len(b) == header.IPv4MinLen && b[0] == 0x45:
		return b[9] == header.ProtoIPIP || b[9] == header.ProtoIPv6
	case len(b) == header.IPv6Len && b[0]>>4 == 6:
		return b[6] == header.ProtoIPIP || b[6] == header.ProtoIPv6
	}
	return false
}

// resume takes an SA's state from the gateway before (after a restart:
// see ResumeRestart).
func (st *saState) resume(g *Gateway, s *SAHandoff, restart bool) {
	st.mu.Lock()
	st.handed.Store(false) // the mobile came back
	st.resumed = true      // the gateway before says how far it numbered
	st.awaitIn = st.awaitIn || restart
	st.maxIn = max(st.maxIn, s.MaxIn)
	st.relayed = max(st.relayed, s.Relayed)
	if s.Owned {
		if !st.owned {
			st.owned = true
			if g.cfg.State != nil {
				g.reserve(st)
				st.last = max(st.last, st.lease.Floor())
			}
		}
		st.last = max(st.last, s.Last)
		if st.lease != nil {
			st.lease.Want(st.last + seqBlock)
		}
	}
	st.mu.Unlock()
	if s.SaltKnown {
		st.nonce.recall(s.Salt)
	}
	if s.WindowTop > st.e.Write.InTop() {
		st.e.Write.SetWindowState(s.WindowTop, s.Window) // a bitmap of another size is refused: the window is learned anew
		if st.accepted != nil {
			st.e.Write.SeenThrough(st.accepted.Floor()) // what this gateway's predecessor accepted stays seen
		}
	}
}

// SetMissing has the gateway call missing when a verified packet of a TCP
// flow it does not know arrives mid-stream (not a SYN) on an SA — the
// mark of a mobile that moved here with its flows at another gateway —
// with the mobile's address (the SA's end on the radio side). If missing
// reports true, the packet is held back (counted HeldForHandoff; kept
// until ReleaseHeld if there is room, else dropped and its sender resends
// it) rather than relayed: relayed with the endpoint's numbers it would
// fall behind what the receiver saw from the other gateway, and the flow
// it belongs to is about to arrive (Resume). Whoever answers true must
// call ReleaseHeld for the mobile when the asking ends. missing must not
// block; nil turns it off.
func (g *Gateway) SetMissing(missing func(mobile netip.Addr) bool) {
	if missing == nil {
		g.missing.Store(nil)
		return
	}
	g.missing.Store(&missing)
}

// heldForHandoff reports whether a verified packet of flow r on st, from
// side from, waits for its flow to be handed over.
func (g *Gateway) heldForHandoff(c *call, inner, tunHdr []byte, r route, st *saState, from engine.Side) bool {
	h := g.missing.Load()
	if h == nil || !c.ip.IsTCP() {
		return false
	}
	tcp := header.TCP(c.ip.Upper(inner))
	if len(tcp) < header.TCPMinLen || tcp.Flags()&header.TCPSyn != 0 || g.isProtected(r) {
		return false
	}
	if st.handed.Load() {
		// The mobile left with its flows while this packet was in
		// process (HandOver marks the SA before it takes the flows): a
		// straggler, not a mobile arriving — never ask for it back.
		c.ctr.add(cHandedOver)
		return true
	}
	st.mu.Lock()
	mobile := st.peer[1] // toward the radio: the mobile is the destination
	if from == engine.Radio {
		mobile = st.peer[0]
	}
	st.mu.Unlock()
	if !mobile.IsValid() || !(*h)(mobile) {
		return false
	}
	c.ctr.add(cHeldForHandoff)
	g.hold(mobile, heldPkt{from: from, st: st, orig: c.orig, inner: inner, tun: tunHdr})
	return true
}

// Held packets: what heldForHandoff holds back is kept — verified and
// opened, bounded (maxHeld packets, maxHeldBytes in all) — until
// ReleaseHeld, when the mobile's flows have come (or not), and then goes
// to the engine as if it had just arrived: a request or an ACK held for
// the 10–50 ms a handoff takes is not lost to its sender's retransmission
// timeout (hundreds of milliseconds). What does not fit is dropped (its
// sender resends it). Only verified packets are held, so only a holder
// of the SA's keys can fill the table; the Asker releases every mobile it
// asked for when the ask ends.
const (
	maxHeld      = 1024
	maxHeldBytes = 4 << 20
)

// heldPkt is one packet held for a handoff (hold keeps copies of its
// slices).
type heldPkt struct {
	from  engine.Side
	st    *saState
	orig  []byte // as it came: what goes on if the gateway may not seal yet
	inner []byte // opened
	tun   []byte // its IP-in-IP header, if any
}

// held is the gateway's table of held packets, by mobile.
type held struct {
	mu    sync.Mutex
	pkts  map[netip.Addr][]heldPkt
	n     int
	bytes int
}

// hold keeps a copy of p for mobile, if there is room.
func (g *Gateway) hold(mobile netip.Addr, p heldPkt) {
	h := &g.held
	size := len(p.orig) + len(p.inner)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n >= maxHeld || h.bytes+size > maxHeldBytes {
		return
	}
	if h.pkts == nil {
		h.pkts = map[netip.Addr][]heldPkt{}
	}
	p.orig, p.inner, p.tun = slices.Clone(p.orig), slices.Clone(p.inner), slices.Clone(p.tun)
	h.pkts[mobile] = append(h.pkts[mobile], p)
	h.n++
	h.bytes += size
}

// Unanswered tells the gateway that no neighbour handed mobile over when
// asked (the gateway it came from is gone): the mobile's SAs may have been
// numbered ahead of the endpoints by a gateway that no longer says how far
// — by its own takeover jump and its resends — so the gateway numbers
// them twice TakeoverJump above the endpoints (takeoverJump), at once for
// those it numbers already (a new flow came before the ask ended).
// Numbers only go up (rule 2).
func (g *Gateway) Unanswered(mobile netip.Addr) {
	g.unanswered.add(mobile)
	g.smu.Lock()
	sts := make([]*saState, 0, len(g.states))
	for _, st := range g.states {
		sts = append(sts, st)
	}
	g.smu.Unlock()
	for _, st := range sts {
		st.mu.Lock()
		if (st.peer[0] == mobile || st.peer[1] == mobile) && !st.resumed && !st.unanswered {
			st.unanswered = true
			if st.owned {
				st.last = max(st.last, st.maxIn+g.takeoverJump(st))
			}
		}
		st.mu.Unlock()
	}
}

// maxUnanswered bounds the mobiles remembered as unanswered: the most
// recent ones are kept. An SA of a mobile forgotten since, first seen
// only now, jumps once, as if its ask had been answered.
const maxUnanswered = 4096

// recentAddrs is a set of the last addresses added (at most
// maxUnanswered; the oldest goes first). Its methods may be called from
// several goroutines; its lock is the last taken (under a saState's).
type recentAddrs struct {
	mu    sync.Mutex
	set   map[netip.Addr]struct{}
	order []netip.Addr // oldest first
}

func (r *recentAddrs) add(a netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[a]; ok {
		return
	}
	if r.set == nil {
		r.set = map[netip.Addr]struct{}{}
	}
	if len(r.order) == maxUnanswered {
		delete(r.set, r.order[0])
		r.order = append(r.order[:0], r.order[1:]...)
	}
	r.set[a] = struct{}{}
	r.order = append(r.order, a)
}

func (r *recentAddrs) has(a netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.set[a]
	return ok
}

// wasUnanswered reports whether either peer is a mobile no neighbour
// handed over.
func (g *Gateway) wasUnanswered(peer [2]netip.Addr) bool {
	return g.unanswered.has(peer[0]) || g.unanswered.has(peer[1])
}

// ReleaseHeld hands the engine, in the order they came, the packets held
// for mobile while its flows were asked for (SetMissing), now that the
// asking is over: the flows are here (Resume), or they are not and the
// packets go on as any packet of a flow met mid-stream. Packets of an SA
// handed on meanwhile are dropped.
func (g *Gateway) ReleaseHeld(mobile netip.Addr) {
	h := &g.held
	h.mu.Lock()
	pkts := h.pkts[mobile]
	delete(h.pkts, mobile)
	for _, p := range pkts {
		h.n--
		h.bytes -= len(p.orig) + len(p.inner)
	}
	h.mu.Unlock()
	for _, p := range pkts {
		g.release(p)
		clear(p.inner) // plaintext
	}
}

// dropHeld clears every held packet (Close): they are plaintext.
func (g *Gateway) dropHeld() {
	h := &g.held
	h.mu.Lock()
	defer h.mu.Unlock()
	for m, pkts := range h.pkts {
		for _, p := range pkts {
			clear(p.inner)
		}
		delete(h.pkts, m)
	}
	h.n, h.bytes = 0, 0
}

// release puts one held packet through what follows the hold in
// processWrite (toEngine).
func (g *Gateway) release(p heldPkt) {
	c := g.calls.Get().(*call)
	defer g.calls.Put(c)
	c.ctr.busy.Add(1)
	defer c.ctr.busy.Add(-1)
	if g.closed.Load() || p.st.handed.Load() || len(p.inner) > len(c.buf)-ipsec.MaxHeadroom {
		return
	}
	inner := c.buf[ipsec.MaxHeadroom : ipsec.MaxHeadroom+len(p.inner)]
	copy(inner, p.inner)
	if header.Parse(inner, &c.ip) != nil {
		return
	}
	c.orig, c.more = p.orig, false
	defer func() { c.orig, c.st = nil, nil }()
	if g.toEngine(c, p.from, inner, p.st, p.tun) {
		c.ctr.add(cReleased)
	}
}
