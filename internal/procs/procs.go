// Package procs fits the Go runtime's processors (GOMAXPROCS) to a packet
// daemon's load: all of them while it is busy, one while it idles at a
// radio's rate.
//
// Why: with more than one P, a goroutine the network poller wakes (a
// packet every few hundred microseconds at 20 Mbit/s) makes the runtime
// wake a second thread to look for work that is not there, and park it
// again — measured through espep gateway at 20 Mbit/s, a sixth of its
// CPU, for no throughput (one core is a small fraction busy). Busy, every
// P is worth its cost. The governor samples the process's CPU time
// (getrusage, kernel time in its system calls included) and moves
// between one P and the most it was started with: up at once when the
// process used more than half a core in an interval, down when it used
// less than a quarter for a second. At one P and next to no load it
// samples only every IdleInterval: each sample wakes the process, which
// at a radio's rate is otherwise asleep (at 5 a second, with the
// runtime's monitor woken with them, they were a third of an idle
// gateway's CPU); load that comes then has every P within IdleInterval.
// It is not for a process whose operator set GOMAXPROCS: the daemon does
// not start it then.
package procs

import (
	"context"
	"log/slog"
	"runtime"
	"syscall"
	"time"
)

// Interval is how often the governor samples the process's CPU time;
// IdleInterval, how often at one P while the process uses less than
// idleBelow of a core.
const (
	Interval     = 200 * time.Millisecond
	IdleInterval = time.Second
)

// The policy's thresholds, in cores used over an interval.
const (
	upAbove   = 0.5 // more: every P at once
	downBelow = 0.25
	downAfter = 5 // intervals below downBelow before one P
	idleBelow = 0.02
)

// policy is the governor's decision, apart from the clock and the runtime.
type policy struct {
	max   int // the most Ps (what the process started with)
	quiet int // consecutive intervals below downBelow
}

// next returns how many Ps to have after an interval in which the process
// used used cores with cur Ps.
func (p *policy) next(cur int, used float64) int {
	switch {
	case used > upAbove:
		p.quiet = 0
		return p.max
	case used < downBelow:
		p.quiet++
		if p.quiet >= downAfter {
			return 1
		}
	default:
		p.quiet = 0
	}
	return cur
}

// wait returns how long to the next sample, at cur Ps after an interval
// in which the process used used cores.
func (p *policy) wait(cur int, used float64) time.Duration {
	if cur == 1 && used < idleBelow {
		return IdleInterval
	}
	return Interval
}

// Run governs GOMAXPROCS until ctx ends, between one and what it is when
// Run is called, and then puts that back. It changes nothing on a
// process with one P.
func Run(ctx context.Context, log *slog.Logger) {
	max := runtime.GOMAXPROCS(0)
	if max <= 1 {
		return
	}
	defer runtime.GOMAXPROCS(max)
	p := policy{max: max}
	t := time.NewTimer(Interval)
	defer t.Stop()
	cpu0, t0 := cpuTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cpu1, t1 := cpuTime(), time.Now()
		used := float64(cpu1-cpu0) / float64(t1.Sub(t0))
		cpu0, t0 = cpu1, t1
		cur := runtime.GOMAXPROCS(0)
		n := p.next(cur, used)
		if n != cur {
			runtime.GOMAXPROCS(n)
			log.Debug("processors follow the load", "gomaxprocs", n, "cores-used", used)
		}
		t.Reset(p.wait(n, used))
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
