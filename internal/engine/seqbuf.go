package engine

import "github.com/espep/espep/internal/seqnum"

// chunkSize is the unit in which split mode buffers a stream's bytes.
const chunkSize = 16 << 10

// seqBuf holds a stream's bytes by sequence number in fixed-size chunks,
// taken from the engine's pool as data arrives and given back as the
// receiver acknowledges it, so an idle flow holds no buffer at all and a
// busy one allocates nothing per packet.
type seqBuf struct {
	start  seqnum.Value // sequence number of chunks[0][0]
	chunks [][]byte
}

// chunkPool recycles chunks and counts the ones in use (the engine's
// global buffer bound).
type chunkPool struct {
	free  [][]byte
	inUse int
}

func (p *chunkPool) get() []byte {
	p.inUse++
	if n := len(p.free); n > 0 {
		c := p.free[n-1]
		p.free = p.free[:n-1]
		return c
	}
	return make([]byte, chunkSize)
}

// maxFreeChunks bounds the chunks kept for reuse (4 MB).
const maxFreeChunks = 256

func (p *chunkPool) put(c []byte) {
	p.inUse--
	if len(p.free) < maxFreeChunks {
		p.free = append(p.free, c)
	}
}

// write stores data at seq, which must not be below b.start.
func (b *seqBuf) write(p *chunkPool, seq seqnum.Value, data []byte) {
	off := int(b.start.Size(seq))
	for len(data) > 0 {
		i, o := off/chunkSize, off%chunkSize
		for len(b.chunks) <= i {
			b.chunks = append(b.chunks, p.get())
		}
		n := copy(b.chunks[i][o:], data)
		data, off = data[n:], off+n
	}
}

// read fills dst with the bytes from seq on, which must have been written.
func (b *seqBuf) read(dst []byte, seq seqnum.Value) {
	off := int(b.start.Size(seq))
	for len(dst) > 0 {
		i, o := off/chunkSize, off%chunkSize
		n := copy(dst, b.chunks[i][o:])
		dst, off = dst[n:], off+n
	}
}

// zero clears n bytes from seq on, which must be inside the chunks.
func (b *seqBuf) zero(seq seqnum.Value, n int) {
	off := int(b.start.Size(seq))
	for n > 0 {
		i, o := off/chunkSize, off%chunkSize
		k := min(n, chunkSize-o)
		clear(b.chunks[i][o : o+k])
		n, off = n-k, off+k
	}
}

// take hands over the n bytes from seq on, which must have been
// written, as slices of the chunks that hold them: those chunks leave
// the pool's count (they are the caller's now) and the others go back
// to it; the buffer is empty after.
func (b *seqBuf) take(p *chunkPool, seq seqnum.Value, n int) [][]byte {
	off := int(b.start.Size(seq))
	first, last := off/chunkSize, (off+n-1)/chunkSize
	out := make([][]byte, 0, last-first+1)
	for i, c := range b.chunks {
		if i < first || i > last {
			p.put(c)
			continue
		}
		lo, hi := 0, chunkSize
		if i == first {
			lo = off % chunkSize
		}
		if i == last {
			hi = (off+n-1)%chunkSize + 1
		}
		out = append(out, c[lo:hi:hi])
		p.inUse--
	}
	clear(b.chunks)
	b.chunks = b.chunks[:0]
	return out
}

// release gives back the chunks wholly below upTo.
func (b *seqBuf) release(p *chunkPool, upTo seqnum.Value) {
	if len(b.chunks) == 0 {
		if b.start.LessThan(upTo) {
			b.start = upTo
		}
		return
	}
	n := 0
	for n < len(b.chunks) && int32(b.start.Size(upTo)) >= chunkSize {
		p.put(b.chunks[n])
		b.chunks[n] = nil
		b.start = b.start.Add(chunkSize)
		n++
	}
	if n == len(b.chunks) && b.start.LessThan(upTo) {
		b.start = upTo
	}
	if n > 0 {
		copy(b.chunks, b.chunks[n:])
		clear(b.chunks[len(b.chunks)-n:])
		b.chunks = b.chunks[:len(b.chunks)-n]
	}
}

// releaseAll gives every chunk back.
func (b *seqBuf) releaseAll(p *chunkPool) {
	for i, c := range b.chunks {
		p.put(c)
		b.chunks[i] = nil
	}
	b.chunks = b.chunks[:0]
}

// bufPool recycles the packet buffers snoop caches, so that caching a
// segment allocates nothing once the pool has filled.
type bufPool struct{ free [][]byte }

// pktBufCap is the capacity of pooled buffers; larger packets are
// allocated and not pooled.
const pktBufCap = 2048

// maxFreeBufs bounds the buffers kept for reuse (8 MB).
const maxFreeBufs = 4096

func (p *bufPool) get(n int) []byte {
	if n > pktBufCap {
		return make([]byte, n)
	}
	if k := len(p.free); k > 0 {
		b := p.free[k-1]
		p.free = p.free[:k-1]
		return b[:n]
	}
	return make([]byte, n, pktBufCap)
}

func (p *bufPool) put(b []byte) {
	if cap(b) == pktBufCap && len(p.free) < maxFreeBufs {
		p.free = append(p.free, b[:0])
	}
}
