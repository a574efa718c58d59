package engine

import (
	"encoding/binary"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// What a split stream tells its sender of the receiving side: SACK blocks
// for what the engine holds out of order and for what the receiver holds
// beyond that, and an ACK at once past bytes the receiver had by another
// way (a protected flow's receiver's own word).

// appendSACK writes a SACK option of up to n blocks (sackBlocks) at
// opt[no:] and returns the options' new length: none without a block.
func (st *stream) appendSACK(opt []byte, no, n int) int {
	nb := st.sackBlocks(n)
	if nb == 0 {
		return no
	}
	opt[no], opt[no+1], opt[no+2], opt[no+3] = header.TCPOptNop, header.TCPOptNop, header.TCPOptSACK, byte(2+8*nb)
	no += 4
	for i := 0; i < nb; i++ {
		binary.BigEndian.PutUint32(opt[no:], uint32(st.sack[i].start))
		binary.BigEndian.PutUint32(opt[no+4:], uint32(st.sack[i].end))
		no += 8
	}
	return no
}

// sackBlocks fills st.sack with up to n blocks, the most recent arrival
// first (RFC 2018 §4), then what the receiver holds above rcvNxt that the
// engine does not (peer), and returns how many.
func (st *stream) sackBlocks(n int) int {
	k := 0
	first := -1
	for i, s := range st.ooo {
		if !s.end.LessThanEq(st.lastIn.start) && !st.lastIn.end.LessThanEq(s.start) {
			first = i
			st.sack[0] = s
			k = 1
			break
		}
	}
	for i := len(st.ooo) - 1; i >= 0 && k < n; i-- {
		if i != first {
			st.sack[k] = st.ooo[i]
			k++
		}
	}
	for i := 0; i < st.nPeer && k < n; i++ {
		if s := st.peer[i]; st.rcvNxt.LessThan(s.end) {
			st.sack[k] = span{seqnum.Max(s.start, st.rcvNxt), s.end}
			k++
		}
	}
	return k
}

// notePeer keeps the SACK blocks of the receiver's latest ACK that reach
// above rcvNxt (cut there), in place of those before: the receiver's own
// word on a protected flow, for the sender (sackBlocks).
// A change reaches the sender at once.
func (st *stream) notePeer(o *header.TCPOptions) {
	old, nOld := st.peer, st.nPeer
	st.nPeer = 0
	for i := 0; i < o.NSACK && st.nPeer < len(st.peer); i++ {
		start, end := seqnum.Value(o.SACK[i].Start), seqnum.Value(o.SACK[i].End)
		if start.LessThan(end) && st.rcvNxt.LessThan(end) && diff(st.rcvNxt, end) <= maxPeerAhead {
			st.peer[st.nPeer] = span{seqnum.Max(start, st.rcvNxt), end}
			st.nPeer++
		}
	}
	if st.nPeer > 0 && (st.nPeer != nOld || st.peer != old) {
		st.ackNow = true
	}
}

// maxPeerAhead bounds how far above rcvNxt a block the receiver reports
// is passed on to the sender: further than any window.
const maxPeerAhead = 1 << 30

// skipTo moves st's in-order point from its sender up to at, for bytes
// its receiver has acknowledged (verified) that never reached the engine:
// the receiver has them, so the sender may have their ACK at once, and
// the engine holds nothing below at. What was held out of order below at
// goes with them; a range reaching past at is now in order.
func (st *stream) skipTo(at seqnum.Value) {
	if !st.rcvNxt.LessThan(at) {
		return
	}
	st.rcvNxt = at
	k := 0
	for _, s := range st.ooo {
		switch {
		case s.end.LessThanEq(at):
		case s.start.LessThanEq(st.rcvNxt):
			st.rcvNxt = s.end
		default:
			st.ooo[k] = s
			k++
		}
	}
	st.ooo = st.ooo[:k]
	if st.rcvEdge.LessThan(st.rcvNxt) {
		st.rcvEdge = st.rcvNxt
	}
	st.ackNow = true
}
