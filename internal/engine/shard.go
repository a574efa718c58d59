package engine

import (
	"net/netip"
	"sync"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// shard is one part of the engine's flow table: the flows whose
// endpoints hash to it, with everything they use — buffers, cache, timers,
// counters — under its one lock (see Engine). Its methods other than
// lock and the timer callbacks expect mu held.
type shard struct {
	cfg *Config // the engine's (read-only once New returned)
	eng *Engine
	id  int
	out Output

	mu        sync.Mutex
	flows     map[flowKey]*flow
	nPlain    int // flows opened by ProcessPlain
	st        Stats
	cacheMem  int // bytes of buffers snoop's caches hold
	janitor   netem.Timer
	lastSweep time.Time
	closed    bool
	pool      chunkPool
	bufs      bufPool           // snoop's cached packets
	scratch   []byte            // split mode builds its packets here
	cur       Input             // the packet being processed: its tag goes with it if forwarded
	curEnds   [2]netip.AddrPort // and its endpoints, source first, if the engine read them
	deferred  []*flow           // flows whose pure ACK waits for the end of a batch (Input.More)
	log       ShardLog          // the journal's (nil: none)
	unsaved   [2]bool           // by Side: bytes from it wait for the log's Commit
	logLost   bool              // records the log lost: nothing toward a side with unsaved bytes until a checkpoint
	logRetry  time.Time         // the next checkpoint attempt while logLost
	logBuf    []byte            // journalFlow reads held bytes into it

	// This shard's share of the engine's bounds.
	maxFlows, maxPlain, maxChunks, cacheTotal int
}

func (e *shard) lock() { e.mu.Lock() }

// unlock releases the shard and then serves the requests queued while it
// or another shard was held (Engine.Request).
func (e *shard) unlock() {
	e.mu.Unlock()
	e.eng.reqs.serve(e.eng)
}

// output hands a packet to the Output — once the bytes it may acknowledge
// are in the journal; a packet that cannot wait for them is dropped.
func (e *shard) output(to Side, pkt []byte, em Emitted) {
	if e.unsaved[to] && !e.saveJournal() {
		e.st.JournalHeld++
		return
	}
	e.out(to, pkt, em)
}

// forward passes the packet being processed on, unchanged.
func (e *shard) forward(to Side, pkt []byte) {
	e.output(to, pkt, Emitted{Origin: Forwarded, Opaque: e.cur.Kind == Opaque, Shard: e.id, Tag: e.cur.Tag,
		Src: e.curEnds[0], Dst: e.curEnds[1]})
}

// resendCached sends an earlier packet toward the radio again as it came.
func (e *shard) resendCached(f *flow, pkt []byte) {
	e.output(Radio, pkt, Emitted{Origin: Cached, Opaque: f.opaque, Shard: e.id, Src: f.key.wire, Dst: f.key.radio})
}

// built sends a packet the engine made, from src to dst.
func (e *shard) built(to Side, pkt []byte, src, dst netip.AddrPort, partial bool) {
	e.output(to, pkt, Emitted{Origin: Built, Shard: e.id, Src: src, Dst: dst, Partial: partial})
}

// sweepEvery is how often idle flows are looked for.
func (e *shard) sweepEvery() time.Duration {
	return min(e.cfg.IdleTimeout, e.cfg.HandshakeTimeout) / 2
}

// sweep forgets the flows that have been idle too long (expireIdle) and
// runs again later, until close.
func (e *shard) sweep() {
	e.lock()
	defer e.unlock()
	if e.closed {
		return
	}
	e.expireIdle()
	e.janitor.Reset(e.sweepEvery())
}

// close forgets every flow (stopping its timers) and stops the shard's
// own timer.
func (e *shard) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	e.janitor.Stop()
	for _, f := range e.flows {
		e.drop(f)
	}
}

// stats returns a snapshot of the shard's counters.
func (e *shard) stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.st
	s.Flows = len(e.flows)
	s.CachedBytes = e.cacheMem
	for _, f := range e.flows {
		if f.sp != nil {
			s.RadioRTT.add(f.sp.st[Wire].srtt) // the sender toward the radio
			s.WireRTT.add(f.sp.st[Radio].srtt)
		} else {
			s.RadioRTT.add(f.srtt)
		}
	}
	s.BufferedBytes = e.pool.inUse * chunkSize
	return s
}

// flowInfos appends the counters of the shard's flows to out.
func (e *shard) flowInfos(out []FlowInfo) []FlowInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range e.flows {
		out = append(out, FlowInfo{Wire: f.key.wire, Radio: f.key.radio, Established: f.established,
			CachedSegments: len(f.cache), CachedBytes: f.cacheBytes, SRTT: f.srtt, RTO: f.rto,
			LocalRexmits: f.localRexmits, TimeoutRexmits: f.timeoutRexmits, SuppressedDupAcks: f.suppressed})
		if f.sp != nil {
			i := &out[len(out)-1]
			i.Split, i.Down, i.Up = true, f.sp.st[Wire].info(), f.sp.st[Radio].info()
		}
	}
	return out
}

// parsed is what Process needs of a packet.
type parsed struct {
	src, dst netip.AddrPort
	tcp      header.TCP
	opts     header.TCPOptions
	payload  int
	// now is when the engine took the packet: read once per packet
	// (process), for every stage that needs the time — a clock read is
	// a few percent of a packet's cost here.
	now time.Time
}

func parse(pkt []byte) (parsed, bool) {
	var ip header.Parsed
	if header.Parse(pkt, &ip) != nil {
		return parsed{}, false
	}
	return parseTCP(pkt, &ip)
}

// parseTCP reads the TCP header of pkt, whose IP headers ip holds.
func parseTCP(pkt []byte, ip *header.Parsed) (parsed, bool) {
	var p parsed
	if !ip.IsTCP() {
		return p, false
	}
	t, err := header.ParseTCP(ip.Upper(pkt))
	if err != nil || header.ParseTCPOptions(t.Options(), &p.opts) != nil {
		return p, false
	}
	p.tcp, p.payload = t, len(t.Payload())
	p.src, p.dst = netip.AddrPortFrom(ip.Src, t.SrcPort()), netip.AddrPortFrom(ip.Dst, t.DstPort())
	return p, true
}

// process handles p, a packet of flow k (parse read it), and forwards
// wire (the same bytes, unless opaque). It reports false for a plain
// packet refused by a verified flow.
func (e *shard) process(from Side, k flowKey, p *parsed, pkt []byte, in Input) bool {
	e.lock()
	defer e.unlock()
	e.cur, e.curEnds = in, [2]netip.AddrPort{p.src, p.dst}
	defer func() { e.cur, e.curEnds = Input{}, [2]netip.AddrPort{} }()
	e.st.Packets++
	kind := flowKind(in.Kind)
	if e.closed {
		e.st.Relayed++
		e.forward(from.other(), pkt)
		return true
	}
	f := e.flows[k]
	if f != nil && f.kind != kind {
		switch {
		case kind == kindPlain && f.kind == kindVerified:
			e.st.PlainRefused++
			return false
		case kind == kindVerified && f.kind == kindPlain:
			f.kind = kindVerified // a verified packet shows the flow: protected from now on
			e.nPlain--
		default:
			e.st.KindRelayed++
			e.st.Relayed++
			e.forward(from.other(), pkt)
			return true
		}
	}
	now := e.cfg.Clock.Now()
	p.now = now
	if f == nil {
		// Only a SYN opens a flow; anything else is relayed untouched.
		syn := p.tcp.Has(header.TCPSyn) && !p.tcp.Has(header.TCPAck)
		if syn && len(e.flows) >= e.maxFlows && now.Sub(e.lastSweep) >= time.Second {
			e.expireIdle() // at most once a second: a SYN flood must not make every SYN scan the table
		}
		full := len(e.flows) >= e.maxFlows || kind == kindPlain && e.nPlain >= e.maxPlain
		if !syn || full {
			e.st.Relayed++
			e.forward(from.other(), pkt)
			return true
		}
		f = &flow{key: k, rto: e.cfg.MinRTO * 10, split: e.cfg.Mode == ModeSplit && kind != kindOpaque,
			opaque: kind == kindOpaque, kind: kind}
		e.flows[k] = f
		if kind == kindPlain {
			e.nPlain++
		}
		e.st.FlowsMax = max(e.st.FlowsMax, len(e.flows))
	}
	f.lastSeen = now
	if !p.tcp.Has(header.TCPRst) {
		f.rstAt = time.Time{}
	}
	if f.split {
		e.splitPacket(f, from, p, pkt)
		if !in.More {
			e.flushDeferred()
		}
		return true
	}
	if e.handshake(f, from, p, pkt) {
		e.forward(from.other(), pkt)
		return true
	}
	if p.tcp.Has(header.TCPRst) {
		e.snoopReset(f, from, p, pkt)
		return true
	}
	if from == Wire {
		e.downData(f, p, pkt)
	} else if !e.upAck(f, p, pkt) {
		return true // a duplicate ACK the engine answered itself
	}
	e.maybeClose(f)
	return true
}

// snoopReset passes an RST on — the endpoint judges it — and forgets the
// flow only if the RST is at the sequence number the receiver expects
// (RFC 5961 §3: what it would accept). Any other RST leaves the flow and
// its cache as they are; if no packet follows within HandshakeTimeout,
// the flow is forgotten then.
func (e *shard) snoopReset(f *flow, from Side, p *parsed, pkt []byte) {
	seq := seqnum.Value(p.tcp.Seq())
	exact := from == Wire && f.ackValid && seq == f.lastAck ||
		from == Radio && f.wireAckValid && seq == f.wireAck
	e.forward(from.other(), pkt)
	if exact || !f.established {
		e.drop(f)
		return
	}
	e.st.RSTIgnored++
	f.rstAt = e.cfg.Clock.Now()
}

// splitPacket handles a packet of a split-mode flow. Until the handshake
// is over every packet passes end to end; the ACK that completes it (from
// the side that sent the first SYN, acknowledging the other's SYN) makes
// the flow split, and from then on the engine answers and sends for both
// endpoints.
func (e *shard) splitPacket(f *flow, from Side, p *parsed, pkt []byte) {
	if f.sp != nil {
		e.splitProcess(f, from, p)
		return
	}
	t := p.tcp
	switch {
	case e.handshake(f, from, p, pkt):
	case t.Has(header.TCPRst):
		e.drop(f)
	case f.down.synned && f.up.synned && from == f.initiator && t.Has(header.TCPAck) &&
		seqnum.Value(t.Ack()) == f.half(from.other()).isn.Add(1):
		f.hsWin[from] = int(t.Window())
		if h, o := f.half(from), f.half(from.other()); h.wsOK && o.wsOK {
			f.hsWin[from] <<= h.ws
		}
		if p.opts.HasTS {
			f.tsv[from] = p.opts.TSVal
		}
		e.initSplit(f)
		if p.payload > 0 || t.Has(header.TCPFin) {
			e.splitProcess(f, from, p)
			return
		}
	}
	e.forward(from.other(), pkt)
}

// handshake learns the options of each SYN; it reports whether the packet
// was part of the handshake (and so is just forwarded).
func (e *shard) handshake(f *flow, from Side, p *parsed, pkt []byte) bool {
	if !p.tcp.Has(header.TCPSyn) {
		return false
	}
	h := f.half(from)
	if !p.tcp.Has(header.TCPAck) {
		f.initiator = from
	}
	h.isn, h.synned = seqnum.Value(p.tcp.Seq()), true
	h.mss, h.ws, h.sackOK, h.ts = p.opts.MSS, p.opts.WS, p.opts.SACKPermitted, p.opts.HasTS
	h.wsOK = p.opts.HasWS
	f.tpl[from] = templateOf(pkt)
	f.hsWin[from] = int(p.tcp.Window()) // not scaled in a SYN (RFC 7323 §2.2)
	if p.opts.HasTS {
		f.tsv[from] = p.opts.TSVal
	}
	if f.down.synned && f.up.synned {
		f.established = true
		f.sndMax = f.down.isn.Add(1)
		f.lastAck, f.ackValid = f.down.isn.Add(1), false
	}
	return true
}

// expireIdle forgets flows that have been silent for IdleTimeout (their
// ends vanished without FIN or RST), and those silent for
// HandshakeTimeout that never completed their handshake or saw an RST. A
// split flow holding bytes its receiver has not acknowledged is left to
// GiveUp: forgetting it would lose them.
func (e *shard) expireIdle() {
	now := e.cfg.Clock.Now()
	e.lastSweep = now
	idle, short := now.Add(-e.cfg.IdleTimeout), now.Add(-e.cfg.HandshakeTimeout)
	for _, f := range e.flows {
		quick := !f.established || !f.rstAt.IsZero()
		if f.lastSeen.Before(idle) || quick && f.lastSeen.Before(short) {
			if f.holds() {
				continue
			}
			e.drop(f)
			e.st.Expired++
		}
	}
}

// holds reports whether a split flow holds bytes it acknowledged early
// that their receiver has not acknowledged.
func (f *flow) holds() bool {
	if f.sp == nil {
		return false
	}
	for i := range f.sp.st {
		if st := &f.sp.st[i]; st.sndUna != st.rcvNxt || len(st.ooo) > 0 {
			return true
		}
	}
	return false
}

func (e *shard) drop(f *flow) {
	e.journalGone(f)
	if sp := f.sp; sp != nil {
		for i := range sp.st {
			st := &sp.st[i]
			st.buf.releaseAll(&e.pool)
			if st.timer != nil {
				st.timer.Stop()
			}
		}
	}
	for i := range f.cache {
		e.bufs.put(f.cache[i].pkt)
	}
	e.cacheMem -= f.cacheBytes
	f.cache, f.cacheBuf, f.cacheBytes = nil, nil, 0
	if f.kind == kindPlain {
		e.nPlain--
	}
	f.timerArmed = false
	if f.stimer != nil {
		f.stimer.Stop()
	}
	delete(e.flows, f.key)
}

// maybeClose forgets a flow once both sides have sent FIN and the radio
// side has acknowledged everything toward it.
func (e *shard) maybeClose(f *flow) {
	if f.down.finned && f.up.finned && len(f.cache) == 0 {
		e.drop(f)
	}
}

// flushDeferred sends the pure ACKs held back during a batch (the shard's
// lock held).
func (e *shard) flushDeferred() {
	if len(e.deferred) == 0 {
		return
	}
	cur := e.cur
	e.cur.More = false
	now := e.cfg.Clock.Now()
	for i, f := range e.deferred {
		f.ackDeferred = false
		if e.flows[f.key] == f && f.sp != nil {
			e.splitFlush(f, now)
		}
		e.deferred[i] = nil
	}
	e.deferred = e.deferred[:0]
	e.cur = cur
}
