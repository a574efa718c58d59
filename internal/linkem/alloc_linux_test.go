package linkem

import (
	"os"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/netem"
)

// echo is a processor that sends every packet on toward the other side at
// once, as a gateway's forwarded original goes.
type echo struct{ out func(engine.Side, []byte) }

func (e echo) Process(from engine.Side, pkt []byte) { e.out(1-from, pkt) }

// TestBridgeZeroAllocs: the AF_PACKET bridge's path — a frame read on a
// port, to the processor, framed again toward the other port, written —
// allocates nothing per frame when its links are transparent (espep
// gateway on interfaces): the ports lend their read buffers, engineOut
// frames in pooled buffers. A link that queues (an emulated radio) copies
// what it keeps, and that copy is counted here too.
func TestBridgeZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector (sync.Pool drops at random)")
	}
	null := func() *port {
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		p, err := newPort("null", f, 1500)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	br := &Bridge{a: null(), b: null()}
	br.proc = echo{br.engineOut}
	var err error
	if br.ab, err = netem.New(netem.Config{}, nil, func(f []byte) { br.b.write(f) }); err != nil {
		t.Fatal(err)
	}
	if br.ba, err = netem.New(netem.Config{}, nil, func(f []byte) { br.fromRadio(f) }); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, etherLen+1400)
	frame[12], frame[13] = 0x08, 0x00 // IPv4
	frame[etherLen] = 0x45
	back := append([]byte(nil), frame...)
	br.fromWire(frame) // learn both directions' Ethernet headers
	sendOn(br.ba, back)
	if n := testing.AllocsPerRun(1000, func() {
		br.fromWire(frame)
		sendOn(br.ba, back)
	}); n != 0 {
		t.Fatalf("%.1f allocations per frame each way, want 0", n)
	}
	if st := br.Stats(); st.A.TxFrames == 0 || st.B.TxFrames == 0 {
		t.Fatalf("nothing written: %+v", st)
	}

	// A link that queues keeps a copy: one allocation, and the lent
	// buffer is free again at once.
	q, err := netem.New(netem.Config{Delay: 1}, nil, func([]byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if n := testing.AllocsPerRun(100, func() { sendOn(q, frame) }); n < 1 {
		t.Fatalf("%.1f allocations sending on a link that queues: it must copy the lent frame", n)
	}
}
