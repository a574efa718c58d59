package gateway

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec/header"
)

// Flows and what binds them to their protection.
//
// A flow (inner addresses and TCP ports, one direction) is sealed on the
// SA its own packets last came on, in the IP-in-IP tunnel they last came
// in. Both are learned only from packets whose ICV the gateway verified,
// and a flow first seen protected stays bound to protection for its life:
//
//   - a cleartext TCP packet claiming a protected flow (either direction)
//     is dropped and counted — one spoofed segment once moved a protected
//     flow to "unprotected", and the engine's packets, early-acknowledged
//     bytes included, then left in the clear;
//   - a verified packet on another SA moves a TCP flow only if that SA
//     runs between the same two peers (the SAs' addresses, as the
//     endpoints' rekey makes them) — a peer cannot use its own SA to claim
//     another's flow (with selectors the SA's traffic-selector check
//     refuses it earlier, RFC 4301 §5.2); other traffic is not the
//     engine's, and follows its latest verified packet;
//   - a flow first seen in the clear (plain = yes) becomes protected when
//     a verified packet shows it.
//
// The engine keeps the same binding for its own flow table (engine
// ProcessPlain), so that nothing unverified reaches a protected flow even
// when the gateway's table has forgotten it.
//
// Tables are bounded and forget the flow idle longest (lru); protected
// flows, which only verified packets create, are kept apart from plain
// ones, which anyone can create, so that a flood of spoofed cleartext can
// push out only other cleartext flows.

// route is a flow's key: its inner addresses and, for TCP, its ports
// (zero otherwise).
type route struct{ src, dst netip.AddrPort }

func (r route) reverse() route { return route{r.dst, r.src} }

// tcp reports whether the route is a TCP flow's (it has ports).
func (r route) tcp() bool { return r.src.Port() != 0 || r.dst.Port() != 0 }

// via is how a flow's packets last came.
type via struct {
	st   *saState    // the SA (innermost of a bundle) they came on; nil: not protected
	from engine.Side // the side they came from
	tun  *ipipHdr    // the IP-in-IP tunnel they came in, nil: none
	// stale: the flow's other direction moved to a new SA (a rekey) and
	// this one has not yet; the endpoint may have deleted st already.
	stale    bool
	elicited time.Time // when the gateway last asked the endpoint for a packet
}

// maxRoutes bounds each flow table (protected, plain).
const maxRoutes = 1 << 16

// routeShards is how many parts the flow tables are cut into, each under
// a lock of its own, so that packets of different flows on different
// cores do not queue for one lock. A flow's two directions are in one
// part (route.hash is symmetric), so a lookup of both takes one lock.
const routeShards = 16

// routeTable is one part of the flow tables. Its lock comes after an
// engine shard's and before an saState's.
type routeTable struct {
	mu    sync.Mutex
	flows *lru[route, via] // protected flows
	plain *lru[route, via] // unprotected flows (Plain)
}

func newRouteTables() *[routeShards]routeTable {
	var t [routeShards]routeTable
	for i := range t {
		t[i].flows, t[i].plain = newLRU[route, via](maxRoutes/routeShards), newLRU[route, via](maxRoutes/routeShards)
	}
	return &t
}

// routesOf returns the part of the flow tables that holds r (and its
// reverse).
func (g *Gateway) routesOf(r route) *routeTable {
	return &g.routes[r.hash()%routeShards]
}

// hash is the same for a route and its reverse.
func (r route) hash() uint32 {
	h := endHash(r.src) + endHash(r.dst)
	// MurmurHash3's finaliser: spread every bit of the sum over all.
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	return h ^ h>>16
}

func endHash(a netip.AddrPort) uint32 {
	b := a.Addr().As16()
	h := (binary.LittleEndian.Uint64(b[8:])^uint64(a.Port())<<48)*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(b[:8])
	h *= 0x9e3779b97f4a7c15
	return uint32(h>>32) ^ uint32(h)
}

// samePeers reports whether SA states a and b run between the same two
// peers: a rekey of one another, or a bundle's layers.
func samePeers(a, b *saState) bool {
	return a.peer == b.peer
}

// reversePeers reports whether b runs opposite to a between the same
// peers: the other direction of the same flows.
func reversePeers(a, b *saState) bool {
	return a.peer[0] == b.peer[1] && a.peer[1] == b.peer[0]
}

// sameSA reports whether a and b are states of one SA: the same SPI,
// destination and protocol, and the same keys — an entry given again
// (the state of the newer carries the older's on: inherit).
func sameSA(a, b *saState) bool {
	return a.e.Config.ID() == b.e.Config.ID() && a.e.KeyID == b.e.KeyID
}

// routeOf is a packet's route: its addresses, and its ports if it is a
// whole TCP segment.
func routeOf(p *header.Parsed) route {
	if !p.IsTCP() {
		return route{netip.AddrPortFrom(p.Src, 0), netip.AddrPortFrom(p.Dst, 0)}
	}
	return route{p.SrcAddrPort(), p.DstAddrPort()}
}

// isProtected reports whether the gateway has seen flow r, or its other
// direction, protected.
func (g *Gateway) isProtected(r route) bool {
	t := g.routesOf(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	_, a := t.flows.peek(r)
	_, b := t.flows.peek(r.reverse())
	return a || b
}

// noteRoute records that flow r's packets came from side from on st (nil:
// unprotected), in the IP-in-IP tunnel whose outer header is tunHdr (nil:
// none). It reports false, and records nothing, when the packet may not
// claim the flow (flows.go). A flow that moves to another SA between the
// same peers shows that the endpoints rekeyed: the old SA's flows follow
// it (next), and the flow's other direction — whose endpoint rekeyed too,
// but may have nothing to send — is marked stale and its endpoint asked
// for a packet. A new entry for the same SA (the SAD given again) is not
// another SA.
func (g *Gateway) noteRoute(r route, st *saState, from engine.Side, tunHdr []byte) bool {
	t := g.routesOf(r)
	t.mu.Lock()
	old, had := t.flows.get(r)
	if st == nil {
		if had {
			t.mu.Unlock()
			return false
		}
		var prev *ipipHdr
		if pv, ok := t.plain.peek(r); ok {
			prev = pv.tun
		}
		if t.plain.put(r, via{from: from, tun: tunnelOf(tunHdr, prev)}) {
			g.c.rare().add(cEvicted)
		}
		t.mu.Unlock()
		return true
	}
	if !had {
		if rv, ok := t.flows.peek(r.reverse()); ok && r.tcp() && !reversePeers(rv.st, st) {
			t.mu.Unlock()
			return false // the other direction runs between other peers
		}
		var prev *ipipHdr
		if pv, ok := t.plain.peek(r); ok {
			prev = pv.tun
			t.plain.delete(r) // verified now: protected from here on
		}
		if t.flows.put(r, via{st: st, from: from, tun: tunnelOf(tunHdr, prev)}) {
			g.c.rare().add(cEvicted)
		}
		t.mu.Unlock()
		return true
	}
	prev := *old
	if prev.st != st && !samePeers(prev.st, st) && r.tcp() {
		t.mu.Unlock()
		return false // another peer's SA claims the flow
	}
	v := via{st: st, from: from, tun: tunnelOf(tunHdr, prev.tun)}
	if prev.st == st || sameSA(prev.st, st) {
		// The same SA, or a new entry for it (the SAD given again): not a
		// rekey. A flow waiting for its endpoint to rekey waits on — the
		// endpoint may have sent this packet just before it did.
		v.stale, v.elicited = prev.stale, prev.elicited
		*old = v
		t.mu.Unlock()
		return true
	}
	*old = v
	g.c.rare().add(cRekeys)
	prev.st.mu.Lock()
	prev.st.next = st
	gen := prev.st.gen + 1
	prev.st.mu.Unlock()
	st.mu.Lock()
	st.gen = max(st.gen, gen)
	gen = st.gen
	st.mu.Unlock()
	// The other direction is stale if its SA is of an older generation:
	// it has not moved in this rekey yet.
	var ask bool
	var rev via
	if rv, ok := t.flows.peek(r.reverse()); ok && !rv.stale && rv.st.generation() < gen {
		rv.stale, rv.elicited = true, time.Now()
		ask, rev = true, *rv
	}
	t.mu.Unlock()
	if ask {
		g.elicit(r.reverse(), rev.from)
	}
	return true
}
