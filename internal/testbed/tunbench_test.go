package testbed

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var tunBench = flag.Bool("tunbench", false, "run the TUN-mode gateway throughput harness (10 s per case, three runs each)")

// TestGatewayTUNThroughput: TCP (iperf3, CUBIC: benchCC) from a to b
// through namespace g, which forwards (kernel), or holds espep gateway in
// TUN mode relaying everything (relay), or splitting the flow in
// cleartext (split, --plain); the veths keep their offloads. It reports
// Gbit/s and the gateway's CPU per megabyte, at full rate and at a radio's
// 20 Mbit/s. Without -tunbench it runs each case once for 2 s and holds
// loose bounds; with it, the figures of the README (three runs of 10 s).
// TUNBENCH_ONLY="split split20M" runs only the cases it names (mode and
// rate run together; the bounds are then not held), and ESPEP_BIN=FILE
// runs a given build — two builds side by side in one session:
//
//	go test ./internal/testbed -run TestGatewayTUNThroughput -tunbench -v
func TestGatewayTUNThroughput(t *testing.T) {
	secs, runs := 2, 1
	if *tunBench {
		secs, runs = 10, 3
	}
	shared, boxed := newTUNRig(t, false), newTUNRig(t, true)
	only := os.Getenv("TUNBENCH_ONLY")
	var rows []string
	got := map[string]tunResult{}
	for _, c := range []struct {
		rig        *tunRig
		mode, rate string
	}{{shared, "kernel", ""}, {shared, "relay", ""}, {shared, "split", ""}, {shared, "split", "20M"}, {boxed, "split", ""}, {boxed, "split", "20M"}} {
		if only != "" && !slices.Contains(strings.Fields(only), c.mode+c.rate) {
			continue
		}
		var rs []tunResult
		var all []string
		for range runs {
			r := c.rig.measure(t, c.mode, c.rate, secs)
			all = append(all, fmt.Sprintf("%.2f (%.2f ms/MB, on a CPU %.0f times a s)", r.gbps, r.cpuPerMB, r.slices))
			rs = append(rs, r)
		}
		// The best throughput, the median CPU per megabyte, the most
		// timer callbacks.
		best := slices.MaxFunc(rs, func(a, b tunResult) int { return cmp.Compare(a.gbps, b.gbps) })
		slices.SortFunc(rs, func(a, b tunResult) int { return cmp.Compare(a.cpuPerMB, b.cpuPerMB) })
		best.cpuPerMB = rs[len(rs)/2].cpuPerMB
		best.timerFires = slices.MaxFunc(rs, func(a, b tunResult) int { return cmp.Compare(a.timerFires, b.timerFires) }).timerFires
		name := c.mode
		if c.rate != "" {
			name += "@" + c.rate
		}
		if c.rig.boxed {
			name += " (own CPU)"
		}
		got[name] = best
		rows = append(rows, fmt.Sprintf("| %-20s | %s Gbit/s | %.2f ms CPU/MB (median) |", name, strings.Join(all, ", "), best.cpuPerMB))
	}
	ratio := got["split@20M"].cpuPerMB / got["split"].cpuPerMB
	boxedRatio := got["split@20M (own CPU)"].cpuPerMB / got["split (own CPU)"].cpuPerMB
	t.Logf("TCP through namespace g (iperf3, %s, %d s):\n%s\nCPU per MB at 20 Mbit/s ÷ at full rate: %.2f on shared CPUs, %.2f with g on a CPU of its own",
		benchCC(), secs, strings.Join(rows, "\n"), ratio, boxedRatio)
	if only != "" {
		t.Logf("TUNBENCH_ONLY=%q: the bounds are not held", only)
		return
	}
	// Loose bounds, so that a regression of the kind this harness measures
	// fails CI; the goals are in the README.
	// (Alone, this machine measures relay ~12 and split ~4.6 Gbit/s; CI
	// runs other packages beside this one.)
	if got["relay"].gbps < 2 || got["split"].gbps < 1 {
		t.Errorf("relay %.2f Gbit/s, split %.2f Gbit/s: far below what this machine does", got["relay"].gbps, got["split"].gbps)
	}
	// (Measured alone: 2.3–2.5 over 10 s runs; before the TUN writes
	// were coalesced and GOMAXPROCS followed the load, 5.)
	if got["split@20M"].gbps < 0.015 || ratio > 4 {
		t.Errorf("at 20 Mbit/s: %.3f Gbit/s, CPU per MB %.1f× the full rate's", got["split@20M"].gbps, ratio)
	}
	// At a trickle the engine's timers must not wake it for what an ACK
	// or a push made moot: 38 a second when pushed segments waited for
	// a delayed ACK and a timer left early fired for nothing. What is
	// left is delayed ACKs proper — a burst's last odd segment when the
	// receiver's own ACKs left no budget (ackSlack) to answer its push
	// at once: 0–3 in 10 s on an AMD EPYC here, 0.1–7 a second on an
	// Intel Xeon, varying run to run with the receiver's ACKs.
	if n := got["split@20M"].timerFires; n > 15*secs {
		t.Errorf("at 20 Mbit/s the engine's timers fired %d times in %d s", n, secs)
	}
}

// TestGatewayIdle: espep gateway in TUN mode with nothing to do — a radio
// link between bursts, a night — stays asleep: its threads are put on a
// CPU at most maxIdleSlices times a second. Every wake-up costs, and at a
// radio's rate they are most of what the gateway spends. Before its SA
// files were watched with inotify (they were checked every 200 ms) and
// its governor slowed its sampling when idle: 53 a second and 2.5–2.7 ms
// of CPU; after, 16–24 and 0.9–1.8 ms (same machine, interleaved); and
// with its TUN devices no longer probed every second by wireguard-go's
// monitors (tundev), 3.8–5.0 and 0.6–0.9 ms.
//
//	go test ./internal/testbed -run TestGatewayIdle -v
func TestGatewayIdle(t *testing.T) {
	const maxIdleSlices = 12
	r := newTUNRig(t, false)
	gw := r.startGateway(t, "split", "")
	defer r.stopGateway(t, gw, "idle")
	time.Sleep(1500 * time.Millisecond) // the governor drops to one P after a second
	s0, err := gw.Slices()
	must(t, err)
	c0, err := gw.CPU()
	must(t, err)
	const secs = 4
	time.Sleep(secs * time.Second)
	s1, err := gw.Slices()
	must(t, err)
	c1, err := gw.CPU()
	must(t, err)
	perSec := float64(s1-s0) / secs
	t.Logf("idle gateway: %.1f times on a CPU a second, %.2f ms CPU a second", perSec, (c1-c0).Seconds()*1e3/secs)
	if perSec > maxIdleSlices {
		t.Errorf("an idle gateway was put on a CPU %.1f times a second (at most %d)", perSec, maxIdleSlices)
	}
}

// tunRig is TestGatewayTUNThroughput's network: a — g — b, routed in g.
// Boxed, a and b run on CPU 0 and g on CPU 1, each handling the packets
// that arrive on its interfaces (Bed.Box): g as a machine of its own,
// charged for its own work only — not for the endpoints' TCP, which a
// veth otherwise runs in the context of g's writes — and not preempted by
// the endpoints it wakes.
type tunRig struct {
	b     *Bed
	g     string
	th    *TwoHosts
	dir   string
	boxed bool
}

type tunResult struct {
	gbps, cpuPerMB float64
	slices         float64 // times the gateway's threads were put on a CPU, a second
	timerFires     int     // the engine's timer callbacks (split), from its exit summary
}

func newTUNRig(t *testing.T, boxed bool) *tunRig {
	t.Helper()
	b := ForTest(t)
	dir := t.TempDir()
	ns := routedThree(t, b, "10.83")
	if boxed {
		must(t, b.Box(ns["a"], "0", "a0"))
		must(t, b.Box(ns["b"], "0", "b0"))
		must(t, b.Box(ns["g"], "1", "ga", "gb"))
	}
	must(t, os.WriteFile(filepath.Join(dir, "none.sa"), []byte("espep-sa 1\n"), 0o600))
	return &tunRig{b: b, g: ns["g"], th: &TwoHosts{Bed: b, A: ns["a"], B: ns["b"], BAddr: "10.83.2.1"}, dir: dir, boxed: boxed}
}

// measure runs iperf3 for secs seconds from a to b (at rate, if given)
// with g forwarding (mode kernel) or espep gateway there (relay, split),
// and returns the goodput and the gateway's CPU per megabyte.
func (r *tunRig) measure(t *testing.T, mode, rate string, secs int) (res tunResult) {
	t.Helper()
	var gw *Proc
	if mode != "kernel" {
		gw = r.startGateway(t, mode, rate)
		defer func() { res.timerFires = r.stopGateway(t, gw, mode+rate) }()
	}
	args := []string{"-C", benchCC(), "-t", fmt.Sprint(secs)}
	if rate != "" {
		args = append(args, "-b", rate)
	}
	cpu0, slices0 := time.Duration(0), int64(0)
	if gw != nil {
		cpu0, _ = gw.CPU()
		slices0, _ = gw.Slices()
	}
	ir := iperf(t, r.th, args...)
	res.gbps = ir.End.SumReceived.BitsPerSecond / 1e9
	if gw != nil {
		cpu1, err := gw.CPU()
		must(t, err)
		slices1, err := gw.Slices()
		must(t, err)
		res.slices = float64(slices1-slices0) / float64(secs)
		if mb := ir.End.SumReceived.Bytes / 1e6; mb > 0 {
			res.cpuPerMB = (cpu1 - cpu0).Seconds() * 1e3 / mb // ms of CPU per MB
		}
	}
	return res
}

func (r *tunRig) startGateway(t *testing.T, mode, rate string) *Proc {
	t.Helper()
	conf := filepath.Join(r.dir, mode+".conf")
	body := "espep-gateway 1\nwire = tun:gw-wire\nradio = tun:gw-radio\nroutes = yes\nwire-iface = ga\nradio-iface = gb\nsa-file = none.sa\nstate-dir = state\n"
	if mode == "split" {
		body += "plain = yes\nmode = split\n"
	}
	// TUNBENCH_CONF adds configuration lines (";" between them), e.g.
	// "journal = no": two settings side by side in one session.
	body += strings.ReplaceAll(os.Getenv("TUNBENCH_CONF"), ";", "\n") + "\n"
	must(t, os.WriteFile(conf, []byte(body), 0o600))
	args := []string{espepBin, "gateway", "--config", conf}
	if prof := os.Getenv("TUNBENCH_PROFILE"); prof != "" {
		args = append([]string{"env", "ESPEP_CPUPROFILE=" + prof + "." + mode + rate}, args...)
	}
	gw, err := r.b.Start(r.g, args...)
	must(t, err)
	must(t, waitFor(gw, "gateway running", 10*time.Second))
	return gw
}

// stopGateway stops gw, logs its exit summary's packets per system call
// and the engine's counters — what the CPU per megabyte follows — and
// returns the engine's timer callbacks.
func (r *tunRig) stopGateway(t *testing.T, gw *Proc, name string) (fires int) {
	t.Helper()
	gw.Stop()
	for _, line := range strings.Split(gw.Output(), "\n") {
		if strings.HasPrefix(line, "io: ") || strings.HasPrefix(line, "engine: ") {
			t.Logf("%s: %s", name, line)
		}
		if f := strings.Fields(line); len(f) > 0 && f[0] == "engine:" {
			if i := slices.Index(f, "timer-fires"); i >= 0 && i+1 < len(f) {
				fires, _ = strconv.Atoi(f[i+1])
			}
		}
	}
	return fires
}

// TestGatewayTUNChecksums: the segments split builds leave the gateway
// with their TCP checksums partial (engine.Config.PartialChecksums,
// tunlink's SendPartial), for the device to complete. Between veths
// nobody completes them — the receiver takes a partial checksum as
// verified — so here g's veths have transmit checksumming off: the
// kernel completes every segment in software on its way out, and a and
// b verify what arrives. iperf3 both ways through espep gateway in TUN
// mode, split: data flows, and neither end counts a checksum error.
func TestGatewayTUNChecksums(t *testing.T) {
	r := newTUNRig(t, false)
	for _, dev := range []string{"ga", "gb"} {
		_, err := r.b.Run(r.g, "ethtool", "-K", dev, "tx", "off")
		must(t, err)
	}
	errs := func() (n int) {
		for _, ns := range []string{r.th.A, r.th.B} {
			tcp, err := kernelCounters(r.b, ns, "Tcp:")
			must(t, err)
			e, ok := tcp["InCsumErrors"]
			if !ok {
				t.Fatalf("no Tcp InCsumErrors in %s's /proc/net/snmp: %v", ns, tcp)
			}
			n += e
		}
		return n
	}
	before := errs()
	gw := r.startGateway(t, "split", "")
	var fwd, rev *IperfResult
	func() {
		defer r.stopGateway(t, gw, "split")
		fwd = iperf(t, r.th, "-t", "2")
		rev = iperf(t, r.th, "-t", "2", "-R")
	}()
	ec := counters(gw.Output(), "engine:")
	t.Logf("a to b %.2f Gbit/s, b to a %.2f Gbit/s; engine %v", fwd.End.SumReceived.BitsPerSecond/1e9, rev.End.SumReceived.BitsPerSecond/1e9, ec)
	if ec["early-acked"] < 10<<20 {
		t.Fatalf("the engine split little or nothing: %v", ec)
	}
	if fwd.End.SumReceived.BitsPerSecond < 50e6 || rev.End.SumReceived.BitsPerSecond < 50e6 {
		t.Errorf("%.3f and %.3f Gbit/s through g", fwd.End.SumReceived.BitsPerSecond/1e9, rev.End.SumReceived.BitsPerSecond/1e9)
	}
	if n := errs() - before; n != 0 {
		t.Errorf("a and b counted %d TCP checksum errors", n)
	}
}
