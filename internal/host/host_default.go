//go:build !linux

package host

import (
	"context"
	"errors"
	"log/slog"
)

// Host is a running endpoint (Linux only).
type Host struct{}

// New fails: espep host needs Linux (TUN, raw sockets, policy routing).
func New(*Config, *slog.Logger) (*Host, error) { return nil, errors.New("espep host needs Linux") }

func (h *Host) Run(context.Context) error { return nil }
func (h *Host) Close() error              { return nil }
func (h *Host) Reload(*Config) error      { return nil }
