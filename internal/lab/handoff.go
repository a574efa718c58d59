package lab

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/ipsec"
)

// cellGateways is the handoff machinery between the gateways of a
// network with several cells, as espep gateway runs it with
// --handoff-listen and --handoff-peer: a private CA in a temporary
// directory, one certificate per gateway, each gateway serving Take and
// Offer over mutual TLS on loopback, with its neighbours in the row
// (gateway i − 1 and i + 1) as the only peers it takes offers from,
// offers its SAs to (handoff.Offerer) and asks for a mobile it meets
// mid-stream (handoff.Asker; without transfer none is asked: the new
// gateway meets the mobile's flows mid-stream and relays them). Only
// gateway 0 starts with the SAs: the others have them from their
// neighbours.
type cellGateways struct {
	dir        string
	servers    []*grpc.Server
	neighbours []*handoff.Neighbours // each gateway's
	cancel     context.CancelFunc

	mu   sync.Mutex
	asks []ask // every handoff a gateway asked for, in order
}

// ask is one handoff: how many flows came, and how long it took from the
// first packet held to the last part resumed.
type ask struct {
	flows int
	took  time.Duration
}

// offerEvery is how often a lab gateway looks for SAs to offer: a cell
// lasts a second or so.
const offerEvery = 50 * time.Millisecond

func startCellGateways(gws []*gateway.Gateway, transfer bool) (c *cellGateways, err error) {
	c = &cellGateways{}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if c.dir, err = os.MkdirTemp("", "espep-lab-handoff-"); err != nil {
		return nil, err
	}
	ca, err := pki.Init(filepath.Join(c.dir, "ca"), "espep lab CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	v, err := pki.NewVerifier(ca.Cert, nil)
	if err != nil {
		return nil, err
	}
	name := func(i int) string { return fmt.Sprintf("gw-%d", i+1) }
	certs := make([]tls.Certificate, len(gws))
	addrs := make([]string, len(gws))
	askers := make([]*handoff.Asker, len(gws))
	for i, g := range gws {
		askers[i] = &handoff.Asker{G: g, Log: quietLog, Done: func(_ netip.Addr, flows int, took time.Duration) {
			c.mu.Lock()
			c.asks = append(c.asks, ask{flows, took})
			c.mu.Unlock()
		}}
		cp, kp, err := ca.Issue(pki.Identity{Role: pki.RoleGateway, Name: name(i), Areas: []string{"cell-" + name(i)}}, 24*time.Hour)
		if err != nil {
			return nil, err
		}
		if certs[i], err = tls.X509KeyPair(cp, kp); err != nil {
			return nil, err
		}
		srv := grpc.NewServer(append(handoff.ServerOptions(), grpc.Creds(credentials.NewTLS(v.ServerTLS(certs[i], pki.RoleGateway))))...)
		hs := handoff.NewServer(g, v, quietLog)
		hs.ServeOffers(g, func(id pki.Identity) bool { return id.Name == name(i-1) || id.Name == name(i+1) }) // the row
		hs.Arriving = askers[i].Asking
		hs.Attach(srv)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		go srv.Serve(ln)
		c.servers = append(c.servers, srv)
		addrs[i] = ln.Addr().String()
	}
	var ctx context.Context
	ctx, c.cancel = context.WithCancel(context.Background())
	for i, g := range gws {
		nb := &handoff.Neighbours{TLS: v.ClientTLS(certs[i], pki.RoleGateway), Log: quietLog}
		var peers []handoff.Peer
		for _, j := range []int{i - 1, i + 1} {
			if j >= 0 && j < len(gws) {
				peers = append(peers, handoff.Peer{Name: name(j), Addr: addrs[j]})
			}
		}
		nb.Set(peers)
		c.neighbours = append(c.neighbours, nb)
		if transfer {
			askers[i].Peers = nb
			g.SetMissing(askers[i].Missing)
		}
		go (&handoff.Offerer{G: g, Peers: nb, Every: offerEvery, Log: quietLog}).Run(ctx)
	}
	return c, nil
}

// provisioned waits until every gateway but the first holds the SAs of
// cfgs, offered along the row — the first from its own source, each next
// once the mobile's traffic reached the one before — and returns an error
// if one never does. Only gateway 1 can have them before traffic flows.
func provisioned(gws []*gateway.Gateway, cfgs []ipsec.Config) error {
	return until(func() bool {
		for _, c := range cfgs {
			if _, ok := gws[1].ProvenanceOf(c.ID()); !ok {
				return false
			}
		}
		return true
	})
}

// crash takes gateway i out as a crash would: its handoff service stops
// answering, and nothing reaches it or leaves it any more.
func (n *Net) crash(i int) {
	n.cells.servers[i].Stop()
	n.SetCellMiddle(i, func(engine.Side, []byte) {})
	n.Gateways[i].Close()
}

// taken returns the handoffs so far.
func (c *cellGateways) taken() []ask {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ask(nil), c.asks...)
}

func (c *cellGateways) close() {
	if c.cancel != nil {
		c.cancel()
	}
	for _, nb := range c.neighbours {
		nb.Close()
	}
	for _, s := range c.servers {
		s.Stop()
	}
	if c.dir != "" {
		os.RemoveAll(c.dir)
	}
}

// moveAcross moves the mobile from cell to cell, evenly over d from
// start — with three cells at a third and two thirds of it — and returns
// a function that waits for the moves and says when each happened.
func (n *Net) moveAcross(start time.Time, d time.Duration) (moved func() []time.Time) {
	cells := len(n.Radios)
	if cells < 2 {
		return func() []time.Time { return nil }
	}
	done := make(chan []time.Time, 1)
	go func() {
		var at []time.Time
		for k := 1; k < cells; k++ {
			time.Sleep(time.Until(start.Add(d * time.Duration(k) / time.Duration(cells))))
			n.Move(k)
			at = append(at, time.Now())
		}
		done <- at
	}()
	return func() []time.Time { return <-done }
}

// checkHandoffs finds what went wrong with the handoffs of a run in
// mode: a gateway past the first that never carried the mobile on (its
// flows were not handed to it, it relayed them), or an old one that
// still held flows when it was left.
func (n *Net) checkHandoffs(mode Mode) []error {
	if mode == ModeE2E {
		return nil
	}
	var errs []error
	if n.noTransfer {
		return nil
	}
	if asks := n.cells.taken(); len(asks) != len(n.Gateways)-1 {
		errs = append(errs, fmt.Errorf("%d handoffs for %d moves: %+v", len(asks), len(n.Gateways)-1, asks))
	}
	for i, g := range n.Gateways {
		st := g.Stats()
		if i > 0 && (st.Sealed == 0 || st.Engine.FlowsMax == 0) {
			errs = append(errs, fmt.Errorf("gateway %d never carried the mobile's flows (sealed %d, flows %d)", i+1, st.Sealed, st.Engine.FlowsMax))
		}
		if i < len(n.Gateways)-1 && g.Engine().Stats().Flows != 0 {
			errs = append(errs, fmt.Errorf("gateway %d kept %d flows after the mobile left", i+1, g.Engine().Stats().Flows))
		}
	}
	return errs
}

// minSecond is the least goodput (Mbit/s) over any second of series
// (bins of SampleEvery) from bin warm on, within elapsed.
func minSecond(series []float64, warm int, elapsed time.Duration) float64 {
	w := int(time.Second / SampleEvery)
	last := min(len(series), int(elapsed/SampleEvery)) // bins wholly within the flow
	least := -1.0
	for i := warm; i+w <= last; i++ {
		sum := 0.0
		for _, v := range series[i : i+w] {
			sum += v
		}
		if avg := sum / float64(w); least < 0 || avg < least {
			least = avg
		}
	}
	return max(least, 0)
}
