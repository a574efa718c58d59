package gateway

import (
	"net/netip"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// pathRig drives a gateway with a TCP flow through an ESP tunnel: the
// wire host's data segments (1448 bytes) and the radio host's ACK of each,
// sealed by the endpoints' own SAs outside the timed part.
type pathRig struct {
	g              *Gateway
	aOut, bOut     *ipsec.SA
	wire, radio    netip.AddrPort
	seqW, seqR     uint32
	out            int
	data, acks     [][]byte
	payload        []byte
	sealed, opened int
}

func newPathRig(tb testing.TB, enc ipsec.Enc, withSAs bool, mode engine.Mode) *pathRig {
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", enc)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", enc)
	r := &pathRig{wire: netip.MustParseAddrPort("10.0.0.1:5001"), radio: netip.MustParseAddrPort("10.0.0.2:40000"),
		seqW: 1000, seqR: 9000, payload: make([]byte, 1448)}
	var err error
	if r.aOut, err = ipsec.New(ab); err != nil {
		tb.Fatal(err)
	}
	if r.bOut, err = ipsec.New(ba); err != nil {
		tb.Fatal(err)
	}
	r.aOut.SetIVSource(seqivIV{0x1111})
	r.bOut.SetIVSource(seqivIV{0x2222})
	sad := &ipsec.SAD{}
	if withSAs {
		for _, c := range []ipsec.Config{ab, ba} {
			e, _ := ipsec.NewEntry(c)
			sad.Add(e)
		}
	}
	r.g, err = New(Config{Engine: engine.Config{Mode: mode}, State: statedir.Memory()}, sad, func(engine.Side, []byte) { r.out++ })
	if err != nil {
		tb.Fatal(err)
	}
	syn := []byte{header.TCPOptMSS, 4, 0x05, 0xb4, header.TCPOptSACKPerm, 2}
	r.g.Process(engine.Wire, seal(r.aOut, packettest.Segment(r.wire, r.radio, header.TCPSyn, r.seqW-1, 0, 65535, syn, nil)))
	r.g.Process(engine.Radio, seal(r.bOut, packettest.Segment(r.radio, r.wire, header.TCPSyn|header.TCPAck, r.seqR-1, r.seqW, 65535, syn, nil)))
	r.g.Process(engine.Wire, seal(r.aOut, packettest.Segment(r.wire, r.radio, header.TCPAck, r.seqW, r.seqR, 65535, nil, nil)))
	return r
}

// batch seals the next n data segments and their ACKs.
func (r *pathRig) batch(n int) {
	r.data, r.acks = r.data[:0], r.acks[:0]
	for range n {
		r.data = append(r.data, seal(r.aOut, packettest.Segment(r.wire, r.radio, header.TCPAck|header.TCPPsh, r.seqW, r.seqR, 65535, nil, r.payload)))
		r.seqW += uint32(len(r.payload))
		r.acks = append(r.acks, seal(r.bOut, packettest.Segment(r.radio, r.wire, header.TCPAck, r.seqR, r.seqW, 65535, nil, nil)))
	}
}

// BenchmarkPacketPath: what one core moves through the gateway — open,
// engine, seal — against a plain relay (no SAs: every packet passed on as
// it came) in the same run. Reports Gbit/s of TCP payload.
//
//	go test ./internal/gateway -run - -bench PacketPath
func BenchmarkPacketPath(b *testing.B) {
	for _, tc := range []struct {
		name string
		enc  ipsec.Enc
		sas  bool
		mode engine.Mode
	}{
		{"relay", ipsec.EncAESGCM16, false, engine.ModeSplit},
		{"split-aes128gcm16", ipsec.EncAESGCM16, true, engine.ModeSplit},
		{"snoop-aes128gcm16", ipsec.EncAESGCM16, true, engine.ModeSnoop},
		{"split-chacha20poly1305", ipsec.EncChaCha20Poly1305, true, engine.ModeSplit},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := newPathRig(b, tc.enc, tc.sas, tc.mode)
			const batch = 512
			b.ReportAllocs()
			b.ResetTimer()
			done := 0
			for done < b.N {
				b.StopTimer()
				r.batch(batch)
				b.StartTimer()
				for i := 0; i < batch && done < b.N; i++ {
					r.g.Process(engine.Wire, r.data[i])
					r.g.Process(engine.Radio, r.acks[i])
					done++
				}
			}
			b.ReportMetric(float64(done*len(r.payload)*8)/b.Elapsed().Seconds()/1e9, "Gbit/s")
			if tc.sas {
				if st := r.g.Stats(); st.Sealed == 0 || st.Opened == 0 {
					b.Fatalf("the gateway did not work: %+v", st)
				}
			}
		})
	}
}

// TestGatewayZeroAllocs: open, split engine and seal of a data segment and
// its ACK allocate nothing in steady state.
func TestGatewayZeroAllocs(t *testing.T) {
	r := newPathRig(t, ipsec.EncAESGCM16, true, engine.ModeSplit)
	r.batch(1200)
	i := 0
	step := func() {
		r.g.Process(engine.Wire, r.data[i])
		r.g.Process(engine.Radio, r.acks[i])
		i++
	}
	for range 100 {
		step()
	}
	if a := testing.AllocsPerRun(1000, step); a != 0 {
		t.Fatalf("%.2f allocations per segment and ACK", a)
	}
	// 1,101 segments on, and an early ACK for every second one back.
	if st := r.g.Stats(); st.Sealed < 1600 || st.Opened < 2000 {
		t.Fatalf("the gateway did not seal and open: %+v", st)
	}
}
