//go:build !linux

package main

import (
	"io"

	"github.com/espep/espep/internal/host"
)

func printHostStats(io.Writer, *host.Host) {}
