package engine

import (
	"fmt"
	"github.com/espep/espep/ipsec/header"
	"net/netip"
	"reflect"
	"time"

	"github.com/espep/espep/internal/netem"
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
	// Shards is how many parts the flow table is cut into, each with its
	// own lock, so that as many packets of different flows are processed
	// at once (default 1; the gateway uses one per core). MaxFlows,
	// MaxPlainFlows, BufferTotal and CacheTotal are shared out evenly.
	Shards int
	// PartialChecksums: the segments split builds carry a TCP checksum
	// left partial — the pseudo header's sum alone (header.TCP's
	// SetPartialChecksum), what VIRTIO_NET_HDR_F_NEEDS_CSUM asks for — and
	// Emitted.Partial says so; whoever takes them completes it
	// (CompleteChecksum) or has a device do it. Summing a segment costs
	// as much as its copy, and a device that offloads it, or a coalesced
	// write that sums the super-packet anew, makes the sum wasted work.
	PartialChecksums bool
	// Journal, if set, keeps split's bytes outside the process before
	// they are acknowledged early (journal.go), so that a process killed
	// mid-transfer loses none of them.
	Journal Journal
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
	TimerFires                  uint64 // split-mode timer callbacks: the engine's own wake-ups
	TimersLate                  uint64 // of those, ones that ran lateTimer or more after their deadline
	JournalFailed               uint64 // journal writes that failed: bytes or flows not taken, or commits (split with Journal)
	JournalHeld                 uint64 // packets dropped until the bytes they could acknowledge are in the journal
	JournalCheckpoints          uint64 // times a shard wrote its flows to a fresh journal
	BufferedBytes               int    // bytes held in split buffers (whole chunks)

	// Why the sender stopped with something left to send: its congestion
	// window was full, the receiver's window was, or the pacer held it.
	// Which limit a leg meets says where its rate is set.
	CwndLimited, WindowLimited, PaceLimited uint64

	// Requests (Engine.Request, Elicit, Ack) served, and refused because
	// the queue was full.
	Requests, RequestsRefused uint64

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
// for concurrent use: flows are spread over Config.Shards shards by their
// endpoints, each with its own lock, flow table, buffers and timers, so
// packets of different flows are processed in parallel and those of one
// flow one at a time.
//
// What the engine tells its caller. Every packet it hands to Output says
// what it is (Emitted.Origin): the packet being processed, passed on
// unchanged (Forwarded, with the caller's Input.Tag); an earlier packet
// resent exactly as it came from snoop's cache (Cached); or a packet the
// engine built (Built) — split's segments and ACKs, snoop's resends with
// a refreshed timestamp. Output runs under the lock of the shard named in
// Emitted.Shard and must not call into the engine, except Request, which
// queues; queued requests are served once the lock is released.
//
// Locks: a shard's mu, taken by Process, the shard's timers and the
// public methods; never two shards' at once. Close stops the shards one
// by one.
type Engine struct {
	cfg    Config
	shards []*shard
	reqs   requests
}

// Output takes a packet the engine sends on toward side to. It must not
// keep pkt after it returns (copy it if it does).
type Output func(to Side, pkt []byte, m Emitted)

// Origin says what a packet the engine sends on is.
type Origin uint8

const (
	Forwarded Origin = iota // the packet being processed, unchanged (ProcessOpaque's: its wire form)
	Cached                  // an earlier packet, resent exactly as it came (an opaque flow's: its wire form)
	Built                   // made by the engine
)

func (o Origin) String() string {
	switch o {
	case Forwarded:
		return "forwarded"
	case Cached:
		return "cached"
	}
	return "built"
}

// Emitted describes a packet handed to Output.
type Emitted struct {
	Origin Origin
	// Opaque: the packet is the wire form of a read-only flow's packet
	// (ProcessOpaque): it must go out exactly as it is.
	Opaque bool
	// Shard is the shard whose lock is held while Output runs, in
	// [0, Shards()): a caller may keep per-shard scratch buffers.
	Shard int
	// Tag is the Input.Tag of the packet being processed, for Forwarded.
	Tag any
	// Src and Dst are the packet's endpoints, as the engine read or built
	// them; zero for a packet it forwarded without reading (not TCP).
	Src, Dst netip.AddrPort
	// Partial: a Built packet's TCP checksum is left partial
	// (Config.PartialChecksums); its IPv4 header checksum is whole.
	Partial bool
}

// Input is what the caller says of a packet it hands to Handle.
type Input struct {
	// Kind: who vouches for the packet (Verified, Plain or Opaque).
	Kind Kind
	// Wire is, for Opaque, the packet as it came (ciphertext): what is
	// forwarded, cached and resent in place of the packet read.
	Wire []byte
	// Tag is handed back in Emitted.Tag if the packet is forwarded
	// unchanged (a pointer: storing one allocates nothing).
	Tag any
	// IP, if not nil, is the packet's IP headers as the caller parsed
	// them: the engine reads only the TCP header.
	IP *header.Parsed
	// More says that more packets follow at once (the rest of a batch
	// read from a device): split holds back the pure ACKs it would send
	// now, as a receiver does for a GRO batch, and sends one per flow
	// with the batch's last packet or at Flush.
	More bool
}

// Kind is who vouches for a packet handed to the engine.
type Kind uint8

const (
	Verified Kind = iota // its protection was verified, or it needs none
	Plain                // nobody verified it: cleartext beside protected flows (ProcessPlain)
	Opaque               // readable but not to be changed (ProcessOpaque)
)

// New makes an engine that sends packets through out.
func New(cfg Config, out Output) (*Engine, error) {
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
	switch {
	case cfg.Shards < 0 || cfg.Shards > maxShards:
		return nil, fmt.Errorf("engine: %d shards: want 0 (one) to %d", cfg.Shards, maxShards)
	case cfg.Shards == 0:
		cfg.Shards = 1
	}
	e := &Engine{cfg: cfg}
	n := cfg.Shards
	for i := range n {
		s := &shard{cfg: &e.cfg, eng: e, id: i, out: out, flows: map[flowKey]*flow{},
			scratch: make([]byte, 0, maxSegment+200)}
		// The table, buffer and cache bounds are the shards' shares.
		s.maxFlows, s.maxPlain = ceilDiv(cfg.MaxFlows, n), ceilDiv(cfg.MaxPlainFlows, n)
		s.maxChunks, s.cacheTotal = cfg.BufferTotal/chunkSize/n, cfg.CacheTotal/n
		if cfg.Journal != nil {
			s.log = cfg.Journal.Shard(i)
		}
		s.janitor = cfg.Clock.AfterFunc(s.sweepEvery(), s.sweep)
		e.shards = append(e.shards, s)
	}
	return e, nil
}

// maxShards bounds Config.Shards.
const maxShards = 256

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// Flush sends the pure ACKs held back for packets handed over with
// Input.More; the caller calls it after the last packet of a batch.
func (e *Engine) Flush() {
	for _, s := range e.shards {
		s.lock()
		s.flushDeferred()
		s.unlock()
	}
}

// GiveUpAfter is how long a split flow may go without progress before the
// engine gives its held bytes up (Config.GiveUp with its default): also how
// long flows kept over a restart are worth taking back.
func (e *Engine) GiveUpAfter() time.Duration { return e.cfg.GiveUp }

// ImportBound is the most one direction of a split flow may hold and
// still be imported.
func (e *Engine) ImportBound() int { return e.cfg.BufferPerFlow + importSlack }

// Shards reports how many shards the engine has (Emitted.Shard is below).
func (e *Engine) Shards() int { return len(e.shards) }

// shardOf returns the shard that owns the flow k.
func (e *Engine) shardOf(k flowKey) *shard {
	if len(e.shards) == 1 {
		return e.shards[0]
	}
	return e.shards[k.hash()%uint32(len(e.shards))]
}

// Close forgets every flow (stopping its timers) and stops the shards'
// own timers, shard by shard; Process relays untouched from then on. A
// timer callback that was already running when Close took its shard's
// lock finds its flow gone and returns; none is left after Close.
func (e *Engine) Close() {
	for _, s := range e.shards {
		s.close()
	}
}

// Stats returns a snapshot of the counters, summed over the shards
// (FlowsMax is the largest of any one shard's table).
func (e *Engine) Stats() Stats {
	var sum Stats
	for _, s := range e.shards {
		sum.add(s.stats())
	}
	sum.Requests, sum.RequestsRefused = e.reqs.counts()
	return sum
}

// Flows returns the counters of every flow.
func (e *Engine) Flows() []FlowInfo {
	var out []FlowInfo
	for _, s := range e.shards {
		out = s.flowInfos(out)
	}
	return out
}

// Process handles one IP packet that arrived from side from: one whose
// protection the caller verified, or one that needs none (an engine
// without IPsec around it). The packet (or nothing, for a suppressed
// duplicate ACK) goes on to the other side through out, possibly with
// other packets the engine makes.
func (e *Engine) Process(from Side, pkt []byte) {
	e.Handle(from, pkt, Input{})
}

// ProcessPlain is Process for a packet nobody verified (cleartext TCP
// beside IPsec-protected flows). A flow opened by a verified packet stays
// bound to its protection: ProcessPlain refuses its packets, doing
// nothing, and reports false (the caller drops them) — a spoofed RST or
// ACK in the clear cannot touch it. Flows it opens count against
// MaxPlainFlows, and become verified flows when a verified packet shows
// them.
func (e *Engine) ProcessPlain(from Side, pkt []byte) bool {
	return e.Handle(from, pkt, Input{Kind: Plain})
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
	e.Handle(from, pkt, Input{Kind: Opaque, Wire: wire})
}

// Handle is Process, ProcessPlain and ProcessOpaque in one, with a tag
// handed back if the packet is forwarded unchanged. It reports false for
// a Plain packet refused by a verified flow (nothing was sent). The
// engine reads pkt (and in.Wire) only during the call — what it forwards
// goes to Output before Handle returns, what it keeps it copies — so the
// caller may reuse the buffer at once (the TUN and AF_PACKET readers do).
func (e *Engine) Handle(from Side, pkt []byte, in Input) bool {
	wire := pkt
	if in.Kind == Opaque {
		wire = in.Wire
	}
	var p parsed
	var ok bool
	if in.IP != nil {
		p, ok = parseTCP(pkt, in.IP)
	} else {
		p, ok = parse(pkt)
	}
	if !ok {
		// Not a TCP packet the engine can read: the first shard counts it
		// and passes it on.
		s := e.shards[0]
		s.lock()
		defer s.unlock()
		s.cur = in
		s.st.Packets++
		s.st.Relayed++
		s.forward(from.other(), wire)
		s.cur = Input{}
		return true
	}
	k := flowKey{wire: p.src, radio: p.dst}
	if from == Radio {
		k = flowKey{wire: p.dst, radio: p.src}
	}
	return e.shardOf(k).process(from, k, &p, wire, in)
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
	DSACKs, Spurious          uint64  // resends the receiver reported duplicated; resends seen to be spurious
	Window                    int     // the receiver's window, bytes
	PacingRate                float64 // bytes per second; 0: not paced
}

func (st *stream) info() StreamInfo {
	return StreamInfo{EarlyAcked: st.earlyAcked, Buffered: diff(st.sndUna, st.rcvNxt), InFlight: st.inflight,
		Cwnd: st.cc.Window(), SRTT: st.srtt, MinRTT: st.minRTT, RTO: st.rto, Rexmits: st.rexmits,
		Timeouts: st.timeouts, Probes: st.probes, TailProbes: st.tlps, DSACKs: st.dsacks, Spurious: st.spurious,
		Window: st.wnd, PacingRate: st.cc.PacingRate()}
}

// add sums o into s field by field (every counter and gauge, whatever
// its name, so a new one cannot be left out), keeping the larger FlowsMax
// and merging the RTT summaries.
func (s *Stats) add(o Stats) {
	sv, ov := reflect.ValueOf(s).Elem(), reflect.ValueOf(o)
	for i := range sv.NumField() {
		f, g := sv.Field(i), ov.Field(i)
		switch {
		case sv.Type().Field(i).Name == "FlowsMax":
			f.SetInt(max(f.Int(), g.Int()))
		case f.Kind() == reflect.Uint64:
			f.SetUint(f.Uint() + g.Uint())
		case f.Kind() == reflect.Int:
			f.SetInt(f.Int() + g.Int())
		}
	}
	s.RadioRTT.merge(o.RadioRTT)
	s.WireRTT.merge(o.WireRTT)
}

// merge folds another summary into r.
func (r *RTTSummary) merge(o RTTSummary) {
	if o.Flows == 0 {
		return
	}
	if r.Flows == 0 {
		*r = o
		return
	}
	n := r.Flows + o.Flows
	r.Mean = time.Duration((int64(r.Mean)*int64(r.Flows) + int64(o.Mean)*int64(o.Flows)) / int64(n))
	r.Min, r.Max, r.Flows = min(r.Min, o.Min), max(r.Max, o.Max), n
}
