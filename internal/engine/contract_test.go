package engine

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/ipsec/header"
)

// emitted is one packet handed to Output, with what the engine said of it.
type emitted struct {
	to  Side
	pkt []byte
	m   Emitted
}

func newContractEngine(t *testing.T, cfg Config, depth *int) (*Engine, *[]emitted) {
	var out []emitted
	var mu sync.Mutex
	cfg.Clock = netem.NewSimClock(time.Unix(0, 0))
	e, err := New(cfg, func(to Side, pkt []byte, m Emitted) {
		mu.Lock()
		defer mu.Unlock()
		if depth != nil {
			*depth++
			defer func() { *depth-- }()
			if *depth > 1 {
				panic("Output entered again from inside Output")
			}
		}
		out = append(out, emitted{to, append([]byte(nil), pkt...), m})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, &out
}

// TestEmittedOrigins: every packet the engine hands on says what it is —
// the packet being processed (with its tag), a copy from snoop's cache, or
// one the engine built — so its caller never has to guess.
func TestEmittedOrigins(t *testing.T) {
	type tag struct{ n int }
	syn := []byte{header.TCPOptMSS, 4, 0, mss}
	handshake := func(e *Engine, kind Kind, wire func([]byte) []byte) {
		for i, p := range [][]byte{
			mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, syn...),
			mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, syn...),
			mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 65535, 0),
		} {
			from := Wire
			if i == 1 {
				from = Radio
			}
			e.Handle(from, p, Input{Kind: kind, Wire: wire(p), Tag: &tag{i}})
		}
	}
	same := func(p []byte) []byte { return p }
	t.Run("split", func(t *testing.T) {
		e, out := newContractEngine(t, Config{Mode: ModeSplit}, nil)
		handshake(e, Verified, same)
		for i, o := range *out {
			if tg, ok := o.m.Tag.(*tag); o.m.Origin != Forwarded || !ok || tg.n != i {
				t.Fatalf("handshake packet %d: %+v", i, o.m)
			}
		}
		*out = nil
		e.Handle(Wire, mkseg(wireHost, radioHost, header.TCPAck|header.TCPPsh, isnW+1, isnR+1, 65535, mss), Input{Tag: &tag{9}})
		e.Handle(Wire, mkseg(wireHost, radioHost, header.TCPAck|header.TCPPsh, isnW+1+mss, isnR+1, 65535, mss), Input{Tag: &tag{10}})
		if len(*out) == 0 {
			t.Fatal("split sent nothing for two segments")
		}
		for _, o := range *out {
			if o.m.Origin != Built || o.m.Tag != nil || o.m.Opaque {
				t.Fatalf("split's packets are its own: %+v", o.m)
			}
		}
	})
	t.Run("snoop", func(t *testing.T) {
		e, out := newContractEngine(t, Config{Mode: ModeSnoop, SnoopOriginal: true}, nil)
		handshake(e, Verified, same)
		*out = nil
		for i := range 3 {
			e.Handle(Wire, mkseg(wireHost, radioHost, header.TCPAck|header.TCPPsh, isnW+1+uint32(i*mss), isnR+1, 65535, mss), Input{Tag: &tag{i}})
		}
		for i, o := range *out {
			if tg, ok := o.m.Tag.(*tag); o.m.Origin != Forwarded || !ok || tg.n != i {
				t.Fatalf("forwarded segment %d: %+v", i, o.m)
			}
		}
		*out = nil
		ack := mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+mss, 65535, 0)
		e.Handle(Radio, ack, Input{Tag: &tag{20}})
		e.Handle(Radio, ack, Input{Tag: &tag{21}}) // a duplicate: the engine resends segment 1 from its cache
		var cached int
		for _, o := range *out {
			if o.m.Origin == Cached {
				cached++
				if o.to != Radio || o.m.Tag != nil || header.TCP(o.pkt[20:]).Seq() != isnW+1+mss {
					t.Fatalf("cached resend: %+v", o)
				}
			}
		}
		if cached != 1 {
			t.Fatalf("%d cached resends, want 1: %+v", cached, *out)
		}
	})
	t.Run("opaque", func(t *testing.T) {
		e, out := newContractEngine(t, Config{Mode: ModeSplit}, nil)
		wire := func(p []byte) []byte { return append([]byte("ciphertext:"), p...) }
		handshake(e, Opaque, wire)
		d := mkseg(wireHost, radioHost, header.TCPAck|header.TCPPsh, isnW+1, isnR+1, 65535, mss)
		e.Handle(Wire, d, Input{Kind: Opaque, Wire: wire(d)})
		for _, o := range *out {
			if !o.m.Opaque || o.m.Origin != Forwarded || string(o.pkt[:11]) != "ciphertext:" {
				t.Fatalf("an opaque flow's packet: %+v", o.m)
			}
		}
	})
}

// TestRequestsFromOutput: Output may queue requests (it runs under a
// shard's lock); they are served once the lock is released, and Output is
// never entered from inside itself.
func TestRequestsFromOutput(t *testing.T) {
	depth := 0
	var e *Engine
	var asked bool
	var out *[]emitted
	e, out = newContractEngine(t, Config{Mode: ModeSplit}, &depth)
	syn := []byte{header.TCPOptMSS, 4, 0, mss}
	e.Process(Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, syn...))
	e.Process(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, syn...))
	e.Process(Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 65535, 0))
	*out = nil
	// A wrapper Output that asks for a keep-alive toward the wire host the
	// first time it sees a packet.
	for _, s := range e.shards {
		inner := s.out
		s.out = func(to Side, pkt []byte, m Emitted) {
			inner(to, pkt, m)
			if !asked {
				asked = true
				if !e.Request(Request{Wire: wireHost, Radio: radioHost, To: Wire, Kind: RequestElicit}) {
					t.Error("request refused")
				}
			}
		}
	}
	e.Process(Wire, mkseg(wireHost, radioHost, header.TCPAck|header.TCPPsh, isnW+1, isnR+1, 65535, mss))
	var keepalive bool
	for _, o := range *out {
		if o.to == Wire && len(o.pkt) == 20+20+1 && o.m.Origin == Built {
			keepalive = true
		}
	}
	if st := e.Stats(); !keepalive || st.Requests != 1 {
		t.Fatalf("the queued keep-alive was not sent (requests served %d): %+v", st.Requests, *out)
	}
}

// TestShardsConcurrent: with several shards, flows opened and fed from
// many goroutines at once land each in one shard (every packet of a flow
// names the same shard), and the summed counters and tables see them all.
func TestShardsConcurrent(t *testing.T) {
	const flows = 64
	var mu sync.Mutex
	shardOf := map[netip.AddrPort]int{}
	bad := 0
	e, err := New(Config{Mode: ModeSnoop, Shards: 4, Clock: netem.NewSimClock(time.Unix(0, 0))}, func(to Side, pkt []byte, m Emitted) {
		src, _ := netip.AddrFromSlice(pkt[12:16])
		port := uint16(pkt[20])<<8 | uint16(pkt[21])
		if to == Wire {
			src, _ = netip.AddrFromSlice(pkt[16:20])
			port = uint16(pkt[22])<<8 | uint16(pkt[23])
		}
		k := netip.AddrPortFrom(src, port)
		mu.Lock()
		defer mu.Unlock()
		if s, ok := shardOf[k]; ok && s != m.Shard {
			bad++
		}
		shardOf[k] = m.Shard
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var wg sync.WaitGroup
	for i := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := netip.MustParseAddrPort(fmt.Sprintf("10.0.%d.1:80", i))
			r := netip.MustParseAddrPort(fmt.Sprintf("10.9.%d.2:40000", i))
			e.Process(Wire, mkseg(w, r, header.TCPSyn, isnW, 0, 65535, 0))
			e.Process(Radio, mkseg(r, w, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0))
			e.Process(Wire, mkseg(w, r, header.TCPAck, isnW+1, isnR+1, 65535, 0))
			for j := range 20 {
				e.Process(Wire, mkseg(w, r, header.TCPAck, isnW+1+uint32(j*mss), isnR+1, 65535, mss))
				e.Process(Radio, mkseg(r, w, header.TCPAck, isnR+1, isnW+1+uint32((j+1)*mss), 65535, 0))
			}
		}()
	}
	wg.Wait()
	st := e.Stats()
	used := map[int]bool{}
	for _, s := range shardOf {
		used[s] = true
	}
	if bad != 0 || st.Flows != flows || len(e.Flows()) != flows || len(e.Export(false)) != flows || st.Packets != flows*43 || st.Cached != flows*20 {
		t.Fatalf("%d packets named another shard than their flow's; %s", bad, st.Summary())
	}
	if len(used) != 4 {
		t.Fatalf("64 flows in %d of 4 shards", len(used))
	}
}

// TestShardSpread: flows that differ in one port or one address octet —
// a cell site's mobiles, one server — spread evenly over the shards.
func TestShardSpread(t *testing.T) {
	const shards, n = 8, 4096
	for _, vary := range []string{"port", "address"} {
		count := make([]int, shards)
		for i := range n {
			w := netip.MustParseAddrPort("192.0.2.10:443")
			r := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 40000)
			if vary == "port" {
				r = netip.AddrPortFrom(netip.MustParseAddr("10.1.0.1"), uint16(30000+i))
			}
			count[flowKey{wire: w, radio: r}.hash()%shards]++
		}
		for s, c := range count {
			if c < n/shards*3/4 || c > n/shards*5/4 {
				t.Fatalf("flows varying by %s: shard %d has %d of %d (%v)", vary, s, c, n, count)
			}
		}
	}
}

// TestBatchAcks: split acknowledges a batch of segments handed over with
// Input.More once, with the batch's last packet — as a receiver does for
// a GRO batch — and Flush sends an ACK held back when the batch ended on
// another flow's packet.
func TestBatchAcks(t *testing.T) {
	e, out := newContractEngine(t, Config{Mode: ModeSplit}, nil)
	syn := []byte{header.TCPOptMSS, 4, 0, mss}
	e.Process(Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, syn...))
	e.Process(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, syn...))
	e.Process(Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 65535, 0))
	acks := func() (n int, last uint32) {
		for _, o := range *out {
			if o.to == Wire && len(o.pkt) == 40 {
				n, last = n+1, header.TCP(o.pkt[20:]).Ack()
			}
		}
		*out = nil
		return n, last
	}
	acks()
	data := func(i int) []byte {
		return mkseg(wireHost, radioHost, header.TCPAck, isnW+1+uint32(i*mss), isnR+1, 65535, mss)
	}
	for i := range 10 {
		e.Handle(Wire, data(i), Input{More: i < 9})
	}
	if n, last := acks(); n != 1 || last != isnW+1+10*mss {
		t.Fatalf("a batch of 10 segments: %d ACKs toward the sender (last %d), want one for all", n, last)
	}
	for i := 10; i < 20; i++ {
		e.Handle(Wire, data(i), Input{More: true}) // the batch ends on another flow's packet
	}
	if n, _ := acks(); n != 0 {
		t.Fatalf("%d ACKs while the batch went on", n)
	}
	e.Flush()
	if n, last := acks(); n != 1 || last != isnW+1+20*mss {
		t.Fatalf("Flush: %d ACKs (last %d), want one for all", n, last)
	}
	for i := 20; i < 30; i++ {
		e.Handle(Wire, data(i), Input{})
	}
	if n, _ := acks(); n != 5 {
		t.Fatalf("without batches: %d ACKs for 10 segments, want one per two", n)
	}
}
