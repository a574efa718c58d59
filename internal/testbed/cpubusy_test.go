package testbed

import "testing"

// TestCPUTimes: two readings of /proc/stat's per-CPU lines give each
// CPU's busy and softirq shares; the all-CPU line and other lines are
// skipped, and a line that does not parse is an error; this machine's
// /proc/stat parses.
func TestCPUTimes(t *testing.T) {
	const before = `cpu  300 0 300 1400 0 0 100 0 0 0
cpu0 100 0 100 700 0 0 50 0 0 0
cpu1 200 0 200 700 0 0 50 0 0 0
intr 12345
ctxt 999
`
	// cpu0: 100 more ticks, 90 busy (30 of them softirq, 10 iowait not
	// busy); cpu1: 200 more, all idle.
	const after = `cpu  0 0 0 0 0 0 0 0 0 0
cpu0 130 0 130 700 10 0 80 0 0 0
cpu1 200 0 200 900 0 0 50 0 0 0
`
	b, err := parseCPUTimes([]byte(before))
	if err != nil {
		t.Fatal(err)
	}
	a, err := parseCPUTimes([]byte(after))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.Busy(a), "cpu0 90% (softirq 30%), cpu1 0% (softirq 0%)"; got != want {
		t.Errorf("Busy = %q, want %q", got, want)
	}
	for _, bad := range []string{"cpu0 1 2 3 x 5 6 7 8\n", "intr 1\n", ""} {
		if _, err := parseCPUTimes([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := ReadCPUTimes(); err != nil {
		t.Fatal(err)
	}
}
