package ipsec

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestWindowBasics(t *testing.T) {
	for _, size := range []int{32, 64, 100, 1024, 4096, MaxWindow} {
		w, err := NewWindow(size)
		if err != nil {
			t.Fatal(err)
		}
		accept := func(s uint64) {
			t.Helper()
			if err := w.Check(s); err != nil {
				t.Fatalf("size %d: seq %d: %v", size, s, err)
			}
			w.Accept(s)
		}
		refuse := func(s uint64, want error) {
			t.Helper()
			if err := w.Check(s); !errors.Is(err, want) {
				t.Fatalf("size %d: seq %d: err %v, want %v", size, s, err, want)
			}
		}
		refuse(0, ErrTooOld) // 0 is never sent (RFC 4303 §3.3.3)
		accept(1)
		refuse(1, ErrReplay)
		// reordering within the window is accepted, once
		top := uint64(size) + 10
		accept(top)
		for s := top - 1; s > top-uint64(size)+1; s -= 3 {
			accept(s)
			refuse(s, ErrReplay)
		}
		refuse(top-uint64(size), ErrTooOld) // just left of the window
		if w.Check(top-uint64(size)+1) == nil {
			accept(top - uint64(size) + 1) // the window's left edge
		}
		// far ahead: slides the whole window, old bits must be gone
		far := top + 10*uint64(size) + 7
		accept(far)
		refuse(top, ErrTooOld)
		for s := far - uint64(size) + 1; s < far; s++ {
			accept(s)
		}
		refuse(far-5, ErrReplay)
	}
	for _, bad := range []int{0, 31, MaxWindow + 1} {
		if _, err := NewWindow(bad); err == nil {
			t.Errorf("window %d accepted", bad)
		}
	}
}

// TestWindowMatchesModel compares the bitmap window with a plain set over
// a pseudo-random walk of arrivals.
func TestWindowMatchesModel(t *testing.T) {
	const size = 128
	w, _ := NewWindow(size)
	seen := map[uint64]bool{}
	var top uint64
	x := uint64(12345)
	for i := 0; i < 200000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
		var s uint64
		switch r := x >> 60; {
		case r < 8: // in or near the window
			s = top + 8 - (x>>32)%(size+24)
		case r < 14:
			s = top + 1 + (x>>40)%4
		default:
			s = top + (x>>32)%(5*size)
		}
		if s == 0 || s > top+1<<40 {
			continue
		}
		err := w.Check(s)
		var want error
		switch {
		case s <= top && top-s >= size:
			want = ErrTooOld
		case seen[s]:
			want = ErrReplay
		}
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("step %d seq %d top %d: err %v, want %v", i, s, top, err, want)
		}
		if err == nil {
			w.Accept(s)
			seen[s] = true
			top = max(top, s)
		}
	}
}

// TestESNInference walks the sequence number across the 2^32 boundary as
// RFC 4303 Appendix A2 describes: the high half is inferred, late packets
// from the previous subspace still land in it, and the ICV (covering the
// high half) decides.
func TestESNInference(t *testing.T) {
	w, _ := NewWindow(64)
	const hi = uint64(1) << 32
	if got := w.Infer(5, true); got != 5 {
		t.Fatalf("start: %d", got)
	}
	w.Accept(hi - 10)
	if got := w.Infer(uint32(hi-3), true); got != hi-3 {
		t.Fatalf("same subspace: %#x", got)
	}
	if got := w.Infer(2, true); got != hi+2 {
		t.Fatalf("wrap ahead: %#x, want %#x", got, hi+2)
	}
	w.Accept(hi + 2) // window now spans the two subspaces
	if got := w.Infer(uint32(hi-20), true); got != hi-20 {
		t.Fatalf("late packet from the old subspace: %#x", got)
	}
	if got := w.Infer(9, true); got != hi+9 {
		t.Fatalf("new subspace: %#x", got)
	}
	if got := w.Infer(7, false); got != 7 {
		t.Fatalf("no esn: %d", got)
	}
}

// TestOpenReplayAndICV drives the SA: an ICV failure never moves the
// window; duplicates, old and far-ahead packets behave; ESN across the
// wrap of the low half.
func TestOpenReplayAndICV(t *testing.T) {
	for _, s := range []suite{suites[0], suites[4], suites[11]} { // GCM, CBC+HMAC, AH
		for _, esn := range []bool{false, true} {
			c := s.config(Tunnel, false, false, esn)
			c.ReplayWindow = 32
			tx, rx := mustSA(t, c), mustSA(t, c)
			seal := func(seq uint64) []byte { return sealAt(t, tx, seq) }
			open := func(p []byte) error {
				_, err := rx.Open(append([]byte(nil), p...))
				return err
			}
			start := uint64(100)
			if esn {
				start = 1<<32 - 5 // the low half wraps during the test
				rx.SetWindowState(start-1, make([]uint64, 2))
			}
			p1 := seal(start)
			// a forged far-ahead packet (bad ICV) must not move the window
			far := seal(start + 1000)
			far[len(far)-1] ^= 0xff
			if err := open(far); !errors.Is(err, ErrICV) {
				t.Fatalf("%s esn=%v: forged: %v", s.name, esn, err)
			}
			if err := open(p1); err != nil {
				t.Fatalf("%s esn=%v: after forged far-ahead packet: %v", s.name, esn, err)
			}
			if err := open(p1); !errors.Is(err, ErrReplay) {
				t.Fatalf("%s: duplicate: %v", s.name, err)
			}
			pkts := make([][]byte, 20)
			for i := range pkts {
				pkts[i] = seal(start + 1 + uint64(i))
			}
			for i := len(pkts) - 1; i >= 0; i-- { // reordered within the window
				if err := open(pkts[i]); err != nil {
					t.Fatalf("%s esn=%v: reordered %d: %v", s.name, esn, i, err)
				}
			}
			ahead := seal(start + 500)
			if err := open(ahead); err != nil {
				t.Fatalf("%s: far ahead, genuine: %v", s.name, err)
			}
			// Too old. With ESN, RFC 4303 A2.2 infers a low half left of
			// the window into the next 2^32 subspace, so the packet
			// fails its ICV instead: either way it is dropped, and the
			// window stays.
			wantErr, icv, replays := ErrTooOld, uint64(1), uint64(2)
			if esn {
				wantErr, icv, replays = ErrICV, 2, 1
			}
			if err := open(pkts[0]); !errors.Is(err, wantErr) {
				t.Fatalf("%s esn=%v: too old: %v, want %v", s.name, esn, err, wantErr)
			}
			if got := rx.Stats().ICVFailures; got != icv {
				t.Errorf("%s: icv failures %d, want %d", s.name, got, icv)
			}
			if got := rx.Stats().ReplayDrops; got != replays {
				t.Errorf("%s: replay drops %d, want %d", s.name, got, replays)
			}
			if top, _ := rx.WindowState(); top != start+500 {
				t.Errorf("%s: window top %d, want %d", s.name, top, start+500)
			}
		}
	}
}

// TestWindowAdopt: a window going on from another — the same SA in a new
// value — refuses what the old one accepted; of another size, everything
// at or below the old top, and nothing above it.
func TestWindowAdopt(t *testing.T) {
	old, _ := NewWindow(64)
	for s := uint64(1); s <= 100; s++ {
		if s != 90 {
			old.Accept(s)
		}
	}
	same, _ := NewWindow(64)
	same.Adopt(old)
	if same.Check(100) == nil || same.Check(50) == nil || same.Check(90) != nil || same.Check(101) != nil {
		t.Fatalf("same size: 100 %v, 50 %v, 90 (never seen) %v, 101 %v", same.Check(100), same.Check(50), same.Check(90), same.Check(101))
	}
	for _, size := range []int{32, 128, 4096} {
		w, _ := NewWindow(size)
		w.Adopt(old)
		for _, s := range []uint64{100, 99, 70, 37} {
			if w.Check(s) == nil {
				t.Fatalf("size %d: %d accepted again", size, s)
			}
		}
		w.Accept(110)
		for _, s := range []uint64{101, 105, 109} { // above the old top, in its block
			if err := w.Check(s); err != nil {
				t.Fatalf("size %d: %d, never seen, refused: %v", size, s, err)
			}
		}
	}
	top63, _ := NewWindow(64) // a top at a block's last bit
	for s := uint64(1); s <= 127; s++ {
		top63.Accept(s)
	}
	w, _ := NewWindow(128)
	w.Adopt(top63)
	if w.Check(127) == nil || w.Check(128) != nil {
		t.Fatalf("top 127: 127 %v, 128 %v", w.Check(127), w.Check(128))
	}
}

// TestWindowSeenThrough: a fresh window told that everything up to n may
// have been accepted (a gateway's predecessor before a crash) refuses all
// of it and takes what lies above; a window already past n keeps what it
// saw above n and gains everything at or below.
func TestWindowSeenThrough(t *testing.T) {
	for _, size := range []int{32, 64, 128, 4096} {
		w, _ := NewWindow(size)
		w.SeenThrough(1000)
		for _, s := range []uint64{1000, 999, 1000 - uint64(min(size, 1000)) + 1, 500, 1} {
			if w.Check(s) == nil {
				t.Fatalf("size %d: %d, at or below 1000, accepted", size, s)
			}
		}
		for _, s := range []uint64{1001, 1023, 1024, 5000} {
			if err := w.Check(s); err != nil {
				t.Fatalf("size %d: %d, above 1000, refused: %v", size, s, err)
			}
		}
		w, _ = NewWindow(size)
		w.Accept(2000)
		w.Accept(1990)
		w.SeenThrough(1985)
		for _, s := range []uint64{1985, 1984, 1990, 2000} {
			if w.Check(s) == nil {
				t.Fatalf("size %d, top 2000: %d accepted after SeenThrough(1985)", size, s)
			}
		}
		for _, s := range []uint64{1986, 1999, 2001} {
			if err := w.Check(s); err != nil {
				t.Fatalf("size %d, top 2000: %d, never seen and above 1985, refused: %v", size, s, err)
			}
		}
	}
	w, _ := NewWindow(64)
	w.SeenThrough(127) // a top at a block's last bit
	if w.Check(127) == nil || w.Check(128) != nil {
		t.Fatalf("top 127: 127 %v, 128 %v", w.Check(127), w.Check(128))
	}
}

// TestTakeInbound: an SA given again as a new value goes on from the old
// one's window, and the old one opens nothing after: a packet is never
// accepted by both.
func TestTakeInbound(t *testing.T) {
	for _, s := range []suite{suites[0], suites[4], suites[11]} { // GCM, CBC+HMAC, AH
		c := s.config(Tunnel, false, false, false)
		tx, old, nu := mustSA(t, c), mustSA(t, c), mustSA(t, c)
		p1, p2 := sealAt(t, tx, 1), sealAt(t, tx, 2)
		if _, err := old.Open(slices.Clone(p1)); err != nil {
			t.Fatal(err)
		}
		nu.TakeInbound(old)
		if _, err := nu.Open(slices.Clone(p1)); !errors.Is(err, ErrReplay) {
			t.Fatalf("%s: a packet the old value accepted, on the new one: %v", s.name, err)
		}
		in := slices.Clone(p2)
		if _, err := old.Open(in); !errors.Is(err, ErrHardExpired) || !bytes.Equal(in, p2) {
			t.Fatalf("%s: the old value after: %v (packet untouched: %v)", s.name, err, bytes.Equal(in, p2))
		}
		if _, err := nu.Open(slices.Clone(p2)); err != nil {
			t.Fatalf("%s: the next packet on the new value: %v", s.name, err)
		}
	}
}

// sealAt seals a one-byte TCP packet on tx with sequence number seq.
func sealAt(t *testing.T, tx *SA, seq uint64) []byte {
	t.Helper()
	p := tcpPacket(v4a, v4b, []byte("x"))
	buf, off := inBuf(p)
	out, err := tx.SealWith(buf, off, len(p), seq, nil)
	if err != nil {
		t.Fatalf("seal %d: %v", seq, err)
	}
	return slices.Clone(out)
}
