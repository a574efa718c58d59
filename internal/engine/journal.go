package engine

import (
	"net/netip"
	"time"

	"github.com/espep/espep/internal/seqnum"
)

// The journal: what split acknowledges early must survive the process
// (DESIGN.md, state that must survive a restart; a SIGKILL is a normal
// event). With Config.Journal set, a split flow's bytes go to its
// shard's log as the engine takes them (a byte the log refused is not
// taken: the sender sends it again), and no packet leaves toward their
// sender — none can acknowledge them before — until the log has
// committed them: a batch's segments (Input.More) cost one write. When a
// commit fails, the shard writes every flow it holds again (a
// checkpoint, at most every logRetry) before anything goes toward a side
// whose bytes wait; until then such packets are dropped (JournalHeld).
// The log also learns each flow's state when it turns split (Flow), how
// far each receiver has acknowledged (Acked: it may be written late, a
// later start then resends bytes the receiver has) and each flow's end
// (Gone). When the log is Full, the shard writes every
// flow it holds again (Checkpoint), so that the log may drop what came
// before. All calls come from under the shard's lock, one shard a log.
//
// A flow gone because the engine closed is not Gone: a process that stops
// has its flows in the log still (unless it handed them over first).

// Journal gives each shard its log.
type Journal interface {
	Shard(i int) ShardLog
}

// ShardLog is one shard's log. ts is the newest TSval from each side, by
// Side.
type ShardLog interface {
	// Flow writes a flow's state without its bytes (FlowState.Split's
	// streams hold none): a flow that turned split, or one checkpointed.
	Flow(fs *FlowState) error
	// Data writes bytes of the stream whose sender is on side from, or
	// has them wait for Commit.
	Data(wire, radio netip.AddrPort, from Side, seq uint32, ts [2]uint32, b []byte) error
	// Commit writes what waits; an error if any record since the last
	// Commit was lost.
	Commit() error
	// Acked notes that the receiver of that stream has everything below
	// una; drained: everything the engine held for it.
	Acked(wire, radio netip.AddrPort, from Side, una uint32, ts [2]uint32, drained bool)
	// Gone notes that a flow ended.
	Gone(wire, radio netip.AddrPort)
	// Full reports whether the log wants a checkpoint.
	Full() bool
	// Checkpoint starts the log anew, has write put every live flow in it,
	// and then lets go of what came before.
	Checkpoint(write func() error) error
}

// journalData writes the bytes [seq, seq+len(b)) of st before they are
// taken; false: they were not written (not taken either).
func (e *shard) journalData(f *flow, st *stream, seq seqnum.Value, b []byte) bool {
	if e.log == nil {
		return true
	}
	sp := f.sp
	if !sp.logged && !e.journalFlow(f) {
		return false
	}
	if err := e.log.Data(f.key.wire, f.key.radio, st.from, uint32(seq), sp.ts, b); err != nil {
		e.st.JournalFailed++
		return false
	}
	e.unsaved[st.from] = true
	return true
}

// logRetry is how often a shard whose log lost records tries a checkpoint
// again: each writes every byte it holds.
const logRetry = 100 * time.Millisecond

// saveJournal has the log commit the bytes that wait; false while they
// cannot be.
func (e *shard) saveJournal() bool {
	if !e.logLost {
		if err := e.log.Commit(); err == nil {
			e.unsaved = [2]bool{}
			return true
		}
		e.st.JournalFailed++
		e.logLost = true
	}
	now := e.cfg.Clock.Now()
	if now.Before(e.logRetry) {
		return false
	}
	e.logRetry = now.Add(logRetry)
	return e.checkpoint()
}

// maybeCheckpoint checkpoints the shard if its log asks: after a
// segment's bytes are in the buffer, which the checkpoint writes again.
// While the log has lost records, saveJournal paces the attempts.
func (e *shard) maybeCheckpoint() {
	if e.log != nil && !e.logLost && e.log.Full() {
		e.checkpoint()
	}
}

// journalFlow writes f's state and the bytes it holds; false if the log
// refused them. It reads them through logBuf, not scratch: a checkpoint
// may come while a packet built in scratch waits to go (output).
func (e *shard) journalFlow(f *flow) bool {
	fs := e.stateOf(f, dataNone)
	if err := e.log.Flow(&fs); err != nil {
		e.st.JournalFailed++
		f.sp.logged = false
		return false
	}
	f.sp.logged = true
	e.unsaved = [2]bool{true, true}
	for i := range f.sp.st {
		st := &f.sp.st[i]
		for _, r := range append([]span{{st.sndUna, st.rcvNxt}}, st.ooo...) {
			for at := r.start; at.LessThan(r.end); {
				if e.logBuf == nil {
					e.logBuf = make([]byte, maxSegment)
				}
				n := min(diff(at, r.end), len(e.logBuf))
				b := e.logBuf[:n]
				st.buf.read(b, at)
				if err := e.log.Data(f.key.wire, f.key.radio, st.from, uint32(at), f.sp.ts, b); err != nil {
					e.st.JournalFailed++
					f.sp.logged = false
					return false
				}
				at = at.Add(seqnum.Size(n))
			}
		}
	}
	return true
}

// checkpoint writes every split flow of the shard to a fresh log and
// commits it; false if it could not. A flow the log refused is written
// again before its next bytes.
func (e *shard) checkpoint() bool {
	e.st.JournalCheckpoints++
	err := e.log.Checkpoint(func() error {
		for _, f := range e.flows {
			if f.sp != nil && !e.journalFlow(f) {
				return errJournal
			}
		}
		return nil
	})
	if err != nil {
		for _, f := range e.flows { // the log's state is unknown: each flow is written again first
			if f.sp != nil {
				f.sp.logged = false
			}
		}
		e.logLost, e.unsaved = true, [2]bool{true, true}
		return false
	}
	e.logLost, e.unsaved = false, [2]bool{}
	return true
}

type journalError struct{}

func (journalError) Error() string { return "engine: journal refused a flow" }

var errJournal error = journalError{}

// journalAcked notes the receiver's progress on st.
func (e *shard) journalAcked(f *flow, st *stream) {
	if e.log != nil && f.sp.logged {
		e.log.Acked(f.key.wire, f.key.radio, st.from, uint32(st.sndUna), f.sp.ts, st.sndUna == st.rcvNxt && len(st.ooo) == 0)
	}
}

// journalGone notes that f ended, unless the engine is closing.
func (e *shard) journalGone(f *flow) {
	if e.log != nil && f.sp != nil && f.sp.logged && !e.closed {
		e.log.Gone(f.key.wire, f.key.radio)
	}
}
