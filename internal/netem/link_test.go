package netem

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"
	"testing/synctest"
	"time"

	"github.com/espep/espep/internal/pcapio"
)

var t0 = time.Unix(1_800_000_000, 0)

type rx struct {
	clock Clock
	at    []time.Duration
	ids   []uint32
	pkts  [][]byte
}

func (r *rx) deliver(p []byte) {
	r.at = append(r.at, r.clock.Now().Sub(t0))
	r.ids = append(r.ids, binary.BigEndian.Uint32(p))
	r.pkts = append(r.pkts, p)
}

func pkt(id uint32, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint32(b, id)
	return b
}

func newSim(t *testing.T, cfg Config) (*SimClock, *Link, *rx) {
	t.Helper()
	c := NewSimClock(t0)
	r := &rx{clock: c}
	l, err := New(cfg, c, r.deliver)
	if err != nil {
		t.Fatal(err)
	}
	return c, l, r
}

func TestRateAndDelay(t *testing.T) {
	c, l, r := newSim(t, Config{Rate: 10e6, Delay: 40 * time.Millisecond})
	for i := 0; i < 100; i++ {
		l.Send(pkt(uint32(i), 1250)) // 1 ms each at 10 Mbit/s
	}
	c.Advance(time.Second)
	if len(r.at) != 100 {
		t.Fatalf("%d delivered", len(r.at))
	}
	for i, at := range r.at {
		want := time.Duration(i+1)*time.Millisecond + 40*time.Millisecond
		if at != want || r.ids[i] != uint32(i) {
			t.Fatalf("packet %d (id %d) at %v, want %v", i, r.ids[i], at, want)
		}
	}
	st := l.Stats()
	if st.Delivered != 100 || st.QueueHighPackets != 100 || st.QueueHighBytes != 125000 {
		t.Fatalf("%+v", st)
	}
}

func TestJitterKeepsOrder(t *testing.T) {
	c, l, r := newSim(t, Config{Delay: 20 * time.Millisecond, Jitter: 10 * time.Millisecond, Seed: 3})
	for i := 0; i < 1000; i++ {
		l.Send(pkt(uint32(i), 100))
		c.Advance(time.Millisecond)
	}
	c.Advance(time.Second)
	var lo, hi time.Duration = time.Hour, 0
	for i := range r.ids {
		if r.ids[i] != uint32(i) {
			t.Fatalf("reordered at %d", i)
		}
		d := r.at[i] - time.Duration(i)*time.Millisecond
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 10*time.Millisecond || hi > 30*time.Millisecond || hi-lo < 15*time.Millisecond {
		t.Fatalf("delays %v…%v, want spread within 10…30 ms", lo, hi)
	}
}

func TestDropTail(t *testing.T) {
	c, l, r := newSim(t, Config{Rate: 1e6, QueuePackets: 10})
	for i := 0; i < 100; i++ {
		l.Send(pkt(uint32(i), 1000))
	}
	c.Advance(time.Second)
	st := l.Stats()
	if len(r.ids) != 10 || st.DropQueue != 90 || st.QueueHighPackets != 10 {
		t.Fatalf("delivered %d, %+v", len(r.ids), st)
	}
	c2, l2, r2 := newSim(t, Config{Rate: 1e6, QueueBytes: 5000})
	for i := 0; i < 100; i++ {
		l2.Send(pkt(uint32(i), 1000))
	}
	c2.Advance(time.Second)
	if len(r2.ids) != 5 || l2.Stats().QueueHighBytes != 5000 {
		t.Fatalf("byte limit: delivered %d, %+v", len(r2.ids), l2.Stats())
	}
}

// withinCI reports whether k losses in n trials fit probability p at 99 %.
func withinCI(k, n int, p float64) bool {
	sd := math.Sqrt(p * (1 - p) / float64(n))
	return math.Abs(float64(k)/float64(n)-p) <= 2.576*sd
}

func TestBernoulliLoss(t *testing.T) {
	for _, p := range []float64{0.005, 0.01, 0.02, 0.05} {
		c, l, r := newSim(t, Config{Loss: p, Seed: 42})
		const n = 200000
		for i := 0; i < n; i++ {
			l.Send(pkt(uint32(i), 64))
		}
		c.Advance(time.Second)
		lost := n - len(r.ids)
		if !withinCI(lost, n, p) || int(l.Stats().DropLoss) != lost {
			t.Errorf("loss %v: %d of %d lost (%.4f)", p, lost, n, float64(lost)/n)
		}
	}
}

func TestGilbertElliott(t *testing.T) {
	ge, err := GEFromMean(0.02, 4)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(ge.MeanLoss()-0.02) > 1e-12 {
		t.Fatalf("mean loss %v", ge.MeanLoss())
	}
	c, l, r := newSim(t, Config{GE: &ge, Seed: 7})
	const n = 400000
	for i := 0; i < n; i++ {
		l.Send(pkt(uint32(i), 64))
	}
	c.Advance(time.Second)
	lost := n - len(r.ids)
	// bursts: runs of missing ids
	bursts, prev := 0, -1
	for _, id := range r.ids {
		if int(id) != prev+1 {
			bursts++
		}
		prev = int(id)
	}
	rate, mean := float64(lost)/n, float64(lost)/float64(bursts)
	if math.Abs(rate-0.02) > 0.003 || math.Abs(mean-4) > 0.4 {
		t.Fatalf("loss %.4f (want 0.02), mean burst %.2f (want 4)", rate, mean)
	}
	if _, err := GEFromMean(0, 4); err == nil {
		t.Fatal("zero loss accepted")
	}
}

func TestOutage(t *testing.T) {
	c, l, r := newSim(t, Config{Delay: 10 * time.Millisecond, Outages: []Outage{{From: time.Second, To: 2 * time.Second}}})
	for i := 0; i < 300; i++ {
		l.Send(pkt(uint32(i), 100))
		c.Advance(10 * time.Millisecond)
	}
	c.Advance(time.Second)
	if l.Stats().DropOutage != 100 || len(r.ids) != 200 {
		t.Fatalf("%+v, delivered %d", l.Stats(), len(r.ids))
	}
	for _, id := range r.ids {
		if id >= 100 && id < 200 {
			t.Fatalf("packet %d sent during the outage was delivered", id)
		}
	}
}

func TestDuplicateCorruptReorderMTU(t *testing.T) {
	var tooBig int
	done := make(chan struct{}, 10)
	c, l, r := newSim(t, Config{Delay: 50 * time.Millisecond, Duplicate: 0.1, Corrupt: 0.1, Reorder: 0.1, MTU: 1000, Seed: 9,
		TooBig: func([]byte) { tooBig++; done <- struct{}{} }})
	const n = 10000
	for i := 0; i < n; i++ {
		l.Send(pkt(uint32(i), 200))
		c.Advance(time.Millisecond)
	}
	l.Send(pkt(n, 1001))
	<-done
	c.Advance(time.Second)
	st := l.Stats()
	if !withinCI(int(st.Duplicated), n, 0.1) || !withinCI(int(st.Corrupted), n, 0.1) || !withinCI(int(st.Reordered), n, 0.1) {
		t.Fatalf("%+v", st)
	}
	if st.DropMTU != 1 || tooBig != 1 || len(r.ids) != n+int(st.Duplicated) {
		t.Fatalf("mtu: %+v, delivered %d", st, len(r.ids))
	}
	overtaken := 0
	for i := 1; i < len(r.ids); i++ {
		if r.ids[i] < r.ids[i-1] {
			overtaken++
		}
	}
	if overtaken == 0 {
		t.Fatal("reorder never reordered")
	}
}

func TestDeterministic(t *testing.T) {
	run := func() []uint32 {
		ge, _ := GEFromMean(0.05, 3)
		c, l, r := newSim(t, Config{Rate: 5e6, Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.01, GE: &ge, Reorder: 0.01, Seed: 11})
		for i := 0; i < 5000; i++ {
			l.Send(pkt(uint32(i), 500))
			c.Advance(500 * time.Microsecond)
		}
		c.Advance(time.Second)
		return r.ids
	}
	a, b := run(), run()
	if len(a) != len(b) {
		t.Fatalf("%d vs %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("differs at %d", i)
		}
	}
}

// TestSynctestMinute runs a simulated minute of traffic with the real
// clock inside a synctest bubble: it must take well under a second.
func TestSynctestMinute(t *testing.T) {
	start := time.Now()
	synctest.Test(t, func(t *testing.T) {
		var got int
		l, err := New(Config{Rate: 20e6, Delay: 10 * time.Millisecond, Loss: 0.01, Seed: 1}, nil, func([]byte) { got++ })
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		// 1000 packets a second for 60 simulated seconds.
		for i := 0; i < 60000; i++ {
			l.Send(pkt(uint32(i), 1000))
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if st := l.Stats(); uint64(got) != st.Delivered || got+int(st.DropLoss) != 60000 {
			t.Fatalf("delivered %d, %+v", got, st)
		}
	})
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("a simulated minute took %v", el)
	}
}

func TestPairAndValidate(t *testing.T) {
	c := NewSimClock(t0)
	var ab, ba int
	p, err := NewPair(Config{Delay: time.Millisecond}, Config{Delay: 2 * time.Millisecond}, c, func([]byte) { ab++ }, func([]byte) { ba++ })
	if err != nil {
		t.Fatal(err)
	}
	p.AB.Send(pkt(1, 10))
	p.BA.Send(pkt(2, 10))
	c.Advance(time.Millisecond)
	if ab != 1 || ba != 0 {
		t.Fatal(ab, ba)
	}
	c.Advance(time.Millisecond)
	if ba != 1 {
		t.Fatal(ba)
	}
	p.Close()
	p.AB.Send(pkt(3, 10))
	c.Advance(time.Second)
	if ab != 1 {
		t.Fatal("delivered after close")
	}
	for _, bad := range []Config{{Loss: 1.5}, {Rate: -1}, {Outages: []Outage{{From: 2, To: 1}}}, {GE: &GilbertElliott{P: 2}}} {
		if _, err := New(bad, c, func([]byte) {}); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestPcapCapture(t *testing.T) {
	var buf bytes.Buffer
	capture, flush, err := PcapCapture(&buf, pcapio.LinkRaw)
	if err != nil {
		t.Fatal(err)
	}
	c, l, _ := newSim(t, Config{Delay: time.Millisecond, Loss: 0.5, Seed: 2, Capture: capture})
	for i := 0; i < 100; i++ {
		l.Send(pkt(uint32(i), 60))
	}
	c.Advance(time.Second)
	flush()
	r, err := pcapio.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		rec, err := r.Next()
		if err != nil {
			break
		}
		if !rec.Time.Equal(t0.Add(time.Millisecond)) || len(rec.Data) != 60 {
			t.Fatalf("record %d: %v %d", n, rec.Time, len(rec.Data))
		}
		n++
	}
	if uint64(n) != l.Stats().Delivered || n == 0 || n == 100 {
		t.Fatalf("captured %d, delivered %d", n, l.Stats().Delivered)
	}
}

// TestTransparentLink: a link that impairs nothing hands each packet on at
// once, in order, in the sender's goroutine, counted and captured.
func TestTransparentLink(t *testing.T) {
	var got [][]byte
	captured := 0
	l, err := New(Config{Seed: 3, Capture: func(time.Time, []byte) { captured++ }}, nil, func(p []byte) { got = append(got, p) })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 100 {
		l.Send([]byte{byte(i)})
		if len(got) != i+1 || got[i][0] != byte(i) {
			t.Fatalf("packet %d not delivered at once and in order", i)
		}
	}
	if st := l.Stats(); st.Offered != 100 || st.Delivered != 100 || captured != 100 {
		t.Fatalf("%+v, captured %d", st, captured)
	}
	if d, _ := New(Config{Delay: time.Millisecond}, nil, func([]byte) {}); d.transparent {
		t.Fatal("a link with a delay is transparent")
	}
}
