package engine

import (
	"time"

	"github.com/espep/espep/ipsec/header"

	"github.com/espep/espep/internal/seqnum"
)

// The SACK scoreboard (RFC 6675): the segments sent and not cumulatively
// acknowledged, each delivered (SACKed), presumed lost, or in flight;
// deliver is where every newly delivered byte is accounted, with its RTT,
// RACK and delivery-rate samples.

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

// takeSACK marks the segments the ACK's SACK blocks cover as delivered
// and returns their bytes; a D-SACK (RFC 2883: the receiver got a segment
// twice, so a resend was spurious — the path reorders more than the RACK
// window allows) widens the reordering window (RFC 8985 §6.2 step 4).
func (e *shard) takeSACK(st *stream, o *header.TCPOptions, now time.Time, rs *rateSample) int {
	delivered := 0
	if o.NSACK > 0 {
		b0 := o.SACK[0]
		if dsack := !st.sndUna.LessThan(seqnum.Value(b0.End)) || (o.NSACK > 1 &&
			seqnum.Value(o.SACK[1].Start).LessThanEq(seqnum.Value(b0.Start)) &&
			seqnum.Value(b0.End).LessThanEq(seqnum.Value(o.SACK[1].End))); dsack {
			st.reoMult = min(st.reoMult+1, maxReoMult)
			st.dsacks++
			st.tlpDSACK = st.tlpDSACK || st.tlpOut
		}
	}
	for i := 0; i < o.NSACK; i++ {
		start, end := seqnum.Value(o.SACK[i].Start), seqnum.Value(o.SACK[i].End)
		if st.sndNxt.LessThan(end) && start.LessThan(end) {
			st.sawAhead(end)
		}
		if !st.sndUna.LessThan(end) || st.sndNxt.LessThan(end) || !start.LessThan(end) {
			continue // D-SACK, bytes not sent, or bogus
		}
		for j := range st.segs {
			s := &st.segs[j]
			if end.LessThanEq(s.seq) {
				break
			}
			if !s.sacked && start.LessThanEq(s.seq) && s.end.LessThanEq(end) {
				delivered += e.deliver(st, s, now, rs)
				s.sacked = true
			}
		}
	}
	return delivered
}

// deliver accounts a segment newly delivered (cumulatively or by SACK) and
// returns its length; with rs it also takes RTT, RACK and rate samples.
func (e *shard) deliver(st *stream, s *txSeg, now time.Time, rs *rateSample) int {
	n := s.len()
	if s.lost && s.rtoLost {
		st.undoRTO(now) // this copy was sent before the timeout, and arrived
	}
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
	// A noSample segment's delivery says nothing of the path's RTT or
	// rate (one sample too small would set minRTT, and with it BBR's
	// window, for good), but RACK may still order it by its xmit.
	rtt := now.Sub(s.xmit)
	if s.rexmits == 0 && !s.noSample && !s.xmit.Before(rs.rttXmit) {
		rs.rtt, rs.rttXmit = rtt, s.xmit
	}
	// RACK: the most recently sent segment known delivered (a resent one
	// only if its ACK cannot be for the earlier copy).
	if s.rexmits > 0 && !s.noSample && rtt < st.minRTT*3/4 {
		// Delivered sooner after the resend than the path can carry
		// it: the first copy arrived, late — reordering, not loss.
		st.reoMult = min(st.reoMult+1, maxReoMult)
		st.spurious++
	}
	if (s.rexmits == 0 || rtt >= st.minRTT) && !st.resentInUndone(s) {
		if st.rackXmit.Before(s.xmit) || (st.rackXmit.Equal(s.xmit) && st.rackEnd.LessThan(s.end)) {
			st.rackXmit, st.rackEnd, st.rackRTT = s.xmit, s.end, rtt
		}
	}
	if !s.noSample && (!rs.ok || rs.xmit.Before(s.xmit)) {
		rs.ok, rs.xmit = true, s.xmit
		rs.prior, rs.priorTime = s.delivered, s.delivTime
		rs.sendElapsed, rs.appLimited = s.xmit.Sub(s.firstSent), s.appLimited
		st.firstSent = s.xmit
	}
	return n
}

// sawAhead notes that the receiver reported holding bytes up to end that
// the engine has not sent: a copy reached it another way (relayed while a
// flow moved between engines, or sent before an import). What the engine
// sends below end now may be acknowledged at once, so it gives no RTT or
// rate sample. Only an end within the window offered to the sender counts
// (no sender could have sent beyond it).
func (st *stream) sawAhead(end seqnum.Value) {
	if st.sndNxt.LessThan(end) && end.LessThanEq(st.rcvEdge) && (!st.aheadOn || st.ahead.LessThan(end)) {
		st.ahead, st.aheadOn = end, true
	}
}

func (st *stream) markLost(s *txSeg) {
	s.lost = true
	st.inflight -= s.len()
	st.nLost++
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
