package secserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/rpcauth"
	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// Pushing to gateways: a gateway that calls Watch gets the SAs stored for
// the areas it serves, then every change to them as it happens. Each
// watcher has a queue of watchQueue events; one that falls behind is cut
// off (it reconnects and gets the whole state again) rather than holding
// memory or the uploader. The watcher's certificate is checked again
// before each event: a revocation ends the stream.

// watchQueue is the most events waiting for one watcher.
const watchQueue = 64

// watcher is one gateway's stream.
type watcher struct {
	id    pki.Identity
	who   string
	chain []*x509.Certificate
	want  ipsec.Class
	ch    chan change
	gone  chan struct{} // closed when the server cuts it off
	once  sync.Once
}

// change is an upload or a withdrawal in an area.
type change struct {
	area    string
	recs    []Record // uploaded
	removed []*pb.SAID
}

// watchers is the server's set of streams.
type watchers struct {
	mu  sync.Mutex
	set map[*watcher]bool
}

func (ws *watchers) add(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.set == nil {
		ws.set = map[*watcher]bool{}
	}
	ws.set[w] = true
}

func (ws *watchers) remove(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	delete(ws.set, w)
}

// publish queues c for every watcher serving its area, cutting off those
// whose queue is full.
func (ws *watchers) publish(c change) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.set {
		if !w.id.Serves(c.area) {
			continue
		}
		select {
		case w.ch <- c:
		default:
			w.once.Do(func() { close(w.gone) })
			delete(ws.set, w)
		}
	}
}

// cutAll cuts every watcher off (they reconnect for the whole state):
// what they would have been told may have been missed.
func (ws *watchers) cutAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.set {
		w.once.Do(func() { close(w.gone) })
		delete(ws.set, w)
	}
}

// Feed is a store several servers share whose changes each can follow
// (EtcdStore): a server on one tells its gateways of every replica's
// uploads and withdrawals, not only its own. Follow calls ready once it
// follows, then fn for each change after position from (0: from when it
// starts), until ctx ends or the feed breaks; it returns the position to
// go on from, or ErrFeedGap when changes since from are lost.
type Feed interface {
	Follow(ctx context.Context, from int64, ready func(), fn func(id SAKey, rec, prev *Record)) (int64, error)
}

// ErrFeedGap is a feed that can no longer tell the changes since the
// position asked for: the watchers must get the whole state again.
var ErrFeedGap = errors.New("changes lost")

// feedWait is how long a gateway's Watch waits for the server's feed to
// be in place before it is refused as Unavailable (the gateway retries).
const feedWait = etcdTimeout

// Follow passes the changes of a shared store to this server's watchers
// until ctx ends, going on from where it was (after a second) when the
// feed breaks, so that a break loses nothing; only a gap (ErrFeedGap)
// cuts the watchers off, to reconnect for the whole state. A server on a
// Feed must be given Follow: its gateways' watches wait for it.
//
// Why no change is missed: a Watch subscribes, then waits for the feed's
// first ready, then reads the whole state. A change the read missed came
// after it, so after the feed was in place: the feed tells it (perhaps a
// second time). After a gap the watches are cut, and those that come back
// wait for the feed started afresh.
func (s *Server) Follow(ctx context.Context, feed Feed) {
	s.shared.Store(true)
	var from int64
	for ctx.Err() == nil {
		next, err := feed.Follow(ctx, from, s.markFollowing, func(id SAKey, rec, prev *Record) {
			gone := []*pb.SAID{{Spi: id.SPI, Dst: id.Dst.AsSlice(), Proto: id.Proto}}
			if prev != nil && (rec == nil || rec.Area != prev.Area) { // withdrawn, or moved away (a generated pair follows its mobile)
				s.watchers.publish(change{area: prev.Area, removed: gone})
			}
			if rec != nil {
				s.watchers.publish(change{area: rec.Area, recs: []Record{*rec}})
			}
		})
		if ctx.Err() != nil {
			return
		}
		from = next
		if errors.Is(err, ErrFeedGap) {
			// Watches that come back wait for the feed started afresh,
			// as the first ones did.
			s.fmu.Lock()
			if s.followed {
				s.following, s.followed = make(chan struct{}), false
			}
			s.fmu.Unlock()
			s.watchers.cutAll()
			from = 0
		}
		s.audit.Warn("feed broken", "err", fmt.Sprint(err), "from", from)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// markFollowing lets the gateways' watches read the state: the feed is in
// place.
func (s *Server) markFollowing() {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.following != nil && !s.followed {
		close(s.following)
		s.followed = true
	}
}

// awaitFeed waits until a shared store's feed follows (at once without
// one).
func (s *Server) awaitFeed(ctx context.Context) error {
	s.fmu.Lock()
	following := s.following
	s.fmu.Unlock()
	if following == nil {
		return nil
	}
	t := time.NewTimer(feedWait)
	defer t.Stop()
	select {
	case <-following:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return status.Error(codes.Unavailable, "watch: the shared store's feed is not in place yet")
	}
}

// Watch streams a gateway its areas' SAs.
func (s *Server) Watch(req *pb.WatchRequest, stream pb.SecurityServer_WatchServer) error {
	ctx := stream.Context()
	id, who, err := s.caller(ctx, "watch", pki.RoleGateway)
	if err != nil {
		return err
	}
	w := &watcher{id: id, who: who, chain: rpcauth.Chain(ctx), want: ipsec.ClassWrite, ch: make(chan change, watchQueue), gone: make(chan struct{})}
	if req.GetClass() == pb.Class_CLASS_READ {
		w.want = ipsec.ClassRead
	}
	// Subscribed before the state is read: a change in between comes
	// twice, never not at all.
	s.watchers.add(w)
	defer s.watchers.remove(w)
	if err := s.awaitFeed(ctx); err != nil {
		return err
	}
	all, err := s.store.All()
	if err != nil {
		return status.Errorf(codes.Unavailable, "store: %v", err)
	}
	var recs []Record
	for _, rec := range all {
		if id.Serves(rec.Area) {
			recs = append(recs, rec)
		}
	}
	if err := s.send(stream, w, change{recs: recs}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.gone:
			return status.Error(codes.ResourceExhausted, "watch: fell behind; reconnect for the whole state")
		case c := <-w.ch:
			if err := s.send(stream, w, c); err != nil {
				return err
			}
		}
	}
}

// send checks the watcher's certificate again and sends it a change in
// the class it may have.
func (s *Server) send(stream pb.SecurityServer_WatchServer, w *watcher, c change) error {
	if _, err := s.verifier.Verify(w.chain, s.now(), x509.ExtKeyUsageClientAuth, pki.RoleGateway); err != nil {
		s.audit.Warn("refused", "call", "watch", "who", w.who, "why", err.Error())
		return status.Error(codes.Unauthenticated, err.Error())
	}
	ev := &pb.WatchEvent{Removed: c.removed}
	now := s.now()
	for _, rec := range c.recs {
		sa, k, err := s.release(w.id, w.who, "watch", rec, w.want, now)
		if err != nil {
			continue // refused (audited): the others still go
		}
		if sa != nil {
			ev.Sas = append(ev.Sas, sa)
		}
		if k != nil {
			ev.Ike = append(ev.Ike, k)
		}
	}
	if len(ev.Sas) == 0 && len(ev.Removed) == 0 && len(ev.Ike) == 0 && len(c.recs)+len(c.removed) > 0 {
		return nil // nothing this gateway may have (the first event always goes: it marks the whole state sent)
	}
	return stream.Send(ev)
}
