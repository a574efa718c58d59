package fdclock

import (
	"errors"
	"math/rand"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func newClock(t *testing.T) *Clock {
	t.Helper()
	c, err := New()
	if err != nil {
		if runtime.GOOS == "linux" {
			t.Fatal(err)
		}
		t.Logf("no timerfd here (%v): testing the fallback", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (c *Clock) stats() stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// when is the deadline t was given.
func (c *Clock) when(t any) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return t.(*timer).when
}

// TestOrder: timers fire in deadline order, none early, on the clock's
// one goroutine (never two at once).
func TestOrder(t *testing.T) {
	c := newClock(t)
	const n = 200
	var (
		mu      sync.Mutex
		order   []time.Duration // the deadlines, as they ran
		running atomic.Int32
		wg      sync.WaitGroup
	)
	wg.Add(n)
	for range n {
		d := time.Duration(rand.Intn(30_000)) * time.Microsecond
		ready := make(chan time.Duration, 1)
		tm := c.AfterFunc(d, func() {
			defer wg.Done()
			if running.Add(1) != 1 {
				t.Error("two functions ran at once")
			}
			defer running.Add(-1)
			when := <-ready
			if now := c.since(); now < when {
				t.Errorf("a timer due at %v ran at %v", when, now)
			}
			mu.Lock()
			order = append(order, when)
			mu.Unlock()
		})
		ready <- c.when(tm)
	}
	wg.Wait()
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			t.Fatalf("the timer due at %v ran after the one due at %v", order[i], order[i-1])
		}
	}
}

// TestStopReset: Stop and Reset as time.Timer's do for AfterFunc timers.
func TestStopReset(t *testing.T) {
	c := newClock(t)
	ran := make(chan string, 4)
	a := c.AfterFunc(5*time.Millisecond, func() { ran <- "a" })
	b := c.AfterFunc(time.Millisecond, func() { ran <- "b" })
	if !a.Stop() {
		t.Fatal("Stop of a pending timer reported false")
	}
	if a.Stop() {
		t.Fatal("a second Stop reported true")
	}
	if !b.Reset(20 * time.Millisecond) {
		t.Fatal("Reset of a pending timer reported false")
	}
	c.AfterFunc(10*time.Millisecond, func() { ran <- "c" })
	if got := <-ran + <-ran; got != "cb" {
		t.Fatalf("ran %q, want c then b (a stopped, b moved after c)", got)
	}
	if a.Reset(0) {
		t.Fatal("Reset of a stopped timer reported true")
	}
	if got := <-ran; got != "a" {
		t.Fatalf("ran %q after a's Reset", got)
	}
	select {
	case got := <-ran:
		t.Fatalf("%q ran again", got)
	case <-time.After(30 * time.Millisecond):
	}
}

// TestNoWakeForCancelled is the clock's reason to be: a timer stopped, or
// moved later, before its deadline does not wake the process then — the
// runtime's own timers would.
func TestNoWakeForCancelled(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("no timerfd: the fallback wakes as the runtime's timers do")
	}
	c := newClock(t)
	done := make(chan struct{})
	a := c.AfterFunc(2*time.Millisecond, func() { close(done) })
	b := c.AfterFunc(time.Millisecond, func() { t.Error("a stopped timer ran") })
	a.Reset(150 * time.Millisecond)
	b.Stop()
	time.Sleep(50 * time.Millisecond)
	if st := c.stats(); st.wakeups != 0 {
		t.Fatalf("%d wake-ups before any deadline that stood, want 0", st.wakeups)
	}
	<-done
	if st := c.stats(); st.wakeups != 1 || st.fired != 1 {
		t.Fatalf("%+v, want one wake-up, one function", st)
	}
}

// TestRuntimeTimersWake measures what the clock is for, against the
// runtime's timers in the same run: among a daemon's other (live)
// timers, a timer moved later or stopped before its deadline wakes the
// process at that deadline with package time — here, a voluntary context
// switch more per round — and not with the clock.
func TestRuntimeTimersWake(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("no timerfd")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // as the gateway idles: fewer threads waking each other
	c := newClock(t)
	type stopper interface {
		Reset(time.Duration) bool
		Stop() bool
	}
	const rounds = 20
	wakes := func(afterFunc func(time.Duration, func()) stopper) int64 {
		var live []stopper // the runtime cleans its heap early only where stopped timers are a quarter of it
		for range 40 {
			live = append(live, afterFunc(time.Hour, func() {}))
		}
		defer func() {
			for _, l := range live {
				l.Stop()
			}
		}()
		var ran atomic.Int32
		tm := afterFunc(time.Hour, func() { ran.Add(1) })
		defer tm.Stop()
		time.Sleep(10 * time.Millisecond)
		before := nvcsw(t)
		late := false
		for i := range rounds {
			armed := time.Now()
			tm.Reset(2 * time.Millisecond) // a tail probe armed …
			if i%2 == 0 {                  // … and made moot
				tm.Reset(time.Hour)
			} else {
				tm.Stop()
			}
			// A test descheduled past the deadline between the two calls
			// (CI runs other packages beside this one) may see it run.
			late = late || time.Since(armed) >= 2*time.Millisecond
			time.Sleep(5 * time.Millisecond) // one wake-up a round, either way
		}
		if ran.Load() > 0 && !late {
			t.Error("a timer moved away ran")
		}
		return nvcsw(t) - before
	}
	goWakes, clockWakes := int64(1<<62), int64(1<<62)
	for range 3 { // the least of three: the test binary's other threads wake too
		goWakes = min(goWakes, wakes(func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }))
		clockWakes = min(clockWakes, wakes(func(d time.Duration, f func()) stopper { return c.AfterFunc(d, f).(stopper) }))
	}
	t.Logf("voluntary context switches in %d rounds: package time %d, fdclock %d", rounds, goWakes, clockWakes)
	// One more a round with package time: the stale deadline's.
	if goWakes-clockWakes < rounds/2 {
		t.Fatalf("package time %d context switches, fdclock %d: want about %d fewer", goWakes, clockWakes, rounds)
	}
}

func nvcsw(t *testing.T) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Nvcsw
}

// fakeAlarm records what it was set to; wait returns what the test sends.
type fakeAlarm struct {
	mu     sync.Mutex
	sets   []time.Duration
	rings  chan error
	closed chan struct{}
}

func newFake() *fakeAlarm {
	return &fakeAlarm{rings: make(chan error), closed: make(chan struct{})}
}

func (a *fakeAlarm) set(d time.Duration) error {
	a.mu.Lock()
	a.sets = append(a.sets, d)
	a.mu.Unlock()
	return nil
}

func (a *fakeAlarm) wait() error {
	select {
	case err := <-a.rings:
		return err
	case <-a.closed:
		return errors.New("closed")
	}
}

func (a *fakeAlarm) close() error {
	select {
	case <-a.closed:
	default:
		close(a.closed)
	}
	return nil
}

// TestGrain: a deadline that creeps later at every call (a busy flow's
// retransmission timer, at every ACK) sets the alarm once per Grain it
// crosses, not once per call; stopping the last timer disarms it. The
// clock's time is the test's own: on real time a preemption between the
// test reading the time and Reset reading it moves the deadline a grain
// and back (CI saw 15 sets for 12).
func TestGrain(t *testing.T) {
	a := newFake()
	var now atomic.Int64
	c := startOn(a, func() time.Duration { return time.Duration(now.Load()) })
	defer c.Close()
	now.Store(int64(30 * time.Microsecond))
	tm := c.AfterFunc(time.Hour, func() {})
	const steps = 1000
	for i := range steps {
		// Time moves 2 µs a step, the deadline 10 µs later than the
		// last: from 50 ms to 60 ms, crossing 10 grains.
		now.Add(int64(2 * time.Microsecond))
		tm.Reset(50*time.Millisecond + time.Duration(i)*10*time.Microsecond - time.Duration(now.Load()))
	}
	tm.Stop()
	a.mu.Lock()
	sets := append([]time.Duration(nil), a.sets...)
	a.mu.Unlock()
	// One for the hour, one per grid point from 50 to 60 ms (11), one
	// to disarm.
	if len(sets) != 13 {
		t.Fatalf("the alarm was set %d times for a deadline crossing 10 grains in %d steps, want 13: %v", len(sets), steps, sets)
	}
	if last := sets[len(sets)-1]; last > 0 {
		t.Fatalf("after the last Stop the alarm is set for %v, want it disarmed", last)
	}
}

// TestFallback: a timerfd that fails while the clock runs leaves it on a
// runtime timer, still firing.
func TestFallback(t *testing.T) {
	a := newFake()
	c := start(a)
	defer c.Close()
	ran := make(chan struct{})
	c.AfterFunc(5*time.Millisecond, func() { close(ran) })
	a.rings <- errors.New("EBADF")
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("no timer fired after the alarm failed")
	}
	if st := c.stats(); st.fallbacks != 1 {
		t.Fatalf("%+v, want one fallback", st)
	}
}

// TestClose: what is pending at Close never runs, a function running
// finishes before Close returns, and AfterFunc after Close never runs.
func TestClose(t *testing.T) {
	c, _ := New()
	entered, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	c.AfterFunc(0, func() {
		close(entered)
		<-release
		finished.Store(true)
	})
	pending := c.AfterFunc(time.Millisecond, func() { t.Error("a timer pending at Close ran") })
	<-entered
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	time.Sleep(10 * time.Millisecond)
	close(release)
	<-closed
	if !finished.Load() {
		t.Fatal("Close returned while a function ran")
	}
	c.AfterFunc(0, func() { t.Error("a timer made after Close ran") })
	if pending.Stop() || pending.Reset(0) {
		t.Fatal("a timer of a closed clock reported itself pending")
	}
	time.Sleep(20 * time.Millisecond)
	select {
	case <-c.done:
	default:
		t.Fatal("the clock's goroutine is still running")
	}
}

// TestConcurrent: timers reset and stopped from many goroutines and from
// their own functions (run with -race).
func TestConcurrent(t *testing.T) {
	c := newClock(t)
	var fired atomic.Int64
	timers := make([]interface{ Reset(time.Duration) bool }, 16)
	for i := range timers {
		var tm interface{ Reset(time.Duration) bool }
		tm = c.AfterFunc(time.Millisecond, func() {
			if fired.Add(1) < 400 {
				tm.Reset(time.Duration(rand.Intn(500)) * time.Microsecond)
			}
		})
		timers[i] = tm
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				timers[(g+i)%len(timers)].Reset(time.Duration(rand.Intn(2000)) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); fired.Load() < 400; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d functions ran in 10 s", fired.Load())
		}
	}
}

// TestZeroAllocs: moving and stopping a timer allocate nothing (they are
// per ACK in the engine).
func TestZeroAllocs(t *testing.T) {
	c := newClock(t)
	tm := c.AfterFunc(time.Hour, func() {})
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		i++
		tm.Reset(time.Hour + time.Duration(i)*time.Millisecond)
		if i%3 == 0 {
			tm.Stop()
		}
	}); n != 0 {
		t.Fatalf("%.1f allocations per Reset/Stop", n)
	}
}

// TestAround: the functions due at one wake-up run inside one call of the
// SetAround hook — those due together and one a function set due at once
// — and nothing runs outside it; a later wake-up is a call of its own.
func TestAround(t *testing.T) {
	a := newFake()
	var now atomic.Int64
	c := startOn(a, func() time.Duration { return time.Duration(now.Load()) })
	defer c.Close()
	var (
		mu     sync.Mutex
		calls  int
		inside bool
		ran    []int // the call each function ran in (0: outside)
	)
	c.SetAround(func(run func()) {
		mu.Lock()
		calls++
		inside = true
		mu.Unlock()
		run()
		mu.Lock()
		inside = false
		mu.Unlock()
	})
	done := make(chan struct{}, 4)
	note := func() {
		mu.Lock()
		call := 0
		if inside {
			call = calls
		}
		ran = append(ran, call)
		mu.Unlock()
		done <- struct{}{}
	}
	c.AfterFunc(time.Millisecond, note)
	c.AfterFunc(time.Millisecond, func() {
		note()
		c.AfterFunc(0, note) // due at once: this wake-up's too
	})
	now.Store(int64(2 * time.Millisecond))
	a.rings <- nil
	for range 3 {
		<-done
	}
	c.AfterFunc(time.Millisecond, note)
	now.Store(int64(4 * time.Millisecond))
	a.rings <- nil
	<-done
	mu.Lock()
	defer mu.Unlock()
	if want := []int{1, 1, 1, 2}; !slices.Equal(ran, want) {
		t.Fatalf("functions ran in hook calls %v, want %v (0: outside the hook)", ran, want)
	}
}
