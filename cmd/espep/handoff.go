package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff"
	"github.com/espep/espep/internal/pki"
)

// handoffSetup is a gateway's part in handoffs: where it serves Take and
// Offer, and its neighbours (NAME@HOST:PORT), asked for a mobile whose
// flows it meets mid-stream; the TLS files are the gateway's certificate.
type handoffSetup struct {
	listen string
	peers  []string
	tls    gateway.SecServerConfig // Cert, Key, CA, CRL
}

// handoffOf is a gateway configuration's handoff part.
func handoffOf(fc *gateway.FileConfig) *handoffSetup {
	return &handoffSetup{listen: fc.HandoffListen, peers: fc.HandoffPeers, tls: fc.SecServer}
}

func (h *handoffSetup) enabled() bool { return h.listen != "" || len(h.peers) > 0 }

// check refuses a setup that cannot work.
func (h *handoffSetup) check() error {
	if !h.enabled() {
		return nil
	}
	if h.tls.Cert == "" || h.tls.Key == "" || h.tls.CA == "" {
		return fmt.Errorf("--handoff-listen and --handoff-peer need the gateway's certificate: --secserver-cert, --secserver-key and --secserver-ca")
	}
	for _, p := range h.peers {
		if name, addr, ok := strings.Cut(p, "@"); !ok || name == "" || addr == "" {
			return fmt.Errorf("--handoff-peer %q: want NAME@HOST:PORT (NAME: the neighbour's certificate name)", p)
		}
	}
	return nil
}

// start serves Take and Offer (taking offers from the neighbours only),
// has gw ask its neighbours for mobiles it meets mid-stream and offer them
// its SAs (handoff.Offerer), until ctx ends.
func (h *handoffSetup) start(ctx context.Context, gw *gateway.Gateway, log *slog.Logger) error {
	v, err := pki.LoadVerifier(h.tls.CA, h.tls.CRL)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	cert, err := pki.LoadTLS(h.tls.Cert, h.tls.Key)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	names := map[string]*handoff.Client{}
	var clients []*handoff.Client
	for _, p := range h.peers {
		name, addr, _ := strings.Cut(p, "@")
		c, err := handoff.Dial(addr, v.ClientTLS(cert, pki.RoleGateway))
		if err != nil {
			return err
		}
		context.AfterFunc(ctx, func() { c.Close() })
		names[name] = c
		clients = append(clients, c)
	}
	var a *handoff.Asker
	if len(clients) > 0 {
		a = &handoff.Asker{G: gw, Peers: clients, Neighbour: func(name string) *handoff.Client { return names[name] }, Log: log}
	}
	if h.listen != "" {
		ln, err := net.Listen("tcp", h.listen)
		if err != nil {
			return fmt.Errorf("handoff: %w", err)
		}
		g := grpc.NewServer(append(handoff.ServerOptions(), grpc.Creds(credentials.NewTLS(v.ServerTLS(cert, pki.RoleGateway))))...)
		srv := handoff.NewServer(gw, v, log)
		srv.ServeOffers(gw, func(id pki.Identity) bool { return names[id.Name] != nil })
		if a != nil {
			srv.Arriving = a.Asking
		}
		srv.Attach(g)
		go g.Serve(ln)
		context.AfterFunc(ctx, g.Stop)
		log.Info("gateway: serving handoffs", "listen", ln.Addr().String(), "neighbours", len(clients))
	}
	if a != nil {
		gw.SetMissing(a.Missing)
		go (&handoff.Offerer{G: gw, Peers: names, Log: log}).Run(ctx)
	}
	return nil
}
