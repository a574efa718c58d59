package ipsec

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/espep/espep/ipsec/header"
)

// AddrRange is an inclusive range of addresses (RFC 4301 §4.4.1.1 allows
// ranges, not only prefixes). The zero value matches any address.
type AddrRange struct{ From, To netip.Addr }

// Any reports whether r matches every address.
func (r AddrRange) Any() bool { return !r.From.IsValid() }

// Contains reports whether a lies in r.
func (r AddrRange) Contains(a netip.Addr) bool {
	if r.Any() {
		return true
	}
	return a.Is4() == r.From.Is4() && r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

func (r AddrRange) String() string {
	switch {
	case r.Any():
		return "any"
	case r.From == r.To:
		return r.From.String()
	}
	return r.From.String() + "-" + r.To.String()
}

// ParseAddrRange parses "any", an address, a prefix "10.0.0.0/8", or a
// range "10.0.0.1-10.0.0.9".
func ParseAddrRange(s string) (AddrRange, error) {
	if s == "any" || s == "" {
		return AddrRange{}, nil
	}
	if from, to, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(from)
		b, err2 := netip.ParseAddr(to)
		if err1 != nil || err2 != nil || a.Is4() != b.Is4() || b.Less(a) {
			return AddrRange{}, fmt.Errorf("address range %q: want FROM-TO of one family, FROM ≤ TO", s)
		}
		return AddrRange{a, b}, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return AddrRange{}, fmt.Errorf("address range %q: %w", s, err)
		}
		p = p.Masked()
		return AddrRange{p.Addr(), lastAddr(p)}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return AddrRange{}, fmt.Errorf("address range %q: %w", s, err)
	}
	return AddrRange{a, a}, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// PortRange is an inclusive port range; the zero value matches any port.
type PortRange struct{ From, To uint16 }

func (r PortRange) Any() bool { return r.From == 0 && r.To == 0 }

func (r PortRange) Contains(p uint16) bool { return r.Any() || (r.From <= p && p <= r.To) }

func (r PortRange) String() string {
	switch {
	case r.Any():
		return "any"
	case r.From == r.To:
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// ParsePortRange parses "any", "80" or "1024-65535".
func ParsePortRange(s string) (PortRange, error) {
	if s == "any" || s == "" {
		return PortRange{}, nil
	}
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		to = from
	}
	a, err1 := strconv.ParseUint(from, 10, 16)
	b, err2 := strconv.ParseUint(to, 10, 16)
	if err1 != nil || err2 != nil || b < a {
		return PortRange{}, fmt.Errorf("port range %q: want PORT or FROM-TO", s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

// Selector is an RFC 4301 §4.4.1.1 traffic selector, with the user ID and
// data sensitivity level the seed's SPD adds. Zero fields match anything.
type Selector struct {
	Local, Remote AddrRange
	// Proto is the next-layer protocol; ProtoAny matches all.
	Proto       int
	LocalPorts  PortRange // for ICMP: type<<8 | code
	RemotePorts PortRange
	UserID      string // "" matches any
	Sensitivity int    // 0 matches any; otherwise the packet's level must be equal
}

// ProtoAny as Selector.Proto matches every next-layer protocol.
const ProtoAny = -1

// Traffic is what a packet presents to the SPD.
type Traffic struct {
	Local, Remote         netip.Addr
	Proto                 uint8
	LocalPort, RemotePort uint16
	UserID                string
	Sensitivity           int
}

// Match reports whether t falls under s.
func (s *Selector) Match(t *Traffic) bool {
	return s.Local.Contains(t.Local) && s.Remote.Contains(t.Remote) &&
		(s.Proto == ProtoAny || s.Proto == int(t.Proto)) &&
		s.LocalPorts.Contains(t.LocalPort) && s.RemotePorts.Contains(t.RemotePort) &&
		(s.UserID == "" || s.UserID == t.UserID) &&
		(s.Sensitivity == 0 || s.Sensitivity == t.Sensitivity)
}

func (s Selector) String() string {
	p := "any"
	if s.Proto != ProtoAny {
		p = strconv.Itoa(s.Proto)
	}
	return fmt.Sprintf("%v[%v] -> %v[%v] proto %s", s.Local, s.LocalPorts, s.Remote, s.RemotePorts, p)
}

// TrafficOf extracts the selector fields of an IP packet. outbound says
// whether the source is local (a packet being sent) or remote.
func TrafficOf(pkt []byte, outbound bool) (Traffic, error) {
	var p header.Parsed
	if err := header.Parse(pkt, &p); err != nil {
		return Traffic{}, err
	}
	return TrafficOfParsed(&p, outbound), nil
}

// TrafficOfParsed is TrafficOf for a packet whose headers p holds.
func TrafficOfParsed(p *header.Parsed, outbound bool) Traffic {
	t := Traffic{Proto: p.Proto}
	if outbound {
		t.Local, t.Remote, t.LocalPort, t.RemotePort = p.Src, p.Dst, p.SrcPort, p.DstPort
	} else {
		t.Local, t.Remote, t.LocalPort, t.RemotePort = p.Dst, p.Src, p.DstPort, p.SrcPort
	}
	return t
}

// Admits reports whether inner — what opening a packet on the SA gave —
// is traffic the SA may carry (RFC 4301 §5.2: once a packet is opened, its
// selectors are checked against the SA's; one that does not match is
// dropped, so that a peer cannot use its own SA to send in another's
// name). In transport mode the packet's addresses are the SA's own where
// the SA names them; where the SA has traffic selectors (TS), the
// packet's addresses, protocol and ports lie in them. The user ID and
// sensitivity level are not carried by packets and are not checked. A
// tunnel-mode SA without selectors admits any inner packet.
func (c *Config) Admits(inner []byte, tunnel bool) bool {
	var p header.Parsed
	if header.Parse(inner, &p) != nil {
		return false
	}
	return c.AdmitsParsed(&p, tunnel)
}

// AdmitsParsed is Admits for an inner packet whose headers p holds.
func (c *Config) AdmitsParsed(p *header.Parsed, tunnel bool) bool {
	t := TrafficOfParsed(p, true)
	if !tunnel && (c.Src.IsValid() && t.Local != c.Src || c.Dst.IsValid() && t.Remote != c.Dst) {
		return false
	}
	s := c.TS
	if s == (Selector{}) {
		return true // made in code without selectors: the SA's addresses decide
	}
	return s.Local.Contains(t.Local) && s.Remote.Contains(t.Remote) &&
		(s.Proto == ProtoAny || s.Proto == int(t.Proto)) &&
		s.LocalPorts.Contains(t.LocalPort) && s.RemotePorts.Contains(t.RemotePort)
}
