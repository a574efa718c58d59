package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/espep/espep/internal/mcast"
)

const neighboursUsage = `usage: espep neighbours probe  --group ADDR:PORT --ttl N --name NAME [--addr HOST:PORT] [--iface IF] [--wait D]
       espep neighbours answer --group ADDR:PORT --name NAME --addr HOST:PORT [--iface IF] [--duration D]

Neighbour discovery by TTL-limited multicast (scheme B), for deployments
where base-station locations are unknown. "answer" joins the group and
answers every probe by unicast, saying with what TTL it arrived; "probe"
sends one probe with --ttl and prints the gateways that answered within
--wait, fewest hops (multicast routers between) first. Answers name
candidates only: what a gateway does with a neighbour it does over mutual
TLS. IPv4.

flags:
`

func runNeighbours(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "probe" && args[0] != "answer") {
		fmt.Fprint(stderr, neighboursUsage)
		return usageError{"neighbours: probe or answer"}
	}
	verb := args[0]
	fs := flag.NewFlagSet("neighbours "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	group := fs.String("group", "239.77.0.1:7777", "the multicast group and port")
	ttl := fs.Int("ttl", 2, "probe: the TTL (1: this link only; each multicast router takes one)")
	name := fs.String("name", "", "this gateway's name")
	addr := fs.String("addr", "", "where this gateway takes handoff requests (host:port)")
	iface := fs.String("iface", "", "the interface to join and send on (default: as routed)")
	wait := fs.Duration("wait", time.Second, "probe: how long to gather answers")
	dur := fs.Duration("duration", 0, "answer: stop after this long (0: until a signal)")
	fs.Usage = func() { fmt.Fprint(stderr, neighboursUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	g, err := netip.ParseAddrPort(*group)
	if err != nil || *name == "" || fs.NArg() != 0 || verb == "answer" && *addr == "" {
		fs.Usage()
		return usageError{"neighbours: need --group ADDR:PORT and --name (and --addr to answer)"}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg := mcast.Config{Group: g, Iface: *iface, Name: *name, Addr: *addr, Log: log}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if verb == "answer" {
		if *dur > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, *dur)
			defer cancel()
		}
		return mcast.Serve(ctx, cfg)
	}
	answers, err := mcast.Probe(ctx, cfg, *ttl, *wait)
	if err != nil {
		return err
	}
	for _, a := range answers {
		fmt.Fprintf(stdout, "%s %s hops=%d from=%s\n", a.Name, a.Addr, a.Hops, a.From)
	}
	fmt.Fprintf(stdout, "%d answered (ttl %d)\n", len(answers), *ttl)
	return nil
}
