package handoff

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/pms"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// TestNeighboursFromPMS: neighbour sets as espep gateway keeps them with
// --pms. Two gateways join the proxy management service with base
// stations 3 km apart; each is pushed the other and dials it
// (Neighbours), and gw-1's Offerer provisions gw-2, which takes offers
// from its current neighbours only. When gw-1 leaves the service, gw-2 is
// pushed an empty set: the connection is closed, and gw-1's offers are
// refused from then on.
func TestNeighboursFromPMS(t *testing.T) {
	w := newWorld(t, EngineSource{splitEngine(t)})
	svc := pms.New(w.v, slog.New(slog.DiscardHandler))
	svc.Grace = 100 * time.Millisecond
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(w.v.ServerTLS(w.cert(pki.Identity{Role: pki.RoleServer, Name: "pms"}), pki.RoleGateway))))
	svc.Attach(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go svc.Run(ctx)

	type node struct {
		g      *gateway.Gateway
		addr   string
		nb     *Neighbours
		leave  context.CancelFunc
		joined chan int
	}
	nodes := map[string]*node{}
	for i, name := range []string{"gw-1", "gw-2"} {
		id := pki.Identity{Role: pki.RoleGateway, Name: name, Areas: []string{"cell-" + name}}
		gw := idleGateway(t, statedir.MemoryIn(statedir.Partition{K: uint32(i), N: 2}))
		nd := &node{g: gw, nb: &Neighbours{TLS: w.v.ClientTLS(w.cert(id), pki.RoleGateway)}, joined: make(chan int, 16)}
		t.Cleanup(nd.nb.Close)
		addr, srv := w.serve(gw, name)
		nd.addr = addr
		srv.ServeOffers(gw, func(id pki.Identity) bool { return nd.nb.Has(id.Name) })
		c, err := pms.Dial(ln.Addr().String(), w.v.ClientTLS(w.cert(id), pki.RoleServer))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		var jctx context.Context
		jctx, nd.leave = context.WithCancel(ctx)
		lat := 48.85 + 0.027*float64(i) // 3 km north
		go c.Follow(jctx, []pms.Station{{Area: "cell-" + name, Lat: lat, Lon: 2.35}}, addr, slog.New(slog.DiscardHandler), func(ns []pms.Neighbour) {
			var peers []Peer
			for _, n := range ns {
				peers = append(peers, Peer{Name: n.Gateway, Addr: n.Addr})
			}
			nd.nb.Set(peers)
			nd.joined <- len(ns)
		})
		nodes[name] = nd
	}
	waitSet := func(name string, want int) {
		t.Helper()
		for deadline := time.After(5 * time.Second); ; {
			select {
			case n := <-nodes[name].joined:
				if n == want {
					return
				}
			case <-deadline:
				t.Fatalf("%s was never pushed %d neighbours", name, want)
			}
		}
	}
	waitSet("gw-1", 1)
	waitSet("gw-2", 1)
	if nodes["gw-1"].nb.Get("gw-2") == nil || nodes["gw-2"].nb.Get("gw-1") == nil {
		t.Fatal("the gateways did not dial each other")
	}
	key := make([]byte, 20)
	rand.Read(key)
	sa := ipsec.Config{SPI: 0x1001, Proto: ipsec.ESP, Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"),
		Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: key, ReplayWindow: 64, Class: ipsec.ClassWrite}
	e, err := ipsec.NewEntry(sa.CloneKeys())
	if err != nil {
		t.Fatal(err)
	}
	if err := nodes["gw-1"].g.SetSource("sa-files", []*ipsec.Entry{e}); err != nil {
		t.Fatal(err)
	}
	o := &Offerer{G: nodes["gw-1"].g, Peers: nodes["gw-1"].nb}
	if n := o.Once(ctx); n != 1 {
		t.Fatalf("gw-1 offered %d SAs to its pushed neighbour", n)
	}
	if p, ok := nodes["gw-2"].g.ProvenanceOf(sa.ID()); !ok || p.From != "gw-1" {
		t.Fatalf("gw-2's provenance %+v %v", p, ok)
	}
	// gw-1 leaves: gw-2 drops it, and refuses its offers.
	nodes["gw-1"].leave()
	waitSet("gw-2", 0)
	if nodes["gw-2"].nb.Has("gw-1") {
		t.Fatal("gw-2 keeps a neighbour the service no longer names")
	}
	stale := w.clientAt(nodes["gw-2"].addr, pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-gw-1"}})
	if err := stale.Offer(ctx, []ipsec.Config{sa}, nil, time.Minute); err == nil {
		t.Fatal("gw-2 took an offer from a gateway that is no longer its neighbour")
	}
}

// TestNeighbourPinned: a neighbour set naming gw-2 at the address where
// another gateway of the CA (gw-9) serves: the connection is refused, so
// nothing — no offer, no flow — reaches the wrong gateway.
func TestNeighbourPinned(t *testing.T) {
	w := newWorld(t, EngineSource{splitEngine(t)})
	g := idleGateway(t, nil)
	addr, srv := w.serve(g, "gw-9")
	srv.ServeOffers(g, nil)
	me := pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-gw-1"}}
	nb := &Neighbours{TLS: w.v.ClientTLS(w.cert(me), pki.RoleGateway)}
	t.Cleanup(nb.Close)
	nb.Set([]Peer{{Name: "gw-2", Addr: addr}})
	c := nb.Get("gw-2")
	if c == nil {
		t.Fatal("no connection to try") // grpc dials lazily: the refusal comes with the first call
	}
	if err := c.Offer(context.Background(), nil, nil, time.Minute); err == nil || !strings.Contains(err.Error(), "gw-9") {
		t.Fatalf("an offer to gw-2 reached gw-9: %v", err)
	}
	nb.Set([]Peer{{Name: "gw-9", Addr: addr}})
	if err := nb.Get("gw-9").Offer(context.Background(), nil, nil, time.Minute); err != nil {
		t.Fatalf("the right name: %v", err)
	}
}
