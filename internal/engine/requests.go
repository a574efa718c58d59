package engine

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// Requests: a caller may ask the engine for a packet on a split flow —
// a keep-alive that makes an endpoint answer (Elicit), or a fresh ACK
// (Ack) — also from inside Output, where the shard's lock is held and
// the engine cannot be entered. Such requests are queued (a bounded
// FIFO, no goroutine, no allocation) and served by whichever goroutine
// next releases a shard's lock, outside that lock.

// RequestKind is what a Request asks for.
type RequestKind uint8

const (
	RequestElicit RequestKind = iota // Elicit: a keep-alive, answered with an ACK
	RequestAck                       // Ack: a pure ACK with the flow's state
	RequestRetry                     // Retry: what was sent toward To, again now
)

// Request asks for a packet toward the endpoint on side To of the split
// flow between Wire and Radio.
type Request struct {
	Wire, Radio netip.AddrPort
	To          Side
	Kind        RequestKind
}

// maxRequests bounds the queue; requests beyond it are refused (they are
// repeated by whoever needs them: the gateway asks again at its next
// packet).
const maxRequests = 256

// requests is the queue: a ring, under its own lock, which is taken
// with no shard's lock or with one (Request from Output) — never the
// other way round.
type requests struct {
	mu      sync.Mutex
	ring    [maxRequests]Request
	head, n int
	served  uint64
	refused uint64
	serving bool
	pending atomic.Int32 // n, read without mu: the common case (none) costs no lock
}

// Request queues r; it reports false if the queue is full. It may be
// called from Output.
func (e *Engine) Request(r Request) bool {
	q := &e.reqs
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == maxRequests {
		q.refused++
		return false
	}
	q.ring[(q.head+q.n)%maxRequests] = r
	q.n++
	q.pending.Store(int32(q.n))
	return true
}

// serve runs the queued requests, one at a time, each under the lock of
// its flow's shard; requests those queue in turn are served too. One
// goroutine serves at a time; the others go on.
func (q *requests) serve(e *Engine) {
	if q.pending.Load() == 0 {
		return
	}
	q.mu.Lock()
	if q.serving {
		q.mu.Unlock()
		return
	}
	q.serving = true
	for q.n > 0 {
		r := q.ring[q.head]
		q.head = (q.head + 1) % maxRequests
		q.n--
		q.pending.Store(int32(q.n))
		q.served++
		q.mu.Unlock()
		e.do(r)
		q.mu.Lock()
	}
	q.serving = false
	q.mu.Unlock()
}

// do serves one request under its shard's lock (not unlock: the caller
// is serving the queue already).
func (e *Engine) do(r Request) bool {
	k := flowKey{wire: r.Wire, radio: r.Radio}
	s := e.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Kind {
	case RequestAck:
		return s.ack(k, r.To)
	case RequestRetry:
		return s.retry(k, r.To)
	}
	return s.elicit(k, r.To)
}

// Elicit sends the endpoint on side to of the split flow between wire and
// radio a keep-alive in the other endpoint's name (RFC 9293 §3.8.4), which
// a TCP answers with an ACK: one garbage octet just below what it has
// acknowledged — old data whatever it holds. The octet matters: Linux and
// gVisor answer a segment outside the window at once only if it carries
// data; an empty one gets an answer at most every half second (RFC 5961
// challenge-ACK limits). The gateway uses it to have an endpoint send a
// packet — on its newest SA, after a rekey — when the flow's other
// direction would otherwise stay silent. It reports whether there is such
// a split flow, established. Not from Output: use Request there.
func (e *Engine) Elicit(wire, radio netip.AddrPort, to Side) bool {
	ok := e.do(Request{Wire: wire, Radio: radio, To: to, Kind: RequestElicit})
	e.reqs.serve(e)
	return ok
}

// Ack sends the endpoint on side to of the split flow between wire and
// radio a pure ACK with the flow's current state, as if one were owed. The
// gateway uses it when an ACK the engine sent could not be sealed (its SA
// not yet ready) and now can be: without it a sender whose whole window
// the engine acknowledged in vain waits for its retransmission timeout. It
// reports whether there is such a split flow. Not from Output.
func (e *Engine) Ack(wire, radio netip.AddrPort, to Side) bool {
	ok := e.do(Request{Wire: wire, Radio: radio, To: to, Kind: RequestAck})
	e.reqs.serve(e)
	return ok
}

// Retry sends again, at once, what the engine sent toward the endpoint on
// side to of the split flow between wire and radio and the caller could
// not deliver (the gateway had no route for the flow: after a restart,
// until the endpoint's first packet shows it): a pure ACK with the flow's
// state and, if the stream toward to holds bytes in flight, a
// retransmission timeout brought forward, its backoff cleared — the
// doublings counted tries that never left the gateway, and the next one
// would otherwise come up to a second or two after the route did. It
// reports whether there is such a split flow. Not from Output.
func (e *Engine) Retry(wire, radio netip.AddrPort, to Side) bool {
	ok := e.do(Request{Wire: wire, Radio: radio, To: to, Kind: RequestRetry})
	e.reqs.serve(e)
	return ok
}

// counts returns how many requests were served and refused.
func (q *requests) counts() (served, refused uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.served, q.refused
}
