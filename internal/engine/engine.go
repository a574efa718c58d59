package engine

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// Mode is how the engine accelerates the flows it tracks.
type Mode uint8

const (
	ModeSnoop Mode = iota // cache and resend locally; no early ACKs
	ModeSplit             // acknowledge early and deliver with the engine's own sender (TCP-GW)
)

func (m Mode) String() string {
	if m == ModeSplit {
		return "split"
	}
	return "snoop"
}

// Config tunes the engine. Zero fields take the defaults noted.
type Config struct {
	// Mode: snoop (default) or split.
	Mode Mode
	// CC names split mode's congestion controller: CCBBR (default), which
	// does not take random loss for congestion, or CCReno.
	CC string
	// BufferPerFlow bounds what split mode holds per direction of a flow
	// (default 4 MB): the window it advertises to a sender never reaches
	// beyond it. BufferTotal bounds it over all flows (default 512 MB);
	// beyond it no window grows.
	BufferPerFlow, BufferTotal int
	// Clock drives the local retransmission timers (default: real time).
	Clock netem.Clock
	// MaxFlows bounds the flow table (default 65536); flows beyond it are
	// relayed untouched.
	MaxFlows int
	// CachePerFlow bounds the bytes cached per flow (default 1 MB); what
	// does not fit is forwarded uncached.
	CachePerFlow int
	// MinRTO and MaxRTO bound the local retransmission timeout on the
	// radio leg (defaults 20 ms and 1 s).
	MinRTO, MaxRTO time.Duration
	// GiveUp: a split flow whose receiver has acknowledged nothing for
	// this long while the engine had data for it is reset at both ends
	// (default 2 minutes; RFC 9293 §3.8.3's R2 is at least 100 s).
	GiveUp time.Duration
	// MaxLocalRexmits is how often one segment is resent locally before
	// the engine leaves recovery to the sender (default 6).
	MaxLocalRexmits int
	// IdleTimeout: a flow without a packet for this long is forgotten
	// (default 10 minutes) — unless it is a split flow that holds bytes a
	// receiver has not acknowledged, which GiveUp ends instead.
	IdleTimeout time.Duration
	// HandshakeTimeout: a flow whose handshake has not completed, or that
	// saw an RST, is forgotten this long after its last packet (default
	// 30 s): a flood of SYNs or RSTs holds the table only so long.
	HandshakeTimeout time.Duration
	// MaxPlainFlows bounds the flows opened by packets nobody verified
	// (ProcessPlain; default MaxFlows/2), so that spoofed SYNs cannot
	// take the table from protected flows.
	MaxPlainFlows int
	// CacheTotal bounds the memory snoop's caches hold over all flows
	// (default 256 MB), counted in the buffers really held, not the
	// packet lengths; what does not fit is forwarded uncached.
	CacheTotal int
	// DupAcks says what snoop does with the duplicate ACKs it answered:
	// DupAcksAuto (default) swallows them on flows without SACK (classic
	// snoop: the sender does not fast-retransmit) and forwards them on
	// SACK flows, whose senders see the loss in the SACK blocks anyway and
	// need their ACK clock. Measured: swallowing helps loss-based senders
	// (gVisor CUBIC with SACK ≈ 3× end to end at 2 % loss, forwarded ≈
	// 1.3×) and starves rate-based ones (Linux BBR 0.3× swallowed, 1.0×
	// forwarded).
	DupAcks DupAckPolicy
	// NoTailProbes turns the split sender's tail loss probes (RFC 8985
	// §7) off; they are on by default.
	NoTailProbes bool
	// SnoopOriginal makes snoop resend the cached packets exactly as they
	// came (the gateway needs it with read-class SAs, where it resends
	// ciphertext). By default a resent segment gets the sender's latest
	// TSval, or the receiver's PAWS check would drop it.
	SnoopOriginal bool
}

// DupAckPolicy is what snoop does with duplicate ACKs it has answered.
type DupAckPolicy uint8

const (
	DupAcksAuto    DupAckPolicy = iota // swallow without SACK, forward with SACK
	DupAcksForward                     // always forward
	DupAcksSwallow                     // always swallow (classic snoop)
)

// Stats are the engine's global counters.
type Stats struct {
	Packets, Relayed                    uint64 // all packets; packets of untracked flows
	Flows, FlowsMax                     int
	Cached, CacheFull                   uint64 // segments cached; segments that did not fit
	LocalRexmits, TimeoutRexmits        uint64 // resends on dupacks; on the local timer
	SuppressedDupAcks, ForwardedDupAcks uint64
	CachedBytes                         int    // memory held by snoop's caches (whole buffers)
	Expired                             uint64 // idle flows forgotten
	PlainRefused                        uint64 // unverified packets for flows opened by verified ones (ProcessPlain): refused
	KindRelayed                         uint64 // packets of a kind other than their flow's (opaque vs. verified): relayed untouched
	ChallengeAcks                       uint64 // ACKs sent in answer to an RST or ACK the engine did not accept (RFC 5961)
	RSTIgnored                          uint64 // RSTs that did not match what the receiver expects: the flow kept
	AckIgnored                          uint64 // ACKs for bytes never sent, or far below the window: ignored
	TSRefreshed                         uint64 // snoop resends given the sender's latest TSval

	// split mode
	EarlyAcked                  uint64 // bytes acknowledged on the receiver's behalf
	Emitted                     uint64 // segments the engine built
	SplitRexmits, SplitTimeouts uint64 // segments resent; retransmission timeouts
	Probes, Resets              uint64 // zero-window probes; RSTs passed on
	TailProbes                  uint64 // tail loss probes (RFC 8985 §7)
	GaveUp                      uint64 // flows reset because the receiver stopped answering
	OutOfWindow                 uint64 // segments beyond the advertised window or the out-of-order bound
	BufferedBytes               int    // bytes held in split buffers (whole chunks)

	// The smoothed RTT estimates of the flows' legs (snoop measures only
	// the radio leg; split both, each with its own sender).
	RadioRTT, WireRTT RTTSummary
}

// RTTSummary sums up the smoothed RTT estimates of the flows that have one.
type RTTSummary struct {
	Flows          int
	Min, Mean, Max time.Duration
}

func (r *RTTSummary) add(d time.Duration) {
	if d <= 0 {
		return
	}
	if r.Flows == 0 || d < r.Min {
		r.Min = d
	}
	r.Max = max(r.Max, d)
	// A running mean: no sum to overflow at many flows.
	r.Flows++
	r.Mean += (d - r.Mean) / time.Duration(r.Flows)
}

// Engine processes packets between the wire and the radio side. It is safe
// for concurrent use; packets are handled one at a time.
type Engine struct {
	cfg Config
	out func(to Side, pkt []byte)

	mu        sync.Mutex
	flows     map[flowKey]*flow
	nPlain    int // flows opened by ProcessPlain
	st        Stats
	cacheMem  int // bytes of buffers snoop's caches hold
	janitor   netem.Timer
	lastSweep time.Time
	closed    bool
	pool      chunkPool
	bufs      bufPool // snoop's cached packets
	maxChunks int
	scratch   []byte // split mode builds its packets here

	timerFires uint64 // split-mode timer callbacks (tests watch for spinning)
}

// New makes an engine that sends packets through out, which must not keep
// pkt after it returns (copy it if it does). out is called with the
// engine's lock held and must not call back into the engine.
func New(cfg Config, out func(to Side, pkt []byte)) (*Engine, error) {
	if _, err := newController(cfg.CC, 1460); err != nil {
		return nil, err
	}
	if cfg.Mode > ModeSplit {
		return nil, fmt.Errorf("engine: unknown mode %d", cfg.Mode)
	}
	if cfg.BufferPerFlow == 0 {
		cfg.BufferPerFlow = 4 << 20
	}
	if cfg.BufferTotal == 0 {
		cfg.BufferTotal = 512 << 20
	}
	if cfg.BufferPerFlow < 2*chunkSize || cfg.BufferTotal < cfg.BufferPerFlow {
		return nil, fmt.Errorf("engine: buffer bounds %d per flow, %d in all: want at least %d per flow and no more than in all",
			cfg.BufferPerFlow, cfg.BufferTotal, 2*chunkSize)
	}
	if cfg.Clock == nil {
		cfg.Clock = netem.RealClock{}
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = 65536
	}
	if cfg.CachePerFlow == 0 {
		cfg.CachePerFlow = 1 << 20
	}
	if cfg.MinRTO == 0 {
		cfg.MinRTO = 20 * time.Millisecond
	}
	if cfg.MaxRTO == 0 {
		cfg.MaxRTO = time.Second
	}
	if cfg.MinRTO > cfg.MaxRTO {
		return nil, fmt.Errorf("engine: minimum RTO %v above the maximum %v", cfg.MinRTO, cfg.MaxRTO)
	}
	if cfg.GiveUp == 0 {
		cfg.GiveUp = 2 * time.Minute
	}
	if cfg.MaxLocalRexmits == 0 {
		cfg.MaxLocalRexmits = 6
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.MaxPlainFlows == 0 {
		cfg.MaxPlainFlows = max(cfg.MaxFlows/2, 1)
	}
	if cfg.CacheTotal == 0 {
		cfg.CacheTotal = 256 << 20
	}
	e := &Engine{cfg: cfg, out: out, flows: map[flowKey]*flow{}, maxChunks: cfg.BufferTotal / chunkSize,
		scratch: make([]byte, 0, maxSegment+200)}
	e.janitor = cfg.Clock.AfterFunc(e.sweepEvery(), e.sweep)
	return e, nil
}

// sweepEvery is how often idle flows are looked for.
func (e *Engine) sweepEvery() time.Duration {
	return min(e.cfg.IdleTimeout, e.cfg.HandshakeTimeout) / 2
}

// sweep forgets the flows that have been idle too long (expireIdle) and
// runs again later, until Close.
func (e *Engine) sweep() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.expireIdle()
	e.janitor.Reset(e.sweepEvery())
}

// Close forgets every flow (stopping its timers) and stops the engine's
// own timer; Process relays untouched from then on.
func (e *Engine) Close() {
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

// Stats returns a snapshot of the counters.
func (e *Engine) Stats() Stats {
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

// FlowInfo is one flow's counters and estimates, for metrics.
type FlowInfo struct {
	Wire, Radio                  netip.AddrPort
	Established                  bool
	CachedSegments, CachedBytes  int
	SRTT, RTO                    time.Duration // radio leg
	LocalRexmits, TimeoutRexmits uint64
	SuppressedDupAcks            uint64
	// Split mode: the engine's sender toward each side.
	Split bool
	Down  StreamInfo // wire → radio
	Up    StreamInfo // radio → wire
}

// StreamInfo is one direction of a split flow.
type StreamInfo struct {
	EarlyAcked                uint64 // bytes acknowledged to the sender early
	Buffered                  int    // bytes held: acknowledged to the sender, not yet by the receiver
	InFlight, Cwnd            int
	SRTT, MinRTT, RTO         time.Duration
	Rexmits, Timeouts, Probes uint64
	TailProbes                uint64
	DSACKs, Spurious          uint64 // resends the receiver reported duplicated; resends seen to be spurious
}

func (st *stream) info() StreamInfo {
	return StreamInfo{EarlyAcked: st.earlyAcked, Buffered: diff(st.sndUna, st.rcvNxt), InFlight: st.inflight,
		Cwnd: st.cc.Window(), SRTT: st.srtt, MinRTT: st.minRTT, RTO: st.rto, Rexmits: st.rexmits,
		Timeouts: st.timeouts, Probes: st.probes, TailProbes: st.tlps, DSACKs: st.dsacks, Spurious: st.spurious}
}

// Flows returns the counters of every flow.
func (e *Engine) Flows() []FlowInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]FlowInfo, 0, len(e.flows))
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
}

func parse(pkt []byte) (parsed, bool) {
	var p parsed
	if len(pkt) == 0 {
		return p, false
	}
	var l4 []byte
	var src, dst netip.Addr
	switch pkt[0] >> 4 {
	case 4:
		h, err := header.ParseIPv4(pkt)
		if err != nil || h.Protocol() != header.ProtoTCP || h.IsFragment() {
			return p, false
		}
		src, dst, l4 = h.Src(), h.Dst(), h.Payload()
	case 6:
		h, err := header.ParseIPv6(pkt)
		if err != nil {
			return p, false
		}
		proto, off, _, err := h.UpperLayer()
		if err != nil || proto != header.ProtoTCP {
			return p, false
		}
		src, dst, l4 = h.Src(), h.Dst(), h[off:]
	default:
		return p, false
	}
	t, err := header.ParseTCP(l4)
	if err != nil || header.ParseTCPOptions(t.Options(), &p.opts) != nil {
		return p, false
	}
	p.tcp, p.payload = t, len(t.Payload())
	p.src, p.dst = netip.AddrPortFrom(src, t.SrcPort()), netip.AddrPortFrom(dst, t.DstPort())
	return p, true
}

// Process handles one IP packet that arrived from side from: one whose
// protection the caller verified, or one that needs none (an engine
// without IPsec around it). The packet (or nothing, for a suppressed
// duplicate ACK) goes on to the other side through out, possibly with
// other packets the engine makes.
func (e *Engine) Process(from Side, pkt []byte) {
	e.process(from, pkt, pkt, kindVerified)
}

// ProcessPlain is Process for a packet nobody verified (cleartext TCP
// beside IPsec-protected flows). A flow opened by a verified packet stays
// bound to its protection: ProcessPlain refuses its packets, doing
// nothing, and reports false (the caller drops them) — a spoofed RST or
// ACK in the clear cannot touch it. Flows it opens count against
// MaxPlainFlows, and become verified flows when a verified packet shows
// them.
func (e *Engine) ProcessPlain(from Side, pkt []byte) bool {
	return e.process(from, pkt, pkt, kindPlain)
}

// ProcessOpaque is Process for a packet the engine may read but not
// change: it reads pkt (the decrypted inside of an IPsec packet of a
// read-class SA) and forwards, caches and resends wire (the packet as it
// came, ciphertext) — never anything else (DESIGN.md rule 4: a read
// gateway never invents a packet). Its flows are snoop flows whatever the
// mode, and their resends are the cached bytes exactly. Such a packet for
// a flow of another kind, or another kind's packet for its flow, is
// relayed untouched.
func (e *Engine) ProcessOpaque(from Side, pkt, wire []byte) {
	e.process(from, pkt, wire, kindOpaque)
}

// process reads pkt and forwards wire (the same bytes, unless opaque). It
// reports false for a plain packet refused by a verified flow.
func (e *Engine) process(from Side, pkt, wire []byte, kind flowKind) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st.Packets++
	p, ok := parse(pkt)
	if !ok || e.closed {
		e.st.Relayed++
		e.out(from.other(), wire)
		return true
	}
	pkt = wire // from here on only what goes out matters
	k := flowKey{wire: p.src, radio: p.dst}
	if from == Radio {
		k = flowKey{wire: p.dst, radio: p.src}
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
			e.out(from.other(), pkt)
			return true
		}
	}
	now := e.cfg.Clock.Now()
	if f == nil {
		// Only a SYN opens a flow; anything else is relayed untouched.
		syn := p.tcp.Has(header.TCPSyn) && !p.tcp.Has(header.TCPAck)
		if syn && len(e.flows) >= e.cfg.MaxFlows && now.Sub(e.lastSweep) >= time.Second {
			e.expireIdle() // at most once a second: a SYN flood must not make every SYN scan the table
		}
		full := len(e.flows) >= e.cfg.MaxFlows || kind == kindPlain && e.nPlain >= e.cfg.MaxPlainFlows
		if !syn || full {
			e.st.Relayed++
			e.out(from.other(), pkt)
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
		e.splitPacket(f, from, &p, pkt)
		return true
	}
	if e.handshake(f, from, &p, pkt) {
		e.out(from.other(), pkt)
		return true
	}
	if p.tcp.Has(header.TCPRst) {
		e.snoopReset(f, from, &p, pkt)
		return true
	}
	if from == Wire {
		e.downData(f, &p, pkt)
	} else if !e.upAck(f, &p, pkt) {
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
func (e *Engine) snoopReset(f *flow, from Side, p *parsed, pkt []byte) {
	seq := seqnum.Value(p.tcp.Seq())
	exact := from == Wire && f.ackValid && seq == f.lastAck ||
		from == Radio && f.wireAckValid && seq == f.wireAck
	e.out(from.other(), pkt)
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
func (e *Engine) splitPacket(f *flow, from Side, p *parsed, pkt []byte) {
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
	e.out(from.other(), pkt)
}

// handshake learns the options of each SYN; it reports whether the packet
// was part of the handshake (and so is just forwarded).
func (e *Engine) handshake(f *flow, from Side, p *parsed, pkt []byte) bool {
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
func (e *Engine) expireIdle() {
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

func (e *Engine) drop(f *flow) {
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
func (e *Engine) maybeClose(f *flow) {
	if f.down.finned && f.up.finned && len(f.cache) == 0 {
		e.drop(f)
	}
}
