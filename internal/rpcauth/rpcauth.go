// Package rpcauth is what the control plane's gRPC services (security
// server, proxy management) and their clients share over mutual TLS
// (internal/pki): the caller of a call, its certificate chain checked
// again at every call — revocation and expiry since the handshake count —
// and its role one the call admits; and the client's connection to a
// service or a list of its replicas. It does not make TLS configurations
// (pki.Verifier does).
package rpcauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/pki"
)

// Chain is the certificate chain the caller presented, or nil.
func Chain(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
		return ti.State.PeerCertificates
	}
	return nil
}

// Caller is the verified identity of the caller of call, of one of
// roles, and who it is for logs ("name/serial"). A refusal is written to
// audit and returned as a gRPC status: Unauthenticated, or
// PermissionDenied for a certificate of another role.
func Caller(ctx context.Context, v *pki.Verifier, now time.Time, audit *slog.Logger, call string, roles ...pki.Role) (pki.Identity, string, error) {
	chain := Chain(ctx)
	who := "unknown"
	if len(chain) > 0 {
		who = fmt.Sprintf("%s/%s", chain[0].Subject.CommonName, chain[0].SerialNumber)
	}
	id, err := v.Verify(chain, now, x509.ExtKeyUsageClientAuth, roles...)
	if err != nil {
		audit.Warn("refused", "call", call, "who", who, "why", err.Error())
		code := codes.Unauthenticated
		if errors.Is(err, pki.ErrWrongRole) {
			code = codes.PermissionDenied
		}
		return pki.Identity{}, who, status.Error(code, err.Error())
	}
	return id, who, nil
}

// Dial makes a client connection to a control-plane service at addr over
// tlsCfg (pki.Verifier.ClientTLS). addr may list replicas,
// comma-separated: the connection uses the first that answers and moves
// to another when it goes (gRPC's pick_first over the list).
func Dial(addr string, tlsCfg *tls.Config, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}, extra...)
	target := addr
	if strings.Contains(addr, ",") {
		var st resolver.State
		for _, a := range strings.Split(addr, ",") {
			if a = strings.TrimSpace(a); a != "" {
				st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
			}
		}
		r := manual.NewBuilderWithScheme("espep-replicas")
		r.InitialState(st)
		opts = append(opts, grpc.WithResolvers(r))
		target = "espep-replicas:///control"
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return cc, nil
}
