package gateway

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec/header"
)

// Encapsulation: IP-in-IP (RFC 2003, RFC 2473; a Mobile IP home agent's
// tunnel) around the packets of a flow. The gateway works on what the
// tunnel carries, and what it sends in a flow's direction goes in the
// tunnel the flow's verified packets last came in (flows.go learns it),
// with a fresh IPv4 identification. The IPsec encapsulations (ESP, AH,
// UDP) are the ipsec package's, in the frame each SA states or its
// verified packets show (open.go).

// ipipHdr is the outer header of an IP-in-IP tunnel, as a verified
// packet's showed it.
type ipipHdr struct {
	b  []byte
	v6 bool
	id atomic.Uint32 // the last IPv4 identification used (low 16 bits); flows of several shards may share a tunnel
}

// peelIPIP returns what an IP-in-IP packet (IPv4 or IPv6 in IPv4 or IPv6,
// RFC 2003/2473, no extension headers, not a fragment) carries and its
// outer header (not copied: pkt's).
func peelIPIP(pkt []byte, p *header.Parsed) (inner, outer []byte, ok bool) {
	if p.Fragment || p.Proto != header.ProtoIPIP && p.Proto != header.ProtoIPv6 || p.Version == 6 && p.L4 != header.IPv6Len {
		return nil, nil, false
	}
	return p.Upper(pkt), pkt[:p.L4], true
}

// tunnelOf keeps a copy of an IP-in-IP outer header for a flow, reusing
// old's when the header is the same.
func tunnelOf(outer []byte, old *ipipHdr) *ipipHdr {
	if outer == nil {
		return nil
	}
	if old != nil && sameTunnel(old.b, outer) {
		return old
	}
	h := &ipipHdr{b: append([]byte(nil), outer...), v6: outer[0]>>4 == 6}
	if !h.v6 {
		h.id.Store(uint32(header.IPv4(outer).ID()))
	}
	return h
}

// sameTunnel compares two outer headers by their addresses.
func sameTunnel(a, b []byte) bool {
	if len(a) != len(b) || len(a) < header.IPv4MinLen {
		return false
	}
	if a[0]>>4 == 6 {
		return string(a[8:40]) == string(b[8:40])
	}
	return string(a[12:20]) == string(b[12:20])
}

// send puts a packet the gateway made (sealed, or the engine's own plain
// one) in the IP-in-IP tunnel its flow came in, if any, and sends it.
func (g *Gateway) send(to engine.Side, pkt []byte, h *ipipHdr, ps *perShard, s sums) {
	if h == nil {
		g.sendOut(to, pkt, s)
		return
	}
	if s == sumsPartial {
		// A device would find the checksum to complete inside the
		// tunnel's packet; completed here, it never has to.
		header.CompleteTCPIn(pkt)
		s = sumsHold
	}
	n := len(h.b) + len(pkt)
	if n > len(ps.wrap) {
		ps.ctr.add(cSealErrors)
		return
	}
	b := ps.wrap[:n]
	copy(b, h.b)
	copy(b[len(h.b):], pkt)
	if h.v6 {
		binary.BigEndian.PutUint16(b[4:], uint16(len(pkt)))
	} else {
		ip := header.IPv4(b)
		ip.SetTotalLen(n)
		ip.SetID(uint16(h.id.Add(1)))
		ip.UpdateChecksum()
	}
	g.sendOut(to, b, s)
}

// sums says what stands in the checksums of a packet the gateway sends,
// which chooses its way out (sendOut).
type sums uint8

const (
	sumsAsCame  sums = iota // the endpoint's, unverified
	sumsHold                // whole and holding: the gateway made them, or the link it came on vouched for them
	sumsPartial             // the engine built the segment and left its TCP checksum partial (engine.Config.PartialChecksums)
)

// holdIf is sumsHold if the link vouched for a packet's checksums
// (checked), else sumsAsCame.
func holdIf(checked bool) sums {
	if checked {
		return sumsHold
	}
	return sumsAsCame
}

// sendOut hands pkt to the link: through outPartial, if the link gave
// one, when its TCP checksum is left partial (the link's device
// completes it), else completed here; through outKnown, if the link gave
// one, when its checksums hold (s), so that the link need not sum it
// again before coalescing it.
func (g *Gateway) sendOut(to engine.Side, pkt []byte, s sums) {
	if s == sumsPartial {
		if g.outPartial != nil {
			g.outPartial(to, pkt)
			return
		}
		header.CompleteTCPIn(pkt)
		s = sumsHold
	}
	if s == sumsHold && g.outKnown != nil {
		g.outKnown(to, pkt)
		return
	}
	g.out(to, pkt)
}
