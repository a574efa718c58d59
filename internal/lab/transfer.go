package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
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

// Exchanges is what a request/response flow did.
type Exchanges struct {
	Count int           // responses received whole and as sent
	Max   time.Duration // the longest from a request to its whole response
	Err   error
}

// Sizes of a request/response flow's messages: a small request, a
// response of a dozen segments (a web object, an API answer).
const (
	requestSize  = 200
	responseSize = 16 << 10
)

// exchange has client ask server for responses, one after the other,
// for d: each request names its number, the server answers with
// responseSize bytes of the stream seeded by seed and that number, and
// the client checks every byte. A response that is not what was sent, or
// a connection that fails before d, is an error.
func exchange(client, server *gvhost.Host, port uint16, seed uint64, d time.Duration) Exchanges {
	ln, err := server.Listen(port)
	if err != nil {
		return Exchanges{Err: err}
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req := make([]byte, requestSize)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			n := binary.BigEndian.Uint64(req)
			if _, err := io.CopyN(c, newStream(seed^n<<20), responseSize); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(d)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := client.Dial(ctx, netip.AddrPortFrom(server.Addr(), port))
	if err != nil {
		return Exchanges{Err: fmt.Errorf("dial: %w", err)}
	}
	defer c.Close()
	c.SetDeadline(deadline)
	var ex Exchanges
	req := make([]byte, requestSize)
	got, want := make([]byte, responseSize), make([]byte, responseSize)
	for n := uint64(1); ; n++ {
		start := time.Now()
		binary.BigEndian.PutUint64(req, n)
		if _, err := c.Write(req); err != nil {
			break
		}
		if _, err := io.ReadFull(c, got); err != nil {
			if time.Now().Before(deadline.Add(-100 * time.Millisecond)) {
				ex.Err = fmt.Errorf("response %d: %w", n, err)
			}
			break
		}
		io.ReadFull(newStream(seed^n<<20), want)
		if !bytes.Equal(got, want) {
			ex.Err = fmt.Errorf("response %d is not the bytes the server sent", n)
			break
		}
		ex.Count++
		ex.Max = max(ex.Max, time.Since(start))
	}
	return ex
}
