package testbed

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
)

var pingRTT = regexp.MustCompile(`rtt min/avg/max/mdev = ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms`)

// parsePing returns a figure from ping's RTT summary in milliseconds:
// 0 min, 1 avg, 2 max, 3 mdev.
func parsePing(out string, which int) (float64, error) {
	m := pingRTT.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no rtt summary in ping output")
	}
	return strconv.ParseFloat(m[1+which], 64)
}

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

// pingMedian returns the median of the per-packet RTTs ping printed, in
// milliseconds.
func pingMedian(out string) (float64, error) {
	var rtts []float64
	for _, m := range pingTime.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return 0, fmt.Errorf("ping time %q: %w", m[1], err)
		}
		rtts = append(rtts, v)
	}
	if len(rtts) == 0 {
		return 0, fmt.Errorf("no replies in ping output")
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

// IperfResult is what the measurements read from `iperf3 --json`.
type IperfResult struct {
	End struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
		Sum         iperfSum `json:"sum"` // UDP
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	LostPackets   int     `json:"lost_packets"`
	Packets       int     `json:"packets"`
	LostPercent   float64 `json:"lost_percent"`
	Retransmits   int     `json:"retransmits"`
}

// ParseIperf decodes iperf3's --json report.
func ParseIperf(out []byte) (*IperfResult, error) {
	var r IperfResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("iperf3 json: %w", err)
	}
	if r.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", r.Error)
	}
	return &r, nil
}

// UDPReceivedBPS is the payload rate the UDP receiver saw: iperf3's
// sum_received where it reports one, else the sender's rate less losses.
func (r *IperfResult) UDPReceivedBPS() float64 {
	if r.End.SumReceived.BitsPerSecond > 0 {
		return r.End.SumReceived.BitsPerSecond
	}
	s := r.End.Sum
	if s.Packets == 0 {
		return 0
	}
	return s.BitsPerSecond * float64(s.Packets-s.LostPackets) / float64(s.Packets)
}
