package netem

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The textual forms `espep linkem` and the lab accept, documented in the
// README:
//
//	rate      20mbit, 1.5gbit, 100kbit, 64000bit (bits per second; "mbps"
//	          and friends are refused: tc reads them as bytes)
//	loss etc. 2%, 0.5%, or a fraction 0.02
//	queue     100p (packets) or 64kb, 1mb, 1500b (bytes; k/m = 1000)
//	outage    10s-12s, 1.5s-1.7s (from the link's start)
//	durations as Go writes them: 10ms, 1.5s

// ParseRate parses a rate in bits per second.
func ParseRate(s string) (float64, error) {
	units := []struct {
		suffix string
		mul    float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}
	ls := strings.ToLower(strings.TrimSpace(s))
	if strings.HasSuffix(ls, "bps") {
		return 0, fmt.Errorf("rate %q: ambiguous unit, write kbit, mbit or gbit (bits per second)", s)
	}
	for _, u := range units {
		if strings.HasSuffix(ls, u.suffix) {
			v, err := strconv.ParseFloat(strings.TrimSuffix(ls, u.suffix), 64)
			if err != nil || v < 0 || v != v || v > 1e15 {
				return 0, fmt.Errorf("rate %q: want a number then kbit, mbit or gbit", s)
			}
			return v * u.mul, nil
		}
	}
	v, err := strconv.ParseFloat(ls, 64)
	if err != nil || v < 0 || v != v || v > 1e15 {
		return 0, fmt.Errorf("rate %q: want e.g. 20mbit", s)
	}
	return v, nil
}

// ParseProb parses "2%" or "0.02".
func ParseProb(s string) (float64, error) {
	t := strings.TrimSpace(s)
	div := 1.0
	if strings.HasSuffix(t, "%") {
		t, div = strings.TrimSuffix(t, "%"), 100
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v != v {
		return 0, fmt.Errorf("probability %q: want e.g. 2%% or 0.02", s)
	}
	v /= div
	if v < 0 || v > 1 {
		return 0, fmt.Errorf("probability %q: outside 0…100%%", s)
	}
	return v, nil
}

// ParseQueue parses "100p" (packets) or "64kb" (bytes) into a Config.
func ParseQueue(s string, c *Config) error {
	t := strings.ToLower(strings.TrimSpace(s))
	if strings.HasSuffix(t, "p") {
		n, err := strconv.Atoi(strings.TrimSuffix(t, "p"))
		if err != nil || n < 1 {
			return fmt.Errorf("queue %q: want e.g. 100p or 64kb", s)
		}
		c.QueuePackets = n
		return nil
	}
	mul := 1
	switch {
	case strings.HasSuffix(t, "kb"):
		t, mul = strings.TrimSuffix(t, "kb"), 1000
	case strings.HasSuffix(t, "mb"):
		t, mul = strings.TrimSuffix(t, "mb"), 1000_000
	case strings.HasSuffix(t, "b"):
		t = strings.TrimSuffix(t, "b")
	default:
		return fmt.Errorf("queue %q: want e.g. 100p or 64kb", s)
	}
	n, err := strconv.Atoi(t)
	if err != nil || n < 1 || n > 1<<40/mul {
		return fmt.Errorf("queue %q: want e.g. 100p or 64kb", s)
	}
	c.QueueBytes = n * mul
	return nil
}

// ParseOutage parses "10s-12s".
func ParseOutage(s string) (Outage, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return Outage{}, fmt.Errorf("outage %q: want FROM-TO, e.g. 10s-12s", s)
	}
	from, err1 := time.ParseDuration(a)
	to, err2 := time.ParseDuration(b)
	if err1 != nil || err2 != nil || from < 0 || to < from {
		return Outage{}, fmt.Errorf("outage %q: want FROM-TO with 0 ≤ FROM ≤ TO, e.g. 10s-12s", s)
	}
	return Outage{from, to}, nil
}

// FormatRate writes a rate the way ParseRate reads it.
func FormatRate(bps float64) string {
	switch {
	case bps >= 1e9 && bps == float64(int64(bps/1e9))*1e9:
		return strconv.FormatFloat(bps/1e9, 'f', -1, 64) + "gbit"
	case bps >= 1e6:
		return strconv.FormatFloat(bps/1e6, 'f', -1, 64) + "mbit"
	case bps >= 1e3:
		return strconv.FormatFloat(bps/1e3, 'f', -1, 64) + "kbit"
	}
	return strconv.FormatFloat(bps, 'f', -1, 64) + "bit"
}
