package gateway

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Restarts and sequence space, with the harness of hostile_test.go: a
// gateway replaced by a fresh one on the same state directory, one with no
// state directory, ESN SAs met past 2^32, and an SA whose sequence numbers
// run out. No (SPI, IV) pair ever goes out twice.

// TestGatewayRestartsNoIVReuse: for AES-GCM and ChaCha20-Poly1305, the
// gateway is replaced by a fresh one five times — the state directory the
// one thing they share, as after a crash — and its SAs are once taken away
// and given back (their state forgotten). In snoop mode the restarts come
// in the middle of one transfer; in split mode between transfers, each a
// new flow the new gateway splits (a split gateway that dies loses the
// bytes it acknowledged early: the README says so). No (SPI, IV) pair is
// ever used on two packets, the receivers refuse only what was in flight
// at a switch, the bytes arrive.
func TestGatewayRestartsNoIVReuse(t *testing.T) {
	for _, enc := range []ipsec.Enc{ipsec.EncAESGCM16, ipsec.EncChaCha20Poly1305} {
		for _, mode := range []engine.Mode{engine.ModeSnoop, engine.ModeSplit} {
			t.Run(enc.String()+"-"+mode.String(), func(t *testing.T) {
				if testing.Short() && (enc != ipsec.EncAESGCM16 || mode != engine.ModeSnoop) {
					t.Skip("-short (the race run): one case of four")
				}
				n := newTestNet(t, enc, seqivIV{0x1234}, seqivIV{0x5678}, lossyRadio, mode)
				var gws []*Gateway
				restart := func(i int) {
					switch {
					case i < 5:
						g, err := New(Config{Engine: engine.Config{Mode: mode}, State: n.state}, n.freshSAD(t), n.G.out)
						if err != nil {
							panic(err)
						}
						n.swap(g)
						gws = append(gws, g)
					case i == 5:
						g := n.cur.Load()
						g.SetSAD(nil) // the SAs leave (they drain)…
						time.Sleep(50 * time.Millisecond)
						g.SetSAD(n.freshSAD(t)) // …and come back as new entries
					}
				}
				if mode == engine.ModeSnoop {
					stop := inject(250*time.Millisecond, restart)
					n.transfer(t, n.A, n.B, 5001, 5<<20)
					stop()
				} else {
					for i := range 6 {
						n.transfer(t, n.A, n.B, uint16(5001+i), 512<<10)
						restart(i)
					}
				}
				n.transfer(t, n.B, n.A, 6000, 512<<10)
				if len(gws) < 5 {
					t.Fatalf("%d restarts", len(gws))
				}
				sealed := uint64(0)
				for _, g := range gws {
					sealed += g.Stats().Sealed
				}
				n.ivs.mu.Lock()
				t.Logf("%d gateways sealed %d packets; %d ESP packets logged; %d refused as replays never accepted", len(gws)+1, sealed, n.ivs.n, n.refusals().FreshRefused)
				n.ivs.mu.Unlock()
				if sealed < 1000 {
					t.Fatalf("the restarted gateways sealed %d packets", sealed)
				}
				checkEndpoints(t, n, 6*200)
			})
		}
	}
}

// TestGatewayNoStateDir: without a state directory the gateway never
// seals on an SA with counter IVs (it relays it, counted); the transfer
// passes end to end untouched. AES-CBC, whose IVs are random, is sealed on.
func TestGatewayNoStateDir(t *testing.T) {
	for _, tc := range []struct {
		enc    ipsec.Enc
		sealed bool
	}{{ipsec.EncAESGCM16, false}, {ipsec.EncAESCBC, true}} {
		t.Run(tc.enc.String(), func(t *testing.T) {
			radio := lossyRadio
			radio.Loss = 0
			var ivA, ivB ipsec.IVSource = seqivIV{0x77}, seqivIV{0x99}
			if tc.enc == ipsec.EncAESCBC {
				ivA, ivB = nil, nil // CBC's own random-keyed IVs
			}
			n := newTestNet(t, tc.enc, ivA, ivB, radio, engine.ModeSplit)
			g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}}, n.freshSAD(t), n.G.out)
			if err != nil {
				t.Fatal(err)
			}
			n.swap(g)
			n.transfer(t, n.A, n.B, 5001, 1<<20)
			st := g.Stats()
			if tc.sealed != (st.Sealed > 0) || !tc.sealed && (st.NoState == 0 || st.Opened != 0) {
				t.Fatalf("%+v", st)
			}
			checkEndpoints(t, n, 0)
		})
	}
}

// TestGatewayESNLate: ESN SAs whose senders are past 2^32 packets when
// the gateway first sees them (RFC 4303 Appendix A3): the gateway finds
// the high half, opens, and seals with the right one.
func TestGatewayESNLate(t *testing.T) {
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	ab.ESN, ba.ESN = true, true
	n := newTestNetSAs(t, ab, ba, seqivIV{0x77}, seqivIV{0x99}, lossyRadio, engine.ModeSplit, ipsec.ClassWrite)
	for _, sa := range []*ipsec.SA{n.aOut, n.bOut} {
		sa.SetOutSeq(3<<32 + 12345)
	}
	// The routers' inbound windows are past 2^32 too: they have been
	// receiving all along.
	for _, sa := range []*ipsec.SA{n.aIn, n.bIn} {
		_, bm := sa.WindowState()
		clear(bm)
		sa.SetWindowState(3<<32+12000, bm)
	}
	n.transfer(t, n.A, n.B, 5001, 1<<20)
	st := n.G.Stats()
	if st.Opened == 0 || st.Sealed == 0 || st.Engine.EarlyAcked < 1<<20 {
		t.Fatalf("%+v", st)
	}
	for _, s := range n.G.SAs() {
		if s.EndpointSeq < 3<<32 {
			t.Fatalf("SA %v: endpoint seq %#x: the high half was not found", s.ID, s.EndpointSeq)
		}
	}
	checkEndpoints(t, n, 0)
}

// TestGatewaySeqExhausted: an SA without ESN whose sender is near 2^32 − 1:
// the gateway numbers up to 2^32 − 1 and no further (RFC 4303 §3.3.3: no
// cycling) — never a number twice — and then passes the endpoint's packets
// as they came; the receiver refuses those up to the gateway's last number
// (the lead) and nothing after.
func TestGatewaySeqExhausted(t *testing.T) {
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	tx, err := ipsec.New(ab)
	if err != nil {
		t.Fatal(err)
	}
	tx.SetIVSource(seqivIV{0x4242})
	rx, err := ipsec.New(ab)
	if err != nil {
		t.Fatal(err)
	}
	sad := &ipsec.SAD{}
	e, _ := ipsec.NewEntry(ab)
	sad.Add(e)
	var out [][]byte
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSnoop}, State: statedir.Memory(), SeqJump: 20},
		sad, func(_ engine.Side, p []byte) { out = append(out, append([]byte(nil), p...)) })
	if err != nil {
		t.Fatal(err)
	}
	const start = 1<<32 - 60
	tx.SetOutSeq(start)
	w, r := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:40000")
	seen := map[uint32]bool{}
	accepted, refused := 0, 0
	originals := map[string]bool{}
	for i := range 58 { // the sender's numbers start+1 … 2^32 − 3
		p := seal(tx, packettest.Segment(w, r, header.TCPAck, uint32(1000+i*100), 1, 100, nil, make([]byte, 100)))
		originals[string(p)] = true
		g.Process(engine.Wire, p)
	}
	for _, p := range out {
		l, err := ipsec.Locate(p)
		if err != nil || l.Kind != ipsec.KindESP {
			t.Fatalf("not ESP: %v", err)
		}
		if !originals[string(p)] { // sealed by the gateway
			if seen[l.Seq] {
				t.Fatalf("the gateway sealed with sequence number %d twice", l.Seq)
			}
			seen[l.Seq] = true
		}
		if _, err := rx.Open(p); err == nil {
			accepted++
		} else if errors.Is(err, ipsec.ErrReplay) || errors.Is(err, ipsec.ErrTooOld) {
			refused++
		} else {
			t.Fatalf("receiver: %v", err)
		}
	}
	st := g.Stats()
	t.Logf("accepted %d, refused %d; gateway %+v", accepted, refused, st)
	if st.SeqExhausted == 0 || st.Sealed == 0 {
		t.Fatalf("the gateway never ran out: %+v", st)
	}
	if refused > 20+2 || accepted+refused != len(out) {
		t.Fatalf("refused %d: more than the lead", refused)
	}
}
