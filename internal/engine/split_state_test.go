package engine

import (
	"encoding/json"
	"fmt"
	"github.com/espep/espep/internal/seqnum"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/ipsec/header"
)

// TestSplitExportImport moves a split flow with bytes in flight, a loss
// and data held out of order to a second engine through JSON; the second
// engine repairs the loss, delivers the rest and goes on taking data.
func TestSplitExportImport(t *testing.T) {
	o := splitOpts{sack: true, ts: true, isnW: 0xfffffe00, isnR: 5000}
	h := newSplit(t, o)
	h.establish()
	for i := 0; i < 5; i++ {
		h.fromW(i*988, 988, 0)
	}
	h.fromW(6*988, 988, 0) // held out of order: 5 is missing
	h.ackR(988, 65535, 2*988, 5*988)
	h.take()
	b, err := json.Marshal(h.e.Export(true))
	if err != nil {
		t.Fatal(err)
	}
	if st := h.e.Stats(); st.Flows != 0 || st.BufferedBytes != 0 {
		t.Fatalf("export with remove left %+v", st)
	}
	var states []FlowState
	if err := json.Unmarshal(b, &states); err != nil {
		t.Fatal(err)
	}
	h2 := newSplit(t, o)
	h2.tsW, h2.tsR = h.tsW, h.tsR
	if err := h2.e.Import(states); err != nil {
		t.Fatal(err)
	}
	h2.has, h2.edge, h2.tsOut = h.has, h.edge, h.tsOut
	h2.ackR(988, 65535, 2*988, 5*988)
	h2.ackR(988, 65535, 2*988, 5*988)
	h2.ackR(988, 65535, 2*988, 5*988)
	if toR := h2.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W()+988 {
		t.Fatalf("the imported flow did not repair segment 1: %+v", toR)
	}
	h2.fromW(5*988, 988, 0) // fills the hole: 5 and the held 6 go on
	toW, toR := h2.split(h2.take())
	if len(toW) != 1 || toW[0].ack != h.W()+7*988 || len(toR) != 2 || toR[0].seq != h.W()+5*988 || toR[1].seq != h.W()+6*988 {
		t.Fatalf("after the hole: toward wire %+v, toward radio %+v", toW, toR)
	}
	// A stream holding more than BufferPerFlow — the exporter's advertised
	// edge crept past it by window-scale rounding (RFC 7323 Appendix F) —
	// is taken up to importSlack beyond, refused past it.
	hold := func(f *FlowState, n int) { // n bytes held in order from SndUna
		x := &f.Split.Streams[0]
		x.OOO, x.Data, x.Chunks = nil, make([]byte, n), nil
		x.RcvNxt = x.SndUna + uint32(n)
		x.RcvEdge = x.RcvNxt
	}
	var crept []FlowState
	json.Unmarshal(b, &crept)
	hold(&crept[0], 4<<20+200<<10)
	quiet, err := New(Config{Mode: ModeSplit}, func(Side, []byte, Emitted) {}) // its bytes are zeros: not the harness's checker
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	if err := quiet.Import(crept); err != nil {
		t.Fatalf("a stream 200 KB past BufferPerFlow was refused: %v", err)
	}
	for _, bad := range []func(*FlowState){
		func(f *FlowState) { hold(f, 4<<20+importSlack+1) },
		func(f *FlowState) { f.Split.Streams[0].Data, f.Split.Streams[0].Chunks = nil, nil },
		func(f *FlowState) { f.Split.Streams[0].SMSS = 0 },
		func(f *FlowState) { f.Split.Streams[0].Segs[0].End = f.Split.Streams[0].Segs[0].Seq },
		func(f *FlowState) { f.Split.Streams[0].CC.Name = "vegas" },
		func(f *FlowState) { f.Split.Shift[1] = 15 },
	} {
		var s []FlowState
		json.Unmarshal(b, &s)
		bad(&s[0])
		h3 := newSplit(t, o)
		if err := h3.e.Import(s); err == nil {
			t.Fatal("bad split state imported")
		}
		if st := h3.e.Stats(); st.BufferedBytes != 0 || st.Flows != 0 {
			t.Fatalf("a refused import left %+v", st)
		}
	}
}

// TestSplitImportedAckAhead: after a move the receiver may hold bytes the
// new engine never sent (the old engine sent them, or relayed them while
// the flow moved) and acknowledge them. Refused, that ACK would come back
// for ever and the flow would stall; a moved flow takes it, up to the bytes
// it holds. Beyond those, a plain flow's ACK is refused (anyone could
// have sent it) and a protected one's is taken as far as the bytes held
// (the sender's bytes went straight to the receiver while no gateway was
// in the path). Segments imported in flight, and those sent soon after
// the import, give no RTT sample: their ACK, a millisecond after, is not
// the path's RTT.
func TestSplitImportedAckAhead(t *testing.T) {
	for _, plain := range []bool{true, false} {
		t.Run(fmt.Sprintf("plain=%v", plain), func(t *testing.T) { importedAckAhead(t, plain) })
	}
}

func importedAckAhead(t *testing.T, plain bool) {
	o := splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, plain: plain}
	h := newSplit(t, o)
	h.establish()
	h.fromW(0, 988, 0)
	h.clock.Advance(20 * time.Millisecond)
	h.ackR(988, 2*988) // an RTT sample of 20 ms; room for two segments
	h.take()
	for i := 1; i < 5; i++ {
		h.fromW(i*988, 988, 0)
	}
	if toR := h.sentTo(Radio); len(toR) != 2 || toR[0].seq != h.W()+988 {
		t.Fatalf("toward the radio %+v, want two segments from 988", toR)
	}
	b, err := json.Marshal(h.e.Export(true))
	if err != nil {
		t.Fatal(err)
	}
	var states []FlowState
	if err := json.Unmarshal(b, &states); err != nil {
		t.Fatal(err)
	}
	h2 := newSplit(t, o)
	h2.tsW, h2.tsR = h.tsW, h.tsR
	if err := h2.e.Import(states); err != nil {
		t.Fatal(err)
	}
	h2.has, h2.edge, h2.tsOut = h.has, h.edge, h.tsOut
	h2.take()
	h2.clock.Advance(time.Millisecond)
	held := func() int {
		fi := h2.e.Flows()
		if len(fi) != 1 {
			t.Fatalf("%d flows", len(fi))
		}
		return fi[0].Down.Buffered
	}
	h2.ackR(4*988, 65535) // the two in flight and one never sent here
	if st := h2.e.Stats(); st.AckIgnored != 0 || held() != 988 {
		t.Fatalf("the moved flow refused the receiver's ACK: %d held, %+v", held(), st)
	}
	if toR := h2.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W()+4*988 {
		t.Fatalf("after the ACK, toward the radio %+v; want the last segment held", toR)
	}
	fi := h2.e.Flows()
	if len(fi) != 1 || fi[0].Down.MinRTT != 20*time.Millisecond {
		t.Fatalf("flows %+v: want the minimum RTT of 20 ms kept", fi)
	}
	h2.take()
	h2.clock.Advance(time.Millisecond)
	h2.ackR(6*988, 65535) // beyond every byte held
	switch st := h2.e.Stats(); {
	case plain && (st.AckIgnored != 1 || held() != 988):
		t.Fatalf("plain: an ACK beyond the bytes held was taken: %d held, %+v", held(), st)
	case !plain && (st.AckIgnored != 0 || held() != 0):
		t.Fatalf("protected: the receiver's ACK beyond the bytes held was not taken: %d held, %+v", held(), st)
	}
	if plain {
		return
	}
	// The last segment held went out a millisecond before that ACK
	// covered it: no sample (the receiver had its bytes).
	if fi := h2.e.Flows(); len(fi) != 1 || fi[0].Down.MinRTT != 20*time.Millisecond {
		t.Fatalf("flows %+v: want the minimum RTT of 20 ms kept after the ACK beyond", fi)
	}
	// The sender has that ACK at once; what it sends again of those bytes
	// is acknowledged and not passed on.
	if toW, toR := h2.split(h2.take()); len(toW) != 1 || toW[0].ack != h.W()+6*988 || len(toR) != 0 {
		t.Fatalf("after the ACK, toward the wire %+v, toward the radio %+v", toW, toR)
	}
	h2.fromW(5*988, 988, 0)
	h2.clock.Advance(delAck)
	toW, toR := h2.split(h2.take())
	if len(toW) != 1 || toW[0].ack != h.W()+6*988 || len(toR) != 0 || held() != 0 {
		t.Fatalf("the sender's segment again: toward the wire %+v, toward the radio %+v, %d held", toW, toR, held())
	}
	h2.fromW(6*988, 988, 0) // and the next is the next
	if toR := h2.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W()+6*988 || held() != 988 {
		t.Fatalf("the next segment: toward the radio %+v, %d held", toR, held())
	}
}

// TestExpiry: flows whose handshake never completed are forgotten after
// HandshakeTimeout, idle ones after IdleTimeout — by the engine's own
// timer, not only when the table is full — except a split flow holding
// bytes its receiver has not acknowledged, which GiveUp ends.
func TestExpiry(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000,
		cfg: Config{IdleTimeout: time.Minute, HandshakeTimeout: 10 * time.Second, GiveUp: time.Hour}})
	h.establish()
	h.fromW(0, 988, 0) // held: the radio never acknowledges it
	for i := range 5 {
		src := netip.AddrPortFrom(wireHost.Addr(), uint16(2000+i))
		h.e.Process(Wire, mkseg(src, radioHost, header.TCPSyn, 1, 0, 100, 0))
	}
	if st := h.e.Stats(); st.Flows != 6 {
		t.Fatalf("%+v", st)
	}
	h.clock.Advance(16 * time.Second) // the sweep runs every 5 s
	if st := h.e.Stats(); st.Flows != 1 || st.Expired != 5 {
		t.Fatalf("half-open flows not expired: %+v", st)
	}
	h.clock.Advance(5 * time.Minute)
	if st := h.e.Stats(); st.Flows != 1 {
		t.Fatalf("a split flow holding data expired: %+v", st)
	}
	h.ackR(988, 65535)
	h.clock.Advance(2 * time.Minute)
	if st := h.e.Stats(); st.Flows != 0 {
		t.Fatalf("an idle flow was not expired: %+v", st)
	}
}

// TestSplitZeroAllocs: a data segment in and its ACK back, in steady
// state, allocate nothing (buffers, scoreboard and timers are reused).
func TestSplitZeroAllocs(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.e.cfg.Clock = netem.RealClock{} // its timers re-arm without allocating
	h.establish()
	const n = 3000
	data := make([][]byte, n)
	acks := make([][]byte, n)
	for i := range n {
		data[i] = h.seg(Wire, header.TCPAck, h.W()+uint32(i*988), h.R(), 65535, 988)
		acks[i] = h.seg(Radio, header.TCPAck, h.R(), h.W()+uint32((i+1)*988), 65535, 0)
	}
	i := noAllocs(t, h.e, data, acks) // the warm-up fills the pool, the scoreboard, the timers
	// Each segment goes on, and an ACK for every second comes back.
	if st := h.e.Stats(); st.EarlyAcked != uint64(i*988) || st.Emitted < uint64(i+i/2) {
		t.Fatalf("the engine did not work: %+v after %d segments", st, i)
	}
}

// TestSkipTo: a receiver's ACK past the bytes the engine had moves the
// in-order point there; ranges held out of order below it go, one across
// it becomes in order, one above it stays.
func TestSkipTo(t *testing.T) {
	v := func(n uint32) seqnum.Value { return seqnum.Value(n) }
	st := stream{rcvNxt: v(100), rcvEdge: v(1000), ooo: []span{{v(150), v(200)}, {v(300), v(400)}, {v(600), v(700)}}}
	st.skipTo(v(50)) // behind: nothing
	if st.rcvNxt != v(100) || len(st.ooo) != 3 || st.ackNow {
		t.Fatalf("an ACK behind moved the stream: %+v", st)
	}
	st.skipTo(v(170))
	if st.rcvNxt != v(200) || len(st.ooo) != 2 || st.ooo[0] != (span{v(300), v(400)}) || !st.ackNow {
		t.Fatalf("to 170: rcvNxt %d, ooo %v", st.rcvNxt, st.ooo)
	}
	st.skipTo(v(500))
	if st.rcvNxt != v(500) || len(st.ooo) != 1 || st.ooo[0] != (span{v(600), v(700)}) {
		t.Fatalf("to 500: rcvNxt %d, ooo %v", st.rcvNxt, st.ooo)
	}
	st.skipTo(v(2000))
	if st.rcvNxt != v(2000) || len(st.ooo) != 0 || st.rcvEdge != v(2000) {
		t.Fatalf("to 2000: rcvNxt %d, edge %d, ooo %v", st.rcvNxt, st.rcvEdge, st.ooo)
	}
}

// TestSplitPeerSACK: on a protected flow, what the receiver reports
// holding (SACK) above every byte the engine has from the sender — bytes
// that went straight to it while no gateway was in the path — reaches the
// sender in the engine's ACKs, so it resends only the hole; the
// receiver's ACK past the hole then reaches the sender at once. On a
// cleartext flow anyone could have sent those blocks: not passed on.
func TestSplitPeerSACK(t *testing.T) {
	for _, plain := range []bool{false, true} {
		h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, plain: plain})
		h.establish()
		for i := range 4 {
			h.fromW(i*988, 988, 0)
		}
		h.take()
		h.ackR(4*988, 65535, 6*988, 9*988)
		h.clock.Advance(delAck)
		toW := h.sentTo(Wire)
		var blocks []header.SACKBlock
		for _, p := range toW {
			blocks = append(blocks, p.sack...)
		}
		want := []header.SACKBlock{{Start: h.W() + 6*988, End: h.W() + 9*988}}
		if plain {
			want = nil
		}
		if !slices.Equal(blocks, want) {
			t.Fatalf("plain %v: toward the sender %+v: SACK blocks %v, want %v", plain, toW, blocks, want)
		}
		if plain {
			continue
		}
		h.fromW(4*988, 988, 0)
		h.fromW(5*988, 988, 0)
		if toR := h.sentTo(Radio); len(toR) != 2 || toR[0].seq != h.W()+4*988 {
			t.Fatalf("the hole toward the receiver: %+v", toR)
		}
		h.ackR(9*988, 65535)
		toW = h.sentTo(Wire)
		if len(toW) != 1 || toW[0].ack != h.W()+9*988 || len(toW[0].sack) != 0 {
			t.Fatalf("after the hole: toward the sender %+v, want an ACK of 9*988 without SACK", toW)
		}
	}
}

// TestSplitAckOfRelayedBytes: the receiver acknowledges bytes the engine
// holds but has not sent — the sender's own packets reached it relayed
// as they came (a rekey's new SA reached the endpoints before the
// gateway) — or even bytes the engine does not hold yet. On a protected
// flow the ACK is the receiver's own: it is taken, as far as the bytes
// held, those bytes count as delivered and the engine goes on from there
// — refused, that ACK would come back for ever and the flow stall. On a
// cleartext flow anyone could have sent it: it is refused, as beyond
// anything the engine sent.
func TestSplitAckOfRelayedBytes(t *testing.T) {
	for _, plain := range []bool{false, true} {
		h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, plain: plain})
		h.establish()
		for i := range 30 {
			h.fromW(i*988, 988, 0)
		}
		var sndNxt uint32
		for _, p := range h.sentTo(Radio) {
			sndNxt = max(sndNxt, p.seq+uint32(p.n)-h.W())
		}
		held := h.e.Stats().BufferedBytes
		if sndNxt == 0 || sndNxt >= 20*988 || held < 30*988 {
			t.Fatalf("plain %v: %d bytes sent of %d held: the test needs bytes held and not sent", plain, sndNxt, held)
		}
		h.ackR(25*988, 65535)
		st := h.e.Stats()
		if plain {
			if st.AckIgnored != 1 || st.BufferedBytes != held {
				t.Fatalf("plain: an ACK of bytes not sent was taken: %+v", st)
			}
			h.clock.Advance(challengeGap)
			h.ackR(30*988+1, 65535)
			if st := h.e.Stats(); st.AckIgnored != 2 || st.BufferedBytes != held {
				t.Fatalf("plain: an ACK beyond the bytes held: %+v", st)
			}
			continue
		}
		if st.AckIgnored != 0 || st.BufferedBytes >= held {
			t.Fatalf("protected: the receiver's ACK of relayed bytes was not taken: %+v", st)
		}
		for _, p := range h.sentTo(Radio) {
			if p.n > 0 && p.seq < h.W()+25*988 {
				t.Fatalf("protected: the engine sent again bytes the receiver has (seq %d)", p.seq-h.W())
			}
		}
		h.ackR(30*988+1, 65535)
		if st := h.e.Stats(); st.AckIgnored != 0 || st.BufferedBytes != 0 {
			t.Fatalf("protected: an ACK beyond the bytes held did not take them all: %+v", st)
		}
	}
}
