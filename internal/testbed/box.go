package testbed

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Box makes namespace ns stand for a machine of its own on this one: every
// command started in it from now on (Start, Run) runs on the CPUs in list
// (CPU numbers separated by commas, e.g. "0" or "0,1"), and the packets arriving on its
// interfaces devs are processed there too (receive packet steering; a veth
// otherwise handles a frame in the sender's context, on the sender's
// CPU). Two namespaces boxed on different CPUs then share no processor
// time: what one costs does not slow the other, as between two machines.
func (b *Bed) Box(ns, list string, devs ...string) error {
	mask, err := cpuMask(list)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return fmt.Errorf("box %s: %w", ns, err)
	}
	for _, dev := range devs {
		// ip netns exec mounts the namespace's own /sys.
		cmd := fmt.Sprintf("echo %x > /sys/class/net/%s/queues/rx-0/rps_cpus", mask, dev)
		if _, err := b.Run(ns, "sh", "-c", cmd); err != nil {
			return fmt.Errorf("box %s: %w", ns, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cpus == nil {
		b.cpus = map[string]string{}
	}
	b.cpus[ns] = list
	return nil
}

// execArgs is the ip(8) command line that runs args in ns, on the CPUs
// Box gave it.
func (b *Bed) execArgs(ns string, args []string) []string {
	b.mu.Lock()
	list := b.cpus[ns]
	b.mu.Unlock()
	pre := []string{"netns", "exec", ns}
	if list != "" {
		pre = append(pre, "taskset", "-c", list)
	}
	return append(pre, args...)
}

// cpuMask turns a comma-separated list of CPU numbers into a bit mask.
func cpuMask(list string) (uint64, error) {
	var m uint64
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > 63 {
			return 0, fmt.Errorf("cpu list %q: want numbers 0–63 separated by commas", list)
		}
		m |= 1 << n
	}
	return m, nil
}
