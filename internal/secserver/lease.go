package secserver

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
)

// Leases and the crash bound. A gateway that numbers an SA runs ahead of
// the endpoint's own sequence numbers; if it vanishes, the endpoint's
// packets fall behind the receiver's replay window until the SA is
// replaced. So a registered gateway keeps a lease by heartbeats that name
// the SAs it numbers; when the lease lapses the server orders the agents
// of those SAs to rekey. The outage after a gateway crash is then bounded
// by the lease (plus the agent's rekey), not by the SA's lifetime.
//
// Leases live in the replica's memory, or, for replicas sharing an etcd
// cluster, in etcd (etcdlease.go), where every replica sees them.

// DefaultLease is how long a heartbeat keeps a gateway's lease.
const DefaultLease = 10 * time.Second

// maxNumbered bounds the SAs one heartbeat may name.
const maxNumbered = 4096

type lease struct {
	who      string // the certificate that registered the identifier
	until    time.Time
	numbered []*pb.SAID
}

// leases is the server's table of gateway leases and agents' order
// streams.
type leases struct {
	mu     sync.Mutex
	ttl    time.Duration
	byID   map[uint64]*lease
	owners map[uint64]string // identifier → who registered it (only they heartbeat it)
	agents map[*orderStream]bool
	// shared, when set (ShareLeases), keeps the leases and owners
	// instead of byID and owners: every replica sees them.
	shared LeaseStore
}

type orderStream struct {
	id pki.Identity
	ch chan *pb.Order
}

// SetLease sets how long a heartbeat keeps a lease (DefaultLease).
func (s *Server) SetLease(d time.Duration) {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	s.leases.ttl = d
}

func (l *leases) init() {
	if l.byID == nil {
		l.byID, l.owners, l.agents = map[uint64]*lease{}, map[uint64]string{}, map[*orderStream]bool{}
	}
	if l.ttl == 0 {
		l.ttl = DefaultLease
	}
}

// registered notes that who registered gateway identifier id.
func (l *leases) registered(id uint64, who string) error {
	l.mu.Lock()
	l.init()
	shared := l.shared
	if shared == nil {
		l.owners[id] = who
	}
	l.mu.Unlock()
	if shared != nil {
		return shared.Registered(id, who)
	}
	return nil
}

// Heartbeat renews a gateway's lease.
func (s *Server) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatReply, error) {
	_, who, err := s.caller(ctx, "heartbeat", pki.RoleGateway)
	if err != nil {
		return nil, err
	}
	if len(req.GetNumbered()) > maxNumbered {
		return nil, status.Errorf(codes.InvalidArgument, "%d SAs in one heartbeat: at most %d", len(req.GetNumbered()), maxNumbered)
	}
	l := &s.leases
	l.mu.Lock()
	l.init()
	shared, ttl := l.shared, l.ttl
	owner, known := l.owners[req.GetGatewayId()]
	l.mu.Unlock()
	if shared != nil {
		if owner, err = shared.Owner(req.GetGatewayId()); err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		known = owner != ""
	}
	// The certificate, not its serial: a gateway renewed with a new
	// certificate of the same name keeps its identifier.
	if !known || nameOf(owner) != nameOf(who) {
		return nil, status.Errorf(codes.PermissionDenied, "gateway identifier %d was not registered by %s", req.GetGatewayId(), nameOf(who))
	}
	if shared != nil {
		if err := shared.Beat(req.GetGatewayId(), who, req.GetNumbered(), ttl); err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		return &pb.HeartbeatReply{LeaseMs: ttl.Milliseconds()}, nil
	}
	l.mu.Lock()
	l.byID[req.GetGatewayId()] = &lease{who: who, until: s.now().Add(ttl), numbered: req.GetNumbered()}
	l.mu.Unlock()
	return &pb.HeartbeatReply{LeaseMs: ttl.Milliseconds()}, nil
}

// nameOf is the name part of "name/serial".
func nameOf(who string) string {
	for i := len(who) - 1; i >= 0; i-- {
		if who[i] == '/' {
			return who[:i]
		}
	}
	return who
}

// Orders streams an agent the rekeys its SAs need.
func (s *Server) Orders(_ *pb.OrdersRequest, stream pb.SecurityServer_OrdersServer) error {
	ctx := stream.Context()
	id, _, err := s.caller(ctx, "orders", pki.RoleAgent)
	if err != nil {
		return err
	}
	o := &orderStream{id: id, ch: make(chan *pb.Order, watchQueue)}
	l := &s.leases
	l.mu.Lock()
	l.init()
	l.agents[o] = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.agents, o)
		l.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ord := <-o.ch:
			if err := stream.Send(ord); err != nil {
				return err
			}
		}
	}
}

// Expire ends the leases that lapsed by now and orders the rekeys; it
// returns how many leases ended. Run calls it periodically.
func (s *Server) Expire(now time.Time) int {
	l := &s.leases
	l.mu.Lock()
	l.init()
	var lapsed []*lease
	for id, ls := range l.byID {
		if now.After(ls.until) {
			lapsed = append(lapsed, ls)
			delete(l.byID, id)
		}
	}
	agents := make([]*orderStream, 0, len(l.agents))
	for a := range l.agents {
		agents = append(agents, a)
	}
	l.mu.Unlock()
	for _, ls := range lapsed {
		s.audit.Warn("lease lapsed", "who", ls.who, "numbered", len(ls.numbered))
		s.order(agents, ls.numbered, fmt.Sprintf("the lease of gateway %s lapsed", nameOf(ls.who)))
	}
	return len(lapsed)
}

// order tells each of the agents to rekey those of ids it may act for.
func (s *Server) order(agents []*orderStream, ids []*pb.SAID, why string) {
	for _, a := range agents {
		var mine []*pb.SAID
		for _, x := range ids {
			if s.ownsSA(a.id, x) {
				mine = append(mine, x)
			}
		}
		if len(mine) == 0 {
			continue
		}
		select {
		case a.ch <- &pb.Order{Rekey: mine, Why: why}:
			s.audit.Info("rekey ordered", "agent", a.id.Name, "sas", len(mine), "why", why)
		default: // the agent is not reading: it reconnects and the SA expires by its lifetime
		}
	}
}

// orderAll is order to every agent listening.
func (s *Server) orderAll(ids []*pb.SAID, why string) {
	l := &s.leases
	l.mu.Lock()
	agents := make([]*orderStream, 0, len(l.agents))
	for a := range l.agents {
		agents = append(agents, a)
	}
	l.mu.Unlock()
	s.order(agents, ids, why)
}

// ownsSA reports whether agent id may act for the stored SA x.
func (s *Server) ownsSA(id pki.Identity, x *pb.SAID) bool {
	dst, ok := netip.AddrFromSlice(x.GetDst())
	if !ok {
		return false
	}
	rec, found, err := s.store.Get(SAKey{SPI: x.GetSpi(), Dst: dst, Proto: x.GetProto()})
	if err != nil || !found {
		return id.Owns(dst)
	}
	c, err := s.configOf(rec)
	if err != nil {
		return false
	}
	c.WipeKeys()
	return id.Owns(c.Src) || id.Owns(c.Dst)
}

// Run expires leases every quarter lease until ctx ends.
func (s *Server) Run(ctx context.Context) {
	for {
		s.leases.mu.Lock()
		s.leases.init()
		every := s.leases.ttl / 4
		s.leases.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
			s.Expire(s.now())
		}
	}
}
