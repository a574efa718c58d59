package engine

import (
	"time"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// ACK processing: what an ACK from a stream's receiver tells the engine's
// sender on that stream — the window it offers, the bytes it delivered
// (cumulatively, by SACK, or, without SACK, guessed from a duplicate), the
// losses that shows — and what the sender then tells its controller and
// its retransmission timer.

// takeAck applies an ACK (cumulative, SACK, window) from the receiver of
// st to the engine's sender on st.
func (e *shard) takeAck(f *flow, st *stream, p *parsed, now time.Time) {
	ack := seqnum.Value(p.tcp.Ack())
	if ack.LessThan(st.sndUna) {
		return // stale
	}
	jumped := st.sndNxt.LessThan(ack)
	if jumped {
		// The receiver has bytes this engine never sent (a moved flow,
		// or originals relayed: ackAcceptable); they count as sent.
		st.sndNxt = ack
	}
	win, prevWnd := st.takeWindow(f.sp, p, ack)
	var rs rateSample
	delivered := 0
	advanced := st.sndUna.LessThan(ack)
	switch {
	case advanced:
		delivered += e.cumAck(f, st, ack, now, &rs)
		if jumped {
			// What the engine sent below ack the receiver may have had
			// before (the copy it got another way): the ACK says
			// nothing of when this one arrived, and an RTT sample from
			// it would be the time since the engine last sent (µs), a
			// minimum RTT that shrinks BBR's window for good (as
			// importQuarantine says).
			rs = rateSample{}
		}
	case p.payload == 0 && !p.tcp.Has(header.TCPFin) && len(st.segs) > 0 && win <= prevWnd:
		// A duplicate: no data, no new ACK, and no larger window (a window
		// that grew is an update). Not RFC 5681's "same window", as in
		// Linux: a receiver may count out-of-order data against its
		// window (gVisor does), and then every duplicate shrinks it.
		delivered += e.duplicate(f, st, now)
	}
	if f.sp.sackOn {
		delivered += e.takeSACK(st, &p.opts, now, &rs)
		if f.kind == kindVerified {
			st.notePeer(&p.opts)
		}
	}
	if rs.rtt > 0 {
		e.splitRTT(st, rs.rtt)
	}
	before := st.inflight
	lostSeq, lost := e.detectLoss(f, st, now)
	if !f.sp.sackOn && advanced && st.inRecovery && ack.LessThan(st.recover) && len(st.segs) > 0 {
		// NewReno (RFC 6582): a partial ACK points at the next hole.
		if s := &st.segs[0]; !s.lost && s.rexmits == 0 {
			st.markLost(s)
		}
	}
	if lost {
		st.enterRecovery(lostSeq, before, now)
	}
	e.tellController(st, ack, delivered, &rs, now)
	st.restartRTO(e, f.sp.sackOn, advanced, delivered, now)
}

// takeWindow takes the window the ACK offers (RFC 9293 §3.10.7.4: only
// from a segment newer than the one that last set it) and returns it,
// scaled, with the window before.
func (st *stream) takeWindow(sp *splitFlow, p *parsed, ack seqnum.Value) (win, prev int) {
	seq := seqnum.Value(p.tcp.Seq())
	win = int(p.tcp.Window()) << sp.shift[st.from.other()]
	st.maxWnd = max(st.maxWnd, win)
	prev = st.wnd
	if st.wl1.LessThan(seq) || (st.wl1 == seq && st.wl2.LessThanEq(ack)) {
		st.wnd, st.wl1, st.wl2 = win, seq, ack
	}
	if st.wnd > 0 {
		st.persistAt, st.persistBackoff = time.Time{}, 0
	}
	return win, prev
}

// cumAck takes a cumulative ACK that moves sndUna to ack: the segments it
// covers leave the scoreboard, the buffer gives back what they held, and
// the sender's clocks restart. It returns the bytes newly delivered.
func (e *shard) cumAck(f *flow, st *stream, ack seqnum.Value, now time.Time, rs *rateSample) int {
	delivered := 0
	n := 0
	for n < len(st.segs) && st.segs[n].end.LessThanEq(ack) {
		if s := &st.segs[n]; !s.sacked {
			delivered += e.deliver(st, s, now, rs)
		}
		n++
	}
	st.segs = st.segs[n:]                                 // appendSeg compacts when it must
	if len(st.segs) > 0 && st.segs[0].seq.LessThan(ack) { // partly acknowledged
		s := &st.segs[0]
		cut := int(s.seq.Size(ack))
		if !s.sacked {
			delivered += cut
			if !s.lost {
				st.inflight -= cut
			}
		}
		s.seq = ack
	}
	st.sndUna = ack
	e.journalAcked(f, st)
	st.aheadOn = st.aheadOn && ack.LessThan(st.ahead)
	st.backoff, st.dupacks = 0, 0
	st.ptoBase = now
	if !f.sp.sackOn && len(st.segs) > 0 && st.segs[0].sacked {
		// A partial ACK stops at a segment a duplicate was taken for:
		// that one is the next hole after all.
		s := &st.segs[0]
		s.sacked, s.lost = false, true
		st.nLost++
	}
	st.progress = now
	e.releaseAcked(st, ack)
	if st.finSent && ack == st.finSeq.Add(1) {
		st.finAcked, st.ackNow = true, true // now the FIN may be acknowledged to its sender
	}
	if !st.finSeen && st.windowOpened(e.cfg.BufferPerFlow, f.sp.shift[st.from.other()]) {
		st.ackNow = true
	}
	return delivered
}

// releaseAcked gives back the buffer of the bytes the receiver has.
func (e *shard) releaseAcked(st *stream, ack seqnum.Value) {
	upTo := ack
	if st.finSent && st.finSeq.LessThan(upTo) {
		upTo = st.finSeq
	}
	if diff(st.rcvNxt, upTo) >= 0 && len(st.ooo) == 0 {
		// Nothing held: an idle flow keeps no chunk.
		st.buf.releaseAll(&e.pool)
		st.buf.start = upTo
		return
	}
	st.buf.release(&e.pool, upTo)
}

// windowOpened reports whether the sender held back by the window should
// hear that there is room again: when the edge it may send to could move
// right by a quarter of the most the window field can offer it (without
// window scaling that is 64 kB, not the buffer: every receiver ACK would
// otherwise be answered with a window update that moves nothing).
func (st *stream) windowOpened(buffer int, shift uint8) bool {
	maxWin := min(buffer, 0xffff<<shift)
	edge := st.sndUna.Add(seqnum.Size(buffer))
	if c := st.ackValue().Add(seqnum.Size(maxWin)); c.LessThan(edge) {
		edge = c
	}
	return diff(st.rcvEdge, edge) >= maxWin/4
}

// duplicate counts a duplicate ACK. Without SACK each duplicate says one
// segment above the hole arrived (RFC 5681's window inflation; Linux
// counts it as a SACK too): on a link that keeps order it is the next one
// not yet counted. It leaves the pipe and counts as delivered, so new
// data keeps flowing while the hole is repaired. It returns the bytes so
// guessed delivered.
func (e *shard) duplicate(f *flow, st *stream, now time.Time) int {
	st.dupacks++
	if f.sp.sackOn {
		return 0
	}
	for i := 1; i < len(st.segs); i++ {
		if s := &st.segs[i]; !s.sacked && !s.lost {
			s.sacked = true
			return e.deliver(st, s, now, nil) // a guess: no RTT or rate sample
		}
	}
	return 0
}

// tellController gives the controller what the ACK delivered (with the
// delivery-rate sample), closes a tail loss probe's episode and a
// recovery the ACK completed.
func (e *shard) tellController(st *stream, ack seqnum.Value, delivered int, rs *rateSample, now time.Time) {
	// The sample lives in the stream: passed to an interface, a local
	// would escape and cost an allocation per ACK.
	sample := &st.sample
	*sample = AckSample{Now: now, Acked: delivered, InFlight: st.inflight, MSS: st.smss, SRTT: st.srtt,
		MinRTT: st.minRTT, InRecovery: st.inRecovery}
	if st.tlpOut && st.tlpEnd.LessThanEq(ack) {
		// The probe's episode is over (RFC 8985 §7.4.2). A resent probe
		// acknowledged with no D-SACK repaired a loss: the controller
		// hears of it, as it would have of a fast retransmit.
		st.tlpOut = false
		if st.tlpRetrans && !st.tlpDSACK && !st.inRecovery {
			sample.InRecovery = true
			st.cc.OnLoss(sample)
			sample.InRecovery = false
		}
	}
	if st.inRecovery && st.recover.LessThanEq(st.sndUna) {
		st.inRecovery = false
	}
	if rs.ok {
		if iv := max(rs.sendElapsed, now.Sub(rs.priorTime)); iv > 0 && iv >= st.minRTT/2 {
			sample.Rate = float64(st.delivered-rs.prior) / iv.Seconds()
		}
		sample.AppLimited = rs.appLimited
		if rs.prior >= st.nextRound {
			sample.RoundStart = true
			st.nextRound = st.delivered
		}
	}
	if st.appLimited != 0 && st.delivered > st.appLimited {
		st.appLimited = 0
	}
	if delivered > 0 {
		st.cc.OnAck(sample)
	}
}
