package simnet

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// IPsec is an End that does ESP or AH with ipsec.SAs, as a host (transport
// mode) or the router in front of it (tunnel mode) does: it seals on its
// current outbound SA — and, in a bundle, on an outer one around it — and
// opens with the inbound SA a packet names, optionally inside an IP-in-IP
// tunnel. It keeps what a test asks of a receiver: which sequence numbers
// each SA accepted, and every refusal that is a failure (Check). A packet
// refused as a replay is a failure only if the SA never accepted that
// sequence number: a copy of one it has (a snoop gateway resending the
// ciphertext it cached) is rightly refused.
type IPsec struct {
	// Tunnel, when both addresses are valid, carries sealed packets in an
	// IP-in-IP tunnel (RFC 2003) from Tunnel[0] to Tunnel[1], and wants
	// every arriving packet in one.
	Tunnel [2]netip.Addr
	// Sealed, when set, sees every packet this end seals (before IP-in-IP).
	Sealed func(pkt []byte)

	out      atomic.Pointer[ipsec.SA]
	outOuter *ipsec.SA

	mu       sync.Mutex
	in       map[uint32]*ipsec.SA // by SPI
	inOuter  *ipsec.SA
	deleted  map[uint32]bool
	accepted map[*ipsec.SA]map[uint32]bool
	counts   Counts
}

// Counts are the packets an IPsec end refused that no SA's own counters
// show.
type Counts struct {
	FreshRefused int // refused as replays (or too old) though never accepted
	NotInTunnel  int // arrived outside the IP-in-IP tunnel
	ToDeleted    int // arrived on an SA this end had deleted
	UnknownSPI   int // arrived on an SA this end never had
}

// NewIPsec makes an end that seals on out and opens with in.
func NewIPsec(out, in *ipsec.SA) *IPsec {
	e := &IPsec{in: map[uint32]*ipsec.SA{}, deleted: map[uint32]bool{}, accepted: map[*ipsec.SA]map[uint32]bool{}}
	e.out.Store(out)
	e.in[in.ID().SPI] = in
	return e
}

// Bundle adds an outer SA each way: sealed after the inner one, opened
// before it.
func (e *IPsec) Bundle(out, in *ipsec.SA) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.outOuter, e.inOuter = out, in
}

// Rekey does what IKE's CREATE_CHILD_SA does at an end: it opens with in
// from now on too, and seals on out; the old inbound SA stays until Delete.
func (e *IPsec) Rekey(out, in *ipsec.SA) {
	e.mu.Lock()
	e.in[in.ID().SPI] = in
	e.mu.Unlock()
	e.out.Store(out)
}

// Delete drops the inbound SA spi (IKE's DELETE): what still arrives on it
// is refused and counted.
func (e *IPsec) Delete(spi uint32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.deleted[spi] = true
}

// Inbound returns the inbound SAs, the outer one last.
func (e *IPsec) Inbound() []*ipsec.SA {
	e.mu.Lock()
	defer e.mu.Unlock()
	var sas []*ipsec.SA
	for _, sa := range e.in {
		sas = append(sas, sa)
	}
	if e.inOuter != nil {
		sas = append(sas, e.inOuter)
	}
	return sas
}

// Counts returns the refusals counted so far.
func (e *IPsec) Counts() Counts {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts
}

// Check reports every refusal that is a failure: packets with a bad ICV or
// malformed, refused as replays though never had, outside the tunnel, on an
// SA deleted or unknown.
func (e *IPsec) Check() error {
	var errs []error
	for _, sa := range e.Inbound() {
		if s := sa.Stats(); s.ICVFailures+s.OtherDrops != 0 {
			errs = append(errs, fmt.Errorf("SA %#x refused %d packets for their ICV, %d malformed", sa.ID().SPI, s.ICVFailures, s.OtherDrops))
		}
	}
	c := e.Counts()
	for _, k := range []struct {
		n    int
		what string
	}{
		{c.FreshRefused, "refused as replays that the receiver never had"},
		{c.NotInTunnel, "outside the IP-in-IP tunnel"},
		{c.ToDeleted, "on a deleted SA"},
		{c.UnknownSPI, "on an unknown SA"},
	} {
		if k.n != 0 {
			errs = append(errs, fmt.Errorf("%d packets %s", k.n, k.what))
		}
	}
	return errors.Join(errs...)
}

// Seal seals a host's packet (nil if the SA refuses, e.g. its sequence
// numbers ran out).
func (e *IPsec) Seal(pkt []byte) []byte {
	s := Seal(e.out.Load(), pkt)
	if s != nil && e.outOuter != nil {
		s = Seal(e.outOuter, s)
	}
	if s == nil {
		return nil
	}
	if e.Sealed != nil {
		e.Sealed(s)
	}
	return e.tunnelled(s)
}

// tunnelled puts pkt in the end's IP-in-IP tunnel, if it has one.
func (e *IPsec) tunnelled(pkt []byte) []byte {
	if !e.Tunnel[0].IsValid() || !e.Tunnel[1].IsValid() {
		return pkt
	}
	b := make([]byte, header.IPv4MinLen+len(pkt))
	header.WriteIPv4(b, 0, len(b), 7, true, 60, header.ProtoIPIP, e.Tunnel[0], e.Tunnel[1])
	copy(b[header.IPv4MinLen:], pkt)
	return b
}

// Seal seals pkt on sa into a buffer of its own (nil if the SA refuses).
func Seal(sa *ipsec.SA, pkt []byte) []byte {
	buf := make([]byte, ipsec.MaxHeadroom+len(pkt)+ipsec.MaxTailroom)
	copy(buf[ipsec.MaxHeadroom:], pkt)
	out, err := sa.Seal(buf, ipsec.MaxHeadroom, len(pkt))
	if err != nil {
		return nil
	}
	return out
}

// Open opens what arrives for the host; what it refuses it drops (and
// counts, or the SA does).
func (e *IPsec) Open(pkt []byte) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.Tunnel[0].IsValid() && e.Tunnel[1].IsValid() {
		h, err := header.ParseIPv4(pkt)
		if err != nil || h.Protocol() != header.ProtoIPIP || !h.ChecksumValid() {
			e.counts.NotInTunnel++
			return nil
		}
		pkt = h.Payload()
	}
	if e.inOuter != nil {
		if pkt = e.openOn(e.inOuter, pkt); pkt == nil {
			return nil
		}
	}
	l, err := ipsec.Locate(pkt)
	if err != nil {
		e.counts.UnknownSPI++
		return nil
	}
	if e.deleted[l.SPI] {
		e.counts.ToDeleted++
		return nil
	}
	sa := e.in[l.SPI]
	if sa == nil {
		e.counts.UnknownSPI++
		return nil
	}
	return e.openOn(sa, pkt)
}

// openOn opens pkt with sa and keeps the account of what sa accepted.
func (e *IPsec) openOn(sa *ipsec.SA, pkt []byte) []byte {
	l, _ := ipsec.Locate(pkt)
	inner, err := sa.Open(pkt) // a refusal is counted by the SA
	switch {
	case err == nil:
		if e.accepted[sa] == nil {
			e.accepted[sa] = map[uint32]bool{}
		}
		e.accepted[sa][l.Seq] = true
		return inner
	case (errors.Is(err, ipsec.ErrReplay) || errors.Is(err, ipsec.ErrTooOld)) && !e.accepted[sa][l.Seq]:
		e.counts.FreshRefused++
	}
	return nil
}
