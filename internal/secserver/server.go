// Package secserver is the security server (DESIGN.md, the control
// plane): endpoints' agents delegate their SAs to it (scheme 3), and
// gateways fetch the SAs they may hold, over gRPC on mutual TLS
// (internal/pki). Who calls is the identity in the caller's certificate,
// checked again on every call (revocation and expiry included): an agent
// may upload and withdraw SAs only with an address it owns; a gateway
// gets an SA only if it serves the area the SA was uploaded from, never in
// a class above what the endpoint permitted, and a read grant never
// carries the integrity key. Every release of key material, and every
// refusal, goes to the audit log — never a key.
//
// The store is a bbolt file (store.go), or an etcd cluster shared by
// replicas (etcd.go), every record sealed under a key kept apart from it.
// Gateways are pushed their areas' SAs (watch.go) and keep leases whose
// lapse orders the agents to rekey (lease.go). Scheme 4: the server makes
// SA pairs for agents that ask (generate.go). Not built yet (issue 14):
// leases shared through etcd.
package secserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/rpcauth"
	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// MaxUpload is the most SAs one Upload or Withdraw may carry.
const MaxUpload = 64

// Server is the security server's service.
type Server struct {
	pb.UnimplementedSecurityServerServer
	store    Store
	verifier *pki.Verifier
	audit    *slog.Logger
	now      func() time.Time
	watchers watchers // gateways' streams (watch.go)
	// shared: a Feed tells the watchers of every change (Follow), so the
	// calls that make changes do not.
	shared atomic.Bool
	// following, for a store that is a Feed, is closed once Follow has
	// the feed in place, and made anew when the feed starts afresh after
	// a gap (watch.go); followed says it is closed. Under fmu.
	fmu       sync.Mutex
	following chan struct{}
	followed  bool
	leases    leases     // gateways' leases, agents' order streams (lease.go)
	genMu     sync.Mutex // one Generate at a time: the pair's first two requests make one pair
}

// New makes the service over store. Callers are believed as verifier
// says; audit receives one entry per release and per refusal. A store
// that is a Feed (shared by replicas) needs Follow too.
func New(store Store, verifier *pki.Verifier, audit *slog.Logger) *Server {
	s := &Server{store: store, verifier: verifier, audit: audit, now: time.Now}
	if _, ok := store.(Feed); ok {
		s.shared.Store(true)
		s.following = make(chan struct{})
	}
	return s
}

// Attach adds the service to a gRPC server.
func (s *Server) Attach(g *grpc.Server) { pb.RegisterSecurityServerServer(g, s) }

// Serve serves the service at addr on a gRPC server of its own, over
// mutual TLS with cert (a security server's), admitting the agents and
// gateways the verifier believes; it returns the address bound and the
// gRPC server (Stop or GracefulStop it).
func (s *Server) Serve(addr string, cert tls.Certificate) (string, *grpc.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("secserver: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(s.verifier.ServerTLS(cert, pki.RoleAgent, pki.RoleGateway))))
	s.Attach(g)
	go g.Serve(ln)
	return ln.Addr().String(), g, nil
}

// caller is the verified identity of the caller, of one of the roles
// (rpcauth.Caller: checked again now, a refusal audited).
func (s *Server) caller(ctx context.Context, call string, roles ...pki.Role) (pki.Identity, string, error) {
	return rpcauth.Caller(ctx, s.verifier, s.now(), s.audit, call, roles...)
}

// refuse audits and returns a refusal of one SA.
func (s *Server) refuse(call, who string, c *ipsec.Config, code codes.Code, why string) error {
	s.audit.Warn("refused", "call", call, "who", who, "spi", fmt.Sprintf("%#08x", c.SPI), "dst", c.Dst.String(), "why", why)
	return status.Errorf(code, "sa %#08x → %v: %s", c.SPI, c.Dst, why)
}

// owned refuses (audited) an agent acting for an SA none of whose
// addresses its certificate owns.
func (s *Server) owned(id pki.Identity, who, call string, c *ipsec.Config) error {
	if id.Owns(c.Src) || id.Owns(c.Dst) {
		return nil
	}
	return s.refuse(call, who, c, codes.PermissionDenied, fmt.Sprintf("neither %v nor %v belongs to %q", c.Src, c.Dst, id.Name))
}

func keyOf(c *ipsec.Config) SAKey {
	return SAKey{SPI: c.SPI, Dst: c.Dst, Proto: c.Proto.String()}
}

// Upload stores an agent's SAs.
func (s *Server) Upload(ctx context.Context, req *pb.UploadRequest) (*pb.UploadReply, error) {
	id, who, err := s.caller(ctx, "upload", pki.RoleAgent)
	if err != nil {
		return nil, err
	}
	if len(req.GetSas()) > MaxUpload {
		return nil, status.Errorf(codes.InvalidArgument, "%d SAs in one upload: at most %d", len(req.GetSas()), MaxUpload)
	}
	if a := req.GetArea(); a != "" && !validArea(a) {
		return nil, status.Errorf(codes.InvalidArgument, "area %q", a)
	}
	type ok struct {
		c   ipsec.Config
		rec Record
	}
	var take []ok
	for i, sa := range req.GetSas() {
		c, err := toConfig(sa)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "sa %d: %v", i, err)
		}
		if err := s.owned(id, who, "upload", &c); err != nil {
			return nil, err
		}
		b, err := proto.Marshal(toPB(&c, c.Class)) // as checked: a read SA without its integrity key
		if err != nil {
			return nil, status.Errorf(codes.Internal, "sa %d: %v", i, err)
		}
		rec := Record{SA: b, Area: req.GetArea(), Owner: who}
		if c.Lifetime.HardTime > 0 {
			rec.Expires = s.now().Add(c.Lifetime.HardTime)
		}
		// An SA another agent uploaded (the peer's, which owns the other
		// address) is not replaced by different keys: that would let an
		// endpoint spoil its peer's delegation. The same SA again is no
		// change.
		old, found, err := s.store.Get(keyOf(&c))
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		if found && old.Generated {
			return nil, s.refuse("upload", who, &c, codes.PermissionDenied, "the server generated this SA (scheme 4): it is not uploaded")
		}
		if found && nameOf(old.Owner) != nameOf(who) {
			if string(old.SA) != string(b) {
				return nil, s.refuse("upload", who, &c, codes.PermissionDenied, fmt.Sprintf("uploaded by %s with other keys", nameOf(old.Owner)))
			}
			continue
		}
		take = append(take, ok{c, rec})
	}
	for _, t := range take {
		if err := s.store.Put(keyOf(&t.c), [2]netip.Addr{t.c.Src, t.c.Dst}, t.rec); err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		s.audit.Info("stored", "who", who, "spi", fmt.Sprintf("%#08x", t.c.SPI), "dst", t.c.Dst.String(),
			"class", t.c.Class.String(), "area", t.rec.Area)
	}
	if len(take) > 0 && req.GetArea() != "" && !s.shared.Load() {
		ch := change{area: req.GetArea()}
		for _, t := range take {
			ch.recs = append(ch.recs, t.rec)
		}
		s.watchers.publish(ch)
	}
	return &pb.UploadReply{Stored: uint32(len(req.GetSas()))}, nil
}

// Withdraw removes SAs an agent could have uploaded.
func (s *Server) Withdraw(ctx context.Context, req *pb.WithdrawRequest) (*pb.WithdrawReply, error) {
	id, who, err := s.caller(ctx, "withdraw", pki.RoleAgent)
	if err != nil {
		return nil, err
	}
	if len(req.GetIds()) > MaxUpload {
		return nil, status.Errorf(codes.InvalidArgument, "%d SAs in one withdrawal: at most %d", len(req.GetIds()), MaxUpload)
	}
	var removed uint32
	for _, x := range req.GetIds() {
		dst, ok := netip.AddrFromSlice(x.GetDst())
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "destination of %d bytes", len(x.GetDst()))
		}
		k := SAKey{SPI: x.GetSpi(), Dst: dst, Proto: x.GetProto()}
		rec, found, err := s.store.Get(k)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		if !found {
			continue
		}
		if rec.IKE {
			if err := s.withdrawIKE(id, who, k, rec); err != nil {
				return nil, err
			}
			removed++
			continue
		}
		c, err := s.configOf(rec)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "stored sa: %v", err)
		}
		c.WipeKeys() // only its addresses are wanted here
		if err := s.owned(id, who, "withdraw", &c); err != nil {
			return nil, err
		}
		if nameOf(rec.Owner) != nameOf(who) {
			continue // the peer's agent uploaded it: it withdraws it
		}
		if err := s.store.Delete(k); err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		s.audit.Info("withdrawn", "who", who, "spi", fmt.Sprintf("%#08x", c.SPI), "dst", c.Dst.String())
		if !s.shared.Load() {
			s.watchers.publish(change{area: rec.Area, removed: []*pb.SAID{x}})
		}
		removed++
	}
	return &pb.WithdrawReply{Removed: removed}, nil
}

// Fetch gives a gateway the SAs between two addresses that it may hold.
func (s *Server) Fetch(ctx context.Context, req *pb.FetchRequest) (*pb.FetchReply, error) {
	id, who, err := s.caller(ctx, "fetch", pki.RoleGateway)
	if err != nil {
		return nil, err
	}
	a, okA := netip.AddrFromSlice(req.GetA())
	b, okB := netip.AddrFromSlice(req.GetB())
	if !okA || !okB {
		return nil, status.Error(codes.InvalidArgument, "want two addresses")
	}
	want := ipsec.ClassWrite
	if req.GetClass() == pb.Class_CLASS_READ {
		want = ipsec.ClassRead
	}
	recs, err := s.store.Pair(a, b)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	reply := &pb.FetchReply{}
	now := s.now()
	for _, rec := range recs {
		sa, k, err := s.release(id, who, "fetch", rec, want, now)
		if err != nil {
			return nil, err
		}
		if sa != nil {
			reply.Sas = append(reply.Sas, sa)
		}
		if k != nil {
			reply.Ike = append(reply.Ike, k)
		}
	}
	return reply, nil
}

// release is what gateway id may have of a stored record in class want:
// an SA (grant) or an IKE SA's keys (grantIKE), nil for neither, or a
// refusal (audited).
func (s *Server) release(id pki.Identity, who, call string, rec Record, want ipsec.Class, now time.Time) (*pb.SA, *pb.IKEKeys, error) {
	if rec.IKE {
		k, err := s.grantIKE(id, who, call, rec, want, now)
		return nil, k, err
	}
	sa, err := s.grant(id, who, call, rec, want, now)
	return sa, nil, err
}

// grant is what gateway id may have of a stored SA in class want (at
// most): nil for an expired one, the SA in the class it gets (audited as
// released), or a refusal (audited).
func (s *Server) grant(id pki.Identity, who, call string, rec Record, want ipsec.Class, now time.Time) (*pb.SA, error) {
	c, err := s.configOf(rec)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stored sa: %v", err)
	}
	defer c.WipeKeys()
	if rec.Generated {
		c.Class = min(c.Class, rec.Permit) // what the endpoints permitted; the store holds every key
	}
	switch {
	case !rec.Expires.IsZero() && !now.Before(rec.Expires):
		return nil, nil // expired: as if it were not there
	case !id.Serves(rec.Area):
		return nil, s.refuse(call, who, &c, codes.PermissionDenied, fmt.Sprintf("uploaded from area %q, which %q does not serve", rec.Area, id.Name))
	case want == ipsec.ClassRead && c.Enc.AEAD():
		return nil, s.refuse(call, who, &c, codes.PermissionDenied, fmt.Sprintf("class read for %v: an AEAD SA cannot be read without its integrity key", c.Enc))
	}
	class := min(want, c.Class) // never above what the endpoint permitted
	if class == ipsec.ClassRead && c.Enc.AEAD() {
		return nil, s.refuse(call, who, &c, codes.PermissionDenied, "the endpoint permits read only, and an AEAD SA cannot be read")
	}
	s.audit.Info("released", "call", call, "who", who, "spi", fmt.Sprintf("%#08x", c.SPI), "dst", c.Dst.String(), "class", class.String())
	return toPB(&c, class), nil
}

// configOf reads a stored record's SA.
func (s *Server) configOf(rec Record) (ipsec.Config, error) {
	var sa pb.SA
	if err := proto.Unmarshal(rec.SA, &sa); err != nil {
		return ipsec.Config{}, err
	}
	return toConfig(&sa)
}

// Register gives a gateway instance its identifier.
func (s *Server) Register(ctx context.Context, _ *pb.RegisterRequest) (*pb.RegisterReply, error) {
	_, who, err := s.caller(ctx, "register", pki.RoleGateway)
	if err != nil {
		return nil, err
	}
	gid, err := s.store.NextGatewayID()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	if err := s.leases.registered(gid, who); err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	s.audit.Info("registered", "who", who, "gateway_id", gid)
	return &pb.RegisterReply{GatewayId: gid}, nil
}

// validArea is pki's area grammar.
func validArea(a string) bool {
	return (pki.Identity{Role: pki.RoleGateway, Name: "x", Areas: []string{a}}).Validate() == nil
}
