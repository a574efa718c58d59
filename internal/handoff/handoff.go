// Package handoff moves a mobile from one gateway to the next over the
// network (DESIGN.md, handoff): the new gateway calls Take on the old one,
// which stops acting on the mobile (gateway.HandOver) and streams what the
// new one resumes from (gateway.Resume): the SAs' counters and replay
// windows and the flows' bindings first, then the engine's flows —
// sequence and window state, options, scoreboard, buffered bytes — in
// chunks the new gateway imports as they come. gRPC over mutual TLS; both
// ends must hold gateway certificates of one CA (internal/pki), so flow
// state — the flows' plaintext — only ever crosses an authenticated,
// encrypted channel.
//
// Encoding (chunks.go): encoding/gob of Part, versions 1 and 2 — in 2 a
// part's buffered bytes follow it in pieces instead of inside it. gob is
// fast for what a part holds (JSON took four times as long) but is not
// hardened against hostile input beyond bounding what it allocates by
// what it reads; it only ever reads what an authenticated gateway sent,
// in chunks of at most maxMessage, and the fuzz targets FuzzDecodeChunk
// and FuzzAssemble hold decoding and importing to "an error, never a
// panic".
//
// Offer (offer.go) pre-provisions: a gateway gives its neighbours the
// SAs it obtained, which they keep with their provenance; Offerer
// (offerer.go) decides what to offer whom, and when. Asker (asker.go)
// asks the provenance gateway, then the other neighbours, when a mobile's
// flows appear mid-stream.
//
// Neighbours (neighbours.go) is the set a gateway asks, offers to and
// takes offers from, as fixed peers, the proxy management service's
// pushes and multicast discovery (discovery.go) make it.
//
// Not done, by choice: the old gateway does not forward its stragglers —
// packets that reach it after it handed a mobile over — to the new one;
// it drops them and the endpoints' TCP resends them (few: the new gateway
// keeps what arrives while it asks, and resends at once what was in
// flight on the old radio).
package handoff

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff/pb"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/rpcauth"
)

// MaxChunk bounds the flows of one part (their buffered bytes included;
// well under gRPC's default message limit of 4 MiB); a flow larger than
// this goes alone in its part. Small enough that the new gateway imports
// one part while the old one sends the next (1 MiB measured best of 0.5,
// 1, 2 and 4 MiB, with version 1).
const MaxChunk = 1 << 20

// maxMessage is what a client accepts in one chunk: in version 1 a flow
// holds at most the engine's per-flow buffer (two directions) and cache.
const maxMessage = 64 << 20

// Part is one chunk of a handoff: the first carries the SAs and the
// bindings, every one some flows.
type Part = gateway.Handoff

// Source is what a gateway hands over: everything of a mobile, removed
// from it (it no longer acts on it). *gateway.Gateway is one.
type Source interface {
	HandOver(mobile netip.Addr) gateway.Handoff
}

// EngineSource hands over an engine's flows whose radio end is the
// mobile (no SAs: plain TCP, or a test of the engine alone).
type EngineSource struct{ Engine *engine.Engine }

// HandOver exports and removes the mobile's flows.
func (s EngineSource) HandOver(mobile netip.Addr) gateway.Handoff {
	return gateway.Handoff{Flows: s.Engine.ExportWhere(func(_, radio netip.AddrPort) bool { return radio.Addr() == mobile }, true)}
}

// window is the HTTP/2 flow-control window of a handoff connection: a
// handoff is one burst of megabytes that must cross at once, not after
// gRPC's window (64 KiB at first) has grown to the path.
const window = 16 << 20

// ServerOptions are the gRPC server options a gateway serving Take uses.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(window), grpc.InitialConnWindowSize(window)}
}

// Server serves Take.
type Server struct {
	pb.UnimplementedHandoffServer
	verifier *pki.Verifier
	audit    *slog.Logger
	src      Source
	prov     Provisioner    // offer.go; nil: offers refused
	ikeProv  IKEProvisioner // offer.go; nil: offered IKE keys are not taken
	allow    func(pki.Identity) bool
	// Arriving, if set, reports a mobile this gateway is itself asking
	// for (Asker.Asking): it is arriving here, not leaving, so a Take of
	// it gets nothing — two gateways asking each other at once must not
	// both hand over.
	Arriving func(mobile netip.Addr) bool

	newest uint32 // the newest encoding served (0: Version); a test's old gateway
}

// NewServer makes the service over src.
func NewServer(src Source, verifier *pki.Verifier, audit *slog.Logger) *Server {
	return &Server{verifier: verifier, audit: audit, src: src}
}

// Attach adds the service to a gRPC server.
func (s *Server) Attach(g *grpc.Server) { pb.RegisterHandoffServer(g, s) }

// Take hands the caller a mobile's flows.
func (s *Server) Take(req *pb.TakeRequest, stream pb.Handoff_TakeServer) error {
	_, who, err := rpcauth.Caller(stream.Context(), s.verifier, time.Now(), s.audit, "take", pki.RoleGateway)
	if err != nil {
		return err
	}
	version := req.GetVersion()
	newest := cmp.Or(s.newest, Version)
	if version < 1 || version > newest {
		return status.Errorf(codes.FailedPrecondition, "flow encoding %d: this gateway speaks 1 to %d", version, newest)
	}
	mobile, ok := netip.AddrFromSlice(req.GetMobile())
	if !ok {
		return status.Error(codes.InvalidArgument, "want the mobile's address")
	}
	var h gateway.Handoff
	if s.Arriving != nil && s.Arriving(mobile.Unmap()) {
		s.audit.Info("not handed over: arriving here", "to", who, "mobile", mobile.String())
		return sendChunks(h, version, stream.Send)
	}
	h = s.src.HandOver(mobile.Unmap())
	s.audit.Info("handed over", "to", who, "mobile", mobile.String(), "flows", len(h.Flows), "sas", len(h.SAs), "encoding", version)
	return sendChunks(h, version, stream.Send)
}

// Client is a gateway's connection to another gateway's Handoff service.
type Client struct {
	cc  *grpc.ClientConn
	api pb.HandoffClient
}

// Dial connects to the gateway at addr with tlsCfg
// (pki.Verifier.ClientTLS, admitting gateways).
func Dial(addr string, tlsCfg *tls.Config) (*Client, error) {
	cc, err := rpcauth.Dial(addr, tlsCfg, grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return &Client{cc: cc, api: pb.NewHandoffClient(cc)}, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Take asks the gateway for the mobile; put is called with each part as
// it arrives (the caller resumes it: gateway.Resume, or an engine's
// Import of its flows), the SAs first, so the first flows resume before
// the last have crossed. It returns how many flows came. It asks in
// Version, and again in version 1 if the gateway speaks only that (one
// not yet upgraded).
func (c *Client) Take(ctx context.Context, mobile netip.Addr, put func(Part) error) (int, error) {
	n, err := c.take(ctx, mobile, Version, put)
	if n == 0 && status.Code(err) == codes.FailedPrecondition {
		n, err = c.take(ctx, mobile, 1, put)
	}
	return n, err
}

// take is Take in one encoding.
func (c *Client) take(ctx context.Context, mobile netip.Addr, version uint32, put func(Part) error) (int, error) {
	st, err := c.api.Take(ctx, &pb.TakeRequest{Mobile: mobile.AsSlice(), Version: version}, grpc.MaxCallRecvMsgSize(maxMessage))
	if err != nil {
		return 0, fmt.Errorf("handoff: take %v: %w", mobile, err)
	}
	a := assembler{version: version}
	n := 0
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			err = a.end()
			if err == nil {
				return n, nil
			}
		}
		if err != nil {
			return n, fmt.Errorf("handoff: take %v: %w", mobile, err)
		}
		part, whole, err := a.add(ch)
		if err != nil {
			return n, fmt.Errorf("handoff: take %v: %w", mobile, err)
		}
		if !whole {
			continue
		}
		if err := put(part); err != nil {
			return n, fmt.Errorf("handoff: take %v: %w", mobile, err)
		}
		n += len(part.Flows)
	}
}
