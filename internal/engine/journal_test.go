package engine

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// memLog is a journal shard in memory whose writes can be made to fail.
// It keeps which bytes of the wire host's stream it has written.
type memLog struct {
	fail    bool
	pending []span // waiting for Commit
	saved   []span
	commits int
}

var errDisk = errors.New("disk gone")

func (m *memLog) Shard(int) ShardLog    { return m }
func (m *memLog) Flow(*FlowState) error { return nil }
func (m *memLog) Data(_, _ netip.AddrPort, from Side, seq uint32, _ [2]uint32, b []byte) error {
	if from == Wire {
		m.pending = append(m.pending, span{seqnum.Value(seq), seqnum.Value(seq).Add(seqnum.Size(len(b)))})
	}
	return nil
}
func (m *memLog) Commit() error {
	m.commits++
	if m.fail {
		m.pending = m.pending[:0]
		return errDisk
	}
	m.saved = append(m.saved, m.pending...)
	m.pending = m.pending[:0]
	return nil
}
func (m *memLog) Acked(netip.AddrPort, netip.AddrPort, Side, uint32, [2]uint32, bool) {}
func (m *memLog) Gone(netip.AddrPort, netip.AddrPort)                                 {}
func (m *memLog) Full() bool                                                          { return false }
func (m *memLog) Checkpoint(write func() error) error {
	if m.fail {
		return errDisk
	}
	m.saved, m.pending = m.saved[:0], m.pending[:0]
	if err := write(); err != nil {
		return err
	}
	return m.Commit()
}

// has reports whether the written spans cover [from, to).
func (m *memLog) has(from, to seqnum.Value) bool {
	for at := from; at.LessThan(to); {
		next := at
		for _, s := range m.saved {
			if !at.LessThan(s.start) && at.LessThan(s.end) {
				next = s.end
			}
		}
		if next == at {
			return false
		}
		at = next
	}
	return true
}

// TestJournalBeforeAck: no ACK toward the wire host covers a byte the
// journal has not committed — a batch's segments in one commit; while
// commits fail nothing goes toward it (JournalHeld), and once the disk is
// back a checkpoint writes every held byte again before the ACK that
// covers them.
func TestJournalBeforeAck(t *testing.T) {
	j := &memLog{}
	h := newSplit(t, splitOpts{cfg: Config{Journal: j}})
	h.establish()
	acked := func() {
		t.Helper()
		for _, p := range h.sentTo(Wire) {
			if p.isAck && !j.has(seqnum.Value(h.W()), seqnum.Value(p.ack)) {
				t.Fatalf("an ACK toward the wire host up to %d, the journal has %v", p.ack-h.W(), j.saved)
			}
		}
	}
	for i := range 8 { // one batch
		h.e.Handle(Wire, h.seg(Wire, header.TCPAck, h.W()+uint32(i*1000), h.R(), 65535, 1000), Input{Kind: Verified, More: true})
	}
	before := j.commits
	h.e.Flush()
	acked()
	if n := j.commits - before; n != 1 {
		t.Errorf("%d commits for a batch of 8 segments", n)
	}

	j.fail = true
	h.fromW(8000, 1000, 0)
	h.fromW(9000, 1000, 0)
	if toW := h.sentTo(Wire); len(toW) != 0 {
		t.Fatalf("%d packets toward the wire host while the journal fails", len(toW))
	}
	st := h.e.Stats()
	if st.JournalHeld == 0 || st.JournalFailed == 0 {
		t.Fatalf("held %d, failed %d", st.JournalHeld, st.JournalFailed)
	}

	j.fail = false
	h.fromW(10000, 1000, 0) // before logRetry: still held
	if toW := h.sentTo(Wire); len(toW) != 0 {
		t.Fatalf("%d packets toward the wire host before the checkpoint is tried again", len(toW))
	}
	h.clock.Advance(logRetry)
	h.fromW(11000, 1000, 0)
	h.clock.Advance(time.Second) // any delayed ACK
	toW := h.sentTo(Wire)
	if len(toW) == 0 || toW[len(toW)-1].ack != h.W()+12000 {
		t.Fatalf("after the disk came back: %+v toward the wire host", toW)
	}
	if !j.has(seqnum.Value(h.W()), seqnum.Value(h.W()+12000)) {
		t.Fatalf("the journal has %v", j.saved)
	}
}
