package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/simnet"
)

// TestLab runs a short scenario set: every run passes its own checks
// (SHA-256 of each transfer, the endpoints' IPsec refusing nothing), and
// at 2 % loss split beats end-to-end TCP by a wide margin with and without
// IPsec, inside IP-in-IP, with a read or write gateway, and with SAs the
// security server pushed to a gateway that started with none. (The goal
// figures live in the engine and gateway harnesses, not here.)
//
// The margin is a real-time figure. CI once (2026-12-03; in no earlier
// stop on record) saw split in transport mode at 6.77 Mbit/s, 2.2× end
// to end, its threads waiting for a CPU 0.31 of the time after two
// retries, while every other split row made 17–19; that evening, under
// one or two busy loops or beside the TUN harness at full rate (waits up
// to 0.55), 90 split rows made 0.96–1.00 of the limit — what stalled
// that run is not known. A miss of the margin alone is therefore
// measured once more, said in the log, and the second run must hold
// every check; anything else fails at once.
//
// With -short (the race detector's run) only the IP-in-IP pair runs, for a
// second, and only the checks are asserted.
func TestLab(t *testing.T) {
	rows := measureTwice(t, "split missed its margin", labShort)
	if t.Failed() {
		return
	}
	// One JSON object per row, with the fields the issue names.
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	for _, r := range rows {
		enc.Encode(r.Rounded())
	}
	dec := json.NewDecoder(&out)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"scenario", "mode", "ipsec", "loss", "goodput_mbps", "limit_ratio", "e2e_ratio", "integrity"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("JSON row without %q: %v", k, m)
			}
		}
	}
}

// measureTwice runs measure — which returns its rows, what failed their
// checks, and apart from those what missed only a real-time figure
// (slow) — and once more, saying why in the log, when slow is all that
// failed: the second run must hold every check. It reports every miss of
// the run it keeps and returns that run's rows.
func measureTwice(t *testing.T, why string, measure func(*testing.T) (rows []Row, errs, slow []string)) []Row {
	t.Helper()
	rows, errs, slow := measure(t)
	if len(errs) == 0 && len(slow) > 0 {
		t.Logf("%s (%s); measuring again", why, strings.Join(slow, "; "))
		rows, errs, slow = measure(t)
	}
	for _, e := range append(errs, slow...) {
		t.Error(e)
	}
	return rows
}

// labShort runs TestLab's scenarios and returns their rows, what failed
// their checks, and apart from those the split rows under 3× end to end.
func labShort(t *testing.T) (rows []Row, errs, slow []string) {
	t.Helper()
	names, d, want := []string{"ipsec", "class", "secserver", "ipip"}, 2*time.Second, 14
	if testing.Short() {
		names, d, want = []string{"ipip"}, time.Second, 2
	}
	rows, err := Run(context.Background(), Config{Duration: d, Seed: 3}, names)
	if err != nil {
		t.Fatal(err)
	}
	var tbl bytes.Buffer
	Table(&tbl, rows)
	t.Logf("\n%s", tbl.String())
	if len(rows) != want {
		t.Fatalf("%d rows, want %d", len(rows), want)
	}
	for _, r := range rows {
		if r.Integrity != "pass" {
			errs = append(errs, fmt.Sprintf("%s %s %s: %s", r.Scenario, r.Mode, r.IPsec, r.Detail))
		}
		if testing.Short() {
			continue
		}
		if r.Mode == ModeSplit && r.E2ERatio < 3 {
			slow = append(slow, fmt.Sprintf("%s %s: split only %.1f× end to end at 2 %% loss (cpu wait %.2f)", r.Scenario, r.IPsec, r.E2ERatio, r.CPUWait))
		}
		if r.Scenario == "secserver" && r.Mode == ModeSplit && (r.SAReadyMs <= 0 || r.SAReadyMs > 1000 || r.FirstSealMs <= 0) {
			errs = append(errs, fmt.Sprintf("secserver: SAs at the gateway after %.1f ms, first re-seal %.1f ms", r.SAReadyMs, r.FirstSealMs))
		}
		if r.LimitMbps <= 0 || r.LimitMbps > 20 || r.GoodputMbps > r.LimitMbps*1.05 {
			errs = append(errs, fmt.Sprintf("%s %s %s: %.2f Mbit/s against a limit of %.2f", r.Scenario, r.Mode, r.IPsec, r.GoodputMbps, r.LimitMbps))
		}
	}
	return rows, errs, slow
}

// TestLabOutagePlot: the fade scenario's picture is well-formed SVG with a
// line per mode and the fade marked.
func TestLabOutagePlot(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time transfers")
	}
	rows, err := Run(context.Background(), Config{Duration: 2 * time.Second, Seed: 5}, []string{"outage"})
	if err != nil {
		t.Fatal(err)
	}
	var svg bytes.Buffer
	if err := Plot(&svg, "fade", rows, Marks{Fade: rows[0].Fade}); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(svg.Bytes()))
	lines := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 3 || !strings.Contains(svg.String(), "radio down") {
		t.Fatalf("%d lines, fade marked: %v", lines, strings.Contains(svg.String(), "radio down"))
	}
	for _, r := range rows {
		if r.Integrity != "pass" || r.Fade[1] <= r.Fade[0] {
			t.Fatalf("%+v", r)
		}
	}
}

func TestJain(t *testing.T) {
	for _, tc := range []struct {
		x    []float64
		want float64
	}{{[]float64{5, 5, 5, 5}, 1}, {[]float64{20, 0, 0, 0}, 0.25}, {[]float64{0, 0}, 0}} {
		if got := jain(tc.x); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("jain(%v) = %v, want %v", tc.x, got, tc.want)
		}
	}
}

func TestRunRefusesUnknown(t *testing.T) {
	if _, err := Run(context.Background(), Config{}, []string{"nosuch"}); err == nil {
		t.Fatal("an unknown scenario ran")
	}
	if _, err := Run(context.Background(), Config{Duration: time.Millisecond}, nil); err == nil {
		t.Fatal("a 1 ms duration was accepted")
	}
}

// TestLabNotCPUBound: the lab's figures are the network's, not the
// machine's. With the CPU taken from it (processes spinning at a higher
// priority), a run's threads wait for the CPU and the lab says so
// (CPUBound, with no retries); with the CPU free, the same run is not
// CPU-bound and the fade row holds its figure: split at ≥ 0.90 of what the
// radio can carry through a 750 ms fade (0.954–0.964 measured alone,
// 0.94–0.95 beside two busy loops, its threads waiting 0.13–0.15 of the
// time). With a 250 ms retry gap toward the radio it read 0.85–0.92, set
// by where the fade's end fell between tries, and CI saw 0.84.
func TestLabNotCPUBound(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: two real-time runs")
	}
	cfg := Config{Duration: 3 * time.Second, Seed: 1, Parallel: 1, Retries: -1}
	only := func(rows []Row) Row {
		for _, r := range rows {
			if r.Mode == ModeSplit {
				return r
			}
		}
		t.Fatal("no split row")
		return Row{}
	}
	if os.Geteuid() == 0 {
		// The CPU taken: spinning processes at a higher priority than ours.
		var hogs []*exec.Cmd
		for range runtime.NumCPU() * 2 {
			c := hog()
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			hogs = append(hogs, c)
		}
		stop := func() {
			for _, c := range hogs {
				c.Process.Kill()
				c.Wait()
			}
			hogs = nil
		}
		t.Cleanup(stop)
		rows, err := Run(context.Background(), cfg, []string{"outage"})
		stop()
		if err != nil {
			t.Fatal(err)
		}
		if r := only(rows); r.CPUWait >= 0 && !r.CPUBound {
			t.Fatalf("with the CPU taken the run waited %.2f of its time for it and was not called CPU-bound (%.2f of the limit)", r.CPUWait, r.LimitRatio)
		}
	} else if os.Getenv("CI") != "" {
		t.Fatal("not root: cannot take the CPU from the lab")
	} else {
		t.Log("not root: the CPU-bound case is not tried")
	}
	cfg.Retries = 3
	rows, err := Run(context.Background(), cfg, []string{"outage"})
	if err != nil {
		t.Fatal(err)
	}
	r := only(rows)
	t.Logf("split through the fade: %.2f of the limit, cpu wait %.2f", r.LimitRatio, r.CPUWait)
	if r.CPUBound || r.Integrity != "pass" || r.LimitRatio < 0.90 {
		t.Fatalf("split through the fade: %.2f of the limit, cpu wait %.2f (bound %v), %s", r.LimitRatio, r.CPUWait, r.CPUBound, r.Detail)
	}
}

// TestLabHandoff: the mobile moves across three cells, each with its own
// gateway, during a download and a request/response flow, in transport
// and tunnel mode: every row passes its checks (SHA-256, every response
// as sent, the endpoints' IPsec refusing nothing, two handoffs that each
// brought the flows to the next gateway, no gateway keeping flows it was
// left with), and split holds the goal loosely: its least
// 1-second goodput ≥ 0.4 of the radio's limit (the goal is 0.5; 0.67–0.90
// measured). The picture marks both handoffs.
//
// The least second is a real-time figure, and a handoff moves the
// megabytes split holds (about 4 MB a flow here: gob, TLS and gRPC copies
// of each, into memory this VM faults in at ~14 ms per fresh 4 MB), so a
// machine busy with other tests can starve the one second that holds a
// handoff; CI saw 0.30 once in 35 runs, its threads waiting 0.24 of the
// time. A miss of that floor alone is therefore measured once more, said
// in the log, and the second run must hold every check; anything else
// fails at once.
func TestLabHandoff(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: six real-time runs of three gateways")
	}
	rows := measureTwice(t, "the least second missed its floor", labHandoff)
	if t.Failed() {
		return
	}
	var tunnel []Row
	for _, r := range rows {
		if r.IPsec == IPsecTunnel {
			tunnel = append(tunnel, r)
		}
	}
	var svg bytes.Buffer
	var at []time.Duration
	for _, h := range tunnel[0].Handoffs {
		at = append(at, time.Duration(h*float64(time.Second)))
	}
	if err := Plot(&svg, "handoff", tunnel, Marks{Handoffs: at, Floor: tunnel[0].LimitMbps / 2, FloorLabel: "half"}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(svg.String(), ">handoff "); n != 2 {
		t.Fatalf("%d handoffs marked", n)
	}
}

// labHandoff runs the handoff scenario and returns its rows, what failed
// its checks, and apart from those the split rows whose least second
// missed the floor.
func labHandoff(t *testing.T) (rows []Row, errs, slow []string) {
	t.Helper()
	rows, err := Run(context.Background(), Config{Duration: 3 * time.Second, Seed: 2}, []string{"handoff"})
	if err != nil {
		t.Fatal(err)
	}
	var tbl bytes.Buffer
	Table(&tbl, rows)
	t.Logf("\n%s", tbl.String())
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6", len(rows))
	}
	tunnel := 0
	for _, r := range rows {
		if r.Integrity != "pass" {
			errs = append(errs, fmt.Sprintf("%s %s: %s", r.Mode, r.IPsec, r.Detail))
		}
		if len(r.Handoffs) != 2 || r.Exchanges == 0 {
			errs = append(errs, fmt.Sprintf("%s %s: moves at %v, %d responses", r.Mode, r.IPsec, r.Handoffs, r.Exchanges))
		}
		if r.Mode != ModeE2E && len(r.HandoffMs) != 2 {
			errs = append(errs, fmt.Sprintf("%s %s: handoffs %v", r.Mode, r.IPsec, r.HandoffMs))
		}
		if r.Mode == ModeSplit && r.MinSecondMbps < 0.4*r.LimitMbps {
			slow = append(slow, fmt.Sprintf("%s %s: the least second carried %.1f Mbit/s, %.2f of the limit (cpu wait %.2f)",
				r.Mode, r.IPsec, r.MinSecondMbps, r.MinSecondMbps/r.LimitMbps, r.CPUWait))
		}
		if r.IPsec == IPsecTunnel {
			tunnel++
		}
	}
	if tunnel == 0 {
		errs = append(errs, "no tunnel-mode row")
	}
	return rows, errs, slow
}

func TestMinSecond(t *testing.T) {
	s := make([]float64, 30)
	for i := range s {
		s[i] = 10
	}
	for i := 12; i < 15; i++ {
		s[i] = 0 // 300 ms of nothing
	}
	if got := minSecond(s, 5, 3*time.Second); math.Abs(got-7) > 1e-9 {
		t.Fatalf("least second %v, want 7", got)
	}
	if got := minSecond(s, 5, 1200*time.Millisecond); got != 0 {
		t.Fatalf("no whole second measured: %v", got)
	}
}

// TestLabNoStateTransfer: the handoff's baseline — the same moves in
// split, the gateways holding each other's SAs but handing nothing over.
// What the first gateway acknowledged early and had not delivered is
// stranded with it, and the next one relays the endpoints' packets with
// numbers the receiver's window has passed: the download stops at the
// first move. With the handoff (TestLabHandoff) its least second carries
// most of the radio's limit.
func TestLabNoStateTransfer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a real-time run of three gateways")
	}
	nc := NetConfig{Mode: ModeSplit, IPsec: IPsecTunnel, SACK: true, Cells: 3, NoStateTransfer: true, Wired: wiredLink, Radio: radioLink}
	nc.Radio.Loss = 0.01
	r := execute(run{net: nc, flows: 1, exchanges: true, row: Row{Scenario: "handoff", Mode: ModeSplit, IPsec: IPsecTunnel, Loss: 0.01}},
		Config{Duration: 3 * time.Second, Warmup: 500 * time.Millisecond}, 9)
	t.Logf("without state transfer: %.2f Mbit/s, least second %.2f Mbit/s, %d responses (longest %.0f ms); %s: %s",
		r.GoodputMbps, r.MinSecondMbps, r.Exchanges, r.ExchangeMaxMs, r.Integrity, r.Detail)
	if r.MinSecondMbps > 0.2*r.LimitMbps {
		t.Fatalf("the least second carried %.1f Mbit/s with nothing handed over", r.MinSecondMbps)
	}
}

// TestLabGatewayGone: the gateway the mobile leaves crashes as it leaves,
// so no handoff comes (DESIGN.md rule 6, issue 15). Split, ESP tunnel,
// two cells. What the endpoints see, held here:
//   - the new gateway asks the gone one, is refused at once (a connection
//     refused; at most Asker.Timeout, 2 s, when it does not answer), and
//     from then on carries the mobile's traffic, numbering the SAs
//     TakeoverJump above the endpoints: only the first packet or two of
//     each SA, which it relays as they came before it may seal, are
//     refused as replays;
//   - the download under way stalls for good: the bytes the gone gateway
//     had acknowledged early died with it, and the sender will not send
//     them again (TCP gives up on it after its retransmission limit — the
//     bytes the application was told were delivered are lost: what rule 5
//     cannot hold for a crash, only for a handoff);
//   - a new connection after the crash works at once, accelerated by the
//     new gateway: 1 MB intact.
func TestLabGatewayGone(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: real-time transfers through two gateways")
	}
	nc := NetConfig{Mode: ModeSplit, IPsec: IPsecTunnel, SACK: true, Cells: 2, Wired: wiredLink, Radio: radioLink}
	nc.Radio.Loss = 0.01
	n, err := NewNet(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	bulk := make(chan Transfer, 1)
	go func() { bulk <- flow(n.Wired, n.Mobile, 5001, 1, 4*time.Second) }()
	time.Sleep(1500 * time.Millisecond)
	crashed := time.Now()
	n.crash(0)
	must(t, n.Move(1))
	time.Sleep(300 * time.Millisecond)
	fresh := flowSized(t, n, 5002, 1<<20, 10*time.Second)
	tr := <-bulk
	asks := n.cells.taken()
	t.Logf("after the crash: %d handoffs asked %+v; a new 1 MB download took %v; the old download had %d bytes, %d of them after the crash",
		len(asks), asks, fresh.Round(time.Millisecond), tr.Bytes, bytesAfter(tr, crashed))
	if len(asks) != 1 || asks[0].flows != 0 || asks[0].took > 2500*time.Millisecond {
		t.Errorf("the new gateway's ask: %+v", asks)
	}
	// Until the new gateway has two verified packets of an SA it may not
	// seal on it: it relays them as they came, with the endpoint's
	// numbers, behind what the gone gateway used — the endpoints refuse
	// those as replays (their TCP sends them again). Nothing else may be
	// refused, and nothing may fail its ICV.
	w, m := n.wiredEnd.Counts(), n.mobileEnd.Counts()
	orig := n.Gateways[1].Stats().Originals
	if fresh := w.FreshRefused + m.FreshRefused; uint64(fresh) > orig || w.UnknownSPI+m.UnknownSPI+w.ToDeleted+m.ToDeleted != 0 {
		t.Errorf("the endpoints refused %+v and %+v; the new gateway relayed %d as they came", w, m, orig)
	}
	for name, end := range map[string]*simnet.IPsec{"wired": n.wiredEnd, "mobile": n.mobileEnd} {
		for _, sa := range end.Inbound() {
			if st := sa.Stats(); st.ICVFailures != 0 || st.OtherDrops != 0 {
				t.Errorf("%s end: %+v", name, st)
			}
		}
	}
	if !tr.Intact {
		t.Error("the old download's bytes are not the sender's")
	}
	if after := bytesAfter(tr, crashed.Add(time.Second)); after > 64<<10 {
		t.Errorf("the old download carried on (%d bytes more than a second after the crash): were the early-acknowledged bytes not lost?", after)
	}
	if st := n.Gateways[1].Stats(); st.Sealed == 0 || st.Engine.FlowsMax == 0 {
		t.Errorf("the new gateway did not carry the new flow: %+v", st)
	}
}

// flowSized sends size bytes from the wired host to the mobile on a new
// connection, checked, and returns how long it took.
func flowSized(t *testing.T, n *Net, port uint16, size int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := gvhost.Transfer(n.Wired, n.Mobile, port, size, timeout); err != nil {
		t.Fatalf("a new download after the crash: %v", err)
	}
	return time.Since(start)
}

// bytesAfter is how many of tr's bytes arrived after at.
func bytesAfter(tr Transfer, at time.Time) int64 {
	var b int64
	for i, v := range tr.Samples {
		if tr.Start.Add(time.Duration(i) * SampleEvery).After(at) {
			b += v
		}
	}
	return b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
