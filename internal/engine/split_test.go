package engine

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/ipsec/header"
)

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
