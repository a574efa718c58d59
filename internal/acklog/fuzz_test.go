package acklog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/espep/espep/internal/engine"
)

// journalFile is a journal slot file as an engine writes it: flows
// opened, bytes both ways, ACKs, a segment beyond a hole — the largest of
// the files, kept small so that the fuzzer's mutations stay fast.
func journalFile(t testing.TB) []byte {
	dir := filepath.Join(t.TempDir(), "acklog")
	e, j := split(t, dir, 64<<10)
	for i := range 3 {
		open(e, i)
		send(e, i, 0, 2+i)
	}
	ack(e, 0, 1)
	ack(e, 2, 3)
	send(e, 1, 5, 6) // beyond a hole
	defer j.Close()
	defer e.Close() // after the files are read: closing drops the flows
	names, err := list(dir)
	if err != nil || len(names) == 0 {
		t.Fatalf("%d files: %v", len(names), err)
	}
	var largest []byte
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n.String()))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > len(largest) {
			largest = b
		}
	}
	return largest
}

// FuzzReplay: whatever a journal file holds — torn by a kill, damaged
// on disk, written by someone else into the 0700 directory — reading it
// never panics, gives no flow beyond the bound, and every flow it gives
// is imported by an engine or refused with an error.
func FuzzReplay(f *testing.F) {
	whole := journalFile(f)
	f.Add(whole)
	for _, cut := range []int{0, 3, 5, 60, 400, len(whole) / 2, len(whole) - 1} {
		f.Add(whole[:min(cut, len(whole))])
	}
	b := bytes.Clone(whole)
	b[9] ^= 1
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		const bound = 1 << 20
		flows := replayBytes(data, bound)
		e, err := engine.New(engine.Config{Mode: engine.ModeSplit}, func(engine.Side, []byte, engine.Emitted) {})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		for i := range flows {
			for _, s := range flows[i].Split.Streams {
				if s.Held() > bound {
					t.Fatalf("a stream of %d bytes", s.Held())
				}
			}
			e.ImportMoved(flows[i : i+1])
		}
	})
}
