package lab

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/espep/espep/internal/gvhost"
)

// Transfer is what one TCP flow moved.
type Transfer struct {
	Start   time.Time // when the receiver accepted the connection
	Bytes   int64
	Elapsed time.Duration
	// Samples are the bytes received in each SampleEvery since the flow
	// began (for the picture).
	Samples []int64
	// Intact: the bytes received are the sender's, in order (SHA-256 of
	// both).
	Intact bool
	Err    error
}

// SampleEvery is the bin of Transfer.Samples.
const SampleEvery = 100 * time.Millisecond

// newStream is the bytes a flow sends: a pseudo-random stream both ends
// can make, so that the receiver's hash can be checked against the
// sender's.
func newStream(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// flow sends from src to dst:port for d, the receiver reading as fast as
// it can; it returns what arrived, checked against what was sent.
func flow(src, dst *gvhost.Host, port uint16, seed uint64, d time.Duration) Transfer {
	ln, err := dst.Listen(port)
	if err != nil {
		return Transfer{Err: err}
	}
	defer ln.Close()
	var tr Transfer
	got := make(chan [32]byte, 1)
	var mu sync.Mutex
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		start := time.Now()
		mu.Lock()
		tr.Start = start
		mu.Unlock()
		c.SetReadDeadline(start.Add(d))
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			h.Write(buf[:k])
			mu.Lock()
			tr.Bytes += int64(k)
			bin := int(time.Since(start) / SampleEvery)
			for len(tr.Samples) <= bin {
				tr.Samples = append(tr.Samples, 0)
			}
			tr.Samples[bin] += int64(k)
			mu.Unlock()
			if err != nil {
				break
			}
		}
		mu.Lock()
		tr.Elapsed = time.Since(start)
		mu.Unlock()
		got <- [32]byte(h.Sum(nil))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := src.Dial(ctx, netip.AddrPortFrom(dst.Addr(), port))
	if err != nil {
		return Transfer{Err: fmt.Errorf("dial: %w", err)}
	}
	c.SetWriteDeadline(time.Now().Add(d))
	io.Copy(c, newStream(seed)) // until the deadline
	sum := <-got
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	// The sender's first tr.Bytes bytes, hashed again.
	h := sha256.New()
	io.CopyN(h, newStream(seed), tr.Bytes)
	tr.Intact = [32]byte(h.Sum(nil)) == sum
	return tr
}
