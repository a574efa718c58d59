// Package fdclock is a clock (netem.Clock) for timers that are moved or
// cancelled far more often than they fire — a TCP sender's retransmission
// and probe timers, re-armed at every ACK — in a process that is mostly
// asleep between packets. It is not a general replacement for package
// time: its functions run one after another on one goroutine.
//
// Why: the Go runtime stops or moves a timer lazily. A stopped timer, or
// one moved later, keeps its old place in the runtime's timer heap until
// that old deadline comes, and the runtime's network poller sleeps only
// until then: the process wakes for nothing. Through espep gateway at a
// radio's rate (a burst every few tens of milliseconds, its tail probe
// armed a fraction of a millisecond ahead and made moot by the ACK that
// follows) that was one wake-up for nothing in every burst, as many as
// the packets' own. Here the pending timers are a heap of the clock's
// own, and its one wake-up is a timerfd in the runtime's poller, set to
// the earliest deadline whenever that changes: a cancelled timer costs a
// system call, never a wake-up.
//
// Deadlines are kept to a grid of Grain (a timer fires up to Grain late,
// as the runtime's own poller rounds its sleeps up to a millisecond), so
// that a deadline creeping later at every ACK of a busy flow re-arms the
// timerfd at most once per Grain.
package fdclock

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/netem"
)

// Grain is the grid the timerfd's expiry is rounded up to.
const Grain = time.Millisecond

// alarm is the clock's one wake-up (a timerfd on Linux).
type alarm interface {
	// set makes wait return d from now; d ≤ 0 disarms it.
	set(d time.Duration) error
	// wait blocks until the alarm goes off or is closed (an error).
	wait() error
	close() error
}

// Clock runs functions at times, on its own goroutine, one after another.
// Its methods may be called from any goroutine, and from the functions.
type Clock struct {
	// elapsed is the time since the clock started (monotonic); every
	// deadline is a duration on it. Tests give one they move themselves.
	elapsed func() time.Duration

	mu      sync.Mutex
	q       queue
	alarm   alarm
	armedAt time.Duration // the grid point the alarm is set for; 0: disarmed
	closed  bool
	st      stats
	// around wraps each wake-up's functions (SetAround).
	around atomic.Pointer[func(run func())]

	done chan struct{}
}

// stats are the clock's counters, for its tests.
type stats struct {
	wakeups uint64 // the alarm went off
	fired   uint64 // functions run
	arms    uint64 // the alarm set or disarmed (system calls)
	// fallbacks: the timerfd failed and the clock went on with a
	// runtime timer.
	fallbacks uint64
}

// New returns a running clock; Close stops it. Where the platform has no
// timerfd, or it cannot be made, the clock's alarm is a runtime timer
// (correct, without the benefit); New reports why then.
func New() (*Clock, error) {
	a, err := newAlarm()
	if err != nil {
		return start(newGoAlarm()), fmt.Errorf("fdclock: %w", err)
	}
	return start(a), nil
}

func start(a alarm) *Clock {
	base := time.Now()
	return startOn(a, func() time.Duration { return time.Since(base) })
}

// startOn starts a clock whose time is elapsed.
func startOn(a alarm, elapsed func() time.Duration) *Clock {
	c := &Clock{elapsed: elapsed, alarm: a, done: make(chan struct{})}
	go c.run()
	return c
}

// Now is the wall clock (with its monotonic reading).
func (c *Clock) Now() time.Time { return time.Now() }

func (c *Clock) since() time.Duration { return c.elapsed() }

// AfterFunc runs f on the clock's goroutine d from now, unless the
// returned timer is stopped first. After Close it never runs.
func (c *Clock) AfterFunc(d time.Duration, f func()) netem.Timer {
	t := &timer{c: c, f: f, index: -1}
	t.Reset(d)
	return t
}

// Close stops the clock: functions not yet started never run, the one
// running (if any) finishes first, so Close must not be called from one.
// Stop the timers' owners before it; its timers may still be stopped or
// reset after it, doing nothing.
func (c *Clock) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for i, t := range c.q {
		t.index = -1
		c.q[i] = nil
	}
	c.q = c.q[:0]
	err := c.alarm.close() // wakes the run loop with an error
	c.mu.Unlock()
	<-c.done
	return err
}

// run waits for the alarm and runs what is due, until Close. It takes
// the due timers one at a time, so that one stopped by a function before
// it, or by Close, does not run.
func (c *Clock) run() {
	defer close(c.done)
	for {
		err := c.alarm.wait()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.armedAt = 0 // an alarm that went off is disarmed
		if err != nil {
			// The descriptor failed while the clock runs: no timer
			// would fire again, stalling every flow. Go on with the
			// runtime's timers, which only wake the process more.
			c.alarm.close()
			c.alarm = newGoAlarm()
			c.st.fallbacks++
		} else {
			c.st.wakeups++
		}
		c.mu.Unlock()
		if !c.fireDue() {
			return
		}
		c.mu.Lock()
		c.rearm()
		c.mu.Unlock()
	}
}

// SetAround has the functions due at one wake-up run inside one call of
// around, which must call what it is given exactly once: a packet
// daemon's output can then be batched around them (tunlink.Link.Batch —
// a timer that sends a burst would otherwise write it a packet at a
// time). Safe to call while the clock runs.
func (c *Clock) SetAround(around func(run func())) { c.around.Store(&around) }

// fireDue runs the due timers' functions, one at a time in deadline
// order (one stopped by a function before it does not run), inside the
// around hook if there is one; it reports false if the clock was closed
// meanwhile.
func (c *Clock) fireDue() (open bool) {
	open = true
	run := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for len(c.q) > 0 && c.q[0].when <= c.since() {
			t := c.q.pop()
			c.st.fired++
			c.mu.Unlock()
			t.f()
			c.mu.Lock()
			if c.closed {
				open = false
				return
			}
		}
	}
	if around := c.around.Load(); around != nil {
		(*around)(run)
	} else {
		run()
	}
	return open
}

// rearm sets the alarm for the earliest deadline, rounded up to the grid,
// if it is not set for that already; c.mu is held.
func (c *Clock) rearm() {
	if c.closed {
		return
	}
	var at time.Duration
	if len(c.q) > 0 {
		at = (c.q[0].when + Grain - 1) / Grain * Grain
		at = max(at, Grain) // 0 means disarmed
	}
	if at == c.armedAt {
		return
	}
	d := at - c.since()
	if at != 0 && d <= 0 {
		d = 1 // due already: at once (0 would disarm)
	}
	c.st.arms++
	if err := c.alarm.set(d); err != nil {
		// Only a closed or invalid descriptor fails: the run loop
		// sees the same error at its next wait.
		c.armedAt = 0
		return
	}
	c.armedAt = at
}

// timer is a function scheduled on a Clock.
type timer struct {
	c     *Clock
	f     func()
	when  time.Duration // on c.elapsed
	index int           // in c.q; -1 when not pending
}

// Reset schedules the function d from now, whether or not it has run; it
// reports whether it was pending.
func (t *timer) Reset(d time.Duration) bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := t.index >= 0
	if c.closed {
		return pending
	}
	t.when = c.since() + max(d, 0)
	if pending {
		c.q.fix(t.index)
	} else {
		c.q.push(t)
	}
	c.rearm()
	return pending
}

// Stop cancels the function if it has not started; it reports whether it
// was pending.
func (t *timer) Stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.index < 0 {
		return false
	}
	c.q.remove(t.index)
	c.rearm()
	return true
}
