package engine

import (
	"time"

	"github.com/espep/espep/internal/seqnum"
)

// Loss detection: RACK (RFC 8985 §6) on SACK flows, three duplicate ACKs
// (RFC 5681) and NewReno partial ACKs (RFC 6582) on any; the recovery
// episodes they open; and tail loss probes (RFC 8985 §7).

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

// enterRecovery opens a recovery episode if the loss at lost (the lowest
// sequence number just presumed lost) is not part of the one under way
// (RFC 6675 §5: once per window), and tells the controller, with the
// bytes that were in flight before the losses were marked. It reports
// whether it did.
func (st *stream) enterRecovery(lost seqnum.Value, inflightBefore int, now time.Time) bool {
	if st.inRecovery || !st.recover.LessThanEq(lost) {
		return false
	}
	st.inRecovery, st.recover = true, st.sndNxt
	st.sample = AckSample{Now: now, InFlight: inflightBefore, MSS: st.smss, SRTT: st.srtt, MinRTT: st.minRTT, InRecovery: true}
	st.cc.OnLoss(&st.sample)
	return true
}

// wcDelAck is the worst-case delayed ACK time a probe timeout allows for
// when only one segment is in flight (RFC 8985 §7.2).
const wcDelAck = 200 * time.Millisecond

// ptoSlack is added to every probe timeout, as Linux adds 2 ms
// (TCP_TIMEOUT_MIN_US): over a path of a few hundred microseconds two
// SRTTs are less than the scheduling delay of the receiver's ACK, and the
// probe goes out for nothing — through namespaces, at full rate, about
// 150 a second.
const ptoSlack = 2 * time.Millisecond

// armTLP sets the probe timeout (RFC 8985 §7.2): two smoothed RTTs and
// ptoSlack after new data last went out or a new cumulative ACK came, or
// the RTO if that is sooner — on a SACK flow with something in flight,
// not in recovery, not after an RTO (until a new cumulative ACK) and no
// probe already out.
func (st *stream) armTLP(sackOn bool) {
	st.tlpAt = time.Time{}
	if !sackOn || st.tlpOut || st.inRecovery || st.backoff > 0 || st.nLost > 0 || len(st.segs) == 0 || st.srtt == 0 || st.ptoBase.IsZero() {
		return
	}
	pto := 2*st.srtt + ptoSlack
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
	if n, fin, room := st.nextNew(); (n > 0 || fin) && room >= n {
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
		e.retransmit(f, to, st, s, now)
		st.tlpRetrans = true
	}
	st.tlpOut, st.tlpEnd, st.tlpDSACK = true, st.sndNxt, false
	st.tlps++
	e.st.TailProbes++
	st.rtoAt = now.Add(st.rtoBackedOff(e))
}
