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

// Timer is a pending AfterFunc.
type Timer interface{ Stop() bool }

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
	q   eventHeap
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

func (t simTimer) Stop() bool {
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
	c.seq++
	ev := &event{at: c.now.Add(max(d, 0)), seq: c.seq, f: f}
	c.q.push(ev)
	return simTimer{c, ev}
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
		ev := c.q.peek()
		if ev == nil || ev.at.After(t) {
			if t.After(c.now) {
				c.now = t
			}
			c.mu.Unlock()
			return
		}
		c.q.pop()
		if ev.at.After(c.now) {
			c.now = ev.at
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
		if !e.done {
			n++
		}
	}
	return n
}

type event struct {
	at   time.Time
	seq  uint64 // FIFO among equal times
	f    func()
	done bool
}

// eventHeap is a min-heap by (at, seq).
type eventHeap []*event

func (h eventHeap) less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}

func (h *eventHeap) push(e *event) {
	*h = append(*h, e)
	for i := len(*h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		(*h)[i], (*h)[p] = (*h)[p], (*h)[i]
		i = p
	}
}

func (h eventHeap) peek() *event {
	if len(h) == 0 {
		return nil
	}
	return h[0]
}

func (h *eventHeap) pop() *event {
	old := *h
	n := len(old) - 1
	top := old[0]
	old[0] = old[n]
	old[n] = nil
	*h = old[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h.less(l, m) {
			m = l
		}
		if r < n && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		(*h)[i], (*h)[m] = (*h)[m], (*h)[i]
		i = m
	}
	return top
}
