package secserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/rpcauth"
	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// Client is a gateway's or an agent's connection to the security server.
type Client struct {
	cc    *grpc.ClientConn
	api   pb.SecurityServerClient
	class pb.Class
	// OnIKE, if set before the first Fetch or Watch, is given the IKE SA
	// keys the server releases with a pair's SAs (scheme 2); the keys are
	// the callee's to keep and wipe. Without it they are wiped unread.
	OnIKE func(ikev2.Keys)
}

// Dial connects to the server at addr with tlsCfg (pki.Verifier.ClientTLS).
// A gateway fetches in class (ClassWrite unless it asks for less). addr
// may list replicas, comma-separated: the client uses the first that
// answers and moves to another when it goes (gRPC's pick_first over the
// list); every replica is verified by its certificate as one would be.
func Dial(addr string, tlsCfg *tls.Config, class ipsec.Class) (*Client, error) {
	cc, err := rpcauth.Dial(addr, tlsCfg)
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
	c.takeIKE(r.GetIke())
	return out, nil
}

// takeIKE hands released IKE keys to OnIKE (a bad entry is skipped: the
// server checked it).
func (c *Client) takeIKE(xs []*pb.IKEKeys) {
	for _, x := range xs {
		u, err := ikeFromPB(x)
		if err != nil {
			continue
		}
		if c.OnIKE == nil {
			u.Keys.Wipe()
			continue
		}
		c.OnIKE(u.Keys)
	}
}

// UploadIKE gives the server the keys of IKE SAs of this endpoint, from
// area (scheme 2).
func (c *Client) UploadIKE(ctx context.Context, area string, us []IKEUpload) error {
	req := &pb.UploadIKERequest{Area: area}
	for i := range us {
		req.Keys = append(req.Keys, ikeToPB(&us[i]))
	}
	defer func() {
		for _, x := range req.Keys {
			for _, b := range [][]byte{x.SkD, x.SkAi, x.SkAr, x.SkEi, x.SkEr} {
				clear(b)
			}
		}
	}()
	if _, err := c.api.UploadIKE(ctx, req); err != nil {
		return fmt.Errorf("secserver: upload ike: %w", err)
	}
	return nil
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

// Watch streams the SAs of the gateway's areas to apply until ctx ends or
// the stream breaks: first everything stored (whole true), then each
// change. It returns why the stream ended.
func (c *Client) Watch(ctx context.Context, apply func(add []ipsec.Config, remove []ipsec.ID, whole bool)) error {
	st, err := c.api.Watch(ctx, &pb.WatchRequest{Class: c.class})
	if err != nil {
		return fmt.Errorf("secserver: watch: %w", err)
	}
	for whole := true; ; whole = false {
		ev, err := st.Recv()
		if err != nil {
			return fmt.Errorf("secserver: watch: %w", err)
		}
		var add []ipsec.Config
		for _, s := range ev.GetSas() {
			cfg, err := toConfig(s)
			if err != nil {
				return fmt.Errorf("secserver: watch: sa %#08x: %w", s.GetSpi(), err)
			}
			add = append(add, cfg)
		}
		c.takeIKE(ev.GetIke())
		var remove []ipsec.ID
		for _, x := range ev.GetRemoved() {
			if strings.HasPrefix(x.GetProto(), IKEProtoPrefix) {
				continue // IKE keys withdrawn: the follower forgets them with their IKE SA
			}
			dst, ok := netip.AddrFromSlice(x.GetDst())
			if !ok {
				return fmt.Errorf("secserver: watch: a removal without a destination")
			}
			proto := ipsec.ESP
			if x.GetProto() == "ah" {
				proto = ipsec.AH
			}
			remove = append(remove, ipsec.ID{SPI: x.GetSpi(), Dst: dst, Proto: proto})
		}
		apply(add, remove, whole)
	}
}

// Heartbeat renews the lease of gateway identifier id, naming the SAs it
// numbers; it returns how long the lease lasts.
func (c *Client) Heartbeat(ctx context.Context, id uint64, numbered []ipsec.ID) (time.Duration, error) {
	req := &pb.HeartbeatRequest{GatewayId: id}
	for _, x := range numbered {
		req.Numbered = append(req.Numbered, &pb.SAID{Spi: x.SPI, Dst: x.Dst.AsSlice(), Proto: x.Proto.String()})
	}
	r, err := c.api.Heartbeat(ctx, req)
	if status.Code(err) == codes.PermissionDenied {
		return 0, notRegistered{fmt.Errorf("secserver: heartbeat: %w", err)}
	}
	if err != nil {
		return 0, fmt.Errorf("secserver: heartbeat: %w", err)
	}
	return time.Duration(r.GetLeaseMs()) * time.Millisecond, nil
}

// Orders streams the agent's orders (the SAs to rekey, and why) to do
// until ctx ends or the stream breaks.
func (c *Client) Orders(ctx context.Context, do func(rekey []ipsec.ID, why string)) error {
	st, err := c.api.Orders(ctx, &pb.OrdersRequest{})
	if err != nil {
		return fmt.Errorf("secserver: orders: %w", err)
	}
	for {
		o, err := st.Recv()
		if err != nil {
			return fmt.Errorf("secserver: orders: %w", err)
		}
		var ids []ipsec.ID
		for _, x := range o.GetRekey() {
			if dst, ok := netip.AddrFromSlice(x.GetDst()); ok {
				proto := ipsec.ESP
				if x.GetProto() == "ah" {
					proto = ipsec.AH
				}
				ids = append(ids, ipsec.ID{SPI: x.GetSpi(), Dst: dst, Proto: proto})
			}
		}
		do(ids, o.GetWhy())
	}
}

// notRegistered is a heartbeat refused because the server does not know
// the identifier as this gateway's (it restarted: leases live in its
// memory); the gateway registers again (gateway.Leaser).
type notRegistered struct{ error }

func (notRegistered) NotRegistered() bool { return true }
func (e notRegistered) Unwrap() error     { return e.error }

// Want is an agent's request for a generated pair (scheme 4).
type Want struct {
	Local, Remote netip.Addr // one of the agent's addresses, and the peer
	Mode          ipsec.Mode // Transport or Tunnel
	Enc           ipsec.Enc  // EncNone: AES-GCM with a 128-bit key
	Integ         ipsec.Integ
	Class         ipsec.Class   // the most this endpoint permits a proxy
	Area          string        // where the endpoint is; "" keeps the pair's
	Lifetime      time.Duration // 0: the server's default
	Replace       []ipsec.ID    // a pair with any of these is replaced
}

// Generate returns the SA pair between w.Local and w.Remote the server
// made for it and the peer: out seals from Local, in opens toward it.
func (c *Client) Generate(ctx context.Context, w Want) (out, in ipsec.Config, err error) {
	req := &pb.GenerateRequest{Local: w.Local.AsSlice(), Remote: w.Remote.AsSlice(), Mode: w.Mode.String(),
		Area: w.Area, LifetimeSeconds: int64(w.Lifetime / time.Second), Class: pb.Class_CLASS_WRITE}
	if w.Enc != ipsec.EncNone {
		req.Enc = w.Enc.String()
	}
	if w.Integ != ipsec.IntegNone {
		req.Integ = w.Integ.String()
	}
	if w.Class == ipsec.ClassRead {
		req.Class = pb.Class_CLASS_READ
	}
	for _, x := range w.Replace {
		req.Replace = append(req.Replace, &pb.SAID{Spi: x.SPI, Dst: x.Dst.AsSlice(), Proto: x.Proto.String()})
	}
	r, err := c.api.Generate(ctx, req)
	if err != nil {
		return out, in, fmt.Errorf("secserver: generate %v → %v: %w", w.Local, w.Remote, err)
	}
	if out, err = toConfig(r.GetOut()); err == nil {
		in, err = toConfig(r.GetIn())
	}
	if err == nil && (out.Src != w.Local || out.Dst != w.Remote || in.Src != w.Remote || in.Dst != w.Local) {
		err = fmt.Errorf("the pair is between other addresses")
	}
	if err != nil {
		out.WipeKeys()
		in.WipeKeys()
		return ipsec.Config{}, ipsec.Config{}, fmt.Errorf("secserver: generate %v → %v: %w", w.Local, w.Remote, err)
	}
	return out, in, nil
}
