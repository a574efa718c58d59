package main

import (
	"log/slog"
	"time"

	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff"
	"github.com/espep/espep/internal/statedir"
)

// keepFlows hands the gateway's flows — the bytes it acknowledged early
// with them — to its successor through the state directory (package
// handoff, restart.go). Called on a clean stop, once the packet I/O has
// stopped and before the gateway closes.
func keepFlows(gw *gateway.Gateway, state *statedir.Dir, log *slog.Logger) {
	k, err := handoff.KeepForRestart(state, gw, time.Now())
	if err != nil {
		log.Error("gateway: stop: flows not kept for the next start", "err", err)
		return
	}
	if k.Flows > 0 {
		log.Info("gateway: flows kept for the next start", "flows", k.Flows, "bytes", k.Bytes, "sas", k.SAs, "routes", k.Routes)
	}
}

// resumeFlows takes back the flows the last clean stop kept. Called once
// the SA files are loaded, before the first packet.
func resumeFlows(gw *gateway.Gateway, state *statedir.Dir, log *slog.Logger) {
	k, err := handoff.ResumeAfterRestart(state, gw, time.Now())
	if err != nil {
		log.Warn("gateway: start: the flows the last stop kept were not resumed", "err", err, "flows", k.Flows, "bytes", k.Bytes)
		return
	}
	if k.Flows > 0 {
		log.Info("gateway: flows resumed from the last stop", "flows", k.Flows, "bytes", k.Bytes, "sas", k.SAs, "routes", k.Routes,
			"stopped", time.Since(k.At).Round(time.Millisecond))
	}
}
