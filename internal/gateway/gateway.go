// Package gateway is espep's IPsec-aware PEP: between a wire side and a
// radio side it opens the ESP/AH of flows whose SAs it holds, runs the TCP
// engine on what is inside, and seals what the engine sends so that both
// endpoints keep accepting every packet.
//
// Per packet: IKE, keepalives, fragments and anything it cannot or may not
// open are relayed as they came (DESIGN.md rule 6, fail open); so are the
// packets of SAs of class none. For a read-class SA the gateway decrypts
// (it holds no integrity key), and the engine snoops on the cleartext
// while forwarding, caching and resending only the ciphertext as it came
// (rule 4). For a write-class SA the packet's ICV and replay window are
// checked before anything else (rule 3); the inner packet goes to the
// engine, and every packet the engine sends on is sealed again on the SA
// that carries its (source, destination), in the outer form the SA states
// or, where it states none (esp_sa lines), the form its packets show. A
// packet the engine passes on unchanged goes out as the original
// ciphertext until the SA's IV generator is confirmed (nonce.go), and is
// re-sealed from then on.
//
// Re-sequencing (rule 2): once the gateway may seal on an SA (its IV
// generator confirmed) it numbers every packet on it — relayed or its own
// — starting SeqJump (65536) above the endpoint's highest number and then
// with max(its last number + 1, the endpoint's highest number seen), so
// the receiver sees one increasing sequence and its anti-replay window
// never drops a legitimate packet while the gateway is in the path. The
// jump makes a restarted gateway (or one taking over from a gateway that
// stopped) number above its predecessor, as long as that one's lead beyond
// its own jump was smaller than the jump: the engine keeps it so by sending
// no more packets in an endpoint's name than the endpoint sends (split
// mode's ACKs, engine.takeData), which leaves its own resends — about the
// radio's loss rate times the packets carried (SAStats.Lead). Only packets
// in flight at the switch are lost, and TCP resends them.
//
// Each flow (inner addresses and TCP ports) is sealed on the SA its own
// packets last came on, so flows of different SAs between the same hosts
// never mix, and a flow the gateway has not seen unprotected never goes out
// in the clear (if its entry was forgotten, its packets wait for the
// endpoint's next one).
//
// SAs end (DESIGN.md rule 5: no data lost): when the endpoints rekey, a
// flow's packets start to come on the new SA and the gateway follows them;
// the old SA's flows follow it too once the old one leaves the SAD or
// reaches its hard lifetime. The other direction of a flow that moved is
// marked stale — its endpoint has rekeyed, but may have nothing to send
// (a sender whose bytes the gateway holds, acknowledged early) — and the
// gateway asks that endpoint for a packet with a keep-alive
// (engine.Elicit) until its packets show the new SA; so too while an SA's
// IV generator is unconfirmed. What the gateway guarantees: a flow's
// early-acknowledged bytes are delivered as long as the gateway holds the
// endpoints' new SAs before they delete the old ones (save-keys and the
// security server give them at the rekey). If it never gets the new SAs,
// the bytes it holds for a flow when the endpoints delete the old SAs (at
// most Engine.BufferPerFlow per direction) can no longer be delivered, and
// nothing can seal the engine's reset either: that connection stalls until
// its application gives up. Split mode depends on the SA feed for this
// reason; snoop mode holds nothing the sender has not kept. An SA given again (a
// new entry, the same keys) keeps the gateway's numbers and IV counter, so
// no sequence number or IV is used twice.
//
// When the gateway leaves the path for good, the receiver has seen the
// gateway's numbers and refuses the endpoint's as replays until the
// endpoint's counter passes the gateway's last number (lead + jump): the
// SA carries nothing until the endpoints rekey it. That is the price of
// re-sequencing without the endpoints' help; the handoff issue carries the
// counters to the next gateway instead, and a gateway that must leave
// should ask for a rekey first. (testbed.TestGatewayLeavesPath shows it
// between strongSwan peers: nothing passes until a rekey, then all does.)
//
// Nonce safety (rule 1) is argued in nonce.go.
package gateway

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Config tunes a gateway.
type Config struct {
	// Engine configures the TCP engine (Mode: split or snoop).
	Engine engine.Config
	// Plain accelerates TCP that is not IPsec-protected too.
	Plain bool
	// SeqJump is how far ahead of the endpoint's highest sequence number
	// the gateway starts numbering an SA it takes over (default 65536;
	// negative: none). A gateway that restarts (or takes over from one
	// that stopped) is then above the numbers its predecessor used, as long
	// as that one's lead was smaller.
	SeqJump int64
	Log     *slog.Logger
}

// Stats are the gateway's counters.
type Stats struct {
	Packets                    uint64
	Relayed                    uint64 // passed on as they came, for any reason below
	IKE, Keepalives, Fragments uint64
	IPIP                       uint64 // packets that came in an IP-in-IP tunnel
	NotIPsec                   uint64 // plain packets (relayed, or to the engine with Plain)
	Unknown                    uint64 // ESP/AH with no SA here
	ClassNone, ClassRead       uint64
	Opened                     uint64
	ICVFailures, Replays       uint64
	OpenErrors                 uint64 // other failures to open
	Malformed                  uint64
	Sealed, SealErrors         uint64
	Originals                  uint64 // engine passed a packet on unchanged: its original ciphertext sent
	NotYetSafe                 uint64 // engine packets dropped: the SA's IV generator not confirmed
	NonceDowngrades            uint64 // SAs the gateway will never seal on
	NoRoute                    uint64 // engine packets dropped: the flow's route was forgotten (table full)
	Rekeys                     uint64 // flows seen moving to a new SA
	Elicits                    uint64 // keep-alives sent to have an endpoint show its new SA
	ReadStale                  uint64 // read-class resends not sent: out of the receiver's replay window
	Engine                     engine.Stats
}

// SAStats is one SA's view.
type SAStats struct {
	ID             ipsec.ID
	Owned          bool   // the gateway numbers this SA's packets
	EndpointSeq    uint64 // highest sequence number seen from the endpoint
	GatewaySeq     uint64 // last sequence number the gateway sealed with
	Lead           int64  // GatewaySeq − EndpointSeq: the endpoint packets a receiver would drop if the gateway left now
	NonceConfirmed bool
	NonceBroken    bool
}

// Gateway processes packets between the wire and the radio side.
type Gateway struct {
	cfg Config
	log *slog.Logger
	out func(to engine.Side, pkt []byte)
	eng *engine.Engine
	sad atomic.Pointer[ipsec.SAD]

	mu    sync.Mutex // serialises Process
	inBuf []byte

	smu    sync.Mutex
	states map[ipsec.ID]*saState
	routes map[route]via // a flow (inner addresses and TCP ports) → how its packets came

	// The packet Process is handing to the engine: a packet the engine
	// passes on unchanged comes back as a slice of inBuf, in the same
	// goroutine, so these need no lock of their own.
	curOrig []byte
	curSt   *saState           // nil for plain TCP
	sealBuf []byte             // used under the engine's lock (all engine output is)
	wrapBuf []byte             // likewise, for IP-in-IP
	ipip    map[route]*ipipHdr // (source, destination) inside, no ports → the tunnel it came in

	// owed are flows whose engine packets were dropped because their SA
	// was not ready; once it is, the engine sends them a fresh ACK.
	owed  map[route]via
	owedN atomic.Int32

	// readTop is the highest sequence number seen on each read-class SA:
	// a cached packet that fell out of the receiver's replay window is not
	// resent (it would be refused).
	readTop map[ipsec.ID]uint32

	c counters
}

type counters struct {
	packets, relayed, ike, keepalives, fragments, notIPsec, unknown, classNone, classRead  atomic.Uint64
	opened, icv, replays, openErrors, malformed, sealed, sealErrors, originals, notYetSafe atomic.Uint64
	downgrades, ipip, noRoute, rekeys, elicits, readStale                                  atomic.Uint64
}

// route is a flow's key in the gateway's tables: its inner addresses and,
// for TCP, its ports (zero otherwise).
type route struct{ src, dst netip.AddrPort }

func (r route) reverse() route { return route{r.dst, r.src} }

// via is how a flow's packets last came.
type via struct {
	st   *saState    // the SA (innermost of a bundle) they came on; nil: not protected
	from engine.Side // the side they came from
	// stale: the flow's other direction moved to a new SA (a rekey) and
	// this one has not yet; the endpoint may have deleted st already.
	stale    bool
	elicited time.Time // when the gateway last asked the endpoint for a packet
}

// saState is what the gateway keeps per write-class SA.
type saState struct {
	e     *ipsec.Entry
	nonce *noncePlan
	mu    sync.Mutex
	owned bool
	maxIn uint64
	last  uint64
	// sealer seals in the outer form the endpoint's packets show, when the
	// SA file did not say it (esp_sa lines carry no mode and no UDP ports).
	sealer *ipsec.SA
	// outer is the SA whose packets carried this one's last (the next
	// layer of an AH+ESP bundle), nil when this SA is the outermost.
	outer *saState
	// The outer form learned from the packets (sealer made from it).
	learned      bool
	learnedMode  ipsec.Mode
	learnedPorts [2]uint16
	// next is the SA the flows of this one moved to (a rekey), or the
	// entry that replaced this one for the same SA in the SAD: where its
	// flows' packets are sealed once this one cannot be used.
	next *saState
	// gen counts the rekeys behind this SA: one more than the SA its
	// flows moved from (0: none seen).
	gen int
	// dead: past its hard lifetime at the gateway.
	dead atomic.Bool
}

func (st *saState) generation() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.gen
}

// New makes a gateway that sends through out (which must not keep pkt)
// and takes its SAs from sad (replace them with SetSAD).
func New(cfg Config, sad *ipsec.SAD, out func(to engine.Side, pkt []byte)) (*Gateway, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	switch {
	case cfg.SeqJump == 0:
		cfg.SeqJump = 1 << 16
	case cfg.SeqJump < 0:
		cfg.SeqJump = 0
	}
	g := &Gateway{cfg: cfg, log: cfg.Log, out: out, states: map[ipsec.ID]*saState{}, routes: map[route]via{},
		inBuf: make([]byte, 2*ipsec.MaxHeadroom+65536), sealBuf: make([]byte, (maxBundle+1)*ipsec.MaxHeadroom+65536+maxBundle*ipsec.MaxTailroom),
		wrapBuf: make([]byte, 2*ipsec.MaxHeadroom+65536+ipsec.MaxTailroom), ipip: map[route]*ipipHdr{}, owed: map[route]via{},
		readTop: map[ipsec.ID]uint32{}}
	var err error
	if g.eng, err = engine.New(cfg.Engine, g.engineOut); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.SetSAD(sad)
	return g, nil
}

// SetSAD replaces the SAs the gateway works with; SAs no longer present
// stop being used: their flows' packets are sealed on the SAs those flows
// moved to, if any, and otherwise not at all. The gateway's numbers and IV
// counter of an SA outlive its entry, so that an SA given again (the same
// keys) never reuses a sequence number or an IV.
func (g *Gateway) SetSAD(sad *ipsec.SAD) {
	if sad == nil {
		sad = &ipsec.SAD{}
	}
	g.sad.Store(sad)
	g.smu.Lock()
	defer g.smu.Unlock()
	if len(g.states) > maxStates {
		for id := range g.states {
			if _, ok := sad.Get(id); !ok {
				delete(g.states, id)
			}
		}
	}
}

// maxStates bounds the SA states kept; beyond it those of SAs no longer in
// the SAD are forgotten.
const maxStates = 1 << 16

// maxRoutes bounds the flows (and IP-in-IP tunnels, and read SAs) remembered.
const maxRoutes = 1 << 16

// Engine returns the gateway's TCP engine.
func (g *Gateway) Engine() *engine.Engine { return g.eng }

func (g *Gateway) relay(to engine.Side, pkt []byte) {
	g.c.relayed.Add(1)
	g.out(to, pkt)
}

// Process handles one IP packet that arrived from side from.
func (g *Gateway) Process(from engine.Side, pkt []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.c.packets.Add(1)
	to := 1 - from
	orig := pkt
	if inner, hdr, ok := peelIPIP(pkt); ok {
		// IP-in-IP (RFC 2003, a Mobile IP home agent's tunnel): work on
		// what it carries, and put the same outer header back on what the
		// gateway sends in that flow's direction.
		g.c.ipip.Add(1)
		if k, ok := hostsOf(inner); ok {
			remember(g, g.ipip, k, hdr)
		}
		pkt = inner
	}
	l, err := ipsec.Locate(pkt)
	if err != nil {
		g.c.malformed.Add(1)
		g.relay(to, orig)
		return
	}
	switch l.Kind {
	case ipsec.KindIKE:
		g.c.ike.Add(1) // the early signal of a new SA
		g.relay(to, orig)
		return
	case ipsec.KindKeepalive:
		g.c.keepalives.Add(1)
		g.relay(to, orig)
		return
	case ipsec.KindFragment:
		g.c.fragments.Add(1)
		g.relay(to, orig)
		return
	case ipsec.KindOther:
		g.c.notIPsec.Add(1)
		if !g.cfg.Plain || len(pkt) > len(g.inBuf)-ipsec.MaxHeadroom {
			g.relay(to, orig)
			return
		}
		buf := g.inBuf[ipsec.MaxHeadroom : ipsec.MaxHeadroom+len(pkt)]
		copy(buf, pkt)
		if r, ok := flowOf(buf); ok {
			g.noteRoute(r, nil, from)
		}
		g.toEngine(from, buf, orig, nil)
		return
	}
	e, _ := g.sad.Load().LookupLoc(&l)
	switch {
	case e == nil:
		g.c.unknown.Add(1)
		g.relay(to, orig)
		return
	case e.Class() == ipsec.ClassNone:
		g.c.classNone.Add(1)
		g.relay(to, orig)
		return
	case e.Class() == ipsec.ClassRead:
		// Snoop on what it can read, forwarding and resending only the
		// packets as they came (rule 4). The decrypted bytes are not
		// verified: they steer local resends of the sender's own packets,
		// nothing else.
		g.c.classRead.Add(1)
		inner, err := e.Read.Decrypt(g.inBuf[:0:cap(g.inBuf)], pkt)
		if err != nil {
			g.c.openErrors.Add(1)
			g.relay(to, orig)
			return
		}
		g.smu.Lock()
		id := e.Config.ID()
		if top, ok := g.readTop[id]; !ok || int32(l.Seq-top) > 0 {
			if !ok && len(g.readTop) >= maxRoutes {
				clear(g.readTop)
			}
			g.readTop[id] = l.Seq
		}
		g.smu.Unlock()
		g.eng.ProcessOpaque(from, inner, orig) // what it sends on is orig, or its cached copy
		return
	}
	st := g.state(e)
	if st.nonce.broken {
		g.relay(to, orig)
		return
	}
	// Open a copy: the original may still go out as it came.
	off := ipsec.MaxHeadroom
	if len(pkt) > len(g.inBuf)-off {
		g.c.malformed.Add(1)
		g.relay(to, orig)
		return
	}
	buf := g.inBuf[off : off+len(pkt)]
	copy(buf, pkt)
	inner, st, ok := g.openBundle(buf, l, st)
	if !ok {
		g.relay(to, orig) // the receiver decides; it would refuse it too
		return
	}
	if r, ok := flowOf(inner); ok {
		g.noteRoute(r, st, from)
	}
	g.toEngine(from, inner, orig, st)
	if g.owedN.Load() > 0 {
		g.payOwed()
	}
}

// staleRead reports whether l, a read-class SA's packet the engine is
// resending, lies a replay window or more below the highest number seen on
// the SA: the receiver would refuse it (the SA's window as the file gives
// it, else 32, the smallest common default — strongSwan's and Linux's).
func (g *Gateway) staleRead(l ipsec.Loc) bool {
	e, _ := g.sad.Load().LookupLoc(&l)
	if e == nil || e.Class() != ipsec.ClassRead {
		return false
	}
	w := e.Config.ReplayWindow
	if w <= 0 {
		w = 32
	}
	g.smu.Lock()
	top, ok := g.readTop[e.Config.ID()]
	g.smu.Unlock()
	return ok && int64(int32(top-l.Seq)) >= int64(w)
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
		hopeless := st == nil || st.nonce.isBroken() // it will never be ready
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

// maxBundle bounds the IPsec headers the gateway opens in one packet (an
// AH+ESP bundle is two; ESP in a tunnel in ESP too).
const maxBundle = 3

// openBundle verifies and opens pkt (a copy, opened in place) on st's SA,
// and any IPsec inside it on the SAs it names — an AH+ESP bundle (RFC
// 4301 §4.5) — down to the packet they protect. It returns that packet
// and the state of the innermost SA, whose outer chain now records the
// SAs around it (outermost last), so that engineOut seals in the same
// order. ok is false when any layer cannot be opened (counted); the caller
// relays the original then.
func (g *Gateway) openBundle(pkt []byte, l ipsec.Loc, st *saState) (inner []byte, _ *saState, ok bool) {
	var outer *saState
	for depth := 1; ; depth++ {
		// Read what the open overwrites, act on it only once verified.
		var iv [8]byte
		hasIV := l.Kind == ipsec.KindESP && l.Off+16 <= len(pkt)
		if hasIV {
			copy(iv[:], pkt[l.Off+8:])
		}
		var sp, dp uint16
		if l.UDPOff >= 0 && l.UDPOff+4 <= len(pkt) {
			sp, dp = binary.BigEndian.Uint16(pkt[l.UDPOff:]), binary.BigEndian.Uint16(pkt[l.UDPOff+2:])
		}
		e := st.e
		inner, err := e.Write.OpenAt(pkt, l)
		if err != nil {
			if errors.Is(err, ipsec.ErrHardExpired) {
				st.dead.Store(true)
			}
			switch {
			case errors.Is(err, ipsec.ErrICV):
				g.c.icv.Add(1)
			case errors.Is(err, ipsec.ErrReplay), errors.Is(err, ipsec.ErrTooOld):
				g.c.replays.Add(1)
			default:
				g.c.openErrors.Add(1)
			}
			return nil, nil, false
		}
		g.c.opened.Add(1)
		seq := seq64(e.Write, l.Seq)
		if hasIV {
			if err := st.nonce.observe(iv[:], seq); err != nil {
				g.c.downgrades.Add(1)
				g.log.Warn("gateway: SA downgraded to relaying", "sa", e.Config.ID(), "err", err)
			}
		}
		st.mu.Lock()
		st.maxIn = max(st.maxIn, seq)
		st.outer = outer
		if !st.learned {
			g.learnOuter(st, sp, dp, inner, l)
		}
		st.mu.Unlock()

		// IPsec again inside (transport-mode ESP under AH, or a tunnel in
		// a tunnel)?
		il, err := ipsec.Locate(inner)
		if err != nil || (il.Kind != ipsec.KindESP && il.Kind != ipsec.KindAH) {
			return inner, st, true
		}
		if depth == maxBundle {
			g.c.malformed.Add(1)
			return nil, nil, false
		}
		ie, _ := g.sad.Load().LookupLoc(&il)
		switch {
		case ie == nil:
			g.c.unknown.Add(1)
			return nil, nil, false
		case ie.Class() != ipsec.ClassWrite:
			// A layer the gateway may not seal on: it cannot re-seal the
			// bundle, so the bundle passes as it came.
			g.c.classNone.Add(1)
			return nil, nil, false
		}
		ist := g.state(ie)
		if ist.nonce.broken {
			return nil, nil, false
		}
		outer, st, pkt, l = st, ist, inner, il
	}
}

// remember maps key to v in m (a table under g.smu), starting m afresh
// when it reaches maxRoutes: the entries are relearned from the next
// packets.
func remember[V any](g *Gateway, m map[route]V, key route, v V) {
	g.smu.Lock()
	defer g.smu.Unlock()
	if _, ok := m[key]; !ok && len(m) >= maxRoutes {
		clear(m)
	}
	m[key] = v
}

// noteRoute records that flow r's packets came from side from on st (nil:
// unprotected). A flow that moves to another SA shows that the endpoints
// rekeyed: the old SA's flows follow it (next), and the flow's other
// direction — whose endpoint rekeyed too, but may have nothing to send —
// is marked stale and its endpoint asked for a packet.
func (g *Gateway) noteRoute(r route, st *saState, from engine.Side) {
	g.smu.Lock()
	old, had := g.routes[r]
	if !had && len(g.routes) >= maxRoutes {
		clear(g.routes)
	}
	v := via{st: st, from: from}
	if had && old.st == st {
		v.stale, v.elicited = old.stale, old.elicited
	}
	g.routes[r] = v
	var ask bool
	var rev via
	if had && old.st != nil && st != nil && old.st != st {
		g.c.rekeys.Add(1)
		old.st.mu.Lock()
		old.st.next = st
		gen := old.st.gen + 1
		old.st.mu.Unlock()
		st.mu.Lock()
		st.gen = max(st.gen, gen)
		gen = st.gen
		st.mu.Unlock()
		// The other direction is stale if its SA is of an older
		// generation: it has not moved in this rekey yet.
		if rv, ok := g.routes[r.reverse()]; ok && rv.st != nil && !rv.stale && rv.st.generation() < gen {
			rv.stale, rv.elicited = true, time.Now()
			g.routes[r.reverse()] = rv
			ask, rev = true, rv
		}
	}
	g.smu.Unlock()
	if ask {
		g.elicit(r.reverse(), rev.from)
	}
}

// elicit asks the engine for a keep-alive toward the endpoint that sends
// flow r (on side at), which answers it on its newest SA. The engine's
// lock must not be held.
func (g *Gateway) elicit(r route, at engine.Side) {
	wire, radio := r.src, r.dst
	if at == engine.Radio {
		wire, radio = radio, wire
	}
	if g.eng.Elicit(wire, radio, at) {
		g.c.elicits.Add(1)
	}
}

// flowOf is a packet's route: its addresses, and its ports if it is TCP
// (and not a fragment).
func flowOf(pkt []byte) (route, bool) {
	if len(pkt) == 0 {
		return route{}, false
	}
	var src, dst netip.Addr
	var l4 []byte
	switch pkt[0] >> 4 {
	case 4:
		h, err := header.ParseIPv4(pkt)
		if err != nil {
			return route{}, false
		}
		src, dst = h.Src(), h.Dst()
		if h.Protocol() == header.ProtoTCP && !h.IsFragment() {
			l4 = h.Payload()
		}
	case 6:
		h, err := header.ParseIPv6(pkt)
		if err != nil {
			return route{}, false
		}
		src, dst = h.Src(), h.Dst()
		if proto, off, _, err := h.UpperLayer(); err == nil && proto == header.ProtoTCP {
			l4 = h[off:]
		}
	default:
		return route{}, false
	}
	var sp, dp uint16
	if len(l4) >= 4 {
		sp, dp = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	}
	return route{netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)}, true
}

// hostsOf is a packet's addresses without ports: the key of the IP-in-IP
// table.
func hostsOf(pkt []byte) (route, bool) {
	src, dst, ok := addrs(pkt)
	return route{netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)}, ok
}

// learnOuter makes the SA's sealer when its packets show an outer form
// its configuration does not state: the mode (for an SA of unknown mode,
// tunnel when the inner addresses are not the outer ones) and the UDP
// encapsulation ports sp and dp (0: none). st.mu is held.
func (g *Gateway) learnOuter(st *saState, sp, dp uint16, inner []byte, l ipsec.Loc) {
	mode := st.e.Config.Mode
	if mode == ipsec.ModeAny {
		mode = ipsec.Transport
		if src, dst, ok := addrs(inner); ok && (src != l.Src || dst != l.Dst) {
			mode = ipsec.Tunnel
		}
	}
	g.reframe(st, mode, sp, dp)
}

// reframe makes st's sealer seal in the given outer form, if that is not
// the one its configuration states. st.mu is held.
func (g *Gateway) reframe(st *saState, mode ipsec.Mode, sp, dp uint16) {
	cfg := st.e.Config
	st.learned, st.learnedMode, st.learnedPorts = true, mode, [2]uint16{sp, dp}
	if mode == cfg.Mode && sp == cfg.EncapSrcPort && dp == cfg.EncapDstPort {
		return
	}
	s, err := st.e.Write.Reframe(mode, sp, dp)
	if err != nil {
		g.log.Warn("gateway: cannot seal in the packets' outer form", "sa", cfg.ID(), "err", err)
		return
	}
	st.sealer = s
	g.log.Info("gateway: sealing in the outer form the packets show", "sa", cfg.ID(), "mode", mode, "udp-src", sp, "udp-dst", dp)
}

// toEngine hands an inner packet (in inBuf) to the engine, noting its
// original so that an unchanged pass-through can go out as it came.
func (g *Gateway) toEngine(from engine.Side, inner, orig []byte, st *saState) {
	g.curOrig, g.curSt = orig, st
	g.eng.Process(from, inner)
	g.curOrig, g.curSt = nil, nil
}

// inInBuf reports whether pkt lies in inBuf: the packet Process is handing
// to the engine, passed on unchanged.
func (g *Gateway) inInBuf(pkt []byte) bool {
	if len(pkt) == 0 {
		return false
	}
	p, lo := uintptr(unsafe.Pointer(&pkt[0])), uintptr(unsafe.Pointer(&g.inBuf[0]))
	return p >= lo && p < lo+uintptr(len(g.inBuf))
}

// seq64 is the full sequence number of a packet the SA just accepted.
func seq64(sa *ipsec.SA, low uint32) uint64 {
	top := sa.InTop()
	s := top&^0xffffffff | uint64(low)
	if s > top && s-top > 1<<31 && s >= 1<<32 {
		s -= 1 << 32
	}
	return s
}

func addrs(pkt []byte) (src, dst netip.Addr, ok bool) {
	if len(pkt) == 0 {
		return
	}
	switch pkt[0] >> 4 {
	case 4:
		h, err := header.ParseIPv4(pkt)
		if err != nil {
			return
		}
		return h.Src(), h.Dst(), true
	case 6:
		h, err := header.ParseIPv6(pkt)
		if err != nil {
			return
		}
		return h.Src(), h.Dst(), true
	}
	return
}

func (g *Gateway) state(e *ipsec.Entry) *saState {
	id := e.Config.ID()
	g.smu.Lock()
	defer g.smu.Unlock()
	st := g.states[id]
	if st == nil || st.e != e { // new, or a new entry for it in the SAD
		nst := &saState{e: e, nonce: newNoncePlan(e.Config)}
		if st != nil {
			g.inherit(nst, st)
		}
		g.states[id] = nst
		st = nst
	}
	return st
}

// inherit carries what the gateway did on an SA over to a new entry for
// it: its numbers continue, its IV counter never goes back, the outer
// form learned stays, and the old entry's flows move to the new one.
func (g *Gateway) inherit(nst, old *saState) {
	old.mu.Lock()
	defer old.mu.Unlock()
	nst.owned, nst.last, nst.maxIn = old.owned, old.last, old.maxIn
	nst.nonce.carry(old.nonce)
	if old.learned {
		g.reframe(nst, old.learnedMode, old.learnedPorts[0], old.learnedPorts[1])
	}
	old.next = nst
}

// engineOut takes what the engine sends on: the original of a packet it
// passed unchanged, or the packet sealed on the SA that carries it.
func (g *Gateway) engineOut(to engine.Side, pkt []byte) {
	if l, err := ipsec.Locate(pkt); err == nil && (l.Kind == ipsec.KindESP || l.Kind == ipsec.KindAH) {
		// A read-class packet (or its cached copy), as it came — unless it
		// is a copy the receiver's replay window has left behind.
		if g.staleRead(l) {
			g.c.readStale.Add(1)
			return
		}
		g.out(to, pkt)
		return
	}
	if _, _, ok := peelIPIP(pkt); ok {
		g.out(to, pkt) // the engine makes none: an original, as it came
		return
	}
	if g.inInBuf(pkt) {
		if g.curSt == nil {
			g.out(to, g.curOrig) // plain TCP
			return
		}
		// Until the gateway may seal on the SA (and on every SA of its
		// bundle), the packet goes out as it came; from then on the
		// gateway numbers every packet on them.
		if !g.maySeal(g.curSt) {
			g.c.originals.Add(1)
			g.out(to, g.curOrig)
			return
		}
	}
	r, ok := flowOf(pkt)
	if !ok {
		return
	}
	g.smu.Lock()
	v, ok := g.routes[r]
	g.smu.Unlock()
	switch {
	case !ok:
		// Never in the clear what the gateway has not seen in the clear: a
		// flow it no longer has a route for (its table was full) waits for
		// the endpoint's next packet.
		g.c.noRoute.Add(1)
		return
	case v.st == nil:
		g.send(to, pkt) // a flow that came unprotected (Plain)
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
		g.c.notYetSafe.Add(1) // no usable SA, or its IV generator not confirmed
		g.smu.Lock()
		if _, ok := g.owed[r]; !ok && len(g.owed) < maxOwed {
			g.owed[r] = v
			g.owedN.Add(1)
		}
		g.smu.Unlock()
		return
	}
	// Seal innermost first, each SA of the bundle around what the one
	// before made, in place in sealBuf.
	off := maxBundle * ipsec.MaxHeadroom
	n := len(pkt)
	if off+n+maxBundle*ipsec.MaxTailroom > len(g.sealBuf) {
		g.c.sealErrors.Add(1)
		return
	}
	copy(g.sealBuf[off:], pkt)
	var outer []byte
	for i := 0; st != nil && i < maxBundle; i++ {
		var err error
		if outer, st, err = g.sealOn(st, g.sealBuf[:off+n], off, n); err != nil {
			g.c.sealErrors.Add(1)
			g.log.Warn("gateway: seal", "err", err)
			return
		}
		off, n = len(g.sealBuf)-cap(outer), len(outer)
	}
	g.c.sealed.Add(1)
	g.send(to, outer)
}

// usable reports whether st's SA is in sad and alive.
func usable(sad *ipsec.SAD, st *saState) bool {
	c := &st.e.Config
	e, _ := sad.Lookup(c.SPI, c.Dst, c.Proto)
	return e == st.e && !st.dead.Load()
}

// live returns the SA a flow routed on st is sealed on: st while usable,
// else the SA its flows moved to (following a rekey or a new entry), or
// nil.
func (g *Gateway) live(st *saState) *saState {
	sad := g.sad.Load()
	for range 8 {
		if st == nil || usable(sad, st) {
			return st
		}
		st.mu.Lock()
		next := st.next
		st.mu.Unlock()
		st = next
	}
	return nil
}

// askLater has the endpoint behind flow r send a packet, at most every
// elicitGap: the engine's lock is held here, so a goroutine asks.
func (g *Gateway) askLater(r route, v via) {
	now := time.Now()
	g.smu.Lock()
	cur, ok := g.routes[r]
	if !ok || cur.st != v.st || now.Sub(cur.elicited) < elicitGap {
		g.smu.Unlock()
		return
	}
	cur.elicited = now
	g.routes[r] = cur
	g.smu.Unlock()
	go g.elicit(r, v.from)
}

// elicitGap spaces the keep-alives that ask an endpoint for a packet.
const elicitGap = 20 * time.Millisecond

// maySeal reports whether the gateway may seal on st's SA and on every SA
// around it: each still in the SAD and alive, each IV generator
// confirmed.
func (g *Gateway) maySeal(st *saState) bool {
	sad := g.sad.Load()
	for i := 0; st != nil; i++ {
		if i == maxBundle {
			return false
		}
		if !usable(sad, st) {
			return false
		}
		if _, ok := st.nonce.ivSource(); !ok {
			return false
		}
		st.mu.Lock()
		next := st.outer
		st.mu.Unlock()
		st = next
	}
	return true
}

// sealOn seals buf[off:off+n] on st's SA with the next sequence number the
// gateway owns on it, and returns the sealed packet (within buf's
// capacity) and the SA to seal that in next, if the SA is part of a
// bundle.
func (g *Gateway) sealOn(st *saState, buf []byte, off, n int) ([]byte, *saState, error) {
	ivs, ok := st.nonce.ivSource()
	if !ok {
		return nil, nil, fmt.Errorf("sa %v: iv generator not confirmed", st.e.Config.ID())
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	sa := st.e.Write
	if st.sealer != nil {
		sa = st.sealer
	}
	if !st.owned {
		st.owned = true
		st.last = st.maxIn + uint64(g.cfg.SeqJump)
	}
	seq := max(st.last+1, st.maxIn)
	out, err := sa.SealWith(buf, off, n, seq, ivs)
	if err != nil {
		if errors.Is(err, ipsec.ErrHardExpired) {
			st.dead.Store(true)
		}
		return nil, nil, fmt.Errorf("sa %v: %w", st.e.Config.ID(), err)
	}
	st.last = seq
	return out, st.outer, nil
}

// send puts a packet the gateway made (sealed, or the engine's own plain
// one) in the IP-in-IP tunnel its flow came in, if any, and sends it.
func (g *Gateway) send(to engine.Side, pkt []byte) {
	k, ok := hostsOf(pkt)
	if !ok {
		g.out(to, pkt)
		return
	}
	g.smu.Lock()
	h := g.ipip[k]
	g.smu.Unlock()
	if h == nil {
		g.out(to, pkt)
		return
	}
	n := len(h.b) + len(pkt)
	if n > len(g.wrapBuf) {
		g.c.sealErrors.Add(1)
		return
	}
	b := g.wrapBuf[:n]
	copy(b, h.b)
	copy(b[len(h.b):], pkt)
	if h.v6 {
		binary.BigEndian.PutUint16(b[4:], uint16(len(pkt)))
	} else {
		ip := header.IPv4(b)
		ip.SetTotalLen(n)
		h.id++
		ip.SetID(h.id)
		ip.UpdateChecksum()
	}
	g.out(to, b)
}

// ipipHdr is the outer header of an IP-in-IP tunnel, as the packets
// showed it.
type ipipHdr struct {
	b  []byte
	v6 bool
	id uint16
}

// peelIPIP returns what an IP-in-IP packet (IPv4 or IPv6 in IPv4 or IPv6,
// RFC 2003/2473, no extension headers, not a fragment) carries and a copy
// of its outer header.
func peelIPIP(pkt []byte) ([]byte, *ipipHdr, bool) {
	if len(pkt) == 0 {
		return nil, nil, false
	}
	switch pkt[0] >> 4 {
	case 4:
		h, err := header.ParseIPv4(pkt)
		if err != nil || h.IsFragment() || (h.Protocol() != header.ProtoIPIP && h.Protocol() != header.ProtoIPv6) {
			return nil, nil, false
		}
		return h.Payload(), &ipipHdr{b: append([]byte(nil), pkt[:h.HeaderLen()]...), id: h.ID()}, true
	case 6:
		h, err := header.ParseIPv6(pkt)
		if err != nil || (h.NextHeader() != header.ProtoIPIP && h.NextHeader() != header.ProtoIPv6) {
			return nil, nil, false
		}
		return pkt[header.IPv6Len : header.IPv6Len+h.PayloadLen()], &ipipHdr{b: append([]byte(nil), pkt[:header.IPv6Len]...), v6: true}, true
	}
	return nil, nil, false
}

// Stats returns the counters.
func (g *Gateway) Stats() Stats {
	c := &g.c
	return Stats{Packets: c.packets.Load(), Relayed: c.relayed.Load(), IKE: c.ike.Load(), Keepalives: c.keepalives.Load(),
		Fragments: c.fragments.Load(), IPIP: c.ipip.Load(), NotIPsec: c.notIPsec.Load(), Unknown: c.unknown.Load(), ClassNone: c.classNone.Load(),
		ClassRead: c.classRead.Load(), Opened: c.opened.Load(), ICVFailures: c.icv.Load(), Replays: c.replays.Load(),
		OpenErrors: c.openErrors.Load(), Malformed: c.malformed.Load(), Sealed: c.sealed.Load(), SealErrors: c.sealErrors.Load(),
		Originals: c.originals.Load(), NotYetSafe: c.notYetSafe.Load(), NonceDowngrades: c.downgrades.Load(),
		NoRoute: c.noRoute.Load(), Rekeys: c.rekeys.Load(), Elicits: c.elicits.Load(), ReadStale: c.readStale.Load(), Engine: g.eng.Stats()}
}

// SAs returns the state of every write-class SA the gateway has seen, by
// SPI.
func (g *Gateway) SAs() []SAStats {
	g.smu.Lock()
	defer g.smu.Unlock()
	out := make([]SAStats, 0, len(g.states))
	for id, st := range g.states {
		st.mu.Lock()
		st.nonce.mu.Lock()
		out = append(out, SAStats{ID: id, Owned: st.owned, EndpointSeq: st.maxIn, GatewaySeq: st.last,
			Lead: int64(st.last) - int64(st.maxIn), NonceConfirmed: !st.nonce.sensitive || st.nonce.seen >= 2 && !st.nonce.broken,
			NonceBroken: st.nonce.broken})
		st.nonce.mu.Unlock()
		st.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b SAStats) int { return cmp.Compare(a.ID.SPI, b.ID.SPI) })
	return out
}
