package host

import (
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// The packet paths, the same on every platform: outbound (from the TUN:
// the SPD decides, the SAs of a PROTECT policy seal) and inbound (from
// the network: every IPsec layer opened and checked, then the inbound
// policy). They only decide and transform: the link (link.go) brings the
// packets, and sends or delivers what they return — in batches, as its
// platform allows.

// outbound applies the SPD to a packet the kernel routed into the TUN,
// buf[off:off+n], with ipsec.MaxHeadroom before it and MaxTailroom after.
// It returns the packet to put on the network (in buf; nil: none) and
// whether the host sealed it (a bypassed packet is returned as it came).
func (h *Host) outbound(buf []byte, off, n int) (out []byte, sealed bool) {
	h.c.add(cTunIn)
	pkt := buf[off : off+n]
	var ip header.Parsed
	if header.Parse(pkt, &ip) != nil {
		h.c.add(cDiscarded)
		return nil, false
	}
	t := ipsec.TrafficOfParsed(&ip, true)
	h.mu.RLock()
	sad, spd, leases := h.sad, h.spd, h.leases
	h.mu.RUnlock()
	p, ok := spd.Lookup(&t)
	if !ok || p.Action == ipsec.Discard {
		h.c.add(cDiscarded)
		return nil, false
	}
	if p.Action == ipsec.Bypass {
		h.c.add(cBypassed)
		return pkt, false
	}
	if len(p.SAs) == 0 { // sa = server, not installed yet: never in the clear
		h.c.add(cAwaitingSA)
		return nil, false
	}
	// Apply the bundle innermost first; each SA seals what the one
	// before produced, in the same buffer.
	for _, id := range p.SAs {
		e, ok := sad.Get(id)
		if !ok || e.Write == nil || !reserved(leases[id], e.Write) {
			h.c.add(cSealErrors)
			return nil, false
		}
		out, err := e.Write.Seal(buf[:cap(buf)][:off+n], off, n)
		if err != nil {
			h.c.add(cSealErrors)
			return nil, false
		}
		off = cap(buf) - cap(out)
		n = len(out)
		pkt = out
	}
	h.c.add(cSealed)
	return pkt, true
}

// maxBundle bounds how many IPsec headers one packet may carry.
const maxBundle = 4

// inbound takes an IP packet from the network at buf[off:] (headroom
// before it): IKE and NAT keepalives are counted and left alone (IKE is
// not espep host's business); ESP and AH are opened — and what is inside,
// as long as that is IPsec again (an AH+ESP bundle) — and the result is
// returned, to be delivered into the TUN, if a PROTECT policy covers it:
// buf[start:end] (start > off; nothing to deliver: end == 0).
func (h *Host) inbound(buf []byte, off int) (start, end int) {
	h.c.add(cNetIn)
	h.mu.RLock()
	sad, spd, accepts := h.sad, h.spd, h.accepts
	h.mu.RUnlock()
	inner := buf[off:]
	var ip header.Parsed
	for depth := 0; ; depth++ {
		if header.Parse(inner, &ip) != nil {
			h.c.add(cNotOurs)
			return 0, 0
		}
		l, err := ipsec.LocateParsed(inner, &ip)
		switch {
		case err != nil:
			h.c.add(cNotOurs)
			return 0, 0
		case depth == 0 && l.Kind == ipsec.KindIKE:
			h.c.add(cIKE)
			return 0, 0
		case depth == 0 && l.Kind == ipsec.KindKeepalive:
			h.c.add(cKeepalives)
			return 0, 0
		case l.Kind != ipsec.KindESP && l.Kind != ipsec.KindAH && depth == 0:
			h.c.add(cNotOurs)
			return 0, 0
		}
		if l.Kind != ipsec.KindESP && l.Kind != ipsec.KindAH {
			break
		}
		if depth == maxBundle {
			h.c.add(cOpenErrors)
			return 0, 0
		}
		e, ok := sad.LookupLoc(&l)
		if !ok || e.Write == nil {
			h.c.add(cNotOurs)
			return 0, 0
		}
		if inner, err = e.Write.OpenAt(inner, l); err != nil {
			h.c.add(cOpenErrors)
			return 0, 0
		}
		if a := accepts[e.Config.ID()]; a != nil {
			a.Note(e.Write.InTop())
		}
	}
	// RFC 4301 §5.2: what came out must be traffic a PROTECT policy
	// covers; anything else is dropped, never delivered.
	t := ipsec.TrafficOfParsed(&ip, false)
	if p, ok := spd.Lookup(&t); !ok || p.Action != ipsec.Protect {
		h.c.add(cPolicyDrops)
		return 0, 0
	}
	h.c.add(cOpened)
	start = cap(buf) - cap(inner)
	return start, start + len(inner)
}
