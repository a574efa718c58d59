package handoff

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/handoff/pb"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/rpcauth"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// Bounds on one offer.
const (
	MaxOffer      = 256     // SAs
	maxOfferBytes = 1 << 20 // native text
)

// Provisioner keeps SAs neighbours offer (*gateway.Gateway is one).
type Provisioner interface {
	Provision(from string, cfgs []ipsec.Config, ttl time.Duration, now time.Time) error
}

// ServeOffers makes the server take offers into p from the gateways allow
// admits (nil: any gateway of the CA) — a gateway's neighbours, as the
// proxy management service or discovery names them.
func (s *Server) ServeOffers(p Provisioner, allow func(pki.Identity) bool) {
	s.prov, s.allow = p, allow
}

// Offer takes a neighbour's SAs.
func (s *Server) Offer(ctx context.Context, req *pb.OfferRequest) (*pb.OfferReply, error) {
	id, who, err := rpcauth.Caller(ctx, s.verifier, time.Now(), s.audit, "offer", pki.RoleGateway)
	if err != nil {
		return nil, err
	}
	if s.prov == nil {
		return nil, status.Error(codes.Unimplemented, "this gateway takes no offers")
	}
	if s.allow != nil && !s.allow(id) {
		s.audit.Warn("refused", "call", "offer", "who", who, "why", "not a neighbour")
		return nil, status.Errorf(codes.PermissionDenied, "%s is not a neighbour of this gateway", id.Name)
	}
	if len(req.GetSas()) > maxOfferBytes {
		return nil, status.Errorf(codes.InvalidArgument, "an offer of %d bytes: at most %d", len(req.GetSas()), maxOfferBytes)
	}
	cfgs, err := safile.ParseNative(bytes.NewReader(req.GetSas()), "offer")
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "offer: %v", err)
	}
	defer func() {
		for i := range cfgs {
			cfgs[i].WipeKeys()
		}
	}()
	if len(cfgs) > MaxOffer {
		return nil, status.Errorf(codes.InvalidArgument, "%d SAs in one offer: at most %d", len(cfgs), MaxOffer)
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if err := s.prov.Provision(id.Name, cfgs, ttl, time.Now()); err != nil {
		s.audit.Warn("offer: some SAs not taken", "who", who, "err", err.Error())
	}
	s.audit.Info("provisioned", "from", who, "sas", len(cfgs), "ttl", ttl.String())
	return &pb.OfferReply{Taken: uint32(len(cfgs))}, nil
}

// Offer gives the gateway at the other end SAs to keep for ttl.
func (c *Client) Offer(ctx context.Context, sas []ipsec.Config, ttl time.Duration) error {
	var b strings.Builder
	if err := safile.WriteNative(&b, sas); err != nil {
		return fmt.Errorf("handoff: offer: %w", err)
	}
	if _, err := c.api.Offer(ctx, &pb.OfferRequest{Sas: []byte(b.String()), TtlSeconds: uint32(ttl / time.Second)}); err != nil {
		return fmt.Errorf("handoff: offer: %w", err)
	}
	return nil
}
