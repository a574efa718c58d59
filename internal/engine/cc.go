package engine

import (
	"fmt"
	"math"
	"time"
)

// Controller is the congestion controller of split mode's own sender, one
// per stream. The engine does loss detection, RTT estimation and delivery-
// rate sampling and tells the controller; the controller answers with a
// congestion window and a pacing rate. Its state is plain data (CCState)
// so a flow can move to another engine.
type Controller interface {
	// Window is the congestion window in bytes.
	Window() int
	// PacingRate is the rate to send at, in bytes per second; 0 leaves
	// pacing to the engine (a multiple of Window/SRTT).
	PacingRate() float64
	// OnAck reports newly delivered bytes (cumulatively acknowledged or
	// SACKed).
	OnAck(s *AckSample)
	// OnLoss reports the start of a loss-recovery episode (once per
	// episode, RFC 6675 §5).
	OnLoss(s *AckSample)
	// OnRTO reports a retransmission timeout.
	OnRTO(inflight int)
	// State returns the controller's state.
	State() CCState
}

// AckSample is what the engine tells a controller about one ACK.
type AckSample struct {
	Now        time.Time
	Acked      int // bytes newly delivered
	InFlight   int // bytes in flight after the ACK
	MSS        int
	SRTT       time.Duration
	MinRTT     time.Duration
	Rate       float64 // delivery rate sample, bytes/s (0: none)
	AppLimited bool    // the sample was taken while the sender had nothing to send
	RoundStart bool    // a round trip ended with this ACK
	InRecovery bool
}

// CCState is a controller's state as plain data.
type CCState struct {
	Name     string
	Cwnd     int
	Ssthresh int
	Acc      int // bytes acknowledged toward the next cwnd step

	// bbr
	Mode     int
	BwRounds [bwWindow]float64 // maximum delivery rate of each recent round
	Round    int
	FullBw   float64
	FullCnt  int
	CycleIdx int
	CycleAt  time.Time
	// ACK aggregation (bbr): the most data acknowledged beyond the
	// bandwidth estimate in each of two windows of aggWindowRounds, the
	// window's rounds so far and which is current, and the epoch being
	// measured.
	ExtraAcked    [2]int
	AggRounds     int
	AggIdx        int
	AckEpoch      time.Time
	AckEpochAcked int
}

// CC names: the standard controller and the loss-tolerant one.
const (
	CCReno = "reno"
	CCBBR  = "bbr"
)

// newController makes the named controller with an initial window of ten
// segments (RFC 6928).
func newController(name string, mss int) (Controller, error) {
	switch name {
	case CCReno:
		return &reno{mss: mss, cwnd: 10 * mss, ssthresh: math.MaxInt32}, nil
	case "", CCBBR:
		return &bbr{mss: mss, cwnd: 10 * mss}, nil
	}
	return nil, fmt.Errorf("engine: unknown congestion controller %q (want %s or %s)", name, CCReno, CCBBR)
}

// controllerFrom rebuilds a controller from its state.
func controllerFrom(s CCState, mss int) (Controller, error) {
	c, err := newController(s.Name, mss)
	if err != nil {
		return nil, err
	}
	switch c := c.(type) {
	case *reno:
		c.cwnd, c.ssthresh, c.acc = max(s.Cwnd, mss), s.Ssthresh, s.Acc
	case *bbr:
		c.cwnd, c.mode, c.bw, c.round = max(s.Cwnd, mss), bbrMode(s.Mode), s.BwRounds, s.Round
		c.fullBw, c.fullCnt, c.cycleIdx, c.cycleAt = s.FullBw, s.FullCnt, s.CycleIdx, s.CycleAt
		c.agg = ackAggregation{extra: [2]int{max(s.ExtraAcked[0], 0), max(s.ExtraAcked[1], 0)},
			rounds: min(max(s.AggRounds, 0), aggWindowRounds-1), idx: s.AggIdx & 1, epoch: s.AckEpoch, epochAcked: max(s.AckEpochAcked, 0)}
	}
	return c, nil
}

// reno is RFC 5681 congestion control (slow start, congestion avoidance
// with appropriate byte counting, halving on loss) — the standard
// controller, which treats every loss as congestion.
type reno struct {
	mss, cwnd, ssthresh, acc int
}

func (r *reno) Window() int         { return r.cwnd }
func (r *reno) PacingRate() float64 { return 0 }

func (r *reno) OnAck(s *AckSample) {
	if s.InRecovery {
		return
	}
	if r.cwnd < r.ssthresh {
		r.cwnd += min(s.Acked, 2*s.MSS) // RFC 3465 L = 2
		return
	}
	r.acc += s.Acked
	if r.acc >= r.cwnd {
		r.acc -= r.cwnd
		r.cwnd += s.MSS
	}
}

func (r *reno) OnLoss(s *AckSample) {
	r.ssthresh = max(s.InFlight/2, 2*s.MSS)
	r.cwnd, r.acc = r.ssthresh, 0
}

func (r *reno) OnRTO(inflight int) {
	r.ssthresh = max(inflight/2, 2*r.mss)
	r.cwnd, r.acc = r.mss, 0
}

func (r *reno) State() CCState {
	return CCState{Name: CCReno, Cwnd: r.cwnd, Ssthresh: r.ssthresh, Acc: r.acc}
}

// bbr is a model-based controller after BBR v1 (Cardwell et al., "BBR:
// Congestion-Based Congestion Control", ACM Queue 2016): it estimates the
// bottleneck bandwidth as the maximum delivery rate over the last rounds
// and the propagation delay as the minimum RTT, paces at the bandwidth
// (cycling gains to probe for more) and keeps about two bandwidth-delay
// products in flight. Random loss does not enter the model, which is why
// it suits a radio leg. Not here, on purpose: PROBE_RTT (the radio leg is
// the gateway's own, a standing queue there is the gateway's to manage)
// and BBRv2's loss and ECN bounds.
type bbr struct {
	mss      int
	cwnd     int
	mode     bbrMode
	bw       [bwWindow]float64
	round    int
	fullBw   float64
	fullCnt  int
	cycleIdx int
	cycleAt  time.Time
	minRTT   time.Duration
	agg      ackAggregation
}

type bbrMode int

const (
	bbrStartup bbrMode = iota
	bbrDrain
	bbrProbeBW
)

// bwWindow is the number of rounds the bandwidth maximum runs over.
const bwWindow = 10

const bbrHighGain = 2.885 // 2/ln 2

var bbrCycle = [8]float64{1.25, 0.75, 1, 1, 1, 1, 1, 1}

func (b *bbr) btlBw() float64 {
	m := 0.0
	for _, v := range b.bw {
		m = max(m, v)
	}
	return m
}

func (b *bbr) pacingGain() float64 {
	switch b.mode {
	case bbrStartup:
		return bbrHighGain
	case bbrDrain:
		return 1 / bbrHighGain
	}
	return bbrCycle[b.cycleIdx]
}

func (b *bbr) Window() int { return b.cwnd }

func (b *bbr) PacingRate() float64 {
	bw := b.btlBw()
	if bw == 0 {
		return 0
	}
	return b.pacingGain() * bw
}

func (b *bbr) OnAck(s *AckSample) {
	b.minRTT = s.MinRTT
	if s.RoundStart {
		b.round++
		copy(b.bw[1:], b.bw[:bwWindow-1])
		b.bw[0] = 0
	}
	if s.Rate > 0 && (!s.AppLimited || s.Rate > b.btlBw()) {
		b.bw[0] = max(b.bw[0], s.Rate)
	}
	bw := b.btlBw()
	b.agg.update(s, bw, b.cwnd)
	switch b.mode {
	case bbrStartup:
		if s.RoundStart && !s.AppLimited {
			if bw >= b.fullBw*1.25 {
				b.fullBw, b.fullCnt = bw, 0
			} else if b.fullCnt++; b.fullCnt >= 3 {
				b.mode = bbrDrain
			}
		}
	case bbrDrain:
		if float64(s.InFlight) <= b.bdp(bw, 1) {
			b.mode, b.cycleIdx, b.cycleAt = bbrProbeBW, 2, s.Now
		}
	case bbrProbeBW:
		if s.MinRTT > 0 && s.Now.Sub(b.cycleAt) > s.MinRTT {
			// Leave the probing phase early only when the queue it built
			// has drained (v1's rule for the 0.75 phase).
			if b.cycleIdx != 1 || float64(s.InFlight) <= b.bdp(bw, 1) {
				b.cycleIdx = (b.cycleIdx + 1) % len(bbrCycle)
				b.cycleAt = s.Now
			}
		}
	}
	gain := 2.0
	if b.mode == bbrStartup {
		gain = bbrHighGain
	}
	if bw > 0 && s.MinRTT > 0 {
		target := int(b.bdp(bw, gain)) + 3*bbrQuantum(bw, s.MSS)
		if b.mode != bbrStartup {
			target += b.agg.allowance(bw)
		}
		if b.mode == bbrStartup || b.cwnd < target {
			b.cwnd = min(b.cwnd+s.Acked, max(target, b.cwnd))
		} else {
			b.cwnd = target
		}
	} else {
		b.cwnd += s.Acked
	}
	b.cwnd = max(b.cwnd, 4*s.MSS)
}

// bbrQuantum is what the sender may put out back to back at bandwidth bw
// (bytes per second): a millisecond of it, at least two segments and at
// most what one super-packet holds (superSegs) — Linux's TSO autosizing,
// whose three quanta BBR adds to its window target (tcp_bbr.c,
// bbr_quantization_budget). Without it the window is two BDPs of the
// *minimum* RTT plus three segments, which is a dozen segments where the
// path's RTT is tens of microseconds; a receiver that takes its packets in
// batches (a userspace IPsec host, GRO) then answers a millisecond later,
// and the window, not the path, sets the rate: 0.35 Gbit/s between two
// espep hosts that move 1 Gbit/s.
func bbrQuantum(bw float64, mss int) int {
	return max(2*mss, min(int(bw*1e-3), superSegs(mss)*mss))
}

// superSegs is how many segments of mss bytes one GSO super-packet holds
// whichever way the gateway sends them: 65,535 bytes of IP packet, or of
// UDP payload for ESP in UDP, where every datagram has headers of its own
// (segHeadroom a segment). Linux sizes its TSO packets the same way, in
// whole segments of what fits (tcp_xmit_size_goal). A quantum of 64 KiB of
// payload, as this was, is 47 segments and a part at the MSS inside an
// ESP-in-UDP tunnel on a 1,500-byte path (~1,370 bytes), and what the
// gateway sealed of it toward an espep host took two writes: 43 datagrams
// and the rest (24–26 datagrams a write; 30–33 with a quantum that fits,
// host harness).
func superSegs(mss int) int {
	return max(1, 65535/(mss+segHeadroom))
}

// segHeadroom bounds the header a segment carries on its way out, sealed
// as ESP in UDP: outer IPv6 and UDP (48), ESP with a 16-byte IV, up to 15
// bytes of padding, the trailer and a 16-byte ICV (57), inner IPv6 and TCP
// with timestamps (72) — 177, rounded up. Over IPv4 with AES-GCM it is
// 117, so a quantum there is a couple of segments short of what would fit
// (41 at an MSS of 1,375, where 43 would).
const segHeadroom = 192

func (b *bbr) bdp(bw, gain float64) float64 {
	return gain * bw * b.minRTT.Seconds()
}

// OnLoss leaves the model alone: radio loss is not congestion.
func (b *bbr) OnLoss(*AckSample) {}

// OnRTO keeps the model but restarts the window small: a timeout on the
// radio is usually an outage, and what comes after it is unknown.
func (b *bbr) OnRTO(int) { b.cwnd = max(b.cwnd/4, 4*b.mss) }

func (b *bbr) State() CCState {
	return CCState{Name: CCBBR, Cwnd: b.cwnd, Mode: int(b.mode), BwRounds: b.bw, Round: b.round,
		FullBw: b.fullBw, FullCnt: b.fullCnt, CycleIdx: b.cycleIdx, CycleAt: b.cycleAt,
		ExtraAcked: b.agg.extra, AggRounds: b.agg.rounds, AggIdx: b.agg.idx, AckEpoch: b.agg.epoch, AckEpochAcked: b.agg.epochAcked}
}
