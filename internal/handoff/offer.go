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
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/rpcauth"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// Bounds on one offer.
const (
	MaxOffer      = 256     // SAs, and IKE SAs
	maxOfferBytes = 1 << 20 // native text
	maxIKEBytes   = 4096    // one IKE SA's key file
)

// Provisioner keeps SAs neighbours offer (*gateway.Gateway is one).
type Provisioner interface {
	Provision(from string, cfgs []ipsec.Config, ttl time.Duration, now time.Time) error
}

// IKEProvisioner keeps the IKE SA keys neighbours offer, each for ttl
// unless its IKE SA's traffic comes (*gateway.IKESAs is one).
type IKEProvisioner interface {
	ProvisionIKE(from string, keys []ikefollow.KeyedSA, ttl time.Duration) error
}

// ServeIKEOffers makes the server also take the IKE SA keys offered (to
// gateways that follow IKE); without it they are ignored.
func (s *Server) ServeIKEOffers(p IKEProvisioner) { s.ikeProv = p }

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
	ikeKeys, err := offeredIKE(req.GetIke())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "offer: %v", err)
	}
	defer func() {
		for i := range ikeKeys {
			ikeKeys[i].Keys.Wipe()
		}
	}()
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second // bounded by the gateway (Provision, ProvisionIKE)
	if err := s.prov.Provision(id.Name, cfgs, ttl, time.Now()); err != nil {
		s.audit.Warn("offer: some SAs not taken", "who", who, "err", err.Error())
	}
	ike := 0
	if s.ikeProv != nil && len(ikeKeys) > 0 {
		if err := s.ikeProv.ProvisionIKE(id.Name, ikeKeys, ttl); err != nil {
			s.audit.Warn("offer: some IKE SA keys not taken", "who", who, "err", err.Error())
		}
		ike = len(ikeKeys)
	}
	s.audit.Info("provisioned", "from", who, "sas", len(cfgs), "ike-sas", ike, "ttl", ttl.String())
	return &pb.OfferReply{Taken: uint32(len(cfgs) + ike)}, nil
}

// offeredIKE reads the IKE SAs of an offer: each one key file of one
// block, with its SPIs. A bad one refuses the offer (wiping what was
// read).
func offeredIKE(in []*pb.OfferedIKE) ([]ikefollow.KeyedSA, error) {
	if len(in) > MaxOffer {
		return nil, fmt.Errorf("%d IKE SAs in one offer: at most %d", len(in), MaxOffer)
	}
	var out []ikefollow.KeyedSA
	fail := func(err error) ([]ikefollow.KeyedSA, error) {
		for i := range out {
			out[i].Keys.Wipe()
		}
		return nil, err
	}
	for i, o := range in {
		if len(o.GetKeys()) > maxIKEBytes {
			return fail(fmt.Errorf("IKE SA %d: %d bytes of keys: at most %d", i, len(o.GetKeys()), maxIKEBytes))
		}
		ks, err := ikefollow.ParseKeyFile(bytes.NewReader(o.GetKeys()), fmt.Sprintf("offer ike %d", i))
		if err != nil {
			return fail(err)
		}
		if len(ks) != 1 || ks[0].SPIi == 0 || ks[0].SPIr == 0 {
			for j := range ks {
				ks[j].Wipe()
			}
			return fail(fmt.Errorf("IKE SA %d: want one key set with its SPIs, got %d", i, len(ks)))
		}
		out = append(out, ikefollow.KeyedSA{Keys: ks[0], Encap: o.GetEncap()})
	}
	return out, nil
}

// Offer gives the gateway at the other end SAs, and IKE SAs' keys (ike:
// SPIs set), to keep for ttl.
func (c *Client) Offer(ctx context.Context, sas []ipsec.Config, ike []ikefollow.KeyedSA, ttl time.Duration) error {
	var b strings.Builder
	if err := safile.WriteNative(&b, sas); err != nil {
		return fmt.Errorf("handoff: offer: %w", err)
	}
	req := &pb.OfferRequest{Sas: []byte(b.String()), TtlSeconds: uint32(ttl / time.Second)}
	for _, k := range ike {
		text := ikefollow.AppendKeyFile(nil, k.Keys)
		req.Ike = append(req.Ike, &pb.OfferedIKE{Keys: text, Encap: k.Encap})
	}
	_, err := c.api.Offer(ctx, req)
	for _, o := range req.Ike {
		clear(o.Keys)
	}
	if err != nil {
		return fmt.Errorf("handoff: offer: %w", err)
	}
	return nil
}
