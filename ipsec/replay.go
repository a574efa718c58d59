package ipsec

import (
	"fmt"
	"math/bits"
)

// Window is an anti-replay window (RFC 4303 §3.4.3) kept as the RFC 6479
// ring of 64-bit blocks, so that sliding costs a few block clears instead of
// a shift of the whole bitmap. It tracks full 64-bit sequence numbers; with
// ESN the high half is inferred as RFC 4303 Appendix A2 describes.
//
// A Window is not safe for concurrent use; the SA's inbound lock guards it.
type Window struct {
	size   uint64   // W: sequence numbers older than top-W+1 are refused
	top    uint64   // highest sequence number accepted so far (0: none)
	blocks []uint64 // ring; len is a power of two ≥ ceil(W/64)+1
}

// Window sizes outside this range are refused.
const (
	MinWindow = 32
	MaxWindow = 1 << 16
)

// NewWindow returns a window of size w (MinWindow ≤ w ≤ MaxWindow).
func NewWindow(w int) (*Window, error) {
	if w < MinWindow || w > MaxWindow {
		return nil, fmt.Errorf("replay window %d outside [%d, %d]", w, MinWindow, MaxWindow)
	}
	n := 1 << bits.Len(uint((w+63)/64)) // ≥ ceil(w/64)+1 and a power of two
	return &Window{size: uint64(w), blocks: make([]uint64, n)}, nil
}

// Size returns W.
func (w *Window) Size() int { return int(w.size) }

// Top returns the highest sequence number accepted so far.
func (w *Window) Top() uint64 { return w.top }

// Infer returns the full sequence number of a packet whose header carries
// the low 32 bits lo. Without ESN that is lo. With ESN it is the candidate
// nearest the window (RFC 4303 Appendix A2.2); the ICV check decides
// whether the guess was right.
func (w *Window) Infer(lo uint32, esn bool) uint64 {
	if !esn {
		return uint64(lo)
	}
	th, tl := uint32(w.top>>32), uint32(w.top)
	bottom := tl - uint32(w.size) + 1 // wraps, as Appendix A2.2 intends
	if tl >= uint32(w.size)-1 {
		// Window within one subspace.
		if lo >= bottom {
			return uint64(th)<<32 | uint64(lo)
		}
		return uint64(th+1)<<32 | uint64(lo)
	}
	// Window spans two subspaces.
	if lo >= bottom && th > 0 {
		return uint64(th-1)<<32 | uint64(lo)
	}
	return uint64(th)<<32 | uint64(lo)
}

// Check reports whether seq may be accepted: ErrReplay for one already
// seen, ErrTooOld for one left of the window. It changes nothing, so it is
// safe to call before the ICV check.
func (w *Window) Check(seq uint64) error {
	if seq == 0 {
		return fmt.Errorf("sequence number 0: %w", ErrTooOld)
	}
	if seq > w.top {
		return nil
	}
	if w.top-seq >= w.size {
		return fmt.Errorf("seq %d, window top %d size %d: %w", seq, w.top, w.size, ErrTooOld)
	}
	mask := uint64(len(w.blocks)) - 1
	if w.blocks[(seq>>6)&mask]&(1<<(seq&63)) != 0 {
		return fmt.Errorf("seq %d: %w", seq, ErrReplay)
	}
	return nil
}

// Accept marks seq as received, sliding the window if it is new. Call it
// only after the packet's ICV has been verified (RFC 4303 §3.4.3), and
// after Check returned nil.
func (w *Window) Accept(seq uint64) {
	mask := uint64(len(w.blocks)) - 1
	if seq > w.top {
		cur, next := w.top>>6, seq>>6
		d := next - cur
		if d > uint64(len(w.blocks)) {
			d = uint64(len(w.blocks))
		}
		for i := uint64(1); i <= d; i++ {
			w.blocks[(cur+i)&mask] = 0
		}
		w.top = seq
	}
	w.blocks[(seq>>6)&mask] |= 1 << (seq & 63)
}

// State returns the window's top and bitmap words, for handing an SA to
// another gateway.
func (w *Window) State() (top uint64, bitmap []uint64) {
	return w.top, append([]uint64(nil), w.blocks...)
}

// Adopt makes w go on from old, the same SA's window in another SA value:
// old's state when the sizes agree; otherwise old's top, with every
// number at or below it taken as seen — no replay is accepted, a late
// packet may be refused.
func (w *Window) Adopt(old *Window) {
	if len(old.blocks) == len(w.blocks) {
		w.top = old.top
		copy(w.blocks, old.blocks)
		return
	}
	w.allSeen(old.top)
}

// SeenThrough counts every number up to n as seen, whatever w saw: a
// predecessor — the gateway process before a crash — may have accepted
// any of them. Numbers above n stay as w had them.
func (w *Window) SeenThrough(n uint64) {
	if n > w.top {
		w.allSeen(n)
		return
	}
	lo := uint64(1)
	if w.top >= w.size {
		lo = w.top - w.size + 1 // below it Check refuses anyway
	}
	mask := uint64(len(w.blocks)) - 1
	for seq := lo; seq <= n; seq++ {
		w.blocks[(seq>>6)&mask] |= 1 << (seq & 63)
	}
}

// allSeen moves the top to top with every number at or below it seen.
func (w *Window) allSeen(top uint64) {
	w.top = top
	for i := range w.blocks {
		w.blocks[i] = ^uint64(0)
	}
	// Bits above top in its block stand for numbers not yet seen.
	mask := uint64(len(w.blocks)) - 1
	w.blocks[(w.top>>6)&mask] = (1<<(w.top&63))<<1 - 1
}

// SetState restores what State returned.
func (w *Window) SetState(top uint64, bitmap []uint64) error {
	if len(bitmap) != len(w.blocks) {
		return fmt.Errorf("replay bitmap has %d blocks, window needs %d", len(bitmap), len(w.blocks))
	}
	w.top = top
	copy(w.blocks, bitmap)
	return nil
}
