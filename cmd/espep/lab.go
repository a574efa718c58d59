package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/espep/espep/internal/lab"
)

const labUsage = `usage: espep lab [--scenario NAME,…] [--duration D] [--seed N] [--json] [--plot FILE]

The seed's network in one process, no root needed: a wired terminal and a
mobile (gVisor's TCP, espep's IPsec), a base station with espep's gateway or
a plain relay, a wired link (1 Gbit/s, RTT 80 ms) and a radio (20 Mbit/s,
RTT 20 ms). Each scenario moves data end to end (e2e), through snoop and
through split, checks every transfer (SHA-256) and the endpoints' IPsec (no
ICV or replay failure), and prints a table: goodput, its ratio to the
radio's limit C·(1−p) and to end-to-end TCP, and PASS or FAIL. --json prints
one JSON object per row instead; --plot FILE writes an SVG of goodput over
time in the outage scenario to FILE and, when the handoff scenario runs,
one of the mobile moving across its three cells (the handoffs marked) to
FILE with -handoff before its extension. The exit status is 1 if any row
fails.

scenarios:
%s
`

func runLab(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scen := fs.String("scenario", "", "comma-separated scenarios to run (default: all)")
	dur := fs.Duration("duration", 3*time.Second, "length of each transfer")
	seed := fs.Uint64("seed", 1, "seed of the radio's loss and of the data")
	asJSON := fs.Bool("json", false, "print one JSON object per row on stdout")
	plot := fs.String("plot", "", "write SVGs of goodput over time (the outage and handoff scenarios) to this file (and FILE-handoff)")
	par := fs.Int("parallel", 4, "runs at once")
	fs.Usage = func() {
		var b strings.Builder
		for _, sc := range lab.Scenarios {
			fmt.Fprintf(&b, "  %-9s %s\n", sc.Name, sc.About)
		}
		fmt.Fprintf(stderr, labUsage, b.String())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return usageError{"lab: unexpected arguments"}
	}
	var names []string
	if *scen != "" {
		names = strings.Split(*scen, ",")
	}
	if *plot != "" && len(names) > 0 && !slices.Contains(names, "outage") && !slices.Contains(names, "handoff") {
		names = append(names, "outage")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	cfg := lab.Config{Duration: *dur, Seed: *seed, Parallel: *par, Progress: func(done, total int, r lab.Row) {
		fmt.Fprintf(stderr, "\rlab: %d/%d runs, %s …", done, total, time.Since(start).Round(time.Second))
		if done == total {
			fmt.Fprintln(stderr)
		}
	}}
	rows, err := lab.Run(ctx, cfg, names)
	if err != nil {
		return usageError{err.Error()}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, r := range rows {
			if err := enc.Encode(r.Rounded()); err != nil {
				return err
			}
		}
	} else {
		lab.Table(stdout, rows)
		for _, r := range rows {
			if r.CPUBound {
				fmt.Fprintln(stdout, "wait!: the machine was too busy during that run (its threads waited for a CPU that long a share of it, after retries): its figures understate the network")
				break
			}
		}
	}
	if *plot != "" {
		paths, err := writePlots(*plot, rows)
		if err != nil {
			return err
		}
		for _, p := range paths {
			fmt.Fprintf(stderr, "lab: picture in %s\n", p)
		}
	}
	for _, r := range rows {
		if r.Integrity != "pass" {
			return errors.New("lab: some runs failed")
		}
	}
	return nil
}

// writePlots draws the outage scenario's rows to path and the handoff
// scenario's (ESP tunnel) to path with -handoff before its extension,
// each if it ran; it returns the files written.
func writePlots(path string, rows []lab.Row) ([]string, error) {
	var fade, moves []lab.Row
	for _, r := range rows {
		switch {
		case r.Scenario == "outage":
			fade = append(fade, r)
		case r.Scenario == "handoff" && r.IPsec == lab.IPsecTunnel:
			moves = append(moves, r)
		}
	}
	var written []string
	if len(fade) > 0 {
		title := fmt.Sprintf("Goodput through a fade: ESP tunnel, radio 20 Mbit/s with %s", fade[0].Radio)
		if err := writeSVG(path, title, fade, lab.Marks{Fade: fade[0].Fade}); err != nil {
			return nil, err
		}
		written = append(written, path)
	}
	if len(moves) > 0 {
		m := lab.Marks{Floor: moves[0].LimitMbps / 2, FloorLabel: "half the radio's limit"}
		for _, r := range moves {
			if r.Mode == lab.ModeSplit {
				for _, h := range r.Handoffs {
					m.Handoffs = append(m.Handoffs, time.Duration(h*float64(time.Second)))
				}
			}
		}
		ext := filepath.Ext(path)
		p := strings.TrimSuffix(path, ext) + "-handoff" + ext
		title := fmt.Sprintf("The mobile moves across three gateways: ESP tunnel, radio 20 Mbit/s with %s loss", moves[0].Radio)
		if err := writeSVG(p, title, moves, m); err != nil {
			return nil, err
		}
		written = append(written, p)
	}
	if len(written) == 0 {
		return nil, errors.New("lab: --plot needs the outage or the handoff scenario")
	}
	return written, nil
}

func writeSVG(path, title string, rows []lab.Row, m lab.Marks) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := lab.Plot(f, title, rows, m); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
