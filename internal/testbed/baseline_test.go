package testbed

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"text/tabwriter"
)

var (
	baseline     = flag.Bool("baseline", false, "run the Linux TCP baseline harness (minutes)")
	baselineSecs = flag.Int("baseline.secs", 20, "seconds per baseline transfer")
	baselineJSON = flag.String("baseline.json", "", "also write the baseline rows as JSON lines to this file")
)

// baselineRow is one measurement of the harness.
type baselineRow struct {
	CC          string  `json:"cc"`
	Loss        string  `json:"loss"`
	P           float64 `json:"p"`
	GoodputMbps float64 `json:"goodput_mbps"`
	LimitRatio  float64 `json:"limit_ratio"`
	Retransmits int     `json:"retransmits"`
}

// TestBaseline measures what the PEP must beat: Linux TCP (CUBIC and BBR)
// through espep linkem at 20 Mbit/s and 100 ms RTT (50 ms each way), with
// random loss each way of 0, 0.5, 1, 2 and 5 % and a Gilbert-Elliott case
// (2 % mean loss, bursts of 4). Goodput is iperf3's receiver figure; the
// ratio is to the link limit C·(1−p) in payload terms (1448 of every 1514
// bytes on the wire). Run with:
//
//	go test ./internal/testbed -run TestBaseline -baseline -v
func TestBaseline(t *testing.T) {
	if !*baseline {
		t.Skip("harness: run with -baseline")
	}
	const rateMbit, payloadShare = 20.0, 1448.0 / 1514
	cases := []struct {
		name  string
		p     float64
		flags []string
	}{
		{"0%", 0, nil},
		{"0.5%", 0.005, []string{"--loss", "0.5%"}},
		{"1%", 0.01, []string{"--loss", "1%"}},
		{"2%", 0.02, []string{"--loss", "2%"}},
		{"5%", 0.05, []string{"--loss", "5%"}},
		{"GE 2%/4", 0.02, []string{"--ge-loss", "2%", "--ge-burst", "4"}},
	}
	var rows []baselineRow
	for _, cc := range []string{"cubic", "bbr"} {
		for _, c := range cases {
			t.Run(cc+"/"+c.name, func(t *testing.T) {
				flags := append([]string{"--rate", "20mbit", "--delay", "50ms", "--queue", "250kb", "--seed", "1"}, c.flags...)
				th, err := NewTwoHosts(ForTest(t), espepBin, flags...)
				if err != nil {
					t.Fatal(err)
				}
				r := iperf(t, th, "-C", cc, "-t", fmt.Sprint(*baselineSecs), "-O", "2")
				got := r.End.SumReceived.BitsPerSecond / 1e6
				row := baselineRow{CC: cc, Loss: c.name, P: c.p, GoodputMbps: got,
					LimitRatio: got / (rateMbit * (1 - c.p) * payloadShare), Retransmits: r.End.SumSent.Retransmits}
				rows = append(rows, row)
				t.Logf("%s %s: %.2f Mbit/s, %.2f of the limit, %d retransmits", cc, c.name, got, row.LimitRatio, row.Retransmits)
			})
		}
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "loss\tCUBIC Mbit/s\tratio\tBBR Mbit/s\tratio\t")
	for i, c := range cases {
		if len(rows) < len(cases)*2 {
			break
		}
		cu, bb := rows[i], rows[len(cases)+i]
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t\n", c.name, cu.GoodputMbps, cu.LimitRatio, bb.GoodputMbps, bb.LimitRatio)
	}
	tw.Flush()
	t.Logf("Linux TCP through espep linkem, 20 Mbit/s, RTT 100 ms, %d s transfers:\n%s", *baselineSecs, b.String())
	if *baselineJSON != "" {
		f, err := os.Create(*baselineJSON)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		enc := json.NewEncoder(f)
		for _, r := range rows {
			enc.Encode(r)
		}
	}
}
