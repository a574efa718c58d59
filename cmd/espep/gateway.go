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
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/linkem"
	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/internal/netem"
)

const gatewayUsage = `usage: espep gateway --wire IFACE --radio IFACE --sa FILE [--mode split|snoop] [--metrics ADDR]

The IPsec-aware PEP between a wired and a radio interface (AF_PACKET; it
forwards every frame between them, as the only forwarder: keep kernel IP
forwarding off between the two). It opens the ESP/AH of the SAs in FILE
(native or Wireshark esp_sa lines; re-read when it changes and on SIGHUP),
runs the TCP engine on what is inside and seals it again; everything else
is relayed as it came. Counters print on exit; --metrics serves Prometheus
/metrics and /healthz. The interfaces' peers need offloads off
(ethtool -K DEV tx off tso off gso off gro off).

`

func runGateway(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	wire := fs.String("wire", "", "the wired interface")
	radio := fs.String("radio", "", "the radio interface")
	saPath := fs.String("sa", "", "SA file (native or esp_sa), watched")
	mode := fs.String("mode", "split", "TCP engine: split (early ACKs, the engine's own sender) or snoop")
	cc := fs.String("cc", engine.CCBBR, "split mode's congestion controller: bbr or reno")
	plain := fs.Bool("plain", false, "accelerate TCP that is not IPsec-protected too")
	maddr := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9465)")
	dur := fs.Duration("duration", 0, "stop after this long (0: run until a signal)")
	fs.Usage = func() { fmt.Fprint(stderr, gatewayUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *wire == "" || *radio == "" || *saPath == "" || fs.NArg() != 0 {
		fs.Usage()
		return usageError{"gateway: need --wire, --radio and --sa"}
	}
	ecfg := engine.Config{CC: *cc}
	switch *mode {
	case "split":
		ecfg.Mode = engine.ModeSplit
	case "snoop":
	default:
		return usageError{fmt.Sprintf("gateway: --mode %q: want split or snoop", *mode)}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	br, gw, stopHUP, err := openGateway(ctx, *wire, *radio, netem.Config{}, netem.Config{}, nil,
		gateway.Config{Engine: ecfg, Plain: *plain, Log: log}, *saPath)
	if err != nil {
		return err
	}
	defer stopHUP()
	if *maddr != "" {
		reg, err := metrics.Registry(gw.Counters("espep_gateway_"))
		if err != nil {
			return err
		}
		go func() {
			if err := metrics.Serve(ctx, *maddr, reg, log); err != nil {
				log.Error("gateway: metrics", "err", err)
			}
		}()
	}
	log.Info("gateway running", "wire", *wire, "radio", *radio, "mode", *mode, "cc", *cc, "sa", *saPath)
	err = br.Run(ctx)
	printGatewayStats(stdout, gw, nil)
	return err
}

// openGateway bridges interfaces a (wire) and b (radio) through the IPsec
// gateway — over the emulated links ab, ba and wire, all transparent when
// zero — with the SAs of saPath, which it re-reads when the file changes
// and on SIGHUP until ctx ends. stop ends the SIGHUP subscription.
func openGateway(ctx context.Context, a, b string, ab, ba netem.Config, wire *netem.Config, cfg gateway.Config,
	saPath string) (br *linkem.Bridge, gw *gateway.Gateway, stop func(), err error) {
	br, err = linkem.OpenWith(a, b, ab, ba, wire, func(out func(engine.Side, []byte)) (linkem.Processor, error) {
		g, err := gateway.New(cfg, nil, out)
		gw = g
		return g, err
	}, cfg.Log)
	if err != nil {
		return nil, nil, nil, err
	}
	sf := gateway.NewSAFile(gw, saPath)
	if err := sf.Load(); err != nil {
		cfg.Log.Warn("gateway: no SAs yet; relaying until the file has some", "err", err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go sf.Watch(ctx, 200*time.Millisecond, hup)
	return br, gw, func() { signal.Stop(hup) }, nil
}
