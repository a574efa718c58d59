package lab

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/ipsec"
)

// labServer is the security server of a FromServer network: in process,
// with its CA and store in a temporary directory. The mobile's agent
// uploads the SAs once the gateway watches; the gateway has them pushed.
type labServer struct {
	dir     string
	local   *secserver.Local
	clients []*secserver.Client
	cancel  context.CancelFunc
	// SAReady is how long the SAs took from the agent's upload to the
	// gateway's SAD; first and sealed are when the gateway saw its first
	// packet and when it first re-sealed one (unix nanoseconds).
	SAReady       time.Duration
	first, sealed atomic.Int64
}

func startLabServer(g *gateway.Gateway, cfg NetConfig, wm, mw ipsec.Config) (s *labServer, err error) {
	s = &labServer{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.dir, err = os.MkdirTemp("", "espep-lab-secserver-"); err != nil {
		return nil, err
	}
	if s.local, err = secserver.StartLocal(s.dir, io.Discard); err != nil {
		return nil, err
	}
	class := ipsec.ClassWrite
	if cfg.Read {
		class = ipsec.ClassRead
	}
	gw, err := s.local.Client(pki.Identity{Role: pki.RoleGateway, Name: "lab-gateway", Areas: []string{"lab"}}, class)
	if err != nil {
		return nil, err
	}
	s.clients = append(s.clients, gw)
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(context.Background())
	src := gateway.NewServerSAs(g, gw, gateway.ServerOptions{})
	go src.Run(ctx)
	go src.Watch(ctx, gw)
	if err := until(func() bool { return src.Stats().Pushes > 0 }); err != nil {
		return nil, errors.New("the gateway never watched the security server")
	}
	agent, err := s.local.Client(pki.Identity{Role: pki.RoleAgent, Name: "lab-mobile", Addrs: []netip.Addr{mobileOuter, mobileHost}}, ipsec.ClassWrite)
	if err != nil {
		return nil, err
	}
	s.clients = append(s.clients, agent)
	wm.Class, mw.Class = class, class
	t0 := time.Now()
	if err := agent.Upload(ctx, "lab", []ipsec.Config{wm, mw}); err != nil {
		return nil, err
	}
	if err := until(func() bool { return src.Stats().Installed >= 2 }); err != nil {
		return nil, errors.New("the SAs never reached the gateway")
	}
	s.SAReady = time.Since(t0)
	go s.pollSealed(ctx, g)
	return s, nil
}

// until polls cond for up to 10 s.
func until(cond func() bool) error {
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
	}
	return nil
}

// watchFirst is the gateway's Process, noting when the first packet came.
func (s *labServer) watchFirst(g *gateway.Gateway) func(engine.Side, []byte) {
	return func(from engine.Side, pkt []byte) {
		s.first.CompareAndSwap(0, time.Now().UnixNano())
		g.Process(from, pkt)
	}
}

// pollSealed notes when the gateway first re-sealed a packet.
func (s *labServer) pollSealed(ctx context.Context, g *gateway.Gateway) {
	for ctx.Err() == nil {
		if g.Stats().Sealed > 0 {
			s.sealed.Store(time.Now().UnixNano())
			return
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// firstSeal is how long after the first packet the gateway first
// re-sealed one (0: not yet).
func (s *labServer) firstSeal() time.Duration {
	f, x := s.first.Load(), s.sealed.Load()
	if f == 0 || x == 0 {
		return 0
	}
	return time.Duration(x - f)
}

func (s *labServer) close() {
	if s.cancel != nil {
		s.cancel()
	}
	for _, c := range s.clients {
		c.Close()
	}
	if s.local != nil {
		s.local.Close()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
