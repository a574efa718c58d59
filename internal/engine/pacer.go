package engine

import "time"

// Pacing: a stream sends at its controller's pacing rate (or, for a
// controller that leaves it to the engine, twice its window per smoothed
// RTT), through a token bucket that lets pacingBurst of sending time
// accumulate — never less than two segments — so the radio queue sees a
// smooth flow rather than the bursts an ACK clock makes.
//
// A sender the pacer holds stays held until a quantum has accrued, not the
// next segment: a millisecond of the rate, at least two segments, at most
// what one super-packet holds (bbrQuantum; Linux paces TSO-autosized
// packets the same way).
// Its timer is set for then, and a packet that arrives before (an ACK, the
// other side's data) does not let it out early. At a radio's rate that is
// two segments a turn; at gigabits, a turn per segment would be one timer
// or one small write for every packet — and the receiver pays too. A
// split flow's sender let out by every batch from the other side wrote
// 18–19 packets a write toward an espep host, which then took its data in
// smaller batches and acknowledged more often; the two hosts, sharing a
// CPU, moved 0.64–0.80 (median 0.78) of what they moved through the
// kernel router. Held for its quantum: 26 a write and 0.71–0.97 (median
// 0.81; host harness, builds alternated in one session).
//
// A wake-up can come late: Go runs a timer's function when a thread is
// free, and on a busy machine that is milliseconds on (up to the
// scheduler's 10 ms time slice, measured in the lab with four runs on two
// cores). Time a held sender spent waiting past its turn is credited, up
// to maxCatchUp: otherwise the rate the pacer lets through falls to
// pacingBurst per wake-up interval, the controller measures that lower
// rate as the path's bandwidth, paces at it, and the estimate ratchets
// down — a split flow fell from 18 to 2 Mbit/s on a 20 Mbit/s radio that
// way. Only a sender that was held by the pacer is credited: one that had
// nothing to send, or was held by a window, saves up no more than the
// burst.

// pacingBurst is how much sending time the pacer lets accumulate.
const pacingBurst = 2 * time.Millisecond

// maxCatchUp bounds the sending time a late wake-up makes up for.
const maxCatchUp = 20 * time.Millisecond

// pacer is a token bucket of bytes.
type pacer struct {
	tokens float64
	at     time.Time // when tokens were last brought up to date
	// due is when the sender it held may go: its quantum has accrued
	// (zero: it is not held).
	due time.Time
}

// allow reports whether n bytes may go at now, at rate bytes per second
// with at most burst bytes saved up (more, for a sender held past its
// turn); if they may not, the sender is held until wake bytes (at least
// n, at most burst) have accrued, and allow returns when that will be at
// this rate — at least a microsecond on. A held sender is refused until
// then, or until the quantum has accrued sooner because the rate rose.
// The credit for a late turn lasts until the pacer holds the sender again
// or release.
func (p *pacer) allow(n, wake int, rate, burst float64, now time.Time) (bool, time.Time) {
	limit := burst
	if !p.due.IsZero() && p.due.Before(now) {
		limit += rate * min(now.Sub(p.due), maxCatchUp).Seconds()
	}
	p.tokens = min(p.tokens+rate*now.Sub(p.at).Seconds(), limit)
	p.at = now
	want := min(float64(max(n, wake)), max(burst, float64(n)))
	if now.Before(p.due) {
		if p.tokens < want {
			return false, p.hold(want, rate, now)
		}
		p.due = now // the turn came early: the rate rose while it was held
	}
	if p.tokens < float64(n) {
		return false, p.hold(want, rate, now)
	}
	p.tokens -= float64(n)
	return true, time.Time{}
}

// hold holds the sender until want bytes will have accrued at rate.
func (p *pacer) hold(want, rate float64, now time.Time) time.Time {
	p.due = now.Add(max(time.Duration((want-p.tokens)/rate*1e9), time.Microsecond))
	return p.due
}

// release tells the pacer the sender stopped for another reason than it:
// no more credit for a late turn, as the sender was not waiting for one,
// and no hold: what stopped it decides when it goes on.
func (p *pacer) release() { p.due = time.Time{} }

// pace reports whether n bytes may go now under the stream's pacing rate;
// if not, it sets the time when a quantum may (st.paceAt).
func (e *shard) pace(st *stream, n int, now time.Time) bool {
	rate := st.cc.PacingRate()
	if rate == 0 {
		if st.srtt == 0 {
			return true // nothing to pace by before the first RTT sample
		}
		rate = 2 * float64(st.cc.Window()) / st.srtt.Seconds()
	}
	ok, at := st.pacer.allow(n, bbrQuantum(rate, st.smss), rate, max(float64(2*st.smss), rate*pacingBurst.Seconds()), now)
	st.paceAt = at
	return ok
}
