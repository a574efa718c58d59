package ipsec

import (
	"fmt"
	"time"

	"github.com/espep/espep/ipsec/header"
)

// Seal protects the IP packet buf[off:off+n] with the SA's next outbound
// sequence number and IV source, in place, and returns the sealed packet,
// which lies within buf[:cap(buf)]. buf needs Headroom() bytes before off
// and Tailroom() bytes of capacity after off+n.
func (sa *SA) Seal(buf []byte, off, n int) ([]byte, error) {
	return sa.SealWith(buf, off, n, 0, nil)
}

// SealWith is Seal with a chosen sequence number (seq > 0; the SA's counter
// moves up to it if it is ahead) and IV source (nil: the SA's). A gateway
// that re-sequences or keeps its IVs disjoint from an endpoint's uses it.
func (sa *SA) SealWith(buf []byte, off, n int, seq uint64, iv IVSource) ([]byte, error) {
	return sa.SealFramed(buf, off, n, seq, iv, nil)
}

// SealFramed is SealWith in the outer form fr (nil: the SA's own), made
// by NewFrame.
func (sa *SA) SealFramed(buf []byte, off, n int, seq uint64, iv IVSource, fr *Frame) ([]byte, error) {
	sa.out.Lock()
	defer sa.out.Unlock()
	return sa.sealLocked(buf, off, n, seq, iv, fr)
}

// A Packet is one entry of a batch: the packet is Buf[Off:Off+N] with
// headroom and tailroom as for Seal; Out and Err are the result.
type Packet struct {
	Buf    []byte
	Off, N int
	Out    []byte
	Err    error
}

// SealBatch seals every packet as Seal would, taking the SA's outbound lock
// once, so that the batch gets consecutive sequence numbers. It returns how
// many packets were sealed; the others carry their error.
func (sa *SA) SealBatch(pkts []Packet) int {
	sa.out.Lock()
	defer sa.out.Unlock()
	ok := 0
	for i := range pkts {
		p := &pkts[i]
		p.Out, p.Err = sa.sealLocked(p.Buf, p.Off, p.N, 0, nil, nil)
		if p.Err == nil {
			ok++
		}
	}
	return ok
}

// sealLocked seals one packet; the caller holds the outbound lock.
func (sa *SA) sealLocked(buf []byte, off, n int, seq uint64, iv IVSource, fr *Frame) ([]byte, error) {
	if off < 0 || n < 0 || off+n > len(buf) {
		return nil, fmt.Errorf("sa %v: seal: packet [%d:%d] outside buffer of %d: %w", sa.id, off, off+n, len(buf), ErrNoRoom)
	}
	if fr == nil {
		fr = &sa.frame
	}
	pkt := buf[off : off+n]
	pl, err := sa.layoutFor(pkt, fr)
	if err != nil {
		return nil, fmt.Errorf("sa %v: seal: %w", sa.id, err)
	}
	if sa.cfg.Proto == AH {
		return sa.sealAH(buf, off, pkt, pl, seq, fr)
	}
	return sa.sealESP(buf, off, pkt, pl, seq, iv, fr)
}

// nextSeq picks the packet's sequence number; called with out locked.
func (sa *SA) nextSeq(seq uint64) (uint64, error) {
	if seq == 0 {
		seq = sa.out.seq + 1
	}
	if seq > sa.maxSeq() || seq == 0 {
		return 0, fmt.Errorf("sa %v: %w", sa.id, ErrSeqOverflow)
	}
	if seq > sa.out.seq {
		sa.out.seq = seq
	}
	return seq, nil
}

// Headroom returns the bytes Seal needs in front of a packet.
func (sa *SA) Headroom() int { return MaxHeadroom }

// Tailroom returns the bytes Seal needs after a packet.
func (sa *SA) Tailroom() int { return MaxTailroom }

// MaxOverhead returns the most bytes sealing adds to a packet (the
// padding depends on the length of the protected part). Path MTU
// arithmetic uses it: an inner packet of PMTU - MaxOverhead always fits.
func (sa *SA) MaxOverhead() int {
	outer := 0
	if sa.cfg.Mode == Tunnel {
		outer = header.IPv4MinLen
		if sa.cfg.Dst.Is6() {
			outer = header.IPv6Len
		}
	}
	if sa.cfg.Proto == AH {
		return outer + ahLen(sa.cfg.Integ, sa.cfg.Dst.Is6())
	}
	c := sa.out.c
	if c == nil {
		return 0
	}
	udp := 0
	if sa.cfg.UDPEncap() {
		udp = header.UDPLen
	}
	return outer + udp + header.ESPLen + c.ivLen() + c.align() - 1 + 2 + c.icvLen()
}

func (sa *SA) sealESP(buf []byte, off int, pkt []byte, pl plainLayout, seq uint64, ivs IVSource, fr *Frame) ([]byte, error) {
	c := sa.out.c
	if c == nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, ErrHardExpired)
	}
	ivLen, a, icv := sa.lens.iv, sa.lens.align, sa.lens.icv
	payload := pkt[pl.hlen:]
	plen := len(payload)
	padded := (plen + 2 + a - 1) / a * a
	if padded-plen-2 > 255 {
		return nil, fmt.Errorf("sa %v: padding: %w", sa.id, ErrUnsupported)
	}
	udp := 0
	if fr.udp() {
		udp = header.UDPLen
	}
	outer := fr.outerLen(pl)
	p0 := off + pl.hlen              // payload start, stays in place
	e0 := p0 - header.ESPLen - ivLen // ESP header
	start := e0 - udp - outer        // sealed packet
	end := p0 + padded + icv         // sealed packet end
	if start < 0 || end > cap(buf) {
		return nil, fmt.Errorf("sa %v: seal needs %d headroom and %d tailroom: %w", sa.id, off-start, end-off-len(pkt), ErrNoRoom)
	}
	if sa.cfg.PMTU > 0 && end-start > sa.cfg.PMTU {
		return nil, &TooBigError{MTU: sa.cfg.PMTU - (end - start - len(pkt))}
	}
	if err := sa.checkLife(sa.out.bytes, plen); err != nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, err)
	}
	s, err := sa.nextSeq(seq)
	if err != nil {
		return nil, err
	}
	tos, df := innerTOS(pkt)
	buf = buf[:end]
	// Trailer (RFC 4303 §2.4): padding 1, 2, 3, …, pad length, next header.
	t := buf[p0+plen : p0+padded]
	padLen := len(t) - 2
	for i := 0; i < padLen; i++ {
		t[i] = byte(i + 1)
	}
	t[padLen], t[padLen+1] = byte(padLen), pl.next
	// Transport mode: move the IP header in front of the new headers
	// before the ESP header overwrites the bytes in between.
	if pl.hlen > 0 {
		copy(buf[start:start+pl.hlen], pkt[:pl.hlen])
	}
	e := buf[e0:end]
	header.WriteESP(e, sa.cfg.SPI, uint32(s))
	if ivs == nil {
		ivs = sa.out.ivSrc
	}
	if ivLen > 0 {
		if err := ivs.NextIV(e[header.ESPLen:header.ESPLen+ivLen], s); err != nil {
			return nil, fmt.Errorf("sa %v: iv: %w", sa.id, err)
		}
	}
	c.seal(e, header.ESPLen+ivLen+padded, uint32(s>>32), sa.cfg.ESN)
	out := buf[start:end]
	proto := uint8(header.ProtoESP)
	if udp > 0 {
		proto = header.ProtoUDP
		u := out[outer:]
		header.WriteUDP(u, fr.sport, fr.dport, len(u))
	}
	sa.finishOuter(out, fr, pl, proto, tos, df)
	if udp > 0 && fr.outerV6(pl) {
		// RFC 8200 §8.1: UDP over IPv6 carries a real checksum.
		h := header.IPv6(out)
		header.UDP(out[outer:]).UpdateChecksum(h.SrcBytes(), h.DstBytes())
	}
	sa.out.packets++
	sa.out.bytes += uint64(plen)
	return out, nil
}

// Open verifies, checks against the replay window, and decrypts the IPsec
// packet pkt in place, and returns the packet inside: the inner IP packet in
// tunnel mode, or the IP header restored around the upper layer in
// transport mode. The result lies within pkt. Nothing of the packet is
// used, and the window does not move, unless the ICV is good.
func (sa *SA) Open(pkt []byte) ([]byte, error) {
	var l Loc
	if err := locate(pkt, &l); err != nil {
		sa.otherDrops.Add(1)
		return nil, fmt.Errorf("sa %v: open: %w", sa.id, err)
	}
	return sa.openAt(pkt, &l)
}

// OpenAt is Open for a packet that Locate already parsed.
func (sa *SA) OpenAt(pkt []byte, l Loc) ([]byte, error) { return sa.openAt(pkt, &l) }

// openAt is OpenAt with the location by pointer: the Loc is not copied
// down the stages (Open's per-packet cost is a few such copies).
func (sa *SA) openAt(pkt []byte, l *Loc) ([]byte, error) {
	// RFC 4301 §4.4.2: an SA is (SPI, destination, protocol); a packet
	// for another destination is not this SA's, whatever its SPI.
	if (l.Kind != KindESP && l.Kind != KindAH) || Proto(l.Kind.proto()) != sa.cfg.Proto || l.SPI != sa.cfg.SPI ||
		(sa.cfg.Dst.IsValid() && l.Dst != sa.cfg.Dst) {
		sa.otherDrops.Add(1)
		return nil, fmt.Errorf("sa %v: %v spi=%#08x dst=%v: %w", sa.id, l.Kind, l.SPI, l.Dst, ErrWrongSA)
	}
	pkt = pkt[:l.Len]
	if l.Kind == KindAH {
		return sa.openAH(pkt, l)
	}
	return sa.openESP(pkt, l)
}

func (k Kind) proto() uint8 {
	if k == KindAH {
		return header.ProtoAH
	}
	return header.ProtoESP
}

func (sa *SA) openESP(pkt []byte, l *Loc) ([]byte, error) {
	sa.in.Lock()
	c := sa.in.c
	if c == nil {
		sa.in.Unlock()
		return nil, fmt.Errorf("sa %v: %w", sa.id, ErrHardExpired)
	}
	e := pkt[l.Off:]
	ivLen, icv := sa.lens.iv, sa.lens.icv
	ct := len(e) - header.ESPLen - ivLen - icv
	if ct < 2 || ct%sa.lens.align != 0 {
		sa.in.Unlock()
		sa.otherDrops.Add(1)
		return nil, fmt.Errorf("sa %v: esp ciphertext of %d bytes: %w", sa.id, ct, ErrMalformed)
	}
	seq, err := sa.replayCheck(l.Seq)
	if err == nil {
		err = sa.checkLife(sa.in.bytes, 0)
	}
	if err == nil {
		if sa.esnSearching() {
			seq, err = sa.openESNSearch(c, e, seq)
		} else if err = c.open(e, uint32(seq>>32), sa.cfg.ESN); err != nil {
			sa.in.icvFail++
		}
	}
	if err != nil {
		sa.in.Unlock()
		return nil, fmt.Errorf("sa %v: seq %d: %w", sa.id, seq, err)
	}
	// Verified: the packet counts and moves the window even if what it
	// carries turns out unusable (RFC 4303 §3.4.3).
	sa.replayAccept(seq)
	body := e[header.ESPLen+ivLen : len(e)-icv]
	sa.in.packets++
	sa.in.bytes += uint64(len(body))
	sa.in.Unlock()
	payload, next, err := espTrailer(sa.id, body)
	if err != nil {
		sa.otherDrops.Add(1)
		return nil, fmt.Errorf("%w: %w", ErrUndeliverable, err)
	}
	inner, err := sa.decap(pkt, l, payload, next)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUndeliverable, err)
	}
	return inner, nil
}

// ESN without a window (RFC 4303 Appendix A3). A receiver that has
// accepted nothing on an ESN SA does not know the high 32 bits of the
// sender's counter: a gateway that meets the SA after the sender passed
// 2^32 packets would infer 0 and fail every ICV. Until its first packet
// verifies, an ESN SA tries the high halves 0 … esnSearch−1 in turn — at
// most once per esnSearchGap, so that packets nobody can verify cost at
// most esnSearch ICV checks per gap and SA. The search finds any SA that
// has carried fewer than esnSearch·2^32 packets.
const (
	esnSearch    = 64
	esnSearchGap = 20 * time.Millisecond
)

// esnSearching reports whether the next ESP packet may search the high
// halves; called with in locked.
func (sa *SA) esnSearching() bool {
	if !sa.cfg.ESN || sa.in.win.top != 0 {
		return false
	}
	now := sa.clock()
	if !sa.in.searched.IsZero() && now.Sub(sa.in.searched) < esnSearchGap {
		return false
	}
	sa.in.searched = now
	return true
}

// openESNSearch opens e trying each high half in turn (seq's low half is
// the packet's); it returns the full sequence number that verified. A
// failed open may have clobbered e (Go's AES-GCM clears its output), so
// each try starts from a copy. Called with in locked.
func (sa *SA) openESNSearch(c espCipher, e []byte, seq uint64) (uint64, error) {
	if cap(sa.in.search) < len(e) {
		sa.in.search = make([]byte, len(e), max(len(e), 2048))
	}
	saved := sa.in.search[:len(e)]
	copy(saved, e)
	lo := seq & 0xffffffff
	for hi := uint64(0); hi < esnSearch; hi++ {
		if hi > 0 {
			copy(e, saved)
		}
		if c.open(e, uint32(hi), true) == nil {
			return hi<<32 | lo, nil
		}
	}
	copy(e, saved)
	sa.in.icvFail++
	return seq, ErrICV
}

// decap turns a verified, decrypted payload into the packet to deliver.
func (sa *SA) decap(pkt []byte, l *Loc, payload []byte, next uint8) ([]byte, error) {
	if next == header.ProtoNoNext {
		return nil, fmt.Errorf("sa %v: %w", sa.id, ErrDummy)
	}
	if sa.cfg.tunnelFor(next) {
		return trimInner(payload)
	}
	// Transport: slide the IP header up against the payload.
	hl := l.HeaderLen()
	p0 := payloadOffset(pkt, payload)
	copy(pkt[p0-hl:p0], pkt[:hl])
	out := pkt[p0-hl : p0+len(payload)]
	restoreTransport(out, l.NHOff, next)
	return out, nil
}

// payloadOffset returns the offset of sub within pkt (sub is a sub-slice).
func payloadOffset(pkt, sub []byte) int {
	return cap(pkt) - cap(sub)
}

// replayCheck infers the full sequence number and checks it against the
// window; called with in locked.
func (sa *SA) replayCheck(lo uint32) (uint64, error) {
	w := sa.in.win
	seq := w.Infer(lo, sa.cfg.ESN)
	if sa.in.noReplay {
		return seq, nil
	}
	if err := w.Check(seq); err != nil {
		sa.in.replay++
		return seq, err
	}
	return seq, nil
}

func (sa *SA) replayAccept(seq uint64) {
	sa.in.win.Accept(seq)
}
