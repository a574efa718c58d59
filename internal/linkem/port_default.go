//go:build !linux

package linkem

import (
	"context"
	"errors"

	"github.com/espep/espep/internal/netem"
)

type port struct{ c portCounters }

func openPort(string) (*port, error)                        { return nil, errors.New("linkem needs Linux (AF_PACKET)") }
func (p *port) readLoop(context.Context, *netem.Link) error { return nil }
func (p *port) write([]byte)                                {}
func (p *port) close()                                      {}
