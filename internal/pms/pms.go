// Package pms is DESIGN.md's proxy management service, neighbours scheme
// A: gateways register the locations of their base stations and are told
// which other gateways are their potential handoff neighbours — and told
// again whenever that set changes (a gateway joins, moves a station, or
// leaves). gRPC over mutual TLS (internal/pki); it runs beside the
// security server in espep secserver (--pms), as a separate service.
//
// The rule: two gateways are neighbours when a base station of one is
// within Radius of a base station of the other (great-circle distance).
// A distance is what an operator can reason about and set from cell sizes
// (a mobile cannot move between stations farther apart than two cell
// radii); Delaunay adjacency needs no parameter but joins stations
// across any gap — two villages 50 km apart with nothing between are
// "adjacent" — and changes non-locally when one station is added, which
// would re-provision gateways far from the change. The service keeps its
// registry in memory: a restarted service rebuilds it as the gateways
// reconnect (they do so at once, and a registration outlives its stream
// by Grace for exactly that).
//
// It is not the handoff itself (gateway to gateway) nor scheme B
// (multicast probes, internal/mcast).
package pms

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/pms/pb"
	"github.com/espep/espep/internal/rpcauth"
)

// Bounds on what one gateway registers.
const (
	MaxStations = 1024
	maxAddr     = 256
)

// Defaults.
const (
	DefaultRadius = 5000.0 // meters
	DefaultGrace  = 30 * time.Second
)

// Service is the proxy management service.
type Service struct {
	pb.UnimplementedProxyManagementServer
	verifier *pki.Verifier
	audit    *slog.Logger
	// Radius is the neighbour distance in meters, Grace how long a
	// registration outlives its last stream; set them before serving.
	Radius float64
	Grace  time.Duration
	now    func() time.Time

	mu      sync.Mutex
	members map[string]*member // by certificate name
	version uint64
}

// member is one gateway's registration.
type member struct {
	name     string
	addr     string
	stations []*pb.Station
	streams  int       // Join streams open
	leftAt   time.Time // when the last stream closed (zero while one is open)
	ch       chan struct{}
	sent     string // the last set sent, as a fingerprint
	sentAny  bool   // whether a set was sent on the newest stream
}

// New makes the service; callers are believed as verifier says, and
// refusals go to audit.
func New(verifier *pki.Verifier, audit *slog.Logger) *Service {
	return &Service{verifier: verifier, audit: audit, Radius: DefaultRadius, Grace: DefaultGrace, now: time.Now,
		members: map[string]*member{}}
}

// Attach adds the service to a gRPC server.
func (s *Service) Attach(g *grpc.Server) { pb.RegisterProxyManagementServer(g, s) }

// Join registers the caller's stations and streams its neighbour sets.
func (s *Service) Join(req *pb.JoinRequest, stream pb.ProxyManagement_JoinServer) error {
	ctx := stream.Context()
	id, who, err := rpcauth.Caller(ctx, s.verifier, s.now(), s.audit, "join", pki.RoleGateway)
	if err != nil {
		return err
	}
	if err := s.check(id, req); err != nil {
		s.audit.Warn("refused", "call", "join", "who", who, "why", err.Error())
		return err
	}
	m := s.join(id.Name, req)
	defer s.leave(m)
	s.audit.Info("joined", "who", who, "stations", len(req.GetStations()), "handoff_addr", req.GetHandoffAddr())
	for {
		if set := s.setFor(m); set != nil {
			if err := stream.Send(set); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.ch:
		}
	}
}

// check refuses what a gateway may not register.
func (s *Service) check(id pki.Identity, req *pb.JoinRequest) error {
	if len(req.GetStations()) == 0 || len(req.GetStations()) > MaxStations {
		return status.Errorf(codes.InvalidArgument, "%d stations: want 1 to %d", len(req.GetStations()), MaxStations)
	}
	if a := req.GetHandoffAddr(); a == "" || len(a) > maxAddr {
		return status.Error(codes.InvalidArgument, "a handoff address (host:port) is needed")
	}
	for i, st := range req.GetStations() {
		lat, lon := st.GetLatitude(), st.GetLongitude()
		if math.IsNaN(lat) || math.IsNaN(lon) || lat < -90 || lat > 90 || lon < -180 || lon > 180 {
			return status.Errorf(codes.InvalidArgument, "station %d: %g, %g is not a place", i, lat, lon)
		}
		if !id.Serves(st.GetArea()) {
			return status.Errorf(codes.PermissionDenied, "station %d: area %q is not one %s serves", i, st.GetArea(), id.Name)
		}
	}
	return nil
}

// join records a registration (replacing the gateway's previous stations)
// and tells every member whose set it changes.
func (s *Service) join(name string, req *pb.JoinRequest) *member {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire()
	m := s.members[name]
	if m == nil {
		m = &member{name: name, ch: make(chan struct{}, 1)}
		s.members[name] = m
	}
	m.addr, m.stations = req.GetHandoffAddr(), slices.Clone(req.GetStations())
	m.streams++
	m.leftAt = time.Time{}
	m.sentAny = false // a new stream is sent the set at once
	s.changed()
	return m
}

// leave closes one of a member's streams; the registration stays Grace.
func (s *Service) leave(m *member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m.streams--
	if m.streams == 0 {
		m.leftAt = s.now()
	}
}

// Expire removes the registrations whose streams closed more than Grace
// ago, telling their neighbours; it reports how many went. Serve calls it
// periodically.
func (s *Service) Expire() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.expire()
	if n > 0 {
		s.changed()
	}
	return n
}

func (s *Service) expire() int {
	n := 0
	for name, m := range s.members {
		if m.streams == 0 && !m.leftAt.IsZero() && s.now().Sub(m.leftAt) > s.Grace {
			delete(s.members, name)
			s.audit.Info("left", "gateway", name)
			n++
		}
	}
	return n
}

// Run expires registrations every Grace/4 until ctx ends.
func (s *Service) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(s.Grace/4, 10*time.Millisecond)):
			s.Expire()
		}
	}
}

// changed wakes every member's stream; each sends its set if it differs
// from the last it sent. Called with mu held.
func (s *Service) changed() {
	s.version++
	for _, m := range s.members {
		select {
		case m.ch <- struct{}{}:
		default:
		}
	}
}

// setFor is m's neighbour set if it changed since the last sent, else nil.
func (s *Service) setFor(m *member) *pb.NeighbourSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := &pb.NeighbourSet{Version: s.version}
	for _, o := range s.members {
		if o == m {
			continue
		}
		if d, ok := s.nearest(m, o); ok {
			var areas []string
			for _, st := range o.stations {
				areas = append(areas, st.GetArea())
			}
			set.Neighbours = append(set.Neighbours, &pb.Neighbour{Gateway: o.name, HandoffAddr: o.addr, DistanceM: math.Round(d), Areas: areas})
		}
	}
	slices.SortFunc(set.Neighbours, func(a, b *pb.Neighbour) int { return strings.Compare(a.Gateway, b.Gateway) })
	var fp strings.Builder
	for _, n := range set.Neighbours {
		fmt.Fprintf(&fp, "%s|%s|%v;", n.Gateway, n.HandoffAddr, n.Areas)
	}
	if m.sentAny && fp.String() == m.sent {
		return nil
	}
	m.sent, m.sentAny = fp.String(), true
	return set
}

// nearest is the distance between the closest stations of m and o, and
// whether it is within the radius.
func (s *Service) nearest(m, o *member) (float64, bool) {
	best := math.Inf(1)
	for _, a := range m.stations {
		for _, b := range o.stations {
			best = min(best, Distance(a.GetLatitude(), a.GetLongitude(), b.GetLatitude(), b.GetLongitude()))
		}
	}
	return best, best <= s.Radius
}

// Distance is the great-circle distance in meters between two points
// (haversine, on a sphere of the Earth's mean radius).
func Distance(lat1, lon1, lat2, lon2 float64) float64 {
	const r = 6371008.8
	rad := math.Pi / 180
	dlat, dlon := (lat2-lat1)*rad, (lon2-lon1)*rad
	h := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dlon/2)*math.Sin(dlon/2)
	return 2 * r * math.Asin(math.Sqrt(min(1, h)))
}
