package handoff

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/espep/espep/internal/acklog"
	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/statedir"
)

// Restarts. A gateway that stops cleanly hands everything over to its
// own successor as it would a mobile to a neighbour (DESIGN.md: the data
// acknowledged early is state that must survive a restart, and rule 5):
// gateway.HandOverAll, gob-encoded as a stream of version-1 parts (the
// buffered bytes in the engine's own chunks, not joined), kept by the
// state directory (statedir.SaveFlows) until the next start, which
// resumes them before its first packet. The SAs' numbers, salt and accepted packets
// are in the state directory's journal anyway; the part carries the
// replay windows whole and the flows' bindings besides.
//
// A clean stop keeps its flows so. A gateway SIGKILLed, or one that
// crashes, has kept them in its journal instead, if it had one (package
// acklog: with a state directory, in split mode), and the next start
// takes them from there (ResumeAfterCrash).

// Kept says what a stop kept for its successor, or what a start took back.
type Kept struct {
	Flows, SAs, Routes int
	Bytes              int // buffered bytes, acknowledged early
	At                 time.Time
}

func keptOf(p *Part, at time.Time) Kept {
	k := Kept{Flows: len(p.Flows), SAs: len(p.SAs), Routes: len(p.Routes), At: at}
	for i := range p.Flows {
		k.Bytes += p.Flows[i].Buffered()
	}
	return k
}

// KeepForRestart removes every flow from gw (its packet I/O stopped) and
// keeps them, with its SAs' state, in d for the next gateway to start on
// it. Nothing is written when there is nothing to keep. The body is a
// gob stream of parts: the SAs and bindings first, then one part a flow,
// each encoded and let go in turn — never a second copy of all the bytes
// the flows hold (up to the engine's buffer-total).
func KeepForRestart(d *statedir.Dir, gw *gateway.Gateway, now time.Time) (Kept, error) {
	h := gw.HandOverAll()
	k := keptOf(&h, now)
	if d == nil || !d.Durable() {
		if k.Bytes > 0 { // snoop's flows, and split's holding nothing, lose nothing the endpoints do not still have
			return k, fmt.Errorf("handoff: no state directory: %d flows dropped, %d bytes acknowledged early lost", k.Flows, k.Bytes)
		}
		return k, nil
	}
	if k.Flows == 0 {
		return k, nil
	}
	err := d.SaveFlows(now, func(w io.Writer) error {
		enc := gob.NewEncoder(w)
		if err := enc.Encode(&Part{SAs: h.SAs, Routes: h.Routes}); err != nil {
			return err
		}
		for i := range h.Flows {
			if err := enc.Encode(&Part{Flows: h.Flows[i : i+1]}); err != nil {
				return err
			}
			h.Flows[i] = engine.FlowState{}
		}
		return nil
	})
	if err != nil {
		return k, fmt.Errorf("handoff: keeping %d flows (%d bytes acknowledged early) for a restart: %w", k.Flows, k.Bytes, err)
	}
	return k, nil
}

// ResumeAfterRestart resumes on gw what the gateway before it kept in d,
// if anything, unless it waited longer than gw's engine would have kept
// it (engine.GiveUpAfter). Call it once the SAs gw seals on are loaded
// and before the first packet. The flows are taken whatever happens: a
// second start does not see them again.
func ResumeAfterRestart(d *statedir.Dir, gw *gateway.Gateway, now time.Time) (Kept, error) {
	if d == nil {
		return Kept{}, nil
	}
	body, at, err := d.TakeFlows(now, gw.Engine().GiveUpAfter())
	if errors.Is(err, statedir.ErrNoFlows) {
		return Kept{}, nil
	}
	if err != nil {
		return Kept{At: at}, fmt.Errorf("handoff: flows kept over a restart: %w", err)
	}
	k, err := resumeKept(gw, body)
	k.At = at
	if err != nil {
		return k, fmt.Errorf("handoff: flows kept over a restart: %w", err)
	}
	return k, nil
}

// resumeKept resumes a flows file's body on gw, part by part: what it
// resumed before a part it could not decode or take stays resumed.
func resumeKept(gw *gateway.Gateway, body []byte) (Kept, error) {
	var k Kept
	dec := gob.NewDecoder(bytes.NewReader(body))
	for n := 0; ; n++ {
		var p Part
		if err := dec.Decode(&p); err == io.EOF && n > 0 {
			return k, nil
		} else if err != nil {
			return k, fmt.Errorf("part %d: %w", n+1, err)
		}
		if n > 0 && (len(p.SAs) > 0 || len(p.Routes) > 0) {
			return k, fmt.Errorf("part %d: SAs or bindings after the first part", n+1)
		}
		if err := gw.ResumeRestart(p); err != nil {
			return k, err
		}
		pk := keptOf(&p, time.Time{})
		k.Flows, k.SAs, k.Routes, k.Bytes = k.Flows+pk.Flows, k.SAs+pk.SAs, k.Routes+pk.Routes, k.Bytes+pk.Bytes
	}
}

// ResumeAfterCrash resumes on gw the flows the journal j kept of the
// gateways before (package acklog: what a SIGKILLed or crashed gateway
// had acknowledged early), then removes their files — the import has
// written the flows to j's own. Call it after ResumeAfterRestart, before
// the first packet. A flow the engine refuses is logged and counted
// lost; the others go on.
func ResumeAfterCrash(j *acklog.Log, gw *gateway.Gateway, now time.Time, log *slog.Logger) (acklog.Recovered, error) {
	flows, rec, err := j.Recover(now, gw.Engine().GiveUpAfter(), gw.Engine().ImportBound())
	if err != nil {
		return rec, fmt.Errorf("handoff: journal: %w", err)
	}
	for i := range flows {
		if err := gw.ResumeRestart(gateway.Handoff{Flows: flows[i : i+1]}); err != nil {
			rec.Flows--
			rec.Bytes -= flows[i].Buffered()
			rec.Dropped++
			log.Warn("handoff: journal: a flow was not resumed", "wire", flows[i].Wire, "radio", flows[i].Radio, "err", err)
		}
		flows[i] = engine.FlowState{}
	}
	if err := j.DropOlder(); err != nil {
		return rec, fmt.Errorf("handoff: journal: %w", err)
	}
	return rec, nil
}
