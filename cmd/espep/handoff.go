package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff"
	"github.com/espep/espep/internal/mcast"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/pms"
)

// handoffSetup is a gateway's part in handoffs: where it serves Take and
// Offer, and its neighbours — fixed ones (NAME@HOST:PORT) and those the
// proxy management service names from its base stations' locations —
// asked for a mobile whose flows it meets mid-stream and offered its SAs;
// the TLS files are the gateway's certificate.
type handoffSetup struct {
	listen   string
	peers    []string
	pms      string
	stations []string
	// discover is the multicast group of neighbour discovery (scheme B),
	// with its TTL and interface.
	discover, discoverIface string
	discoverTTL             int
	tls                     gateway.SecServerConfig // Cert, Key, CA, CRL
}

// addHandoffFlags defines the handoff flags of espep gateway and espep
// linkem on fs, into h.
func addHandoffFlags(fs *flag.FlagSet, h *handoffSetup) {
	fs.StringVar(&h.listen, "handoff-listen", "", "serve handoffs (Take, Offer) to neighbour gateways at host:port (mutual TLS with the --secserver-cert certificate)")
	fs.Var((*stringList)(&h.peers), "handoff-peer", "a neighbour gateway, NAME@HOST:PORT, asked for a mobile whose flows meet this one mid-stream; repeatable")
	fs.StringVar(&h.pms, "pms", "", "the proxy management service at host:port (espep secserver --pms): neighbours from base-station locations, beside --handoff-peer")
	fs.Var((*stringList)(&h.stations), "station", "with --pms: a base station of this gateway, AREA@LATITUDE,LONGITUDE (an area its certificate serves); repeatable")
	fs.StringVar(&h.discover, "discover", "", "find neighbours by TTL-limited multicast on this group ADDR:PORT (answering others' probes, probing every 30 s), beside --handoff-peer and --pms")
	fs.IntVar(&h.discoverTTL, "discover-ttl", 2, "with --discover: the probes' TTL (each multicast router takes one)")
	fs.StringVar(&h.discoverIface, "discover-iface", "", "with --discover: the interface to join and probe on (default: as routed)")
}

// handoffOf is a gateway configuration's handoff part.
func handoffOf(fc *gateway.FileConfig) *handoffSetup {
	return &handoffSetup{listen: fc.HandoffListen, peers: fc.HandoffPeers, pms: fc.PMS, stations: fc.Stations,
		discover: fc.Discover, discoverTTL: fc.DiscoverTTL, discoverIface: fc.DiscoverIface, tls: fc.SecServer}
}

func (h *handoffSetup) enabled() bool {
	return h.listen != "" || len(h.peers) > 0 || h.pms != "" || h.discover != ""
}

// check refuses a setup that cannot work.
func (h *handoffSetup) check() error {
	if !h.enabled() {
		return nil
	}
	if h.tls.Cert == "" || h.tls.Key == "" || h.tls.CA == "" {
		return fmt.Errorf("--handoff-listen, --handoff-peer and --pms need the gateway's certificate: --secserver-cert, --secserver-key and --secserver-ca")
	}
	for _, p := range h.peers {
		if name, addr, ok := strings.Cut(p, "@"); !ok || name == "" || addr == "" {
			return fmt.Errorf("--handoff-peer %q: want NAME@HOST:PORT (NAME: the neighbour's certificate name)", p)
		}
	}
	if h.discover != "" {
		if _, err := netip.ParseAddrPort(h.discover); err != nil || h.listen == "" {
			return fmt.Errorf("--discover %q: want a multicast ADDR:PORT, and --handoff-listen (the address answers give)", h.discover)
		}
	}
	if h.pms != "" {
		if h.listen == "" || len(h.stations) == 0 {
			return fmt.Errorf("--pms needs --handoff-listen (the address neighbours are told; a host they reach, not a wildcard) and at least one --station")
		}
		if _, err := parseStations(h.stations); err != nil {
			return err
		}
	}
	return nil
}

// peerSources are the parts of a gateway's neighbour set — fixed
// (--handoff-peer), the proxy management service's, multicast
// discovery's — and the set they make together.
type peerSources struct {
	mu                sync.Mutex
	fixed, pms, mcast []handoff.Peer
	nb                *handoff.Neighbours
}

// update changes a part (with mu held) and sets the neighbours anew: the
// fixed first, then the service's, then discovery's (a name given twice
// keeps its first address).
func (s *peerSources) update(change func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if change != nil {
		change()
	}
	s.nb.Set(slices.Concat(s.fixed, s.pms, s.mcast))
}

// parseStations reads AREA@LAT,LON values.
func parseStations(vals []string) ([]pms.Station, error) {
	var out []pms.Station
	for _, v := range vals {
		area, pos, ok := strings.Cut(v, "@")
		lat, lon, ok2 := strings.Cut(pos, ",")
		s := pms.Station{Area: area}
		var err1, err2 error
		s.Lat, err1 = strconv.ParseFloat(strings.TrimSpace(lat), 64)
		s.Lon, err2 = strconv.ParseFloat(strings.TrimSpace(lon), 64)
		if !ok || !ok2 || area == "" || err1 != nil || err2 != nil || s.Lat < -90 || s.Lat > 90 || s.Lon < -180 || s.Lon > 180 {
			return nil, fmt.Errorf("--station %q: want AREA@LATITUDE,LONGITUDE (degrees)", v)
		}
		out = append(out, s)
	}
	return out, nil
}

// start serves Take and Offer (taking offers from the neighbours only),
// keeps the neighbour set (fixed, and the proxy management service's as
// it changes), has gw ask its neighbours for mobiles it meets mid-stream
// and offer them its SAs (handoff.Offerer), until ctx ends. With ike
// (nil: the gateway follows no IKE) the keys of the IKE SAs it follows
// are offered and taken too.
func (h *handoffSetup) start(ctx context.Context, gw *gateway.Gateway, ike *gateway.IKESAs, log *slog.Logger) error {
	v, err := pki.LoadVerifier(h.tls.CA, h.tls.CRL)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	cert, err := pki.LoadTLS(h.tls.Cert, h.tls.Key)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	src := &peerSources{nb: &handoff.Neighbours{TLS: v.ClientTLS(cert, pki.RoleGateway), Log: log}}
	for _, p := range h.peers {
		name, addr, _ := strings.Cut(p, "@")
		src.fixed = append(src.fixed, handoff.Peer{Name: name, Addr: addr})
	}
	nb := src.nb
	src.update(nil)
	context.AfterFunc(ctx, nb.Close)
	a := &handoff.Asker{G: gw, Peers: nb, Log: log}
	if h.listen != "" {
		ln, err := net.Listen("tcp", h.listen)
		if err != nil {
			return fmt.Errorf("handoff: %w", err)
		}
		g := grpc.NewServer(append(handoff.ServerOptions(), grpc.Creds(credentials.NewTLS(v.ServerTLS(cert, pki.RoleGateway))))...)
		srv := handoff.NewServer(gw, v, log)
		srv.ServeOffers(gw, func(id pki.Identity) bool { return nb.Has(id.Name) })
		if ike != nil {
			srv.ServeIKEOffers(ike)
		}
		srv.Arriving = a.Asking
		srv.Attach(g)
		go g.Serve(ln)
		context.AfterFunc(ctx, g.Stop)
		log.Info("gateway: serving handoffs", "listen", ln.Addr().String(), "neighbours", len(src.fixed))
	}
	if h.pms != "" {
		stations, _ := parseStations(h.stations) // checked
		c, err := pms.Dial(h.pms, v.ClientTLS(cert, pki.RoleServer))
		if err != nil {
			return fmt.Errorf("handoff: %w", err)
		}
		context.AfterFunc(ctx, func() { c.Close() })
		go c.Follow(ctx, stations, h.listen, log, func(ns []pms.Neighbour) {
			var peers []handoff.Peer
			for _, n := range ns {
				peers = append(peers, handoff.Peer{Name: n.Gateway, Addr: n.Addr})
			}
			src.update(func() { src.pms = peers })
			log.Info("gateway: neighbours from the proxy management service", "neighbours", len(ns), "in-use", len(nb.All()))
		})
	}
	if h.discover != "" {
		if cert.Leaf == nil {
			return errors.New("handoff: discovery: the gateway's certificate was not parsed")
		}
		id, err := pki.IdentityOf(cert.Leaf)
		if err != nil {
			return fmt.Errorf("handoff: discovery: %w", err)
		}
		group, _ := netip.ParseAddrPort(h.discover) // checked
		d := &handoff.Discovery{Config: mcast.Config{Group: group, Iface: h.discoverIface, Name: id.Name, Addr: h.listen, Log: log},
			TTL: h.discoverTTL, Log: log, Set: func(p []handoff.Peer) { src.update(func() { src.mcast = p }) }}
		go d.Run(ctx)
	}
	gw.SetMissing(a.Missing)
	o := &handoff.Offerer{G: gw, Peers: nb, Log: log}
	if ike != nil {
		o.IKE = ike
	}
	go o.Run(ctx)
	return nil
}
