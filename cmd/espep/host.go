package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/espep/espep/internal/host"
)

const hostUsage = `usage: espep host --config FILE

A userspace IPsec endpoint: a TUN device, an SPD and a SAD from FILE (see
README). SIGHUP reloads the SAs and policies, keeping SAs that did not
change; SIGUSR1 prints the counters; SIGINT/SIGTERM stop it and remove its
routes.
`

func runHost(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("host", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file")
	fs.Usage = func() { fmt.Fprint(stderr, hostUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *path == "" || fs.NArg() != 0 {
		fs.Usage()
		return usageError{"host: need --config FILE"}
	}
	cfg, err := host.LoadConfig(*path)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	h, err := host.New(cfg, log)
	if err != nil {
		return err
	}
	defer h.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done) // ends the signal goroutine
	go func() {
		for {
			var s os.Signal
			select {
			case s = <-sigs:
			case <-done:
				return
			}
			switch s {
			case syscall.SIGHUP:
				c, err := host.LoadConfig(*path)
				if err == nil {
					err = h.Reload(c)
				}
				if err != nil {
					log.Error("reload failed; keeping the running configuration", "err", err)
				}
			case syscall.SIGUSR1:
				printHostStats(stdout, h)
			}
		}
	}()
	err = h.Run(ctx)
	printHostStats(stdout, h)
	return err
}

// printHostStats prints the host's counters on one line (the counter
// table's words).
func printHostStats(w io.Writer, h *host.Host) {
	fmt.Fprintf(w, "espep host: %s\n", h.Stats().Summary())
}
