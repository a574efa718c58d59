package engine

import (
	"encoding/binary"
	"net/netip"
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
	e, err := New(o.cfg, func(to Side, pkt []byte, m Emitted) {
		c := append([]byte(nil), pkt...)
		if want := o.cfg.PartialChecksums && m.Origin == Built; m.Partial != want {
			t.Fatalf("a packet toward %v (origin %v) says Partial %v, want %v", to, m.Origin, m.Partial, want)
		}
		if m.Partial {
			// What a device would do with VIRTIO_NET_HDR_F_NEEDS_CSUM.
			header.CompleteTCPIn(c)
		}
		h.check(to, c)
		h.out = append(h.out, sent{to, c})
	})
	if err != nil {
		t.Fatal(err)
	}
	h.e = e
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

func sumN(ps []pkt) int {
	n := 0
	for _, p := range ps {
		n += p.n
	}
	return n
}

var debugSh = false

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
