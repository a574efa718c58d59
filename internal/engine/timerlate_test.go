package engine

import (
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
)

// lateClock runs its timers late by a fixed time.
type lateClock struct {
	*netem.SimClock
	late time.Duration
}

func (c lateClock) AfterFunc(d time.Duration, f func()) netem.Timer {
	return lateTimerOf{c.SimClock.AfterFunc(d+c.late, f), c.late}
}

type lateTimerOf struct {
	netem.Timer
	late time.Duration
}

func (t lateTimerOf) Reset(d time.Duration) bool { return t.Timer.Reset(d + t.late) }

// TestSplitTimersLate: a timer callback that runs lateTimer or more after
// its deadline is counted (timers-late: the gateway did not get a CPU in
// time, which an operator should see); one on time is not.
func TestSplitTimersLate(t *testing.T) {
	for _, c := range []struct {
		late time.Duration
		want bool
	}{{0, false}, {lateTimer - time.Millisecond, false}, {lateTimer, true}, {30 * time.Millisecond, true}} {
		h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, late: c.late})
		h.establish()
		h.fromW(0, 988, 0) // one segment: its ACK waits for delAck, on the timer
		h.clock.Advance(time.Second)
		st := h.e.Stats()
		if st.TimerFires == 0 {
			t.Fatalf("late %v: no timer callback", c.late)
		}
		if got := st.TimersLate > 0; got != c.want {
			t.Errorf("late %v: %d of %d callbacks counted late, want late %v", c.late, st.TimersLate, st.TimerFires, c.want)
		}
	}
}
