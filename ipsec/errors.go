package ipsec

import (
	"errors"
	"fmt"
)

// Errors that callers count by kind. They are wrapped with context; test
// with errors.Is.
var (
	ErrICV         = errors.New("integrity check failed")
	ErrReplay      = errors.New("replayed packet")
	ErrTooOld      = errors.New("sequence number left of the replay window")
	ErrSeqOverflow = errors.New("sequence number space exhausted")
	ErrHardExpired = errors.New("sa hard lifetime expired")
	ErrNoRoom      = errors.New("buffer lacks headroom or tailroom")
	ErrWrongSA     = errors.New("packet does not belong to this sa")
	ErrMalformed   = errors.New("malformed ipsec packet")
	ErrDummy       = errors.New("dummy packet (next header 59)")
	ErrReadAEAD    = errors.New("class read is impossible with a combined-mode transform")
	ErrUnsupported = errors.New("unsupported")
	ErrIVExhausted = errors.New("iv range exhausted")
	// ErrUndeliverable wraps what goes wrong after a packet verified: a
	// dummy packet, a bad trailer, an inner packet that does not parse.
	// The packet counted and moved the replay window; it carries nothing
	// to deliver.
	ErrUndeliverable = errors.New("verified, but nothing to deliver")
	ErrFamily        = errors.New("address family mismatch")
)

// TooBigError reports a sealed packet that would exceed the SA's path MTU.
// MTU is the largest inner packet that fits.
type TooBigError struct{ MTU int }

func (e *TooBigError) Error() string {
	return fmt.Sprintf("packet too big for path mtu: inner mtu %d", e.MTU)
}
