package engine

import (
	"encoding/binary"
	"encoding/json"
	"math/rand"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// splitOpts is what the endpoints of a conformance test negotiate.
type splitOpts struct {
	wsW, wsR   uint8 // window scale each side offers
	noWS       bool
	sack, ts   bool
	isnW, isnR uint32
	mss        uint16
	cfg        Config
	plain      bool // the flow's packets are cleartext (Handle with Plain), not verified
	// late runs every engine timer this long after its deadline (a
	// process that waits for a CPU).
	late time.Duration
}

// sh drives a split-mode engine with crafted segments on a simulated
// clock, in the style of gVisor's transport/tcp/testing/context, and
// checks every packet the engine emits against the rules that must always
// hold: valid checksums, the payload the sender sent at that sequence
// number, a right window edge that never moves left, PAWS-valid
// timestamps.
type sh struct {
	t      *testing.T
	o      splitOpts
	clock  *netem.SimClock
	e      *Engine
	out    []sent
	tsW    uint32 // the endpoints' timestamp clocks
	tsR    uint32
	edge   [2]seqnum.Value // right edge last advertised toward each side
	has    [2]bool
	tsOut  [2]uint32 // last TSval sent toward each side
	ecrOut [2]uint32 // last TSecr sent toward each side
	rSent  int       // bytes the radio host has sent
	dead   bool      // an RST went through
	// keepAlives: one-octet keep-alives (Elicit) are expected, their
	// octet zero rather than what the sender sent there.
	keepAlives bool
}

func newSplit(t *testing.T, o splitOpts) *sh {
	if o.mss == 0 {
		o.mss = 1000
	}
	h := &sh{t: t, o: o, clock: netem.NewSimClock(time.Unix(0, 0)), tsW: 1000, tsR: 7000000}
	o.cfg.Clock = h.clock
	if o.late > 0 {
		o.cfg.Clock = lateClock{h.clock, o.late}
	}
	o.cfg.Mode = ModeSplit
	h.e = mustNew(t, o.cfg, func(to Side, pkt []byte) {
		c := append([]byte(nil), pkt...)
		h.check(to, c)
		h.out = append(h.out, sent{to, c})
	})
	return h
}

// shift is the window scale of the windows sent by side s.
func (h *sh) shift(s Side) uint8 {
	if h.o.noWS {
		return 0
	}
	if s == Wire {
		return h.o.wsW
	}
	return h.o.wsR
}

// payloadByte is what every sender in these tests sends at seq.
func payloadByte(seq uint32) byte { return byte(seq) ^ byte(seq>>8) ^ byte(seq>>16) }

func (h *sh) check(to Side, pkt []byte) {
	t := h.t
	t.Helper()
	p, ok := parse(pkt)
	if !ok {
		t.Fatalf("engine emitted an unparsable packet %x", pkt)
	}
	if debugSh {
		t.Logf("%v seq %d ack %d win %d n %d flags %x", to, p.tcp.Seq(), p.tcp.Ack(), p.tcp.Window(), p.payload, p.tcp.Flags())
	}
	ip := header.IPv4(pkt)
	if !ip.ChecksumValid() || !p.tcp.ChecksumValid(ip.SrcBytes(), ip.DstBytes()) {
		t.Fatalf("bad checksum on a packet toward %v", to)
	}
	for i, b := range p.tcp.Payload() {
		if h.keepAlives && p.payload == 1 && b == 0 {
			break
		}
		if want := payloadByte(p.tcp.Seq() + uint32(i)); b != want {
			t.Fatalf("payload byte %d of seq %d toward %v is %d, the sender sent %d", i, p.tcp.Seq(), to, b, want)
		}
	}
	if p.tcp.Has(header.TCPSyn) {
		return
	}
	if p.tcp.Has(header.TCPRst) || h.dead { // the connection is over; what follows is relayed as it is
		h.dead = true
		return
	}
	if p.tcp.Has(header.TCPAck) && !p.tcp.Has(header.TCPRst) {
		edge := seqnum.Value(p.tcp.Ack()).Add(seqnum.Size(int(p.tcp.Window()) << h.shift(to.other())))
		if h.has[to] && edge.LessThan(h.edge[to]) {
			t.Fatalf("right window edge toward %v moved left: %d after %d", to, edge, h.edge[to])
		}
		h.edge[to], h.has[to] = edge, true
	}
	if h.o.ts {
		if !p.opts.HasTS {
			t.Fatalf("timestamps negotiated, packet toward %v has none", to)
		}
		if seqnum.Value(p.opts.TSVal).LessThan(seqnum.Value(h.tsOut[to])) {
			t.Fatalf("TSval toward %v went back: %d after %d (PAWS would drop it)", to, p.opts.TSVal, h.tsOut[to])
		}
		h.tsOut[to] = p.opts.TSVal
		// The echo is a TSval the endpoint sent, never going back: the
		// latest of an accepted segment (RFC 7323 §4.3), which a segment
		// the engine refused (an ACK for bytes never sent) does not move.
		latest := h.tsR
		if to == Wire {
			latest = h.tsW
		}
		if p.opts.TSEcr > latest || p.opts.TSEcr < h.ecrOut[to] {
			t.Fatalf("TSecr toward %v is %d: the latest TSval is %d, the last echo %d", to, p.opts.TSEcr, latest, h.ecrOut[to])
		}
		h.ecrOut[to] = p.opts.TSEcr
	}
}

// opts builds the TCP options of a segment from side s.
func (h *sh) opts(s Side, syn bool, sack ...uint32) []byte {
	var o []byte
	if syn {
		o = append(o, header.TCPOptMSS, 4, byte(h.o.mss>>8), byte(h.o.mss))
		if !h.o.noWS {
			o = append(o, header.TCPOptNop, header.TCPOptWS, 3, h.shift(s))
		}
		if h.o.sack {
			o = append(o, header.TCPOptNop, header.TCPOptNop, header.TCPOptSACKPerm, 2)
		}
	}
	if h.o.ts {
		val, ecr := h.tsW, h.tsR
		if s == Radio {
			val, ecr = h.tsR, h.tsW
		}
		o = append(o, header.TCPOptNop, header.TCPOptNop, header.TCPOptTimestamp, 10, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(o[len(o)-8:], val)
		binary.BigEndian.PutUint32(o[len(o)-4:], ecr)
	}
	if len(sack) > 0 {
		o = append(o, header.TCPOptNop, header.TCPOptNop, header.TCPOptSACK, byte(2+4*len(sack)))
		for _, v := range sack {
			o = binary.BigEndian.AppendUint32(o, v)
		}
	}
	return o
}

// seg builds a segment from side s with payload n bytes at seq.
func (h *sh) seg(s Side, flags uint8, seq, ack uint32, win uint16, n int, sack ...uint32) []byte {
	src, dst := wireHost, radioHost
	if s == Radio {
		src, dst = radioHost, wireHost
		h.tsR++
	} else {
		h.tsW++
	}
	b := mkseg(src, dst, flags, seq, ack, win, n, h.opts(s, flags&header.TCPSyn != 0, sack...)...)
	t := header.TCP(b[20:])
	pl := t.Payload()
	for i := range pl {
		pl[i] = payloadByte(seq + uint32(i))
	}
	sa, da := src.Addr().As4(), dst.Addr().As4()
	t.UpdateChecksum(sa[:], da[:])
	return b
}

func (h *sh) take() []sent {
	o := h.out
	h.out = nil
	return o
}

// W and R are the first data sequence numbers of each side.
// in gives the engine a packet from side s, verified or (o.plain) not.
func (h *sh) in(s Side, pkt []byte) {
	kind := Verified
	if h.o.plain {
		kind = Plain
	}
	h.e.Handle(s, pkt, Input{Kind: kind})
}

func (h *sh) W() uint32 { return h.o.isnW + 1 }
func (h *sh) R() uint32 { return h.o.isnR + 1 }

// establish runs the handshake, which passes end to end untouched.
func (h *sh) establish() {
	h.t.Helper()
	h.in(Wire, h.seg(Wire, header.TCPSyn, h.o.isnW, 0, 65535, 0))
	h.in(Radio, h.seg(Radio, header.TCPSyn|header.TCPAck, h.o.isnR, h.W(), 65535, 0))
	h.in(Wire, h.seg(Wire, header.TCPAck, h.W(), h.R(), 65535>>h.shift(Wire), 0))
	o := h.take()
	if len(o) != 3 || o[0].to != Radio || o[1].to != Wire || o[2].to != Radio {
		h.t.Fatalf("handshake not passed end to end: %+v", o)
	}
}

// fromW sends n bytes from the wire host at offset off of its stream.
func (h *sh) fromW(off, n int, flags uint8) {
	h.in(Wire, h.seg(Wire, header.TCPAck|flags, h.W()+uint32(off), h.R(), 65535>>h.shift(Wire), n))
}

// burstW has the wire host send n segments of 988 bytes from the start of
// its stream, and wants all of them passed on toward the radio at once.
func (h *sh) burstW(n int) {
	h.t.Helper()
	for i := 0; i < n; i++ {
		h.fromW(i*988, 988, 0)
	}
	if toR := h.sentTo(Radio); len(toR) != n {
		h.t.Fatalf("sent %d segments toward the radio, want %d", len(toR), n)
	}
}

// ackR acknowledges off bytes of the wire host's stream from the radio
// host, with window win (before scaling) and SACK blocks given as stream
// offsets.
func (h *sh) ackR(off int, win uint16, sack ...int) {
	var abs []uint32
	for _, s := range sack {
		abs = append(abs, h.W()+uint32(s))
	}
	h.in(Radio, h.seg(Radio, header.TCPAck, h.R()+uint32(h.rSent), h.W()+uint32(off), win, 0, abs...))
}

type pkt struct {
	to              Side
	seq, ack        uint32
	win             uint16
	flags           uint8
	n               int
	sack            []header.SACKBlock
	tsval, tsecr    uint32
	hasTS, pureAck  bool
	fin, rst, isAck bool
}

func decode(s sent) pkt {
	p, _ := parse(s.pkt)
	t := p.tcp
	return pkt{to: s.to, seq: t.Seq(), ack: t.Ack(), win: t.Window(), flags: t.Flags(), n: p.payload,
		sack: append([]header.SACKBlock(nil), p.opts.SACK[:p.opts.NSACK]...), tsval: p.opts.TSVal, tsecr: p.opts.TSEcr,
		hasTS: p.opts.HasTS, pureAck: p.payload == 0 && t.Flags()&(header.TCPFin|header.TCPSyn|header.TCPRst) == 0,
		fin: t.Has(header.TCPFin), rst: t.Has(header.TCPRst), isAck: t.Has(header.TCPAck)}
}

func (h *sh) sentTo(side Side) []pkt {
	var out []pkt
	for _, s := range h.take() {
		if s.to == side {
			out = append(out, decode(s))
		}
	}
	return out
}

func (h *sh) split(o []sent) (toW, toR []pkt) {
	for _, s := range o {
		if s.to == Wire {
			toW = append(toW, decode(s))
		} else {
			toR = append(toR, decode(s))
		}
	}
	return
}

// TestSplitEarlyAck: in-order data from the wire host is acknowledged
// early on the radio host's behalf — every second segment, a lone one
// after delAck — and sent on toward the radio, resegmented to the radio
// host's MSS, for window scales 0 and 14, with timestamps valid for PAWS
// both ways.
func TestSplitEarlyAck(t *testing.T) {
	for _, ws := range []uint8{0, 14} {
		h := newSplit(t, splitOpts{wsW: ws, wsR: ws, sack: true, ts: true, isnW: 1000, isnR: 5000})
		h.establish()
		h.fromW(0, 500, 0)
		h.fromW(500, 500, header.TCPPsh)
		toW, toR := h.split(h.take())
		if len(toW) != 1 || toW[0].ack != h.W()+1000 || !toW[0].pureAck {
			t.Fatalf("ws %d: early ACKs %+v", ws, toW)
		}
		if len(toR) != 2 || toR[0].seq != h.W() || toR[0].n != 500 || toR[1].seq != h.W()+500 {
			t.Fatalf("ws %d: data toward the radio %+v", ws, toR)
		}
		if toR[0].ack != h.R() || toR[0].tsval != h.tsW-1 || toW[0].tsval != h.tsR {
			t.Fatalf("ws %d: ack %d tsval %d/%d", ws, toR[0].ack, toR[0].tsval, toW[0].tsval)
		}
		// The window toward the sender comes from the engine's buffer.
		if got := int(toW[0].win) << ws; got < 1<<20 && ws == 14 || ws == 0 && toW[0].win != 65535 {
			t.Fatalf("ws %d: window %d", ws, got)
		}
		// More than one MSS (988 bytes with timestamps) is resegmented;
		// the lone segment is acknowledged after delAck.
		h.fromW(1000, 2000, 0)
		toW, toR = h.split(h.take())
		if len(toW) != 0 {
			t.Fatalf("ws %d: a lone segment acknowledged at once: %+v", ws, toW)
		}
		h.clock.Advance(delAck)
		if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != h.W()+3000 {
			t.Fatalf("ws %d: delayed ACK %+v", ws, toW)
		}
		if len(toR) != 3 || toR[0].n != 988 || toR[1].n != 988 || toR[2].n != 24 {
			t.Fatalf("ws %d: resegmented %+v", ws, toR)
		}
		if st := h.e.Stats(); st.EarlyAcked != 3000 || st.Relayed != 0 {
			t.Fatalf("ws %d: %+v", ws, st)
		}
	}
}

// TestSplitPush: PSH toward the receiver is where the sender pushed —
// on the segment that carries the sender's pushed byte, however the
// engine cut the bytes — and on no other, so that the segments between
// pushes are a run a TUN writer can coalesce; a pushed segment the engine
// refuses moves nothing.
func TestSplitPush(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	// A segment far beyond the window, pushed: refused, and its push with it.
	h.fromW(1<<30, 988, header.TCPPsh)
	if h.e.Stats().OutOfWindow != 1 {
		t.Fatalf("a segment 1 GiB ahead was not refused: %+v", h.e.Stats())
	}
	for i := range 5 {
		flags := uint8(0)
		if i == 4 {
			flags = header.TCPPsh
		}
		h.fromW(i*988, 988, flags)
	}
	h.fromW(5*988, 2000, header.TCPPsh) // resegmented: 988, 988, 24
	h.fromW(5*988+2000, 988, 0)
	toR := h.sentTo(Radio)
	var pushed []int
	for i, p := range toR {
		if p.flags&header.TCPPsh != 0 {
			pushed = append(pushed, i)
		}
	}
	if len(toR) != 9 || !slices.Equal(pushed, []int{4, 7}) {
		t.Fatalf("%d segments toward the radio, PSH on %v; want 9, PSH on [4 7]", len(toR), pushed)
	}
}

// TestSplitIdleTimer: a flow at a trickle — a burst, acknowledged at
// once, then quiet — wakes the engine's timer only for what is due (the
// delayed ACK of the burst's odd segment), not for the tail probe the
// ACK made moot. The old rule let that timer fire for nothing after every
// burst, most of the engine's wake-ups at 20 Mbit/s.
func TestSplitIdleTimer(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	fires := h.e.timerFires()
	for burst := range 5 {
		off := burst * 3 * 988
		for i := range 3 {
			h.fromW(off+i*988, 988, 0)
		}
		h.clock.Advance(100 * time.Microsecond)
		h.ackR(off+3*988, 65535)
		h.clock.Advance(time.Second)
		h.take()
	}
	if n := h.e.timerFires() - fires; n != 5 {
		t.Fatalf("%d timer callbacks for 5 bursts at a trickle, want 5 (each burst's delayed ACK)", n)
	}
}

// TestSplitPushAck: a lone segment the sender pushed is acknowledged at
// once, where an unpushed one waits for delAck; but pushes do not let the
// engine send more ACKs toward the sender than the receiver sends beyond
// ackSlack — past that, the engine acknowledges as it does without them.
func TestSplitPushAck(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 988, header.TCPPsh)
	if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != h.W()+988 {
		t.Fatalf("a pushed segment: %+v toward the sender, want its ACK at once", toW)
	}
	h.fromW(988, 988, 0)
	if toW := h.sentTo(Wire); len(toW) != 0 {
		t.Fatalf("an unpushed lone segment was acknowledged at once: %+v", toW)
	}
	h.clock.Advance(delAck)
	if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != h.W()+2*988 {
		t.Fatalf("after delAck: %+v toward the sender, want the delayed ACK", toW)
	}
	// The radio host sends nothing: every ACK toward the wire host is the
	// engine's own, and past ackSlack of them a push waits like any other
	// segment.
	const n = 2 * ackSlack
	acks := 0
	for i := range n {
		h.fromW((2+i)*988, 988, header.TCPPsh)
		acks += len(h.sentTo(Wire))
	}
	if acks < ackSlack-2 || acks > ackSlack+2 {
		t.Fatalf("%d ACKs toward the sender for %d pushed segments and none from the receiver: want about %d", acks, n, ackSlack)
	}
}

// TestSplitTimerFollowsAcks: ACKs that keep coming while data is in
// flight move the tail probe's deadline later each time, and the timer
// with it; under the old rule (move it only once nothing is in flight) it
// fired early, for nothing, between every two of them.
func TestSplitTimerFollowsAcks(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	for i := range 10 {
		flags := uint8(0)
		if i == 9 {
			flags = header.TCPPsh
		}
		h.fromW(i*988, 988, flags)
	}
	if toR := h.sentTo(Radio); len(toR) != 10 {
		t.Fatalf("%d segments toward the radio, want 10", len(toR))
	}
	fires := h.e.timerFires()
	for i := 1; i < 10; i++ { // one segment acknowledged a millisecond
		h.clock.Advance(time.Millisecond)
		h.ackR(i*988, 65535)
	}
	if n := h.e.timerFires() - fires; n != 0 {
		t.Fatalf("%d timer callbacks while ACKs kept coming, want 0", n)
	}
	h.take()
	h.clock.Advance(time.Second) // the last segment's ACK is lost: the probe fires
	if n := h.e.timerFires() - fires; n == 0 || h.e.Stats().TailProbes != 1 {
		t.Fatalf("%d timer callbacks, %d tail probes once the ACKs stopped, want the probe", n, h.e.Stats().TailProbes)
	}
}

// TestSplitProbeSlack: over a path of a hundred microseconds the tail
// probe waits two SRTTs and ptoSlack, not two SRTTs alone — which a
// receiver's ACK delayed by a scheduler's hiccup outlasts.
func TestSplitProbeSlack(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	for i := range 10 {
		h.fromW(i*988, 988, 0)
	}
	h.clock.Advance(100 * time.Microsecond)
	h.ackR(5*988, 65535) // an RTT sample of 100 µs; five segments still out
	h.clock.Advance(ptoSlack)
	if n := h.e.Stats().TailProbes; n != 0 {
		t.Fatalf("%d tail probes within 2 ms of an ACK on a 100 µs path", n)
	}
	h.clock.Advance(time.Millisecond)
	if n := h.e.Stats().TailProbes; n != 1 {
		t.Fatalf("%d tail probes once two SRTTs and ptoSlack passed, want 1", n)
	}
}

// TestSplitSACKGeneration: data from the sender with holes is held and
// SACKed, the most recent block first (RFC 2018 §4); filling a hole moves
// the cumulative ACK over everything held.
func TestSplitSACKGeneration(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 100, 0)
	h.fromW(200, 100, 0)
	h.fromW(400, 100, 0)
	toW, toR := h.split(h.take())
	if len(toR) != 1 || toR[0].n != 100 {
		t.Fatalf("only in-order data may go on: %+v", toR)
	}
	last := toW[len(toW)-1]
	if last.ack != h.W()+100 || len(last.sack) != 2 ||
		last.sack[0] != (header.SACKBlock{Start: h.W() + 400, End: h.W() + 500}) ||
		last.sack[1] != (header.SACKBlock{Start: h.W() + 200, End: h.W() + 300}) {
		t.Fatalf("SACK blocks: ack %d %+v", last.ack-h.W(), last.sack)
	}
	h.fromW(100, 100, 0) // fills the first hole
	toW, toR = h.split(h.take())
	if last = toW[len(toW)-1]; last.ack != h.W()+300 || len(last.sack) != 1 || last.sack[0].Start != h.W()+400 {
		t.Fatalf("after the first hole: ack %d %+v", last.ack-h.W(), last.sack)
	}
	if sum := sumN(toR); len(toR) == 0 || toR[0].seq != h.W()+100 || sum != 200 {
		t.Fatalf("the filled range must go on: %+v", toR)
	}
	h.fromW(150, 300, 0) // overlaps everything: fills the second hole
	toW, _ = h.split(h.take())
	if last = toW[len(toW)-1]; last.ack != h.W()+500 || len(last.sack) != 0 {
		t.Fatalf("all in: ack %d %+v", last.ack-h.W(), last.sack)
	}
	// A duplicate is answered with the same ACK.
	h.fromW(0, 100, 0)
	if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != h.W()+500 {
		t.Fatalf("duplicate not answered: %+v", toW)
	}
}

// TestSplitLocalRecovery: a segment lost on the radio is found from the
// radio host's SACKs and resent by the engine; the wire host sees none of
// it. With no ACK at all the RTO resends, backing off.
func TestSplitLocalRecovery(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.burstW(6)
	h.clock.Advance(20 * time.Millisecond)
	// Segment 0 is lost; 1…5 arrive: three duplicate ACKs with SACK.
	for i := 2; i <= 4; i++ {
		h.ackR(0, 65535, 988, i*988)
	}
	toW, toR := h.split(h.take())
	if len(toW) != 0 {
		t.Fatalf("the radio host's duplicate ACKs reached the wire host: %+v", toW)
	}
	if len(toR) != 1 || toR[0].seq != h.W() || toR[0].n != 988 {
		t.Fatalf("want segment 0 resent toward the radio, got %+v", toR)
	}
	h.ackR(6*988, 65535)
	if st := h.e.Stats(); st.SplitRexmits != 1 || st.SplitTimeouts != 0 {
		t.Fatalf("%+v", st)
	}
	// Now silence: the RTO resends the oldest segment, then backs off.
	h.fromW(6*988, 988, 0)
	h.take()
	var times []time.Duration
	start := h.clock.Now()
	for i := 0; i < 40 && len(times) < 3; i++ {
		h.clock.Advance(10 * time.Millisecond)
		for _, p := range h.sentTo(Radio) {
			if p.seq == h.W()+6*988 {
				times = append(times, h.clock.Now().Sub(start))
			}
		}
	}
	if len(times) != 3 || times[1] < 2*times[0]-10*time.Millisecond || times[2]-times[1] < 2*(times[1]-times[0])-20*time.Millisecond {
		t.Fatalf("timeouts at %v: want an RTO with doubling backoff", times)
	}
}

// TestSplitRTOWaitsForSACKProgress: the hole's resend waits in the radio
// queue behind segments sent before it; while the receiver keeps SACKing
// those, the retransmission timer does not fire (it restarts on every ACK
// that reports bytes delivered), and the flow recovers with no timeout.
func TestSplitRTOWaitsForSACKProgress(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	const n = 10 // all sent at once
	h.burstW(n)
	h.clock.Advance(20 * time.Millisecond)
	// Segment 0 is lost; 1…3 arrive: three duplicates, the hole is resent.
	for i := 2; i <= 4; i++ {
		h.ackR(0, 65535, 988, i*988)
	}
	if toR := h.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W() {
		t.Fatalf("want segment 0 resent, got %+v", toR)
	}
	// The rest come out of the queue one every 25 ms — 150 ms in all,
	// more than twice the RTO — and then the resend.
	for i := 5; i <= n; i++ {
		h.clock.Advance(25 * time.Millisecond)
		h.ackR(0, 65535, 988, i*988)
	}
	h.ackR(n*988, 65535)
	if st := h.e.Stats(); st.SplitTimeouts != 0 || st.SplitRexmits != 1 {
		t.Fatalf("the timer fired while the receiver reported progress: %+v", st)
	}
}

// TestSplitSpuriousRTO: the radio host's ACKs stop for longer than the
// RTO — it is starved of CPU, not cut off — and the timeout presumes the
// whole flight lost and resends what the cut window allows. Then the late
// ACKs come, for the originals: one that covers a segment sent only
// before the timeout shows the timeout was spurious: the rest of the
// flight is not resent and the window is given back (undoRTO). Before,
// every segment of it went out a second time as the window reopened.
func TestSplitSpuriousRTO(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	const n = 10
	h.burstW(n)
	h.take()
	cwnd := h.e.Flows()[0].Down.Cwnd
	resent := map[uint32]bool{}
	for waited := time.Duration(0); h.e.Stats().SplitTimeouts == 0; waited += 5 * time.Millisecond {
		if waited > 2*time.Second {
			t.Fatal("no timeout in 2 s of silence")
		}
		h.clock.Advance(5 * time.Millisecond)
		for _, p := range h.sentTo(Radio) {
			resent[p.seq] = true
		}
	}
	before := h.e.Stats().SplitRexmits
	// The first segment the timeout did not get to resend.
	first := -1
	for i := range n {
		if !resent[h.W()+uint32(i*988)] {
			first = i
			break
		}
	}
	if first < 0 {
		t.Fatalf("the timeout resent all %d segments at once (%d resends): nothing left to test", n, before)
	}
	h.ackR((first+1)*988, 65535) // the original of segment first arrived
	if w := h.e.Flows()[0].Down.Cwnd; w < cwnd {
		t.Fatalf("window %d after the spurious timeout was found, want the %d it had before it back", w, cwnd)
	}
	h.clock.Advance(time.Millisecond)
	h.ackR(n*988, 65535)
	h.clock.Advance(20 * time.Millisecond)
	var again []uint32
	for _, p := range h.sentTo(Radio) {
		if p.n > 0 {
			again = append(again, (p.seq-h.W())/988)
		}
	}
	st := h.e.Stats()
	if st.SplitRexmits != before || len(again) != 0 {
		t.Fatalf("after the late ACKs: segments %v sent again, %d resends (%d at the timeout)", again, st.SplitRexmits, before)
	}
	if f := h.e.Flows(); len(f) != 1 || f[0].Down.Spurious == 0 {
		t.Fatalf("the spurious timeout was not counted: %+v", f)
	}
}

// TestSplitRetryGapTowardRadio: in a long fade the RTO toward the radio
// backs off, but never to more than 250 ms between tries — so the radio
// sits idle at most that long after the fade ends.
func TestSplitRetryGapTowardRadio(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 988, 0)
	h.clock.Advance(20 * time.Millisecond)
	h.ackR(988, 65535) // an RTT sample: 20 ms
	h.fromW(988, 988, 0)
	h.take()
	var times []time.Duration
	start := h.clock.Now()
	for h.clock.Now().Sub(start) < 3*time.Second {
		h.clock.Advance(5 * time.Millisecond)
		for _, p := range h.sentTo(Radio) {
			if p.seq == h.W()+988 {
				times = append(times, h.clock.Now().Sub(start))
			}
		}
	}
	if len(times) < 8 {
		t.Fatalf("%d tries in 3 s: %v", len(times), times)
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i] - times[i-1]; gap > 255*time.Millisecond {
			t.Fatalf("%v between tries %d and %d (%v): want at most 250 ms", gap, i, i+1, times)
		}
	}
	if times[2]-times[1] < times[1]-times[0]+times[1]-times[0]-10*time.Millisecond {
		t.Fatalf("tries at %v: the first gaps should still double", times)
	}
}

// TestSplitTailLossProbe: the last two segments of a burst are lost and
// nothing more is sent. Two SRTTs after the last ACK — before the RTO —
// the engine resends the last segment as a probe (RFC 8985 §7); its SACK
// lets RACK find the other one, and the tail is repaired with no timeout.
func TestSplitTailLossProbe(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.burstW(5)
	h.clock.Advance(20 * time.Millisecond)
	h.ackR(3*988, 65535) // 3 and 4 are lost
	var probe []pkt
	waited := time.Duration(0)
	for ; waited < 200*time.Millisecond && len(probe) == 0; waited += time.Millisecond {
		h.clock.Advance(time.Millisecond)
		probe = h.sentTo(Radio)
	}
	if len(probe) != 1 || probe[0].seq != h.W()+4*988 || probe[0].n != 988 {
		t.Fatalf("want the last segment resent as a probe, got %+v after %v", probe, waited)
	}
	info := h.e.Flows()[0].Down
	if waited > 2*info.SRTT+2*time.Millisecond || waited >= info.RTO {
		t.Fatalf("probe after %v: want two SRTTs (%v), before the RTO (%v)", waited, info.SRTT, info.RTO)
	}
	h.clock.Advance(20 * time.Millisecond)
	h.ackR(3*988, 65535, 4*988, 5*988) // the probe arrives: segment 3 is the hole
	for i := 0; i < 40 && len(probe) < 2; i++ {
		h.clock.Advance(time.Millisecond)
		probe = append(probe, h.sentTo(Radio)...)
	}
	if len(probe) != 2 || probe[1].seq != h.W()+3*988 {
		t.Fatalf("want segment 3 resent by RACK, got %+v", probe)
	}
	h.ackR(5*988, 65535)
	if st := h.e.Stats(); st.SplitTimeouts != 0 || st.TailProbes != 1 || st.SplitRexmits != 2 {
		t.Fatalf("%+v", st)
	}
}

// TestSplitNoSACKShrinkingDuplicates: a receiver without SACK that counts
// out-of-order data against its window (gVisor's does) shrinks the window
// with each duplicate ACK; they are duplicates all the same, and the third
// resends the hole (an ACK that opens the window is not one).
func TestSplitNoSACKShrinkingDuplicates(t *testing.T) {
	h := newSplit(t, splitOpts{ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	for i := 0; i < 6; i++ {
		h.fromW(i*988, 988, 0)
	}
	h.take()
	h.clock.Advance(20 * time.Millisecond)
	// Segment 0 is lost: a duplicate for segment 1 (the window shrinks
	// below the handshake's), a window update (the receiver's
	// application read), a duplicate for segment 2.
	for i, win := range []uint16{60000, 61000, 61000 - 988} {
		h.ackR(0, win)
		if toR := h.sentTo(Radio); len(toR) != 0 {
			t.Fatalf("resent after ACK %d: %+v", i+1, toR)
		}
	}
	h.ackR(0, 61000-2*988) // the third duplicate
	if toR := h.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W() || toR[0].n != 988 {
		t.Fatalf("want segment 0 resent after the third duplicate, got %+v", toR)
	}
}

// TestSplitFIN: the sender's FIN goes on after its data and is
// acknowledged to the sender only once the receiver has acknowledged it;
// a flow whose two FINs are both through is forgotten.
func TestSplitFIN(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 300, header.TCPFin)
	toW, toR := h.split(h.take())
	if len(toW) != 1 || toW[0].ack != h.W()+300 {
		t.Fatalf("data is acknowledged early, the FIN not: %+v", toW)
	}
	if len(toR) != 1 || !toR[0].fin || toR[0].n != 300 {
		t.Fatalf("data and FIN toward the radio: %+v", toR)
	}
	h.ackR(300, 65535) // the data, not the FIN
	if toW := h.sentTo(Wire); len(toW) != 0 {
		t.Fatalf("FIN acknowledged before the receiver had it: %+v", toW)
	}
	h.ackR(301, 65535)
	if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != h.W()+301 {
		t.Fatalf("want the FIN acknowledged now: %+v", toW)
	}
	// The radio host closes too.
	h.e.Process(Radio, h.seg(Radio, header.TCPAck|header.TCPFin, h.R(), h.W()+301, 65535, 0))
	toW, toR = h.split(h.take())
	if len(toW) != 1 || !toW[0].fin || toW[0].seq != h.R() || len(toR) != 0 {
		t.Fatalf("radio FIN: toward wire %+v, toward radio %+v", toW, toR)
	}
	h.e.Process(Wire, h.seg(Wire, header.TCPAck, h.W()+301, h.R()+1, 65535, 0))
	if toR := h.sentTo(Radio); len(toR) != 1 || toR[0].ack != h.R()+1 {
		t.Fatalf("want the radio FIN acknowledged: %+v", toR)
	}
	if st := h.e.Stats(); st.Flows != 0 || st.BufferedBytes != 0 {
		t.Fatalf("closed flow kept: %+v", st)
	}
}

// TestSplitRST: an RST from one end reaches the other at the sequence
// number it acknowledged last, and the flow is forgotten with its buffers.
func TestSplitRST(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 900, 0)
	h.ackR(400, 65535)
	h.take()
	h.e.Process(Wire, h.seg(Wire, header.TCPRst|header.TCPAck, h.W()+900, h.R(), 0, 0))
	toR := h.sentTo(Radio)
	if len(toR) != 1 || !toR[0].rst || toR[0].seq != h.W()+400 {
		t.Fatalf("RST toward the radio: %+v", toR)
	}
	if st := h.e.Stats(); st.Flows != 0 || st.BufferedBytes != 0 || st.Resets != 1 {
		t.Fatalf("%+v", st)
	}
	h.fromW(900, 10, 0) // the flow is gone: relayed untouched
	if st := h.e.Stats(); st.Relayed != 1 {
		t.Fatalf("%+v", st)
	}
}

// TestSplitZeroWindow: a receiver that closes its window gets no data,
// only probes, backing off; when it opens, data flows. A sender that fills
// the engine's buffer sees the window close without its right edge moving
// left, its probes are answered, and a window update follows when the
// receiver drains the buffer.
func TestSplitZeroWindow(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, cfg: Config{BufferPerFlow: 2 * chunkSize}})
	h.establish()
	h.fromW(0, 988, 0)
	h.take()
	h.ackR(988, 0) // window closed
	h.fromW(988, 988, 0)
	if toR := h.sentTo(Radio); len(toR) != 0 {
		t.Fatalf("data sent into a zero window: %+v", toR)
	}
	var probes []time.Duration
	start := h.clock.Now()
	for i := 0; i < 400 && len(probes) < 3; i++ {
		h.clock.Advance(10 * time.Millisecond)
		for _, p := range h.sentTo(Radio) {
			if p.n != 0 || p.seq != h.W()+987 {
				t.Fatalf("want a zero-window probe, got %+v", p)
			}
			probes = append(probes, h.clock.Now().Sub(start))
		}
	}
	if len(probes) != 3 || probes[2]-probes[1] < probes[1]-probes[0] {
		t.Fatalf("probes at %v: want three, backing off", probes)
	}
	h.ackR(988, 65535) // open
	if toR := h.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W()+988 {
		t.Fatalf("data after the window opened: %+v", toR)
	}
	// Now fill the engine's buffer (32 KB) while the receiver holds its
	// window at one segment.
	h.ackR(2*988, 988>>h.shift(Radio))
	off := 2 * 988
	for i := 0; i < 80; i++ {
		h.fromW(off, 988, 0)
		off += 988
	}
	toW := h.sentTo(Wire)
	lastW := toW[len(toW)-1]
	// (the radio host's SYN-ACK promised 65535 bytes; that edge stays)
	if lastW.win != 0 || lastW.ack-h.W() != 65535 {
		t.Fatalf("window toward the sender with a full buffer: ack %d win %d", lastW.ack-h.W(), lastW.win)
	}
	if st := h.e.Stats(); st.OutOfWindow == 0 {
		t.Fatalf("data beyond the window was not refused: %+v", st)
	}
	// The sender's probe is answered.
	h.e.Process(Wire, h.seg(Wire, header.TCPAck, lastW.ack-1, h.R(), 65535, 0))
	if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != lastW.ack || toW[0].win != 0 {
		t.Fatalf("probe answer: %+v", toW)
	}
	// The receiver opens its window and takes everything: the sender
	// learns of the room without sending anything.
	rcv := 2 * 988
	opened := false
	for i := 0; i < 500 && !opened; i++ {
		h.ackR(rcv, 65535)
		h.clock.Advance(time.Millisecond)
		for _, s := range h.take() {
			p := decode(s)
			if p.to == Radio && int(p.seq-h.W()) == rcv {
				rcv += p.n
			}
			if p.to == Wire && p.win > 0 {
				opened = true
			}
		}
	}
	if !opened || rcv < 2*chunkSize {
		t.Fatalf("no window update toward the sender (receiver took %d bytes)", rcv)
	}
}

// TestSplitSendLimits: the sender counts what held back data it had to
// send — its congestion window, the pacer, the receiver's window — each
// only when it was that one.
func TestSplitSendLimits(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	limits := func() [3]uint64 {
		st := h.e.Stats()
		return [3]uint64{st.CwndLimited, st.PaceLimited, st.WindowLimited}
	}
	// Before an RTT sample nothing paces: the initial window (ten
	// segments) goes and the rest waits for the congestion window.
	for i := range 14 {
		h.fromW(i*988, 988, 0)
	}
	if toR := h.sentTo(Radio); len(toR) != 10 {
		t.Fatalf("sent %d segments into the initial window, want 10", len(toR))
	}
	if l := limits(); l[0] == 0 || l[1] != 0 || l[2] != 0 {
		t.Fatalf("cwnd, pacing, window stops %v: want cwnd only", l)
	}
	// An ACK 100 ms later opens the window and gives an RTT sample: the
	// pacer lets two segments go at once and spaces the others.
	h.clock.Advance(100 * time.Millisecond)
	cwnd := limits()[0]
	h.ackR(10*988, 65535)
	if toR := h.sentTo(Radio); len(toR) != 2 {
		t.Fatalf("sent %d segments at once after the ACK, want the pacer's burst of 2", len(toR))
	}
	if l := limits(); l[0] != cwnd || l[1] == 0 || l[2] != 0 {
		t.Fatalf("cwnd, pacing, window stops %v: want a pacing stop only", l)
	}
	h.clock.Advance(100 * time.Millisecond)
	if toR := h.sentTo(Radio); len(toR) != 2 {
		t.Fatalf("the pacer let %d segments go later, want the other 2", len(toR))
	}
	// The receiver closes its window: what comes next waits for it.
	h.ackR(14*988, 0)
	h.fromW(14*988, 988, 0)
	if toR := h.sentTo(Radio); len(toR) != 0 {
		t.Fatalf("data sent into a zero window: %+v", toR)
	}
	if l := limits(); l[2] == 0 {
		t.Fatalf("cwnd, pacing, window stops %v: want a window stop", l)
	}
}

// TestSplitSequenceWrap: both streams cross 2^32 during the transfer.
func TestSplitSequenceWrap(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 0xffffff00, isnR: 0xfffffff0})
	h.establish()
	for i := 0; i < 4; i++ {
		h.fromW(i*500, 500, 0)
	}
	h.e.Process(Radio, h.seg(Radio, header.TCPAck, h.R(), h.W(), 65535, 400))
	h.e.Process(Radio, h.seg(Radio, header.TCPAck, h.R()+400, h.W(), 65535, 400))
	toW, toR := h.split(h.take())
	if sumN(toR) != 2000 || toR[len(toR)-1].ack != h.R()+800 || sumN(toW) != 800 {
		t.Fatalf("across the wrap: %d bytes toward the radio, %d toward the wire; %+v", sumN(toR), sumN(toW), toR[len(toR)-1])
	}
	h.rSent = 800
	h.clock.Advance(10 * time.Millisecond)
	h.ackR(1200, 65535, 1500, 2000) // a hole at 1200…1500, across the wrap
	if toR := h.sentTo(Radio); len(toR) != 0 {
		t.Fatalf("resent before the reordering window passed: %+v", toR)
	}
	h.clock.Advance(5 * time.Millisecond) // RACK: an RTT and a quarter since it was sent
	if toR := h.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W()+1200 {
		t.Fatalf("resend across the wrap: %+v", toR)
	}
}

// TestSplitRandomized plays random data, loss, reordering, windows and
// time at the engine (window scales 0, 7 and 14, SACK on and off) with
// every emitted packet checked, then lets the receiver take everything:
// what reaches it is exactly what the sender sent.
func TestSplitRandomized(t *testing.T) {
	for _, tc := range []splitOpts{
		{wsW: 0, wsR: 0, sack: true, ts: true, isnW: 0xfffff000, isnR: 77},
		{wsW: 7, wsR: 3, sack: false, ts: true, isnW: 5, isnR: 0xffffff00},
		{wsW: 14, wsR: 14, sack: true, ts: false, isnW: 123456, isnR: 654321},
		{noWS: true, sack: true, ts: true, isnW: 1, isnR: 2},
	} {
		tc.cfg = Config{BufferPerFlow: 64 << 10, BufferTotal: 64 << 10}
		h := newSplit(t, tc)
		h.establish()
		r := rand.New(rand.NewSource(int64(tc.isnW)))
		const total = 300_000
		got := map[uint32]bool{} // offsets the receiver holds
		rcvNxt := 0              // receiver's cumulative ACK
		sent := 0                // the sender's next offset
		wAck := 0                // highest early ACK the sender saw
		wEdge := 65535
		deliver := func(p pkt) {
			if p.to != Radio || p.n == 0 {
				return
			}
			off := int(p.seq - h.W())
			for i := 0; i < p.n; i++ {
				got[uint32(off+i)] = true
			}
			for got[uint32(rcvNxt)] {
				rcvNxt++
			}
		}
		for step := 0; step < 20000 && (rcvNxt < total || sent < total); step++ {
			switch k := r.Intn(10); {
			case k < 4 && sent < total: // the sender sends what the window allows
				n := min(1000, total-sent, max(wEdge-sent, 0))
				if n > 0 && r.Intn(20) > 0 {
					h.fromW(sent, n, 0)
				}
				sent += n
				if n == 0 && wAck < sent { // go back: resend from the early ACK
					sent = wAck
				}
			case k < 8: // the receiver acknowledges, with a random window
				var sack []int
				if tc.sack {
					for o := rcvNxt + 1; o < rcvNxt+8000 && len(sack) < 6; o++ {
						if got[uint32(o)] && !got[uint32(o-1)] {
							e := o
							for got[uint32(e)] {
								e++
							}
							sack = append(sack, o, e)
						}
					}
				}
				win := uint16(r.Intn(65536))
				h.ackR(rcvNxt, win>>h.shift(Radio), sack...)
			default:
				h.clock.Advance(time.Duration(r.Intn(30)) * time.Millisecond)
			}
			for _, s := range h.take() {
				p := decode(s)
				if p.to == Wire {
					if a := int(p.ack - h.W()); a > wAck {
						wAck = a
					}
					wEdge = max(wEdge, int(p.ack-h.W())+int(p.win)<<h.shift(Radio))
					continue
				}
				if r.Intn(25) == 0 { // lost on the radio
					continue
				}
				deliver(p)
			}
		}
		// Now a clean radio with an open window until all is through.
		for i := 0; i < 5000 && rcvNxt < total; i++ {
			sent = wAck // the sender goes back to what it has not had acknowledged
			if sent < total {
				n := min(1000, total-sent, max(wEdge-sent, 0))
				if n > 0 {
					h.fromW(sent, n, 0)
					sent += n
				}
			}
			h.ackR(rcvNxt, 65535)
			h.clock.Advance(50 * time.Millisecond)
			for _, s := range h.take() {
				if p := decode(s); p.to == Radio {
					deliver(p)
				} else {
					wAck = max(wAck, int(p.ack-h.W()))
					wEdge = max(wEdge, int(p.ack-h.W())+int(p.win)<<h.shift(Radio))
				}
			}
		}
		st := h.e.Stats()
		if rcvNxt != total {
			t.Fatalf("%+v: the receiver holds %d of %d bytes; %+v", tc, rcvNxt, total, st)
		}
		t.Logf("ws %d/%d sack %v: %+v", tc.wsW, tc.wsR, tc.sack, st)
	}
}

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
// it holds and no further. Segments imported in flight give no RTT sample:
// their ACK, a millisecond after the import, is not the path's RTT.
func TestSplitImportedAckAhead(t *testing.T) {
	o := splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000}
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
	h2.ackR(6*988, 65535) // beyond every byte held: refused
	if st := h2.e.Stats(); st.AckIgnored != 1 || held() != 4*988 {
		t.Fatalf("an ACK beyond the bytes held was taken: %d held, %+v", held(), st)
	}
	h2.take()
	h2.ackR(4*988, 65535) // the two in flight and one never sent here
	if st := h2.e.Stats(); st.AckIgnored != 1 || held() != 988 {
		t.Fatalf("the moved flow refused the receiver's ACK: %d held, %+v", held(), st)
	}
	if toR := h2.sentTo(Radio); len(toR) != 1 || toR[0].seq != h.W()+4*988 {
		t.Fatalf("after the ACK, toward the radio %+v; want the last segment held", toR)
	}
	fi := h2.e.Flows()
	if len(fi) != 1 || fi[0].Down.MinRTT != 20*time.Millisecond {
		t.Fatalf("flows %+v: want the minimum RTT of 20 ms kept", fi)
	}
}

func sumN(ps []pkt) int {
	n := 0
	for _, p := range ps {
		n += p.n
	}
	return n
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

// FuzzSplit plays an arbitrary sequence of segments from both ends at an
// established split flow — data anywhere in or out of the window, ACKs of
// anything with any window and SACK blocks, FINs, RSTs, time passing —
// with every emitted packet checked by the conformance harness (checksums,
// the sender's bytes, a right edge that never moves left, PAWS-valid
// timestamps) and the buffers bounded.
func FuzzSplit(f *testing.F) {
	f.Add(uint8(0), []byte{0, 0, 0, 10, 0, 0, 255, 0, 1, 0, 0, 0, 0, 10, 255, 0})
	f.Add(uint8(7), []byte{0, 0, 100, 10, 0, 0, 255, 0, 2, 0, 0, 10, 0, 0, 0, 1, 0x61, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(3), []byte{2, 0, 0, 5, 0, 0, 9, 0, 1, 0, 0, 0, 0, 5, 0, 0, 0xe0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, setup uint8, ops []byte) {
		o := splitOpts{sack: setup&1 != 0, ts: setup&2 != 0, wsW: setup >> 4 % 15, wsR: setup >> 3 % 15,
			isnW: 0xffffff00 + uint32(setup), isnR: uint32(setup) << 24,
			cfg: Config{BufferPerFlow: 64 << 10, BufferTotal: 128 << 10}}
		h := newSplit(t, o)
		h.establish()
		for len(ops) >= 8 {
			op := ops[:8]
			ops = ops[8:]
			off := int(binary.BigEndian.Uint16(op[1:])) * 16
			n := int(op[3]) * 8
			flags := uint8(header.TCPAck)
			if op[0]&2 != 0 {
				flags |= header.TCPFin
			}
			if op[0]&0x1c == 0x1c {
				flags |= header.TCPRst
			}
			if op[0]&1 == 0 { // data from the wire host
				h.e.Process(Wire, h.seg(Wire, flags, h.W()+uint32(off), h.R(), 65535, n))
			} else { // an ACK (and maybe data) from the radio host
				ack := int(binary.BigEndian.Uint16(op[4:])) * 16
				var sack []uint32
				if op[7] != 0 {
					s := h.W() + uint32(ack) + uint32(op[7])*64
					sack = []uint32{s, s + uint32(n) + 1}
				}
				h.e.Process(Radio, h.seg(Radio, flags, h.R()+uint32(h.rSent), h.W()+uint32(ack), uint16(op[6])<<8, n%64, sack...))
			}
			fires := h.e.timerFires()
			h.clock.Advance(time.Duration(op[0]>>5) * 7 * time.Millisecond)
			h.take()
			if h.e.timerFires()-fires > 1000 {
				t.Fatalf("%d timer callbacks in %v", h.e.timerFires()-fires, time.Duration(op[0]>>5)*7*time.Millisecond)
			}
			bound := 2 * (o.cfg.BufferPerFlow + 65536 + 3*chunkSize)
			if st := h.e.Stats(); st.BufferedBytes > bound || st.Flows > 1 {
				t.Fatalf("buffers beyond their bound: %+v", st)
			}
		}
		fires := h.e.timerFires()
		h.clock.Advance(time.Minute)
		if h.e.timerFires()-fires > 10000 {
			t.Fatalf("%d timer callbacks in a minute", h.e.timerFires()-fires)
		}
	})
}

var debugSh = false

// TestSplitGiveUp: a receiver that never answers again makes the engine
// reset both ends after GiveUp, not retry forever.
func TestSplitGiveUp(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, cfg: Config{GiveUp: 30 * time.Second}})
	h.establish()
	h.fromW(0, 500, 0)
	h.take()
	h.clock.Advance(25 * time.Second)
	if st := h.e.Stats(); st.Flows != 1 || st.SplitTimeouts < 10 {
		t.Fatalf("before GiveUp: %+v", st)
	}
	h.clock.Advance(10 * time.Second)
	var rst [2]bool
	for _, s := range h.take() {
		if p := decode(s); p.rst {
			rst[s.to] = true
		}
	}
	if st := h.e.Stats(); !rst[Wire] || !rst[Radio] || st.Flows != 0 || st.GaveUp != 1 || st.BufferedBytes != 0 {
		t.Fatalf("after GiveUp: RST toward wire/radio %v, %+v", rst, st)
	}
}

// mkseg6 builds an IPv6 TCP segment with hop limit 61, traffic class 0x28
// and flow label 0x12345.
func mkseg6(src, dst netip.AddrPort, flags uint8, seq, ack uint32, win uint16, payload int, opts ...byte) []byte {
	v4 := mkseg(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), src.Port()), netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), dst.Port()),
		flags, seq, ack, win, payload, opts...)
	tcp := v4[20:]
	b := make([]byte, header.IPv6Len+len(tcp))
	header.WriteIPv6(b, 0x28, 0x12345, len(tcp), header.ProtoTCP, 61, src.Addr(), dst.Addr())
	copy(b[header.IPv6Len:], tcp)
	s, d := src.Addr().As16(), dst.Addr().As16()
	header.TCP(b[header.IPv6Len:]).UpdateChecksum(s[:], d[:])
	return b
}

// TestSplitIPv6: a split flow over IPv6; the engine's packets copy the
// endpoint's traffic class, flow label and hop limit and have valid
// checksums.
func TestSplitIPv6(t *testing.T) {
	w := netip.MustParseAddrPort("[2001:db8::1]:80")
	r := netip.MustParseAddrPort("[2001:db8:9::2]:40000")
	var out []sent
	clock := netem.NewSimClock(time.Unix(0, 0))
	e := mustNew(t, Config{Mode: ModeSplit, Clock: clock}, func(to Side, p []byte) {
		out = append(out, sent{to, append([]byte(nil), p...)})
	})
	sack := []byte{header.TCPOptSACKPerm, 2, header.TCPOptMSS, 4, 5, 0x8c}
	e.Process(Wire, mkseg6(w, r, header.TCPSyn, 100, 0, 65535, 0, sack...))
	e.Process(Radio, mkseg6(r, w, header.TCPSyn|header.TCPAck, 900, 101, 65535, 0, sack...))
	e.Process(Wire, mkseg6(w, r, header.TCPAck, 101, 901, 65535, 0))
	e.Process(Wire, mkseg6(w, r, header.TCPAck, 101, 901, 65535, 1000))
	clock.Advance(delAck)
	if len(out) != 5 {
		t.Fatalf("%d packets out", len(out))
	}
	for _, s := range out[3:] {
		ip, err := header.ParseIPv6(s.pkt)
		if err != nil {
			t.Fatal(err)
		}
		tcp := header.TCP(s.pkt[header.IPv6Len:])
		if ip.TrafficClass() != 0x28 || ip.HopLimit() != 61 || binary.BigEndian.Uint32(s.pkt)&0xfffff != 0x12345 ||
			!tcp.ChecksumValid(ip.SrcBytes(), ip.DstBytes()) {
			t.Fatalf("packet toward %v: tclass %#x hop limit %d checksum ok %v", s.to, ip.TrafficClass(), ip.HopLimit(),
				tcp.ChecksumValid(ip.SrcBytes(), ip.DstBytes()))
		}
	}
	var toW, toR pkt
	for _, s := range out[3:] {
		if s.to == Wire {
			toW = decode(s)
		} else {
			toR = decode(s)
		}
	}
	if toW.ack != 1101 || toR.n != 1000 || toR.seq != 101 {
		t.Fatalf("over IPv6: early ACK %+v, data toward the radio %+v", toW, toR)
	}
}

// TestSplitForgedSegments: segments a careful endpoint would not accept
// (RFC 5961, RFC 9293 §3.10.7.4) — an ACK for bytes the engine never sent,
// one far below the window, an RST in the window but not at the next
// byte, one far outside, a SYN — release nothing the engine acknowledged
// early and do not reset the flow; the in-window ones are answered with
// a challenge ACK, rate-limited. Then the genuine ACK releases the bytes
// and an RST at exactly the next byte resets the flow.
func TestSplitForgedSegments(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 988, 0)
	h.fromW(988, 988, 0)
	h.fromW(1976, 988, 0)
	h.take()
	held := h.e.Stats().BufferedBytes
	challenges := func(want int) {
		t.Helper()
		toR := h.sentTo(Radio)
		if len(toR) != want {
			t.Fatalf("%d packets toward the radio, want %d challenge ACKs: %+v", len(toR), want, toR)
		}
		for _, p := range toR {
			if !p.pureAck || p.ack != h.R() {
				t.Fatalf("not a challenge ACK: %+v", p)
			}
		}
		h.clock.Advance(challengeGap)
	}
	forged := []struct {
		name      string
		flags     uint8
		seq, ack  uint32
		challenge bool
	}{
		{"ack beyond what was sent", header.TCPAck, h.R(), h.W() + 9000, true},
		{"ack beyond, with data", header.TCPAck | header.TCPPsh, h.R(), h.W() + 2965, true},
		{"ack far below the window", header.TCPAck, h.R(), h.W() - 300000, true},
		{"rst in the window", header.TCPRst | header.TCPAck, h.R() + 5000, h.W() + 2964, true},
		{"rst outside the window", header.TCPRst, h.R() + 1<<31, 0, false},
		{"rst just below", header.TCPRst, h.R() - 1, 0, false},
		{"syn", header.TCPSyn, h.R() + 77, 0, true},
	}
	for _, f := range forged {
		n := 0
		if f.flags&header.TCPPsh != 0 {
			n = 100
		}
		pkt := h.seg(Radio, f.flags, f.seq, f.ack, 65535, n)
		h.tsR-- // refused: its TSval is not the one the engine echoes (RFC 7323 §4.3)
		h.e.Process(Radio, pkt)
		st := h.e.Stats()
		if st.Flows != 1 || st.BufferedBytes != held || st.Resets != 0 {
			t.Fatalf("%s: the flow lost what it held: %+v", f.name, st)
		}
		if f.challenge {
			challenges(1)
		} else {
			challenges(0)
		}
	}
	// A burst of forgeries gets one challenge ACK per gap.
	for range 10 {
		pkt := h.seg(Radio, header.TCPAck, h.R(), h.W()+9000, 65535, 0)
		h.tsR--
		h.e.Process(Radio, pkt)
	}
	challenges(1)
	if st := h.e.Stats(); st.AckIgnored != 13 || st.RSTIgnored != 2 || st.ChallengeAcks != 6 {
		t.Fatalf("counters: %+v", st)
	}
	h.ackR(2964, 65535)
	if st := h.e.Stats(); st.BufferedBytes != 0 {
		t.Fatalf("the genuine ACK released nothing: %+v", st)
	}
	h.take()
	h.e.Process(Radio, h.seg(Radio, header.TCPRst, h.R(), 0, 0, 0))
	if toW := h.sentTo(Wire); len(toW) != 1 || !toW[0].rst {
		t.Fatalf("the exact RST not passed on: %+v", toW)
	}
	if st := h.e.Stats(); st.Flows != 0 || st.Resets != 1 {
		t.Fatalf("%+v", st)
	}
}

// TestPlainBinding: a flow opened by verified packets refuses unverified
// ones (ProcessPlain reports false and nothing happens); a flow opened in
// the clear becomes a verified flow when a verified packet shows it; the
// flows opened in the clear are bounded apart.
func TestPlainBinding(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, cfg: Config{MaxFlows: 4}})
	h.establish()
	h.fromW(0, 988, 0)
	h.take()
	if h.e.ProcessPlain(Radio, h.seg(Radio, header.TCPRst, h.R(), 0, 0, 0)) {
		t.Fatal("a cleartext RST was taken by a protected flow")
	}
	if h.e.ProcessPlain(Radio, h.seg(Radio, header.TCPAck, h.R(), h.W()+988, 65535, 0)) {
		t.Fatal("a cleartext ACK was taken by a protected flow")
	}
	if st := h.e.Stats(); st.Flows != 1 || st.BufferedBytes == 0 || st.PlainRefused != 2 || len(h.take()) != 0 {
		t.Fatalf("%+v", st)
	}
	// Plain flows: at most MaxFlows/2 = 2 of them.
	for i := range 3 {
		src := netip.AddrPortFrom(wireHost.Addr(), uint16(1000+i))
		if !h.e.ProcessPlain(Wire, mkseg(src, radioHost, header.TCPSyn, 1, 0, 100, 0)) {
			t.Fatal("a plain SYN refused")
		}
	}
	if st := h.e.Stats(); st.Flows != 3 || st.Relayed != 1 {
		t.Fatalf("plain flows beyond their bound: %+v", st)
	}
	// A verified packet shows plain flow 0: it is protected from now on.
	src := netip.AddrPortFrom(wireHost.Addr(), 1000)
	h.e.Process(Wire, mkseg(src, radioHost, header.TCPSyn, 1, 0, 100, 0))
	if h.e.ProcessPlain(Wire, mkseg(src, radioHost, header.TCPRst, 2, 0, 0, 0)) {
		t.Fatal("a flow a verified packet showed took a cleartext RST")
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

// TestSplitElicit: a keep-alive toward either endpoint, one below what it
// has acknowledged, with the flow's current ACK; nothing for a flow that
// does not exist.
func TestSplitElicit(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.keepAlives = true
	if h.e.Elicit(wireHost, radioHost, Wire) {
		t.Fatal("elicited on a flow that does not exist")
	}
	h.establish()
	h.fromW(0, 900, 0)
	h.take()
	if !h.e.Elicit(wireHost, radioHost, Wire) {
		t.Fatal("no split flow found")
	}
	toW, _ := h.split(h.take())
	if len(toW) != 1 || toW[0].seq != h.R()-1 || toW[0].ack != h.W()+900 || toW[0].n != 1 || !toW[0].isAck {
		t.Fatalf("keep-alive toward the wire host: %+v", toW)
	}
	// Toward the radio host the engine has sent 900 bytes, 400 of them
	// acknowledged.
	h.ackR(400, 65535)
	h.take()
	h.e.Elicit(wireHost, radioHost, Radio)
	toR := h.sentTo(Radio)
	if len(toR) != 1 || toR[0].seq != h.W()+400-1 || toR[0].n != 1 {
		t.Fatalf("keep-alive toward the radio host: %+v", toR)
	}
}

// TestSplitAckBudget: early ACKs go every second segment while the
// receiver sends as many packets as the engine sends in its name; once
// the engine is ackSlack packets ahead (a receiver that acknowledges
// rarely), an ACK waits for the receiver's next packet — one for each —
// or for delAck. So the engine never sends more than ackSlack packets on
// the receiver's SA beyond the receiver's own and its delayed ACKs, even
// against a receiver fed GRO super-packets that acknowledges every 78th
// segment (espep host, measured); with a fixed stretch of every eighth
// segment its lead grew by a thousand packets a second.
func TestSplitAckBudget(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	next := 0 // the wire host's next segment, 100 bytes each
	acks := func(n int) int {
		for range n {
			h.fromW(next*100, 100, 0)
			next++
		}
		return len(h.sentTo(Wire))
	}
	// Since the handshake the radio host has sent nothing: 2·ackSlack
	// segments get an ACK every second one.
	if got := acks(2 * ackSlack); got != ackSlack {
		t.Fatalf("%d ACKs for %d segments, want one every second", got, 2*ackSlack)
	}
	if got := acks(80); got != 0 {
		t.Fatalf("%d ACKs for 80 more segments with no packet from the receiver", got)
	}
	h.clock.Advance(delAck)
	if toW := h.sentTo(Wire); len(toW) != 1 || toW[0].ack != h.W()+uint32(next*100) {
		t.Fatalf("after delAck: %+v, want one ACK of everything", toW)
	}
	// That ACK was one beyond the budget: the receiver's next packet pays
	// for it and releases none.
	h.fromW(next*100, 100, 0)
	next++
	h.ackR(next*100, 65535)
	if toW := h.sentTo(Wire); len(toW) != 0 {
		t.Fatalf("the receiver's packet after a delayed ACK beyond the budget released %+v", toW)
	}
	// A receiver that acknowledges every 78th segment: one ACK toward the
	// sender for each of its packets, of everything taken so far.
	const rounds, every = 50, 78
	for r := range rounds {
		if got := acks(every); got != 0 {
			t.Fatalf("round %d: %d ACKs toward the sender before the receiver's", r, got)
		}
		h.ackR(next*100, 65535)
		toW := h.sentTo(Wire)
		if len(toW) != 1 || toW[0].ack != h.W()+uint32(next*100) {
			t.Fatalf("round %d: the receiver's ACK released %+v toward the sender, want one ACK of everything", r, toW)
		}
	}
	// The receiver acknowledges a lot (each ACK one packet on its SA): the
	// engine may acknowledge every second segment again.
	for range 2*ackSlack + 20 {
		h.ackR(next*100, 65535)
	}
	h.take()
	if got := acks(20); got != 10 {
		t.Fatalf("%d ACKs for 20 segments after the receiver's ACKs, want 10", got)
	}
}

// TestSplitAck: Ack sends the current ACK toward either side (what the
// gateway asks for when the ACK it could not seal can be sealed now).
func TestSplitAck(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	if h.e.Ack(wireHost, radioHost, Wire) {
		t.Fatal("an ACK on a flow that does not exist")
	}
	h.establish()
	h.fromW(0, 900, 0) // a lone segment: its ACK is delayed
	h.take()
	if !h.e.Ack(wireHost, radioHost, Wire) {
		t.Fatal("no split flow found")
	}
	toW, toR := h.split(h.take())
	if len(toW) != 1 || !toW[0].pureAck || toW[0].ack != h.W()+900 || toW[0].seq != h.R() || len(toR) != 0 {
		t.Fatalf("toward the wire %+v, toward the radio %+v", toW, toR)
	}
}

// TestSplitAckOfRelayedBytes: the receiver acknowledges bytes the engine
// holds but has not sent — the sender's own packets reached it relayed
// as they came (a rekey's new SA reached the endpoints before the
// gateway). On a protected flow the ACK is the receiver's own: it is
// taken, those bytes count as delivered and the engine goes on from
// there — refused, that ACK would come back for ever and the flow stall.
// On a cleartext flow anyone could have sent it: it is refused, as
// beyond anything the engine holds on either.
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
		h.ackR(30*988+1, 65535) // beyond everything held: never taken
		if st := h.e.Stats(); st.AckIgnored != 1 || st.BufferedBytes != held {
			t.Fatalf("plain %v: an ACK beyond the bytes held: %+v", plain, st)
		}
		h.clock.Advance(challengeGap)
		h.ackR(25*988, 65535)
		st := h.e.Stats()
		if plain {
			if st.AckIgnored != 2 || st.BufferedBytes != held {
				t.Fatalf("plain: an ACK of bytes not sent was taken: %+v", st)
			}
			continue
		}
		if st.AckIgnored != 1 || st.BufferedBytes >= held {
			t.Fatalf("protected: the receiver's ACK of relayed bytes was not taken: %+v", st)
		}
		for _, p := range h.sentTo(Radio) {
			if p.n > 0 && p.seq < h.W()+25*988 {
				t.Fatalf("protected: the engine sent again bytes the receiver has (seq %d)", p.seq-h.W())
			}
		}
	}
}
