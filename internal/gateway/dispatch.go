package gateway

import (
	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Dispatch: what each packet is, and which stage takes it. Each layer of
// a packet is parsed once, into its call (header.Parsed): the IP-in-IP
// header, the packet it carries (Locate finds the ESP/AH in it from
// there), and after opening the inner packet, whose view the selectors
// check, the flow tables and the engine all read.

// call is one Process call's working state: the buffer the packet is
// opened in, its parsed headers, and what the engine needs handed back
// with it if it passes the packet on unchanged (engine.Input.Tag). One
// goroutine owns a call from Process's start to its end; then it goes
// back to the pool.
type call struct {
	ctr  *stripe // its counters' stripe
	buf  []byte
	orig []byte        // the packet as it came (with any IP-in-IP around it)
	hdr  header.Parsed // the packet inside any IP-in-IP: what Locate reads
	ip   header.Parsed // the packet handed to the engine (opened, or plain)
	st   *saState      // the innermost SA it came on; nil for plain TCP
	more bool          // more packets of a batch follow (ProcessMore)
	// checked: orig's checksums hold on its reader's word (ProcessRead);
	// sent on as it came, it goes out the known way (sendOut).
	checked bool
}

// Process handles one IP packet that arrived from side from.
//
// It may be called from several goroutines at once (see Concurrency).
func (g *Gateway) Process(from engine.Side, pkt []byte) { g.ProcessMore(from, pkt, false) }

// ProcessMore is Process for a packet of a batch (read from a device at
// once): with more, others follow, and the engine sends the pure ACKs a
// batch calls for once, at its end (engine.Input.More). After the last
// packet of a batch the caller calls Flush.
func (g *Gateway) ProcessMore(from engine.Side, pkt []byte, more bool) {
	g.ProcessRead(from, pkt, more, false)
}

// ProcessRead is ProcessMore for a packet whose reader says (checked)
// that its checksums hold — it completed or made them, or the kernel
// verified them (tunlink's reader does) — so that the gateway does not
// sum it again: a plain segment is not verified before the engine takes
// it, and a packet sent on as it came goes out the known way
// (SetOutKnown).
func (g *Gateway) ProcessRead(from engine.Side, pkt []byte, more, checked bool) {
	c := g.calls.Get().(*call)
	defer g.calls.Put(c)
	// Busy before closed is read (Close: closed before busy is read), on
	// the call's own stripe: no cache line shared by every core.
	c.ctr.busy.Add(1)
	defer c.ctr.busy.Add(-1)
	if g.closed.Load() {
		return
	}
	c.orig, c.st, c.more, c.checked = pkt, nil, more, checked
	g.process(c, from, pkt)
	c.orig, c.st = nil, nil
}

// Flush sends what a batch's packets held back (ProcessMore).
func (g *Gateway) Flush() {
	if !g.closed.Load() {
		g.eng.Flush()
	}
}

// wantSAs tells the security server source, if any, that the gateway
// lacks the SAs between the packet's addresses.
func (g *Gateway) wantSAs(l *ipsec.Loc) {
	if w := g.want.Load(); w != nil {
		(*w)(l.Src, l.Dst)
	}
}

// relay sends c's packet on as it came.
func (g *Gateway) relay(c *call, to engine.Side) {
	c.ctr.add(cRelayed)
	g.sendOut(to, c.orig, holdIf(c.checked))
}

// process is Process's work, in c.
func (g *Gateway) process(c *call, from engine.Side, pkt []byte) {
	c.ctr.add(cPackets)
	to := 1 - from
	var tunHdr []byte
	if header.Parse(pkt, &c.hdr) != nil {
		c.ctr.add(cMalformed)
		g.relay(c, to)
		return
	}
	if inner, outer, ok := peelIPIP(pkt, &c.hdr); ok {
		// IP-in-IP: work on what it carries (encap.go).
		c.ctr.add(cIPIP)
		pkt, tunHdr = inner, outer
		if header.Parse(pkt, &c.hdr) != nil {
			c.ctr.add(cMalformed)
			g.relay(c, to)
			return
		}
	}
	l, err := ipsec.LocateParsed(pkt, &c.hdr)
	if err != nil {
		c.ctr.add(cMalformed)
		g.relay(c, to)
		return
	}
	switch l.Kind {
	case ipsec.KindIKE:
		c.ctr.add(cIKE) // the early signal of a new SA
		g.wantSAs(&l)
		if f := g.ike.Load(); f != nil {
			(*f)(pkt, l) // by value: a pointer would make l escape for every packet
		}
		g.relay(c, to)
		return
	case ipsec.KindKeepalive:
		c.ctr.add(cKeepalives)
		g.relay(c, to)
		return
	case ipsec.KindFragment:
		c.ctr.add(cFragments)
		g.relay(c, to)
		return
	case ipsec.KindOther:
		g.processPlain(c, from, pkt, tunHdr)
		return
	}
	e := g.lookup(&l)
	switch {
	case e == nil:
		c.ctr.add(cUnknown)
		g.wantSAs(&l)
		g.relay(c, to)
		return
	case e.Class() == ipsec.ClassNone:
		c.ctr.add(cClassNone)
		g.relay(c, to)
		return
	case e.Class() == ipsec.ClassRead:
		g.processRead(c, from, e, l, pkt)
		return
	}
	g.processWrite(c, from, e, l, pkt, tunHdr)
}

// processWrite opens a write-class SA's packet — every layer verified
// (open.go) — and hands what it protects to the engine.
func (g *Gateway) processWrite(c *call, from engine.Side, e *ipsec.Entry, l ipsec.Loc, pkt, tunHdr []byte) {
	to := 1 - from
	st := g.state(e)
	if st.nonce.refused() {
		if st.nonce.noState {
			c.ctr.add(cNoState)
			if _, logged := g.logged.LoadOrStore(e.Config.ID(), struct{}{}); !logged {
				g.log.Warn("gateway: not sealing on an SA with counter IVs without a state directory; relaying it", "sa", e.Config.ID())
			}
		}
		g.relay(c, to)
		return
	}
	// Open a copy: the original may still go out as it came.
	off := ipsec.MaxHeadroom
	if len(pkt) > len(c.buf)-off {
		c.ctr.add(cMalformed)
		g.relay(c, to)
		return
	}
	buf := c.buf[off : off+len(pkt)]
	copy(buf, pkt)
	inner, st, res := g.openBundle(c, buf, l, st)
	switch res {
	case openFailed:
		g.relay(c, to) // not verified: the receiver decides; it would refuse it too
		return
	case openUnusable:
		return // verified but nothing to deliver (counted): no stale number goes out
	}
	if g.heldForHandoff(c, inner, tunHdr, routeOf(&c.ip), st, from) {
		return
	}
	g.toEngine(c, from, inner, st, tunHdr)
}

// toEngine binds the flow of c's opened packet inner to st (and its
// IP-in-IP tunnel) and hands the packet to the engine: what follows the
// opening of a write-class packet, and the release of a held one. It
// reports false, the packet dropped, when another peer's SA holds the
// flow.
func (g *Gateway) toEngine(c *call, from engine.Side, inner []byte, st *saState, tunHdr []byte) bool {
	if !g.noteRoute(routeOf(&c.ip), st, from, tunHdr) {
		c.ctr.add(cBindingViolations)
		return false
	}
	c.st = st
	g.eng.Handle(from, inner, engine.Input{Tag: c, IP: &c.ip, More: c.more})
	if g.owedN.Load() > 0 {
		g.payOwed()
	}
	if g.unroutedN.Load() > 0 {
		g.retryUnrouted(routeOf(&c.ip))
	}
	return true
}

// processPlain handles a packet that is not IPsec: relayed as it came,
// or with Plain given to the engine — unless it is TCP claiming a flow
// the gateway has seen protected, which it drops. (Other cleartext
// traffic between the same hosts, ICMP say, is not the engine's and
// passes: a policy may protect some of a host pair's traffic only.)
func (g *Gateway) processPlain(c *call, from engine.Side, pkt, tunHdr []byte) {
	to := 1 - from
	c.ctr.add(cNotIPsec)
	r := routeOf(&c.hdr)
	if r.tcp() && g.isProtected(r) {
		c.ctr.add(cBindingViolations)
		return
	}
	if !g.cfg.Plain || len(pkt) > len(c.buf)-ipsec.MaxHeadroom {
		g.relay(c, to)
		return
	}
	if r.tcp() && !(c.checked && tunHdr == nil) && !header.ChecksumsValid(pkt[:c.hdr.Len], c.hdr.L4, header.ProtoTCP) {
		// Nothing but this checksum vouches for a plain segment: the
		// engine would acknowledge it early and send its bytes on under a
		// checksum of its own. Dropped, as the receiver's TCP would. A
		// segment its reader vouched for (checked) is not summed twice;
		// inside IP-in-IP, what the reader's word covers is the tunnel's
		// packet, so the segment it carries is.
		c.ctr.add(cBadChecksums)
		return
	}
	buf := c.buf[ipsec.MaxHeadroom : ipsec.MaxHeadroom+len(pkt)]
	copy(buf, pkt)
	g.noteRoute(r, nil, from, tunHdr)
	c.ip = c.hdr
	if !g.eng.Handle(from, buf, engine.Input{Kind: engine.Plain, Tag: c, IP: &c.ip, More: c.more}) {
		c.ctr.add(cBindingViolations) // the engine has the flow as protected
	}
}

// processRead snoops on a read-class SA's packet: the engine reads what
// it can decrypt and forwards and resends only the packet as it came
// (rule 4). The decrypted bytes are not verified: they steer local
// resends of the sender's own packets, nothing else.
func (g *Gateway) processRead(c *call, from engine.Side, e *ipsec.Entry, l ipsec.Loc, pkt []byte) {
	to := 1 - from
	c.ctr.add(cClassRead)
	inner, err := e.Read.Decrypt(c.buf[:0:cap(c.buf)], pkt)
	if err != nil {
		c.ctr.add(cOpenErrors)
		g.relay(c, to)
		return
	}
	g.smu.Lock()
	g.readLast[e.Config.ID()] = l.Seq
	g.smu.Unlock()
	in := engine.Input{Kind: engine.Opaque, Wire: c.orig, Tag: c} // what the engine sends on is c.orig, or its cached copy
	if header.Parse(inner, &c.ip) == nil {
		in.IP = &c.ip
	}
	g.eng.Handle(from, inner, in)
}
