//go:build linux

package main

import (
	"fmt"
	"io"

	"github.com/espep/espep/internal/host"
)

func printHostStats(w io.Writer, h *host.Host) {
	s := &h.Stats
	fmt.Fprintf(w, "espep host: tun-in %d sealed %d bypassed %d discarded %d seal-errors %d; net-in %d opened %d open-errors %d policy-drops %d not-ours %d ike %d keepalives %d; tun-write-errors %d send-errors %d; soft-expired %d hard-expired %d\n",
		s.TunIn.Load(), s.Sealed.Load(), s.Bypassed.Load(), s.Discarded.Load(), s.SealErrors.Load(),
		s.NetIn.Load(), s.Opened.Load(), s.OpenErrors.Load(), s.PolicyDrops.Load(), s.NotOurs.Load(),
		s.IKE.Load(), s.Keepalives.Load(), s.TunWriteErrors.Load(), s.SendErrors.Load(), s.SoftExpired.Load(), s.HardExpired.Load())
}
