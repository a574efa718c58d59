package engine

import (
	"math"
	"testing"
	"time"
)

// TestPacerRate: over a second, a pacer lets through its rate (plus the
// burst it starts with), in sends spaced as the rate says.
func TestPacerRate(t *testing.T) {
	const rate, burst, n = 1e6, 3000.0, 1000 // 1 MB/s, 1000-byte sends
	t0 := time.Unix(100, 0)
	p := pacer{at: t0}
	sent, now := 0, t0
	for now.Before(t0.Add(time.Second)) {
		ok, at := p.allow(n, n, rate, burst, now)
		if ok {
			sent += n
			continue
		}
		if !at.After(now) {
			t.Fatalf("refused at %v, told to come back at %v", now, at)
		}
		if d := at.Sub(now); d > time.Millisecond+time.Microsecond {
			t.Fatalf("told to wait %v for 1000 bytes at 1 MB/s", d)
		}
		now = at
	}
	if sent < 1e6-n || sent > 1e6+n {
		t.Fatalf("%d bytes in a second at 1 MB/s from an empty bucket", sent)
	}
}

// TestPacerBurst: idle time saves up at most burst bytes; a refused send
// goes at exactly the time it was given.
func TestPacerBurst(t *testing.T) {
	const rate, burst = 1e6, 4000.0
	t0 := time.Unix(100, 0)
	p := pacer{at: t0}
	now := t0.Add(10 * time.Second) // 10 MB of idle time
	got := 0
	for {
		ok, at := p.allow(1000, 1000, rate, burst, now)
		if !ok {
			if want := now.Add(time.Millisecond); at.Sub(want).Abs() > time.Microsecond {
				t.Fatalf("next send at %v, want %v", at, want)
			}
			if ok, _ := p.allow(1000, 1000, rate, burst, at); !ok {
				t.Fatal("refused at the time it was given")
			}
			break
		}
		got += 1000
	}
	if got != int(burst) {
		t.Fatalf("%d bytes at once after 10 s idle, want the burst %v", got, burst)
	}
}

// TestPaceWithoutRate: a controller that leaves pacing to the engine is
// paced at twice its window per SRTT, and not at all before an RTT sample.
func TestPaceWithoutRate(t *testing.T) {
	e := &shard{cfg: &Config{}}
	st := &stream{smss: 1000}
	st.cc, _ = newController(CCReno, 1000) // cwnd 10 000
	now := time.Unix(100, 0)
	for range 100 {
		if !e.pace(st, 1000, now) {
			t.Fatal("paced before the first RTT sample")
		}
	}
	st.srtt = 100 * time.Millisecond // 2·10 000 B / 100 ms = 200 kB/s
	st.pacer = pacer{at: now}
	sent := 0
	for end := now.Add(time.Second); now.Before(end); {
		if e.pace(st, 1000, now) {
			sent += 1000
			continue
		}
		now = st.paceAt
	}
	if math.Abs(float64(sent)-200e3) > 3000 {
		t.Fatalf("%d bytes in a second, want 200 kB", sent)
	}
}

// TestPacerLateWakeups: a sender whose wake-ups all come late — by less
// than maxCatchUp, as a busy machine's timers do — still gets the pacing
// rate, not a burst per wake-up. Without the credit for a late turn it got
// 0.29 of it with wake-ups 5 ms late and 0.11 at 15 ms, and a controller
// that measures what it delivered would have taken that for the path's
// bandwidth.
func TestPacerLateWakeups(t *testing.T) {
	const rate, n = 2.5e6, 1400 // a 20 Mbit/s radio
	burst := max(2*n, rate*pacingBurst.Seconds())
	for _, late := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 15 * time.Millisecond} {
		t0 := time.Unix(100, 0)
		p := pacer{at: t0}
		sent, now := 0, t0
		for now.Before(t0.Add(time.Second)) {
			ok, at := p.allow(n, 2*n, rate, burst, now)
			if ok {
				sent += n
				continue
			}
			now = at.Add(late)
		}
		if got := float64(sent) / rate; got < 0.97 || got > 1.03 {
			t.Errorf("wake-ups %v late: %.2f of the rate in a second", late, got)
		}
	}
}

// TestPacerCatchUpBounds: a late turn is made up for at most maxCatchUp
// (past the burst), and not at all for a sender that stopped for another
// reason (release) — one that had nothing to send saves up only the burst.
func TestPacerCatchUpBounds(t *testing.T) {
	const rate, n = 1e6, 1000
	const burst = 2000.0
	drained := func() (pacer, time.Time, time.Time) {
		t0 := time.Unix(100, 0)
		p := pacer{at: t0}
		for {
			if ok, at := p.allow(n, n, rate, burst, t0); !ok {
				return p, t0, at
			}
		}
	}
	burstAt := func(p *pacer, now time.Time) int {
		got := 0
		for {
			if ok, _ := p.allow(n, n, rate, burst, now); !ok {
				return got
			}
			got += n
		}
	}
	p, _, at := drained()
	if got := burstAt(&p, at.Add(10*time.Millisecond)); got != 11*n {
		t.Errorf("10 ms late: %d bytes at once, want the turn and 10 ms of the rate (%d)", got, 11*n)
	}
	p, _, at = drained()
	if got, want := burstAt(&p, at.Add(time.Second)), int(burst+rate*maxCatchUp.Seconds()); got != want {
		t.Errorf("a second late: %d bytes at once, want the burst and maxCatchUp of the rate (%d)", got, want)
	}
	p, _, at = drained()
	p.release()
	if got := burstAt(&p, at.Add(10*time.Millisecond)); got != int(burst) {
		t.Errorf("released, then back 10 ms on: %d bytes at once, want the burst %v", got, burst)
	}
}

// TestPacerWakesForAQuantum: a held sender is woken when a quantum has
// accrued (never more than the burst), not for every segment.
func TestPacerWakesForAQuantum(t *testing.T) {
	const rate = 1e6
	t0 := time.Unix(100, 0)
	for _, c := range []struct {
		wake  int
		burst float64
		want  time.Duration
	}{{1000, 8000, time.Millisecond}, {4000, 8000, 4 * time.Millisecond}, {50000, 8000, 8 * time.Millisecond}} {
		p := pacer{at: t0}
		if ok, _ := p.allow(1000, c.wake, rate, c.burst, t0); ok {
			t.Fatal("an empty bucket let a segment go")
		}
		_, at := p.allow(1000, c.wake, rate, c.burst, t0)
		if d := at.Sub(t0); (d - c.want).Abs() > time.Microsecond {
			t.Errorf("wake %d, burst %v: woken after %v, want %v", c.wake, c.burst, d, c.want)
		}
	}
	st := &stream{smss: 1400}
	if q := bbrQuantum(2.5e6, st.smss); q != 2800 {
		t.Errorf("quantum at 20 Mbit/s: %d bytes, want two segments", q)
	}
}

// TestPacerHoldsForAQuantum: a held sender stays held until its quantum
// has accrued, whatever asks before — a segment's worth accrued is not
// enough — and then goes with the quantum; sooner if the rate rose; a
// sender released (stopped by something else) is not held.
func TestPacerHoldsForAQuantum(t *testing.T) {
	const rate, n, quantum, burst = 1e6, 1000, 4000, 8000.0
	t0 := time.Unix(100, 0)
	p := pacer{at: t0}
	ok, due := p.allow(n, quantum, rate, burst, t0)
	if ok || due.Sub(t0) != 4*time.Millisecond {
		t.Fatalf("empty bucket: ok %v, held until %v, want 4 ms on", ok, due.Sub(t0))
	}
	for _, at := range []time.Duration{time.Millisecond, 3 * time.Millisecond, 4*time.Millisecond - time.Microsecond} {
		if ok, d := p.allow(n, quantum, rate, burst, t0.Add(at)); ok || d.Sub(due).Abs() > time.Microsecond {
			t.Fatalf("%v on, before the quantum: ok %v, held until %v", at, ok, d.Sub(t0))
		}
	}
	sent := 0
	for {
		if ok, _ := p.allow(n, quantum, rate, burst, due); !ok {
			break
		}
		sent += n
	}
	if sent != quantum {
		t.Fatalf("at its turn the sender sent %d bytes, want the quantum %d", sent, quantum)
	}
	// The rate doubles while the sender is held: it goes when the quantum
	// has accrued at the new rate, not at the turn the old one gave.
	p = pacer{at: t0}
	p.allow(n, quantum, rate, burst, t0)
	if ok, _ := p.allow(n, quantum, 2*rate, burst, t0.Add(time.Millisecond)); ok {
		t.Fatal("let out with half its quantum")
	}
	if ok, _ := p.allow(n, quantum, 2*rate, burst, t0.Add(2*time.Millisecond+time.Microsecond)); !ok {
		t.Fatal("held past its quantum at the new rate")
	}
	p = pacer{at: t0}
	p.allow(n, quantum, rate, burst, t0)
	p.release()
	if ok, _ := p.allow(n, quantum, rate, burst, t0.Add(time.Millisecond)); !ok {
		t.Fatal("a released sender was held for its quantum")
	}
}
