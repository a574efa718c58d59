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
		ok, at := p.allow(n, rate, burst, now)
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
		ok, at := p.allow(1000, rate, burst, now)
		if !ok {
			if want := now.Add(time.Millisecond); at.Sub(want).Abs() > time.Microsecond {
				t.Fatalf("next send at %v, want %v", at, want)
			}
			if ok, _ := p.allow(1000, rate, burst, at); !ok {
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
