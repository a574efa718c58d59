package fdclock

// queue is a min-heap of pending timers by deadline; each timer knows its
// index, so that a timer moved or stopped is fixed or removed in place.
type queue []*timer

func (q queue) less(i, j int) bool { return q[i].when < q[j].when }

func (q queue) swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}

func (q *queue) push(t *timer) {
	t.index = len(*q)
	*q = append(*q, t)
	q.up(t.index)
}

// pop removes and returns the earliest timer.
func (q *queue) pop() *timer { return q.remove(0) }

// remove takes out the timer at index i.
func (q *queue) remove(i int) *timer {
	h := *q
	n := len(h) - 1
	t := h[i]
	if i != n {
		h.swap(i, n)
	}
	h[n] = nil
	*q = h[:n]
	if i != n {
		q.fix(i)
	}
	t.index = -1
	return t
}

// fix restores the heap after the deadline of the timer at i changed.
func (q queue) fix(i int) {
	if !q.down(i) {
		q.up(i)
	}
}

func (q queue) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			return
		}
		q.swap(i, p)
		i = p
	}
}

// down moves the timer at i toward the leaves; it reports whether it moved.
func (q queue) down(i int) bool {
	start := i
	for {
		l := 2*i + 1
		if l >= len(q) {
			break
		}
		j := l
		if r := l + 1; r < len(q) && q.less(r, l) {
			j = r
		}
		if !q.less(j, i) {
			break
		}
		q.swap(i, j)
		i = j
	}
	return i > start
}
