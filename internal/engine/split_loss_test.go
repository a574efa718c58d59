package engine

import (
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/espep/espep/ipsec/header"
)

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
// backs off, but never to more than 100 ms between tries (the RTO here
// is ~40 ms) — so the radio sits idle at most that long after the fade
// ends. With a radio RTT of 80 ms the RTO is above 100 ms, and the tries
// keep to it: never closer than the RTO, never doubled past it.
func TestSplitRetryGapTowardRadio(t *testing.T) {
	times := radioTries(t, 20*time.Millisecond)
	if len(times) < 20 {
		t.Fatalf("%d tries in 3 s: %v", len(times), times)
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i] - times[i-1]; gap > 105*time.Millisecond {
			t.Fatalf("%v between tries %d and %d (%v): want at most 100 ms", gap, i, i+1, times)
		}
	}
	times = radioTries(t, 80*time.Millisecond)
	if len(times) < 6 {
		t.Fatalf("RTT 80 ms: %d tries in 3 s: %v", len(times), times)
	}
	rto := times[len(times)-1] - times[len(times)-2] // the last gap
	if rto < 150*time.Millisecond {
		t.Fatalf("RTT 80 ms: tries %v apart (%v): closer than the RTO", rto, times)
	}
	for i := 2; i < len(times); i++ {
		if gap := times[i] - times[i-1]; gap > rto+5*time.Millisecond || gap < rto-5*time.Millisecond {
			t.Fatalf("RTT 80 ms: tries at %v: want them one RTO (%v) apart once backed off", times, rto)
		}
	}
}

// TestSplitFadeProbesOneSegment: after an RTT sample of 20 ms, ten
// segments in flight, then nothing comes back for 1.5 s. The first
// timeout resends a few segments (BBR keeps four for it); from the second
// on, each try is one segment, the head, so a long fade costs the radio
// one segment a try per flow. The ACK of that segment ends it: the next
// send is more than one segment again.
func TestSplitFadeProbesOneSegment(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 988, 0)
	h.clock.Advance(20 * time.Millisecond)
	h.ackR(988, 65535) // an RTT sample: 20 ms
	for i := 1; i <= 10; i++ {
		h.fromW(i*988, 988, 0)
	}
	sent := map[uint32]bool{}
	for _, p := range h.sentTo(Radio) {
		sent[p.seq-h.W()] = true
	}
	var first, later [][]uint32 // resends at the first timeout, and after
	start := h.clock.Now()
	for h.clock.Now().Sub(start) < 1500*time.Millisecond {
		h.clock.Advance(5 * time.Millisecond)
		var again []uint32
		for _, p := range h.sentTo(Radio) {
			if off := p.seq - h.W(); p.n > 0 && sent[off] {
				again = append(again, off)
			} else {
				sent[off] = true // paced out for the first time
			}
		}
		switch timeouts := h.e.Stats().SplitTimeouts; {
		case len(again) == 0:
		case timeouts == 1:
			first = append(first, again)
		case timeouts > 1:
			later = append(later, again)
		}
	}
	if !slices.ContainsFunc(first, func(s []uint32) bool { return len(s) > 1 }) {
		t.Fatalf("at the first timeout the sender resent %v: want the controller's window (a few segments), not one", first)
	}
	if len(later) < 6 {
		t.Fatalf("%d tries after the first timeout in 1.5 s: %v", len(later), later)
	}
	for i, try := range later {
		if len(try) != 1 || try[0] != 988 {
			t.Fatalf("try %d after the first timeout resent offsets %v, want only the head (tries %v)", i+1, try, later)
		}
	}
	h.ackR(2*988, 65535)
	h.clock.Advance(time.Millisecond)
	if got := h.sentTo(Radio); len(got) < 2 {
		t.Fatalf("after the head's ACK the sender sent %d segments, want its window back", len(got))
	}
}

// radioTries sends one segment toward the radio after an RTT sample of
// rtt, loses every try for 3 s, and returns when each try of it left.
func radioTries(t *testing.T, rtt time.Duration) []time.Duration {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000})
	h.establish()
	h.fromW(0, 988, 0)
	h.clock.Advance(rtt)
	h.ackR(988, 65535)
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
	return times
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
		// Checksums left partial, completed as a device would (newSplit).
		{wsW: 7, wsR: 7, sack: true, ts: true, isnW: 9, isnR: 0xfffff100, cfg: Config{PartialChecksums: true}},
	} {
		tc.cfg = Config{BufferPerFlow: 64 << 10, BufferTotal: 64 << 10, PartialChecksums: tc.cfg.PartialChecksums}
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
