package gateway

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/simnet"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// seqivIV is what Linux's seqiv and strongSwan's iv_gen_seq send: the
// sequence number XOR a random per-SA salt.
type seqivIV struct{ salt uint64 }

func (s seqivIV) NextIV(iv []byte, seq uint64) error {
	binary.BigEndian.PutUint64(iv[len(iv)-8:], seq^s.salt)
	return nil
}

func (randomIV) NextIV(iv []byte, _ uint64) error { _, err := rand.Read(iv); return err }

// randomIV is an endpoint whose IVs follow no sequence (legal, if unwise):
// the gateway must never seal on its SA.
type randomIV struct{}

// tunnel is one direction of an ESP tunnel between the two hosts' routers.
func tunnelConfig(spi uint32, src, dst string, enc ipsec.Enc) ipsec.Config {
	key := make([]byte, 20)
	c := ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		Mode: ipsec.Tunnel, Enc: enc, ReplayWindow: 32, Class: ipsec.ClassWrite}
	switch enc {
	case ipsec.EncChaCha20Poly1305:
		key = make([]byte, 36)
	case ipsec.EncAESCBC:
		key = make([]byte, 16)
		c.Integ, c.IntegKey = ipsec.IntegSHA256_128, make([]byte, 32)
		rand.Read(c.IntegKey)
	}
	rand.Read(key)
	c.EncKey = key
	return c
}

// ivLog records every (SPI, IV) sent on the links with a digest of the
// packet: the same pair on two different packets is a reused nonce.
type ivLog struct {
	mu    sync.Mutex
	seen  map[[12]byte][32]byte
	n     int
	reuse int
}

func (l *ivLog) record(pkt []byte) {
	if in, ok := ipipUnwrap(pkt); ok {
		pkt = in
	}
	loc, err := ipsec.Locate(pkt)
	if err == nil && loc.Kind == ipsec.KindAH && loc.Off+2 <= len(pkt) && pkt[loc.Off] == header.ProtoESP {
		// ESP in an AH+ESP bundle: right after the AH header.
		loc.Off += (int(pkt[loc.Off+1]) + 2) * 4
		loc.Kind = ipsec.KindESP
	}
	if err != nil || loc.Kind != ipsec.KindESP || loc.Off+16 > len(pkt) {
		return
	}
	var k [12]byte
	copy(k[:4], pkt[loc.Off:loc.Off+4])
	copy(k[4:], pkt[loc.Off+8:loc.Off+16])
	d := sha256.Sum256(pkt[loc.Off:])
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.seen[k]; ok && old != d {
		l.reuse++
	}
	l.seen[k] = d
	l.n++
}

// testNet is host A (wire side) and host B (radio side), each behind its
// own IPsec tunnel router (a simnet.IPsec end), joined through the gateway
// on a simnet network:
//
//	A ─ router A ══ wired ══ gateway ══ radio ══ router B ─ B
type testNet struct {
	*simnet.Net
	A, B       *gvhost.Host
	G          *Gateway
	aOut, aIn  *ipsec.SA // router A's first SAs: seals A's packets (SA ab), opens B's (SA ba)
	bOut, bIn  *ipsec.SA
	routerA    *simnet.IPsec
	routerB    *simnet.IPsec
	ivs        *ivLog
	sad        *ipsec.SAD // the gateway's
	cur        atomic.Pointer[Gateway]
	old        *Gateway
	state      *statedir.Dir  // the gateway's; a restarted one shares it
	cfgs       []ipsec.Config // the gateway's SAs
	aInOuter   *ipsec.SA      // router A's outer inbound SA in a bundle
	rekeyedIns map[uint32]*ipsec.SA
}

// refusals sums what the two routers refused that no SA counts: packets
// refused as replays though never accepted, outside the IP-in-IP tunnel,
// on a deleted SA.
func (n *testNet) refusals() simnet.Counts {
	a, b := n.routerA.Counts(), n.routerB.Counts()
	return simnet.Counts{FreshRefused: a.FreshRefused + b.FreshRefused, NotInTunnel: a.NotInTunnel + b.NotInTunnel,
		ToDeleted: a.ToDeleted + b.ToDeleted, UnknownSPI: a.UnknownSPI + b.UnknownSPI}
}

// rekey gives the routers new SAs, ab (A → B) and ba, as IKE's
// CREATE_CHILD_SA would: each router can open the new inbound SA at once
// and seals on the new outbound one from now on (with IVs from ivA and
// ivB); the old inbound SAs stay until deleteOld.
func (n *testNet) rekey(t *testing.T, ab, ba ipsec.Config, ivA, ivB ipsec.IVSource) {
	t.Helper()
	mk := func(c ipsec.Config) *ipsec.SA {
		sa, err := ipsec.New(c)
		if err != nil {
			t.Fatal(err)
		}
		return sa
	}
	aOut, bIn, bOut, aIn := mk(ab), mk(ab), mk(ba), mk(ba)
	aOut.SetIVSource(ivA)
	bOut.SetIVSource(ivB)
	n.rekeyedIns[ab.SPI], n.rekeyedIns[ba.SPI] = bIn, aIn
	n.routerA.Rekey(aOut, aIn)
	n.routerB.Rekey(bOut, bIn)
}

// deleteOld makes the routers delete their first inbound SAs (the IKE
// DELETE after a rekey): packets on them are refused from now on.
func (n *testNet) deleteOld() {
	n.routerA.Delete(n.aIn.ID().SPI)
	n.routerB.Delete(n.bIn.ID().SPI)
}

// swap puts a new gateway in the path (the old one's timers keep running
// but nothing reaches it).
func (n *testNet) swap(g *Gateway) {
	n.old = n.cur.Swap(g)
}

// freshSAD builds the gateway's SAs anew (a gateway owns the entries it is
// given, and wipes those that leave it).
func (n *testNet) freshSAD(t *testing.T) *ipsec.SAD {
	t.Helper()
	return sadOf(t, n.cfgs)
}

// sadOf is a SAD of new entries for cfgs, each with keys of its own (a
// wiped entry wipes the keys it holds).
func sadOf(t *testing.T, cfgs []ipsec.Config) *ipsec.SAD {
	t.Helper()
	sad := &ipsec.SAD{}
	for _, c := range cfgs {
		c.EncKey, c.IntegKey = slices.Clone(c.EncKey), slices.Clone(c.IntegKey)
		e, err := ipsec.NewEntry(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := sad.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	return sad
}

// seal seals pkt on sa, as an endpoint does (simnet.Seal).
func seal(sa *ipsec.SA, pkt []byte) []byte { return simnet.Seal(sa, pkt) }

func newTestNet(t *testing.T, enc ipsec.Enc, ivA, ivB ipsec.IVSource, radio netem.Config, mode engine.Mode) *testNet {
	return newTestNetClass(t, enc, ivA, ivB, radio, mode, ipsec.ClassWrite, 32)
}

func newTestNetClass(t *testing.T, enc ipsec.Enc, ivA, ivB ipsec.IVSource, radio netem.Config, mode engine.Mode, class ipsec.Class, window int) *testNet {
	t.Helper()
	ab := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", enc)
	ba := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", enc)
	ab.ReplayWindow, ba.ReplayWindow = window, window
	return newTestNetSAs(t, ab, ba, ivA, ivB, radio, mode, class)
}

// newTestNetSAs builds the network with the SAs ab (A → B) and ba.
func newTestNetSAs(t *testing.T, ab, ba ipsec.Config, ivA, ivB ipsec.IVSource, radio netem.Config, mode engine.Mode, class ipsec.Class) *testNet {
	return newTestNetWrap(t, ab, ba, ivA, ivB, radio, mode, class, false)
}

// ipipWrap puts an ESP packet in an IPv4-in-IPv4 tunnel (RFC 2003) between
// two home agents, as a Mobile IP home agent forwards to a care-of address.
func ipipWrap(src, dst string, pkt []byte) []byte {
	b := make([]byte, 20+len(pkt))
	header.WriteIPv4(b, 0, len(b), 7, true, 60, header.ProtoIPIP, netip.MustParseAddr(src), netip.MustParseAddr(dst))
	copy(b[20:], pkt)
	return b
}

// ipipUnwrap takes the packet out of its IP-in-IP tunnel, or fails.
func ipipUnwrap(pkt []byte) ([]byte, bool) {
	h, err := header.ParseIPv4(pkt)
	if err != nil || h.Protocol() != header.ProtoIPIP || !h.ChecksumValid() {
		return nil, false
	}
	return h.Payload(), true
}

func newTestNetWrap(t *testing.T, ab, ba ipsec.Config, ivA, ivB ipsec.IVSource, radio netem.Config, mode engine.Mode, class ipsec.Class, ipip bool) *testNet {
	return newTestNetBundle(t, ab, ba, nil, nil, ivA, ivB, radio, mode, class, ipip)
}

// receivers are the routers' first inbound SAs (and the outer ones of a
// bundle).
func (n *testNet) receivers() []*ipsec.SA {
	rs := []*ipsec.SA{n.aIn, n.bIn}
	if n.aInOuter != nil {
		for _, r := range []*simnet.IPsec{n.routerA, n.routerB} {
			in := r.Inbound()
			rs = append(rs, in[len(in)-1])
		}
	}
	return rs
}

// newTestNetBundle is newTestNetWrap with, when outerAB and outerBA are
// given, a second SA per direction sealed around the first: a bundle.
func newTestNetBundle(t *testing.T, ab, ba ipsec.Config, outerAB, outerBA *ipsec.Config, ivA, ivB ipsec.IVSource, radio netem.Config, mode engine.Mode, class ipsec.Class, ipip bool) *testNet {
	t.Helper()
	n := &testNet{ivs: &ivLog{seen: map[[12]byte][32]byte{}}, rekeyedIns: map[uint32]*ipsec.SA{}}
	mk := func(c ipsec.Config) *ipsec.SA {
		sa, err := ipsec.New(c)
		if err != nil {
			t.Fatal(err)
		}
		return sa
	}
	n.aOut, n.aIn, n.bOut, n.bIn = mk(ab), mk(ba), mk(ba), mk(ab)
	if ivA != nil {
		n.aOut.SetIVSource(ivA)
		n.bOut.SetIVSource(ivB)
	}
	n.routerA, n.routerB = simnet.NewIPsec(n.aOut, n.aIn), simnet.NewIPsec(n.bOut, n.bIn)
	n.routerA.Sealed, n.routerB.Sealed = n.ivs.record, n.ivs.record
	cfgs := []ipsec.Config{ab, ba}
	if outerAB != nil {
		n.aInOuter = mk(*outerBA)
		n.routerA.Bundle(mk(*outerAB), n.aInOuter)
		n.routerB.Bundle(mk(*outerBA), mk(*outerAB))
		cfgs = append(cfgs, *outerAB, *outerBA)
	}
	if ipip {
		n.routerA.Tunnel = [2]netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}
		n.routerB.Tunnel = [2]netip.Addr{netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.1")}
	}
	for _, c := range cfgs {
		c.Class = class
		if class == ipsec.ClassRead {
			c.IntegKey = nil // what a security server hands a read gateway
		}
		n.cfgs = append(n.cfgs, c)
	}
	n.sad = n.freshSAD(t)
	n.state = statedir.Memory()
	sn, err := simnet.New(simnet.Config{Wired: netem.Config{Rate: 100e6, Delay: 20 * time.Millisecond}, Radio: radio,
		Hosts: gvhost.Options{SACK: true, MTU: 1400}, WiredEnd: n.routerA, MobileEnd: n.routerB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sn.Close)
	n.Net, n.A, n.B = sn, sn.Wired, sn.Mobile
	n.G, err = New(Config{Engine: engine.Config{Mode: mode}, State: n.state}, n.sad, n.output)
	if err != nil {
		t.Fatal(err)
	}
	n.cur.Store(n.G)
	n.SetMiddle(func(from engine.Side, pkt []byte) { n.cur.Load().Process(from, pkt) })
	return n
}

// output is the gateways' output: every packet's IV is logged.
func (n *testNet) output(to engine.Side, pkt []byte) {
	n.ivs.record(pkt)
	n.Send(to, pkt)
}

// transfer sends size random bytes from src to dst and checks them
// (gvhost.Transfer); when they do not arrive, it says what the routers
// refused and what the gateway in the path counted (diag): a stall that
// CI sees once in many runs must say where the packets went.
func (n *testNet) transfer(t *testing.T, src, dst *gvhost.Host, port uint16, size int) float64 {
	t.Helper()
	gp, err := gvhost.Transfer(src, dst, port, size, 60*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, n.diag(n.cur.Load()))
	}
	return gp
}

// diag describes the network's state for a failed transfer: each
// receiving SA's counters, what the routers refused, and the counters and
// SA states of the gateways given.
func (n *testNet) diag(gws ...*Gateway) string {
	var b strings.Builder
	for i, sa := range n.receivers() {
		fmt.Fprintf(&b, "receiver %d (spi %#x): %+v\n", i, sa.ID().SPI, sa.Stats())
	}
	fmt.Fprintf(&b, "routers: A %+v, B %+v\n", n.routerA.Counts(), n.routerB.Counts())
	for i, g := range gws {
		fmt.Fprintf(&b, "gateway %d: %s\n", i+1, g.Stats().Summary())
		for _, st := range g.SAs() {
			fmt.Fprintf(&b, "  %+v\n", st)
		}
		for _, f := range g.Engine().Flows() {
			fmt.Fprintf(&b, "  flow %+v\n", f)
		}
		fmt.Fprintf(&b, "  engine %+v\n", g.Engine().Stats())
	}
	return b.String()
}

// randomSalts are two endpoints' IV salts, as Linux and strongSwan draw
// them (any 64 bits; the top one does not matter).
func randomSalts() (salts [2]uint64) {
	for i := range salts {
		var b [8]byte
		rand.Read(b[:])
		salts[i] = binary.BigEndian.Uint64(b[:]) &^ (1 << 63)
	}
	return salts
}
