package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
)

// TestOutKnown: with a second way out (SetOutKnown), the packets the
// gateway made itself — segments and ACKs the engine built, packets it
// sealed — take it, and every one of them has checksums that hold, the
// promise that lets the link merge them unsummed; what it relays as it
// came (the handshakes, read-class packets) takes the first.
func TestOutKnown(t *testing.T) {
	h := newHostileRig(t)
	var known, other [][]byte
	h.g.out = func(_ engine.Side, p []byte) { other = append(other, append([]byte(nil), p...)) }
	h.g.SetOutKnown(func(_ engine.Side, p []byte) { known = append(known, append([]byte(nil), p...)) })
	h.warmUp()
	h.clock.Advance(time.Second)
	if len(known) < 30 || len(other) == 0 {
		t.Fatalf("%d packets out the known way, %d the other; want both used", len(known), len(other))
	}
	tcp := 0
	for i, p := range known {
		var ip header.Parsed
		if err := header.Parse(p, &ip); err != nil {
			t.Fatalf("known packet %d: %v", i, err)
		}
		src, dst := ip.Src.AsSlice(), ip.Dst.AsSlice()
		if ip.Version == 4 && !header.IPv4(p).ChecksumValid() {
			t.Fatalf("known packet %d: IPv4 header checksum does not hold", i)
		}
		switch ip.Proto {
		case header.ProtoTCP:
			tcp++
			if !header.TCP(p[ip.L4:ip.Len]).ChecksumValid(src, dst) {
				t.Fatalf("known packet %d: TCP checksum does not hold", i)
			}
			// The handshake passes end to end: its packets are the
			// endpoints', with their checksums, never the known way.
			if header.TCP(p[ip.L4:ip.Len]).Has(header.TCPSyn) {
				t.Fatalf("known packet %d is a SYN the gateway relayed", i)
			}
		case header.ProtoUDP:
			if u := header.UDP(p[ip.L4:ip.Len]); !(ip.Version == 4 && u.Checksum() == 0) && !u.ChecksumValid(src, dst) {
				t.Fatalf("known packet %d: UDP checksum does not hold", i)
			}
		}
	}
	if tcp == 0 {
		t.Fatal("no segment the engine built for a plain flow came the known way")
	}
}

// TestOutPartial: with a third way out (SetOutPartial), the segments the
// engine built for the plain flows take it, their IPv4 header checksums
// whole and their TCP checksums partial — the pseudo header's sum, which
// completed (as a device would) holds; the same flows' segments inside
// IP-in-IP, which a device could not find, and everything sealed, leave
// the known way with whole checksums (TestOutKnown checks those).
func TestOutPartial(t *testing.T) {
	h := newHostileRig(t)
	var partial [][]byte
	known, other := 0, 0
	h.g.out = func(engine.Side, []byte) { other++ }
	h.g.SetOutKnown(func(engine.Side, []byte) { known++ })
	h.g.SetOutPartial(func(_ engine.Side, p []byte) { partial = append(partial, append([]byte(nil), p...)) })
	h.warmUp()
	h.clock.Advance(time.Second)
	if len(partial) < 10 || known < 30 || other == 0 {
		t.Fatalf("%d packets out the partial way, %d the known way, %d the other; want all used", len(partial), known, other)
	}
	plain := map[netip.Addr]bool{h.flows[7].wire.Addr(): true, h.flows[8].wire.Addr(): true}
	for i, p := range partial {
		var ip header.Parsed
		if err := header.Parse(p, &ip); err != nil || ip.Proto != header.ProtoTCP {
			t.Fatalf("partial packet %d: %v, protocol %d", i, err, ip.Proto)
		}
		if !plain[ip.Src] && !plain[ip.Dst] {
			t.Fatalf("partial packet %d (%v → %v) is not a plain flow's", i, ip.Src, ip.Dst)
		}
		if ip.Version == 4 && !header.IPv4(p).ChecksumValid() {
			t.Fatalf("partial packet %d: IPv4 header checksum does not hold", i)
		}
		src, dst := ip.Src.AsSlice(), ip.Dst.AsSlice()
		seg := header.TCP(p[ip.L4:ip.Len])
		got := seg.Checksum()
		seg.SetPartialChecksum(src, dst)
		if seg.Checksum() != got {
			t.Fatalf("partial packet %d: checksum field %#04x, the pseudo header's sum %#04x", i, got, seg.Checksum())
		}
		seg.CompleteChecksum()
		if !seg.ChecksumValid(src, dst) {
			t.Fatalf("partial packet %d: completed, its checksum does not hold", i)
		}
	}
}

// TestPlainBadChecksum: a plain segment whose checksum does not hold is
// dropped and counted before the engine sees it — split would otherwise
// acknowledge it early and send its bytes on under a checksum of its own —
// while the same segment intact is taken (and acknowledged).
func TestPlainBadChecksum(t *testing.T) {
	h := newHostileRig(t)
	h.warmUp()
	for _, i := range []int{7, 8} { // the plain flows, IPv4 and IPv6
		fl := &h.flows[i]
		seg := h.segment(i, engine.Wire, header.TCPAck|header.TCPPsh, nil, []byte("plain bytes"))
		bad := append([]byte(nil), seg...)
		bad[len(bad)-1] ^= 0x20
		before, out := h.g.Stats(), len(h.out)
		h.g.Process(engine.Wire, bad)
		if st := h.g.Stats(); st.BadChecksums != before.BadChecksums+1 || len(h.out) != out {
			t.Fatalf("flow %d: bad checksums %d → %d, %d packets out; want it counted and nothing sent", i, before.BadChecksums, st.BadChecksums, len(h.out)-out)
		}
		h.g.Process(engine.Wire, seg)
		fl.seqW += uint32(len("plain bytes"))
		h.clock.Advance(50 * time.Millisecond)
		if st := h.g.Stats(); st.BadChecksums != before.BadChecksums+1 || len(h.out) == out {
			t.Fatalf("flow %d: the intact segment was not taken (%d packets out)", i, len(h.out)-out)
		}
	}
}

// TestProcessReadChecked: a packet its reader vouched for (ProcessRead,
// checked) is not summed again — a plain segment whose checksum is off
// is taken, since the reader's word is that it holds — and what the
// gateway sends on as it came goes out the known way, relayed (IKE) or
// passed on by the engine (a plain UDP datagram and handshake); unvouched,
// the same packets take the other way and the bad segment is dropped.
// Inside IP-in-IP the word covers the tunnel's packet only: the segment
// it carries is verified either way.
func TestProcessReadChecked(t *testing.T) {
	h := newHostileRig(t)
	var known, other int
	h.g.out = func(engine.Side, []byte) { other++ }
	h.g.SetOutKnown(func(engine.Side, []byte) { known++ })
	h.warmUp()
	h.clock.Advance(time.Second)

	dgram := packettest.UDP(netip.MustParseAddrPort("10.1.0.9:53"), netip.MustParseAddrPort("10.2.0.9:5353"), []byte("answer"))
	syn := packettest.Segment(netip.MustParseAddrPort("10.1.0.10:5001"), netip.MustParseAddrPort("10.2.0.10:40000"), header.TCPSyn, 999, 0, 65535, nil, nil)
	ike := packettest.UDP(netip.MustParseAddrPort("10.1.0.12:500"), netip.MustParseAddrPort("10.2.0.12:500"), make([]byte, 40))
	for _, p := range [][]byte{dgram, syn, ike} {
		known, other = 0, 0
		h.g.ProcessRead(engine.Wire, append([]byte(nil), p...), false, true)
		if known != 1 || other != 0 {
			t.Fatalf("vouched: %d out the known way, %d the other; want 1, 0", known, other)
		}
		known, other = 0, 0
		h.g.ProcessRead(engine.Wire, append([]byte(nil), p...), false, false)
		if known != 0 || other != 1 {
			t.Fatalf("unvouched: %d out the known way, %d the other; want 0, 1", known, other)
		}
	}

	fl := &h.flows[7] // plain TCP
	seg := h.segment(7, engine.Wire, header.TCPAck|header.TCPPsh, nil, []byte("plain bytes"))
	seg[len(seg)-1] ^= 0x20
	before := h.g.Stats().BadChecksums
	h.g.ProcessRead(engine.Wire, append([]byte(nil), seg...), false, false)
	if h.g.Stats().BadChecksums != before+1 {
		t.Fatal("an unvouched segment whose checksum is off was not dropped")
	}
	known = 0
	h.g.ProcessRead(engine.Wire, append([]byte(nil), seg...), false, true)
	h.clock.Advance(50 * time.Millisecond)
	if h.g.Stats().BadChecksums != before+1 || known == 0 {
		t.Fatalf("a vouched segment was summed again (%d packets built after it)", known)
	}
	fl.seqW += uint32(len("plain bytes"))

	bad := packettest.Segment(netip.MustParseAddrPort("10.1.0.11:5001"), netip.MustParseAddrPort("10.2.0.11:40000"), header.TCPSyn, 999, 0, 65535, nil, nil)
	bad[len(bad)-1] ^= 0x20
	h.g.ProcessRead(engine.Wire, ipipWrap("198.51.100.5", "198.51.100.6", bad), false, true)
	if h.g.Stats().BadChecksums != before+2 {
		t.Fatal("a segment inside IP-in-IP was taken on the word of the tunnel's reader")
	}
}
