package engine

import (
	"testing"
	"time"
)

const ccMSS = 1000

// ackRound feeds c one round's ACKs: the window's worth, one segment each.
func ackRound(c Controller, now time.Time, rate float64, minRTT time.Duration, inRecovery bool) time.Time {
	return ackRoundEach(c, now, rate, minRTT, inRecovery, func() {})
}

// ackRoundEach is ackRound, calling each after every ACK.
func ackRoundEach(c Controller, now time.Time, rate float64, minRTT time.Duration, inRecovery bool, each func()) time.Time {
	w := c.Window()
	// The ACKs come evenly over the round, no faster than the path
	// delivers (rate): a receiver acknowledging every segment.
	step := minRTT / time.Duration((w+ccMSS-1)/ccMSS)
	if rate > 0 {
		step = max(step, time.Duration(ccMSS/rate*1e9))
	}
	for i := 0; i < w; i += ccMSS {
		now = now.Add(step)
		c.OnAck(&AckSample{Now: now, Acked: ccMSS, InFlight: w - i - ccMSS, MSS: ccMSS, SRTT: minRTT, MinRTT: minRTT,
			Rate: rate, RoundStart: i == 0, InRecovery: inRecovery})
		each()
	}
	return now
}

// TestRenoOnItsOwn: RFC 5681 — the window doubles per round in slow start
// (RFC 3465 byte counting, L = 2), halves on loss, grows by one segment
// per window in congestion avoidance, falls to one segment on a timeout,
// and stands still in recovery.
func TestRenoOnItsOwn(t *testing.T) {
	c, err := newController(CCReno, ccMSS)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	if c.Window() != 10*ccMSS || c.PacingRate() != 0 {
		t.Fatalf("initial window %d (RFC 6928: 10 segments), pacing %v", c.Window(), c.PacingRate())
	}
	ackRound(c, now, 0, 50*time.Millisecond, false)
	if c.Window() != 20*ccMSS {
		t.Fatalf("after a slow-start round: %d, want 20 segments", c.Window())
	}
	c.OnLoss(&AckSample{InFlight: 20 * ccMSS, MSS: ccMSS})
	if c.Window() != 10*ccMSS {
		t.Fatalf("after a loss: %d, want half the flight", c.Window())
	}
	ackRound(c, now, 0, 50*time.Millisecond, true)
	if c.Window() != 10*ccMSS {
		t.Fatalf("grew in recovery: %d", c.Window())
	}
	for r := 1; r <= 3; r++ {
		ackRound(c, now, 0, 50*time.Millisecond, false)
		if c.Window() != (10+r)*ccMSS {
			t.Fatalf("congestion avoidance round %d: %d, want %d segments", r, c.Window()/ccMSS, 10+r)
		}
	}
	c.OnRTO(13 * ccMSS)
	if s := c.State(); c.Window() != ccMSS || s.Ssthresh != 6500 {
		t.Fatalf("after a timeout: window %d, ssthresh %d", c.Window(), s.Ssthresh)
	}
	c.OnLoss(&AckSample{InFlight: ccMSS, MSS: ccMSS})
	if c.Window() != 2*ccMSS {
		t.Fatalf("a loss never takes the window below two segments: %d", c.Window())
	}
}

// TestBBRQuantumOnShortPaths: where the minimum RTT is tens of
// microseconds (two hosts behind the gateway on one machine, a LAN) the
// two BDPs are a few segments; the window keeps three send quanta (a
// millisecond of the bandwidth, at most a super-packet each) above them, so a
// receiver that answers in batches a millisecond later does not set the
// rate (Linux's bbr_quantization_budget). At radio rates the quantum is
// two segments.
func TestBBRQuantumOnShortPaths(t *testing.T) {
	c, err := newController(CCBBR, ccMSS)
	if err != nil {
		t.Fatal(err)
	}
	const minRTT = 50 * time.Microsecond
	rate := 100e6 // 0.8 Gbit/s: BDP 5 kB, a quantum a super-packet
	now := time.Unix(0, 0)
	for range 40 {
		now = ackRound(c, now, rate, minRTT, false)
	}
	if c.(*bbr).mode != bbrProbeBW {
		t.Fatalf("mode %d, want probe-bandwidth", c.(*bbr).mode)
	}
	// ACKs at the path's rate leave an aggregation allowance of a segment
	// or two (aggregation.go).
	q := superSegs(ccMSS) * ccMSS
	if w, want := c.Window(), 2*5000+3*q; w < want || w > want+2*ccMSS {
		t.Fatalf("window %d, want 2 BDP + 3 × %d = %d", w, q, want)
	}
	if q := bbrQuantum(2.5e6, 1448); q != 2*1448 {
		t.Fatalf("quantum at 20 Mbit/s: %d bytes, want two segments", q)
	}
}

// TestQuantumFitsSuperPacket: at gigabits a quantum is as many whole
// segments as one GSO super-packet holds — 64 KiB of IP packet, or of UDP
// payload when every segment is sealed into a datagram of its own — not
// 64 KiB of payload, which took two writes: the super-packet and the
// couple of segments left over.
func TestQuantumFitsSuperPacket(t *testing.T) {
	// What each segment carries on its way out as ESP in UDP: at most
	// (IPv6 both outside and in, AES-CBC's 16-byte IV, 15 bytes of
	// padding), and the usual case (IPv4, AES-GCM's 8-byte IV, padding to
	// 4 bytes), each of an inner TCP segment with timestamps.
	const (
		espUDPMost = 40 + 8 + 8 + 16 + 15 + 2 + 16 + 40 + 32
		espUDP4    = 20 + 8 + 8 + 8 + 3 + 2 + 16 + 20 + 32
	)
	for _, mss := range []int{536, 1220, 1335, 1348, 1375, 1388, 1448, 8948} {
		q := bbrQuantum(10e9, mss)
		if q%mss != 0 || q < 2*mss {
			t.Errorf("mss %d: quantum %d bytes, want whole segments, at least two", mss, q)
		}
		segs := q / mss
		if plain := 40 + 32 + q; plain > 65535 && segs > 2 {
			t.Errorf("mss %d: %d segments make a TCP super-packet of %d bytes, more than an IP packet holds", mss, segs, plain)
		}
		if udp := segs * (mss + espUDPMost); udp > 65535-8 && segs > 2 {
			t.Errorf("mss %d: %d segments sealed make %d bytes of UDP payload, more than one GSO datagram holds", mss, segs, udp)
		}
		if fit := 65535 / (mss + espUDP4); segs < fit*9/10 {
			t.Errorf("mss %d: %d segments a quantum, want near the %d that fit over IPv4", mss, segs, fit)
		}
	}
}

// TestBBROnItsOwn: the model — the bottleneck bandwidth is the largest
// delivery rate of the last ten rounds, startup paces at 2/ln 2 of it and
// leaves after three rounds without 25 % growth, probe-bandwidth cycles
// its gains and holds two BDPs (plus three send quanta) in flight; losses
// leave it alone, a timeout cuts the window to a quarter.
func TestBBROnItsOwn(t *testing.T) {
	c, err := newController(CCBBR, ccMSS)
	if err != nil {
		t.Fatal(err)
	}
	b := c.(*bbr)
	const minRTT = 40 * time.Millisecond
	now := time.Unix(0, 0)
	rate := 1e6 // the path delivers 1 MB/s: BDP 40 kB
	round := func(r float64) {
		now = ackRound(c, now, r, minRTT, false)
	}
	round(rate / 4)
	round(rate / 2)
	round(rate)
	if b.mode != bbrStartup || c.PacingRate() != bbrHighGain*rate {
		t.Fatalf("startup: mode %d, pacing %v, want %v", b.mode, c.PacingRate(), bbrHighGain*rate)
	}
	for range 3 { // no more growth: full pipe
		round(rate)
	}
	if b.mode == bbrStartup {
		t.Fatal("still in startup after three rounds without growth")
	}
	for range 4 { // drain, then probe
		c.OnAck(&AckSample{Now: now, Acked: ccMSS, InFlight: 10 * ccMSS, MSS: ccMSS, MinRTT: minRTT, SRTT: minRTT, Rate: rate})
		now = now.Add(minRTT)
	}
	if b.mode != bbrProbeBW {
		t.Fatalf("mode %d after the queue drained, want probe-bandwidth", b.mode)
	}
	gains := map[float64]bool{}
	for range 16 {
		now = ackRoundEach(c, now, rate, minRTT, false, func() { gains[c.PacingRate()/rate] = true })
		// A quantum of 1 ms at 1 MB/s is less than two segments; ACKs at
		// the path's rate leave an aggregation allowance of a segment or
		// two (an epoch's first ACK is all extra).
		if w := c.Window(); w < 2*40000+3*2*ccMSS || w > 2*40000+3*2*ccMSS+2*ccMSS {
			t.Fatalf("probe-bandwidth window %d, want 2 BDP + 3 quanta of two segments", w)
		}
	}
	if !gains[1.25] || !gains[0.75] || !gains[1] {
		t.Fatalf("pacing gains seen %v, want 1.25, 0.75 and 1", gains)
	}
	w := c.Window()
	c.OnLoss(&AckSample{InFlight: w, MSS: ccMSS})
	if c.Window() != w {
		t.Fatal("a random loss changed the model")
	}
	for range bwWindow { // the rate halves: the old maximum lasts ten rounds
		round(rate / 2)
	}
	if got := b.btlBw(); got != rate/2 {
		t.Fatalf("bandwidth after ten slower rounds: %v, want %v", got, rate/2)
	}
	w = c.Window()
	c.OnRTO(w)
	if c.Window() != max(w/4, 4*ccMSS) {
		t.Fatalf("after a timeout: %d, want a quarter of %d", c.Window(), w)
	}
	restored, err := controllerFrom(c.State(), ccMSS)
	if err != nil || restored.Window() != c.Window() || restored.PacingRate() != c.PacingRate() {
		t.Fatalf("state does not carry the model: %v %+v", err, restored.State())
	}
}

// TestBBRAckAggregation: a receiver that acknowledges in bursts — here
// 100 kB at once every millisecond on a 100 MB/s path with a 50 µs minimum
// RTT, as a userspace IPsec host taking its packets in batches does — gets
// its burst added to the window, or the sender runs dry between two of its
// ACKs. The allowance ages out once the ACKs fall behind the estimate (an
// epoch ends) and two windows of aggWindowRounds have passed; it is at
// most aggMaxTime of the bandwidth, and moves with the controller's state.
// (ACKs exactly at the estimate would keep an epoch, and its surplus,
// going — as in Linux; the 0.75 phase of probe-bandwidth is one dip.)
func TestBBRAckAggregation(t *testing.T) {
	c, err := newController(CCBBR, ccMSS)
	if err != nil {
		t.Fatal(err)
	}
	b := c.(*bbr)
	const minRTT = 50 * time.Microsecond
	const bw, burst = 100e6, 100_000
	now := time.Unix(0, 0)
	for range 4 * bwWindow { // through startup and drain
		now = ackRound(c, now, bw, minRTT, false)
	}
	if b.mode != bbrProbeBW {
		t.Fatalf("mode %d, want probe-bandwidth", b.mode)
	}
	base := int(2*bw*minRTT.Seconds()) + 3*bbrQuantum(bw, ccMSS)
	if w := c.Window(); w > base+2*ccMSS {
		t.Fatalf("ACKs at the path's rate: window %d, want about %d", w, base)
	}
	bursty := func(rounds int) {
		for range rounds {
			for i := 0; i < max(c.Window(), burst); i += burst {
				now = now.Add(time.Duration(burst / bw * 1e9))
				c.OnAck(&AckSample{Now: now, Acked: burst, MSS: ccMSS, SRTT: time.Millisecond, MinRTT: minRTT, Rate: bw, RoundStart: i == 0})
			}
		}
	}
	bursty(10)
	if w := c.Window(); w < base+burst || w > base+burst+2*ccMSS {
		t.Fatalf("ACKs of %d bytes at once: window %d, want %d and the burst", burst, w, base)
	}
	restored, err := controllerFrom(c.State(), ccMSS)
	if err != nil || restored.(*bbr).agg != b.agg {
		t.Fatalf("the state does not carry the aggregation estimate: %v %+v", err, restored.State())
	}
	const rounds = 2*aggWindowRounds + 2
	for range rounds { // a receiver slower than before, acknowledging every segment
		now = ackRound(c, now, 0.8*bw, minRTT, false)
	}
	base = int(2*b.btlBw()*minRTT.Seconds()) + 3*bbrQuantum(b.btlBw(), ccMSS)
	if w := c.Window(); w > base+2*ccMSS {
		t.Fatalf("%d rounds after the bursts stopped: window %d, want about %d", rounds, w, base)
	}
	a := ackAggregation{extra: [2]int{50 << 20, 0}}
	if got := a.allowance(bw); got != int(bw*aggMaxTime.Seconds()) {
		t.Fatalf("allowance %d for a 50 MiB burst at 100 MB/s, want %v of the bandwidth", got, aggMaxTime)
	}
}
