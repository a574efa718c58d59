package netem

import (
	"math"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for s, want := range map[string]float64{"20mbit": 20e6, "1.5gbit": 1.5e9, "100kbit": 1e5, "64000bit": 64000, "64000": 64000, "20MBIT": 20e6} {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("rate %q: %v %v", s, got, err)
		}
	}
	for _, s := range []string{"20mbps", "fast", "-1mbit", "NaNmbit", ""} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("rate %q accepted", s)
		}
	}
	for s, want := range map[string]float64{"2%": 0.02, "0.5%": 0.005, "0.02": 0.02, "100%": 1, "0": 0} {
		if got, err := ParseProb(s); err != nil || math.Abs(got-want) > 1e-15 {
			t.Errorf("prob %q: %v %v", s, got, err)
		}
	}
	for _, s := range []string{"101%", "-1%", "2", "x"} {
		if _, err := ParseProb(s); err == nil {
			t.Errorf("prob %q accepted", s)
		}
	}
	var c Config
	if ParseQueue("100p", &c); c.QueuePackets != 100 {
		t.Error("100p")
	}
	if ParseQueue("64kb", &c); c.QueueBytes != 64000 {
		t.Error("64kb")
	}
	for _, s := range []string{"0p", "64", "kb", "-5b"} {
		if err := ParseQueue(s, &c); err == nil {
			t.Errorf("queue %q accepted", s)
		}
	}
	if o, err := ParseOutage("10s-12.5s"); err != nil || o != (Outage{10 * time.Second, 12500 * time.Millisecond}) {
		t.Error(o, err)
	}
	for _, s := range []string{"12s-10s", "10s", "a-b"} {
		if _, err := ParseOutage(s); err == nil {
			t.Errorf("outage %q accepted", s)
		}
	}
	for _, r := range []float64{20e6, 1e9, 1.5e6, 64000, 12} {
		if got, _ := ParseRate(FormatRate(r)); got != r {
			t.Errorf("FormatRate(%v) = %q", r, FormatRate(r))
		}
	}
}

// FuzzParse: the flag parsers never panic and stay in range.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"20mbit", "2%", "100p", "64kb", "10s-12s", "1e308gbit", "%", "-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParseRate(s); err == nil && (r < 0 || r != r) {
			t.Fatalf("rate %v", r)
		}
		if p, err := ParseProb(s); err == nil && (p < 0 || p > 1) {
			t.Fatalf("prob %v", p)
		}
		var c Config
		if err := ParseQueue(s, &c); err == nil && c.QueueBytes < 0 {
			t.Fatal("queue")
		}
		if o, err := ParseOutage(s); err == nil && (o.From < 0 || o.To < o.From) {
			t.Fatal("outage")
		}
	})
}
