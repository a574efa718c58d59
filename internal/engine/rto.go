package engine

import (
	"time"

	"github.com/espep/espep/ipsec/header"
)

// The retransmission timeout (RFC 6298) and its backoff, the persist
// timer's zero-window probes (RFC 9293 §3.8.6.1), and giving up.

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
		// after it ends (a 750 ms fade left it idle for up to 650 ms
		// with plain doubling; with a 250 ms gap, up to 250 ms, and the
		// lab's fade row varied with where the fade fell between tries).
		d = min(d, max(st.rto, radioRetryGap))
	}
	return d
}

// fadeBackoff is the backoff from which each try sends one segment only
// (send): the second timeout in a row. The first may be a tail's loss or
// spurious, and BBR keeps a few segments for it.
const fadeBackoff = 2

// radioRetryGap bounds the backed-off RTO toward the radio: during a fade
// the engine tries again at least this often (one segment each time from
// the second try, fadeBackoff: 120 kbit/s a flow, under 1 % of a 20 Mbit/s
// radio). Never below the RTO itself, so a radio whose queue holds a long
// RTT is not probed spuriously.
const radioRetryGap = 100 * time.Millisecond

// restartRTO restarts the retransmission timer after an ACK: on a new
// cumulative ACK (RFC 6298 §5.3) and, with SACK, on any ACK that reports
// bytes delivered: while the receiver reports progress RACK finds what was
// lost, a lost resend too (segments sent after it get SACKed), and the RTO
// stays the last resort for when the ACKs stop. Restarted only on a
// cumulative ACK, it raced RACK for the hole's resend, which waits behind
// what the radio queue holds: 3–10 timeouts per 10 s at 5 % loss, each
// presuming the whole flight lost.
func (st *stream) restartRTO(e *shard, sackOn, advanced bool, delivered int, now time.Time) {
	switch {
	case len(st.segs) == 0:
		st.rtoAt = time.Time{}
	case advanced || st.rtoAt.IsZero() || sackOn && delivered > 0:
		st.rtoAt = now.Add(st.rtoBackedOff(e))
	}
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
			s.rtoLost = true
		}
	}
	st.rtoTime, st.rtoCwnd = now, st.cc.Window()
	st.cc.OnRTO(inflight)
	st.inRecovery, st.recover = false, st.sndNxt
	st.tlpOut = false
	st.backoff = min(st.backoff+1, maxBackoff)
	st.rtoAt = now.Add(st.rtoBackedOff(e))
	st.timeouts++
	e.st.SplitTimeouts++
}

// undoRTO puts back in flight what a timeout presumed lost and the sender
// has not resent yet: the receiver has just reported a segment delivered
// that was sent only before the timeout, so the timeout was spurious —
// the ACKs were late (a receiver starved of CPU, a queue), not the data
// lost (RFC 5682's question, answered by the scoreboard). Without it the
// sender resends the whole flight as its window reopens, ACKs for the
// originals arriving all the while: in CI, a charon behind the gateway,
// starved by the suite beside it, saw four timeouts and ~300 resends more
// than its socket dropped in a 4 MB transfer. What was really lost RACK
// still finds; the resends between the timeout and the undo give it no
// sample (resentInUndone: their ACKs are the originals', and taken as the
// resends' they would have RACK presume the rest of the flight lost after
// all). The window the timeout cut is given
// back too (RFC 4015 §3 restores it on a spurious timeout; Linux's undo
// does): with its flight back in flight and a quarter of the window, the
// sender would sit out a round for nothing.
func (st *stream) undoRTO(now time.Time) {
	if w, ok := st.cc.(windowRestorer); ok {
		w.restoreWindow(st.rtoCwnd)
	}
	st.undone, st.undoneTo = st.rtoTime, now
	st.rackXmit, st.rackEnd, st.rackRTT = time.Time{}, 0, 0
	for i := range st.segs {
		if s := &st.segs[i]; s.lost && s.rtoLost {
			s.lost, s.rtoLost = false, false
			st.nLost--
			st.inflight += s.len()
		}
	}
	st.spurious++
}

// resentInUndone reports whether s was resent between a timeout found
// spurious and its undo: the ACK that reports it is its original's.
func (st *stream) resentInUndone(s *txSeg) bool {
	return s.rexmits > 0 && !st.undone.IsZero() && !s.xmit.Before(st.undone) && !st.undoneTo.Before(s.xmit)
}

// windowRestorer is a controller whose window a spurious timeout's undo
// can give back (bbr and reno; the window only, not reno's ssthresh).
type windowRestorer interface{ restoreWindow(cwnd int) }

func (b *bbr) restoreWindow(cwnd int)  { b.cwnd = max(b.cwnd, cwnd) }
func (r *reno) restoreWindow(cwnd int) { r.cwnd = max(r.cwnd, cwnd) }

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
