package netem

import "time"

// timed is a value due at a time; values due at the same time keep the
// order they were added in (seq).
type timed[T any] struct {
	at  time.Time
	seq uint64
	v   T
}

// timeHeap is a min-heap of timed values by (at, seq). It serves both the
// SimClock's events and a link's packets in flight.
type timeHeap[T any] []timed[T]

func (h timeHeap[T]) less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}

func (h *timeHeap[T]) push(x timed[T]) {
	*h = append(*h, x)
	for i := len(*h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		(*h)[i], (*h)[p] = (*h)[p], (*h)[i]
		i = p
	}
}

// pop removes and returns the earliest value; the heap must not be empty.
func (h *timeHeap[T]) pop() timed[T] {
	old := *h
	n := len(old) - 1
	top := old[0]
	old[0] = old[n]
	old[n] = timed[T]{}
	*h = old[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h.less(l, m) {
			m = l
		}
		if r < n && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		(*h)[i], (*h)[m] = (*h)[m], (*h)[i]
		i = m
	}
	return top
}
