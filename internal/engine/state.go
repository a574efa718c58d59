package engine

import (
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
func (e *Engine) Export(remove bool) []FlowState {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]FlowState, 0, len(e.flows))
	for _, f := range e.flows {
		fs := FlowState{Wire: f.key.wire, Radio: f.key.radio, Down: f.down.state(), Up: f.up.state(),
			Established: f.established, SndMax: uint32(f.sndMax), LastAck: uint32(f.lastAck), AckValid: f.ackValid,
			LastWindow: f.lastWindow, DupAcks: f.dupacks, ExpectDup: f.expectDup, InRecovery: f.inRecovery,
			Recover: uint32(f.recover), SRTT: f.srtt, RTTVar: f.rttvar, RTO: f.rto}
		for _, s := range f.cache {
			fs.Cache = append(fs.Cache, SegState{uint32(s.seq), uint32(s.end), s.rexmits, append([]byte(nil), s.pkt...)})
		}
		out = append(out, fs)
		if remove {
			e.drop(f)
		}
	}
	return out
}

// Import installs flows exported elsewhere and starts their timers. A flow
// that already exists here is replaced.
func (e *Engine) Import(states []FlowState) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Clock.Now()
	for _, fs := range states {
		if !fs.Wire.IsValid() || !fs.Radio.IsValid() {
			return fmt.Errorf("engine: import: flow without endpoints")
		}
		if len(e.flows) >= e.cfg.MaxFlows {
			return fmt.Errorf("engine: import: flow table full (%d)", e.cfg.MaxFlows)
		}
		f := &flow{key: flowKey{fs.Wire, fs.Radio}, down: fs.Down.half(), up: fs.Up.half(), established: fs.Established,
			sndMax: seqnum.Value(fs.SndMax), lastAck: seqnum.Value(fs.LastAck), ackValid: fs.AckValid,
			lastWindow: fs.LastWindow, dupacks: fs.DupAcks, expectDup: fs.ExpectDup, inRecovery: fs.InRecovery,
			recover: seqnum.Value(fs.Recover), srtt: fs.SRTT, rttvar: fs.RTTVar, rto: fs.RTO, lastSeen: now}
		if f.rto <= 0 {
			f.rto = e.cfg.MinRTO * 10
		}
		for _, s := range fs.Cache {
			if len(s.Packet) == 0 {
				return fmt.Errorf("engine: import: empty cached segment")
			}
			f.cache = append(f.cache, seg{seq: seqnum.Value(s.Seq), end: seqnum.Value(s.End), rexmits: s.Rexmits,
				sentAt: now, pkt: append([]byte(nil), s.Packet...)})
			f.cacheBytes += len(s.Packet)
		}
		if old := e.flows[f.key]; old != nil {
			e.drop(old)
		}
		e.flows[f.key] = f
		e.st.FlowsMax = max(e.st.FlowsMax, len(e.flows))
		e.arm(f)
	}
	return nil
}
