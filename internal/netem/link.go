package netem

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Stats are a link's counters.
type Stats struct {
	Offered, OfferedBytes     uint64
	Delivered, DeliveredBytes uint64
	DropQueue                 uint64 // drop-tail
	DropLoss                  uint64 // random and bursty loss
	DropOutage                uint64
	DropMTU                   uint64
	Duplicated, Corrupted     uint64
	Reordered                 uint64
	QueueHighBytes            int
	QueueHighPackets          int
}

// Dropped is the sum of drops of every cause.
func (s Stats) Dropped() uint64 { return s.DropQueue + s.DropLoss + s.DropOutage + s.DropMTU }

// Link is one direction of an emulated link. Send never blocks; packets
// come out of the deliver function given to New, in order of arrival, one
// at a time.
type Link struct {
	cfg     Config
	clock   Clock
	deliver func(pkt []byte)
	start   time.Time

	mu          sync.Mutex
	rng         *rand.Rand
	geBad       bool
	txFree      time.Time // when the transmitter is done with what it accepted
	lastArrival time.Time // arrivals never go backwards (jitter does not reorder)
	inQueue     []queued  // packets not yet fully transmitted, by end of transmission
	queueBytes  int
	flight      timeHeap[[]byte] // packets in flight, by arrival
	seq         uint64
	timer       Timer
	timerAt     time.Time
	late        time.Duration // EWMA of how late the clock fires timers
	closed      bool
	st          Stats

	deliverMu sync.Mutex // one delivery run at a time, so order holds

	// transparent: the configuration impairs nothing (no rate, delay,
	// loss, queue bound, MTU, outage, …): Send delivers at once, in the
	// caller's goroutine — no timer, no hand-over per packet.
	transparent bool
}

// Transparent reports whether the link impairs nothing, and so delivers
// each packet at once, in Send's goroutine, and keeps none: a caller may
// lend it a buffer it reuses after Send returns.
func (l *Link) Transparent() bool { return l.transparent }

// sendThrough is Send on a transparent link: counted, captured and
// delivered now.
func (l *Link) sendThrough(pkt []byte) {
	l.deliverMu.Lock()
	defer l.deliverMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.st.Offered++
	l.st.OfferedBytes += uint64(len(pkt))
	l.st.Delivered++
	l.st.DeliveredBytes += uint64(len(pkt))
	l.mu.Unlock()
	if l.cfg.Capture != nil {
		l.cfg.Capture(l.clock.Now(), pkt)
	}
	l.deliver(pkt)
}

type queued struct {
	txEnd time.Time
	n     int
}

// New makes a link that hands packets to deliver.
func New(cfg Config, clock Clock, deliver func(pkt []byte)) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if clock == nil {
		clock = RealClock{}
	}
	l := &Link{cfg: cfg, clock: clock, deliver: deliver, start: clock.Now(),
		rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	l.txFree = l.start
	l.transparent = cfg.transparent()
	return l, nil
}

// Stats returns a snapshot of the counters.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st
}

// Close stops deliveries; packets in flight are discarded.
func (l *Link) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	l.flight = nil
}

// Send offers a packet to the link, which takes ownership of pkt.
func (l *Link) Send(pkt []byte) {
	if l.transparent {
		l.sendThrough(pkt)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	now := l.clock.Now()
	l.st.Offered++
	l.st.OfferedBytes += uint64(len(pkt))
	if l.cfg.MTU > 0 && len(pkt) > l.cfg.MTU {
		l.st.DropMTU++
		if l.cfg.TooBig != nil {
			go l.cfg.TooBig(pkt)
		}
		return
	}
	// The drop-tail queue holds what the transmitter has not finished.
	for len(l.inQueue) > 0 && !l.inQueue[0].txEnd.After(now) {
		l.queueBytes -= l.inQueue[0].n
		l.inQueue = l.inQueue[1:]
	}
	if (l.cfg.QueueBytes > 0 && l.queueBytes+len(pkt) > l.cfg.QueueBytes) ||
		(l.cfg.QueuePackets > 0 && len(l.inQueue)+1 > l.cfg.QueuePackets) {
		l.st.DropQueue++
		return
	}
	txStart := now
	if l.txFree.After(txStart) {
		txStart = l.txFree
	}
	txEnd := txStart
	if l.cfg.Rate > 0 {
		txEnd = txStart.Add(time.Duration(float64(len(pkt)*8) / l.cfg.Rate * float64(time.Second)))
	}
	l.txFree = txEnd
	l.inQueue = append(l.inQueue, queued{txEnd, len(pkt)})
	l.queueBytes += len(pkt)
	l.st.QueueHighBytes = max(l.st.QueueHighBytes, l.queueBytes)
	l.st.QueueHighPackets = max(l.st.QueueHighPackets, len(l.inQueue))

	// In transit: outage, loss, corruption, delay, reordering, duplication.
	if l.inOutage(txStart) {
		l.st.DropOutage++
		return
	}
	if l.lost() {
		l.st.DropLoss++
		return
	}
	if l.cfg.Corrupt > 0 && l.rng.Float64() < l.cfg.Corrupt && len(pkt) > 0 {
		bit := l.rng.IntN(len(pkt) * 8)
		pkt[bit/8] ^= 1 << (bit % 8)
		l.st.Corrupted++
	}
	arrival := txEnd
	if l.cfg.Reorder > 0 && l.rng.Float64() < l.cfg.Reorder {
		l.st.Reordered++
	} else {
		d := l.cfg.Delay
		if l.cfg.Jitter > 0 {
			d += time.Duration((l.rng.Float64()*2 - 1) * float64(l.cfg.Jitter))
			d = max(d, 0)
		}
		arrival = arrival.Add(d)
		if arrival.Before(l.lastArrival) {
			arrival = l.lastArrival
		}
		l.lastArrival = arrival
	}
	l.push(arrival, pkt)
	if l.cfg.Duplicate > 0 && l.rng.Float64() < l.cfg.Duplicate {
		l.st.Duplicated++
		l.push(arrival, append([]byte(nil), pkt...))
	}
	l.arm(now)
}

func (l *Link) inOutage(t time.Time) bool {
	at := t.Sub(l.start)
	for _, o := range l.cfg.Outages {
		if at >= o.From && at < o.To {
			return true
		}
	}
	return false
}

// lost draws the Bernoulli and Gilbert-Elliott losses for one packet.
func (l *Link) lost() bool {
	lost := l.cfg.Loss > 0 && l.rng.Float64() < l.cfg.Loss
	if g := l.cfg.GE; g != nil {
		p := g.LossGood
		if l.geBad {
			p = g.LossBad
		}
		if p > 0 && l.rng.Float64() < p {
			lost = true
		}
		if l.geBad {
			l.geBad = l.rng.Float64() >= g.R
		} else {
			l.geBad = l.rng.Float64() < g.P
		}
	}
	return lost
}

func (l *Link) push(at time.Time, pkt []byte) {
	l.seq++
	l.flight.push(timed[[]byte]{at: at, seq: l.seq, v: pkt})
}

// arm makes sure a timer is set for the earliest packet in flight.
func (l *Link) arm(now time.Time) {
	if len(l.flight) == 0 || l.closed {
		return
	}
	// Arm early by the clock's usual lateness, so that deliveries are on
	// time on average (Go's timers fire 0.1–0.4 ms late here, more under
	// load; a SimClock is never late and this changes nothing).
	at := l.flight[0].at.Add(-l.late)
	if l.timer != nil && !at.Before(l.timerAt) {
		return
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	l.timerAt = at
	l.timer = l.clock.AfterFunc(at.Sub(now), l.fire)
}

// maxLateComp bounds the lateness compensation.
const maxLateComp = 2 * time.Millisecond

// fire delivers every packet that is due, in order.
func (l *Link) fire() {
	l.deliverMu.Lock()
	defer l.deliverMu.Unlock()
	l.mu.Lock()
	l.timer = nil
	now := l.clock.Now()
	if late := now.Sub(l.timerAt); late > 0 {
		l.late += (min(late, maxLateComp) - l.late) / 8
	}
	var due [][]byte
	for len(l.flight) > 0 && !l.flight[0].at.After(now.Add(l.late)) {
		due = append(due, l.flight.pop().v)
	}
	for _, pkt := range due {
		l.st.Delivered++
		l.st.DeliveredBytes += uint64(len(pkt))
	}
	l.mu.Unlock()
	for _, pkt := range due {
		if l.cfg.Capture != nil {
			l.cfg.Capture(now, pkt)
		}
		l.deliver(pkt)
	}
	l.mu.Lock()
	l.arm(l.clock.Now())
	l.mu.Unlock()
}

// Pair is a duplex link: AB carries packets from side A to side B, BA the
// other way.
type Pair struct{ AB, BA *Link }

// NewPair makes a duplex link with a configuration per direction.
func NewPair(ab, ba Config, clock Clock, toB, toA func(pkt []byte)) (*Pair, error) {
	x, err := New(ab, clock, toB)
	if err != nil {
		return nil, err
	}
	y, err := New(ba, clock, toA)
	if err != nil {
		return nil, err
	}
	return &Pair{AB: x, BA: y}, nil
}

// Close closes both directions.
func (p *Pair) Close() { p.AB.Close(); p.BA.Close() }
