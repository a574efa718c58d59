package testbed

import (
	"testing"
)

// TestBridgeCPU: the AF_PACKET bridge (espep linkem, no impairment; the
// same ports as espep gateway on interfaces) between two namespaces,
// iperf3 at a radio's 20 Mbit/s and at full rate: its CPU per megabyte
// at the radio's rate must stay under 1.5× the full rate's (its
// reads wait in the runtime's poller and its system calls are raw, so a
// trickle of frames does not keep the runtime's sysmon awake; measured
// 0.9–0.95×, where blocking reads gave 1.7–2.2×).
func TestBridgeCPU(t *testing.T) {
	perMB := map[string]float64{}
	for _, rate := range []string{"20M", ""} {
		th, err := NewTwoHosts(ForTest(t), espepBin)
		must(t, err)
		args := []string{"-t", "4"}
		if rate != "" {
			args = append(args, "-b", rate)
		}
		c0, err := th.Linkem.CPU()
		must(t, err)
		r := iperf(t, th, args...)
		c1, err := th.Linkem.CPU()
		must(t, err)
		mb := r.End.SumReceived.Bytes / 1e6
		if mb <= 0 {
			t.Fatalf("rate %q: nothing received", rate)
		}
		perMB[rate] = (c1 - c0).Seconds() * 1e3 / mb
		t.Logf("rate %q: %.3f Gbit/s through the bridge, %.2f ms CPU/MB", rate, r.End.SumReceived.BitsPerSecond/1e9, perMB[rate])
		th.Linkem.Stop()
	}
	if ratio := perMB["20M"] / perMB[""]; ratio > 1.5 {
		t.Errorf("CPU per MB at 20 Mbit/s %.2f× the full rate's", ratio)
	}
}
