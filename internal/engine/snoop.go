package engine

import (
	"encoding/binary"
	"time"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// downData handles a packet from the wire toward the radio: data is cached
// before it is forwarded.
func (e *shard) downData(f *flow, p *parsed, pkt []byte) {
	defer e.forward(Radio, pkt)
	if !f.established {
		return
	}
	if p.tcp.Has(header.TCPAck) {
		f.wireAck, f.wireAckValid = seqnum.Value(p.tcp.Ack()), true
	}
	if p.opts.HasTS && seqnum.Value(f.tsv[Wire]).LessThanEq(seqnum.Value(p.opts.TSVal)) {
		f.tsv[Wire] = p.opts.TSVal
	}
	n := p.payload
	if p.tcp.Has(header.TCPFin) {
		f.down.finned = true
		n++
	}
	if n == 0 {
		return
	}
	seq := seqnum.Value(p.tcp.Seq())
	end := seq.Add(seqnum.Size(n))
	if end.LessThanEq(f.lastAck) && f.ackValid {
		return // already acknowledged by the radio side
	}
	if f.sndMax.LessThan(end) {
		f.sndMax = end // forwarded, cached or not: ACKs up to here are for bytes sent
	}
	now := p.now
	// A resend from the sender replaces the cached copy (it may carry a
	// newer timestamp); it is not an RTT sample (Karn).
	i := f.cacheIndex(seq)
	if i < len(f.cache) && f.cache[i].seq == seq && f.cache[i].end == end {
		f.cache[i].rexmits++
		f.cache[i].sentAt = now
		return
	}
	// The bounds count the buffers really held, not the packet lengths: a
	// flood of tiny segments holds a whole pooled buffer each.
	held := max(len(pkt), pktBufCap)
	if f.cacheBytes+held > e.cfg.CachePerFlow || e.cacheMem+held > e.cfg.CacheTotal {
		e.st.CacheFull++
		return
	}
	b := e.bufs.get(len(pkt))
	copy(b, pkt)
	// Keep the cache ordered by sequence number (reordered sender data).
	f.appendSeg(seg{})
	copy(f.cache[i+1:], f.cache[i:])
	f.cache[i] = seg{seq: seq, end: end, sentAt: now, pkt: b, held: held}
	f.cacheBytes += held
	e.cacheMem += held
	e.st.Cached++
	e.arm(f)
}

// cacheIndex is the position of the first cached segment that does not
// start before seq (a binary search: the cache is ordered).
func (f *flow) cacheIndex(seq seqnum.Value) int {
	lo, hi := 0, len(f.cache)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if f.cache[m].seq.LessThan(seq) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// upAck handles a packet from the radio toward the wire. It reports
// whether the packet should be forwarded.
func (e *shard) upAck(f *flow, p *parsed, pkt []byte) bool {
	if p.tcp.Has(header.TCPFin) {
		f.up.finned = true
	}
	if !f.established || !p.tcp.Has(header.TCPAck) {
		e.forward(Wire, pkt)
		return true
	}
	ack := seqnum.Value(p.tcp.Ack())
	win := p.tcp.Window()
	switch {
	case f.sndMax.LessThan(ack):
		// An ACK for bytes nobody sent: the sender judges it (RFC 9293
		// §3.10.7.4 has it answered and dropped); the cache and the
		// repair state take nothing from it.
		e.st.AckIgnored++
	case !f.ackValid || f.lastAck.LessThan(ack):
		// With SACK a hole at the new ACK shows as blocks above it; without,
		// every partial ACK in a repair points at one (NewReno).
		e.newAck(f, ack, sackAbove(&p.opts, ack) || !(f.down.sackOK && f.up.sackOK), p.now)
		f.lastWindow = win
	// A duplicate ACK: same cumulative ACK, no data, and either a SACK
	// block above the ACK (the receiver holds out-of-order data, whatever
	// its window says) or, without SACK, a window no larger than before:
	// a pure window update (the window grew) is not a duplicate, but a
	// receiver that counts out-of-order data against its window (gVisor)
	// shrinks it with every duplicate — Linux counts those, and so does
	// the engine.
	case ack == f.lastAck && p.payload == 0 && !p.tcp.Has(header.TCPFin) && len(f.cache) > 0 &&
		(sackAbove(&p.opts, ack) || win <= f.lastWindow):
		if e.dupAck(f) && e.swallow(f) {
			e.st.SuppressedDupAcks++
			f.suppressed++
			return true // answered locally: swallowed
		}
		e.st.ForwardedDupAcks++
	case ack == f.lastAck && p.payload == 0:
		f.lastWindow = win // a window update
	}
	e.forward(Wire, pkt)
	return true
}

// swallow applies the duplicate-ACK policy to a flow.
func (e *shard) swallow(f *flow) bool {
	switch e.cfg.DupAcks {
	case DupAcksForward:
		return false
	case DupAcksSwallow:
		return true
	}
	return !(f.down.sackOK && f.up.sackOK)
}

// sackAbove reports whether a SACK block reaches beyond ack.
func sackAbove(o *header.TCPOptions, ack seqnum.Value) bool {
	for i := 0; i < o.NSACK; i++ {
		if ack.LessThan(seqnum.Value(o.SACK[i].End)) {
			return true
		}
	}
	return false
}

// newAck cleans the cache up to ack and takes an RTT sample, the ACK
// having arrived at now. hole says whether the ACK shows the segment at
// ack missing at the receiver.
func (e *shard) newAck(f *flow, ack seqnum.Value, hole bool, now time.Time) {
	f.lastAck, f.ackValid = ack, true
	f.dupacks, f.expectDup = 0, 0
	n := 0
	for n < len(f.cache) && f.cache[n].end.LessThanEq(ack) {
		if f.cache[n].rexmits == 0 && !f.cache[n].imported {
			e.rttSample(f, now.Sub(f.cache[n].sentAt))
		}
		f.cacheBytes -= f.cache[n].held
		e.cacheMem -= f.cache[n].held
		n++
	}
	if n > 0 {
		for i := range f.cache[:n] {
			e.bufs.put(f.cache[i].pkt)
		}
		clear(f.cache[:n])
		f.cache = f.cache[n:]
		f.timerArmed = false // restart the timer for what is left
	}
	if f.inRecovery {
		if f.recover.LessThanEq(ack) {
			f.inRecovery = false
		} else if s := e.cached(f, ack); hole && s != nil && s.rexmits < e.cfg.MaxLocalRexmits && now.Sub(s.sentAt) > f.srtt {
			// Partial ACK: the next segment was lost too — if the receiver
			// shows a hole there (on a SACK flow an ACK without blocks
			// above it is only progress through what the radio queue held;
			// resending on those made 641 local resends for ~30 losses in a
			// 4 MB strongSwan transfer at 1 %, 50 now), and unless it was
			// sent less than an RTT ago and may still be in the radio queue.
			e.resend(f, s)
			e.st.LocalRexmits++
			f.localRexmits++
		}
	}
	e.arm(f)
}

// startRecovery marks a local repair that runs until everything forwarded
// so far is acknowledged.
func (f *flow) startRecovery() {
	f.inRecovery = true
	f.recover = f.sndMax
}

// dupAck handles a duplicate ACK from the radio side and reports whether
// the engine has answered it (resent the missing segment now, or it is one
// of the duplicates the segments behind the hole cause); classic snoop
// swallows what it has answered.
func (e *shard) dupAck(f *flow) bool {
	f.dupacks++
	s := e.cached(f, f.lastAck)
	if s == nil {
		return false // not ours to repair
	}
	if f.dupacks == 1 && s.rexmits < e.cfg.MaxLocalRexmits {
		e.resend(f, s)
		e.st.LocalRexmits++
		f.localRexmits++
		f.startRecovery()
		// The segments in flight behind the lost one will each make
		// another duplicate ACK; those are answered too.
		f.expectDup = 0
		for i := range f.cache {
			if s.end.LessThanEq(f.cache[i].seq) {
				f.expectDup++
			}
		}
		return true
	}
	return f.dupacks <= f.expectDup+1
}

// cached returns the cached segment that starts at seq.
func (e *shard) cached(f *flow, seq seqnum.Value) *seg {
	if i := f.cacheIndex(seq); i < len(f.cache) && f.cache[i].seq == seq {
		return &f.cache[i]
	}
	return nil
}

func (e *shard) resend(f *flow, s *seg) {
	s.rexmits++
	s.sentAt = e.cfg.Clock.Now()
	if e.cfg.SnoopOriginal || f.opaque || !f.down.ts || !f.up.ts {
		e.resendCached(f, s.pkt)
		return
	}
	// The cached copy carries the timestamp of its first transmission; the
	// receiver has since seen newer ones and PAWS (RFC 7323 §5) would drop
	// it (Linux counts it as PAWSEstab). Resend it with the sender's
	// latest TSval.
	b := append(e.scratch[:0], s.pkt...)
	if !refreshTSval(b, f.tsv[Wire]) {
		e.resendCached(f, s.pkt)
		return
	}
	e.st.TSRefreshed++
	e.built(Radio, b, f.key.wire, f.key.radio, false)
}

// refreshTSval sets the TSval of the TCP segment in pkt (an IP packet the
// engine parsed before) to v and adjusts the checksum for the change
// alone (RFC 1624), so that a cached segment whose checksum did not hold —
// corrupted on its way in — is not resent as one that does; it reports
// whether the segment had a timestamp option.
func refreshTSval(pkt []byte, v uint32) bool {
	p, ok := parse(pkt)
	if !ok || !p.opts.HasTS {
		return false
	}
	t := p.tcp
	o := t.Options()
	for i := 0; i < len(o); {
		switch o[i] {
		case header.TCPOptEnd:
			return false
		case header.TCPOptNop:
			i++
			continue
		}
		if i+1 >= len(o) || o[i+1] < 2 {
			return false
		}
		if o[i] == header.TCPOptTimestamp && o[i+1] == 10 && i+10 <= len(o) {
			at := header.TCPMinLen + i + 2 // the TSval, in the segment
			lo, hi := at&^1, (at+5)&^1     // the 16-bit words it touches
			var old [6]byte
			n := copy(old[:], t[lo:hi])
			binary.BigEndian.PutUint32(t[at:], v)
			t.SetChecksum(header.ChecksumUpdate(t.Checksum(), old[:n], t[lo:hi]))
			return true
		}
		i += int(o[i+1])
	}
	return false
}

// smoothRTT folds an RTT sample into a smoothed RTT and its variation
// (RFC 6298 §2: α = 1/8, β = 1/4).
func smoothRTT(srtt, rttvar *time.Duration, r time.Duration) {
	if *srtt == 0 {
		*srtt, *rttvar = r, r/2
		return
	}
	d := *srtt - r
	if d < 0 {
		d = -d
	}
	*rttvar = (3*(*rttvar) + d) / 4
	*srtt = (7*(*srtt) + r) / 8
}

// rttSample updates the radio-leg RTT estimate (RFC 6298 §2).
func (e *shard) rttSample(f *flow, r time.Duration) {
	smoothRTT(&f.srtt, &f.rttvar, r)
	f.rto = min(max(f.srtt+4*f.rttvar, e.cfg.MinRTO), e.cfg.MaxRTO)
}

// arm starts the local retransmission timer if segments are cached.
func (e *shard) arm(f *flow) {
	if f.timerArmed || len(f.cache) == 0 {
		return
	}
	f.timerArmed = true
	rto := f.rto
	if r := f.cache[0].rexmits; r > 0 {
		rto = min(rto<<min(r, 6), e.cfg.MaxRTO) // back off
	}
	f.timerAt = e.cfg.Clock.Now().Add(rto)
	if f.stimer == nil {
		f.stimer = e.cfg.Clock.AfterFunc(rto, func() { e.timeout(f) })
		return
	}
	f.stimer.Reset(rto) // one timer per flow: no allocation per ACK
}

// appendSeg adds a slot at the end of the cache, which loses its head by
// reslicing as ACKs come and moves down to the start of its array only
// when it reaches the end (no allocation in steady state).
func (f *flow) appendSeg(s seg) {
	if len(f.cache) == cap(f.cache) && len(f.cache) < cap(f.cacheBuf) {
		f.cache = f.cacheBuf[:copy(f.cacheBuf[:cap(f.cacheBuf)], f.cache)]
	}
	f.cache = append(f.cache, s)
	if cap(f.cache) > cap(f.cacheBuf) {
		f.cacheBuf = f.cache[:0]
	}
}

// timeout resends the oldest cached segment if it has waited a local RTO.
func (e *shard) timeout(f *flow) {
	e.lock()
	defer e.unlock()
	if e.flows[f.key] != f || !f.timerArmed || e.cfg.Clock.Now().Before(f.timerAt) {
		return // gone, disarmed, or a fire the timer's Reset superseded
	}
	f.timerArmed = false
	if len(f.cache) == 0 {
		return
	}
	// Everything sent before the timer started is presumed lost (an
	// outage or a burst): resend it, oldest first, up to a burst bound
	// the radio queue can take (go-back-N, as TCP after an RTO).
	deadline := e.cfg.Clock.Now().Add(-f.rto / 2)
	sent := 0
	for i := range f.cache {
		s := &f.cache[i]
		if sent == timeoutBurst || (i > 0 && s.sentAt.After(deadline)) {
			break
		}
		if s.rexmits < e.cfg.MaxLocalRexmits {
			e.resend(f, s)
			e.st.TimeoutRexmits++
			f.timeoutRexmits++
			sent++
		}
	}
	if sent > 0 {
		f.startRecovery()
	}
	e.arm(f)
}

// timeoutBurst bounds the segments resent at once on a local timeout.
const timeoutBurst = 16
