package engine

import "time"

// Pacing: a stream sends at its controller's pacing rate (or, for a
// controller that leaves it to the engine, twice its window per smoothed
// RTT), through a token bucket that lets pacingBurst of sending time
// accumulate — never less than two segments — so the radio queue sees a
// smooth flow rather than the bursts an ACK clock makes.

// pacingBurst is how much sending time the pacer lets accumulate.
const pacingBurst = 2 * time.Millisecond

// pacer is a token bucket of bytes.
type pacer struct {
	tokens float64
	at     time.Time // when tokens were last brought up to date
}

// allow reports whether n bytes may go at now, at rate bytes per second
// with at most burst bytes saved up; if they may not, it returns when
// they may (at least a microsecond on).
func (p *pacer) allow(n int, rate, burst float64, now time.Time) (bool, time.Time) {
	p.tokens = min(p.tokens+rate*now.Sub(p.at).Seconds(), burst)
	p.at = now
	if p.tokens < float64(n) {
		return false, now.Add(max(time.Duration((float64(n)-p.tokens)/rate*1e9), time.Microsecond))
	}
	p.tokens -= float64(n)
	return true, time.Time{}
}

// pace reports whether n bytes may go now under the stream's pacing rate;
// if not, it sets the time when they may (st.paceAt).
func (e *shard) pace(st *stream, n int, now time.Time) bool {
	rate := st.cc.PacingRate()
	if rate == 0 {
		if st.srtt == 0 {
			return true // nothing to pace by before the first RTT sample
		}
		rate = 2 * float64(st.cc.Window()) / st.srtt.Seconds()
	}
	ok, at := st.pacer.allow(n, rate, max(float64(2*st.smss), rate*pacingBurst.Seconds()), now)
	st.paceAt = at
	return ok
}
