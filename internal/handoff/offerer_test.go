package handoff

import (
	"context"
	"crypto/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// TestOfferer: three gateways in a row, gw-1 — gw-2 — gw-3, each taking
// offers only from its neighbours. gw-1 has the mobile's SAs (its own
// source) and offers them to gw-2, which keeps them from gw-1 and offers
// them nowhere while the mobile is elsewhere — never back to gw-1. Once a
// verified packet of the mobile's reaches gw-2, gw-2 offers them on to
// gw-3 (provenance gw-2). Nothing is offered twice within half the TTL;
// new keys on an SA are offered at once.
func TestOfferer(t *testing.T) {
	w := newWorld(t, EngineSource{splitEngine(t)})
	key := func() []byte { k := make([]byte, 20); rand.Read(k); return k }
	mobile, server := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1")
	up := ipsec.Config{SPI: 0x2002, Proto: ipsec.ESP, Src: mobile, Dst: server, Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: key(),
		ReplayWindow: 64, Class: ipsec.ClassWrite}
	down := up
	down.SPI, down.Src, down.Dst, down.EncKey = 0x1001, server, mobile, key()

	type node struct {
		g    *gateway.Gateway
		addr string
		id   pki.Identity
	}
	nodes := map[string]*node{}
	neighbours := map[string][]string{"gw-1": {"gw-2"}, "gw-2": {"gw-1", "gw-3"}, "gw-3": {"gw-2"}}
	for i, name := range []string{"gw-1", "gw-2", "gw-3"} {
		g := idleGateway(t, statedir.MemoryIn(statedir.Partition{K: uint32(i), N: 3}))
		addr, srv := w.serve(g, name)
		srv.ServeOffers(g, func(id pki.Identity) bool {
			for _, n := range neighbours[name] {
				if id.Name == n {
					return true
				}
			}
			return false
		})
		nodes[name] = &node{g, addr, pki.Identity{Role: pki.RoleGateway, Name: name, Areas: []string{"cell-" + name}}}
	}
	offerer := func(name string) *Offerer {
		peers := StaticPeers{}
		for _, n := range neighbours[name] {
			peers[n] = w.clientAt(nodes[n].addr, nodes[name].id)
		}
		return &Offerer{G: nodes[name].g, Peers: peers, TTL: time.Minute}
	}
	own := func(cfgs ...ipsec.Config) []*ipsec.Entry {
		var es []*ipsec.Entry
		for _, c := range cfgs {
			e, err := ipsec.NewEntry(c.CloneKeys())
			if err != nil {
				t.Fatal(err)
			}
			es = append(es, e)
		}
		return es
	}
	if err := nodes["gw-1"].g.SetSource("sa-files", own(up, down)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	o1, o2 := offerer("gw-1"), offerer("gw-2")
	if n := o1.Once(ctx); n != 2 {
		t.Fatalf("gw-1 offered %d SAs, want 2", n)
	}
	for _, c := range []ipsec.Config{up, down} {
		if p, ok := nodes["gw-2"].g.ProvenanceOf(c.ID()); !ok || p.From != "gw-1" {
			t.Fatalf("gw-2's provenance of %v: %+v %v", c.ID(), p, ok)
		}
	}
	if n := o1.Once(ctx); n != 0 {
		t.Fatalf("gw-1 offered %d SAs again at once", n)
	}
	if n := o2.Once(ctx); n != 0 {
		t.Fatalf("gw-2 offered %d SAs before the mobile was there", n)
	}
	// The mobile's packet at gw-2: verified on the provisioned SA.
	sa, err := ipsec.New(up.CloneKeys())
	if err != nil {
		t.Fatal(err)
	}
	pkt := packettest.TCP(netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1"), []byte("hello"))
	buf := make([]byte, ipsec.MaxHeadroom+len(pkt)+ipsec.MaxTailroom)
	copy(buf[ipsec.MaxHeadroom:], pkt)
	wire, err := sa.Seal(buf, ipsec.MaxHeadroom, len(pkt))
	if err != nil {
		t.Fatal(err)
	}
	nodes["gw-2"].g.Process(engine.Radio, wire)
	if st := nodes["gw-2"].g.Stats(); st.Opened != 1 {
		t.Fatalf("gw-2 did not open the mobile's packet: %+v", st)
	}
	if n := o2.Once(ctx); n != 1 {
		t.Fatalf("gw-2 offered %d SAs once the mobile's traffic came, want 1 (the SA it verified a packet on)", n)
	}
	if p, ok := nodes["gw-3"].g.ProvenanceOf(up.ID()); !ok || p.From != "gw-2" {
		t.Fatalf("gw-3's provenance: %+v %v", p, ok)
	}
	if _, ok := nodes["gw-1"].g.ProvenanceOf(up.ID()); ok {
		t.Fatal("gw-2 offered the SA back to gw-1, where it came from")
	}
	// A rekey that keeps the SPI: new keys, offered at once.
	down2 := down
	down2.EncKey = key()
	if err := nodes["gw-1"].g.SetSource("sa-files", own(up, down2)); err != nil {
		t.Fatal(err)
	}
	if n := o1.Once(ctx); n != 1 {
		t.Fatalf("gw-1 offered %d SAs after new keys on one, want 1", n)
	}
}
