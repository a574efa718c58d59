package acklog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/seqnum"
)

// Recovered says what Recover read and found.
type Recovered struct {
	Files   int // slot files read
	Stale   int // passed over: last written before the engine would have given up their flows
	Damaged int // files with no valid slot header
	Flows   int // flows holding bytes their receivers had not acknowledged
	Bytes   int // those bytes
	Dropped int // flows that held more than the bound
}

// Recover reads the files of earlier generations and returns the flows
// that hold bytes their receivers have not acknowledged, as the engine
// imports them: everything they hold to be sent again, nothing in
// flight. Files last written before now−maxAge are passed over (the
// engine would have given their flows up); a direction holding more than
// perFlow bytes is dropped with its flow. It returns an error only if
// the directory cannot be read; damaged files are counted.
//
// Of each shard's slots it reads the one with the newest complete
// checkpoint and then any newer one (a checkpoint the process died in),
// each up to its first record that does not pass its CRC: the end of
// what was written, a record torn by the kill, or one an earlier epoch
// left there.
func (l *Log) Recover(now time.Time, maxAge time.Duration, perFlow int) ([]engine.FlowState, Recovered, error) {
	r := newReplay(perFlow)
	var rec Recovered
	var group []slotFile
	for i, n := range l.older {
		sf, err := l.readSlotFile(n, now, maxAge, &rec)
		if err != nil {
			return nil, rec, err
		}
		if sf != nil {
			group = append(group, *sf)
		}
		if next := i + 1; next == len(l.older) || l.older[next].gen != n.gen || l.older[next].shard != n.shard {
			r.replayShard(group)
			group = group[:0]
		}
	}
	out := r.flowStates()
	rec.Flows, rec.Dropped = len(out), r.dropped
	for i := range out {
		rec.Bytes += out[i].Buffered()
	}
	return out, rec, nil
}

// slotFile is a slot file read whole.
type slotFile struct {
	epoch uint64
	b     []byte // its records, after the header
	done  bool   // a checkpoint completed in it
}

// readSlotFile reads n unless it is stale or has no header (nil).
func (l *Log) readSlotFile(n segName, now time.Time, maxAge time.Duration, rec *Recovered) (*slotFile, error) {
	path := filepath.Join(l.dir, n.String())
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("acklog: %w", err)
	}
	if maxAge > 0 && fi.ModTime().Before(now.Add(-maxAge)) {
		rec.Stale++
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("acklog: %w", err)
	}
	rec.Files++
	sf, ok := parseSlot(b)
	if !ok {
		if len(b) > 0 {
			rec.Damaged++
			l.log.Warn("acklog: a file without a valid header passed over", "file", n.String(), "size", len(b))
		}
		return nil, nil
	}
	return sf, nil
}

// parseSlot reads a slot's header and finds whether a checkpoint
// completed in it.
func parseSlot(b []byte) (*slotFile, bool) {
	epoch, ok := slotEpoch(b)
	if !ok {
		return nil, false
	}
	sf := &slotFile{epoch: epoch, b: b[slotHeadLen:]}
	walk(sf.b, epoch, func(kind byte, _ []byte) error {
		if kind == kindDone {
			sf.done = true
			return errStop
		}
		return nil
	})
	return sf, true
}

var errStop = errors.New("stop")

// replayShard applies one shard's slots: the newest complete one, then
// those newer than it, by epoch.
func (r *replay) replayShard(slots []slotFile) {
	sort.Slice(slots, func(i, j int) bool { return slots[i].epoch < slots[j].epoch })
	from := 0
	for i, sf := range slots {
		if sf.done {
			from = i
		}
	}
	for _, sf := range slots[from:] {
		walk(sf.b, sf.epoch, r.apply) // a record that makes no sense ends the slot, as a torn one does
	}
}

type flowKey struct{ wire, radio netip.AddrPort }

// piece is bytes of a stream at seq.
type piece struct {
	seq uint32
	b   []byte
}

// rstream is one direction of a flow being replayed.
type rstream struct {
	una    uint32 // the receiver has everything below
	pieces []piece
	size   int
}

type rflow struct {
	fs  engine.FlowState
	ts  [2]uint32
	st  [2]rstream
	bad bool // held more than the bound: dropped
}

// replay applies records in the order they were written.
type replay struct {
	perFlow int
	flows   map[flowKey]*rflow
	order   []flowKey
	dropped int // flows that held more than the bound
}

func newReplay(perFlow int) *replay {
	return &replay{perFlow: max(perFlow, 1), flows: map[flowKey]*rflow{}}
}

// walk calls fn with each record of a slot's body in turn, up to the
// first that does not pass its CRC under epoch, or fn's first error,
// which it returns.
func walk(b []byte, epoch uint64, fn func(kind byte, body []byte) error) error {
	seed := epochSeed(epoch)
	for len(b) >= 4 {
		n := int(binary.BigEndian.Uint32(b))
		if n < 1 || n > maxRecord || len(b) < 4+n+trailLen {
			return nil
		}
		kb := b[4 : 4+n]
		if recordCRC(seed, kb) != binary.BigEndian.Uint32(b[4+n:]) {
			return nil
		}
		if err := fn(kb[0], kb[1:]); err != nil {
			return err
		}
		b = b[4+n+trailLen:]
	}
	return nil
}

func (r *replay) apply(kind byte, body []byte) error {
	switch kind {
	case kindFlow:
		var fs engine.FlowState
		if err := json.Unmarshal(body, &fs); err != nil {
			return fmt.Errorf("flow record: %w", err)
		}
		if fs.Split == nil || fs.Mode != engine.ModeSplit || !fs.Wire.IsValid() || !fs.Radio.IsValid() {
			return errors.New("flow record: not a split flow")
		}
		k := flowKey{fs.Wire, fs.Radio}
		old, ok := r.flows[k]
		if !ok {
			r.order = append(r.order, k)
		}
		f := &rflow{fs: fs, ts: fs.Split.TS}
		for i := range f.st {
			f.st[i].una = fs.Split.Streams[i].SndUna
			// The same flow written again (a checkpoint, which a kill may
			// have cut short): what it held before stays.
			if old != nil && !old.bad && old.st[i].continuedBy(f.st[i].una) {
				f.st[i].pieces, f.st[i].size = old.st[i].pieces, old.st[i].size
			}
		}
		r.flows[k] = f
	case kindData, kindAcked:
		if len(body) < dataHead || kind == kindAcked && len(body) != dataHead {
			return fmt.Errorf("record %q of %d bytes", kind, len(body))
		}
		k, ok := getKey(body)
		side := body[keyLen]
		if !ok || side > 1 {
			return fmt.Errorf("record %q: bad endpoints or side", kind)
		}
		f := r.flows[k]
		if f == nil || f.bad {
			return nil // the flow's state was in a file passed over, or it held too much
		}
		seq := binary.BigEndian.Uint32(body[keyLen+1:])
		for i := range f.ts {
			if ts := binary.BigEndian.Uint32(body[keyLen+5+4*i:]); seqnum.Value(f.ts[i]).LessThan(seqnum.Value(ts)) {
				f.ts[i] = ts
			}
		}
		st := &f.st[side]
		if kind == kindAcked {
			if seqnum.Value(st.una).LessThan(seqnum.Value(seq)) {
				st.una = seq
			}
			return nil
		}
		r.take(f, st, seq, body[dataHead:])
	case kindGone:
		if len(body) != keyLen {
			return fmt.Errorf("gone record of %d bytes", len(body))
		}
		if k, ok := getKey(body); ok {
			delete(r.flows, k)
		}
	case kindDone:
	default:
		return fmt.Errorf("record kind %q", kind)
	}
	return nil
}

// continuedBy reports whether una can be this stream's, acknowledged
// further: no further than the bytes it holds.
func (st *rstream) continuedBy(una uint32) bool {
	d := seqnum.Value(st.una).Size(seqnum.Value(una)) // una − st.una
	return !seqnum.Value(una).LessThan(seqnum.Value(st.una)) && int(d) <= st.size
}

// take keeps a copy of b at seq, dropping what the receiver has when the
// stream grows past twice the bound, and the flow if that is not enough.
func (r *replay) take(f *rflow, st *rstream, seq uint32, b []byte) {
	st.pieces = append(st.pieces, piece{seq, append([]byte(nil), b...)})
	st.size += len(b)
	if st.size <= 2*r.perFlow {
		return
	}
	kept := st.pieces[:0]
	st.size = 0
	for _, p := range st.pieces {
		if end := seqnum.Value(p.seq).Add(seqnum.Size(len(p.b))); seqnum.Value(st.una).LessThan(end) {
			kept = append(kept, p)
			st.size += len(p.b)
		}
	}
	clear(st.pieces[len(kept):])
	st.pieces = kept
	if st.size > 2*r.perFlow {
		f.bad = true
		f.st = [2]rstream{}
		r.dropped++
	}
}

func getKey(b []byte) (flowKey, bool) {
	w, ok1 := getAddr(b)
	rd, ok2 := getAddr(b[addrLen:])
	return flowKey{w, rd}, ok1 && ok2
}

// flowStates builds the flows that hold bytes, in the order their state
// was first written.
func (r *replay) flowStates() []engine.FlowState {
	var out []engine.FlowState
	for _, k := range r.order {
		f := r.flows[k]
		if f == nil || f.bad {
			continue
		}
		r.flows[k] = nil // a key written twice comes out once
		fs := f.fs
		sp := *fs.Split
		sp.TS = f.ts
		held, ok := 0, true
		for i := range sp.Streams {
			data, fits := f.st[i].assemble(r.perFlow)
			held += len(data)
			ok = ok && fits
			resumeStream(&sp.Streams[i], f.st[i].una, data)
		}
		if !ok {
			r.dropped++
			continue
		}
		if held == 0 {
			continue
		}
		fs.Split = &sp
		out = append(out, fs)
	}
	return out
}

// assemble returns the bytes held in order from una on, up to the first
// hole (what lay beyond was only selectively acknowledged: its sender
// still has it); false beyond bound.
func (st *rstream) assemble(bound int) ([]byte, bool) {
	una := seqnum.Value(st.una)
	sort.SliceStable(st.pieces, func(i, j int) bool {
		return int32(st.pieces[i].seq-st.una) < int32(st.pieces[j].seq-st.una)
	})
	var out []byte
	for _, p := range st.pieces {
		start := seqnum.Value(p.seq)
		end := start.Add(seqnum.Size(len(p.b)))
		at := una.Add(seqnum.Size(len(out)))
		if end.LessThanEq(at) {
			continue // what the receiver has, or bytes already taken
		}
		if at.LessThan(start) {
			break // a hole
		}
		out = append(out, p.b[start.Size(at):]...)
		if len(out) > bound {
			return nil, false
		}
	}
	return out, true
}

// resumeStream makes x a stream that holds data from una on, all of it to
// be sent (again), nothing in flight.
func resumeStream(x *engine.StreamState, una uint32, data []byte) {
	end := seqnum.Value(una).Add(seqnum.Size(len(data)))
	x.Data, x.Chunks, x.OOO, x.Segs = data, nil, nil, nil
	x.SndUna, x.SndNxt, x.RcvNxt = una, una, uint32(end)
	if seqnum.Value(x.RcvEdge).LessThan(end) {
		x.RcvEdge = uint32(end)
	}
	x.FinSeen = x.FinSeen && x.FinSeq == uint32(end)
	x.FinSent, x.FinAcked = false, x.FinAcked && x.FinSeen
	x.PushOn, x.Push = true, uint32(end)
	x.InRecovery, x.Backoff = false, 0
	// The first flight after the import may find no route yet (the
	// gateway learns a flow's SA from its next packet): a timeout of the
	// handshake's second would hold the resend that long.
	x.RTO = min(x.RTO, restartRTO)
}

// restartRTO bounds a resumed stream's first retransmission timeout.
const restartRTO = 200 * time.Millisecond
