package engine

import (
	"math/rand"
	"testing"

	"github.com/espep/espep/internal/seqnum"
)

// TestSeqBufModel writes, reads and releases a stream across the 32-bit
// wrap against a map of what each sequence number must hold.
func TestSeqBufModel(t *testing.T) {
	var p chunkPool
	r := rand.New(rand.NewSource(1))
	start := seqnum.Value(0xffff0000)
	b := seqBuf{start: start}
	model := map[seqnum.Value]byte{}
	una, nxt := start, start
	for i := 0; i < 3000; i++ {
		switch r.Intn(3) {
		case 0, 1:
			n := r.Intn(3000)
			d := make([]byte, n)
			r.Read(d)
			b.write(&p, nxt, d)
			for j, c := range d {
				model[nxt.Add(seqnum.Size(j))] = c
			}
			nxt = nxt.Add(seqnum.Size(n))
		case 2:
			if una == nxt {
				continue
			}
			if p.inUse != len(b.chunks) {
				t.Fatalf("step %d: %d chunks in use, buffer holds %d", i, p.inUse, len(b.chunks))
			}
			k := r.Intn(int(una.Size(nxt))) + 1
			una = una.Add(seqnum.Size(k))
			b.release(&p, una)
		}
		if una != nxt {
			n := int(una.Size(nxt))
			got := make([]byte, n)
			b.read(got, una)
			for j := range got {
				if got[j] != model[una.Add(seqnum.Size(j))] {
					t.Fatalf("step %d: byte %d differs", i, j)
				}
			}
		}
	}
}
