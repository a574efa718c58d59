package engine

import "time"

// ACK aggregation, for bbr (after Linux's tcp_bbr.c, bbr_update_ack_aggregation,
// and BBRv2's draft, draft-cardwell-iccrg-bbr-congestion-control §4.6.4.3).
//
// BBR keeps about two bandwidth-delay products of the *minimum* RTT in
// flight. A receiver that acknowledges in bursts — a GRO batch, a
// userspace IPsec host taking its packets a batch at a time, a radio that
// grants the uplink in slots, Wi-Fi's aggregation — is silent for longer
// than that RTT between its ACKs, and then acknowledges much at once. With
// only 2 BDP in flight the sender runs dry in the silence and the window,
// not the path, sets the rate: between two espep hosts the gateway's sender
// toward b stopped on its window 420k times in 5 s with b's window open.
// So the window gets an allowance: the most data an ACK epoch delivered
// beyond what the bandwidth estimate explains, the larger of two windows of
// aggWindowRounds rounds each (so it ages out), at most aggMaxTime of the
// bandwidth, and never more than the window itself at the time.

const (
	aggWindowRounds = 5                      // rounds in each of the two windows
	aggMaxTime      = 100 * time.Millisecond // the most bandwidth time the allowance may be
)

// aggResetBytes restarts an epoch that has run so long that its count no
// longer says anything about a burst (Linux: 2^20 packets).
const aggResetBytes = 1 << 30

// ackAggregation measures how much more than the bandwidth estimate the
// receiver's ACKs deliver at once.
type ackAggregation struct {
	extra      [2]int    // the most extra acknowledged, by window
	rounds     int       // rounds of the current window so far
	idx        int       // the current window
	epoch      time.Time // when the current ACK epoch began
	epochAcked int       // bytes acknowledged in it
}

// update takes an ACK's sample; bw is the bandwidth estimate (bytes per
// second) and cwnd the window.
func (a *ackAggregation) update(s *AckSample, bw float64, cwnd int) {
	if s.Acked <= 0 || bw <= 0 {
		return
	}
	if s.RoundStart {
		if a.rounds++; a.rounds >= aggWindowRounds {
			a.rounds, a.idx = 0, a.idx^1
			a.extra[a.idx] = 0
		}
	}
	expected := 0.0
	if !a.epoch.IsZero() {
		expected = bw * s.Now.Sub(a.epoch).Seconds()
	}
	// An ACK slower than the estimate ends the burst: a new epoch starts.
	if a.epoch.IsZero() || float64(a.epochAcked) <= expected || a.epochAcked+s.Acked >= aggResetBytes {
		a.epoch, a.epochAcked, expected = s.Now, 0, 0
	}
	a.epochAcked += s.Acked
	extra := min(float64(a.epochAcked)-expected, float64(cwnd))
	a.extra[a.idx] = max(a.extra[a.idx], int(extra))
}

// allowance is what the window gets on top of its target at bandwidth bw.
func (a *ackAggregation) allowance(bw float64) int {
	return min(max(a.extra[0], a.extra[1]), int(bw*aggMaxTime.Seconds()))
}
