package offload

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
)

// seg is one TCP segment of a test batch.
type seg struct {
	flow    int // 0, 1: IPv4 flows; 2: IPv6
	seq     uint32
	id      uint16
	flags   uint8
	win     uint16
	payload int
}

var groFlows = []struct{ src, dst netip.AddrPort }{
	{netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")},
	{netip.MustParseAddrPort("10.0.0.1:5002"), netip.MustParseAddrPort("10.0.0.2:80")},
	{netip.MustParseAddrPort("[fd00::1]:5001"), netip.MustParseAddrPort("[fd00::2]:80")},
}

func (s seg) packet() []byte {
	f := groFlows[s.flow]
	payload := make([]byte, s.payload)
	for i := range payload {
		payload[i] = byte(int(s.seq) + i)
	}
	ts := []byte{header.TCPOptNop, header.TCPOptNop, header.TCPOptTimestamp, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	win := s.win
	if win == 0 {
		win = 500
	}
	p := packettest.Segment(f.src, f.dst, s.flags, s.seq, 77, win, ts, payload)
	if p[0]>>4 == 4 {
		header.IPv4(p).SetID(s.id)
		header.IPv4(p).UpdateChecksum()
	}
	return p
}

// dgram is one UDP datagram of a test batch (ESP in UDP, say).
type dgram struct {
	flow    int // as seg's
	id      uint16
	payload int
	fill    byte
	noSum   bool // sent without a checksum (zero; IPv4 only)
}

func (d dgram) packet() []byte {
	f := groFlows[d.flow]
	payload := make([]byte, d.payload)
	for i := range payload {
		payload[i] = d.fill + byte(i)
	}
	p := packettest.UDP(f.src, f.dst, payload)
	if p[0]>>4 == 4 {
		h := header.IPv4(p)
		h.SetID(d.id)
		h.UpdateChecksum()
		if d.noSum {
			header.UDP(p[header.IPv4MinLen:]).SetChecksum(0)
		}
	}
	return p
}

// batchOf lays packets out as a writer's batch: headroom, packet, room to
// grow.
func batchOf(pkts [][]byte, capacity int) [][]byte {
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		b := make([]byte, 16+len(p), max(capacity, 16+len(p)))
		copy(b[16:], p)
		bufs[i] = b
	}
	return bufs
}

// unwrite is what the kernel makes of what Coalesce says to write: each
// super-packet cut back into segments (SegmentInto does what the kernel's
// tcp_gso_segment does), each packet alone as it is.
func unwrite(t *testing.T, bufs [][]byte, out []int) [][]byte {
	t.Helper()
	var got [][]byte
	segs, sizes := make([][]byte, MaxSegments), make([]int, MaxSegments)
	for i := range segs {
		segs[i] = make([]byte, 65536)
	}
	for _, i := range out {
		h, err := ParseHdr(bufs[i][16-HdrLen:])
		if err != nil {
			t.Fatal(err)
		}
		pkt := bufs[i][16:]
		if h.GSOType == GSONone {
			q := append([]byte(nil), pkt...)
			switch {
			case h.Flags == NeedsCsum && h.HdrLen <= len(q):
				// A partial checksum, which the kernel completes.
				if err := CompleteChecksum(q, h.CsumStart, h.CsumOffset); err != nil {
					t.Fatal(err)
				}
			case h != (Hdr{}):
				t.Fatalf("a packet alone with header %+v", h)
			}
			got = append(got, q)
			continue
		}
		if h.Flags != NeedsCsum || h.CsumStart+h.CsumOffset+2 > len(pkt) || h.HdrLen > len(pkt) {
			t.Fatalf("super-packet header %+v", h)
		}
		n, err := SegmentInto(h, append([]byte(nil), pkt...), segs, 0, sizes)
		if err != nil {
			t.Fatalf("super-packet %d: %v", i, err)
		}
		for k := range n {
			got = append(got, append([]byte(nil), segs[k][:sizes[k]]...))
		}
	}
	return got
}

// flowKey names a packet's flow for ordering checks (addresses, ports).
func flowKey(p []byte) string {
	if ipLen, addrs, proto, ok := flowOf(p); ok {
		return fmt.Sprintf("%x/%x/%x", addrs, p[ipLen:ipLen+4], proto)
	}
	return "other"
}

// samePacket reports whether got is want as the receiver sees it: the
// same bytes, except that a UDP datagram over IPv4 sent without a
// checksum may come out of the segmentation with a valid one.
func samePacket(got, want []byte) bool {
	if bytes.Equal(got, want) {
		return true
	}
	if len(got) != len(want) || len(want) < header.IPv4MinLen+header.UDPLen || want[0] != 0x45 || want[9] != header.ProtoUDP {
		return false
	}
	u := header.UDP(want[header.IPv4MinLen:])
	if u.Checksum() != 0 || !bytes.Equal(got[:header.IPv4MinLen+6], want[:header.IPv4MinLen+6]) ||
		!bytes.Equal(got[header.IPv4MinLen+8:], want[header.IPv4MinLen+8:]) {
		return false
	}
	return header.UDP(got[header.IPv4MinLen:]).ChecksumValid(got[12:16], got[16:20])
}

// sameByFlow reports whether got is want with flows interleaved
// differently: within each flow, the same packets in the same order.
func sameByFlow(got, want [][]byte) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d packets out of %d", len(got), len(want))
	}
	by := func(ps [][]byte) map[string][][]byte {
		m := map[string][][]byte{}
		for _, p := range ps {
			m[flowKey(p)] = append(m[flowKey(p)], p)
		}
		return m
	}
	g, w := by(got), by(want)
	for k, ws := range w {
		gs := g[k]
		if len(gs) != len(ws) {
			return fmt.Errorf("flow %s: %d packets out of %d", k, len(gs), len(ws))
		}
		for i := range ws {
			if !samePacket(gs[i], ws[i]) {
				return fmt.Errorf("flow %s: packet %d differs", k, i)
			}
		}
	}
	return nil
}

// run coalesces segs and checks the round trip; it returns how many
// writes there were.
func runGRO(t *testing.T, c *Coalescer, pkts [][]byte, capacity int) int {
	t.Helper()
	return runGROSums(t, c, pkts, nil, capacity)
}

// runGROSums is runGRO with what stands in each packet's checksums: pkts
// are the packets as the receiver must get them, and those sums says are
// SumPartial (TCP segments) go into the batch with their TCP checksums
// left partial.
func runGROSums(t *testing.T, c *Coalescer, pkts [][]byte, sums []Sum, capacity int) int {
	t.Helper()
	in := pkts
	if sums != nil {
		in = make([][]byte, len(pkts))
		for i, p := range pkts {
			in[i] = p
			if i < len(sums) && sums[i] == SumPartial {
				in[i] = partialOf(p)
			}
		}
	}
	bufs := batchOf(in, capacity)
	out := c.CoalesceSums(bufs, sums, 16, nil)
	if err := sameByFlow(unwrite(t, bufs, out), pkts); err != nil {
		t.Fatal(err)
	}
	return len(out)
}

// partialOf is a copy of TCP segment p with its checksum left partial.
func partialOf(p []byte) []byte {
	q := append([]byte(nil), p...)
	ipLen, addrs, _, _ := flowOf(q)
	header.TCP(q[ipLen:]).SetPartialChecksum(addrs[:len(addrs)/2], addrs[len(addrs)/2:])
	return q
}

// TestCoalesce: a flow's contiguous segments become one write that the
// kernel's segmentation turns back into exactly those segments; what
// breaks a run — a gap, a pure ACK, a different window or identification,
// PSH, 64 KiB, a buffer without room — starts a new write, and flows
// interleaved in a batch each keep their order.
func TestCoalesce(t *testing.T) {
	run := func(n int, f func(i int) seg) [][]byte {
		var ps [][]byte
		for i := range n {
			ps = append(ps, f(i).packet())
		}
		return ps
	}
	contiguous := func(flow, n int) func(i int) seg {
		return func(i int) seg {
			return seg{flow: flow, seq: 1000 + uint32(i*1448), id: uint16(10 + i), flags: header.TCPAck, payload: 1448}
		}
	}
	for _, tc := range []struct {
		name   string
		pkts   [][]byte
		cap    int
		writes int
	}{
		{"one flow", run(10, contiguous(0, 10)), 65536, 1},
		{"ipv6", run(10, contiguous(2, 10)), 65536, 1},
		{"short last, psh", run(5, func(i int) seg {
			s := contiguous(0, 5)(i)
			if i == 4 {
				s.payload, s.flags = 100, header.TCPAck|header.TCPPsh
			}
			return s
		}), 65536, 1},
		{"psh in the middle", run(6, func(i int) seg {
			s := contiguous(0, 6)(i)
			if i == 2 {
				s.flags |= header.TCPPsh
			}
			return s
		}), 65536, 2},
		{"interleaved", run(12, func(i int) seg { return contiguous(i%3, 4)(i / 3) }), 65536, 3},
		{"gap", run(6, func(i int) seg {
			s := contiguous(0, 6)(i)
			if i >= 3 {
				s.seq += 1448
			}
			return s
		}), 65536, 2},
		{"pure ack between", run(6, func(i int) seg {
			s := contiguous(0, 6)(i)
			if i == 3 {
				s.payload = 0
			}
			return s
		}), 65536, 3},
		{"window changes", run(6, func(i int) seg {
			s := contiguous(0, 6)(i)
			if i >= 3 {
				s.win = 600
			}
			return s
		}), 65536, 2},
		{"id not counting", run(4, func(i int) seg {
			s := contiguous(0, 4)(i)
			s.id = 7
			return s
		}), 65536, 4},
		{"syn and fin alone", run(3, func(i int) seg {
			s := contiguous(0, 3)(i)
			s.flags = []uint8{header.TCPSyn, header.TCPAck | header.TCPFin, header.TCPAck | header.TCPRst}[i]
			return s
		}), 65536, 3},
		{"64 KiB", run(50, contiguous(0, 50)), 1 << 17, 2},
		{"no room", run(4, contiguous(0, 4)), 0, 4},
		{"a corrupted segment", func() [][]byte {
			ps := run(4, contiguous(0, 4))
			ps[2][len(ps[2])-1] ^= 0xff // its checksum no longer holds: written as it came
			return ps
		}(), 65536, 3},
		{"a bad ipv4 header checksum", func() [][]byte {
			ps := run(4, contiguous(0, 4))
			ps[1][10] ^= 0xff
			return ps
		}(), 65536, 3},
		{"longer than the first", run(3, func(i int) seg {
			s := contiguous(0, 3)(i)
			if i == 0 {
				s.payload = 1000
			}
			s.seq = 1000 + uint32(i*1000)
			return s
		}), 65536, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Coalescer
			if got := runGRO(t, &c, tc.pkts, tc.cap); got != tc.writes {
				t.Fatalf("%d writes, want %d", got, tc.writes)
			}
		})
	}
	// UDP without c.UDP, and too short to be anything: alone and
	// unharmed.
	var c Coalescer
	udp := func(i int) []byte { return dgram{id: uint16(i), payload: 100}.packet() }
	if got := runGRO(t, &c, [][]byte{udp(0), udp(1), {0x45, 0}}, 65536); got != 3 {
		t.Fatalf("%d writes of 3 packets that are not TCP", got)
	}
}

// TestCoalesceUDP: with Coalescer.UDP, a flow's datagrams of one size
// become one write (GSO_UDP_L4) that the kernel's segmentation turns back
// into those datagrams — one sent without a checksum gets one — and what
// breaks a run starts a new write: a longer datagram, an identification
// out of step, a bad checksum, the segment limit, another flow.
func TestCoalesceUDP(t *testing.T) {
	run := func(n int, f func(i int) dgram) [][]byte {
		var ps [][]byte
		for i := range n {
			ps = append(ps, f(i).packet())
		}
		return ps
	}
	esp := func(flow int) func(i int) dgram {
		return func(i int) dgram { return dgram{flow: flow, id: uint16(30 + i), payload: 1420, fill: byte(i)} }
	}
	for _, tc := range []struct {
		name   string
		pkts   [][]byte
		writes int
	}{
		{"one flow", run(10, esp(0)), 1},
		{"ipv6", run(10, esp(2)), 1},
		{"no checksum", run(6, func(i int) dgram { d := esp(0)(i); d.noSum = true; return d }), 1},
		{"short last", run(5, func(i int) dgram {
			d := esp(0)(i)
			if i == 4 {
				d.payload = 60
			}
			return d
		}), 1},
		{"short in the middle", run(6, func(i int) dgram {
			d := esp(0)(i)
			if i == 2 {
				d.payload = 60
			}
			return d
		}), 2},
		{"longer than the first", run(3, func(i int) dgram {
			d := esp(0)(i)
			if i == 0 {
				d.payload = 100
			}
			return d
		}), 2},
		{"id not counting", run(4, func(i int) dgram { d := esp(0)(i); d.id = 9; return d }), 4},
		{"interleaved", run(12, func(i int) dgram { return esp(i % 3)(i / 3) }), 3},
		{"a corrupted datagram", func() [][]byte {
			ps := run(4, esp(0))
			ps[2][len(ps[2])-1] ^= 0xff
			return ps
		}(), 3},
		{"segment limit", run(maxUDPSegs+5, func(i int) dgram { d := esp(0)(i); d.payload = 200; return d }), 2},
		{"tcp and udp between the same ports", func() [][]byte {
			ps := run(3, esp(0))
			tcp := seg{seq: 1, id: 33, flags: header.TCPAck, payload: 1420}.packet()
			return append(append(ps[:2:2], tcp), ps[2]) // two flows: the datagrams merge
		}(), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Coalescer{UDP: true}
			if got := runGRO(t, &c, tc.pkts, 65536); got != tc.writes {
				t.Fatalf("%d writes, want %d", got, tc.writes)
			}
		})
	}
	// The header a kernel reads.
	bufs := batchOf(run(3, esp(0)), 65536)
	c := Coalescer{UDP: true}
	out := c.Coalesce(bufs, 16, nil)
	want := []byte{NeedsCsum, GSOUDPL4, 28, 0, 0, 0, 20, 0, 6, 0}
	binary.LittleEndian.PutUint16(want[4:], 1420)
	if vh := bufs[out[0]][16-HdrLen : 16]; len(out) != 1 || !bytes.Equal(vh, want) {
		t.Fatalf("header % x, want % x", vh, want)
	}
}

// TestCoalesceZeroAllocs: a warmed-up Coalescer allocates nothing.
func TestCoalesceZeroAllocs(t *testing.T) {
	var pkts [][]byte
	for i := range 32 {
		pkts = append(pkts, seg{flow: i % 2, seq: 1000 + uint32(i/2*1448), id: uint16(i / 2), flags: header.TCPAck, payload: 1448}.packet())
	}
	bufs := batchOf(pkts, 65536)
	orig := make([][]byte, len(bufs))
	copy(orig, bufs)
	var c Coalescer
	out := make([]int, 0, len(bufs))
	c.Coalesce(bufs, 16, out)
	allocs := testing.AllocsPerRun(100, func() {
		for i, b := range orig { // undo the merge's growth
			bufs[i] = b[:16+len(pkts[i])]
			copy(bufs[i][16:], pkts[i])
		}
		out = c.Coalesce(bufs, 16, out[:0])
	})
	if allocs != 0 || len(out) != 2 {
		t.Fatalf("%v allocations, %d writes", allocs, len(out))
	}
}

// FuzzCoalesce: any batch — segments of three flows with the fuzzer's
// sequence numbers, sizes, flags, identifications and windows, some with
// a byte corrupted, some the writer's own (SumKnown) or left with a
// partial checksum (SumPartial), and raw bytes — is written so that the
// kernel's segmentation, and its completion of a partial checksum, gives
// back every packet exactly, each flow in its order: in particular a
// corrupted packet stays corrupted (its checksum is not made anew by
// merging it).
func FuzzCoalesce(f *testing.F) {
	f.Add([]byte{0, 0, 5, 0x10, 0, 0, 5, 0x10, 0, 0, 5, 0x10})
	f.Add([]byte{0, 0, 5, 0x10, 1, 0, 5, 0x10, 0, 0, 5, 0x18, 2, 0, 5, 0x10, 2, 0, 1, 0x10})
	f.Add([]byte{0, 0, 5, 0x10, 0, 1, 5, 0x10, 0, 0, 0, 0x10, 0, 0, 5, 0x11, 3, 0x45, 0, 0})
	f.Add([]byte{0, 0, 5, 0x10, 0x40, 0, 200, 0x10, 0, 0, 5, 0x10, 0x42, 0, 5, 0x10, 0x40, 0, 10, 0x10})
	f.Add([]byte{0x80, 0, 170, 0, 0x80, 0, 170, 0, 0x80, 0x80, 170, 0, 0x80, 0, 20, 0, 0x82, 0, 170, 0, 0x82, 0, 170, 0, 1})
	f.Add([]byte{0x80, 0, 170, 0, 0xc0, 0, 170, 9, 0x80, 1, 170, 0, 0x81, 0, 170, 0, 0x80, 0, 200, 0, 0x80, 0, 100, 0, 3})
	f.Add([]byte{0, 4, 5, 0x10, 0, 4, 5, 0x10, 0, 8, 5, 0x18, 1, 4, 0, 0x10, 2, 4, 5, 0x18, 2, 4, 5, 0x10})
	f.Fuzz(func(t *testing.T, b []byte) {
		var pkts [][]byte
		var sums [64]Sum
		next := [3]uint32{1000, 1000, 1000}
		ids := [3]uint16{}
		for len(b) >= 4 && len(pkts) < 64 {
			d := b[:4]
			b = b[4:]
			if d[0]%4 == 3 { // raw bytes
				pkts = append(pkts, append([]byte(nil), d[1:]...))
				continue
			}
			if d[0]&0x80 != 0 { // a datagram of the flow
				u := dgram{flow: int(d[0] % 3), payload: int(d[2]) * 8, fill: d[1], noSum: d[1]&0x80 != 0}
				u.id = ids[u.flow] + uint16(d[1]&1)
				ids[u.flow] = u.id + 1
				p := u.packet()
				if d[0]&0x40 != 0 {
					p[int(d[3])*len(p)/256] ^= 0x5a
				}
				pkts = append(pkts, p)
				continue
			}
			s := seg{flow: int(d[0] % 4), flags: d[3], payload: int(d[2]) * 100, win: 500 + uint16(d[0]>>4)}
			s.seq = next[s.flow] + uint32(d[1]>>4)*100
			s.id = ids[s.flow] + uint16(d[1]&3)
			next[s.flow], ids[s.flow] = s.seq+uint32(s.payload), s.id+1
			p := s.packet()
			switch {
			case d[0]&0x40 != 0: // corrupted on its way, as a relay may be handed it
				p[int(d[2])*len(p)/256] ^= 0x5a
			case d[1]&0x0c == 0x04: // one the writer built, its checksum left partial
				sums[len(pkts)] = SumPartial
			case d[1]&0x0c == 0x08: // one the writer built whole
				sums[len(pkts)] = SumKnown
			}
			pkts = append(pkts, p)
		}
		c := Coalescer{UDP: len(b) > 0 && b[0]&1 != 0}
		runGROSums(t, &c, pkts, sums[:len(pkts)], 65536)
	})
}

// The header must name what a kernel reads: flags, type, then the
// little-endian lengths.
func TestCoalesceHeader(t *testing.T) {
	var pkts [][]byte
	for i := range 3 {
		pkts = append(pkts, seg{seq: 1 + uint32(i*1448), id: uint16(i), flags: header.TCPAck, payload: 1448}.packet())
	}
	bufs := batchOf(pkts, 65536)
	var c Coalescer
	out := c.Coalesce(bufs, 16, nil)
	vh := bufs[out[0]][16-HdrLen : 16]
	want := []byte{NeedsCsum, GSOTCPv4, 0, 0, 0, 0, 20, 0, 16, 0}
	binary.LittleEndian.PutUint16(want[2:], 20+32)
	binary.LittleEndian.PutUint16(want[4:], 1448)
	if len(out) != 1 || !bytes.Equal(vh, want) {
		t.Fatalf("header % x, want % x", vh, want)
	}
	if ip := header.IPv4(bufs[out[0]][16:]); ip.TotalLen() != 20+32+3*1448 || !ip.ChecksumValid() {
		t.Fatalf("super-packet length %d, checksum valid %v", ip.TotalLen(), ip.ChecksumValid())
	}
}

// TestCoalesceKnown: a packet the writer says it made (SumKnown) is
// merged without its checksum being summed — so even one whose checksum
// does not hold is merged, the writer answering for it — while the same
// packet as it came is written alone, as Coalesce does.
func TestCoalesceKnown(t *testing.T) {
	batch := func() [][]byte {
		var ps [][]byte
		for i := range 4 {
			ps = append(ps, seg{seq: 1000 + uint32(i*1000), id: uint16(i), flags: header.TCPAck, payload: 1000}.packet())
		}
		ps[0][len(ps[0])-1] ^= 0xff // the first's checksum no longer holds
		ps[2][len(ps[2])-1] ^= 0xff // nor the third's
		return ps
	}
	for _, c := range []struct {
		name   string
		sums   []Sum
		writes int
	}{
		{"none known", nil, 4}, // nothing merges: with the first, the third, or into either
		{"all known", []Sum{SumKnown, SumKnown, SumKnown, SumKnown}, 1},
		{"the bad ones known", []Sum{SumKnown, SumAsCame, SumKnown, SumAsCame}, 1},
		{"the bad ones partial", []Sum{SumPartial, SumAsCame, SumPartial, SumAsCame}, 1},
		{"the first not known", []Sum{SumAsCame, SumKnown, SumKnown, SumKnown}, 2}, // it alone, the rest merged
		{"the third not known", []Sum{SumKnown, SumKnown, SumAsCame, SumKnown}, 3}, // 1+2, then 3 and 4 alone: 4 would merge into 3
	} {
		t.Run(c.name, func(t *testing.T) {
			var co Coalescer
			bufs := batchOf(batch(), 65536)
			out := co.CoalesceSums(bufs, c.sums, 16, nil)
			if len(out) != c.writes {
				t.Fatalf("%d writes, want %d", len(out), c.writes)
			}
		})
	}
}

// TestCoalescePartial: segments whose TCP checksums the writer left
// partial (SumPartial) — a flow's run, one with PSH in its middle, pure
// ACKs, IPv6, a segment with a different window — come out of the
// kernel's side (segmentation, or NEEDS_CSUM completed for a packet
// alone) as the same segments made whole: merged ones as before, and
// each one alone with a header that asks for its TCP checksum at the
// right place.
func TestCoalescePartial(t *testing.T) {
	var want [][]byte
	for i := range 6 {
		s := seg{seq: 1000 + uint32(i*1448), id: uint16(i), flags: header.TCPAck, payload: 1448}
		if i == 2 {
			s.flags |= header.TCPPsh
		}
		want = append(want, s.packet())
	}
	want = append(want,
		seg{flow: 1, seq: 5, id: 9, flags: header.TCPAck}.packet(),                      // a pure ACK
		seg{flow: 2, seq: 7, flags: header.TCPAck, payload: 1000}.packet(),              // IPv6, alone
		seg{flow: 1, seq: 5, id: 10, flags: header.TCPAck, win: 9, payload: 3}.packet(), // alone after the ACK
	)
	pkts := make([][]byte, len(want))
	sums := make([]Sum, len(want))
	for i, w := range want {
		pkts[i], sums[i] = partialOf(w), SumPartial
	}
	var co Coalescer
	bufs := batchOf(pkts, 65536)
	out := co.CoalesceSums(bufs, sums, 16, nil)
	if len(out) != 5 { // 0–2 (PSH ends it), 3–5, and the three alone
		t.Fatalf("%d writes, want 5", len(out))
	}
	for _, i := range out {
		h, err := ParseHdr(bufs[i][16-HdrLen:])
		if err != nil {
			t.Fatal(err)
		}
		l4, _, _, _ := flowOf(bufs[i][16:])
		if h.GSOType == GSONone && (h.Flags != NeedsCsum || h.CsumStart != l4 || h.CsumOffset != 16 || h.HdrLen != l4+32) {
			t.Fatalf("a partial packet alone with header %+v", h)
		}
	}
	if err := sameByFlow(unwrite(t, bufs, out), want); err != nil {
		t.Fatal(err)
	}
}
