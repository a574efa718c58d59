package testbed

import (
	"testing"
)

// TestBridgeCPU: the AF_PACKET bridge (espep linkem, no impairment; the
// same ports as espep gateway on interfaces) between two namespaces,
// iperf3 at a radio's 20 Mbit/s and at full rate: its CPU per megabyte
// at the radio's rate must stay within 2.5× the full rate's (its
// reads wait in the runtime's poller and its system calls are raw, so a
// trickle of frames does not keep the runtime's sysmon awake). Measured
// 0.9–0.95× on a 2-core AMD EPYC, where blocking reads gave 1.7–2.2×;
// 1.4–1.8× on the 2-core Intel Xeon that replaced it, where a trickle
// costs more per burst (5.2–5.7 ms/MB at 20 Mbit/s) and full rate less
// (3.2–4.0).
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
	if ratio := perMB["20M"] / perMB[""]; ratio > 2.5 {
		t.Errorf("CPU per MB at 20 Mbit/s %.2f× the full rate's", ratio)
	}
}
