package ipsec

import (
	"crypto/subtle"
	"fmt"

	"github.com/espep/espep/ipsec/header"
)

// AH (RFC 4302): the ICV covers the IP header with its mutable fields
// zeroed (§3.3.3.1), the AH header with a zero ICV field, the payload, and
// with ESN the high 32 sequence bits appended (§3.3.3.2.2... A.2).

// zeroICV stands in for the ICV field while the ICV is computed; a field
// longer than it is fed in pieces.
var zeroICV [64]byte

// ahLen returns the AH header length: 12 + ICV, padded to 32
// bits over IPv4 and 64 bits over IPv6 (RFC 4302 §2.6).

func ahLen(i Integ, v6 bool) int {
	n := header.AHFixedLen + i.icvLen()
	a := 4
	if v6 {
		a = 8
	}
	return (n + a - 1) / a * a
}

// checkAHLen refuses an AH header length n that is not the header with
// integ's ICV padded to 32 or 64 bits (RFC 4302 §2.2, §2.6).
func checkAHLen(integ Integ, n int) error {
	if n != ahLen(integ, false) && n != ahLen(integ, true) {
		return fmt.Errorf("ah length %d, want %d or %d for a %d-byte icv: %w", n,
			ahLen(integ, false), ahLen(integ, true), integ.icvLen(), ErrMalformed)
	}
	return nil
}

func (sa *SA) sealAH(buf []byte, off int, pkt []byte, pl plainLayout, seq uint64, fr *Frame) ([]byte, error) {
	mac := sa.out.mac
	if mac == nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, ErrHardExpired)
	}
	n := ahLen(sa.cfg.Integ, fr.outerV6(pl))
	outer := fr.outerLen(pl)
	p0 := off + pl.hlen
	start := p0 - n - outer
	end := off + len(pkt)
	if start < 0 {
		return nil, fmt.Errorf("sa %v: seal needs %d headroom: %w", sa.id, off-start, ErrNoRoom)
	}
	if sa.cfg.PMTU > 0 && end-start > sa.cfg.PMTU {
		return nil, &TooBigError{MTU: sa.cfg.PMTU - (end - start - len(pkt))}
	}
	if err := sa.checkLife(sa.out.bytes, len(pkt)-pl.hlen); err != nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, err)
	}
	s, err := sa.nextSeq(seq)
	if err != nil {
		return nil, err
	}
	tos, df := innerTOS(pkt)
	if pl.hlen > 0 {
		copy(buf[start:start+pl.hlen], pkt[:pl.hlen])
	}
	out := buf[start:end]
	header.WriteAH(out[outer:], pl.next, n, sa.cfg.SPI, uint32(s))
	sa.finishOuter(out, fr, pl, header.ProtoAH, tos, df)
	icv, err := ahICV(sa.out.mac, sa.out.aadBuf[:], out, outer, n, uint32(s>>32), sa.cfg.ESN)
	if err != nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, err)
	}
	copy(out[outer+header.AHFixedLen:], icv)
	sa.out.packets++
	sa.out.bytes += uint64(len(pkt) - pl.hlen)
	return out, nil
}

func (sa *SA) openAH(pkt []byte, l *Loc) ([]byte, error) {
	a := header.AH(pkt[l.Off:])
	n, icvLen := a.Len(), sa.cfg.Integ.icvLen()
	// RFC 4302 §2.2 and §2.6: the length is the header with this SA's ICV,
	// padded to 32 bits (IPv4) or 64 bits (IPv6). Anything else is refused
	// before any work is done on it, as Linux's ah_input does: the length
	// comes from a packet nobody has verified yet.
	if err := checkAHLen(sa.cfg.Integ, n); err != nil {
		sa.otherDrops.Add(1)
		return nil, fmt.Errorf("sa %v: %w", sa.id, err)
	}
	sa.in.Lock()
	if sa.in.mac == nil {
		sa.in.Unlock()
		return nil, fmt.Errorf("sa %v: %w", sa.id, ErrHardExpired)
	}
	seq, err := sa.replayCheck(l.Seq)
	if err == nil {
		err = sa.checkLife(sa.in.bytes, 0)
	}
	if err == nil {
		tries := uint64(1)
		if sa.esnSearching() { // RFC 4303 Appendix A3, as in openESNSearch
			tries = esnSearch
		}
		lo := seq & 0xffffffff
		for hi := seq >> 32; ; hi++ {
			var icv []byte
			icv, err = ahICV(sa.in.mac, sa.in.aadBuf[:], pkt, l.Off, n, uint32(hi), sa.cfg.ESN)
			if err == nil && subtle.ConstantTimeCompare(icv, a[header.AHFixedLen:header.AHFixedLen+icvLen]) != 1 {
				err = ErrICV
			}
			if err != ErrICV || hi+1 >= tries {
				if err == nil {
					seq = hi<<32 | lo
				}
				break
			}
		}
		if err == ErrICV {
			sa.in.icvFail++
		}
	}
	if err != nil {
		sa.in.Unlock()
		return nil, fmt.Errorf("sa %v: seq %d: %w", sa.id, seq, err)
	}
	sa.replayAccept(seq)
	payload := pkt[l.Off+n:]
	sa.in.packets++
	sa.in.bytes += uint64(len(payload))
	sa.in.Unlock()
	inner, err := sa.decap(pkt, l, payload, a.NextHeader())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUndeliverable, err)
	}
	return inner, nil
}

// ahICV computes the AH ICV of pkt, whose AH header of n bytes is at off.
// The IP header and extension headers before it are copied to scratch so
// that their mutable fields can be zeroed without touching the packet.
func ahICV(mac *hmacAuth, scratch []byte, pkt []byte, off, n int, seqHi uint32, esn bool) ([]byte, error) {
	if off > len(scratch) {
		return nil, fmt.Errorf("ah: %d bytes of ip headers: %w", off, ErrUnsupported)
	}
	m := scratch[:off]
	copy(m, pkt[:off])
	if err := zeroMutable(m); err != nil {
		return nil, err
	}
	mac.begin()
	mac.write(m)
	mac.write(pkt[off : off+header.AHFixedLen])
	for z := n - header.AHFixedLen; z > 0; z -= len(zeroICV) {
		mac.write(zeroICV[:min(z, len(zeroICV))])
	}
	mac.write(pkt[off+n:])
	return mac.finish(seqHi, esn), nil
}

// zeroMutable zeroes the fields of an IP header (and IPv6 extension
// headers) that may change in transit, as RFC 4302 §3.3.3.1 requires
// before computing the ICV.
func zeroMutable(m []byte) error {
	if m[0]>>4 == 4 {
		m[1] = 0            // TOS
		m[6], m[7] = 0, 0   // flags, fragment offset
		m[8] = 0            // TTL
		m[10], m[11] = 0, 0 // checksum
		return zeroIPv4Options(m[header.IPv4MinLen:])
	}
	m[0] &= 0xf0 // traffic class and flow label
	m[1], m[2], m[3] = 0, 0, 0
	m[7] = 0 // hop limit
	next, off := m[6], header.IPv6Len
	for off < len(m) {
		n, err := header.ExtLen(m, off, next)
		if err != nil {
			return err
		}
		switch next {
		case header.ProtoHopByHop, header.ProtoDestOpts:
			if err := zeroIPv6Options(m[off+2 : off+n]); err != nil {
				return err
			}
		case header.ProtoRouting:
			// Mutable but predictable (RFC 4302 Appendix A.2): not done here.
			return fmt.Errorf("ah with a routing header: %w", ErrUnsupported)
		default:
			return fmt.Errorf("ah after extension header %d: %w", next, ErrUnsupported)
		}
		next, off = m[off], off+n
	}
	return nil
}

// zeroIPv4Options zeroes every option RFC 4302 Appendix A.1 does not list
// as immutable.
func zeroIPv4Options(o []byte) error {
	for i := 0; i < len(o); {
		t := o[i]
		switch t {
		case 0: // end of list
			return nil
		case 1: // no-op
			i++
			continue
		}
		if i+1 >= len(o) || o[i+1] < 2 || i+int(o[i+1]) > len(o) {
			return fmt.Errorf("ipv4 option %d: %w", t, header.ErrMalformed)
		}
		l := int(o[i+1])
		switch t {
		case 130, 133, 134, 148, 149: // security, ext. security, commercial security, router alert, SDMDD
		default:
			clear(o[i : i+l])
		}
		i += l
	}
	return nil
}

// zeroIPv6Options zeroes the data of options whose type has the
// "may change en route" bit (RFC 8200 §4.2).
func zeroIPv6Options(o []byte) error {
	for i := 0; i < len(o); {
		if o[i] == 0 { // Pad1
			i++
			continue
		}
		if i+1 >= len(o) || i+2+int(o[i+1]) > len(o) {
			return fmt.Errorf("ipv6 option %d: %w", o[i], header.ErrMalformed)
		}
		l := int(o[i+1])
		if o[i]&0x20 != 0 {
			clear(o[i+2 : i+2+l])
		}
		i += 2 + l
	}
	return nil
}
