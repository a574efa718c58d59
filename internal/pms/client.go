package pms

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/espep/espep/internal/pms/pb"
	"github.com/espep/espep/internal/rpcauth"
)

// Station is a base station a gateway serves.
type Station struct {
	Area     string // its area (cell): one the gateway's certificate serves
	Lat, Lon float64
}

// Neighbour is another gateway the service says a mobile may move to.
type Neighbour struct {
	Gateway   string // its certificate's name
	Addr      string // where it takes handoff requests
	DistanceM float64
	Areas     []string
}

// Client is a gateway's connection to the service.
type Client struct {
	cc  *grpc.ClientConn
	api pb.ProxyManagementClient
}

// Dial connects to the service at addr (or a comma-separated list of
// replicas) with tlsCfg (pki.Verifier.ClientTLS).
func Dial(addr string, tlsCfg *tls.Config) (*Client, error) {
	cc, err := rpcauth.Dial(addr, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("pms: %w", err)
	}
	return &Client{cc: cc, api: pb.NewProxyManagementClient(cc)}, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Join registers the stations and handoff address, and calls apply with
// each neighbour set the service sends, until ctx ends or the stream
// breaks; it returns why.
func (c *Client) Join(ctx context.Context, stations []Station, handoffAddr string, apply func([]Neighbour)) error {
	req := &pb.JoinRequest{HandoffAddr: handoffAddr}
	for _, s := range stations {
		req.Stations = append(req.Stations, &pb.Station{Area: s.Area, Latitude: s.Lat, Longitude: s.Lon})
	}
	st, err := c.api.Join(ctx, req)
	if err != nil {
		return fmt.Errorf("pms: join: %w", err)
	}
	for {
		set, err := st.Recv()
		if err != nil {
			return fmt.Errorf("pms: join: %w", err)
		}
		var ns []Neighbour
		for _, n := range set.GetNeighbours() {
			ns = append(ns, Neighbour{Gateway: n.GetGateway(), Addr: n.GetHandoffAddr(), DistanceM: n.GetDistanceM(), Areas: n.GetAreas()})
		}
		apply(ns)
	}
}

// Follow joins until ctx ends, joining again when the stream breaks (1 s,
// doubling to 30 s; back to 1 s after a stream that delivered).
func (c *Client) Follow(ctx context.Context, stations []Station, handoffAddr string, log *slog.Logger, apply func([]Neighbour)) {
	backoff := time.Second
	for ctx.Err() == nil {
		got := false
		err := c.Join(ctx, stations, handoffAddr, func(ns []Neighbour) { got = true; apply(ns) })
		if ctx.Err() != nil {
			return
		}
		if got {
			backoff = time.Second
		}
		log.Warn("pms: joining again", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}
