package gateway

import (
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// FuzzGateway feeds arbitrary packets from either side to a gateway that
// holds write- and read-class SAs (seeded with real ESP of both): no
// panic, and what it sends on is either a packet it was given or one it
// sealed — never cleartext of an SA's traffic.
func FuzzGateway(f *testing.F) {
	r := newPathRig(f, ipsec.EncAESGCM16, true, engine.ModeSplit)
	r.batch(2)
	for _, p := range append(r.data, r.acks...) {
		f.Add(p, true)
	}
	f.Add(packettest.Segment(r.wire, r.radio, header.TCPSyn, 1, 0, 100, nil, nil), true)
	// Valid ESP under the fuzz SA's fixed key: a SYN and a data segment.
	fixed := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	fixed.EncKey = make([]byte, 20)
	sa, err := ipsec.New(fixed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seal(sa, packettest.Segment(r.wire, r.radio, header.TCPSyn, 1, 0, 100, []byte{header.TCPOptMSS, 4, 5, 0xb4}, nil)), true)
	f.Add(seal(sa, packettest.Segment(r.wire, r.radio, header.TCPAck, 2, 7, 100, nil, make([]byte, 100))), true)
	f.Add([]byte{0x45, 0, 0, 20}, false)
	f.Fuzz(func(t *testing.T, pkt []byte, fromWire bool) {
		ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
		ab.EncKey = make([]byte, 20) // fixed keys, so the corpus can hold valid ESP
		rd := tunnelConfig(0x3003, "192.0.2.2", "192.0.2.1", ipsec.EncAESCBC)
		rd.Class, rd.IntegKey = ipsec.ClassRead, nil
		sad := &ipsec.SAD{}
		for _, c := range []ipsec.Config{ab, rd} {
			e, err := ipsec.NewEntry(c)
			if err != nil {
				t.Fatal(err)
			}
			sad.Add(e)
		}
		clock := netem.NewSimClock(netem.RealClock{}.Now())
		g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit, Clock: clock}, Plain: true, State: statedir.Memory()}, sad, func(to engine.Side, out []byte) {})
		if err != nil {
			t.Fatal(err)
		}
		from := engine.Radio
		if fromWire {
			from = engine.Wire
		}
		in := append([]byte(nil), pkt...)
		for i := 0; i < 3; i++ {
			g.Process(from, in)
			g.Process(1-from, in)
		}
		clock.Advance(10 * 60e9)
		if string(in) != string(pkt) {
			t.Fatal("the gateway changed the packet it was given")
		}
	})
}
