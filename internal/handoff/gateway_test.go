package handoff

import (
	"context"
	"crypto/rand"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/gvhost"
	hpb "github.com/espep/espep/internal/handoff/pb"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/simnet"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// TestGatewaysOverGRPC: the whole handoff between two gateways over
// mutual TLS. Gateway 2 starts with no SA: gateway 1, which has them from
// its file, offers them to it (pre-provisioning; gateway 2 keeps them with
// their provenance). A download to the mobile runs through gateway 1
// (split, AES-GCM tunnel between the routers, 2 % radio loss); halfway,
// gateway 2 calls Take on the gateway its SAs came from and resumes what
// it streams — SA counters and windows, bindings, the flow with its
// buffered bytes — and the path switches to it. The bytes arrive intact
// and neither router refuses a packet.
func TestGatewaysOverGRPC(t *testing.T) {
	t.Run("asked", func(t *testing.T) { gatewaysOverGRPC(t, false) })
	// Gateway 2 is not told: it meets the mobile's flow mid-stream, holds
	// its packets and asks the gateway its SAs came from (Asker).
	t.Run("on-traffic", func(t *testing.T) { gatewaysOverGRPC(t, true) })
}

// tunnelNet is a network (package simnet) whose routers hold an AES-GCM
// tunnel with fresh keys — ab from router A (wired) to B (mobile), ba
// back — behind a wired link of 100 Mbit/s, RTT 40 ms, and a radio of 20
// Mbit/s, RTT 10 ms, 2 % loss.
type tunnelNet struct {
	*simnet.Net
	ab, ba           ipsec.Config
	aIn, bIn         *ipsec.SA // the routers' inbound SAs
	routerA, routerB *simnet.IPsec
	journal          engine.Journal // the next gateway's engine writes to it (nil: none)
}

func newTunnelNet(t *testing.T) *tunnelNet {
	t.Helper()
	tunnel := func(spi uint32, src, dst string) ipsec.Config {
		key := make([]byte, 20)
		rand.Read(key)
		return ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
			Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: key, ReplayWindow: 64, Class: ipsec.ClassWrite}
	}
	sa := func(c ipsec.Config) *ipsec.SA {
		s, err := ipsec.New(c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	n := &tunnelNet{ab: tunnel(0x1001, "192.0.2.1", "192.0.2.2"), ba: tunnel(0x2002, "192.0.2.2", "192.0.2.1")}
	n.aIn, n.bIn = sa(n.ba), sa(n.ab)
	n.routerA, n.routerB = simnet.NewIPsec(sa(n.ab), n.aIn), simnet.NewIPsec(sa(n.ba), n.bIn)
	var err error
	n.Net, err = simnet.New(simnet.Config{Wired: netem.Config{Rate: 100e6, Delay: 20 * time.Millisecond},
		Radio: netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.02, Seed: 3},
		Hosts: gvhost.Options{SACK: true, MTU: 1400}, WiredEnd: n.routerA, MobileEnd: n.routerB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// gateway is a split gateway on n with state directory st and the SAs
// cfgs (their keys copied), closed when the test ends.
func (n *tunnelNet) gateway(t *testing.T, st *statedir.Dir, cfgs ...ipsec.Config) *gateway.Gateway {
	t.Helper()
	sad := &ipsec.SAD{}
	for _, c := range cfgs {
		c.EncKey = append([]byte(nil), c.EncKey...)
		e, err := ipsec.NewEntry(c)
		if err != nil {
			t.Fatal(err)
		}
		sad.Add(e)
	}
	g, err := gateway.New(gateway.Config{Engine: engine.Config{Mode: engine.ModeSplit, Journal: n.journal}, State: st}, sad, n.Send)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// download starts a 4 MB download to the mobile and returns once ready
// holds (failing the test if the download ends first); the channel gives
// its result.
func (n *tunnelNet) download(t *testing.T, ready func() bool) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := gvhost.Transfer(n.Wired, n.Mobile, 5001, 4<<20, 60*time.Second)
		done <- err
	}()
	for !ready() {
		select {
		case err := <-done:
			t.Fatalf("the download ended too soon: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return done
}

// refusedNothing fails the test if either router refused a packet.
func (n *tunnelNet) refusedNothing(t *testing.T) {
	t.Helper()
	for name, s := range map[string]*ipsec.SA{"router A": n.aIn, "router B": n.bIn} {
		if st := s.Stats(); st.ICVFailures != 0 || st.ReplayDrops != 0 || st.OtherDrops != 0 {
			t.Errorf("%s refused packets: %+v", name, st)
		}
	}
	for name, r := range map[string]*simnet.IPsec{"router A": n.routerA, "router B": n.routerB} {
		if c := r.Counts(); c.FreshRefused != 0 || c.UnknownSPI != 0 {
			t.Errorf("%s: %+v", name, c)
		}
	}
}

func gatewaysOverGRPC(t *testing.T, onTraffic bool) {
	n := newTunnelNet(t)
	ab, ba := n.ab, n.ba
	gw := func(k uint32, cfgs ...ipsec.Config) *gateway.Gateway {
		st, err := statedir.Open(filepath.Join(t.TempDir(), "state"), statedir.Partition{K: k, N: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return n.gateway(t, st, cfgs...)
	}
	g1, g2 := gw(0, ab, ba), gw(1)
	w := newWorld(t, g1)
	addr2, srv2 := w.serve(g2, "gw-new")
	srv2.ServeOffers(g2, func(id pki.Identity) bool { return id.Name == "gw-old" }) // its one neighbour
	if err := w.clientAt(addr2, pki.Identity{Role: pki.RoleGateway, Name: "gw-old", Areas: []string{"cell-gw-old"}}).Offer(context.Background(),
		[]ipsec.Config{ab, ba}, nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	prov, ok := g2.ProvenanceOf(ab.ID())
	if !ok || prov.From != "gw-old" {
		t.Fatalf("gateway 2's provenance of the SA: %+v %v", prov, ok)
	}
	// An offer from a gateway that is not a neighbour is refused.
	if err := w.clientAt(addr2, pki.Identity{Role: pki.RoleGateway, Name: "gw-far", Areas: []string{"cell-far"}}).Offer(context.Background(),
		[]ipsec.Config{ab}, nil, time.Minute); err == nil {
		t.Fatal("an offer from a gateway that is not a neighbour was taken")
	}
	var moving sync.RWMutex
	cur := g1
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		moving.RLock()
		g := cur
		moving.RUnlock()
		g.Process(from, pkt)
	})
	done := n.download(t, func() bool { return g1.Stats().Opened >= 1000 })
	c := w.client(newGW)
	if onTraffic {
		g2.SetMissing((&Asker{G: g2, Peers: StaticPeers{"gw-old": c}}).Missing)
		moving.Lock()
		cur = g2
		moving.Unlock()
	} else {
		moving.Lock()
		start := time.Now()
		flows, err := c.Take(context.Background(), netip.MustParseAddr("192.0.2.2"), g2.Resume)
		cur = g2
		moving.Unlock()
		if err != nil || flows != 1 {
			t.Fatalf("take: %d flows, %v", flows, err)
		}
		t.Logf("the mobile moved to gateway 2 in %v (a new TLS connection included)", time.Since(start).Round(time.Millisecond))
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	n.refusedNothing(t)
	s2 := g2.Stats()
	if s2.Sealed == 0 || s2.Engine.EarlyAcked == 0 {
		t.Errorf("gateway 2 did not carry the flow on: %+v", s2)
	}
	t.Logf("gateway 2 held %d packets while it asked; gateway 1 dropped %d that reached it after", s2.HeldForHandoff, g1.Stats().HandedOver)
	if onTraffic && (s2.HeldForHandoff == 0 || s2.Released != s2.HeldForHandoff) {
		t.Errorf("gateway 2 held %d packets and released %d after the ask: want some, and all of them", s2.HeldForHandoff, s2.Released)
	}
}

// TestOfferRefused: offers a gateway does not take — more SAs than one
// offer may carry, text that is no SA file, an offer to a gateway that
// takes none.
func TestOfferRefused(t *testing.T) {
	w := newWorld(t, EngineSource{splitEngine(t)}) // serves Take only: no offers
	neighbour := pki.Identity{Role: pki.RoleGateway, Name: "gw-old", Areas: []string{"cell-1"}}
	ctx := context.Background()
	if err := w.client(neighbour).Offer(ctx, nil, nil, time.Minute); err == nil || !strings.Contains(err.Error(), "Unimplemented") {
		t.Fatalf("an offer to a gateway that takes none: %v", err)
	}
	g := idleGateway(t, nil)
	addr, srv := w.serve(g, "gw-new")
	srv.ServeOffers(g, nil)
	c := w.clientAt(addr, neighbour)
	var many []ipsec.Config
	for i := range MaxOffer + 1 {
		many = append(many, ipsec.Config{SPI: uint32(0x100 + i), Proto: ipsec.ESP, Src: netip.MustParseAddr("192.0.2.1"),
			Dst: netip.MustParseAddr("192.0.2.2"), Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: make([]byte, 20), Class: ipsec.ClassWrite})
	}
	if err := c.Offer(ctx, many, nil, time.Minute); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("an offer of %d SAs: %v", len(many), err)
	}
	if _, err := c.api.Offer(ctx, &hpb.OfferRequest{Sas: []byte("espep-sa 1\n[sa]\nspi = zz\n")}); err == nil {
		t.Fatal("an offer that is no SA file was taken")
	}
	if err := c.Offer(ctx, many[:2], nil, time.Minute); err != nil {
		t.Fatalf("a good offer: %v", err)
	}
	if p, ok := g.ProvenanceOf(many[0].ID()); !ok || p.From != "gw-old" {
		t.Fatalf("provenance %+v %v", p, ok)
	}
}
