package engine

import (
	"time"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// The split sender, by concern: what goes out and when (this file), ACK
// processing (ack.go), the SACK scoreboard (sack.go), loss detection and
// tail loss probes (rack.go), the retransmission and persist timers
// (rto.go), pacing (pacer.go), and the congestion controllers (cc.go).

// send transmits what the stream may send now toward its receiver:
// presumed-lost segments first, then new data and the FIN — within the
// congestion window, the receiver's window and the pacing rate.
func (e *shard) send(f *flow, st *stream, now time.Time) {
	to := st.from.other()
	for {
		cwnd := st.cc.Window()
		if st.backoff >= fadeBackoff {
			// Timed out again with nothing acknowledged between: the
			// receiver is unreachable (a fade, a mobile gone). Each try
			// is one segment, as Linux and RFC 5681 §3.1 send after a
			// timeout, until an ACK ends the backoff and gives the
			// controller's window back.
			cwnd = min(cwnd, st.smss)
		}
		if st.nLost > 0 {
			s := st.firstLost()
			if !e.mayGo(st, s.len(), cwnd, now) {
				return
			}
			s.lost, s.rtoLost = false, false
			st.nLost--
			if s == &st.segs[0] {
				// Resending the oldest segment restarts the timer
				// for it (as Linux does), else the RTO of a repair in
				// progress would cut it short.
				st.rtoAt = now.Add(st.rtoBackedOff(e))
			}
			e.retransmit(f, to, st, s, now)
			continue
		}
		n, fin, room := st.nextNew()
		if n == 0 && !fin {
			st.pacer.release()
			if st.inflight < cwnd {
				st.appLimited = max(st.delivered+uint64(st.inflight), 1)
			}
			return
		}
		if room < n {
			// Wait for the receiver's window; avoid silly segments while
			// data is in flight (RFC 9293 §3.8.6.2.1) and probe a closed
			// window when nothing is (§3.8.6.1).
			if room <= 0 || len(st.segs) > 0 {
				st.pacer.release()
				e.st.WindowLimited++
				if len(st.segs) == 0 && st.persistAt.IsZero() {
					st.persistAt = now.Add(min(st.rto<<st.persistBackoff, e.cfg.MaxRTO))
				}
				return
			}
			n, fin = room, false
		}
		if !e.mayGo(st, n+btoi(fin), cwnd, now) {
			return
		}
		e.sendNew(f, to, st, n, fin, now)
	}
}

// mayGo reports whether n more bytes fit the congestion window (one
// segment always may when nothing is in flight) and the pacing rate, and
// counts which of them held the sender.
func (e *shard) mayGo(st *stream, n, cwnd int, now time.Time) bool {
	if st.inflight > 0 && st.inflight+n > cwnd {
		st.pacer.release()
		e.st.CwndLimited++
		return false
	}
	if !e.pace(st, n, now) {
		e.st.PaceLimited++
		return false
	}
	return true
}

// nextNew is what new data the stream could send next: n bytes (at most
// one segment) and whether the FIN goes with them, and the room the
// receiver's window leaves.
func (st *stream) nextNew() (n int, fin bool, room int) {
	n = min(max(diff(st.sndNxt, st.rcvNxt), 0), st.smss)
	fin = st.finSeen && !st.finSent && st.sndNxt.Add(seqnum.Size(n)) == st.finSeq
	return n, fin, diff(st.sndNxt, st.sndUna.Add(seqnum.Size(st.wnd)))
}

// firstLost returns the oldest segment presumed lost (nLost > 0).
func (st *stream) firstLost() *txSeg {
	for i := range st.segs {
		if st.segs[i].lost {
			return &st.segs[i]
		}
	}
	return nil
}

// retransmit sends segment s again and counts it.
func (e *shard) retransmit(f *flow, to Side, st *stream, s *txSeg, now time.Time) {
	s.rexmits++
	e.transmit(f, to, st, s, now)
	st.rexmits++
	e.st.SplitRexmits++
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

// transmit stamps a segment and sends it.
func (e *shard) transmit(f *flow, to Side, st *stream, s *txSeg, now time.Time) {
	if len(st.segs) == 1 && s == &st.segs[0] && s.rexmits == 0 {
		st.progress = now // the give-up clock starts with the first segment outstanding
	}
	if st.inflight == 0 {
		st.firstSent, st.delivTime = now, now
	}
	s.xmit, s.noSample = now, st.aheadOn && s.seq.LessThan(st.ahead) || now.Before(st.sampleAfter)
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
	if dataEnd := s.end - seqnum.Value(btoi(s.fin)); st.pushOn && s.seq.LessThan(st.push) && st.push.LessThanEq(dataEnd) {
		flags |= header.TCPPsh // the sender's push is in this segment
	}
	e.emit(f, to, segment{seq: s.seq, flags: flags, data: st, n: n})
}

// schedule arms the stream's timer for its earliest deadline. Within a
// batch (Input.More) the timer is re-armed only when that deadline moves
// earlier; a deadline that moved later (the RTO's and the tail probe's
// follow every ACK) moves the timer at the batch's last packet, once,
// and no deadline stops it once nothing is in flight. A timer left early
// fires for nothing and re-arms: once per burst at a trickle, where each
// such wake-up of an idle process costs more than moving the timer at
// every batch does at full rate.
func (e *shard) schedule(f *flow, st *stream, now time.Time) {
	st.armTLP(f.sp.sackOn && !e.cfg.NoTailProbes)
	var at time.Time
	for _, d := range [...]time.Time{st.rtoAt, st.rackAt, st.persistAt, st.paceAt, st.ackAt, st.tlpAt} {
		if !d.IsZero() && (at.IsZero() || d.Before(at)) {
			at = d
		}
	}
	idle := st.inflight == 0 && len(st.segs) == 0
	if at.IsZero() {
		if idle && !st.timerAt.IsZero() && st.timer != nil {
			st.timer.Stop()
			st.timerAt = time.Time{}
		}
		return
	}
	if !st.timerAt.IsZero() && (at.Equal(st.timerAt) || at.After(st.timerAt) && !idle && e.cur.More) {
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

// lateTimer is how late a timer callback must run to count as late
// (Stats.TimersLate): well past fdclock's 1 ms grid and the pacer's 2 ms
// burst — a process that waited that long for a CPU.
const lateTimer = 5 * time.Millisecond

// splitTimer runs what is due on a stream.
func (e *shard) splitTimer(f *flow, from Side) {
	e.lock()
	defer e.unlock()
	if e.flows[f.key] != f || f.sp == nil {
		return
	}
	st := &f.sp.st[from]
	now := e.cfg.Clock.Now()
	if !st.timerAt.IsZero() && now.Sub(st.timerAt) >= lateTimer {
		e.st.TimersLate++
	}
	st.timerAt = time.Time{}
	e.st.TimerFires++
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
		if seq, lost := e.detectLoss(f, st, now); lost {
			st.enterRecovery(seq, before, now)
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
