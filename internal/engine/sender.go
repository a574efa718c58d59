package engine

import (
	"time"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// rateSample gathers, over one ACK, what delivery-rate estimation needs
// (draft-cheng-iccrg-delivery-rate-estimation): the snapshot taken when
// the most recently sent of the newly delivered segments went out.
type rateSample struct {
	ok          bool
	xmit        time.Time
	prior       uint64
	priorTime   time.Time
	sendElapsed time.Duration
	appLimited  bool
	rtt         time.Duration // from the newest never-resent segment (Karn)
	rttXmit     time.Time
}

// takeAck applies an ACK (cumulative, SACK, window) from the receiver of
// st to the engine's sender on st.
func (e *shard) takeAck(f *flow, st *stream, p *parsed, now time.Time) {
	sp := f.sp
	ack := seqnum.Value(p.tcp.Ack())
	if ack.LessThan(st.sndUna) {
		return // stale
	}
	seq := seqnum.Value(p.tcp.Seq())
	win := int(p.tcp.Window()) << sp.shift[st.from.other()]
	st.maxWnd = max(st.maxWnd, win)
	prevWnd := st.wnd
	if st.wl1.LessThan(seq) || (st.wl1 == seq && st.wl2.LessThanEq(ack)) {
		st.wnd, st.wl1, st.wl2 = win, seq, ack
	}
	if st.wnd > 0 {
		st.persistAt, st.persistBackoff = time.Time{}, 0
	}
	var rs rateSample
	delivered := 0
	advanced := st.sndUna.LessThan(ack)
	if advanced {
		n := 0
		for n < len(st.segs) && st.segs[n].end.LessThanEq(ack) {
			if s := &st.segs[n]; !s.sacked {
				delivered += e.deliver(st, s, now, &rs)
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
		st.backoff, st.dupacks = 0, 0
		st.ptoBase = now
		if !sp.sackOn && len(st.segs) > 0 && st.segs[0].sacked {
			// A partial ACK stops at a segment a duplicate was taken for:
			// that one is the next hole after all.
			s := &st.segs[0]
			s.sacked, s.lost = false, true
			st.nLost++
		}
		st.progress = now
		upTo := ack
		if st.finSent && st.finSeq.LessThan(upTo) {
			upTo = st.finSeq
		}
		if diff(st.rcvNxt, upTo) >= 0 && len(st.ooo) == 0 {
			// Nothing held: an idle flow keeps no chunk.
			st.buf.releaseAll(&e.pool)
			st.buf.start = upTo
		} else {
			st.buf.release(&e.pool, upTo)
		}
		if st.finSent && ack == st.finSeq.Add(1) {
			st.finAcked, st.ackNow = true, true // now the FIN may be acknowledged to its sender
		}
		// Tell a sender held back by the window that there is room again:
		// when the edge it may send to could move right by a quarter of the
		// most the window field can offer it (without window scaling that
		// is 64 kB, not the buffer: every receiver ACK would otherwise be
		// answered with a window update that moves nothing).
		if !st.finSeen {
			maxWin := min(e.cfg.BufferPerFlow, 0xffff<<f.sp.shift[st.from.other()])
			edge := st.sndUna.Add(seqnum.Size(e.cfg.BufferPerFlow))
			if c := st.ackValue().Add(seqnum.Size(maxWin)); c.LessThan(edge) {
				edge = c
			}
			if diff(st.rcvEdge, edge) >= maxWin/4 {
				st.ackNow = true
			}
		}
	} else if p.payload == 0 && !p.tcp.Has(header.TCPFin) && len(st.segs) > 0 && win <= prevWnd {
		// A duplicate: no data, no new ACK, and no larger window (a window
		// that grew is an update). Not RFC 5681's "same window", as in
		// Linux: a receiver may count out-of-order data against its
		// window (gVisor does), and then every duplicate shrinks it.
		st.dupacks++
		if !sp.sackOn {
			// Without SACK each duplicate says one segment above the hole
			// arrived (RFC 5681's window inflation; Linux counts it as a
			// SACK too): on a link that keeps order it is the next one
			// not yet counted. It leaves the pipe and counts as delivered,
			// so new data keeps flowing while the hole is repaired.
			for i := 1; i < len(st.segs); i++ {
				if s := &st.segs[i]; !s.sacked && !s.lost {
					delivered += e.deliver(st, s, now, nil) // a guess: no RTT or rate sample
					s.sacked = true
					break
				}
			}
		}
	}
	if sp.sackOn {
		if p.opts.NSACK > 0 {
			// A D-SACK (RFC 2883): the receiver got a segment twice, so a
			// resend was spurious — the path reorders more than the RACK
			// window allows; widen it (RFC 8985 §6.2 step 4).
			b0 := p.opts.SACK[0]
			if dsack := !st.sndUna.LessThan(seqnum.Value(b0.End)) || (p.opts.NSACK > 1 &&
				seqnum.Value(p.opts.SACK[1].Start).LessThanEq(seqnum.Value(b0.Start)) &&
				seqnum.Value(b0.End).LessThanEq(seqnum.Value(p.opts.SACK[1].End))); dsack {
				st.reoMult = min(st.reoMult+1, maxReoMult)
				st.dsacks++
				st.tlpDSACK = st.tlpDSACK || st.tlpOut
			}
		}
		for i := 0; i < p.opts.NSACK; i++ {
			start, end := seqnum.Value(p.opts.SACK[i].Start), seqnum.Value(p.opts.SACK[i].End)
			if !st.sndUna.LessThan(end) || st.sndNxt.LessThan(end) || !start.LessThan(end) {
				continue // D-SACK or bogus
			}
			for j := range st.segs {
				s := &st.segs[j]
				if end.LessThanEq(s.seq) {
					break
				}
				if !s.sacked && start.LessThanEq(s.seq) && s.end.LessThanEq(end) {
					delivered += e.deliver(st, s, now, &rs)
					s.sacked = true
				}
			}
		}
	}
	if rs.rtt > 0 {
		e.splitRTT(st, rs.rtt)
	}
	before := st.inflight
	lostSeq, lost := e.detectLoss(f, st, now)
	if !sp.sackOn && advanced && st.inRecovery && ack.LessThan(st.recover) && len(st.segs) > 0 {
		// NewReno (RFC 6582): a partial ACK points at the next hole.
		if s := &st.segs[0]; !s.lost && s.rexmits == 0 {
			st.markLost(s)
			lostSeq, lost = s.seq, true
		}
	}
	// The sample lives in the stream: passed to an interface, a local
	// would escape and cost an allocation per ACK.
	sample := &st.sample
	*sample = AckSample{Now: now, Acked: delivered, InFlight: st.inflight, MSS: st.smss, SRTT: st.srtt,
		MinRTT: st.minRTT, InRecovery: st.inRecovery}
	if lost && !st.inRecovery && st.recover.LessThanEq(lostSeq) {
		st.inRecovery, st.recover = true, st.sndNxt
		sample.InFlight, sample.InRecovery = before, true
		st.cc.OnLoss(sample)
		sample.InFlight = st.inflight
	}
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
	switch {
	case len(st.segs) == 0:
		st.rtoAt = time.Time{}
	case advanced || st.rtoAt.IsZero() || sp.sackOn && delivered > 0:
		// The timer restarts on a new cumulative ACK (RFC 6298 §5.3) and,
		// with SACK, on any ACK that reports bytes delivered: while the
		// receiver reports progress RACK finds what was lost, a lost
		// resend too (segments sent after it get SACKed), and the RTO
		// stays the last resort for when the ACKs stop. Restarted only on
		// a cumulative ACK, it raced RACK for the hole's resend, which
		// waits behind what the radio queue holds: 3–10 timeouts per 10 s
		// at 5 % loss, each presuming the whole flight lost.
		st.rtoAt = now.Add(st.rtoBackedOff(e))
	}
}

// deliver accounts a segment newly delivered (cumulatively or by SACK) and
// returns its length; with rs it also takes RTT, RACK and rate samples.
func (e *shard) deliver(st *stream, s *txSeg, now time.Time, rs *rateSample) int {
	n := s.len()
	if s.lost {
		s.lost = false
		st.nLost--
	} else {
		st.inflight -= n
	}
	st.delivered += uint64(n)
	st.delivTime = now
	if rs == nil {
		return n
	}
	rtt := now.Sub(s.xmit)
	if s.rexmits == 0 && !s.xmit.Before(rs.rttXmit) {
		rs.rtt, rs.rttXmit = rtt, s.xmit
	}
	// RACK: the most recently sent segment known delivered (a resent one
	// only if its ACK cannot be for the earlier copy).
	if s.rexmits > 0 && rtt < st.minRTT*3/4 {
		// Delivered sooner after the resend than the path can carry
		// it: the first copy arrived, late — reordering, not loss.
		st.reoMult = min(st.reoMult+1, maxReoMult)
		st.spurious++
	}
	if s.rexmits == 0 || rtt >= st.minRTT {
		if st.rackXmit.Before(s.xmit) || (st.rackXmit.Equal(s.xmit) && st.rackEnd.LessThan(s.end)) {
			st.rackXmit, st.rackEnd, st.rackRTT = s.xmit, s.end, rtt
		}
	}
	if !rs.ok || rs.xmit.Before(s.xmit) {
		rs.ok, rs.xmit = true, s.xmit
		rs.prior, rs.priorTime = s.delivered, s.delivTime
		rs.sendElapsed, rs.appLimited = s.xmit.Sub(s.firstSent), s.appLimited
		st.firstSent = s.xmit
	}
	return n
}

func (st *stream) markLost(s *txSeg) {
	s.lost = true
	st.inflight -= s.len()
	st.nLost++
}

// detectLoss marks the segments presumed lost: by RACK (RFC 8985 §6.2: a
// segment is lost when one sent after it was delivered and more than an
// RTT plus a reordering window has passed since it went out) on SACK flows,
// and by three duplicate ACKs (RFC 5681) on any flow. It sets the RACK
// timer for the segments not yet due, and returns the lowest lost sequence
// number.
func (e *shard) detectLoss(f *flow, st *stream, now time.Time) (seqnum.Value, bool) {
	var first seqnum.Value
	lost := false
	mark := func(s *txSeg) {
		st.markLost(s)
		if !lost || s.seq.LessThan(first) {
			first, lost = s.seq, true
		}
	}
	st.rackAt = time.Time{}
	if f.sp.sackOn && !st.rackXmit.IsZero() {
		reo := max(st.minRTT/4, time.Millisecond) * time.Duration(1+st.reoMult)
		if st.srtt > 0 {
			reo = min(reo, st.srtt)
		}
		for i := range st.segs {
			s := &st.segs[i]
			if s.sacked || s.lost {
				continue
			}
			if !s.xmit.Before(st.rackXmit) && (!s.xmit.Equal(st.rackXmit) || s.rexmits > 0 || st.rackEnd.LessThan(s.end)) {
				continue // not sent before the newest delivered one
			}
			due := s.xmit.Add(st.rackRTT + reo)
			if !now.Before(due) {
				mark(s)
			} else if st.rackAt.IsZero() || due.Before(st.rackAt) {
				st.rackAt = due
			}
		}
	}
	if st.dupacks >= 3 && len(st.segs) > 0 {
		// Three duplicates point at the first segment; on a flow
		// without SACK they still arriving more than an RTT after it was
		// resent mean the resend was lost too (RACK's rule, for the one
		// segment such a flow can see).
		s := &st.segs[0]
		if !s.sacked && !s.lost && (s.rexmits == 0 && st.dupacks == 3 ||
			!f.sp.sackOn && s.rexmits > 0 && st.srtt > 0 && now.Sub(s.xmit) > st.srtt+st.srtt/4) {
			mark(s)
		}
	}
	return first, lost
}

// splitRTT updates a stream's RTT estimate (RFC 6298 §2).
func (e *shard) splitRTT(st *stream, r time.Duration) {
	smoothRTT(&st.srtt, &st.rttvar, r)
	if st.minRTT == 0 || r < st.minRTT {
		st.minRTT = r
	}
	// The variance term is at least one SRTT: the engine's pacer can
	// double the radio queue within a round, and a spurious timeout
	// resends a whole window.
	st.rto = min(max(st.srtt+max(4*st.rttvar, st.srtt, rtoGranularity), e.cfg.MinRTO), e.cfg.MaxRTO)
}

// rtoGranularity is the clock granularity term G of RFC 6298.
const rtoGranularity = 10 * time.Millisecond

// maxReoMult bounds how far D-SACKs widen the RACK reordering window.
const maxReoMult = 8

// maxBackoff bounds the doublings of the RTO and the persist timer.
const maxBackoff = 6

func (st *stream) rtoBackedOff(e *shard) time.Duration {
	d := min(st.rto<<st.backoff, e.cfg.MaxRTO)
	if st.from == Wire {
		// Toward the radio the backoff stops at radioRetryGap (or the
		// RTO itself, if longer): the leg is the gateway's own, and a
		// fade ends unannounced — nothing comes back until the engine
		// sends again, so every doubling is time the radio sits idle
		// after it ends (a 750 ms fade left it idle for up to 650 ms).
		d = min(d, max(st.rto, radioRetryGap))
	}
	return d
}

// radioRetryGap bounds the backed-off RTO toward the radio: during a fade
// the engine tries again at least this often (a few segments each time).
const radioRetryGap = 250 * time.Millisecond

// send transmits what the stream may send now toward its receiver:
// presumed-lost segments first, then new data and the FIN — within the
// congestion window, the receiver's window and the pacing rate.
func (e *shard) send(f *flow, st *stream, now time.Time) {
	to := st.from.other()
	for {
		cwnd := st.cc.Window()
		if st.nLost > 0 {
			var s *txSeg
			for i := range st.segs {
				if st.segs[i].lost {
					s = &st.segs[i]
					break
				}
			}
			n := s.len()
			if st.inflight > 0 && st.inflight+n > cwnd || !e.pace(st, n, now) {
				return
			}
			s.lost = false
			st.nLost--
			s.rexmits++
			if s == &st.segs[0] {
				// Resending the oldest segment restarts the timer
				// for it (as Linux does), else the RTO of a repair in
				// progress would cut it short.
				st.rtoAt = now.Add(st.rtoBackedOff(e))
			}
			e.transmit(f, to, st, s, now)
			st.rexmits++
			e.st.SplitRexmits++
			continue
		}
		avail := max(diff(st.sndNxt, st.rcvNxt), 0)
		n := min(avail, st.smss)
		fin := st.finSeen && !st.finSent && st.sndNxt.Add(seqnum.Size(n)) == st.finSeq
		if n == 0 && !fin {
			if st.inflight < cwnd {
				st.appLimited = max(st.delivered+uint64(st.inflight), 1)
			}
			return
		}
		room := diff(st.sndNxt, st.sndUna.Add(seqnum.Size(st.wnd)))
		if room < n {
			// Wait for the receiver's window; avoid silly segments while
			// data is in flight (RFC 9293 §3.8.6.2.1) and probe a closed
			// window when nothing is (§3.8.6.1).
			if room <= 0 || len(st.segs) > 0 {
				if len(st.segs) == 0 && st.persistAt.IsZero() {
					st.persistAt = now.Add(min(st.rto<<st.persistBackoff, e.cfg.MaxRTO))
				}
				return
			}
			n, fin = room, false
		}
		if st.inflight > 0 && st.inflight+n+btoi(fin) > cwnd || !e.pace(st, n+btoi(fin), now) {
			return
		}
		e.sendNew(f, to, st, n, fin, now)
	}
}

// sendNew sends the next n bytes (and the FIN) as a new segment.
func (e *shard) sendNew(f *flow, to Side, st *stream, n int, fin bool, now time.Time) {
	end := st.sndNxt.Add(seqnum.Size(n + btoi(fin)))
	st.appendSeg(txSeg{seq: st.sndNxt, end: end, fin: fin})
	st.sndNxt = end
	if fin {
		st.finSent = true
	}
	e.transmit(f, to, st, &st.segs[len(st.segs)-1], now)
	st.ptoBase = now
}

// wcDelAck is the worst-case delayed ACK time a probe timeout allows for
// when only one segment is in flight (RFC 8985 §7.2).
const wcDelAck = 200 * time.Millisecond

// armTLP sets the probe timeout (RFC 8985 §7.2): two smoothed RTTs after
// new data last went out or a new cumulative ACK came, or the RTO if that
// is sooner — on a SACK flow with something in flight, not in
// recovery, not after an RTO (until a new cumulative ACK) and no probe
// already out.
func (st *stream) armTLP(sackOn bool) {
	st.tlpAt = time.Time{}
	if !sackOn || st.tlpOut || st.inRecovery || st.backoff > 0 || st.nLost > 0 || len(st.segs) == 0 || st.srtt == 0 || st.ptoBase.IsZero() {
		return
	}
	pto := 2 * st.srtt
	if len(st.segs) == 1 {
		pto += wcDelAck
	}
	// The probe comes first even when the RTO is due as soon (§7.2: PTO
	// = min(PTO, RTO)): toward the radio the RTO is often no more than
	// two SRTTs, and where the probe would do, a timeout presumes the
	// whole flight lost.
	st.tlpAt = st.ptoBase.Add(pto)
	if !st.rtoAt.IsZero() && st.rtoAt.Before(st.tlpAt) {
		st.tlpAt = st.rtoAt
	}
}

// probeTail sends a tail loss probe (RFC 8985 §7.3): a new segment if
// there is data the receiver's window takes, else the last segment again
// — outside the congestion window and the pacer, so that an ACK comes
// back and shows what of the tail was lost, and RACK repairs it instead of
// the RTO.
func (e *shard) probeTail(f *flow, st *stream, now time.Time) {
	st.tlpAt = time.Time{}
	if st.tlpOut || st.inRecovery || st.nLost > 0 || len(st.segs) == 0 {
		return // the RTO came first, or recovery began
	}
	to := st.from.other()
	avail := max(diff(st.sndNxt, st.rcvNxt), 0)
	n := min(avail, st.smss)
	fin := st.finSeen && !st.finSent && st.sndNxt.Add(seqnum.Size(n)) == st.finSeq
	if room := diff(st.sndNxt, st.sndUna.Add(seqnum.Size(st.wnd))); (n > 0 || fin) && room >= n {
		e.sendNew(f, to, st, n, fin, now)
		st.tlpRetrans = false
	} else {
		var s *txSeg
		for i := len(st.segs) - 1; i >= 0; i-- {
			if !st.segs[i].sacked && !st.segs[i].lost {
				s = &st.segs[i]
				break
			}
		}
		if s == nil {
			return
		}
		st.inflight -= s.len() // still in flight: transmit counts it again
		s.rexmits++
		e.transmit(f, to, st, s, now)
		st.rexmits++
		e.st.SplitRexmits++
		st.tlpRetrans = true
	}
	st.tlpOut, st.tlpEnd, st.tlpDSACK = true, st.sndNxt, false
	st.tlps++
	e.st.TailProbes++
	st.rtoAt = now.Add(st.rtoBackedOff(e))
}

// giveUp resets both ends of a flow whose receiver stopped answering,
// as each end's own TCP would in the end (RFC 9293 §3.8.3), and forgets
// it with what it held.
func (e *shard) giveUp(f *flow) {
	for _, to := range []Side{Wire, Radio} {
		e.emit(f, to, segment{seq: f.sp.st[to.other()].sndUna, flags: header.TCPRst})
	}
	e.st.GaveUp++
	e.drop(f)
}

// appendSeg adds a segment to the scoreboard. The scoreboard loses its
// head as ACKs come (a reslice, not a copy, or a high-BDP leg with
// thousands of segments in flight would move them all on every ACK); it
// moves down to the start of its array only when it reaches the end.
func (st *stream) appendSeg(s txSeg) {
	if len(st.segs) == cap(st.segs) && len(st.segs) < cap(st.segBuf) {
		st.segs = st.segBuf[:copy(st.segBuf[:cap(st.segBuf)], st.segs)]
	}
	st.segs = append(st.segs, s)
	if cap(st.segs) > cap(st.segBuf) { // grown into a new array
		st.segBuf = st.segs[:0]
	}
}

// transmit stamps a segment and sends it.
func (e *shard) transmit(f *flow, to Side, st *stream, s *txSeg, now time.Time) {
	if len(st.segs) == 1 && s == &st.segs[0] && s.rexmits == 0 {
		st.progress = now // the give-up clock starts with the first segment outstanding
	}
	if st.inflight == 0 {
		st.firstSent, st.delivTime = now, now
	}
	s.xmit = now
	s.delivered, s.delivTime, s.firstSent = st.delivered, st.delivTime, st.firstSent
	s.appLimited = st.appLimited != 0
	st.inflight += s.len()
	if st.rtoAt.IsZero() {
		st.rtoAt = now.Add(st.rtoBackedOff(e))
	}
	flags := uint8(0)
	n := s.len()
	if s.fin {
		flags |= header.TCPFin
		n--
	}
	if s.end-seqnum.Value(btoi(s.fin)) == st.rcvNxt {
		flags |= header.TCPPsh
	}
	e.emit(f, to, segment{seq: s.seq, flags: flags, data: st, n: n})
}

// pacingBurst is how much sending time the pacer lets accumulate.
const pacingBurst = 2 * time.Millisecond

// pace reports whether n bytes may go now under the stream's pacing rate;
// if not, it sets the time when they may.
func (e *shard) pace(st *stream, n int, now time.Time) bool {
	rate := st.cc.PacingRate()
	if rate == 0 {
		if st.srtt == 0 {
			return true
		}
		rate = 2 * float64(st.cc.Window()) / st.srtt.Seconds()
	}
	burst := max(float64(2*st.smss), rate*pacingBurst.Seconds())
	st.tokens = min(st.tokens+rate*now.Sub(st.tokAt).Seconds(), burst)
	st.tokAt = now
	if st.tokens < float64(n) {
		st.paceAt = now.Add(max(time.Duration((float64(n)-st.tokens)/rate*1e9), time.Microsecond))
		return false
	}
	st.tokens -= float64(n)
	st.paceAt = time.Time{}
	return true
}

// onRTO handles a retransmission timeout: everything in flight is presumed
// lost and resent as the window allows (RFC 6298 §5, RFC 6675 §5.1).
func (e *shard) onRTO(st *stream, now time.Time) {
	st.rtoAt = time.Time{}
	if len(st.segs) == 0 {
		return
	}
	inflight := st.inflight
	for i := range st.segs {
		if s := &st.segs[i]; !s.sacked && !s.lost {
			st.markLost(s)
		}
	}
	st.cc.OnRTO(inflight)
	st.inRecovery, st.recover = false, st.sndNxt
	st.tlpOut = false
	st.backoff = min(st.backoff+1, maxBackoff)
	st.rtoAt = now.Add(st.rtoBackedOff(e))
	st.timeouts++
	e.st.SplitTimeouts++
}

// probe sends a zero-window probe: an ACK one below the receiver's
// window, which makes it answer with its current window.
func (e *shard) probe(f *flow, st *stream, now time.Time) {
	st.persistAt = time.Time{}
	if st.wnd > 0 || len(st.segs) > 0 {
		st.persistBackoff = 0
		return
	}
	e.emit(f, st.from.other(), segment{seq: st.sndUna - 1})
	st.probes++
	e.st.Probes++
	st.persistBackoff = min(st.persistBackoff+1, maxBackoff)
	st.persistAt = now.Add(min(st.rto<<st.persistBackoff, e.cfg.MaxRTO))
}

// schedule arms the stream's timer for its earliest deadline. The timer
// is re-armed only when that deadline moves earlier; a timer that fires
// early finds nothing due and re-arms, so a busy flow allocates nothing.
func (e *shard) schedule(f *flow, st *stream, now time.Time) {
	st.armTLP(f.sp.sackOn && !e.cfg.NoTailProbes)
	var at time.Time
	for _, d := range [...]time.Time{st.rtoAt, st.rackAt, st.persistAt, st.paceAt, st.ackAt, st.tlpAt} {
		if !d.IsZero() && (at.IsZero() || d.Before(at)) {
			at = d
		}
	}
	if at.IsZero() || (!st.timerAt.IsZero() && !at.Before(st.timerAt)) {
		return
	}
	st.timerAt = at
	if st.timer == nil {
		from := st.from
		st.timer = e.cfg.Clock.AfterFunc(at.Sub(now), func() { e.splitTimer(f, from) })
		return
	}
	st.timer.Reset(at.Sub(now))
}

// splitTimer runs what is due on a stream.
func (e *shard) splitTimer(f *flow, from Side) {
	e.lock()
	defer e.unlock()
	if e.flows[f.key] != f || f.sp == nil {
		return
	}
	st := &f.sp.st[from]
	now := e.cfg.Clock.Now()
	st.timerAt = time.Time{}
	e.timerFires++
	due := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	if due(st.tlpAt) {
		e.probeTail(f, st, now) // restarts the RTO when it probes
	}
	if due(st.rtoAt) {
		if len(st.segs) > 0 && now.Sub(st.progress) > e.cfg.GiveUp {
			e.giveUp(f)
			return
		}
		e.onRTO(st, now)
	}
	if due(st.rackAt) {
		before := st.inflight
		if seq, lost := e.detectLoss(f, st, now); lost && !st.inRecovery && st.recover.LessThanEq(seq) {
			st.inRecovery, st.recover = true, st.sndNxt
			st.sample = AckSample{Now: now, InFlight: before, MSS: st.smss, SRTT: st.srtt, MinRTT: st.minRTT, InRecovery: true}
			st.cc.OnLoss(&st.sample)
		}
	}
	if due(st.persistAt) {
		e.probe(f, st, now)
	}
	if due(st.ackAt) {
		st.ackNow = true // the delayed ACK for what st's sender sent
	}
	st.paceAt = time.Time{}
	e.splitFlush(f, now)
}
