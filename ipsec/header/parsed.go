package header

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Parsed is an IP packet's headers read once — the version, the
// addresses, the upper-layer protocol and where it starts, whether the
// packet is a fragment, and the ports — so that every later stage takes
// them from here instead of reading the bytes again (as Tailscale's
// packet.Parsed and gVisor's PacketBuffer do). It holds offsets into the
// packet it was made from, not the bytes.
//
//	IPv4 (RFC 791) or IPv6 (RFC 8200) header   ← 0
//	[IPv6 extension headers]
//	upper-layer header: TCP, UDP, ESP, AH, …  ← L4 (Proto; named at NHOff)
//	…                                          ← Len
type Parsed struct {
	Version  uint8 // 4 or 6
	Len      int   // the packet's length per its header (≤ len(pkt))
	Src, Dst netip.Addr
	// Proto is the upper-layer protocol, after any IPv6 extension
	// headers; for an IPv6 fragment (a Fragment header with an offset or
	// more to come) it is ProtoFragment and L4 is that header.
	Proto uint8
	NHOff int // offset of the byte that names Proto
	L4    int // offset of the upper-layer header
	// Fragment: not a whole upper-layer packet (IPv4 MF or offset; an IPv6
	// Fragment header). A first IPv4 fragment still has its ports.
	Fragment bool
	// HasPorts: SrcPort and DstPort were read — TCP, UDP or SCTP with
	// four bytes of header, or ICMP (type << 8 | code in SrcPort).
	HasPorts         bool
	SrcPort, DstPort uint16
}

// Parse reads pkt's IP headers into p; it allocates nothing. An error
// means the IP header itself is malformed or truncated; what is above it
// is only read as far as there is of it.
func Parse(pkt []byte, p *Parsed) error {
	*p = Parsed{}
	if len(pkt) == 0 {
		return fmt.Errorf("empty packet: %w", ErrTruncated)
	}
	first := true // the upper-layer header is in this packet
	switch pkt[0] >> 4 {
	case 4:
		h, err := ParseIPv4(pkt)
		if err != nil {
			return err
		}
		p.Version, p.Len, p.NHOff, p.L4 = 4, len(h), 9, h.HeaderLen()
		p.Src, p.Dst, p.Proto = h.Src(), h.Dst(), h.Protocol()
		p.Fragment = h.IsFragment()
		first = h.FlagsFrag()&0x1fff == 0
	case 6:
		h, err := ParseIPv6(pkt)
		if err != nil {
			return err
		}
		p.Version, p.Len = 6, len(h)
		p.Src, p.Dst = h.Src(), h.Dst()
		if p.Proto, p.L4, p.NHOff, err = h.UpperLayer(); err != nil {
			return err
		}
		p.Fragment = p.Proto == ProtoFragment
		first = !p.Fragment
	default:
		return fmt.Errorf("ip version %d: %w", pkt[0]>>4, ErrMalformed)
	}
	if !first {
		return nil
	}
	l4 := pkt[p.L4:p.Len]
	switch p.Proto {
	case ProtoTCP, ProtoUDP, 132: // 132: SCTP
		if len(l4) >= 4 {
			p.HasPorts = true
			p.SrcPort, p.DstPort = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		}
	case ProtoICMP, ProtoICMPv6:
		if len(l4) >= 2 {
			p.HasPorts = true
			p.SrcPort = binary.BigEndian.Uint16(l4)
		}
	}
	return nil
}

// Upper returns the upper-layer part of pkt, the packet p was made from.
func (p *Parsed) Upper(pkt []byte) []byte { return pkt[p.L4:p.Len] }

// IsTCP reports whether the packet is a whole TCP segment's.
func (p *Parsed) IsTCP() bool { return p.Proto == ProtoTCP && !p.Fragment }

// SrcAddrPort and DstAddrPort are the endpoints (ports zero where none
// were read).
func (p *Parsed) SrcAddrPort() netip.AddrPort { return netip.AddrPortFrom(p.Src, p.SrcPort) }
func (p *Parsed) DstAddrPort() netip.AddrPort { return netip.AddrPortFrom(p.Dst, p.DstPort) }
