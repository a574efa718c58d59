package secserver

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
)

// len is how many streams there are.
func (ws *watchers) len() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.set)
}

// scriptedFeed is a Feed whose every Follow call the test plays by hand:
// it hands the call over and returns what the test says.
type scriptedFeed struct {
	Store
	calls chan *feedCall
}

type feedCall struct {
	from  int64
	ready func()
	fn    func(id SAKey, rec, prev *Record)
	end   chan feedEnd
}

type feedEnd struct {
	next int64
	err  error
}

func (f *scriptedFeed) Follow(ctx context.Context, from int64, ready func(), fn func(id SAKey, rec, prev *Record)) (int64, error) {
	c := &feedCall{from: from, ready: ready, fn: fn, end: make(chan feedEnd)}
	select {
	case f.calls <- c:
	case <-ctx.Done():
		return from, nil
	}
	select {
	case e := <-c.end:
		return e.next, e.err
	case <-ctx.Done():
		return from, nil
	}
}

// TestFollowFeed: a server on a shared store (replicas) misses no change
// another replica makes. A gateway's watch waits until the feed is in
// place before it reads the state, so an upload between the two is in
// the state it gets; a feed that breaks goes on from where it was and
// the watch stays; only a gap in the feed cuts the watch off (to come
// back for the whole state), and the feed then starts afresh.
func TestFollowFeed(t *testing.T) {
	feed := &scriptedFeed{calls: make(chan *feedCall)}
	w := newWorldOn(t, func(b *BoltStore) Store { feed.Store = b; return feed })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	// What another replica stores reaches this one's watchers only by the
	// feed: an upload here stands for one there (a shared server does not
	// tell its watchers of its own uploads).
	upload := func(spi uint32) (SAKey, Record) {
		t.Helper()
		if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(spi, wired, mobile)}}); err != nil {
			t.Fatal(err)
		}
		k := SAKey{SPI: spi, Dst: mobile, Proto: "esp"}
		rec, ok, err := w.store.Get(k)
		if !ok || err != nil {
			t.Fatalf("sa %#x not stored: %v", spi, err)
		}
		return k, rec
	}
	upload(0x1001)
	type got struct {
		spis []uint32
		err  error
	}
	evs := make(chan got, 8)
	// watch opens a gateway's stream, whose events go to evs.
	watch := func() {
		t.Helper()
		st, err := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})).Watch(ctx, &pb.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				ev, err := st.Recv()
				var spis []uint32
				for _, sa := range ev.GetSas() {
					spis = append(spis, sa.GetSpi())
				}
				evs <- got{spis, err}
				if err != nil {
					return
				}
			}
		}()
	}
	watch()
	next := func(what string) got {
		t.Helper()
		select {
		case g := <-evs:
			return g
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing came", what)
			return got{}
		}
	}
	registered := func() {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); w.srv.watchers.len() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the watch never reached the server")
			}
		}
	}
	go w.srv.Follow(ctx, feed)
	c := <-feed.calls
	if c.from != 0 {
		t.Fatalf("the first follow starts at %d", c.from)
	}
	// Stored while the feed was not yet in place, with the watch
	// subscribed: it must not have read the state yet.
	registered()
	upload(0x2002)
	select {
	case g := <-evs:
		t.Fatalf("the watch read the state before the feed was in place: %v", g)
	default:
	}
	c.ready()
	if g := next("the whole state"); g.err != nil || len(g.spis) != 2 {
		t.Fatalf("the whole state after the feed is in place: %v", g)
	}
	k, rec := upload(0x3003)
	c.fn(k, &rec, nil)
	if g := next("a change fed"); g.err != nil || len(g.spis) != 1 || g.spis[0] != 0x3003 {
		t.Fatalf("a change fed: %v", g)
	}
	c.end <- feedEnd{next: 42, err: errors.New("no leader")}
	c = <-feed.calls
	if c.from != 42 {
		t.Fatalf("after a break the feed goes on from %d, not where it was (42)", c.from)
	}
	k, rec = upload(0x4004)
	c.fn(k, &rec, nil)
	if g := next("a change fed after a break"); g.err != nil || len(g.spis) != 1 || g.spis[0] != 0x4004 {
		t.Fatalf("after a break the watch was cut or missed a change: %v", g)
	}
	c.end <- feedEnd{err: ErrFeedGap}
	if g := next("the cut"); status.Code(g.err) != codes.ResourceExhausted {
		t.Fatalf("a gap in the feed left the watch on: %v", g)
	}
	if c = <-feed.calls; c.from != 0 {
		t.Fatalf("after a gap the feed goes on from %d, not afresh", c.from)
	}
	// The gateway comes back: its watch waits for the new feed, as the
	// first did.
	watch()
	registered()
	upload(0x5005)
	select {
	case g := <-evs:
		t.Fatalf("after a gap, a watch read the state before the new feed was in place: %v", g)
	default:
	}
	c.ready()
	if g := next("the whole state after a gap"); g.err != nil || len(g.spis) != 5 {
		t.Fatalf("the whole state after a gap: %v", g)
	}
}
