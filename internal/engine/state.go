package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/espep/espep/internal/seqnum"
)

// FlowState is a flow as plain data: everything another engine needs to
// carry it on (DESIGN.md: a flow is serialized, sent to another gateway
// and resumed). It marshals to JSON as it is.
type FlowState struct {
	Wire, Radio netip.AddrPort
	Mode        Mode
	Opaque      bool // snoop on packets it may not change (ProcessOpaque)
	Plain       bool // opened by packets nobody verified (ProcessPlain), and never shown by a verified one
	// What the handshake showed: who opened, each side's IP header, last
	// window and timestamp.
	Initiator   Side
	IP          [2]ipTemplate
	HSWin       [2]int
	HSTS        [2]uint32
	Down, Up    HalfState
	Established bool
	SndMax      uint32
	LastAck     uint32
	AckValid    bool
	LastWindow  uint16
	DupAcks     int
	ExpectDup   int
	InRecovery  bool
	Recover     uint32
	SRTT        time.Duration
	RTTVar      time.Duration
	RTO         time.Duration
	// Cache holds the unacknowledged segments toward the radio, whole IP
	// packets as forwarded, oldest first.
	Cache []SegState
	// Split is the state of a split-mode flow (nil in snoop mode, and
	// while the handshake is still passing end to end).
	Split *SplitState `json:",omitempty"`
}

// Buffered is how many bytes of the endpoints' data a split flow holds
// (both directions; 0 for snoop).
func (f *FlowState) Buffered() int {
	n := 0
	if f.Split != nil {
		for i := range f.Split.Streams {
			n += f.Split.Streams[i].Held()
		}
	}
	return n
}

// SplitState is a split flow: both directions, with the bytes the engine
// holds for each.
type SplitState struct {
	TS      [2]uint32 // latest TSval from each side
	Shift   [2]uint8
	TSOn    bool
	SACKOn  bool
	IP      [2]ipTemplate
	Streams [2]StreamState // by the side of the sending endpoint
}

// StreamState is one direction of a split flow.
type StreamState struct {
	RcvNxt, RcvEdge uint32
	OOO             [][2]uint32 // ranges held above RcvNxt
	FinSeen         bool
	FinSeq          uint32
	PushOn          bool // the sender pushed, up to Push
	Push            uint32
	// Data, then Chunks, are every byte held, from SndUna on (through
	// the last range held out of order; the gaps are zeros). An export
	// that removes the flow hands over the engine's own buffer, in the
	// pieces it holds it in (Chunks; Data empty); any other gives Data.
	Data              []byte
	Chunks            [][]byte `json:",omitempty"`
	SndUna, SndNxt    uint32
	Wnd               int
	WL1, WL2          uint32
	Segs              []TxSegState
	FinSent, FinAcked bool
	SMSS              int
	SRTT, RTTVar, RTO time.Duration
	MinRTT            time.Duration
	Backoff           int
	InRecovery        bool
	Recover           uint32
	ReoMult           int
	CC                CCState
	EarlyAcked        uint64
	Rexmits           uint64
}

// Held is how many bytes Data and Chunks hold together.
func (x *StreamState) Held() int {
	n := len(x.Data)
	for _, c := range x.Chunks {
		n += len(c)
	}
	return n
}

// Pieces are the bytes held, in order: Data, then each of Chunks.
func (x *StreamState) Pieces() [][]byte {
	return append([][]byte{x.Data}, x.Chunks...)
}

// TxSegState is one segment sent and not yet cumulatively acknowledged.
type TxSegState struct {
	Seq, End          uint32
	Fin, Sacked, Lost bool
	Rexmits           uint8
}

// state is the flow's split state. With dataMove, the streams' buffers
// are handed over (Chunks) and the flow holds none after (it is being
// removed); with dataCopy they are copied (Data); with dataNone neither
// they nor the segments in flight are given.
func (sp *splitFlow) state(pool *chunkPool, how dataMode) *SplitState {
	ss := &SplitState{TS: sp.ts, Shift: sp.shift, TSOn: sp.tsOn, SACKOn: sp.sackOn, IP: sp.ip}
	for i := range sp.st {
		st := &sp.st[i]
		x := &ss.Streams[i]
		*x = StreamState{RcvNxt: uint32(st.rcvNxt), RcvEdge: uint32(st.rcvEdge), FinSeen: st.finSeen, FinSeq: uint32(st.finSeq),
			PushOn: st.pushOn, Push: uint32(st.push),
			SndUna: uint32(st.sndUna), SndNxt: uint32(st.sndNxt), Wnd: st.wnd, WL1: uint32(st.wl1), WL2: uint32(st.wl2),
			FinSent: st.finSent, FinAcked: st.finAcked, SMSS: st.smss, SRTT: st.srtt, RTTVar: st.rttvar, RTO: st.rto,
			MinRTT: st.minRTT, Backoff: st.backoff, InRecovery: st.inRecovery, Recover: uint32(st.recover),
			ReoMult: st.reoMult, CC: st.cc.State(), EarlyAcked: st.earlyAcked, Rexmits: st.rexmits}
		if how == dataNone {
			continue
		}
		end := st.rcvNxt
		for _, o := range st.ooo {
			x.OOO = append(x.OOO, [2]uint32{uint32(o.start), uint32(o.end)})
			end = seqnum.Max(end, o.end)
		}
		if n := diff(st.sndUna, end); n > 0 && how == dataMove {
			prev := st.rcvNxt
			for _, o := range st.ooo { // ascending, disjoint
				if m := diff(prev, o.start); m > 0 {
					st.buf.zero(prev, m)
				}
				prev = o.end
			}
			x.Chunks = st.buf.take(pool, st.sndUna, n)
		} else if n > 0 {
			x.Data = make([]byte, n)
			for _, r := range append([]span{{st.sndUna, st.rcvNxt}}, st.ooo...) {
				if m := diff(r.start, r.end); m > 0 {
					st.buf.read(x.Data[diff(st.sndUna, r.start):][:m], r.start)
				}
			}
		}
		for _, s := range st.segs {
			x.Segs = append(x.Segs, TxSegState{uint32(s.seq), uint32(s.end), s.fin, s.sacked, s.lost, s.rexmits})
		}
	}
	return ss
}

// importSlack is how far past BufferPerFlow an imported stream may hold.
// The exporter kept within BufferPerFlow of what it advertised, but an
// advertised right edge never moves left and is rounded up to the window
// scale's unit from an ACK that moves by other amounts, so while the
// receiver is slower than the sender it creeps past sndUna+BufferPerFlow
// by up to 2^wscale−1 bytes an ACK (RFC 7323 Appendix F; Linux has the
// same creep): 54–200 KB were seen with wscale 10 after a few seconds
// toward a 20 Mbit/s radio. Refusing such a flow would lose every byte the
// exporter acknowledged early (DESIGN.md rule 5).
const importSlack = 1 << 20

// restore rebuilds a split flow from its state; the segments in flight
// count as sent now (for RACK's order) and give no RTT or rate sample.
func (e *shard) restore(f *flow, ss *SplitState, now time.Time, moved bool) (err error) {
	sp := &splitFlow{ts: ss.TS, shift: ss.Shift, tsOn: ss.TSOn, sackOn: ss.SACKOn, ip: ss.IP, moved: true}
	defer func() {
		if err != nil { // give back what was buffered
			for i := range sp.st {
				sp.st[i].buf.releaseAll(&e.pool)
			}
		}
	}()
	for i := range sp.shift {
		if sp.shift[i] > 14 {
			return fmt.Errorf("engine: import: window scale %d", sp.shift[i])
		}
	}
	for i := range sp.st {
		x := &ss.Streams[i]
		st := &sp.st[i]
		if x.SMSS <= 0 || x.SMSS > maxSegment || x.Wnd < 0 || len(x.OOO) > maxOOO {
			return fmt.Errorf("engine: import: stream %d: bad segment size, window or ranges", i)
		}
		una := seqnum.Value(x.SndUna)
		held, given := diff(una, seqnum.Value(x.RcvNxt)), x.Held()
		if held < 0 || held > given || given > e.cfg.BufferPerFlow+importSlack {
			return fmt.Errorf("engine: import: stream %d: %d bytes held, %d given (bound %d)", i, held, given, e.cfg.BufferPerFlow)
		}
		if sent := diff(una, seqnum.Value(x.SndNxt)); sent < 0 || sent > held+btoi(x.FinSent) {
			return fmt.Errorf("engine: import: stream %d: %d bytes sent of %d held", i, sent, held)
		}
		cc, err := controllerFrom(x.CC, x.SMSS)
		if err != nil {
			return fmt.Errorf("engine: import: %w", err)
		}
		*st = stream{from: Side(i), rcvNxt: seqnum.Value(x.RcvNxt), rcvEdge: seqnum.Value(x.RcvEdge), finSeen: x.FinSeen,
			finSeq: seqnum.Value(x.FinSeq), pushOn: x.PushOn, push: seqnum.Value(x.Push), sndUna: una, sndNxt: seqnum.Value(x.SndNxt), wnd: x.Wnd,
			wl1: seqnum.Value(x.WL1), wl2: seqnum.Value(x.WL2), finSent: x.FinSent, finAcked: x.FinAcked, smss: x.SMSS,
			srtt: x.SRTT, rttvar: x.RTTVar, rto: x.RTO, minRTT: x.MinRTT, backoff: min(max(x.Backoff, 0), maxBackoff),
			inRecovery: x.InRecovery, recover: seqnum.Value(x.Recover), reoMult: min(max(x.ReoMult, 0), maxReoMult),
			cc: cc, earlyAcked: x.EarlyAcked, rexmits: x.Rexmits, pacer: pacer{tokens: float64(2 * x.SMSS)}}
		if st.rto <= 0 {
			st.rto = time.Second
		}
		st.buf.start = una
		for _, o := range x.OOO {
			s := span{seqnum.Value(o[0]), seqnum.Value(o[1])}
			if diff(s.start, s.end) <= 0 || diff(una, s.end) > given || diff(st.rcvNxt, s.start) <= 0 {
				return fmt.Errorf("engine: import: stream %d: bad out-of-order range", i)
			}
			st.ooo = append(st.ooo, s)
		}
		at := una
		for _, b := range x.Pieces() {
			st.buf.write(&e.pool, at, b)
			at = at.Add(seqnum.Size(len(b)))
		}
		if err := st.restoreSegs(x.Segs, now, moved && Side(i) == Wire); err != nil {
			return fmt.Errorf("engine: import: stream %d: %w", i, err)
		}
		st.progress = now
		st.sampleAfter = now.Add(importQuarantine(st.srtt))
	}
	f.sp = sp
	return nil
}

// importQuarantine is how long an imported stream's new segments give no
// RTT or rate sample: two round trips (at most maxQuarantine, and that
// without an estimate), by when the ACKs the receiver sent for copies it
// had before — from the engine the flow came from, or from this one
// before a restart — have come. Such an ACK covers what the engine has
// just sent again; taken as a sample of 100–400 µs on a 20 ms radio, the
// minimum RTT cut BBR's window and probing to nothing for good
// (TestSplitResumedStreamSamples).
func importQuarantine(srtt time.Duration) time.Duration {
	if srtt <= 0 {
		return maxQuarantine
	}
	return min(2*srtt, maxQuarantine)
}

// maxQuarantine bounds importQuarantine.
const maxQuarantine = 500 * time.Millisecond

// restoreSegs rebuilds the segments in flight; with lost, those not
// selectively acknowledged went out on a radio the host has left and are
// resent first (ImportMoved).
func (st *stream) restoreSegs(segs []TxSegState, now time.Time, lost bool) error {
	prev := st.sndUna
	for _, g := range segs {
		s := txSeg{seq: seqnum.Value(g.Seq), end: seqnum.Value(g.End), fin: g.Fin, sacked: g.Sacked, lost: g.Lost,
			rexmits: g.Rexmits, xmit: now, noSample: true}
		if s.end.LessThanEq(s.seq) || s.seq.LessThan(prev) || st.sndNxt.LessThan(s.end) {
			return errors.New("segments out of order")
		}
		prev = s.end
		if lost && !s.sacked {
			s.lost = true
		}
		switch {
		case s.sacked:
		case s.lost:
			st.nLost++
		default:
			st.inflight += s.len()
		}
		st.appendSeg(s)
	}
	if len(st.segs) > 0 {
		st.rtoAt = now.Add(st.rto)
	}
	return nil
}

// HalfState is one sender's options as learned from its SYN.
type HalfState struct {
	ISN              uint32
	Synned, Fin      bool
	MSS              uint16
	WS               uint8
	SACK, Timestamps bool
}

// SegState is one cached segment.
type SegState struct {
	Seq, End uint32
	Rexmits  int
	Packet   []byte
}

func (h half) state() HalfState {
	return HalfState{uint32(h.isn), h.synned, h.finned, h.mss, h.ws, h.sackOK, h.ts}
}

func (s HalfState) half() half {
	return half{isn: seqnum.Value(s.ISN), synned: s.Synned, finned: s.Fin, mss: s.MSS, ws: s.WS, sackOK: s.SACK, ts: s.Timestamps}
}

// Export returns the state of every flow; with remove, the flows are also
// dropped here (their timers stop), as when a flow moves to another
// gateway.
func (e *Engine) Export(remove bool) []FlowState { return e.ExportWhere(nil, remove) }

// ExportWhere is Export of the flows for which match (given the wire and
// radio endpoints) is true — a mobile's, when it moves; nil matches all.
func (e *Engine) ExportWhere(match func(wire, radio netip.AddrPort) bool, remove bool) []FlowState {
	var out []FlowState
	for _, s := range e.shards {
		out = s.export(out, match, remove)
	}
	return out
}

// export appends the state of the shard's matching flows to out.
func (e *shard) export(out []FlowState, match func(wire, radio netip.AddrPort) bool, remove bool) []FlowState {
	e.lock()
	defer e.unlock()
	how := dataCopy
	if remove {
		how = dataMove
	}
	for _, f := range e.flows {
		if match != nil && !match(f.key.wire, f.key.radio) {
			continue
		}
		out = append(out, e.stateOf(f, how))
		if remove {
			e.drop(f)
		}
	}
	return out
}

// dataMode is what stateOf does with the bytes a split flow holds.
type dataMode uint8

const (
	dataCopy dataMode = iota // copied (Data)
	dataMove                 // handed over (Chunks): the flow is being removed
	dataNone                 // left out, with the segments in flight (the journal's Flow)
)

// stateOf is f as plain data.
func (e *shard) stateOf(f *flow, how dataMode) FlowState {
	fs := FlowState{Wire: f.key.wire, Radio: f.key.radio, Down: f.down.state(), Up: f.up.state(),
		Established: f.established, SndMax: uint32(f.sndMax), LastAck: uint32(f.lastAck), AckValid: f.ackValid,
		LastWindow: f.lastWindow, DupAcks: f.dupacks, ExpectDup: f.expectDup, InRecovery: f.inRecovery,
		Recover: uint32(f.recover), SRTT: f.srtt, RTTVar: f.rttvar, RTO: f.rto}
	for _, s := range f.cache {
		fs.Cache = append(fs.Cache, SegState{uint32(s.seq), uint32(s.end), s.rexmits, append([]byte(nil), s.pkt...)})
	}
	if f.sp != nil {
		fs.Split = f.sp.state(&e.pool, how)
	}
	fs.Initiator, fs.IP, fs.HSWin, fs.HSTS, fs.Opaque, fs.Plain = f.initiator, f.tpl, f.hsWin, f.tsv, f.opaque, f.kind == kindPlain
	fs.Mode = ModeSnoop
	if f.split {
		fs.Mode = ModeSplit
	}
	return fs
}

// Import installs flows exported elsewhere and starts their timers. A flow
// that already exists here is replaced.
func (e *Engine) Import(states []FlowState) error { return e.importAll(states, false) }

// ImportMoved is Import for flows whose radio host moved here with them
// (a handoff): split's segments in flight toward it went out on a radio
// it has left, so they are presumed lost and resent first — the data
// older than what is now on the air goes first — rather than after a
// retransmission timeout.
func (e *Engine) ImportMoved(states []FlowState) error { return e.importAll(states, true) }

func (e *Engine) importAll(states []FlowState, moved bool) error {
	for _, fs := range states {
		if !fs.Wire.IsValid() || !fs.Radio.IsValid() {
			return fmt.Errorf("engine: import: flow without endpoints")
		}
		if err := e.shardOf(flowKey{fs.Wire, fs.Radio}).importFlow(&fs, moved); err != nil {
			return err
		}
	}
	return nil
}

// importFlow installs one exported flow and starts its timers.
func (e *shard) importFlow(fs *FlowState, moved bool) error {
	e.lock()
	defer e.unlock()
	now := e.cfg.Clock.Now()
	if len(e.flows) >= e.maxFlows {
		return fmt.Errorf("engine: import: flow table full (%d)", e.cfg.MaxFlows)
	}
	// A flow keeps the protection it had: a cleartext one imported as
	// verified would refuse every packet of its own (PlainRefused), an
	// opaque one would be relayed (KindRelayed).
	kind := kindVerified
	switch {
	case fs.Opaque:
		kind = kindOpaque
	case fs.Plain:
		kind = kindPlain
		if old := e.flows[flowKey{fs.Wire, fs.Radio}]; e.nPlain >= e.maxPlain && (old == nil || old.kind != kindPlain) {
			return fmt.Errorf("engine: import: cleartext flow table full (%d)", e.maxPlain)
		}
	}
	f := &flow{key: flowKey{fs.Wire, fs.Radio}, down: fs.Down.half(), up: fs.Up.half(), established: fs.Established,
		sndMax: seqnum.Value(fs.SndMax), lastAck: seqnum.Value(fs.LastAck), ackValid: fs.AckValid,
		lastWindow: fs.LastWindow, dupacks: fs.DupAcks, expectDup: fs.ExpectDup, inRecovery: fs.InRecovery,
		recover: seqnum.Value(fs.Recover), srtt: fs.SRTT, rttvar: fs.RTTVar, rto: fs.RTO, lastSeen: now}
	if f.rto <= 0 {
		f.rto = e.cfg.MinRTO * 10
	}
	f.split, f.opaque, f.kind = fs.Mode == ModeSplit && !fs.Opaque, fs.Opaque, kind
	f.initiator, f.tpl, f.hsWin, f.tsv = fs.Initiator&1, fs.IP, fs.HSWin, fs.HSTS
	if fs.Split != nil {
		if !f.split {
			return fmt.Errorf("engine: import: split state on a %v flow", fs.Mode)
		}
		if err := e.restore(f, fs.Split, now, moved); err != nil {
			return err
		}
	}
	for _, s := range fs.Cache {
		if len(s.Packet) == 0 {
			return fmt.Errorf("engine: import: empty cached segment")
		}
		held := max(len(s.Packet), pktBufCap)
		f.appendSeg(seg{seq: seqnum.Value(s.Seq), end: seqnum.Value(s.End), rexmits: s.Rexmits,
			sentAt: now, pkt: append([]byte(nil), s.Packet...), held: held, imported: true})
		f.cacheBytes += held
	}
	if old := e.flows[f.key]; old != nil {
		e.drop(old)
	}
	e.cacheMem += f.cacheBytes
	e.flows[f.key] = f
	if kind == kindPlain {
		e.nPlain++
	}
	e.st.FlowsMax = max(e.st.FlowsMax, len(e.flows))
	if f.sp != nil && e.log != nil {
		// What it holds was taken elsewhere: in the file before any ACK
		// from here covers it, and before the old files go (DropOlder).
		if e.journalFlow(f) {
			e.saveJournal()
		}
	}
	if f.sp != nil {
		e.splitFlush(f, now)
	} else {
		e.arm(f)
	}
	return nil
}
