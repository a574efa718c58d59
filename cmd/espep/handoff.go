package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff"
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
	tls      gateway.SecServerConfig // Cert, Key, CA, CRL
}

// handoffOf is a gateway configuration's handoff part.
func handoffOf(fc *gateway.FileConfig) *handoffSetup {
	return &handoffSetup{listen: fc.HandoffListen, peers: fc.HandoffPeers, pms: fc.PMS, stations: fc.Stations, tls: fc.SecServer}
}

func (h *handoffSetup) enabled() bool { return h.listen != "" || len(h.peers) > 0 || h.pms != "" }

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
// and offer them its SAs (handoff.Offerer), until ctx ends.
func (h *handoffSetup) start(ctx context.Context, gw *gateway.Gateway, log *slog.Logger) error {
	v, err := pki.LoadVerifier(h.tls.CA, h.tls.CRL)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	cert, err := pki.LoadTLS(h.tls.Cert, h.tls.Key)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	var fixed []handoff.Peer
	for _, p := range h.peers {
		name, addr, _ := strings.Cut(p, "@")
		fixed = append(fixed, handoff.Peer{Name: name, Addr: addr})
	}
	nb := &handoff.Neighbours{TLS: v.ClientTLS(cert, pki.RoleGateway), Log: log}
	nb.Set(fixed)
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
		srv.Arriving = a.Asking
		srv.Attach(g)
		go g.Serve(ln)
		context.AfterFunc(ctx, g.Stop)
		log.Info("gateway: serving handoffs", "listen", ln.Addr().String(), "neighbours", len(fixed))
	}
	if h.pms != "" {
		stations, _ := parseStations(h.stations) // checked
		c, err := pms.Dial(h.pms, v.ClientTLS(cert, pki.RoleServer))
		if err != nil {
			return fmt.Errorf("handoff: %w", err)
		}
		context.AfterFunc(ctx, func() { c.Close() })
		go c.Follow(ctx, stations, h.listen, log, func(ns []pms.Neighbour) {
			peers := slices.Clone(fixed)
			for _, n := range ns {
				peers = append(peers, handoff.Peer{Name: n.Gateway, Addr: n.Addr})
			}
			nb.Set(peers)
			log.Info("gateway: neighbours from the proxy management service", "neighbours", len(ns), "in-use", len(nb.All()))
		})
	}
	gw.SetMissing(a.Missing)
	go (&handoff.Offerer{G: gw, Peers: nb, Log: log}).Run(ctx)
	return nil
}
