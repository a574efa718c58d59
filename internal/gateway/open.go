package gateway

import (
	"encoding/binary"
	"errors"
	"github.com/espep/espep/ipsec/header"
	"net/netip"
	"time"

	"github.com/espep/espep/ipsec"
)

// Opening (DESIGN.md rule 3: verify before acting). Every layer's ICV and
// replay window are checked before anything in the packet is used; what
// the gateway learns from a packet — the endpoint's IV salt and highest
// number, the SA's outer form and UDP ports, the peers of a wildcard SA,
// the bundle's layers — it learns only once the packet verified. Then the
// inner packet must lie within the SA's selectors (RFC 4301 §5.2).

// openResult is what became of a packet the gateway tried to open.
type openResult uint8

const (
	opened       openResult = iota
	openFailed              // not verified (ICV, replay, malformed, no SA for a layer): relay the original
	openUnusable            // verified, but nothing to deliver or outside the selectors — or a replay on an SA the gateway numbers: drop it
)

// maxBundle bounds the IPsec headers the gateway opens in one packet (an
// AH+ESP bundle is two; ESP in a tunnel in ESP too).
const maxBundle = 3

// openBundle verifies and opens pkt (a copy, opened in place) on st's SA,
// and any IPsec inside it on the SAs it names — an AH+ESP bundle (RFC
// 4301 §4.5) — down to the packet they protect. It returns that packet
// and the state of the innermost SA, whose outer chain now records the
// SAs around it (outermost last), so that engineOut seals in the same
// order; c.ip holds the returned packet's headers, parsed once.
func (g *Gateway) openBundle(c *call, pkt []byte, l ipsec.Loc, st *saState) (inner []byte, _ *saState, _ openResult) {
	ctr := c.ctr
	var outer *saState
	for depth := 1; ; depth++ {
		// Read what the open overwrites; act on it only once verified.
		var iv [8]byte
		hasIV := l.Kind == ipsec.KindESP && l.Off+16 <= len(pkt)
		if hasIV {
			copy(iv[:], pkt[l.Off+8:])
		}
		var sp, dp uint16
		if l.UDPOff >= 0 && l.UDPOff+4 <= len(pkt) {
			sp, dp = binary.BigEndian.Uint16(pkt[l.UDPOff:]), binary.BigEndian.Uint16(pkt[l.UDPOff+2:])
		}
		var err error
		inner, st, err = openLayer(st, pkt, &l)
		if err != nil {
			return nil, nil, g.openError(ctr, st, err)
		}
		e := st.e
		seq := seq64(e.Write, l.Seq)
		if st.accepted != nil {
			st.accepted.Note(seq) // statedir.Accepts: a replay window that outlives the gateway
		}
		ctr.add(cOpened)
		if st.handed.Load() {
			ctr.add(cHandedOver)
			return nil, nil, openUnusable
		}
		if hasIV {
			g.observeIV(ctr, st, iv[:], seq)
		}
		if st.draining.Load() { // only a draining SA's idle time counts (sad.go)
			st.lastUse.Store(time.Now().UnixNano())
		}
		parsed := header.Parse(inner, &c.ip) == nil
		tunnel := tunnelMode(e.Config.Mode, &c.ip, parsed, l)
		g.learn(st, outer, seq, l, sp, dp, tunnel)
		if !parsed || !e.Config.AdmitsParsed(&c.ip, tunnel) {
			ctr.add(cSelectors)
			return nil, nil, openUnusable
		}
		// IPsec again inside (transport-mode ESP under AH, or a tunnel in
		// a tunnel)?
		if p := c.ip.Proto; p != header.ProtoESP && p != header.ProtoAH && p != header.ProtoUDP {
			return inner, st, opened
		}
		il, err := ipsec.LocateParsed(inner, &c.ip)
		if err != nil || (il.Kind != ipsec.KindESP && il.Kind != ipsec.KindAH) {
			return inner, st, opened
		}
		ist, res := g.nextLayer(ctr, st, &il, depth)
		if ist == nil {
			return nil, nil, res
		}
		outer, st, pkt, l = st, ist, inner, il
	}
}

// openLayer opens one layer on st's SA — or, when a SetSAD gave the SA
// again between the packet's lookup and now, on the entry that took st's
// over (inherit), whose replay window goes on from st's: relaying the
// packet instead would let the endpoint's own number reach the receiver
// on an SA the gateway numbers. An entry taken over fails before the ICV
// check, so pkt is as it came for the second open.
func openLayer(st *saState, pkt []byte, l *ipsec.Loc) ([]byte, *saState, error) {
	inner, err := st.e.Write.OpenAt(pkt, *l)
	if err != nil && errors.Is(err, ipsec.ErrHardExpired) {
		if h := st.lastHeir(); h != nil {
			st = h
			inner, err = st.e.Write.OpenAt(pkt, *l)
		}
	}
	return inner, st, err
}

// openError counts why a layer did not open and says what becomes of the
// packet: undeliverable (verified, nothing to deliver) is dropped, and so
// is a replay on an SA the gateway numbers; the rest is relayed.
func (g *Gateway) openError(ctr *stripe, st *saState, err error) openResult {
	if errors.Is(err, ipsec.ErrHardExpired) {
		st.dead.Store(true)
	}
	switch {
	case errors.Is(err, ipsec.ErrUndeliverable):
		ctr.add(cUndeliverable)
		return openUnusable
	case errors.Is(err, ipsec.ErrICV):
		ctr.add(cICV)
	case errors.Is(err, ipsec.ErrReplay), errors.Is(err, ipsec.ErrTooOld):
		ctr.add(cReplays)
		if st.numbered() {
			// The receiver's window follows the gateway's numbers, not
			// the endpoint's: relayed, a replay numbered above the
			// gateway's would be taken there and push the gateway's
			// next packets out of its window.
			return openUnusable
		}
	default:
		ctr.add(cOpenErrors)
	}
	return openFailed
}

// observeIV gives a verified packet's IV to the SA's nonce plan
// (nonce.go), and keeps a salt it confirmed.
func (g *Gateway) observeIV(ctr *stripe, st *saState, iv []byte, seq uint64) {
	confirmed, err := st.nonce.observe(iv, seq)
	if err != nil {
		ctr.add(cDowngrades)
		g.log.Warn("gateway: SA downgraded to relaying", "sa", st.e.Config.ID(), "err", err)
	}
	if confirmed && g.cfg.State != nil {
		st.nonce.mu.Lock()
		salt := st.nonce.salt
		st.nonce.mu.Unlock()
		g.cfg.State.SetSalt(st.key, salt)
	}
}

// learn records what a verified packet (sequence number seq, located at
// l, UDP ports sp and dp, in tunnel mode or not) shows of its SA: the
// endpoint's highest number, the SA around it in a bundle, the peers, the
// outer form; and asks for sequence numbers.
func (g *Gateway) learn(st, outer *saState, seq uint64, l ipsec.Loc, sp, dp uint16, tunnel bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	newest := seq > st.maxIn
	st.maxIn = max(st.maxIn, seq)
	if st.awaitIn {
		st.awaitIn = false
		if st.owned {
			st.last = max(st.last, st.maxIn)
		}
	}
	st.outer = outer
	if !st.peer[0].IsValid() || !st.peer[1].IsValid() {
		st.peer = [2]netip.Addr{or(st.peer[0], l.Src), or(st.peer[1], l.Dst)}
	}
	if !st.learned || newest {
		g.learnOuter(st, sp, dp, tunnel)
	}
	g.reserve(st)
}

// nextLayer returns the state of the SA an inner IPsec layer il names, at
// bundle depth depth, or nil and what becomes of the packet: relayed as
// it came (a layer the gateway does not hold, may not seal on or must
// not) or dropped (too deep).
func (g *Gateway) nextLayer(ctr *stripe, st *saState, il *ipsec.Loc, depth int) (*saState, openResult) {
	if depth == maxBundle {
		ctr.add(cMalformed)
		return nil, openUnusable
	}
	ie := g.lookup(il)
	switch {
	case ie == nil:
		ctr.add(cUnknown)
		g.wantSAs(il)
		st.noteRelayed() // the bundle goes out as it came, with the numbers of the layers that verified
		return nil, openFailed
	case ie.Class() != ipsec.ClassWrite:
		// A layer the gateway may not seal on: it cannot re-seal the
		// bundle, so the bundle passes as it came.
		ctr.add(cClassNone)
		st.noteRelayed()
		return nil, openFailed
	}
	ist := g.state(ie)
	if ist.nonce.refused() {
		st.noteRelayed()
		return nil, openFailed
	}
	return ist, opened
}

func or(a, b netip.Addr) netip.Addr {
	if a.IsValid() {
		return a
	}
	return b
}

// tunnelMode reports whether a packet opened on an SA of mode m was in
// tunnel mode: as the SA says, or for an SA of unknown mode when the inner
// addresses (inner, if parsed) are not the outer ones (transport mode
// keeps them).
func tunnelMode(m ipsec.Mode, inner *header.Parsed, parsed bool, l ipsec.Loc) bool {
	switch m {
	case ipsec.Tunnel:
		return true
	case ipsec.Transport:
		return false
	}
	return parsed && (inner.Src != l.Src || inner.Dst != l.Dst)
}

// learnOuter makes the frame the gateway seals st's SA in when its
// verified packets show an outer form its configuration does not state:
// the mode (for an SA of unknown mode), the UDP encapsulation ports sp and
// dp (0: none) — again whenever the endpoint's newest packet shows other
// ports (a NAT rebinding, which Linux's XFRM follows too) — and for a
// wildcard SA the tunnel's addresses. st.mu is held.
func (g *Gateway) learnOuter(st *saState, sp, dp uint16, tunnel bool) {
	cfg := &st.e.Config
	mode := ipsec.Transport
	if tunnel {
		mode = ipsec.Tunnel
	}
	if st.learned {
		csp, cdp := cfg.EncapSrcPort, cfg.EncapDstPort
		if st.frame != nil {
			csp, cdp = st.frame.Ports()
			mode = st.frame.Mode()
		} else if cfg.Mode != ipsec.ModeAny {
			mode = cfg.Mode
		}
		if csp == sp && cdp == dp || (csp != 0) != (sp != 0) {
			return // the same ports, or raw ESP on a UDP SA (or the reverse): not a rebinding
		}
		g.c.rare().add(cRebinds)
	}
	st.learned = true
	if cfg.Mode != ipsec.ModeAny {
		mode = cfg.Mode
	}
	wild := mode == ipsec.Tunnel && (!cfg.Src.IsValid() || !cfg.Dst.IsValid())
	if mode == cfg.Mode && sp == cfg.EncapSrcPort && dp == cfg.EncapDstPort && !wild {
		st.frame = nil
		return
	}
	f, err := st.e.Write.NewFrame(mode, sp, dp, st.peer[0], st.peer[1])
	if err != nil {
		g.log.Warn("gateway: cannot seal in the packets' outer form", "sa", cfg.ID(), "err", err)
		return
	}
	st.frame = f
	g.log.Info("gateway: sealing in the outer form the packets show", "sa", cfg.ID(), "mode", mode, "udp-src", sp, "udp-dst", dp)
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
