package gateway

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
)

// TestConcurrentNonces: many goroutines on at least two cores drive flows
// that share one SA each way, in split and snoop mode, so that seals on
// one SA run at once from several engine shards; no (SPI, IV) pair goes
// out twice, and no sequence number the gateway chose goes out twice on
// one SA. Run under -race in CI (the race run), where it also checks the
// concurrent paths for data races.
func TestConcurrentNonces(t *testing.T) {
	prev := runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 4))
	defer runtime.GOMAXPROCS(prev)
	for _, mode := range []engine.Mode{engine.ModeSplit, engine.ModeSnoop} {
		for _, enc := range []ipsec.Enc{ipsec.EncAESGCM16, ipsec.EncChaCha20Poly1305} {
			t.Run(mode.String()+"-"+enc.String(), func(t *testing.T) {
				var mu sync.Mutex
				ivs := map[[12]byte]bool{} // SPI, IV
				seqs := map[[8]byte]bool{} // SPI, seq of packets the gateway sealed
				var dupIV, dupSeq, ours int
				r := newPathRigN(t, enc, true, mode, 8, true, func(pkt []byte) {
					if len(pkt) < 20+16 || pkt[9] != 50 { // outer IPv4, ESP
						return
					}
					esp := pkt[20:]
					var k [12]byte
					copy(k[:4], esp[:4])
					copy(k[4:], esp[8:16])
					spi := binary.BigEndian.Uint32(esp)
					salt := uint64(0x1111)
					if spi&0xff == 0x02 {
						salt = 0x2222
					}
					v := binary.BigEndian.Uint64(esp[8:]) ^ salt
					mu.Lock()
					defer mu.Unlock()
					if ivs[k] {
						dupIV++
					}
					ivs[k] = true
					if v>>63 == 1 { // the gateway's IV space
						ours++
						var s [8]byte
						copy(s[:], esp[:8])
						if seqs[s] {
							dupSeq++
						}
						seqs[s] = true
					}
				})
				for range 6 {
					for _, f := range r.flows {
						f.batch(64)
					}
					r.run()
				}
				st := r.g.Stats()
				t.Logf("%d ESP packets out, %d sealed by the gateway; %+v", len(ivs), ours, st.Summary())
				if dupIV != 0 || dupSeq != 0 {
					t.Fatalf("%d (SPI, IV) pairs and %d gateway sequence numbers went out twice", dupIV, dupSeq)
				}
				if ours < 1000 {
					t.Fatalf("the gateway sealed only %d packets: the test did not test", ours)
				}
			})
		}
	}
}

// TestRouteHash: a route and its reverse land in one part of the flow
// tables, and routes spread over the parts.
func TestRouteHash(t *testing.T) {
	count := make([]int, routeShards)
	for i := range 4096 {
		r := route{netip.MustParseAddrPort("192.0.2.10:443"), netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), uint16(40000+i%7))}
		if r.hash() != r.reverse().hash() {
			t.Fatalf("%v and its reverse hash apart", r)
		}
		count[r.hash()%routeShards]++
	}
	for s, c := range count {
		if c < 4096/routeShards*3/4 || c > 4096/routeShards*5/4 {
			t.Fatalf("part %d has %d of 4096 routes: %v", s, c, count)
		}
	}
}

// TestSealAcrossEntryReplacement: while flows sharing one SA each way are
// sealed on from several shards, the SAD is replaced again and again
// with new entries for the same SAs (the same keys: a security server or
// an SA file giving them again), so that every seal may race a state
// being taken over (inherit). No sequence number the gateway chose goes
// out twice on an SA, and no seal fails: a seal on a state taken over
// goes to the state that took it (lockCurrent). Under CI's load this
// race once left a packet to be sealed on a wiped entry.
func TestSealAcrossEntryReplacement(t *testing.T) {
	prev := runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 4))
	defer runtime.GOMAXPROCS(prev)
	var mu sync.Mutex
	seqs := map[[8]byte]bool{}
	dup := 0
	r := newPathRigN(t, ipsec.EncAESGCM16, true, engine.ModeSplit, 8, true, func(pkt []byte) {
		if len(pkt) < 20+16 || pkt[9] != 50 {
			return
		}
		esp := pkt[20:]
		salt := uint64(0x1111)
		if binary.BigEndian.Uint32(esp)&0xff == 0x02 {
			salt = 0x2222
		}
		if (binary.BigEndian.Uint64(esp[8:])^salt)>>63 != 1 { // not the gateway's IV space
			return
		}
		var s [8]byte
		copy(s[:], esp[:8])
		mu.Lock()
		defer mu.Unlock()
		if seqs[s] {
			dup++
		}
		seqs[s] = true
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	replaced := 0
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			sad := &ipsec.SAD{}
			for _, c := range r.flows[0].cfgs {
				c.EncKey, c.IntegKey = slices.Clone(c.EncKey), slices.Clone(c.IntegKey)
				e, err := ipsec.NewEntry(c)
				if err != nil {
					t.Error(err)
					return
				}
				sad.Add(e)
			}
			r.g.SetSAD(sad)
			replaced++
			runtime.Gosched()
		}
	}()
	for range 6 {
		for _, f := range r.flows {
			f.batch(64)
		}
		r.run()
	}
	close(stop)
	wg.Wait()
	st := r.g.Stats()
	t.Logf("%d SAD replacements, %d sequence numbers the gateway chose; %s", replaced, len(seqs), st.Summary())
	if dup != 0 || st.SealErrors != 0 {
		t.Fatalf("%d sequence numbers went out twice, %d seals failed", dup, st.SealErrors)
	}
	if len(seqs) < 1000 || replaced < 10 {
		t.Fatalf("%d sealed, %d replacements: the test did not test", len(seqs), replaced)
	}
}

// TestSourceRefusedStaysOut: an SA two sources give is taken from the
// first, the second's entry wiped; when the first withdraws it and the
// second offers its (wiped) entry again — the IKE follower does, with
// every exchange it follows — that entry stays out of the SAD: a state
// on it would seal with no keys.
func TestSourceRefusedStaysOut(t *testing.T) {
	c := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	entry := func() *ipsec.Entry {
		cc := c
		cc.EncKey = slices.Clone(c.EncKey)
		e, err := ipsec.NewEntry(cc)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}}, &ipsec.SAD{}, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	server, ike := entry(), entry()
	if err := g.SetSource("secserver", []*ipsec.Entry{server}); err != nil {
		t.Fatal(err)
	}
	if err := g.SetSource("ike", []*ipsec.Entry{ike}); err == nil || !ike.Write.HardExpired() {
		t.Fatalf("the second source's copy: %v, wiped %v", err, ike.Write.HardExpired())
	}
	if err := g.SetSource("secserver", nil); err != nil { // withdrawn
		t.Fatal(err)
	}
	g.SetSource("ike", []*ipsec.Entry{ike}) // offered again
	if got, ok := g.sad.Load().Get(c.ID()); ok {
		t.Fatalf("a wiped entry entered the SAD (hard expired %v)", got.Write.HardExpired())
	}
	fresh := entry() // a live copy is taken
	if err := g.SetSource("ike", []*ipsec.Entry{fresh}); err != nil {
		t.Fatal(err)
	}
	if got, ok := g.sad.Load().Get(c.ID()); !ok || got != fresh {
		t.Fatal("a live entry was refused")
	}
}
