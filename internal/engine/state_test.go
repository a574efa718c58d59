package engine

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestExportMove: an export that removes a split flow hands over the
// engine's own buffer chunks instead of copying them. The bytes are the
// ones a copying export gives — the gaps of what is held out of order
// zeroed, though the chunks came back from another use of the pool with
// payload in them — and the chunks leave the engine: its pool neither
// counts them nor can give them to another flow.
func TestExportMove(t *testing.T) {
	h := newSplit(t, splitOpts{sack: true, ts: true, isnW: 0xfffffe00, isnR: 5000})
	h.establish()
	const mss = 988
	for i := range 40 { // acknowledged by the receiver: their chunks go back to the pool, payload in them
		h.fromW(i*mss, mss, 0)
	}
	h.ackR(40*mss, 65535)
	h.take()
	for i := 40; i < 60; i++ {
		if i != 45 && i != 52 && i != 53 { // held out of order above two holes
			h.fromW(i*mss, mss, 0)
		}
	}
	h.take()
	copied := h.e.Export(false)
	moved := h.e.Export(true)
	if len(copied) != 1 || len(moved) != 1 {
		t.Fatalf("exported %d and %d flows", len(copied), len(moved))
	}
	c, m := &copied[0].Split.Streams[Wire], &moved[0].Split.Streams[Wire]
	if len(c.Chunks) != 0 || len(m.Data) != 0 || len(m.Chunks) < 2 {
		t.Fatalf("copied: %d bytes, %d chunks; moved: %d bytes, %d chunks", len(c.Data), len(c.Chunks), len(m.Data), len(m.Chunks))
	}
	if joined := bytes.Join(m.Chunks, nil); !bytes.Equal(joined, c.Data) || c.Held() != 20*mss || m.Held() != c.Held() {
		t.Fatalf("moved %d bytes, copied %d: not the same bytes", m.Held(), c.Held())
	}
	if hole := c.Data[5*mss : 6*mss]; !bytes.Equal(hole, make([]byte, mss)) {
		t.Fatal("a hole's bytes are not zeros")
	}
	if st := h.e.Stats(); st.Flows != 0 || st.BufferedBytes != 0 {
		t.Fatalf("after the move: %+v", st)
	}
	for _, s := range h.e.shards {
		for _, free := range s.pool.free {
			lo, hi := uintptr(unsafe.Pointer(unsafe.SliceData(free))), uintptr(unsafe.Pointer(unsafe.SliceData(free)))+chunkSize
			for _, p := range m.Chunks {
				if at := uintptr(unsafe.Pointer(unsafe.SliceData(p))); at >= lo && at < hi {
					t.Fatal("a chunk handed over is still in the engine's pool")
				}
			}
		}
	}
}
