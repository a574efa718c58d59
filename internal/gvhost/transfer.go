package gvhost

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Transfer sends size random bytes from src to dst's port over TCP and
// checks by SHA-256 that dst received exactly them. It returns the goodput
// in Mbit/s, or an error if the bytes differ or the transfer did not
// finish within timeout.
func Transfer(src, dst *Host, port uint16, size int, timeout time.Duration) (float64, error) {
	return transfer(src, dst, port, size, timeout, false)
}

// TransferHeld is Transfer with a sender that keeps the connection open,
// sending nothing more (not even a FIN), until dst has every byte.
func TransferHeld(src, dst *Host, port uint16, size int, timeout time.Duration) (float64, error) {
	return transfer(src, dst, port, size, timeout, true)
}

func transfer(src, dst *Host, port uint16, size int, timeout time.Duration, hold bool) (float64, error) {
	ln, err := dst.Listen(port)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		if hold {
			c.SetDeadline(time.Now().Add(timeout))
			io.CopyN(h, c, int64(size)) // no FIN comes to end it
		} else {
			io.Copy(h, c)
		}
		got <- [32]byte(h.Sum(nil))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	c, err := src.Dial(ctx, netip.AddrPortFrom(dst.Addr(), port))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(data); err != nil {
		return 0, fmt.Errorf("transfer: %w", err)
	}
	if !hold {
		c.Close()
	}
	select {
	case s := <-got:
		if s != want {
			return 0, fmt.Errorf("transfer: received data differs (sha256)")
		}
	case <-time.After(timeout):
		return 0, fmt.Errorf("transfer of %d bytes did not finish in %v", size, timeout)
	}
	return float64(size*8) / time.Since(start).Seconds() / 1e6, nil
}
