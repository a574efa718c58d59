package pms

import (
	"context"
	"crypto/tls"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/sectest"
)

type world struct {
	t    *testing.T
	ca   *sectest.World
	v    *pki.Verifier
	svc  *Service
	addr string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ca := sectest.NewWorld(t) // a CA and its verifier
	w := &world{t: t, ca: ca, v: ca.Verifier}
	w.svc = New(w.v, slog.New(slog.DiscardHandler))
	w.svc.Grace = 200 * time.Millisecond
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(w.v.ServerTLS(w.cert(pki.Identity{Role: pki.RoleServer, Name: "pms",
		Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}), pki.RoleGateway))))
	w.svc.Attach(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return w
}

func (w *world) cert(id pki.Identity) tls.Certificate { return w.ca.Cert(w.t, id) }

func (w *world) client(id pki.Identity) *Client {
	w.t.Helper()
	c, err := Dial(w.addr, w.v.ClientTLS(w.cert(id), pki.RoleServer))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	return c
}

// joined is a gateway's stream of neighbour sets.
type joined struct {
	sets   chan []Neighbour
	cancel context.CancelFunc
	done   chan error
}

func (w *world) join(name, area string, lat, lon float64) *joined {
	c := w.client(pki.Identity{Role: pki.RoleGateway, Name: name, Areas: []string{area}})
	ctx, cancel := context.WithCancel(context.Background())
	j := &joined{sets: make(chan []Neighbour, 16), cancel: cancel, done: make(chan error, 1)}
	go func() {
		j.done <- c.Join(ctx, []Station{{Area: area, Lat: lat, Lon: lon}}, name+".example:7700", func(ns []Neighbour) { j.sets <- ns })
	}()
	w.t.Cleanup(cancel)
	return j
}

func (j *joined) next(t *testing.T) []string {
	t.Helper()
	select {
	case ns := <-j.sets:
		var names []string
		for _, n := range ns {
			names = append(names, n.Gateway)
		}
		return names
	case err := <-j.done:
		t.Fatalf("the stream ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no neighbour set")
	}
	return nil
}

func (j *joined) quiet(t *testing.T) {
	t.Helper()
	select {
	case ns := <-j.sets:
		t.Fatalf("a set sent though nothing changed for this gateway: %v", ns)
	case <-time.After(200 * time.Millisecond):
	}
}

// Three gateways: a in Paris, b 3 km east of it, c in Lyon; radius 5 km.
const (
	parisLat, parisLon = 48.8566, 2.3522
	eastLon            = 2.3930
	lyonLat, lyonLon   = 45.7640, 4.8357
)

// TestNeighbours: a joins alone (no neighbours); b joins 3 km away and
// both are told of each other; c joins in Lyon and is told of no one,
// and a and b hear nothing (their sets did not change); b leaves and,
// after the grace period, a is told it has no neighbour left.
func TestNeighbours(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.svc.Run(ctx)
	a := w.join("gw-a", "cell-a", parisLat, parisLon)
	if got := a.next(t); len(got) != 0 {
		t.Fatalf("a alone: %v", got)
	}
	b := w.join("gw-b", "cell-b", parisLat, eastLon)
	if got := b.next(t); strings.Join(got, ",") != "gw-a" {
		t.Fatalf("b: %v", got)
	}
	if got := a.next(t); strings.Join(got, ",") != "gw-b" {
		t.Fatalf("a after b joined: %v", got)
	}
	c := w.join("gw-c", "cell-c", lyonLat, lyonLon)
	if got := c.next(t); len(got) != 0 {
		t.Fatalf("c in Lyon: %v", got)
	}
	a.quiet(t)
	b.quiet(t)
	b.cancel()
	if got := a.next(t); len(got) != 0 {
		t.Fatalf("a after b left: %v", got)
	}
}

// TestJoinRefusals: a station in an area the certificate does not serve,
// coordinates that are no place, no stations, an agent's certificate.
func TestJoinRefusals(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	gw := w.client(pki.Identity{Role: pki.RoleGateway, Name: "gw-a", Areas: []string{"cell-a"}})
	for _, tc := range []struct {
		name     string
		stations []Station
		want     string
	}{
		{"another area", []Station{{Area: "cell-z", Lat: 1, Lon: 1}}, "PermissionDenied"},
		{"not a place", []Station{{Area: "cell-a", Lat: 91, Lon: 1}}, "InvalidArgument"},
		{"NaN", []Station{{Area: "cell-a", Lat: math.NaN(), Lon: 1}}, "InvalidArgument"},
		{"no stations", nil, "InvalidArgument"},
	} {
		err := gw.Join(ctx, tc.stations, "gw-a:7700", func([]Neighbour) {})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	agent := w.client(pki.Identity{Role: pki.RoleAgent, Name: "m", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err := agent.Join(ctx, []Station{{Area: "cell-a"}}, "x:1", func([]Neighbour) {}); err == nil {
		t.Fatal("an agent joined")
	}
}

// TestDistance: Paris to Lyon is 392 km; 0.0408° of longitude at Paris
// is 3 km.
func TestDistance(t *testing.T) {
	if d := Distance(parisLat, parisLon, lyonLat, lyonLon); math.Abs(d-391_500) > 2_000 {
		t.Fatalf("Paris–Lyon %.0f m", d)
	}
	if d := Distance(parisLat, parisLon, parisLat, eastLon); math.Abs(d-3_000) > 100 {
		t.Fatalf("3 km east: %.0f m", d)
	}
}
