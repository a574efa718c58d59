package statedir

import (
	"sync/atomic"
	"time"
)

// Accepts records, in an SA's Accepted space, the endpoint's numbers a
// receiver accepted — a gateway, or an espep host, which verify the
// endpoint's packets against a replay window — so that a successor
// refuses them: every NoteEvery numbers, at most every NoteGap (each
// record is a journal write, batched over the SAs; synced within
// AcceptSync), and exactly at a clean stop (Release). After the process
// is killed, what was accepted since the last record — at most NoteEvery
// numbers, plus the packets of NoteGap and one journal write — may be
// accepted once more; everything before it is refused. After a power
// loss, add the packets of AcceptSync.
//
// A record never runs ahead of what was accepted: the successor would
// refuse the endpoint's next packets, and where those cannot pass
// otherwise (an SA a gateway numbered: relayed originals are refused
// too) each one refused costs its sender a backed-off retransmission
// timeout until the endpoint has sent that many.
type Accepts struct {
	l       *Lease
	noted   atomic.Uint64 // the last number given to l
	notedAt atomic.Int64  // when, in unix nanoseconds
	next    atomic.Uint64 // the number from which Note reads the clock
}

// Accepts spacing: see the type.
const (
	NoteEvery = 64
	NoteGap   = 5 * time.Millisecond
)

// Accepts returns the record of the endpoint's numbers on the SA k names
// (its Space is ignored). Its Floor is what the receiver must count as
// seen.
func (d *Dir) Accepts(k SeqKey) *Accepts {
	k.Space = Accepted
	a := &Accepts{l: d.Lease(k)}
	a.noted.Store(a.l.Floor())
	a.next.Store(a.l.Floor() + NoteEvery)
	return a
}

// Floor is the highest number recorded before this record: a predecessor
// (another process, or a record of this one since dropped) accepted every
// number up to it that it was going to.
func (a *Accepts) Floor() uint64 { return a.l.Floor() }

// Note records, every so often, that the endpoint's packet numbered seq
// was accepted. It does not block and does not allocate, and reads the
// clock once in NoteEvery numbers at most.
func (a *Accepts) Note(seq uint64) {
	if seq < a.next.Load() {
		return
	}
	a.next.Store(seq + NoteEvery)
	now := time.Now().UnixNano()
	if now-a.notedAt.Load() < int64(NoteGap) {
		return
	}
	a.noted.Store(seq)
	a.notedAt.Store(now)
	a.l.Want(seq)
}

// Noted is the last number Note recorded (or the Floor); Recorded the
// highest on disk so far.
func (a *Accepts) Noted() uint64    { return a.noted.Load() }
func (a *Accepts) Recorded() uint64 { return a.l.Allowed() }

// Release records top, the highest number accepted, at a clean stop
// (written by Close). Nothing is accepted after it.
func (a *Accepts) Release(top uint64) { a.l.Release(top) }

// Drop ends the record without a final one: the receiver forgot the SA.
// What it recorded stays the floor of the records that follow.
func (a *Accepts) Drop() { a.l.Drop() }
