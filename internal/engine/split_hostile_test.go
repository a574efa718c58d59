package engine

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/ipsec/header"
)

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

// TestSplitForgedSegments: segments a careful endpoint would not accept
// (RFC 5961, RFC 9293 §3.10.7.4) — an ACK for bytes the engine never sent,
// one far below the window, an RST in the window but not at the next
// byte, one far outside, a SYN — release nothing the engine acknowledged
// early and do not reset the flow; the in-window ones are answered with
// a challenge ACK, rate-limited. Then the genuine ACK releases the bytes
// and an RST at exactly the next byte resets the flow. On a protected
// flow only an endpoint can send at all, and its ACK beyond the bytes sent
// is the receiver's own word (TestSplitAckOfRelayedBytes): those rows are
// left out there.
func TestSplitForgedSegments(t *testing.T) {
	for _, plain := range []bool{true, false} {
		t.Run(fmt.Sprintf("plain=%v", plain), func(t *testing.T) { forgedSegments(t, plain) })
	}
}

func forgedSegments(t *testing.T, plain bool) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 1000, isnR: 5000, plain: plain})
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
		name           string
		flags          uint8
		seq, ack       uint32
		challenge, any bool // any: refused from anyone (not only on a plain flow)
	}{
		{"ack beyond what was sent", header.TCPAck, h.R(), h.W() + 9000, true, false},
		{"ack beyond, with data", header.TCPAck | header.TCPPsh, h.R(), h.W() + 2965, true, false},
		{"ack far below the window", header.TCPAck, h.R(), h.W() - 300000, true, true},
		{"rst in the window", header.TCPRst | header.TCPAck, h.R() + 5000, h.W() + 2964, true, true},
		{"rst outside the window", header.TCPRst, h.R() + 1<<31, 0, false, true},
		{"rst just below", header.TCPRst, h.R() - 1, 0, false, true},
		{"syn", header.TCPSyn, h.R() + 77, 0, true, true},
	}
	var acks, challenged uint64
	for _, f := range forged {
		if !plain && !f.any {
			continue
		}
		n := 0
		if f.flags&header.TCPPsh != 0 {
			n = 100
		}
		pkt := h.seg(Radio, f.flags, f.seq, f.ack, 65535, n)
		h.tsR-- // refused: its TSval is not the one the engine echoes (RFC 7323 §4.3)
		h.in(Radio, pkt)
		st := h.e.Stats()
		if st.Flows != 1 || st.BufferedBytes != held || st.Resets != 0 {
			t.Fatalf("%s: the flow lost what it held: %+v", f.name, st)
		}
		if f.flags&(header.TCPRst|header.TCPSyn) == 0 {
			acks++
		}
		if f.challenge {
			challenged++
			challenges(1)
		} else {
			challenges(0)
		}
	}
	// A burst of forgeries gets one challenge ACK per gap.
	for range 10 {
		pkt := h.seg(Radio, header.TCPAck, h.R(), h.W()-300000, 65535, 0)
		h.tsR--
		h.in(Radio, pkt)
	}
	challenges(1)
	if st := h.e.Stats(); st.AckIgnored != acks+10 || st.RSTIgnored != 2 || st.ChallengeAcks != challenged+1 {
		t.Fatalf("counters: %+v", st)
	}
	genuineAckAndReset(t, h)
}

// genuineAckAndReset: the receiver's genuine ACK releases what the flow
// holds, and an RST at exactly the next byte resets it.
func genuineAckAndReset(t *testing.T, h *sh) {
	t.Helper()
	h.ackR(2964, 65535)
	if st := h.e.Stats(); st.BufferedBytes != 0 {
		t.Fatalf("the genuine ACK released nothing: %+v", st)
	}
	h.take()
	h.in(Radio, h.seg(Radio, header.TCPRst, h.R(), 0, 0, 0))
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
