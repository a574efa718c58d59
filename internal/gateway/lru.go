package gateway

// lru is a bounded map that, when full, forgets the entry used least
// recently: idle state goes first, and a flood of new keys can push out
// only what has been idle longer than the flood's own entries — never a
// table wholesale. Touching an entry on every packet moves it to the
// front without allocating. Not safe for concurrent use (the gateway's
// smu guards each).
type lru[K comparable, V any] struct {
	max  int
	m    map[K]*lruNode[K, V]
	ring lruNode[K, V] // sentinel: ring.next is the most recent
	free *lruNode[K, V]
}

type lruNode[K comparable, V any] struct {
	k          K
	v          V
	prev, next *lruNode[K, V]
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	l := &lru[K, V]{max: max, m: map[K]*lruNode[K, V]{}}
	l.ring.prev, l.ring.next = &l.ring, &l.ring
	return l
}

func (l *lru[K, V]) unlink(n *lruNode[K, V]) {
	n.prev.next, n.next.prev = n.next, n.prev
}

func (l *lru[K, V]) front(n *lruNode[K, V]) {
	n.prev, n.next = &l.ring, l.ring.next
	l.ring.next.prev = n
	l.ring.next = n
}

// get returns the entry for k, marking it used.
func (l *lru[K, V]) get(k K) (*V, bool) {
	n := l.m[k]
	if n == nil {
		return nil, false
	}
	l.unlink(n)
	l.front(n)
	return &n.v, true
}

// peek returns the entry for k without marking it used.
func (l *lru[K, V]) peek(k K) (*V, bool) {
	n := l.m[k]
	if n == nil {
		return nil, false
	}
	return &n.v, true
}

// put sets k's entry and reports what it evicted to make room, if
// anything.
func (l *lru[K, V]) put(k K, v V) (evicted bool) {
	if n := l.m[k]; n != nil {
		n.v = v
		l.unlink(n)
		l.front(n)
		return false
	}
	if len(l.m) >= l.max {
		old := l.ring.prev
		l.unlink(old)
		delete(l.m, old.k)
		var zero V
		old.v = zero
		old.next, l.free = l.free, old
		evicted = true
	}
	n := l.free
	if n != nil {
		l.free = n.next
	} else {
		n = &lruNode[K, V]{}
	}
	n.k, n.v = k, v
	l.m[k] = n
	l.front(n)
	return evicted
}

func (l *lru[K, V]) delete(k K) {
	if n := l.m[k]; n != nil {
		l.unlink(n)
		delete(l.m, k)
		var zero V
		n.v = zero
		n.next, l.free = l.free, n
	}
}

// each calls f with every entry, most recent first, without marking any
// used; f must not change the table.
func (l *lru[K, V]) each(f func(k K, v *V)) {
	for n := l.ring.next; n != &l.ring; n = n.next {
		f(n.k, &n.v)
	}
}
