package gateway

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// FuzzGatewayHostile drives a gateway that holds every kind of SA —
// AES-GCM in a tunnel (raw, in UDP 4500, over IPv6), AES-CBC + HMAC in
// transport mode, an AH + ESP bundle, a read-class SA — and takes plain
// TCP too, with packets built valid and then given one field wrong: the
// fuzzer picks the template, the side, the layer (inside before sealing,
// or outside after), the byte and its value, and what is cut or added at
// the end; IP-in-IP around any of them, nested. Before the hostile packet
// each protected flow has carried data the gateway acknowledged early,
// marked with a secret. Whatever comes, nothing panics, and no packet the
// gateway sends shows a secret of an ESP-protected flow in the clear —
// unless it is a packet the fuzzer itself sent.
func FuzzGatewayHostile(f *testing.F) {
	for kind := range uint8(hostileKinds) {
		for _, where := range []uint8{0, 1, 2} {
			f.Add(kind, where, uint16(0), uint8(0xff), []byte{}, true, uint8(1))
			f.Add(kind, where, uint16(9), uint8(6), []byte{0, 1}, false, uint8(2))
			f.Add(kind, where, uint16(33), uint8(0x50), []byte("x"), true, uint8(0))
		}
	}
	f.Fuzz(func(t *testing.T, kind, where uint8, field uint16, value uint8, extra []byte, fromWire bool, nest uint8) {
		if len(extra) > 2048 {
			return
		}
		h := newHostileRig(t)
		h.warmUp()
		side := engine.Radio
		if fromWire {
			side = engine.Wire
		}
		p := h.build(kind%hostileKinds, side, where%3, int(field), value, extra, nest%4)
		h.sent = append(h.sent, append([]byte(nil), p...))
		for range 3 {
			h.g.Process(side, append([]byte(nil), p...))
			h.clock.Advance(30 * time.Millisecond)
		}
		h.clock.Advance(10 * time.Second)
		if err := h.check(); err != nil {
			t.Fatal(err)
		}
	})
}

// secrets mark the bytes of the ESP-protected flows; they never leave in
// the clear.
var espSecret = []byte("espep-secret-bytes!")

const hostileKinds = 9

// hostileRig is a gateway with one flow per kind of protection, each
// established and carrying data.
type hostileRig struct {
	g     *Gateway
	clock *netem.SimClock
	out   [][]byte
	sent  [][]byte
	flows []hostileFlow
}

// hostileFlow is one protected (or plain) flow: its SAs each way (nil:
// plain), the outer form, and its endpoints.
type hostileFlow struct {
	wire, radio netip.AddrPort
	ab, ba      []*ipsec.SA // innermost first
	secret      bool        // its bytes are ESP-encrypted
	read        bool
	ipip        bool
	seqW, seqR  uint32
}

func fixedKey(n int, seed byte) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = seed + byte(i)*13
	}
	return k
}

func newHostileRig(t *testing.T) *hostileRig {
	h := &hostileRig{clock: netem.NewSimClock(time.Unix(1e9, 0))}
	sad := &ipsec.SAD{}
	add := func(c ipsec.Config) *ipsec.SA {
		e, err := ipsec.NewEntry(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := sad.Add(e); err != nil {
			t.Fatal(err)
		}
		if c.Class != ipsec.ClassWrite {
			c.Class, c.IntegKey = ipsec.ClassWrite, fixedKey(32, byte(c.SPI)+1) // the endpoint's own SA holds every key
		}
		sa, err := ipsec.New(c)
		if err != nil {
			t.Fatal(err)
		}
		if c.Enc.AEAD() || c.Enc == ipsec.EncAESCTR {
			sa.SetIVSource(seqivIV{uint64(c.SPI) * 0x9e3779b97f4a7c15})
		}
		return sa
	}
	esp := func(spi uint32, src, dst string, mode ipsec.Mode, enc ipsec.Enc, udp bool, class ipsec.Class) ipsec.Config {
		c := ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Mode: mode,
			Enc: enc, ReplayWindow: 64, Class: class}
		switch enc {
		case ipsec.EncAESGCM16:
			c.EncKey = fixedKey(20, byte(spi))
		case ipsec.EncAESCBC:
			c.EncKey = fixedKey(16, byte(spi))
			c.Integ, c.IntegKey = ipsec.IntegSHA256_128, fixedKey(32, byte(spi)+1)
			if class == ipsec.ClassRead {
				c.IntegKey = nil
			}
		}
		if udp {
			c.EncapSrcPort, c.EncapDstPort = 4500, 4500
		}
		return c
	}
	ah := func(spi uint32, src, dst string) ipsec.Config {
		return ipsec.Config{SPI: spi, Proto: ipsec.AH, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Mode: ipsec.Transport,
			Integ: ipsec.IntegSHA256_128, IntegKey: fixedKey(32, byte(spi)), ReplayWindow: 64, Class: ipsec.ClassWrite}
	}
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	// 0: GCM tunnel; 1: GCM tunnel in UDP; 2: GCM tunnel over IPv6, IPv6
	// inside; 3: CBC transport; 4: AH + ESP transport bundle; 5: read
	// class; 6: GCM tunnel inside IP-in-IP; 7: plain TCP; 8: plain IPv6.
	h.flows = []hostileFlow{
		{wire: ap("10.1.0.1:5001"), radio: ap("10.2.0.1:40000"), secret: true,
			ab: []*ipsec.SA{add(esp(0x1001, "192.0.2.1", "192.0.2.2", ipsec.Tunnel, ipsec.EncAESGCM16, false, ipsec.ClassWrite))},
			ba: []*ipsec.SA{add(esp(0x2001, "192.0.2.2", "192.0.2.1", ipsec.Tunnel, ipsec.EncAESGCM16, false, ipsec.ClassWrite))}},
		{wire: ap("10.1.0.2:5001"), radio: ap("10.2.0.2:40000"), secret: true,
			ab: []*ipsec.SA{add(esp(0x1002, "192.0.2.11", "192.0.2.12", ipsec.Tunnel, ipsec.EncAESGCM16, true, ipsec.ClassWrite))},
			ba: []*ipsec.SA{add(esp(0x2002, "192.0.2.12", "192.0.2.11", ipsec.Tunnel, ipsec.EncAESGCM16, true, ipsec.ClassWrite))}},
		{wire: ap("[fd01::1]:5001"), radio: ap("[fd02::1]:40000"), secret: true,
			ab: []*ipsec.SA{add(esp(0x1003, "2001:db8::1", "2001:db8::2", ipsec.Tunnel, ipsec.EncAESGCM16, false, ipsec.ClassWrite))},
			ba: []*ipsec.SA{add(esp(0x2003, "2001:db8::2", "2001:db8::1", ipsec.Tunnel, ipsec.EncAESGCM16, false, ipsec.ClassWrite))}},
		{wire: ap("10.1.0.4:5001"), radio: ap("10.2.0.4:40000"), secret: true,
			ab: []*ipsec.SA{add(esp(0x1004, "10.1.0.4", "10.2.0.4", ipsec.Transport, ipsec.EncAESCBC, false, ipsec.ClassWrite))},
			ba: []*ipsec.SA{add(esp(0x2004, "10.2.0.4", "10.1.0.4", ipsec.Transport, ipsec.EncAESCBC, false, ipsec.ClassWrite))}},
		{wire: ap("10.1.0.5:5001"), radio: ap("10.2.0.5:40000"), secret: true,
			ab: []*ipsec.SA{add(esp(0x1005, "10.1.0.5", "10.2.0.5", ipsec.Transport, ipsec.EncAESCBC, false, ipsec.ClassWrite)), add(ah(0x3005, "10.1.0.5", "10.2.0.5"))},
			ba: []*ipsec.SA{add(esp(0x2005, "10.2.0.5", "10.1.0.5", ipsec.Transport, ipsec.EncAESCBC, false, ipsec.ClassWrite)), add(ah(0x4005, "10.2.0.5", "10.1.0.5"))}},
		{wire: ap("10.1.0.6:5001"), radio: ap("10.2.0.6:40000"), secret: true, read: true,
			ab: []*ipsec.SA{add(esp(0x1006, "192.0.2.31", "192.0.2.32", ipsec.Tunnel, ipsec.EncAESCBC, false, ipsec.ClassRead))},
			ba: []*ipsec.SA{add(esp(0x2006, "192.0.2.32", "192.0.2.31", ipsec.Tunnel, ipsec.EncAESCBC, false, ipsec.ClassRead))}},
		{wire: ap("10.1.0.7:5001"), radio: ap("10.2.0.7:40000"), secret: true, ipip: true,
			ab: []*ipsec.SA{add(esp(0x1007, "192.0.2.41", "192.0.2.42", ipsec.Tunnel, ipsec.EncAESGCM16, false, ipsec.ClassWrite))},
			ba: []*ipsec.SA{add(esp(0x2007, "192.0.2.42", "192.0.2.41", ipsec.Tunnel, ipsec.EncAESGCM16, false, ipsec.ClassWrite))}},
		{wire: ap("10.1.0.8:5001"), radio: ap("10.2.0.8:40000")},
		{wire: ap("[fd01::8]:5001"), radio: ap("[fd02::8]:40000")},
	}
	var err error
	h.g, err = New(Config{Engine: engine.Config{Mode: engine.ModeSplit, Clock: h.clock, MaxFlows: 64, BufferPerFlow: 64 << 10, BufferTotal: 1 << 20},
		Plain: true, State: statedir.Memory(), Log: quietLog()}, sad, func(_ engine.Side, p []byte) { h.out = append(h.out, append([]byte(nil), p...)) })
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// wrap seals an inner packet of flow i from side from, innermost SA
// first, and puts it in IP-in-IP if the flow's packets go in it.
func (h *hostileRig) wrap(i int, from engine.Side, inner []byte) []byte {
	fl := &h.flows[i]
	sas := fl.ab
	if from == engine.Radio {
		sas = fl.ba
	}
	p := inner
	for _, sa := range sas {
		if p = seal(sa, p); p == nil {
			return inner
		}
	}
	if fl.ipip {
		src, dst := "198.51.100.1", "198.51.100.2"
		if from == engine.Radio {
			src, dst = dst, src
		}
		p = ipipWrap(src, dst, p)
	}
	return p
}

// segment is flow i's TCP segment from side from.
func (h *hostileRig) segment(i int, from engine.Side, flags uint8, opts, payload []byte) []byte {
	fl := &h.flows[i]
	if from == engine.Wire {
		return packettest.Segment(fl.wire, fl.radio, flags, fl.seqW, fl.seqR, 65535, opts, payload)
	}
	return packettest.Segment(fl.radio, fl.wire, flags, fl.seqR, fl.seqW, 65535, opts, payload)
}

// warmUp opens every flow (handshake end to end) and has the wire host
// send secret-marked data the gateway acknowledges early, and the radio
// host acknowledge part of it — enough verified packets on every SA to
// confirm its IV salt.
func (h *hostileRig) warmUp() {
	syn := []byte{header.TCPOptMSS, 4, 0x05, 0xb4, header.TCPOptSACKPerm, 2}
	data := bytes.Repeat(espSecret, 50)
	for i := range h.flows {
		fl := &h.flows[i]
		fl.seqW, fl.seqR = 1000, 9000
		send := func(from engine.Side, p []byte) {
			w := h.wrap(i, from, p)
			h.sent = append(h.sent, w)
			h.g.Process(from, w)
		}
		send(engine.Wire, packettest.Segment(fl.wire, fl.radio, header.TCPSyn, fl.seqW-1, 0, 65535, syn, nil))
		send(engine.Radio, packettest.Segment(fl.radio, fl.wire, header.TCPSyn|header.TCPAck, fl.seqR-1, fl.seqW, 65535, syn, nil))
		send(engine.Wire, h.segment(i, engine.Wire, header.TCPAck, nil, nil))
		for range 3 {
			send(engine.Wire, h.segment(i, engine.Wire, header.TCPAck|header.TCPPsh, nil, data))
			fl.seqW += uint32(len(data))
			send(engine.Radio, h.segment(i, engine.Radio, header.TCPAck, nil, nil))
		}
		h.clock.Advance(50 * time.Millisecond)
	}
}

// build makes the hostile packet: flow kind's template from side, with
// field set to value inside before sealing (where 0), outside after (1),
// or both (2); extra appended; nested in nest more IP-in-IP headers.
func (h *hostileRig) build(kind uint8, side engine.Side, where uint8, field int, value uint8, extra []byte, nest uint8) []byte {
	i := int(kind)
	opts := []byte{header.TCPOptSACK, 10, 0, 0, 3, 0xe8, 0, 0, 7, 0xd0, header.TCPOptTimestamp, 10, 1, 2, 3, 4, 5, 6, 7, 8}
	inner := h.segment(i, side, header.TCPAck|header.TCPPsh, opts, espSecret)
	if where != 1 && len(inner) > 0 {
		inner[field%len(inner)] = value
		fixTCPChecksum(inner)
	}
	p := inner
	if h.flows[i].ab != nil {
		p = h.wrap(i, side, inner)
	}
	if where != 0 && len(p) > 0 {
		p[(field/7)%len(p)] ^= value | 1
	}
	p = append(p, extra...)
	for range nest {
		src, dst := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")
		n := make([]byte, 20+len(p))
		header.WriteIPv4(n, 0, len(n), 9, false, 64, header.ProtoIPIP, src, dst)
		copy(n[20:], p)
		p = n
	}
	return p
}

// fixTCPChecksum redoes the TCP checksum of a packet if it still parses,
// so that the field the fuzzer changed is what is wrong, not the sum.
func fixTCPChecksum(p []byte) {
	if len(p) == 0 {
		return
	}
	switch p[0] >> 4 {
	case 4:
		ip, err := header.ParseIPv4(p)
		if err != nil || ip.Protocol() != header.ProtoTCP || len(ip.Payload()) < header.TCPMinLen {
			return
		}
		header.TCP(ip.Payload()).UpdateChecksum(ip.SrcBytes(), ip.DstBytes())
	case 6:
		ip, err := header.ParseIPv6(p)
		if err != nil || ip.NextHeader() != header.ProtoTCP || len(ip) < header.IPv6Len+header.TCPMinLen {
			return
		}
		header.TCP(ip[header.IPv6Len:]).UpdateChecksum(ip.SrcBytes(), ip.DstBytes())
	}
}

// check reports a packet the gateway sent that shows an ESP flow's secret
// in the clear, other than one the rig itself sent.
func (h *hostileRig) check() error {
	sent := map[string]bool{}
	for _, p := range h.sent {
		sent[string(p)] = true
	}
	for _, p := range h.out {
		if !bytes.Contains(p, espSecret[:12]) || sent[string(p)] {
			continue
		}
		// Only the plain flows' bytes may be in the clear (the AH here
		// always wraps ESP). Find which flow the packet belongs to.
		q := p
		var ip header.Parsed
		ok := header.Parse(q, &ip) == nil
		for ok {
			in, _, tunnel := peelIPIP(q, &ip)
			if !tunnel {
				break
			}
			q = in
			ok = header.Parse(q, &ip) == nil
		}
		if r := routeOf(&ip); ok {
			if r.src.Addr() == h.flows[7].wire.Addr() || r.dst.Addr() == h.flows[7].wire.Addr() ||
				r.src.Addr() == h.flows[8].wire.Addr() || r.dst.Addr() == h.flows[8].wire.Addr() {
				continue // the plain flows
			}
		}
		return fmt.Errorf("an ESP-protected flow's bytes left in the clear: %x", p)
	}
	return nil
}

// TestHostileRig: the fuzz target's rig works — every protected flow is
// split (bytes acknowledged early) and sealed on, the read-class flow is
// snooped — so that its check is not vacuous; and the check catches a
// secret in the clear.
func TestHostileRig(t *testing.T) {
	h := newHostileRig(t)
	h.warmUp()
	h.clock.Advance(time.Second)
	st := h.g.Stats()
	split := 0
	for _, f := range h.g.Engine().Flows() {
		if f.Split && f.Down.EarlyAcked > 0 {
			split++
		}
	}
	if split != 8 || st.Sealed < 30 || st.ClassRead == 0 || st.IPIP == 0 || st.NonceDowngrades+st.ICVFailures+st.SealErrors != 0 {
		t.Fatalf("%d flows split; %+v", split, st)
	}
	if err := h.check(); err != nil {
		t.Fatal(err)
	}
	h.out = append(h.out, h.segment(0, engine.Wire, header.TCPAck, nil, espSecret))
	if h.check() == nil {
		t.Fatal("the check missed a secret in the clear")
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
