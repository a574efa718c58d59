package engine_test

import (
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
)

// TestSplitResumedStreamSamples: a split flow resumed as a journal
// resumes it (acklog) — nothing in flight, every byte held to be sent
// again, though the receiver has some of them — with a BBR model toward
// the radio that says far less than the path carries, finds the path's
// rate again. The receiver acknowledges a byte it had as soon as the
// engine resends it, or had acknowledged it before the move (an ACK on
// its way): an RTT sample from such a segment was the time since the
// engine sent it, 100–400 µs on a 20 ms round trip; as the minimum RTT it
// cut BBR's window and its probing phases to nothing, and the flow went
// on at the rate it was given — a download resumed after a SIGKILL
// (TestGatewayKilledSplit) at 1 Mbit/s over a 20 Mbit/s radio.
func TestSplitResumedStreamSamples(t *testing.T) {
	const size = 6 << 20
	radio := radioLink
	radio.Delay, radio.Loss, radio.Seed = 10*time.Millisecond, 0.01, 3
	n := newNet(t, split, wiredLink, radio, true)
	done := make(chan error, 1)
	go func() {
		_, err := n.moveFlow(t, func(s engine.Stats) bool { return s.EarlyAcked >= 1<<20 }, func(st *engine.FlowState) {
			x := &st.Split.Streams[engine.Wire]
			x.Segs, x.SndNxt, x.InRecovery, x.Backoff = nil, x.SndUna, false, 0
			cc := &x.CC
			if cc.Name != engine.CCBBR {
				t.Errorf("controller %q toward the radio, want %s", cc.Name, engine.CCBBR)
			}
			// Probing bandwidth at 135 kB/s (1.1 Mbit/s) with a window of
			// four segments, the startup long over.
			cc.Mode, cc.CycleIdx, cc.Cwnd, cc.FullBw, cc.FullCnt = 2, 2, 4*1460, 2.5e6, 3
			for i := range cc.BwRounds {
				cc.BwRounds[i] = 135e3
			}
		})
		done <- err
	}()
	start := time.Now()
	gp := transfer(t, n.A, n.B, size, 90*time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var down engine.StreamInfo
	for _, fi := range n.E.Load().Flows() {
		down = fi.Down
	}
	t.Logf("%d MB in %v: %.1f Mbit/s over a 20 Mbit/s radio; toward it at the end: pacing %.0f kB/s, window %d, minimum RTT %v",
		size>>20, time.Since(start).Round(time.Millisecond), gp, down.PacingRate/1e3, down.Cwnd, down.MinRTT)
	// netem's timers deliver up to a few hundred µs early.
	if floor := 2 * radio.Delay * 3 / 4; down.MinRTT < floor {
		t.Errorf("minimum RTT toward the radio %v, below %v (the propagation delay is %v): a sample from a byte the receiver had", down.MinRTT, floor, 2*radio.Delay)
	}
	// A fifth of the radio's rate over the whole transfer; a model held
	// at the rate it was given moved the 5 MB after the move at
	// 1.5 Mbit/s.
	if gp < 4 {
		t.Errorf("goodput %.1f Mbit/s: the model toward the radio did not grow", gp)
	}
}
