//go:build !linux

package linkem

import (
	"context"
	"errors"
)

type port struct{ c portCounters }

func openPort(string) (*port, error)                         { return nil, errors.New("linkem needs Linux (AF_PACKET)") }
func (p *port) readLoop(context.Context, func([]byte)) error { return nil }
func (p *port) write([]byte)                                 {}
func (p *port) close()                                       {}
