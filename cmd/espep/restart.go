package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/espep/espep/internal/acklog"
	"github.com/espep/espep/internal/engine"
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

// openJournal opens the journal of split's early-acknowledged bytes in
// the state directory (package acklog); none without a state directory
// or in snoop mode, which acknowledges nothing early.
func openJournal(state *statedir.Dir, mode engine.Mode, log *slog.Logger) (*acklog.Log, error) {
	if state == nil || !state.Durable() || mode != engine.ModeSplit {
		return nil, nil
	}
	j, err := acklog.Open(filepath.Join(state.Path(), "acklog"), log)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return j, nil
}

// useJournal has the engine write to j, if there is one and write is
// set. Without write (journal = no) j is only read at the start
// (resumeJournal): what the process before left is resumed, and nothing
// is journaled after.
func useJournal(cfg *engine.Config, j *acklog.Log, write bool, log *slog.Logger) {
	switch {
	case j == nil:
	case write:
		cfg.Journal = j
	default:
		log.Warn("gateway: journal = no: a kill or crash of this process loses the bytes split acknowledged early, and their connections stall")
	}
}

// closeJournal closes j once the gateway is closed.
func closeJournal(j *acklog.Log, log *slog.Logger) {
	if j == nil {
		return
	}
	if err := j.Close(); err != nil {
		log.Error("gateway: journal", "err", err)
	}
}

// resumeJournal takes back what the gateways before this one had
// acknowledged early and not handed on — what a SIGKILL or a crash would
// have lost. Called after resumeFlows, before the first packet.
func resumeJournal(gw *gateway.Gateway, j *acklog.Log, log *slog.Logger) {
	if j == nil {
		return
	}
	rec, err := handoff.ResumeAfterCrash(j, gw, time.Now(), log)
	if err != nil {
		log.Warn("gateway: start: the journal of the gateway before was not read whole", "err", err)
	}
	if rec.Flows > 0 || rec.Damaged > 0 || rec.Stale > 0 || rec.Dropped > 0 {
		log.Info("gateway: flows resumed from the journal", "flows", rec.Flows, "bytes", rec.Bytes, "files", rec.Files,
			"stale", rec.Stale, "damaged", rec.Damaged, "dropped", rec.Dropped)
	}
}
