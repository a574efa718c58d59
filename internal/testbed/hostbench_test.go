package testbed

import (
	"flag"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	hostBench  = flag.Bool("hostbench", false, "run the espep host throughput harness")
	hostRounds = flag.Int("hostrounds", 1, "rounds of the routed measurement with the router on its own CPU (kernel, split, snoop each round), reported as medians")
)

// TestHostThroughput measures TCP (iperf3, CUBIC: benchCC) between two namespaces
// over a plain veth and, in the same run, through two espep hosts in
// tunnel mode with AES-GCM-128 (raw ESP, and ESP in UDP) and with AES-CBC
// + HMAC-SHA-256, and reports both and their ratio; then the same hosts
// with espep gateway between them — as a transparent bridge (AF_PACKET)
// and in TUN mode in a router, against the hosts through the kernel's
// forwarding there, on shared CPUs and with the router on a CPU of its
// own — with each process's CPU per megabyte. Without -hostbench it runs
// AES-GCM only, 2 s a run, and holds the gateway's cost with loose bounds
// (the figures are in the README); with it:
//
//	go test ./internal/testbed -run TestHostThroughput -hostbench -v
func TestHostThroughput(t *testing.T) {
	// ESP in UDP: the gateway writes a flow's datagrams coalesced.
	udp := hostCase{name: "esp-tunnel-udp-gcm", mode: "tunnel", udp: true, proto: "esp", enc: "aes-gcm16", ekey: 36, integ: "none"}
	secs, cases := 2, []hostCase{hostCases[2], udp}
	if *hostBench {
		secs = 5
		cases = append(cases, hostCase{name: "esp-tunnel-cbc", mode: "tunnel", proto: "esp", enc: "aes-cbc", ekey: 16, integ: "hmac-sha256-128", ikey: 32})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := startHostPairOpt(t, c, false)
			th := &TwoHosts{Bed: p.b, A: p.a, B: p.bn, BAddr: "10.77.1.2"}
			plain := iperf(t, th, "-C", benchCC(), "-t", fmt.Sprint(secs)).End.SumReceived.BitsPerSecond / 1e6
			espep, cpu := hostIperf(t, p, secs)
			t.Logf("%s: plain veth %.0f Mbit/s, through espep host %.0f Mbit/s, ratio %.3f (%s)", c.name, plain, espep, espep/plain, cpu)
			// The same hosts with espep gateway between them (AF_PACKET, a
			// transparent bridge, split), sealing on their SA.
			g := startHostPairVia(t, c, false, []string{"gateway", "--wire", "xa", "--radio", "xb", "--sa", "{sa}", "--state-dir", "{state}"})
			via, cpu := hostIperf(t, g, secs)
			g.mid.Stop()
			gc := counters(g.mid.Output(), "gateway:")
			t.Logf("%s: through espep hosts with espep gateway (AF_PACKET, split) between them %.0f Mbit/s, %.3f of the hosts' own (gateway sealed %d; %s)", c.name, via, via/espep, gc["sealed"], cpu)
			// Loose: 0.24–0.41 here alone since the hosts batch their
			// I/O (0.61–0.65 before, when they were a third as fast);
			// CI runs other packages beside this one.
			if via/espep < 0.12 || gc["sealed"] == 0 {
				t.Errorf("espep gateway between espep hosts: %.3f of their own throughput (sealed %d), want ≥ 0.12", via/espep, gc["sealed"])
			}
			// The gateway's routed mode: m a router, the hosts' own
			// throughput measured through the kernel's forwarding there,
			// then with espep gateway in TUN mode in m, split and snoop —
			// on shared CPUs, and with the router on a CPU of its own.
			hostRouted(t, c, secs, false)
			ratios := map[string][]float64{}
			for range max(*hostRounds, 1) {
				for mode, r := range hostRouted(t, c, secs, true) {
					ratios[mode] = append(ratios[mode], r)
				}
			}
			if *hostRounds > 1 {
				for _, mode := range []string{"split", "snoop"} {
					t.Logf("%s, router on its own CPU, %d rounds: %s of the kernel router, median %.2f (%s)",
						c.name, *hostRounds, mode, median(ratios[mode]), fmtRatios(ratios[mode]))
				}
			}
		})
	}
}

// hostRouted measures espep hosts through a kernel router, then through
// espep gateway in TUN mode, split and snoop, in the router. With boxes
// the hosts share CPU 0 and the router has CPU 1, as on a machine of its
// own (Bed.Box): what the gateway then costs the hosts is what it would
// cost them in the field — being the slower hop — not the processor time
// it takes from them on this two-core machine. It returns each mode's
// throughput as a fraction of the kernel router's.
func hostRouted(t *testing.T, c hostCase, secs int, boxes bool) map[string]float64 {
	t.Helper()
	ratios := map[string]float64{}
	where := "on shared CPUs"
	if boxes {
		where = "router on its own CPU"
	}
	k := startHostPairRouted(t, c, nil, boxes)
	fwd, cpu := hostIperf(t, k, secs)
	kio, _ := hostsIO(k)
	t.Logf("%s, %s: espep hosts through a kernel router %.0f Mbit/s (%s; %s)", c.name, where, fwd, cpu, kio)
	for _, mode := range []string{"split", "snoop"} {
		g := startHostPairRouted(t, c, []string{"gateway", "--wire", "tun:gw-wire", "--radio", "tun:gw-radio", "--routes", "--wire-iface", "xa", "--radio-iface", "xb",
			"--sa", "{sa}", "--state-dir", "{state}", "--mode", mode}, boxes)
		via, cpu := hostIperf(t, g, secs)
		ratios[mode] = via / fwd
		g.mid.Stop()
		gc := counters(g.mid.Output(), "gateway:")
		perWrite, perRead := radioPerWrite(g.mid.Output()), wirePerRead(g.mid.Output())
		gio, extra := hostsIO(g)
		ec := counters(g.mid.Output(), "engine:")
		t.Logf("%s, %s: espep hosts with espep gateway (TUN, %s) in the router %.0f Mbit/s, %.3f of the hosts' own through the kernel router (gateway opened %d, sealed %d, early-acked %d, %.1f packets a read from a, %.1f a write toward b; split's sender held by its cwnd %d times, by its pacer %d, by b's window %d; %d timer wake-ups; %s; %s)\n%s",
			c.name, where, mode, via, via/fwd, gc["opened"], gc["sealed"], ec["early-acked"], perRead, perWrite, ec["cwnd-limited"], ec["pace-limited"], ec["window-limited"], ec["timer-fires"], cpu, gio, ioLine(g.mid.Output()))
		// Split answers host a in b's name, on b's SA, no more often than b
		// does (engine: ackSlack, then one for each of b's packets): the
		// gateway's lead over b stays a few score packets however long the
		// transfer. With an ACK every eighth segment it sent a thousand a
		// second more than b at 1.2 Gbit/s.
		if mode == "split" && extra > maxSplitExtra {
			t.Errorf("espep gateway (TUN, split, %s): host a opened %d packets more on b's SA than b sealed, want ≤ %d", where, extra, maxSplitExtra)
		}
		// ESP in UDP toward b leaves in super-packets the kernel takes
		// (GSO_UDP_L4) and b's host opens: 9–25 datagrams a write
		// here; raw ESP is a write per packet.
		if c.udp && perWrite < 3 {
			t.Errorf("espep gateway (TUN, %s, %s): %.1f ESP-in-UDP packets a write toward b, want them coalesced", mode, where, perWrite)
		}
		// Host a sends runs of datagrams (UDP_SEGMENT), which reach the
		// gateway's TUN whole: ~23 a read here.
		if c.udp && perRead < 3 {
			t.Errorf("espep gateway (TUN, %s, %s): %.1f ESP-in-UDP packets a read from a, want runs of them", mode, where, perRead)
		}
		// Loose: alone, 0.39–0.45 on shared CPUs and 0.53–0.95 with the
		// router on its own (raw ESP at the top, ESP in UDP — where the
		// hosts are fastest — at the bottom); CI runs other packages
		// beside this one.
		want := 0.2
		if boxes {
			want = 0.35
		}
		if via/fwd < want || gc["sealed"] == 0 {
			t.Errorf("espep gateway (TUN, %s, %s) between espep hosts: %.3f of their own throughput (sealed %d), want ≥ %.1f", mode, where, via/fwd, gc["sealed"], want)
		}
	}
	return ratios
}

// median returns the median of xs (the mean of the middle two for an
// even count), 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fmtRatios lists xs with two decimals, in the order measured.
func fmtRatios(xs []float64) string {
	f := make([]string, len(xs))
	for i, x := range xs {
		f[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(f, ", ")
}

// maxSplitExtra bounds the packets split may send in host b's name beyond
// b's own in a run of the host harness: the engine's ackSlack (64) and
// its resends and delayed ACKs, which b's packets pay back.
const maxSplitExtra = 200

// hostsIO stops p's hosts and tells how many packets host b opened and
// in how many TUN writes, and how many it sealed back (its TCP's ACKs):
// what a middle box changes in the hosts' work. extra is how many more
// packets host a opened on b's SA than b sealed: a middle box's own (its
// early ACKs, its resends) — by how far it numbers the SA ahead of b.
//
// It also tells what host b's kernel made of them: how many TCP segments
// (GRO super-packets) it took, how many it joined to its receive queue's
// tail (the reader was behind), and how many ACKs it sent: a receiver
// whose reader keeps up acknowledges more often.
func hostsIO(p *hostPair) (line string, extra int) {
	kb, err := kernelTCPCounters(p.b, p.bn)
	kernel := fmt.Sprintf("host b's TCP took %d segments, joined %d to its queue, sent %d ACKs", kb["InSegs"], kb["TCPRcvCoalesce"], kb["OutSegs"])
	if err != nil {
		kernel = err.Error()
	}
	p.ha.Stop()
	p.hb.Stop()
	sa, sb := hostStats(p.ha.Output()), hostStats(p.hb.Output())
	return fmt.Sprintf("host b opened %d in %d TUN writes, sealed %d back (%s); host a sealed %d, opened %d",
		sb["opened"], sb["tun-writes"], sb["sealed"], kernel, sa["sealed"], sa["opened"]), sa["opened"] - sb["sealed"]
}

// ioLine is espep gateway's exit summary of its devices' I/O.
func ioLine(out string) string {
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, "io: ") {
			return strings.TrimSpace(l)
		}
	}
	return "(no io line)"
}

// radioPerWrite reads from espep gateway's exit summary how many
// packets each write system call toward the radio side carried.
func radioPerWrite(out string) float64 {
	return perCall(out, `radio read \d+ in \d+ batches \(\d+ system calls\), wrote (\d+) in \d+ batches \((\d+) system calls\)`)
}

// wirePerRead reads from espep gateway's exit summary how many packets
// each read system call on the wire side brought.
func wirePerRead(out string) float64 {
	return perCall(out, `wire read (\d+) in \d+ batches \((\d+) system calls\)`)
}

// perCall is the ratio of the two numbers expr finds in out.
func perCall(out, expr string) float64 {
	m := regexp.MustCompile(expr).FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	pkts, _ := strconv.ParseFloat(m[1], 64)
	calls, _ := strconv.ParseFloat(m[2], 64)
	if calls == 0 {
		return 0
	}
	return pkts / calls
}

// hostIperf runs iperf3 for secs seconds from p's host a to host b
// through their tunnel and returns the goodput in Mbit/s and, as text,
// the CPU each espep process (host a, host b, the middle) spent per
// megabyte and how busy each CPU was.
func hostIperf(t *testing.T, p *hostPair, secs int) (mbps float64, cpu string) {
	t.Helper()
	procs := []*Proc{p.ha, p.hb, p.mid}
	names := []string{"host a", "host b", "middle"}
	before := make([]time.Duration, len(procs))
	for i, pr := range procs {
		if pr != nil {
			before[i], _ = pr.CPU()
		}
	}
	cpus, cpuErr := ReadCPUTimes()
	r := iperf(t, &TwoHosts{Bed: p.b, A: p.a, B: p.bn, BAddr: p.lb}, "-C", benchCC(), "-t", fmt.Sprint(secs), "-B", p.la)
	mb := r.End.SumReceived.Bytes / 1e6
	var parts []string
	for i, pr := range procs {
		if pr == nil || mb == 0 {
			continue
		}
		after, err := pr.CPU()
		if err != nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.2f ms CPU/MB", names[i], (after-before[i]).Seconds()*1e3/mb))
	}
	// Which CPU ran out: the processes' own time misses the kernel's
	// forwarding in softirq.
	if later, err := ReadCPUTimes(); cpuErr == nil && err == nil {
		parts = append(parts, "CPUs busy: "+cpus.Busy(later))
	}
	return r.End.SumReceived.BitsPerSecond / 1e6, strings.Join(parts, ", ")
}
