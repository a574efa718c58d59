package engine

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/ipsec/header"
)

var (
	wireHost  = netip.MustParseAddrPort("10.0.0.1:80")
	radioHost = netip.MustParseAddrPort("10.9.0.2:40000")
)

// seg builds an IPv4 TCP segment.
func mkseg(src, dst netip.AddrPort, flags uint8, seq, ack uint32, win uint16, payload int, opts ...byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptNop)
	}
	tl := header.TCPMinLen + len(opts)
	b := make([]byte, 20+tl+payload)
	header.WriteIPv4(b, 0, len(b), 1, true, 64, header.ProtoTCP, src.Addr(), dst.Addr())
	t := header.TCP(b[20:])
	binary.BigEndian.PutUint16(t, src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	t.SetSeq(seq)
	t.SetAck(ack)
	t[12] = byte(tl/4) << 4
	t.SetFlags(flags)
	t.SetWindow(win)
	copy(t[20:], opts)
	for i := 0; i < payload; i++ {
		t[tl+i] = byte(seq + uint32(i))
	}
	s, d := src.Addr().As4(), dst.Addr().As4()
	t.UpdateChecksum(s[:], d[:])
	return b
}

type sent struct {
	to  Side
	pkt []byte
}

type harness struct {
	t     *testing.T
	clock *netem.SimClock
	e     *Engine
	out   []sent
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, clock: netem.NewSimClock(time.Unix(0, 0))}
	h.e = mustNew(t, Config{Clock: h.clock}, func(to Side, pkt []byte) {
		h.out = append(h.out, sent{to, append([]byte(nil), pkt...)})
	})
	return h
}

// take returns and clears what the engine emitted.
func (h *harness) take() []sent {
	o := h.out
	h.out = nil
	return o
}

func tcpOf(p []byte) header.TCP { return header.TCP(p[20:]) }

const isnW, isnR = 1000, 5000
const mss = 100

// establish runs the three-way handshake through the engine.
func (h *harness) establish() {
	h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, header.TCPOptMSS, 4, 0, mss))
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, header.TCPOptMSS, 4, 0, mss))
	h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 65535, 0))
	if o := h.take(); len(o) != 3 || o[0].to != Radio || o[1].to != Wire || o[2].to != Radio {
		h.t.Fatalf("handshake not forwarded: %+v", o)
	}
}

func (h *harness) data(i int) []byte {
	return mkseg(wireHost, radioHost, header.TCPAck|header.TCPPsh, isnW+1+uint32(i*mss), isnR+1, 65535, mss)
}

func (h *harness) ack(n int) []byte {
	return mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+uint32(n*mss), 65535, 0)
}

// TestSnoopDupAckRepair: segment 1 of 0…4 is lost on the radio; the first
// duplicate ACK makes the engine resend it and is swallowed, as are the
// duplicates the segments behind it cause; the new ACK goes through.
func TestSnoopDupAckRepair(t *testing.T) {
	h := newHarness(t)
	h.establish()
	for i := 0; i < 5; i++ {
		h.e.Process(Wire, h.data(i))
	}
	if o := h.take(); len(o) != 5 || o[4].to != Radio {
		t.Fatalf("data not forwarded: %d", len(o))
	}
	h.e.Process(Radio, h.ack(1)) // segment 0 arrived
	if o := h.take(); len(o) != 1 || o[0].to != Wire || tcpOf(o[0].pkt).Ack() != isnW+1+mss {
		t.Fatalf("new ack not forwarded: %+v", o)
	}
	h.e.Process(Radio, h.ack(1)) // dup: segment 2 arrived, 1 missing
	o := h.take()
	if len(o) != 1 || o[0].to != Radio || tcpOf(o[0].pkt).Seq() != isnW+1+mss {
		t.Fatalf("want a local resend of segment 1 toward the radio, got %+v", o)
	}
	h.e.Process(Radio, h.ack(1)) // dups from segments 3 and 4: swallowed
	h.e.Process(Radio, h.ack(1))
	if o := h.take(); len(o) != 0 {
		t.Fatalf("expected duplicate ACKs were forwarded: %d", len(o))
	}
	h.e.Process(Radio, h.ack(5)) // the resend filled the hole
	if o := h.take(); len(o) != 1 || o[0].to != Wire || tcpOf(o[0].pkt).Ack() != isnW+1+5*mss {
		t.Fatalf("cumulative ack not forwarded: %+v", o)
	}
	st := h.e.Stats()
	if st.LocalRexmits != 1 || st.SuppressedDupAcks != 3 || st.CachedBytes != 0 || st.Cached != 5 {
		t.Fatalf("%+v", st)
	}
	fl := h.e.Flows()
	if len(fl) != 1 || fl[0].LocalRexmits != 1 || fl[0].SuppressedDupAcks != 3 || fl[0].SRTT != 0 || fl[0].Wire != wireHost {
		t.Fatalf("per-flow counters: %+v", fl)
	}
}

// TestSnoopTimeout: with no ACK at all, the engine resends the oldest
// segment after its local RTO, backing off, at most MaxLocalRexmits times.
func TestSnoopTimeout(t *testing.T) {
	h := newHarness(t)
	h.establish()
	h.e.Process(Wire, h.data(0))
	h.take()
	h.clock.Advance(150 * time.Millisecond) // initial RTO 200 ms
	if o := h.take(); len(o) != 0 {
		t.Fatal("resent before the RTO")
	}
	h.clock.Advance(60 * time.Millisecond)
	if o := h.take(); len(o) != 1 || o[0].to != Radio || tcpOf(o[0].pkt).Seq() != isnW+1 {
		t.Fatalf("no timeout resend: %+v", o)
	}
	h.clock.Advance(10 * time.Second)
	if st := h.e.Stats(); st.TimeoutRexmits != 6 {
		t.Fatalf("timeout resends %d, want MaxLocalRexmits = 6", st.TimeoutRexmits)
	}
	h.e.Process(Radio, h.ack(1))
	h.clock.Advance(10 * time.Second)
	if st := h.e.Stats(); st.TimeoutRexmits != 6 || st.CachedBytes != 0 {
		t.Fatalf("after the ack: %+v", st)
	}
}

// TestMidStreamRelayed: a flow whose SYN the engine never saw is relayed
// untouched and never cached.
func TestMidStreamRelayed(t *testing.T) {
	h := newHarness(t)
	p := h.data(0)
	h.e.Process(Wire, p)
	o := h.take()
	if len(o) != 1 || o[0].to != Radio || string(o[0].pkt) != string(p) || h.e.Stats().Cached != 0 || h.e.Stats().Relayed != 1 {
		t.Fatalf("%+v %+v", o, h.e.Stats())
	}
}

// TestSequenceWrap: snoop across the 2^32 wrap.
func TestSequenceWrap(t *testing.T) {
	h := newHarness(t)
	start := uint32(0xffffffff - 2*mss)
	h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPSyn, start, 0, 65535, 0))
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, start+1, 65535, 0))
	h.take()
	for i := 0; i < 4; i++ {
		h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPAck, start+1+uint32(i*mss), isnR+1, 65535, mss))
	}
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPAck, isnR+1, start+1+2*mss, 65535, 0)) // across the wrap
	h.take()
	if st := h.e.Stats(); st.CachedBytes != 2*pktBufCap { // the buffers held, not the packets' lengths
		t.Fatalf("cache after an ack across the wrap: %d bytes", st.CachedBytes)
	}
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPAck, isnR+1, start+1+2*mss, 65535, 0))
	if o := h.take(); len(o) != 1 || tcpOf(o[0].pkt).Seq() != start+1+2*mss {
		t.Fatalf("resend across the wrap: %+v", o)
	}
}

// TestRSTAndFINForget: RST drops the flow; FIN both ways with everything
// acknowledged forgets it.
func TestRSTAndFINForget(t *testing.T) {
	h := newHarness(t)
	h.establish()
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPRst|header.TCPAck, isnR+1, isnW+1, 0, 0))
	if h.e.Stats().Flows != 0 || len(h.take()) != 1 {
		t.Fatal("rst")
	}
	h.establish()
	h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPFin|header.TCPAck, isnW+1, isnR+1, 65535, 0))
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPFin|header.TCPAck, isnR+1, isnW+2, 65535, 0))
	if st := h.e.Stats(); st.Flows != 0 {
		t.Fatalf("flow kept after FIN both ways, all acked: %+v", st)
	}
}

// FuzzProcess feeds anything to the engine, in snoop and in split mode,
// from either side: no panic, and the flow table and buffers stay bounded.
func FuzzProcess(f *testing.F) {
	f.Add(mkseg(wireHost, radioHost, header.TCPSyn, 1, 0, 100, 0, header.TCPOptMSS, 4, 0, 100), true)
	f.Add(mkseg(radioHost, wireHost, header.TCPAck, 7, 9, 100, 10), false)
	f.Fuzz(func(t *testing.T, pkt []byte, fromWire bool) {
		for _, mode := range []Mode{ModeSnoop, ModeSplit} {
			c := netem.NewSimClock(time.Unix(0, 0))
			e := mustNew(t, Config{Clock: c, MaxFlows: 4, CachePerFlow: 4096, Mode: mode, BufferPerFlow: 64 << 10}, func(Side, []byte) {})
			from := Radio
			if fromWire {
				from = Wire
			}
			for i := 0; i < 3; i++ {
				e.Process(from, pkt)
				e.Process(from.other(), pkt)
			}
			c.Advance(time.Minute)
			if st := e.Stats(); st.Flows > 4 || st.CachedBytes > 4*max(4096, pktBufCap) || st.BufferedBytes > 4*2*(64<<10+3*chunkSize) {
				t.Fatalf("%v: unbounded: %+v", mode, st)
			}
		}
	})
}

// TestExportImport moves a flow with a cached hole to a second engine
// through JSON; the second engine repairs the hole from the imported cache.
func TestExportImport(t *testing.T) {
	h := newHarness(t)
	h.establish()
	for i := 0; i < 4; i++ {
		h.e.Process(Wire, h.data(i))
	}
	h.e.Process(Radio, h.ack(1))
	h.take()
	b, err := json.Marshal(h.e.Export(true))
	if err != nil {
		t.Fatal(err)
	}
	if h.e.Stats().Flows != 0 {
		t.Fatal("export with remove left the flow")
	}
	var states []FlowState
	if err := json.Unmarshal(b, &states); err != nil {
		t.Fatal(err)
	}
	h2 := newHarness(t)
	if err := h2.e.Import(states); err != nil {
		t.Fatal(err)
	}
	if st := h2.e.Stats(); st.Flows != 1 || st.CachedBytes != 3*pktBufCap {
		t.Fatalf("imported: %+v", st)
	}
	h2.e.Process(Radio, h2.ack(1)) // duplicate: segment 1 lost
	if o := h2.take(); len(o) != 1 || o[0].to != Radio || tcpOf(o[0].pkt).Seq() != isnW+1+mss {
		t.Fatalf("imported flow did not repair the hole: %+v", o)
	}
	if err := h2.e.Import([]FlowState{{}}); err == nil {
		t.Fatal("empty flow state imported")
	}
}

// TestIdleExpiry: with the table full, a new SYN makes room by forgetting
// flows idle longer than IdleTimeout, and only those.
func TestIdleExpiry(t *testing.T) {
	c := netem.NewSimClock(time.Unix(0, 0))
	e := mustNew(t, Config{Clock: c, MaxFlows: 2, IdleTimeout: time.Minute}, func(Side, []byte) {})
	syn := func(port uint16) []byte {
		return mkseg(wireHost, netip.AddrPortFrom(radioHost.Addr(), port), header.TCPSyn, isnW, 0, 65535, 0)
	}
	e.Process(Wire, syn(1))
	c.Advance(2 * time.Minute)
	e.Process(Wire, syn(2))
	e.Process(Wire, syn(3)) // full: flow 1 is idle, flow 2 is not
	if st := e.Stats(); st.Flows != 2 || st.Expired != 1 || st.Relayed != 0 {
		t.Fatalf("%+v", st)
	}
	e.Process(Wire, syn(4)) // full, nothing idle: relayed untouched
	if st := e.Stats(); st.Flows != 2 || st.Relayed != 1 {
		t.Fatalf("%+v", st)
	}
}

// TestSnoopSACKForwardsDuplicates: on a flow that negotiated SACK the
// engine still repairs locally, but passes the duplicate ACKs on.
func TestSnoopSACKForwardsDuplicates(t *testing.T) {
	h := newHarness(t)
	h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, header.TCPOptSACKPerm, 2))
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, header.TCPOptSACKPerm, 2))
	h.take()
	for i := 0; i < 3; i++ {
		h.e.Process(Wire, h.data(i))
	}
	h.e.Process(Radio, h.ack(1))
	h.take()
	sack := []byte{header.TCPOptNop, header.TCPOptNop, header.TCPOptSACK, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(sack[4:], isnW+1+2*mss)
	binary.BigEndian.PutUint32(sack[8:], isnW+1+3*mss)
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+mss, 65000, 0, sack...)) // window changed too
	o := h.take()
	if len(o) != 2 || o[0].to != Radio || tcpOf(o[0].pkt).Seq() != isnW+1+mss || o[1].to != Wire {
		t.Fatalf("want a local resend and the duplicate forwarded, got %d packets", len(o))
	}
}

// TestWindowUpdateIsNotDuplicate: without SACK, an ACK that only opens
// the window is a window update, not a duplicate; the duplicates after it
// carry the new window and are recognised, and so are duplicates whose
// window shrank (a receiver counting out-of-order data against its
// window, as gVisor's does — Linux takes those as duplicates too).
func TestWindowUpdateIsNotDuplicate(t *testing.T) {
	h := newHarness(t)
	h.establish()
	for i := 0; i < 4; i++ {
		h.e.Process(Wire, h.data(i))
	}
	ack := func(win uint16) []byte { return mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+mss, win, 0) }
	h.e.Process(Radio, ack(40000))
	h.take()
	h.e.Process(Radio, ack(60000)) // the receiver's application read: the window opens
	if o := h.take(); len(o) != 1 || o[0].to != Wire {
		t.Fatalf("window update not forwarded as it is: %+v", o)
	}
	h.e.Process(Radio, ack(60000)) // duplicate, new window
	if o := h.take(); len(o) != 1 || o[0].to != Radio || tcpOf(o[0].pkt).Seq() != isnW+1+mss {
		t.Fatalf("duplicate after a window update not answered: %+v", o)
	}
	h.e.Process(Radio, ack(60000-mss)) // the next duplicate, the out-of-order segment counted against the window
	if o := h.take(); len(o) != 0 {
		t.Fatalf("duplicate with a shrunken window not taken as one: %+v", o)
	}
	if st := h.e.Stats(); st.SuppressedDupAcks != 2 || st.LocalRexmits != 1 {
		t.Fatalf("%+v", st)
	}
}

func mustNew(t testing.TB, cfg Config, out func(Side, []byte)) *Engine {
	t.Helper()
	e, err := New(cfg, func(to Side, pkt []byte, _ Emitted) { out(to, pkt) })
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// setOut replaces the output of every shard.
func (e *Engine) setOut(out Output) {
	for _, s := range e.shards {
		s.out = out
	}
}

// timerFires sums the shards' split timer callbacks.
func (e *Engine) timerFires() uint64 { return e.Stats().TimerFires }

// TestSnoopRefreshesTimestamp: a local resend carries the sender's latest
// TSval (the receiver's PAWS check would drop the cached one), with a
// valid checksum; with SnoopOriginal it is the cached packet, byte for
// byte.
func TestSnoopRefreshesTimestamp(t *testing.T) {
	for _, original := range []bool{false, true} {
		h := newHarness(t)
		h.e.cfg.SnoopOriginal = original
		ts := func(v uint32) []byte {
			return []byte{header.TCPOptNop, header.TCPOptNop, header.TCPOptTimestamp, 10, 0, 0, 0, byte(v), 0, 0, 0, 9}
		}
		h.e.Process(Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, ts(1)...))
		h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, ts(1)...))
		var first []byte
		for i := 0; i < 3; i++ {
			p := mkseg(wireHost, radioHost, header.TCPAck, isnW+1+uint32(i*mss), isnR+1, 65535, mss, ts(uint32(10+i))...)
			if i == 1 {
				first = p
			}
			h.e.Process(Wire, p)
		}
		h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+mss, 65535, 0, ts(2)...))
		h.take()
		h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+mss, 65535, 0, ts(3)...)) // segment 1 lost
		o := h.take()
		if len(o) != 1 || o[0].to != Radio {
			t.Fatalf("original=%v: want one resend, got %d", original, len(o))
		}
		p, _ := parse(o[0].pkt)
		ip := header.IPv4(o[0].pkt)
		if !p.tcp.ChecksumValid(ip.SrcBytes(), ip.DstBytes()) {
			t.Fatalf("original=%v: bad checksum", original)
		}
		if original && !bytes.Equal(o[0].pkt, first) || !original && p.opts.TSVal != 12 {
			t.Fatalf("original=%v: resent TSval %d", original, p.opts.TSVal)
		}
	}
}

// TestProcessOpaque: with a packet it may read but not change, the engine
// forwards, caches and resends the bytes it was given to send — never a
// packet of its own, never the cleartext — even in split mode.
func TestProcessOpaque(t *testing.T) {
	h := newHarness(t)
	h.e.cfg.Mode = ModeSplit
	wire := func(p []byte) []byte { // what the "ciphertext" looks like: the packet, marked
		return append([]byte("CIPHERTEXT:"), p...)
	}
	send := func(from Side, p []byte) { h.e.ProcessOpaque(from, p, wire(p)) }
	send(Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, header.TCPOptMSS, 4, 0, mss))
	send(Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, header.TCPOptMSS, 4, 0, mss))
	send(Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 65535, 0))
	var data [3][]byte
	for i := range data {
		data[i] = h.data(i)
		send(Wire, data[i])
	}
	send(Radio, h.ack(1))
	send(Radio, h.ack(1)) // segment 1 lost: resent from the cache
	for _, o := range h.take() {
		if !bytes.HasPrefix(o.pkt, []byte("CIPHERTEXT:")) {
			t.Fatalf("the engine sent bytes it was not given: %x", o.pkt)
		}
	}
	if st := h.e.Stats(); st.LocalRexmits != 1 || st.EarlyAcked != 0 || st.Emitted != 0 {
		t.Fatalf("%+v", st)
	}
	// Moved to another engine, the flow is still one it may only read:
	// imported as a verified flow, its packets would be relayed untouched.
	h2 := newHarness(t)
	h2.e.cfg.Mode = ModeSplit
	if err := h2.e.Import(h.e.Export(true)); err != nil {
		t.Fatal(err)
	}
	h2.e.ProcessOpaque(Radio, h.ack(2), wire(h.ack(2)))
	for _, o := range h2.take() {
		if !bytes.HasPrefix(o.pkt, []byte("CIPHERTEXT:")) {
			t.Fatalf("after the move, the engine sent bytes it was not given: %x", o.pkt)
		}
	}
	if st := h2.e.Stats(); st.KindRelayed != 0 || st.Relayed != 0 || st.Flows != 1 {
		t.Fatalf("after the move: %+v", st)
	}
}

// TestSnoopZeroAllocs: caching a data segment, forwarding it and cleaning
// it up on its ACK allocate nothing in steady state (pooled buffers, one
// re-armed timer per flow).
func TestSnoopZeroAllocs(t *testing.T) {
	h := newHarness(t)
	h.e.cfg.Clock = netem.RealClock{} // its timers re-arm without allocating
	h.establish()
	const n = 3000
	data := make([][]byte, n)
	acks := make([][]byte, n)
	for i := range n {
		data[i] = h.data(i)
		acks[i] = h.ack(i + 1)
	}
	done := noAllocs(t, h.e, data, acks)
	if st := h.e.Stats(); st.Cached < uint64(done) || st.CachedBytes != 0 {
		t.Fatalf("the engine did not cache and clean: %+v after %d segments", st, done)
	}
}

// noAllocs feeds e data segments from the wire, each followed by its ACK
// from the radio, with the output discarded: a warm-up of 100, then the
// rest measured, which must allocate nothing. It returns how many pairs
// went through.
func noAllocs(t *testing.T, e *Engine, data, acks [][]byte) int {
	t.Helper()
	e.setOut(func(Side, []byte, Emitted) {})
	i := 0
	step := func() {
		e.Process(Wire, data[i])
		e.Process(Radio, acks[i])
		i++
	}
	for range 100 {
		step()
	}
	if a := testing.AllocsPerRun(len(data)-200, step); a != 0 {
		t.Fatalf("%.2f allocations per segment and ACK", a)
	}
	return i
}

// TestSnoopForgedSegments: an RST that is not at what the receiver
// expects leaves the flow and its cache (the endpoint judges the RST; the
// flow is forgotten if nothing follows it); an ACK for bytes never sent
// cleans nothing from the cache; an RST exactly at the receiver's next
// byte forgets the flow.
func TestSnoopForgedSegments(t *testing.T) {
	h := newHarness(t)
	h.establish()
	for i := range 4 {
		h.e.Process(Wire, h.data(i))
	}
	h.take()
	cached := h.e.Stats().CachedBytes
	forged := [][]byte{
		mkseg(radioHost, wireHost, header.TCPRst, isnR+1+5000, 0, 0, 0),                     // radio: not the wire host's RCV.NXT
		mkseg(wireHost, radioHost, header.TCPRst, isnW+1+77, 0, 0, 0),                       // wire: not the radio host's RCV.NXT
		mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+1+100*mss, 65535, 0),         // ACK beyond everything sent
		mkseg(radioHost, wireHost, header.TCPAck|header.TCPRst, isnR+1+1<<30, isnW+1, 0, 0), // far away
	}
	for i, p := range forged {
		from := Radio
		if i == 1 {
			from = Wire
		}
		h.e.Process(from, p)
		if o := h.take(); len(o) != 1 {
			t.Fatalf("forged segment %d not passed on for the endpoint to judge: %+v", i, o)
		}
		if st := h.e.Stats(); st.Flows != 1 || st.CachedBytes != cached {
			t.Fatalf("forged segment %d: %+v", i, st)
		}
	}
	if st := h.e.Stats(); st.RSTIgnored != 3 || st.AckIgnored != 1 {
		t.Fatalf("%+v", st)
	}
	// Traffic goes on: a dup ACK is still repaired from the cache.
	h.e.Process(Radio, h.ack(1))
	h.e.Process(Radio, h.ack(1))
	if o := h.take(); len(o) != 2 || o[1].to != Radio || tcpOf(o[1].pkt).Seq() != isnW+1+mss {
		t.Fatalf("the cache no longer repairs: %+v", o)
	}
	// The wire host's RCV.NXT is isnR+1 (its ACKs): an RST there is exact.
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPRst, isnR+1, 0, 0, 0))
	if st := h.e.Stats(); st.Flows != 0 || st.CachedBytes != 0 {
		t.Fatalf("the exact RST left the flow: %+v", st)
	}
	// An inexact RST with nothing after it: forgotten after HandshakeTimeout.
	h.take()
	h.establish()
	h.e.Process(Wire, h.data(0))
	h.e.Process(Radio, mkseg(radioHost, wireHost, header.TCPRst, isnR+1+99, 0, 0, 0))
	h.clock.Advance(46 * time.Second) // HandshakeTimeout, and the sweep every 15 s
	if st := h.e.Stats(); st.Flows != 0 || st.CachedBytes != 0 {
		t.Fatalf("a flow reset for good was kept: %+v", st)
	}
}

// TestSnoopCacheBound: tiny segments fill the cache by the buffers they
// hold, not their lengths; no flow and no set of flows holds more than
// the bounds, and what does not fit is forwarded uncached.
func TestSnoopCacheBound(t *testing.T) {
	clock := netem.NewSimClock(time.Unix(0, 0))
	e := mustNew(t, Config{Clock: clock, CachePerFlow: 64 << 10, CacheTotal: 256 << 10}, func(Side, []byte) {})
	for f := range 8 {
		w := netip.AddrPortFrom(wireHost.Addr(), uint16(100+f))
		e.Process(Wire, mkseg(w, radioHost, header.TCPSyn, isnW, 0, 65535, 0))
		e.Process(Radio, mkseg(radioHost, w, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0))
		for i := range 1000 {
			e.Process(Wire, mkseg(w, radioHost, header.TCPAck, isnW+1+uint32(i), isnR+1, 65535, 1))
		}
	}
	st := e.Stats()
	if st.CachedBytes > 256<<10 || st.CachedBytes < 200<<10 || st.CacheFull == 0 {
		t.Fatalf("cache bound: %+v", st)
	}
	for _, fi := range e.Flows() {
		if fi.CachedBytes > 64<<10 {
			t.Fatalf("flow %v holds %d bytes", fi.Wire, fi.CachedBytes)
		}
	}
}
