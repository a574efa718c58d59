package procs

import (
	"context"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestPolicy: up to every P at once when busy, down to one only after a
// second of quiet, and a busy interval restarts the count.
func TestPolicy(t *testing.T) {
	p := policy{max: 4}
	steps := []struct {
		used float64
		want int
	}{
		{0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 1}, // a second below a quarter core
		{0.3, 1},                     // between the thresholds: stay
		{0.6, 4},                     // busy: all of them at once
		{0.1, 4}, {0.1, 4}, {0.4, 4}, // quiet interrupted: the count starts again
		{0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 1},
	}
	cur := 4
	for i, s := range steps {
		cur = p.next(cur, s.used)
		if cur != s.want {
			t.Fatalf("step %d (%.1f cores used): %d Ps, want %d", i, s.used, cur, s.want)
		}
	}
	// Sampling slows down only at one P and next to no load.
	for _, s := range []struct {
		cur  int
		used float64
		want time.Duration
	}{{1, 0.001, IdleInterval}, {1, 0.05, Interval}, {4, 0.001, Interval}, {2, 0.6, Interval}} {
		if got := p.wait(s.cur, s.used); got != s.want {
			t.Errorf("at %d Ps, %.3f cores used: next sample in %v, want %v", s.cur, s.used, got, s.want)
		}
	}
}

// TestRun: the governor drops an idle process to one P, gives a busy one
// back every P, and leaves GOMAXPROCS as it found it.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("takes seconds of real time")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, slog.New(slog.DiscardHandler)); close(done) }()
	waitFor := func(want int, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); runtime.GOMAXPROCS(0) != want; time.Sleep(Interval / 4) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: GOMAXPROCS %d, want %d", what, runtime.GOMAXPROCS(0), want)
			}
		}
	}
	waitFor(1, "idle")
	var stop atomic.Bool
	for range 2 {
		go func() {
			for !stop.Load() {
			}
		}()
	}
	waitFor(2, "busy")
	stop.Store(true)
	cancel()
	<-done
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Fatalf("GOMAXPROCS %d after Run, want 2 back", n)
	}
}
