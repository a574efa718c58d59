package ipsec

import (
	"fmt"
	"sync/atomic"
)

// Action is what the SPD decides for matching traffic (RFC 4301 §4.4.1).
type Action uint8

const (
	Discard Action = iota
	Bypass
	Protect
)

func (a Action) String() string { return [...]string{"discard", "bypass", "protect"}[a] }

// ParseAction parses "discard", "bypass" or "protect".
func ParseAction(s string) (Action, error) {
	for a := Discard; a <= Protect; a++ {
		if a.String() == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown spd action %q (want protect, bypass or discard)", s)
}

// Policy is one ordered SPD entry.
type Policy struct {
	Name     string
	Selector Selector
	Action   Action
	// SAs is the outbound SA bundle for Protect, applied in order, the
	// first innermost (RFC 4301 §4.5: e.g. ESP, then AH around it).
	SAs []ID
}

// SPD is an ordered policy list, first match wins (RFC 4301 §4.4.1).
// Lookups are lock-free; Set replaces the whole list atomically, as a
// control plane handing over a new configuration does.
type SPD struct {
	p atomic.Pointer[[]Policy]
}

// Set installs policies in order.
func (d *SPD) Set(policies []Policy) {
	c := append([]Policy(nil), policies...)
	d.p.Store(&c)
}

// Lookup returns the first policy whose selector matches t. Traffic that no
// policy matches is discarded (RFC 4301 §4.4.1: the SPD must be complete).
func (d *SPD) Lookup(t *Traffic) (*Policy, bool) {
	p := d.p.Load()
	if p == nil {
		return nil, false
	}
	for i := range *p {
		if (*p)[i].Selector.Match(t) {
			return &(*p)[i], true
		}
	}
	return nil, false
}
