package engine

import (
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// span is a range of sequence space [start, end).
type span struct{ start, end seqnum.Value }

// txSeg is a segment split mode has sent toward a receiver that is not yet
// cumulatively acknowledged: its scoreboard entry (RFC 6675) with what
// RACK (RFC 8985) and delivery-rate sampling need.
type txSeg struct {
	seq, end seqnum.Value // end counts the FIN octet
	fin      bool
	xmit     time.Time // last transmission
	// delivery-rate snapshot at the last transmission
	delivered  uint64
	delivTime  time.Time
	firstSent  time.Time
	appLimited bool
	// noSample: its delivery gives no RTT or rate sample — it was imported
	// in flight (when it was really sent is unknown), or sent when the
	// receiver had already reported holding its bytes (stream.ahead)
	noSample bool
	sacked   bool // delivered out of order
	lost     bool // presumed lost and not resent since
	rtoLost  bool // lost because a retransmission timeout presumed so (onRTO)
	rexmits  uint8
}

func (s *txSeg) len() int { return int(s.seq.Size(s.end)) }

// diff is b − a in sequence space, negative when b is below a.
func diff(a, b seqnum.Value) int { return int(int32(b - a)) }

// stream is one direction of a split flow: the engine receives its bytes
// from the sending endpoint, acknowledges them early, holds them, and
// sends them on to the receiving endpoint with its own sender.
type stream struct {
	from Side // side of the sending endpoint

	// Facing the sender.
	rcvNxt  seqnum.Value // next in-order byte from the sender
	rcvEdge seqnum.Value // right edge of the window advertised to it; never moves left
	ooo     []span       // held above rcvNxt, ascending, disjoint
	lastIn  span         // the most recent out-of-order arrival (first SACK block)
	sack    [4]span      // scratch for SACK blocks
	// What the receiver last reported (SACK, on a protected flow) holding
	// above rcvNxt: bytes that reached it by another way (straight from
	// the sender while no gateway was in the path). The engine's ACKs to
	// the sender carry them too, so that the sender resends only what the
	// receiver lacks (sackBlocks); nPeer of them.
	peer    [4]span
	nPeer   int
	finSeen bool // the sender's FIN has been seen, at finSeq
	finSeq  seqnum.Value
	// The sender's latest push (PSH): the end of the segment that carried
	// it. The segment toward the receiver that ends there or covers it
	// carries PSH, and no other, so PSH keeps its end-to-end meaning and a
	// run of segments between pushes can be written as one super-packet.
	pushOn bool
	push   seqnum.Value
	buf    seqBuf // the bytes [sndUna, rcvNxt) and those held in ooo
	ackNow bool   // an ACK is owed to the sender
	// Delayed ACK (RFC 9293 §3.8.6.3, RFC 5681 §4.2): in-order segments
	// taken since the last ACK to the sender, and when the one owed for
	// them is due.
	unacked int
	ackAt   time.Time

	// Facing the receiver.
	sndUna, sndNxt, sndMax seqnum.Value
	wnd                    int // the receiver's window in bytes
	maxWnd                 int // the largest window it has offered (MAX.SND.WND)
	wl1, wl2               seqnum.Value
	ahead                  seqnum.Value // while aheadOn: the receiver holds bytes up to here it had by another way (sawAhead)
	aheadOn                bool
	segs                   []txSeg // sent, not cumulatively acknowledged, by seq
	segBuf                 []txSeg // the array segs lives in, from its start
	inflight               int     // bytes sent, neither delivered nor presumed lost
	nLost                  int     // segments presumed lost, not yet resent
	finSent, finAcked      bool
	smss                   int
	srtt, rttvar, rto      time.Duration
	minRTT                 time.Duration
	backoff                int
	dupacks                int
	inRecovery             bool
	recover                seqnum.Value // sndMax when the last recovery or RTO began
	rackXmit               time.Time
	rackEnd                seqnum.Value
	rackRTT                time.Duration
	// rtoTime is when the last retransmission timeout fired; undone to
	// undoneTo, from when the last one found spurious fired until it was
	// found so (undoRTO): what was resent then reached a receiver that
	// had the originals.
	rtoTime, undone, undoneTo time.Time
	rtoCwnd                   int // the controller's window when the timeout fired
	reoMult                   int // RACK reordering window, in quarters of the minimum RTT, less one
	delivered                 uint64
	delivTime, firstSent      time.Time
	appLimited                uint64 // delivered count at which the sender stops being app-limited (0: it is not)
	nextRound                 uint64
	cc                        Controller
	sample                    AckSample // scratch for the controller
	pacer                     pacer
	persistBackoff            int
	progress                  time.Time // last cumulative ACK, or the first segment sent after none were outstanding
	// Segments sent before sampleAfter give no RTT or rate sample: an
	// imported stream's receiver may have had their bytes from the
	// engine before (importQuarantine).
	sampleAfter time.Time

	// Tail loss probe (RFC 8985 §7): when new data last went out or a
	// new cumulative ACK came (the probe timeout runs from there), and
	// the probe in flight, which ends at tlpEnd.
	ptoBase            time.Time
	tlpOut, tlpRetrans bool // a probe is in flight; it resent a segment
	tlpDSACK           bool // a D-SACK came while it was
	tlpEnd             seqnum.Value

	// Deadlines (zero: none) and the one timer that serves them.
	rtoAt, rackAt, persistAt, paceAt, tlpAt time.Time
	timer                                   netem.Timer
	timerAt                                 time.Time

	// Counters.
	earlyAcked, rexmits, timeouts, probes, dsacks, spurious, tlps uint64
}

// splitFlow is a flow in split mode.
type splitFlow struct {
	st     [2]stream     // by the side of the sending endpoint
	ip     [2]ipTemplate // by the side whose packets are copied
	ts     [2]uint32     // the latest TSval from each side
	shift  [2]uint8      // window scale of the windows each side sends
	tsOn   bool
	sackOn bool
	moved  bool // imported from another engine (ackAcceptable)
	logged bool // the journal has the flow's state (journalFlow)
	// Packets from each side, and packets the engine sent toward each:
	// what the gateway sends toward side s travels on the SA of the
	// endpoint on the other side, numbered after that endpoint's own.
	recv, sent [2]uint64
}

// ackBudget is how many more packets the endpoint on the other side of s
// has sent than the engine has sent toward s in its name: below zero, the
// gateway's sequence numbers on that endpoint's SA run ahead of its own.
func (sp *splitFlow) ackBudget(s Side) int64 {
	return int64(sp.recv[s.other()]) - int64(sp.sent[s])
}

// ackValue is what the engine acknowledges to the stream's sender: every
// in-order byte (early), and the FIN only once the receiver has it.
func (st *stream) ackValue() seqnum.Value {
	if st.finAcked {
		return st.finSeq.Add(1)
	}
	return st.rcvNxt
}

// maxOOO bounds the out-of-order ranges held per stream; a segment that
// would make more is dropped (the sender resends it).
const maxOOO = 64

// initSplit turns an established flow into a split flow. win[s] is the
// last window side s advertised in the handshake, in bytes, at ack[s].
func (e *shard) initSplit(f *flow) {
	sp := &splitFlow{}
	f.sp = sp
	w, r := &f.down, &f.up
	sp.tsOn = w.ts && r.ts
	sp.sackOn = w.sackOK && r.sackOK
	if w.wsOK && r.wsOK {
		sp.shift[Wire], sp.shift[Radio] = w.ws, r.ws
	}
	sp.ip = f.tpl
	sp.ts = f.tsv
	for _, from := range []Side{Wire, Radio} {
		st := &sp.st[from]
		h, peer := f.half(from), f.half(from.other())
		st.from = from
		isn := h.isn.Add(1)
		st.rcvNxt, st.sndUna, st.sndNxt, st.sndMax = isn, isn, isn, isn
		st.buf.start = isn
		st.recover = isn
		st.wnd = f.hsWin[from.other()]
		st.rcvEdge = isn.Add(seqnum.Size(st.wnd))
		st.wl1 = peer.isn
		mss := int(peer.mss)
		if mss == 0 {
			mss = 536 // RFC 9293 §3.7.1 default
		}
		if sp.tsOn {
			mss -= 12
		}
		st.smss = min(max(mss, 64), maxSegment)
		st.rto = time.Second                        // RFC 6298 §2.1 until the first sample
		st.cc, _ = newController(e.cfg.CC, st.smss) // the name was checked in New
		st.pacer.tokens = float64(2 * st.smss)
	}
	if e.log != nil {
		e.journalFlow(f) // or before its first bytes
	}
}

// maxSegment bounds the payload of a segment the engine builds.
const maxSegment = 65535 - 200

// splitProcess handles a packet of an established split flow from side
// from: its data feeds the stream from that side, its ACK the stream
// toward it. The packet itself goes nowhere; the engine sends its own.
func (e *shard) splitProcess(f *flow, from Side, p *parsed) {
	sp := f.sp
	now := p.now
	sp.recv[from]++
	in, out := &sp.st[from], &sp.st[from.other()]
	// One more packet the engine may send in this endpoint's name: an ACK
	// toward the other sender that waited for it (takeData) goes now.
	if out.unacked >= 2 && sp.ackBudget(from.other()) > -ackSlack {
		out.ackNow = true
	}
	t := p.tcp
	switch {
	case t.Has(header.TCPSyn):
		// A retransmitted SYN-ACK (the ACK that completed the handshake was
		// lost on the way), or a SYN on an established connection: either
		// way the answer is an ACK (RFC 5961 §4.2, a challenge ACK).
		e.challengeAck(f, in, now)
	case t.Has(header.TCPRst):
		// RFC 5961 §3.2: an RST exactly at what the engine expects next
		// from that sender resets the flow; one elsewhere in the window is
		// answered with a challenge ACK (a sender that did reset answers
		// that with an RST at exactly that number); any other is ignored.
		// No early-acknowledged byte is dropped for an RST nobody could
		// have sent without seeing the flow.
		seq := seqnum.Value(t.Seq())
		switch {
		case seq == in.rcvNxt || seq == in.ackValue():
			e.splitReset(f, from)
			return
		case in.rcvNxt.LessThan(seq) && seq.LessThan(in.rcvEdge):
			e.challengeAck(f, in, now)
		default:
			e.st.RSTIgnored++
		}
	case t.Has(header.TCPAck) && !e.ackAcceptable(f, out, seqnum.Value(t.Ack())):
		// An ACK for bytes the engine never sent, or far below what it
		// has had acknowledged: the segment is dropped and answered with
		// an ACK (RFC 9293 §3.10.7.4, RFC 5961 §5.2). Taken, it would
		// release early-acknowledged bytes no receiver has.
		out.sawAhead(seqnum.Value(t.Ack()))
		e.st.AckIgnored++
		e.challengeAck(f, in, now)
	default:
		if sp.tsOn && p.opts.HasTS {
			if seqnum.Value(sp.ts[from]).LessThanEq(seqnum.Value(p.opts.TSVal)) {
				sp.ts[from] = p.opts.TSVal
			}
			// The echo is the newest TSval this endpoint holds for the
			// other one; packets that did not pass through this engine
			// (before an import, while relayed) may have moved it past
			// what the engine knows, and a lower TSval would be dropped
			// by PAWS — whose rejection is answered with exactly this ACK.
			if o := from.other(); seqnum.Value(sp.ts[o]).LessThan(seqnum.Value(p.opts.TSEcr)) {
				sp.ts[o] = p.opts.TSEcr
			}
		}
		if t.Has(header.TCPAck) {
			out.skipTo(seqnum.Value(t.Ack())) // past rcvNxt only on a protected flow (ackAcceptable)
			e.takeAck(f, out, p, now)
		}
		if p.payload > 0 || t.Has(header.TCPFin) {
			e.takeData(f, in, p, now, sp.ackBudget(from) > -ackSlack)
			e.maybeCheckpoint()
		} else if seqnum.Value(t.Seq()).LessThan(in.rcvNxt) {
			in.ackNow = true // a window probe or keepalive: answer it
		}
	}
	e.splitFlush(f, now)
}

// takeData puts a segment's payload into the stream, acknowledging what
// is in order and holding (and SACKing) what is not.
//
// In-order data is acknowledged as a receiver does: every second segment,
// or after delAck (RFC 9293 §3.8.6.3), or at once where the sender
// pushed (within a batch, once at its end) — and no more often than the
// receiver acknowledges: once the engine has sent ackSlack packets more
// toward the sender than the receiver sent (budget false), an ACK waits
// for the receiver's next packet (splitProcess) or for delAck. Otherwise
// the gateway would send more packets on the receiver's SA than the
// receiver does, and its sequence numbers would run ever further ahead of
// the endpoint's (see the gateway's package doc): Linux receivers behind
// a userspace tunnel acknowledge every fourth or fifth segment, but
// behind espep host, which writes its TUN in GRO batches, every 78th to
// 135th (measured) — a fixed stretch of every eighth segment let the lead
// grow by a thousand packets a second at 1.2 Gbit/s. An ACK past the
// budget (delAck's) is paid back by the receiver's next packet. Out of
// order, filling a hole, or a duplicate: at once (RFC 5681 §4.2).
func (e *shard) takeData(f *flow, st *stream, p *parsed, now time.Time, budget bool) {
	seq := seqnum.Value(p.tcp.Seq())
	data := p.tcp.Payload()
	end := seq.Add(seqnum.Size(len(data)))
	pushed := end // where the sender pushed, if it did; recorded once bytes are taken
	// A segment with a FIN has its data acknowledged at once; the FIN
	// itself only when the receiver has it (ackValue).
	st.ackNow = st.ackNow || st.finSeen || (len(data) > 0 && (p.tcp.Has(header.TCPFin) || seq != st.rcvNxt || len(st.ooo) > 0))
	if p.tcp.Has(header.TCPFin) && !st.finSeen {
		st.finSeen, st.finSeq = true, end
	}
	if st.finSeen && st.finSeq.LessThan(end) {
		if !seq.LessThan(st.finSeq) {
			return
		}
		data = data[:seq.Size(st.finSeq)]
		end = st.finSeq
	}
	if seq.LessThan(st.rcvNxt) { // already have the front
		if end.LessThanEq(st.rcvNxt) {
			return
		}
		data = data[seq.Size(st.rcvNxt):]
		seq = st.rcvNxt
	}
	if st.rcvEdge.LessThan(end) { // beyond the window: keep what fits
		if st.rcvEdge.LessThanEq(seq) {
			e.st.OutOfWindow++
			return
		}
		data = data[:seq.Size(st.rcvEdge)]
		end = st.rcvEdge
	}
	if len(data) == 0 || !e.journalData(f, st, seq, data) {
		return
	}
	if seq != st.rcvNxt {
		if !st.hold(span{seq, end}) {
			e.st.OutOfWindow++
			return
		}
		st.buf.write(&e.pool, seq, data)
		st.pushedTo(pushed, p.tcp.Has(header.TCPPsh))
		return
	}
	st.buf.write(&e.pool, seq, data)
	st.pushedTo(pushed, p.tcp.Has(header.TCPPsh))
	st.rcvNxt = end
	for len(st.ooo) > 0 && st.ooo[0].start.LessThanEq(st.rcvNxt) {
		st.rcvNxt = seqnum.Max(st.rcvNxt, st.ooo[0].end)
		st.ooo = append(st.ooo[:0], st.ooo[1:]...)
	}
	st.unacked++
	// A pushed segment is the end of what the sender has to send for now:
	// no second one is coming to share the ACK with, and holding it for
	// delAck only delays the sender and costs the gateway a timer wake-up
	// (at a radio's rate, half of the engine's wake-ups were such ACKs).
	if budget && (st.unacked >= 2 || p.tcp.Has(header.TCPPsh)) {
		st.ackNow = true
	} else if st.ackAt.IsZero() {
		st.ackAt = now.Add(delAck)
	}
	n := uint64(seq.Size(st.rcvNxt))
	e.st.EarlyAcked += n
	st.earlyAcked += n
}

// pushedTo records a push (PSH) by the sender up to at, for a segment
// whose bytes were taken: one refused (beyond the window, past the
// out-of-order bound) changes nothing.
func (st *stream) pushedTo(at seqnum.Value, psh bool) {
	if psh && (!st.pushOn || st.push.LessThan(at)) {
		st.pushOn, st.push = true, at
	}
}

// ackAcceptable reports whether ack may be taken by the sender of st on
// flow f: SND.UNA − MAX.SND.WND ≤ ack ≤ SND.NXT (RFC 5961 §5.2). The
// receiver may also hold bytes the engine never sent — on a flow that
// moved here from another engine (sent by the engine before, or relayed
// while the flow moved), or on a protected flow whose sender's packets
// were relayed as they came (the gateway did not yet have their SA: a
// rekey's new SA reaches the endpoints before the gateway) — and, refused,
// would repeat that ACK for ever: there an ACK up to the bytes the engine
// holds (short of the FIN) is taken too. A protected flow's ACK is
// verified (the receiver's own), so it says the receiver has those bytes;
// a plain flow's could be anyone's, and is taken only when moved.
//
// A protected flow's receiver may even hold bytes the engine has not had
// from their sender: sent straight to it while no gateway was in the
// path (a restart's gap). Its ACK is taken whole (skipTo): refused, the
// flow would crawl, the sender resending them one timeout at a time.
func (e *shard) ackAcceptable(f *flow, st *stream, ack seqnum.Value) bool {
	if !st.sndNxt.LessThan(ack) {
		return diff(ack, st.sndUna) <= max(st.maxWnd, 0xffff)
	}
	if st.finSeen && st.finSeq.LessThan(ack) {
		return false
	}
	return f.kind == kindVerified || f.sp.moved && ack.LessThanEq(st.rcvNxt)
}

// challengeAck has an ACK sent toward the sender of st at once — at most
// one every challengeGap per flow, so that forged segments cannot make
// the engine send much (RFC 5961 §7).
func (e *shard) challengeAck(f *flow, st *stream, now time.Time) {
	if !f.challenge.IsZero() && now.Sub(f.challenge) < challengeGap {
		return
	}
	f.challenge = now
	st.ackNow = true
	e.st.ChallengeAcks++
}

// challengeGap spaces a flow's challenge ACKs.
const challengeGap = 10 * time.Millisecond

// delAck is how long an ACK for a lone in-order segment may wait (Linux
// waits 40 ms at least; RFC 9293 allows up to 500).
const delAck = 40 * time.Millisecond

// ackSlack is how many packets the engine may send toward a sender beyond
// those the receiver sent before its ACKs wait for the receiver's.
const ackSlack = 64

// hold records an out-of-order range, merging it with the ones it
// touches; it reports false when the stream holds too many ranges.
func (st *stream) hold(s span) bool {
	st.lastIn = s
	i := 0
	for i < len(st.ooo) && st.ooo[i].end.LessThan(s.start) {
		i++
	}
	j := i
	for j < len(st.ooo) && st.ooo[j].start.LessThanEq(s.end) {
		if st.ooo[j].start.LessThan(s.start) {
			s.start = st.ooo[j].start
		}
		if s.end.LessThan(st.ooo[j].end) {
			s.end = st.ooo[j].end
		}
		j++
	}
	if i == j {
		if len(st.ooo) >= maxOOO {
			return false
		}
		st.ooo = append(st.ooo, span{})
		copy(st.ooo[i+1:], st.ooo[i:])
		st.ooo[i] = s
		return true
	}
	st.ooo[i] = s
	st.ooo = append(st.ooo[:i+1], st.ooo[j:]...)
	return true
}

// advertise returns the window field for the stream's sender and records
// the right edge it promises. The buffer holds [sndUna, edge), so the
// edge grows with what the receiver has taken, up to BufferPerFlow ahead
// of it, while the engine's global buffer bound allows — and never moves
// left (RFC 9293 §3.8.6.2.2).
func (e *shard) advertise(st *stream, shift uint8) uint16 {
	edge := st.rcvEdge
	if e.pool.inUse < e.maxChunks {
		if c := st.sndUna.Add(seqnum.Size(e.cfg.BufferPerFlow)); edge.LessThan(c) {
			edge = c
		}
	}
	ack := st.ackValue()
	w := diff(ack, edge)
	if w < 0 {
		w = 0
	}
	field := min((w+(1<<shift)-1)>>shift, 0xffff)
	if e2 := ack.Add(seqnum.Size(field << shift)); st.rcvEdge.LessThan(e2) {
		st.rcvEdge = e2
	}
	return uint16(field)
}

// splitFlush sends what each direction may send now, then the ACKs still
// owed, and sets the timers.
func (e *shard) splitFlush(f *flow, now time.Time) {
	sp := f.sp
	for _, from := range []Side{Wire, Radio} {
		e.send(f, &sp.st[from], now)
	}
	for _, s := range []Side{Wire, Radio} {
		st := &sp.st[s]
		if !st.ackNow {
			continue
		}
		if e.cur.More {
			// More of a batch follows: one ACK for it, at its end.
			if !f.ackDeferred {
				f.ackDeferred = true
				e.deferred = append(e.deferred, f)
			}
			continue
		}
		// A pure ACK toward the stream's sender, in the receiver's name.
		e.emit(f, s, segment{seq: sp.st[s.other()].sndNxt})
	}
	for _, from := range []Side{Wire, Radio} {
		e.schedule(f, &sp.st[from], now)
	}
	if sp.closed() {
		e.drop(f)
	}
}

// closed reports whether both directions are finished: each FIN sent on
// and acknowledged by its receiver, and that acknowledged to its sender.
func (sp *splitFlow) closed() bool {
	for i := range sp.st {
		st := &sp.st[i]
		if !st.finAcked || st.ackNow {
			return false
		}
	}
	return true
}

// splitReset passes an RST on: the receiver gets it at the sequence number
// it acknowledged last, so that it accepts it (RFC 5961 §3), and the flow
// is forgotten with whatever it held.
func (e *shard) splitReset(f *flow, from Side) {
	st := &f.sp.st[from]
	if st.finSeen && st.finAcked {
		e.drop(f)
		return
	}
	e.emit(f, from.other(), segment{seq: st.sndUna, flags: header.TCPRst})
	e.st.Resets++
	e.drop(f)
}

// elicit sends the endpoint on side to of the split flow k a keep-alive
// (Engine.Elicit).
func (e *shard) elicit(k flowKey, to Side) bool {
	f := e.flows[k]
	if f == nil || f.sp == nil {
		return false
	}
	st := &f.sp.st[to.other()] // the stream toward to
	e.emit(f, to, segment{seq: st.sndUna.Add(^seqnum.Size(0)), n: 1})
	return true
}

// ack sends the endpoint on side to of the split flow k a pure ACK
// (Engine.Ack).
func (e *shard) ack(k flowKey, to Side) bool {
	f := e.flows[k]
	if f == nil || f.sp == nil {
		return false
	}
	e.emit(f, to, segment{seq: f.sp.st[to.other()].sndNxt})
	return true
}

// retry sends again what went toward side to of the split flow k and was
// not delivered (Engine.Retry).
func (e *shard) retry(k flowKey, to Side) bool {
	f := e.flows[k]
	if f == nil || f.sp == nil {
		return false
	}
	st := &f.sp.st[to.other()] // the stream toward to
	now := e.cfg.Clock.Now()
	if len(st.segs) == 0 {
		e.emit(f, to, segment{seq: st.sndNxt})
		return true
	}
	st.backoff = 0
	e.onRTO(st, now) // its resends carry the ACK too
	e.splitFlush(f, now)
	return true
}
