package secserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// Client is a gateway's or an agent's connection to the security server.
type Client struct {
	cc    *grpc.ClientConn
	api   pb.SecurityServerClient
	class pb.Class
}

// Dial connects to the server at addr with tlsCfg (pki.Verifier.ClientTLS).
// A gateway fetches in class (ClassWrite unless it asks for less).
func Dial(addr string, tlsCfg *tls.Config, class ipsec.Class) (*Client, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, fmt.Errorf("secserver: %w", err)
	}
	c := &Client{cc: cc, api: pb.NewSecurityServerClient(cc), class: pb.Class_CLASS_WRITE}
	if class == ipsec.ClassRead {
		c.class = pb.Class_CLASS_READ
	}
	return c, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Fetch returns the SAs between a and b the server gives this gateway
// (gateway.Fetcher). Each is checked as the ipsec package would build it.
func (c *Client) Fetch(ctx context.Context, a, b netip.Addr) ([]ipsec.Config, error) {
	r, err := c.api.Fetch(ctx, &pb.FetchRequest{A: a.AsSlice(), B: b.AsSlice(), Class: c.class})
	if err != nil {
		return nil, fmt.Errorf("secserver: fetch %v, %v: %w", a, b, err)
	}
	var out []ipsec.Config
	for _, s := range r.GetSas() {
		cfg, err := toConfig(s)
		if err != nil {
			return nil, fmt.Errorf("secserver: fetch %v, %v: sa %#08x: %w", a, b, s.GetSpi(), err)
		}
		out = append(out, cfg)
	}
	return out, nil
}

// Upload gives the server SAs of this endpoint (each with its class: the
// most it permits a proxy), from area.
func (c *Client) Upload(ctx context.Context, area string, sas []ipsec.Config) error {
	req := &pb.UploadRequest{Area: area}
	for i := range sas {
		if sas[i].Class != ipsec.ClassRead && sas[i].Class != ipsec.ClassWrite {
			return fmt.Errorf("secserver: upload: sa %#08x permits no proxy: it is not uploaded", sas[i].SPI)
		}
		req.Sas = append(req.Sas, toPB(&sas[i], sas[i].Class))
	}
	if _, err := c.api.Upload(ctx, req); err != nil {
		return fmt.Errorf("secserver: upload: %w", err)
	}
	return nil
}

// Withdraw takes SAs back.
func (c *Client) Withdraw(ctx context.Context, ids []ipsec.ID) error {
	req := &pb.WithdrawRequest{}
	for _, id := range ids {
		req.Ids = append(req.Ids, &pb.SAID{Spi: id.SPI, Dst: id.Dst.AsSlice(), Proto: id.Proto.String()})
	}
	if _, err := c.api.Withdraw(ctx, req); err != nil {
		return fmt.Errorf("secserver: withdraw: %w", err)
	}
	return nil
}

// Register returns this gateway instance's identifier.
func (c *Client) Register(ctx context.Context) (uint64, error) {
	r, err := c.api.Register(ctx, &pb.RegisterRequest{})
	if err != nil {
		return 0, fmt.Errorf("secserver: register: %w", err)
	}
	return r.GetGatewayId(), nil
}
