package netem

import (
	"sync"
	"time"
)

// A Clock tells time and runs functions later. RealClock uses the time
// package (and so also works inside a testing/synctest bubble); SimClock
// advances only when told to.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once, d from now, on a goroutine of the clock's
	// choosing; Stop cancels it.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc. Reset schedules its function again, d from
// now, whether or not it has run (as time.Timer.Reset does for AfterFunc
// timers); it reports whether the timer was still pending.
type Timer interface {
	Stop() bool
	Reset(d time.Duration) bool
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }
func (RealClock) AfterFunc(d time.Duration, f func()) Timer {
	return time.AfterFunc(d, f)
}

// SimClock is a discrete-event clock: time stands still until Advance or
// Run moves it, and due functions run on the caller's goroutine in time
// order. It is safe for concurrent use; functions may schedule more.
type SimClock struct {
	mu  sync.Mutex
	now time.Time
	q   timeHeap[*event]
	seq uint64
}

// NewSimClock returns a clock that starts at start.
func NewSimClock(start time.Time) *SimClock { return &SimClock{now: start} }

func (c *SimClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

type simTimer struct {
	c  *SimClock
	ev *event
}

func (t *simTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	pending := !t.ev.done
	t.ev.done = true
	t.ev = t.c.schedule(d, t.ev.f)
	return pending
}

func (t *simTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.ev.done {
		return false
	}
	t.ev.done = true
	return true
}

func (c *SimClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &simTimer{c, c.schedule(d, f)}
}

// schedule queues f, d from now; c.mu is held.
func (c *SimClock) schedule(d time.Duration, f func()) *event {
	c.seq++
	ev := &event{f: f}
	c.q.push(timed[*event]{at: c.now.Add(max(d, 0)), seq: c.seq, v: ev})
	return ev
}

// Advance moves the clock forward by d, running everything that falls due
// on the way, in order.
func (c *SimClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	c.RunUntil(end)
}

// RunUntil runs every event due at or before t, then sets the time to t.
func (c *SimClock) RunUntil(t time.Time) {
	for {
		c.mu.Lock()
		if len(c.q) == 0 || c.q[0].at.After(t) {
			if t.After(c.now) {
				c.now = t
			}
			c.mu.Unlock()
			return
		}
		next := c.q.pop()
		ev := next.v
		if next.at.After(c.now) {
			c.now = next.at
		}
		done := ev.done
		ev.done = true
		c.mu.Unlock()
		if !done {
			ev.f()
		}
	}
}

// Pending reports how many events are scheduled.
func (c *SimClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.q {
		if !e.v.done {
			n++
		}
	}
	return n
}

// event is a function scheduled on a SimClock.
type event struct {
	f    func()
	done bool
}
