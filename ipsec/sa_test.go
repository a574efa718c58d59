package ipsec

import (
	"bytes"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/ipsec/header"
)

func sealOne(t *testing.T, sa *SA, pkt []byte) []byte {
	t.Helper()
	buf, off := inBuf(pkt)
	out, err := sa.Seal(buf, off, len(pkt))
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), out...)
}

// TestClassRead: a read SA decrypts into another buffer without touching
// the ciphertext, holds no integrity key, and cannot exist for AEADs.
func TestClassRead(t *testing.T) {
	for _, s := range []suite{suites[4], suites[8], suites[10], suites[11]} { // CBC, CTR, NULL, AH
		for _, mode := range []Mode{Transport, Tunnel} {
			c := s.config(mode, s.proto == ESP, false, false)
			w := mustSA(t, c)
			pkt := tcpPacket(v4a, v4b, []byte("read me"))
			wire := sealOne(t, w, pkt)
			orig := append([]byte(nil), wire...)

			rc := c
			rc.Class, rc.IntegKey = ClassRead, nil
			r, err := NewReader(rc)
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			dst := make([]byte, 0, 2048)
			got, err := r.Decrypt(dst, wire)
			if err != nil {
				t.Fatalf("%s %v: decrypt: %v", s.name, mode, err)
			}
			eq(t, s.name+" decrypted", got, pkt)
			eq(t, s.name+" ciphertext untouched", wire, orig)

			withKey := c
			withKey.Class = ClassRead
			if _, err := NewReader(withKey); err == nil {
				t.Errorf("%s: read SA accepted an integrity key", s.name)
			}
			if _, err := New(rc); err == nil {
				t.Errorf("%s: New made a write SA from class read", s.name)
			}
		}
	}
	for _, s := range suites[:4] {
		c := s.config(Tunnel, false, false, false)
		c.Class = ClassRead
		if _, err := NewReader(c); !errors.Is(err, ErrReadAEAD) {
			t.Errorf("%s: read class for an AEAD: %v, want ErrReadAEAD", s.name, err)
		}
	}
}

func TestClassNoneEntry(t *testing.T) {
	c := suites[0].config(Tunnel, false, false, false)
	c.Class = ClassNone
	e, err := NewEntry(c)
	if err != nil {
		t.Fatal(err)
	}
	if e.Write != nil || e.Read != nil || e.Config.EncKey != nil || e.Class() != ClassNone {
		t.Fatalf("none-class entry holds an SA or a key: %+v", e)
	}
}

// TestEntryKeyed: an entry gives its keys back (a copy: wiping it leaves
// the entry's), a read entry no integrity key, a none entry nothing; after
// Wipe, nothing.
func TestEntryKeyed(t *testing.T) {
	c := suites[4].config(Tunnel, false, false, false) // AES-CBC + HMAC
	e, err := NewEntry(c.CloneKeys())
	if err != nil {
		t.Fatal(err)
	}
	k, ok := e.Keyed()
	if !ok || !bytes.Equal(k.EncKey, c.EncKey) || !bytes.Equal(k.IntegKey, c.IntegKey) || KeyIDOf(&k) != e.KeyID {
		t.Fatalf("keyed %v: %+v", ok, k)
	}
	k.WipeKeys()
	if k2, _ := e.Keyed(); !bytes.Equal(k2.EncKey, c.EncKey) {
		t.Fatal("wiping the copy wiped the entry's keys")
	}
	e.Wipe()
	if _, ok := e.Keyed(); ok {
		t.Fatal("keys given after Wipe")
	}
	rc := c.CloneKeys()
	rc.Class, rc.IntegKey = ClassRead, nil
	r, err := NewEntry(rc)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := r.Keyed(); !ok || k.IntegKey != nil || !bytes.Equal(k.EncKey, c.EncKey) || k.Class != ClassRead {
		t.Fatalf("read entry keyed %v: %+v", ok, k)
	}
	nc := c.CloneKeys()
	nc.Class = ClassNone
	if n, err := NewEntry(nc); err != nil {
		t.Fatal(err)
	} else if _, ok := n.Keyed(); ok {
		t.Fatal("a none entry gave keys")
	}
}

func TestWriteSAKeepsNoKeyCopy(t *testing.T) {
	c := suites[4].config(Tunnel, false, false, false)
	sa := mustSA(t, c)
	if k := sa.Config(); k.EncKey != nil || k.IntegKey != nil {
		t.Fatal("Config() exposes keys")
	}
	sa.Wipe()
	pkt := tcpPacket(v4a, v4b, nil)
	buf, off := inBuf(pkt)
	if _, err := sa.Seal(buf, off, len(pkt)); err == nil {
		t.Fatal("seal after wipe")
	}
}

func TestSeqOverflow(t *testing.T) {
	for _, esn := range []bool{false, true} {
		c := suites[0].config(Tunnel, false, false, esn)
		sa := mustSA(t, c)
		last := uint64(1<<32 - 1)
		if esn {
			last = ^uint64(0)
		}
		sa.SetOutSeq(last - 1)
		pkt := tcpPacket(v4a, v4b, nil)
		buf, off := inBuf(pkt)
		if _, err := sa.Seal(buf, off, len(pkt)); err != nil {
			t.Fatalf("esn=%v: last number: %v", esn, err)
		}
		buf, off = inBuf(pkt)
		if _, err := sa.Seal(buf, off, len(pkt)); !errors.Is(err, ErrSeqOverflow) {
			t.Fatalf("esn=%v: past the last number: %v (must never cycle)", esn, err)
		}
	}
}

func TestLifetimes(t *testing.T) {
	now := time.Unix(1000, 0)
	c := suites[0].config(Tunnel, false, false, false)
	c.Lifetime = Lifetime{SoftBytes: 100, HardBytes: 250, SoftTime: time.Minute, HardTime: time.Hour}
	c.Clock = func() time.Time { return now }
	sa := mustSA(t, c)
	pkt := tcpPacket(v4a, v4b, make([]byte, 40)) // 80 bytes protected per packet in tunnel mode
	seal := func() error {
		buf, off := inBuf(pkt)
		_, err := sa.Seal(buf, off, len(pkt))
		return err
	}
	if err := seal(); err != nil || sa.SoftExpired() {
		t.Fatalf("first packet: %v soft=%v", err, sa.SoftExpired())
	}
	seal()
	if !sa.SoftExpired() || sa.HardExpired() {
		t.Fatal("soft byte limit not reported")
	}
	seal()
	if err := seal(); !errors.Is(err, ErrHardExpired) {
		t.Fatalf("past hard byte limit: %v", err)
	}
	c.Lifetime = Lifetime{SoftTime: time.Minute, HardTime: time.Hour}
	sa = mustSA(t, c)
	now = now.Add(2 * time.Minute)
	if !sa.SoftExpired() || sa.HardExpired() {
		t.Fatal("soft time limit")
	}
	now = now.Add(time.Hour)
	if err := seal(); !errors.Is(err, ErrHardExpired) {
		t.Fatalf("past hard time: %v", err)
	}
}

func TestPMTU(t *testing.T) {
	c := suites[4].config(Tunnel, true, false, false)
	c.PMTU = 1400
	sa := mustSA(t, c)
	ok := tcpPacket(v4a, v4b, make([]byte, 1400-sa.MaxOverhead()-40))
	buf, off := inBuf(ok)
	if out, err := sa.Seal(buf, off, len(ok)); err != nil || len(out) > 1400 {
		t.Fatalf("fits: %v %d", err, len(out))
	}
	big := tcpPacket(v4a, v4b, make([]byte, 1400))
	buf, off = inBuf(big)
	var tb *TooBigError
	if _, err := sa.Seal(buf, off, len(big)); !errors.As(err, &tb) || tb.MTU < 1400-sa.MaxOverhead() || tb.MTU > 1400 {
		t.Fatalf("too big: %v", err)
	}
}

func TestNoRoom(t *testing.T) {
	sa := mustSA(t, suites[0].config(Tunnel, false, false, false))
	pkt := tcpPacket(v4a, v4b, nil)
	if _, err := sa.Seal(pkt, 0, len(pkt)); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("no headroom: %v", err)
	}
	buf := make([]byte, MaxHeadroom+len(pkt)) // no tailroom
	copy(buf[MaxHeadroom:], pkt)
	if _, err := sa.Seal(buf, MaxHeadroom, len(pkt)); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("no tailroom: %v", err)
	}
}

// TestAHMutableFields changes what routers may change (TTL, TOS, DF;
// hop limit, flow label; a mutable IPv6 option) and what they may not.
func TestAHMutableFields(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		c := suites[11].config(Transport, false, v6, false)
		tx, rx := mustSA(t, c), mustSA(t, c)
		src, dst := v4a, v4b
		if v6 {
			src, dst = v6a, v6b
		}
		pkt := tcpPacket(src, dst, []byte("authenticated"))
		if v6 {
			pkt = withHopByHop(pkt)
		}
		wire := sealOne(t, tx, pkt)
		if v6 {
			if wire[6] != header.ProtoHopByHop || wire[40] != header.ProtoAH {
				t.Fatalf("AH not after the hop-by-hop header: %x", wire[:48])
			}
			wire[1] |= 0x0f   // flow label
			wire[7]--         // hop limit
			wire[40+2+2] ^= 1 // data of the mutable option
		} else {
			wire[8]--       // TTL
			wire[1] = 0xb8  // DSCP
			wire[6] |= 0x40 // DF
			header.IPv4(wire).UpdateChecksum()
		}
		got, err := rx.Open(append([]byte(nil), wire...))
		if err != nil {
			t.Fatalf("v6=%v: in-transit changes broke the ICV: %v", v6, err)
		}
		if !bytes.Contains(got, []byte("authenticated")) {
			t.Fatal("payload lost")
		}
		// An immutable field: the destination address.
		bad := append([]byte(nil), wire...)
		if v6 {
			bad[39] ^= 1
		} else {
			bad[19] ^= 1
			header.IPv4(bad).UpdateChecksum()
		}
		c2 := c
		c2.Dst = netip.Addr{} // match whatever the packet says
		rx2 := mustSA(t, c2)
		if _, err := rx2.Open(bad); !errors.Is(err, ErrICV) {
			t.Fatalf("v6=%v: changed destination: %v, want ErrICV", v6, err)
		}
	}
}

// withHopByHop inserts a hop-by-hop header with one mutable option
// (type 0x3e: "may change en route" bit set) into an IPv6 packet.
func withHopByHop(p []byte) []byte {
	hbh := []byte{p[6], 0, 0x3e, 4, 1, 2, 3, 4}
	out := append(append(append([]byte(nil), p[:40]...), hbh...), p[40:]...)
	out[6] = header.ProtoHopByHop
	header.IPv6(out).SetPayloadLen(len(out) - 40)
	return out
}

func TestESPTransportIPv6ExtensionHeaders(t *testing.T) {
	c := suites[0].config(Transport, false, true, false)
	tx, rx := mustSA(t, c), mustSA(t, c)
	pkt := withHopByHop(tcpPacket(v6a, v6b, []byte("ext")))
	wire := sealOne(t, tx, pkt)
	if wire[6] != header.ProtoHopByHop || wire[40] != header.ProtoESP {
		t.Fatalf("ESP not after the hop-by-hop header: %x", wire[:48])
	}
	got, err := rx.Open(wire)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "opened", got, pkt)
}

func TestIVSources(t *testing.T) {
	c := suites[0].config(Tunnel, false, false, false)
	sa := mustSA(t, c)
	// An endpoint uses IVs = its sequence numbers; a gateway takes the
	// top half of the IV space.
	gw := &CounterIV{Next: 1 << 63, End: 1<<63 + 2}
	sa.SetIVSource(gw)
	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		wire := sealOne(t, sa, tcpPacket(v4a, v4b, nil))
		iv := string(wire[28:36])
		if seen[iv] || wire[28]&0x80 == 0 {
			t.Fatalf("iv %x reused or outside the gateway's range", iv)
		}
		seen[iv] = true
	}
	pkt := tcpPacket(v4a, v4b, nil)
	buf, off := inBuf(pkt)
	if _, err := sa.Seal(buf, off, len(pkt)); !errors.Is(err, ErrIVExhausted) {
		t.Fatalf("exhausted range: %v", err)
	}
	// CBC IVs are unpredictable: no two equal, not the sequence number.
	cbc := mustSA(t, suites[4].config(Tunnel, false, false, false))
	ivs := map[string]bool{}
	for i := 0; i < 100; i++ {
		wire := sealOne(t, cbc, tcpPacket(v4a, v4b, nil))
		ivs[string(wire[28:44])] = true
	}
	if len(ivs) != 100 {
		t.Fatalf("%d distinct CBC IVs in 100 packets", len(ivs))
	}
}

func TestSAD(t *testing.T) {
	var d SAD
	c := suites[0].config(Tunnel, false, false, false)
	e, _ := NewEntry(c)
	if err := d.Add(e); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(e); err == nil {
		t.Fatal("duplicate accepted")
	}
	wild := c
	wild.SPI, wild.Mode, wild.Dst, wild.Src = 0x5000, Transport, netip.Addr{}, netip.Addr{}
	we, err := NewEntry(wild)
	if err != nil {
		t.Fatal(err)
	}
	d.Add(we)
	if got, ok := d.Lookup(c.SPI, c.Dst, ESP); !ok || got != e {
		t.Fatal("exact lookup")
	}
	if _, ok := d.Lookup(c.SPI, v4a, ESP); ok {
		t.Fatal("wrong destination matched")
	}
	if _, ok := d.Lookup(c.SPI, c.Dst, AH); ok {
		t.Fatal("wrong protocol matched")
	}
	if got, ok := d.Lookup(0x5000, v6b, ESP); !ok || got != we {
		t.Fatal("wildcard destination")
	}
	// concurrent readers while a writer adds and deletes
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, ok := d.Lookup(c.SPI, c.Dst, ESP); !ok {
					t.Error("lost an entry during concurrent updates")
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		x := c
		x.SPI = 0x10000 + uint32(i)
		xe, _ := NewEntry(x)
		d.Add(xe)
		if i%2 == 0 {
			d.Delete(x.ID())
		}
	}
	close(stop)
	wg.Wait()
	if d.Len() != 2+100 {
		t.Fatalf("len %d", d.Len())
	}
	if !d.Delete(c.ID()) || !e.Write.HardExpired() {
		t.Fatal("delete did not wipe")
	}
}

func TestSPD(t *testing.T) {
	web, _ := ParsePortRange("80")
	hi, _ := ParsePortRange("1024-65535")
	net, _ := ParseAddrRange("10.78.0.0/16")
	rng, _ := ParseAddrRange("10.78.2.1-10.78.2.9")
	var d SPD
	d.Set([]Policy{
		{Name: "ike", Selector: Selector{Proto: header.ProtoUDP, LocalPorts: PortRange{500, 500}}, Action: Bypass},
		{Name: "secret", Selector: Selector{Proto: ProtoAny, Sensitivity: 3}, Action: Discard},
		{Name: "web", Selector: Selector{Local: net, Remote: rng, Proto: header.ProtoTCP, LocalPorts: hi, RemotePorts: web, UserID: "alice"}, Action: Protect, SAs: []ID{{SPI: 0x1000}}},
		{Name: "rest", Selector: Selector{Proto: ProtoAny, Local: net}, Action: Discard},
	})
	pkt := tcpPacket(netip.MustParseAddr("10.78.1.1"), netip.MustParseAddr("10.78.2.5"), nil) // 40000 → 5001
	tr, err := TrafficOf(pkt, true)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Lookup(&tr); p.Name != "rest" {
		t.Fatalf("port 5001 matched %q", p.Name)
	}
	tr.RemotePort, tr.UserID = 80, "alice"
	if p, _ := d.Lookup(&tr); p.Name != "web" || p.Action != Protect {
		t.Fatalf("web traffic matched %q", p.Name)
	}
	tr.UserID = "bob"
	if p, _ := d.Lookup(&tr); p.Name != "rest" {
		t.Fatalf("other user matched %q", p.Name)
	}
	tr.Sensitivity = 3
	if p, _ := d.Lookup(&tr); p.Name != "secret" {
		t.Fatalf("sensitive traffic matched %q", p.Name)
	}
	in, _ := TrafficOf(pkt, false)
	if in.Local != netip.MustParseAddr("10.78.2.5") || in.LocalPort != 5001 {
		t.Fatalf("inbound selector: %+v", in)
	}
	tr.Local = netip.MustParseAddr("192.0.2.1")
	tr.Sensitivity = 0
	if _, ok := d.Lookup(&tr); ok {
		t.Fatal("unmatched traffic found a policy")
	}
	for _, bad := range []string{"10.0.0.9-10.0.0.1", "10.0.0.1-fd00::1", "nope", "10.0.0.0/33"} {
		if _, err := ParseAddrRange(bad); err == nil {
			t.Errorf("range %q accepted", bad)
		}
	}
}

func TestSealBatch(t *testing.T) {
	c := suites[0].config(Tunnel, true, false, false)
	tx, rx := mustSA(t, c), mustSA(t, c)
	var want [][]byte
	pkts := make([]Packet, 8)
	for i := range pkts {
		p := tcpPacket(v4a, v4b, key(i*100, byte(i)))
		want = append(want, p)
		buf, off := inBuf(p)
		pkts[i] = Packet{Buf: buf, Off: off, N: len(p)}
	}
	pkts[3].N = 5 // a broken packet fails alone
	if n := tx.SealBatch(pkts); n != 7 || pkts[3].Err == nil {
		t.Fatalf("sealed %d, err[3] %v", n, pkts[3].Err)
	}
	seq := uint32(0)
	for i, p := range pkts {
		if i == 3 {
			continue
		}
		l, _ := Locate(p.Out)
		if l.Seq != seq+1 {
			t.Fatalf("packet %d: seq %d after %d", i, l.Seq, seq)
		}
		seq = l.Seq
		got, err := rx.Open(p.Out)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "batch packet", got, want[i])
	}
	pkts[3].N = len(want[3]) // the success path must not allocate
	if n := testing.AllocsPerRun(50, func() {
		for i := range pkts {
			copy(pkts[i].Buf[pkts[i].Off:], want[i])
		}
		tx.SealBatch(pkts)
	}); n != 0 && !raceEnabled {
		t.Errorf("%.1f allocations per batch", n)
	}
}

// TestHeadroomSuffices checks MaxHeadroom and MaxTailroom against the
// largest framing of every transform.
func TestHeadroomSuffices(t *testing.T) {
	for _, s := range suites {
		for _, v6 := range []bool{false, true} {
			sa := mustSA(t, s.config(Tunnel, s.proto == ESP, v6, false))
			if o := sa.MaxOverhead(); o > MaxHeadroom+MaxTailroom {
				t.Errorf("%s: overhead %d", s.name, o)
			}
			p := tcpPacket(v6a, v6b, make([]byte, 13))
			buf := make([]byte, MaxHeadroom+len(p), MaxHeadroom+len(p)+MaxTailroom)
			copy(buf[MaxHeadroom:], p)
			if _, err := sa.Seal(buf, MaxHeadroom, len(p)); err != nil {
				t.Errorf("%s v6=%v: %v", s.name, v6, err)
			}
		}
	}
	if MaxHeadroom%16 != 0 {
		t.Error("MaxHeadroom must stay a multiple of 16")
	}
}

// TestFrame: an SA of unknown mode and without UDP ports (as an esp_sa
// line gives it) sealing in a frame of tunnel mode in UDP 4500 makes what
// an SA configured that way opens. A wildcard SA (no addresses) framed to
// tunnel mode takes the outer addresses it is given, and is refused, not
// a panic, without them. Wipe ends every frame's sealing.
func TestFrame(t *testing.T) {
	for _, s := range suites[:5] {
		if s.proto != ESP {
			continue
		}
		any := s.config(ModeAny, false, false, false)
		want := s.config(Tunnel, true, false, false)
		sa, rx := mustSA(t, any), mustSA(t, want)
		fr, err := sa.NewFrame(Tunnel, 4500, 4500, netip.Addr{}, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		pkt := tcpPacket(netip.MustParseAddr("10.78.1.1"), netip.MustParseAddr("10.78.2.1"), []byte("reframed"))
		buf, off := inBuf(pkt)
		out, err := sa.SealFramed(buf, off, len(pkt), 7, nil, fr)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if l, _ := Locate(out); l.UDPOff < 0 || l.Seq != 7 {
			t.Fatalf("%s: not in UDP, or seq %d", s.name, l.Seq)
		}
		in, err := rx.Open(append([]byte(nil), out...))
		if err != nil || string(in) != string(pkt) {
			t.Fatalf("%s: the configured SA cannot open the framed packet: %v", s.name, err)
		}
		if _, err := sa.NewFrame(ModeAny, 0, 0, netip.Addr{}, netip.Addr{}); err == nil {
			t.Fatalf("%s: a frame of no mode", s.name)
		}

		wild := any
		wild.Src, wild.Dst = netip.Addr{}, netip.Addr{}
		ws := mustSA(t, wild)
		if _, err := ws.NewFrame(Tunnel, 0, 0, netip.Addr{}, netip.Addr{}); err == nil {
			t.Fatalf("%s: a wildcard SA framed to tunnel mode without addresses", s.name)
		}
		wf, err := ws.NewFrame(Tunnel, 0, 0, v4a, v4b)
		if err != nil {
			t.Fatal(err)
		}
		buf, off = inBuf(pkt)
		out, err = ws.SealFramed(buf, off, len(pkt), 8, nil, wf)
		if err != nil {
			t.Fatalf("%s: wildcard in a frame: %v", s.name, err)
		}
		if l, _ := Locate(out); l.Src != v4a || l.Dst != v4b {
			t.Fatalf("%s: wildcard frame sealed from %v to %v", s.name, l.Src, l.Dst)
		}
		sa.Wipe()
		buf, off = inBuf(pkt)
		if _, err := sa.SealFramed(buf, off, len(pkt), 9, nil, fr); err == nil {
			t.Fatalf("%s: sealed in a frame after Wipe", s.name)
		}
	}
}

// TestAdmits: the inbound selector check (RFC 4301 §5.2).
func TestAdmits(t *testing.T) {
	in := tcpPacket(netip.MustParseAddr("10.78.1.1"), netip.MustParseAddr("10.78.2.1"), []byte("x"))
	c := suites[0].config(Tunnel, false, false, false)
	if !c.Admits(in, true) {
		t.Error("a tunnel SA without selectors refused a packet")
	}
	if c.Admits(in, false) {
		t.Error("a transport SA admitted a packet between other hosts")
	}
	c.TS = Selector{Proto: ProtoAny}
	c.TS.Local, _ = ParseAddrRange("10.78.1.0/24")
	c.TS.Remote, _ = ParseAddrRange("10.78.2.1")
	if !c.Admits(in, true) {
		t.Error("refused a packet within the selectors")
	}
	c.TS.Remote, _ = ParseAddrRange("10.78.2.2")
	if c.Admits(in, true) {
		t.Error("admitted a packet to a host outside the selectors")
	}
	c.TS.Remote = AddrRange{}
	c.TS.Proto = 17
	if c.Admits(in, true) {
		t.Error("admitted TCP on a UDP selector")
	}
	c.TS.Proto, c.TS.RemotePorts = ProtoAny, PortRange{From: 1, To: 2}
	if c.Admits(in, true) {
		t.Error("admitted a port outside the selector")
	}
	if c.Admits([]byte{0x45, 0}, true) {
		t.Error("admitted a malformed packet")
	}
}

// TestConfigKeys: CloneKeys gives keys of their own; WipeKeys zeroes
// them where they lie.
func TestConfigKeys(t *testing.T) {
	c := Config{EncKey: []byte{1, 2, 3}, IntegKey: []byte{4, 5}}
	d := c.CloneKeys()
	c.WipeKeys()
	if !bytes.Equal(c.EncKey, []byte{0, 0, 0}) || !bytes.Equal(c.IntegKey, []byte{0, 0}) {
		t.Fatalf("wiped: %v %v", c.EncKey, c.IntegKey)
	}
	if !bytes.Equal(d.EncKey, []byte{1, 2, 3}) || !bytes.Equal(d.IntegKey, []byte{4, 5}) {
		t.Fatalf("the clone shared the keys: %v %v", d.EncKey, d.IntegKey)
	}
}
