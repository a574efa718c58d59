package tunlink

import (
	"slices"
	"testing"

	"github.com/espep/espep/internal/engine"
)

// recorder is a packetIO that records how many packets each Write took.
type recorder struct{ writes []int }

func (r *recorder) Read([][]byte, []int, int) (int, error) { return 0, nil }

func (r *recorder) Write(bufs [][]byte, _ int) (int, error) {
	r.writes = append(r.writes, len(bufs))
	return len(bufs), nil
}

// TestBatch: packets sent while no reader is busy (an engine timer's) are
// written at once, one system call each; sent inside Batch they wait and
// leave together at its end, toward each side they are for.
func TestBatch(t *testing.T) {
	wire, radio := &recorder{}, &recorder{}
	l := &Link{io: [2]packetIO{wire, radio}}
	pkt := make([]byte, 100)
	for range 3 {
		l.send(engine.Radio, pkt)
	}
	if want := []int{1, 1, 1}; !slices.Equal(radio.writes, want) {
		t.Fatalf("outside Batch: writes of %v packets, want %v", radio.writes, want)
	}
	radio.writes = nil
	l.Batch(func() {
		for range 5 {
			l.send(engine.Radio, pkt)
		}
		l.send(engine.Wire, pkt)
		if len(radio.writes)+len(wire.writes) > 0 {
			t.Error("written before Batch's end")
		}
	})
	if !slices.Equal(radio.writes, []int{5}) || !slices.Equal(wire.writes, []int{1}) {
		t.Fatalf("inside Batch: writes of %v (radio) and %v (wire) packets, want [5] and [1]", radio.writes, wire.writes)
	}
	if n := l.active.Load(); n != 0 {
		t.Fatalf("%d readers busy after Batch", n)
	}
}
