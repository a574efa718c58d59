package testbed

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CPUTimes is one reading of the kernel's per-CPU time counters
// (/proc/stat, in clock ticks): what each CPU spent busy, in softirq, and
// in all. Two readings say which CPU was the bottleneck of what ran
// between them: process CPU time alone misses the kernel's packet work
// done in softirq on another process's time, and cannot tell a process
// that was starved from one that had nothing to do.
type CPUTimes []cpuTicks

type cpuTicks struct{ busy, softirq, total uint64 }

// ReadCPUTimes reads /proc/stat.
func ReadCPUTimes() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, fmt.Errorf("cpu times: %w", err)
	}
	return parseCPUTimes(b)
}

// parseCPUTimes reads the "cpuN user nice system idle iowait irq softirq
// steal …" lines of /proc/stat (proc(5)).
func parseCPUTimes(b []byte) (CPUTimes, error) {
	var ts CPUTimes
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[1+i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("cpu times: %s: %w", f[0], err)
			}
			v[i] = n
		}
		var c cpuTicks
		for _, n := range v {
			c.total += n
		}
		c.busy = c.total - v[3] - v[4] // not idle, not waiting for I/O
		c.softirq = v[6]
		ts = append(ts, c)
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("cpu times: no cpuN lines")
	}
	return ts, nil
}

// Busy describes what each CPU did between t and a later reading: the
// share of its time it was busy and, of that, in softirq, as
// "cpu0 97% (softirq 30%), cpu1 81% (…)".
func (t CPUTimes) Busy(later CPUTimes) string {
	var parts []string
	for i := range min(len(t), len(later)) {
		total := later[i].total - t[i].total
		if total == 0 {
			continue
		}
		pct := func(n uint64) int { return int(100 * n / total) }
		parts = append(parts, fmt.Sprintf("cpu%d %d%% (softirq %d%%)", i,
			pct(later[i].busy-t[i].busy), pct(later[i].softirq-t[i].softirq)))
	}
	return strings.Join(parts, ", ")
}
