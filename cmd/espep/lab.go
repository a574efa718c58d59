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
one JSON object per row instead; --plot writes an SVG of goodput over time
in the outage scenario. The exit status is 1 if any row fails.

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
	plot := fs.String("plot", "", "write an SVG of goodput over time (the outage scenario) to this file")
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
	if *plot != "" && len(names) > 0 && !slices.Contains(names, "outage") {
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
		if err := writePlot(*plot, rows); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "lab: picture in %s\n", *plot)
	}
	for _, r := range rows {
		if r.Integrity != "pass" {
			return errors.New("lab: some runs failed")
		}
	}
	return nil
}

func writePlot(path string, rows []lab.Row) error {
	var sel []lab.Row
	var fade [2]time.Duration
	for _, r := range rows {
		if r.Scenario == "outage" {
			sel = append(sel, r)
			fade = r.Fade
		}
	}
	if len(sel) == 0 {
		return errors.New("lab: --plot needs the outage scenario")
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	title := fmt.Sprintf("Goodput through a fade: ESP tunnel, radio 20 Mbit/s with %s", sel[0].Radio)
	if err := lab.Plot(f, title, sel, fade[0], fade[1]); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
