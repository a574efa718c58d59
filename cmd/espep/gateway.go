package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/fdclock"
	"github.com/espep/espep/internal/filewatch"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/linkem"
	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/procs"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/internal/tunlink"
	"github.com/espep/espep/ipsec"
)

const gatewayUsage = `usage: espep gateway --wire IFACE --radio IFACE --sa FILE [--sa FILE…] --state-dir DIR [--mode split|snoop] [--metrics ADDR] [--config FILE]
       espep gateway --wire IFACE --radio IFACE --secserver HOST:PORT --secserver-cert FILE --secserver-key FILE --secserver-ca FILE …
       espep gateway --wire IFACE --radio IFACE --ike-keys FILE …

The IPsec-aware PEP between a wired and a radio side. It opens the ESP/AH
of the SAs in the SA files (native or Wireshark esp_sa lines, mode 0600;
re-read when they change and on SIGHUP; a bad entry is reported and
skipped), runs the TCP engine on what is inside and seals it again;
everything else is relayed as it came. --state-dir (mode 0700) keeps the
IV blocks and sequence numbers the gateway reserves, so that no restart
or crash ever reuses one; without it the gateway never seals on AES-GCM,
ChaCha20-Poly1305 or AES-CTR SAs. Counters print on exit; --metrics
serves Prometheus /metrics and /healthz. --config names a file with every
other setting (see README); flags override it.

--secserver (beside or instead of --sa): on the first IKE packet, or the
first ESP/AH packet on an SPI it lacks, between two addresses the gateway
asks the security server (gRPC, mutual TLS with a gateway certificate from
espep pki) for their SAs; what came before is relayed untouched. IKE SA
keys that agents delegated (espep agent --ike-charon-log) come with them,
and the gateway follows IKE with them as with --ike-keys.

--ike-keys FILE (beside or instead of --sa; espep-ike 1, mode 0600,
re-read when it changes): the keys of IKE SAs (SK_d, SK_a*, SK_e*) that a
party holding them delegates. The gateway reads the IKE messages it
relays, opens them with those keys and derives every CHILD_SA they create
— IKE_AUTH's and each CREATE_CHILD_SA rekey — the moment the exchange's
response passes. A rekey with PFS cannot be followed: the security server
is asked (--secserver) and it is counted; an IKE SA rekey needs its new
keys in the file.

--handoff-listen and --handoff-peer NAME@HOST:PORT (mutual TLS with the
same certificate): a mobile that moves here from a neighbour brings its
flows — the first of its packets on a flow this gateway does not know are
held while the neighbour is asked, then the flow, its SA counters and its
replay windows continue here; the neighbour hands over its side when asked.
The gateway offers its SAs to its neighbours (and, once a mobile's traffic
reaches it, those a neighbour offered it), so that the next gateway has
them before the mobile arrives. --pms HOST:PORT with --station
AREA@LAT,LON: the neighbours are also those the proxy management service
(espep secserver --pms) names from the base stations' locations, as they
change; with --discover GROUP:PORT, also those that answer a TTL-limited
multicast probe (--discover-ttl, default 2), nearest first. Gateways that
share SAs and no state directory need distinct IV
partitions (iv-partition in --config, or the one the security server
gives).

Two interfaces: AF_PACKET, forwarding every frame between them as the only
forwarder (keep kernel IP forwarding off between the two; the peers need
offloads off: ethtool -K DEV tx off tso off gso off gro off).
tun:NAME for both: two TUN devices (created and brought up), the kernel
forwarding and policy routing steering each side's traffic into its
device — installed by the gateway with --routes --wire-iface IF
--radio-iface IF, and removed on exit (ip rule add iif IF lookup T; ip
route add default dev NAME table T).

`

func runGateway(args []string, stdout, stderr io.Writer) error {
	fc, dur, err := gatewayConfig(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	fc.Gateway.Log = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dur)
		defer cancel()
	}
	var ss *secserverConn
	if fc.SecServer.Addr != "" {
		if ss, err = dialWithPartition(ctx, fc.SecServer, &fc.IVPartition, log); err != nil {
			return err
		}
		defer ss.c.Close()
	}
	state, err := openState(fc.StateDir, fc.IVPartition, log)
	if err != nil {
		return err
	}
	defer closeState(state, log)
	fc.Gateway.State = state
	j, err := openJournal(state, fc.Gateway.Engine.Mode, log)
	if err != nil {
		return err
	}
	defer closeJournal(j, log)
	useJournal(&fc.Gateway.Engine, j, !fc.NoJournal, log)
	clk := engineClock(log)
	defer clk.Close()
	fc.Gateway.Engine.Clock = clk
	gw, gio, err := openGatewayIO(fc, log)
	if err != nil {
		return err
	}
	// Stopping, in order: the packet I/O (devices, rules, sockets), then
	// the flows handed to the next start, then the gateway (its engine's
	// timers, the numbers recorded), then the journal, the clock and the
	// state directory (deferred above).
	defer gw.Close()
	defer keepFlows(gw, state, log)
	defer gio.close()
	if len(fc.SAFiles) > 0 {
		defer watchSAs(ctx, gw, fc.SAFiles, log)()
	}
	var ike *gateway.IKESAs
	if ss != nil || len(fc.IKEKeyFiles) > 0 {
		ike = followIKE(ctx, gw, ss, fc.IKEKeyFiles, log)
	}
	var src *gateway.ServerSAs
	if ss != nil {
		src = serveSAs(ctx, gw, ss)
	}
	if h := handoffOf(fc); h.enabled() {
		if err := h.start(ctx, gw, ike, log); err != nil {
			return err
		}
	}
	if fc.Metrics != "" {
		if err := serveMetrics(ctx, fc.Metrics, gw, src, ike, log); err != nil {
			return err
		}
	}
	if os.Getenv("GOMAXPROCS") == "" { // an operator's setting stands
		go procs.Run(ctx, log)
	}
	resumeFlows(gw, state, log)
	resumeJournal(gw, j, log)
	log.Info("gateway running", "wire", fc.Wire, "radio", fc.Radio, "mode", fc.Gateway.Engine.Mode, "cc", ccName(fc.Gateway.Engine), "sa", fc.SAFiles, "state-dir", fc.StateDir)
	err = gio.run(ctx)
	printGatewayExit(stdout, gw, gio, src, ike)
	return err
}

// ccName is the congestion controller split's sender runs with cfg.
func ccName(cfg engine.Config) string {
	if cfg.CC == "" {
		return engine.CCBBR
	}
	return cfg.CC
}

// printGatewayExit writes the exit summary: the gateway's counters, its
// packet I/O's, and those of the SA and IKE sources it ran with.
func printGatewayExit(stdout io.Writer, gw *gateway.Gateway, gio gatewayIO, src *gateway.ServerSAs, ike *gateway.IKESAs) {
	printGatewayStats(stdout, gw, nil)
	fmt.Fprintf(stdout, "io: %s\n", gio.summary())
	if src != nil {
		fmt.Fprintf(stdout, "secserver: %s\n", src.Stats().Summary())
	}
	if ike != nil {
		fmt.Fprintf(stdout, "ike: %s\n", ike.Stats().Summary())
	}
}

// engineClock is the clock for the engine's timers, which are moved at
// every ACK: one that does not wake the process for the ones it moved
// (package fdclock), or, where it cannot be had, one that does.
func engineClock(log *slog.Logger) *fdclock.Clock {
	clk, err := fdclock.New()
	if err != nil {
		log.Info("engine timers on the runtime's timers", "why", err)
	}
	return clk
}

// gatewayConfig reads the command line and the --config file it names;
// flags given override the file.
func gatewayConfig(args []string, stderr io.Writer) (*gateway.FileConfig, time.Duration, error) {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (espep-gateway 1)")
	wire := fs.String("wire", "", "the wired interface, or tun:NAME")
	radio := fs.String("radio", "", "the radio interface, or tun:NAME")
	var saPaths stringList
	fs.Var(&saPaths, "sa", "SA file (native or esp_sa), watched; repeatable")
	var ikePaths stringList
	fs.Var(&ikePaths, "ike-keys", "IKE SA key file (espep-ike 1), watched: follow IKE and derive the CHILD_SAs (scheme 2); repeatable")
	stateDir := fs.String("state-dir", "", "directory for the IV blocks and sequence numbers the gateway reserves")
	journal := fs.Bool("journal", true, "split with --state-dir: journal the bytes acknowledged early there, so that a kill or crash loses none (false: faster; a kill stalls the flows holding bytes)")
	ef := engine.AddFlags(fs) // --mode, --cc, … spelled as in the config file
	plain := fs.Bool("plain", false, "accelerate TCP that is not IPsec-protected too")
	maddr := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9465)")
	routes := fs.Bool("routes", false, "TUN mode: install the policy rules that route --wire-iface and --radio-iface traffic into the devices, and remove them on exit")
	wireIf := fs.String("wire-iface", "", "TUN mode with --routes: the interface the wired side's traffic arrives on")
	radioIf := fs.String("radio-iface", "", "TUN mode with --routes: the interface the radio side's traffic arrives on")
	dur := fs.Duration("duration", 0, "stop after this long (0: run until a signal)")
	ssAddr := fs.String("secserver", "", "fetch SAs from the security server at host:port")
	ssCert := fs.String("secserver-cert", "", "with --secserver: the gateway's certificate (espep pki issue --role gateway)")
	ssKey := fs.String("secserver-key", "", "with --secserver: its key")
	ssCA := fs.String("secserver-ca", "", "with --secserver: the CA's certificate")
	ssCRL := fs.String("secserver-crl", "", "with --secserver: the CA's revocation list (re-read while running)")
	ssRead := fs.Bool("secserver-read", false, "with --secserver: ask for read grants only")
	var h handoffSetup
	addHandoffFlags(fs, &h)
	fs.Usage = func() { fmt.Fprint(stderr, gatewayUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return nil, 0, usageError{err.Error()}
	}
	fc := &gateway.FileConfig{}
	fc.Gateway.Engine.Mode = engine.ModeSplit
	if *cfgPath != "" {
		var err error
		if fc, err = gateway.LoadFileConfig(*cfgPath); err != nil {
			return nil, 0, err
		}
	}
	set := map[string]func(){
		"wire": func() { fc.Wire = *wire }, "radio": func() { fc.Radio = *radio }, "sa": func() { fc.SAFiles = saPaths },
		"ike-keys":  func() { fc.IKEKeyFiles = ikePaths },
		"state-dir": func() { fc.StateDir = *stateDir }, "journal": func() { fc.NoJournal = !*journal }, "metrics": func() { fc.Metrics = *maddr }, "plain": func() { fc.Gateway.Plain = *plain },
		"routes": func() { fc.Routes = *routes }, "wire-iface": func() { fc.WireIface = *wireIf }, "radio-iface": func() { fc.RadioIface = *radioIf },
		"secserver": func() { fc.SecServer.Addr = *ssAddr }, "secserver-cert": func() { fc.SecServer.Cert = *ssCert },
		"secserver-key": func() { fc.SecServer.Key = *ssKey }, "secserver-ca": func() { fc.SecServer.CA = *ssCA },
		"secserver-crl": func() { fc.SecServer.CRL = *ssCRL }, "secserver-read": func() { fc.SecServer.Read = *ssRead },
		"handoff-listen": func() { fc.HandoffListen = h.listen }, "handoff-peer": func() { fc.HandoffPeers = h.peers },
		"pms": func() { fc.PMS = h.pms }, "station": func() { fc.Stations = h.stations },
		"discover": func() { fc.Discover = h.discover }, "discover-ttl": func() { fc.DiscoverTTL = h.discoverTTL },
		"discover-iface": func() { fc.DiscoverIface = h.discoverIface },
	}
	fs.Visit(func(f *flag.Flag) {
		if s := set[f.Name]; s != nil {
			s()
		}
	})
	if err := ef.Apply(&fc.Gateway.Engine); err != nil {
		return nil, 0, usageError{"gateway: " + err.Error()}
	}
	if fc.Wire == "" || fc.Radio == "" || len(fc.SAFiles) == 0 && len(fc.IKEKeyFiles) == 0 && fc.SecServer.Addr == "" || fs.NArg() != 0 {
		fs.Usage()
		return nil, 0, usageError{"gateway: need --wire, --radio and --sa, --ike-keys or --secserver (or a --config that gives them)"}
	}
	if ss := fc.SecServer; ss.Addr != "" && (ss.Cert == "" || ss.Key == "" || ss.CA == "") {
		return nil, 0, usageError{"gateway: --secserver needs --secserver-cert, --secserver-key and --secserver-ca"}
	}
	if err := handoffOf(fc).check(); err != nil {
		return nil, 0, usageError{"gateway: " + err.Error()}
	}
	tunW, tunR := strings.HasPrefix(fc.Wire, "tun:"), strings.HasPrefix(fc.Radio, "tun:")
	switch {
	case tunW != tunR:
		return nil, 0, usageError{"gateway: --wire and --radio are both interfaces or both tun:NAME"}
	case fc.Routes && (!tunW || fc.WireIface == "" || fc.RadioIface == ""):
		return nil, 0, usageError{"gateway: --routes is for TUN mode and needs --wire-iface and --radio-iface"}
	}
	return fc, *dur, nil
}

// gatewayIO is the gateway's packet I/O: run moves packets until its
// context ends, close undoes what opening did, summary is its counters on
// one line (for the exit summary).
type gatewayIO struct {
	run     func(context.Context) error
	close   func()
	summary func() string
}

// openGatewayIO opens the gateway's packet I/O — two TUN devices (up,
// with the policy rules if fc.Routes) or an AF_PACKET bridge — with the
// gateway between.
func openGatewayIO(fc *gateway.FileConfig, log *slog.Logger) (gw *gateway.Gateway, gio gatewayIO, err error) {
	if !strings.HasPrefix(fc.Wire, "tun:") {
		br, g, err := openBridge(fc.Wire, fc.Radio, netem.Config{}, netem.Config{}, nil, fc.Gateway)
		if err != nil {
			return nil, gio, err
		}
		return g, gatewayIO{br.Run, func() {}, func() string {
			st := br.Stats()
			return fmt.Sprintf("wire read %d wrote %d, %d errors; radio read %d wrote %d, %d errors", st.A.RxFrames, st.A.TxFrames, st.A.TxErrors, st.B.RxFrames, st.B.TxFrames, st.B.TxErrors)
		}}, nil
	}
	tl, err := tunlink.Open(strings.TrimPrefix(fc.Wire, "tun:"), strings.TrimPrefix(fc.Radio, "tun:"),
		func(out func(engine.Side, []byte)) (tunlink.Processor, error) {
			g, err := gateway.New(fc.Gateway, nil, out)
			gw = g
			return g, err
		}, log)
	if err != nil {
		return nil, gio, err
	}
	gw.SetOutKnown(tl.SendKnown) // before Run: no packet has moved yet
	gw.SetOutPartial(tl.SendPartial)
	if c, ok := fc.Gateway.Engine.Clock.(interface{ SetAround(func(func())) }); ok {
		c.SetAround(tl.Batch) // a timer's burst leaves in one write, as a read's does
	}
	undo := func() {}
	fail := func(err error) (*gateway.Gateway, gatewayIO, error) {
		undo()
		tl.Close()
		gw.Close()
		return nil, gio, err
	}
	if err := tl.Up(); err != nil {
		return fail(err)
	}
	if fc.Routes {
		if undo, err = tl.Install(tunlink.Routes{Wire: fc.WireIface, Radio: fc.RadioIface, Table: fc.RouteTable}); err != nil {
			undo = func() {}
			return fail(err)
		}
		log.Info("gateway: policy routing installed", "wire-iface", fc.WireIface, "radio-iface", fc.RadioIface)
	}
	return gw, gatewayIO{tl.Run, func() { undo(); tl.Close() }, func() string { return tl.Stats().Summary() }}, nil
}

// openBridge bridges interfaces a (wire) and b (radio) through the IPsec
// gateway, over the emulated links ab, ba and wire, all transparent when
// zero.
func openBridge(a, b string, ab, ba netem.Config, wire *netem.Config, cfg gateway.Config) (br *linkem.Bridge, gw *gateway.Gateway, err error) {
	br, err = linkem.OpenWith(a, b, ab, ba, wire, func(out func(engine.Side, []byte)) (linkem.Processor, error) {
		g, err := gateway.New(cfg, nil, out)
		gw = g
		return g, err
	}, cfg.Log)
	return br, gw, err
}

// A gateway re-reads its SA and IKE key files when inotify says they
// changed, and every filePoll in any case; where it cannot be told, every
// fileFallback.
const (
	filePoll     = 10 * time.Second
	fileFallback = time.Second
)

// watchSAs loads the SAs of the files into the gateway and re-reads them
// when they change and on SIGHUP until ctx ends; stop ends the SIGHUP
// subscription.
func watchSAs(ctx context.Context, gw *gateway.Gateway, paths []string, log *slog.Logger) (stop func()) {
	sf := gateway.NewSAFiles(gw, paths...)
	if err := sf.Load(); err != nil {
		log.Warn("gateway: SA files: not every SA loaded; relaying what has none", "err", err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go sf.Watch(ctx, filewatch.Watch(ctx, paths, filePoll, fileFallback, log), hup)
	return func() { signal.Stop(hup) }
}

// followIKE has the gateway follow IKE (scheme 2) until ctx ends, with
// the IKE SA keys the files delegate and those the security server (if
// any) releases with a pair's SAs. Called before the server is first
// asked.
func followIKE(ctx context.Context, gw *gateway.Gateway, ss *secserverConn, paths []string, log *slog.Logger) *gateway.IKESAs {
	ike := gateway.NewIKESAs(gw, ikefollow.New(ikefollow.Config{Log: log}))
	go ike.Run(ctx)
	if len(paths) > 0 {
		go ike.WatchKeyFiles(ctx, filewatch.Watch(ctx, paths, filePoll, fileFallback, log), paths...)
	}
	if ss == nil {
		log.Warn("gateway: following IKE without a security server: a CHILD_SA rekeyed with PFS cannot be derived, and split flows on it stall (the bytes acknowledged early can no longer be sealed); give --secserver where peers use PFS")
	} else {
		ss.c.OnIKE = func(k ikev2.Keys) {
			if err := ike.AddKeys(k); err != nil {
				log.Warn("gateway: IKE SA keys from the security server refused", "err", err)
			}
			k.Wipe()
		}
	}
	return ike
}

// partitionOf is the IV partition of gateway identifier id: gateways that
// share no state directory are kept apart by the identifier the server
// gave each instance, never given again (statedir: blocks ≡ K mod N).
func partitionOf(id uint64, log *slog.Logger) (statedir.Partition, error) {
	if id >= 1<<16 {
		return statedir.Partition{}, fmt.Errorf("gateway: the security server's identifier %d is past 65535, the widest IV partition: set iv-partition by hand", id)
	}
	p := statedir.Partition{K: uint32(id), N: 1 << 16}
	log.Info("gateway: IV partition from the security server", "partition", p.String())
	return p, nil
}

// dialWithPartition dials the security server; when *part is not set it
// registers first (waiting for the server) and takes the IV partition
// from the identifier it is given — otherwise the lease registers later.
func dialWithPartition(ctx context.Context, cfg gateway.SecServerConfig, part *statedir.Partition, log *slog.Logger) (*secserverConn, error) {
	ss, err := dialSecServer(ctx, cfg, part.N == 0, log)
	if err != nil {
		return nil, err
	}
	if part.N == 0 {
		if *part, err = partitionOf(ss.id, log); err != nil {
			ss.c.Close()
			return nil, err
		}
	}
	return ss, nil
}

// serveMetrics serves the gateway's counters (and those of its security
// server and IKE sources, when it has them) in Prometheus's text format
// on addr until ctx ends.
func serveMetrics(ctx context.Context, addr string, gw *gateway.Gateway, src *gateway.ServerSAs, ike *gateway.IKESAs, log *slog.Logger) error {
	counters := gw.Counters("espep_gateway_")
	if src != nil {
		counters = append(counters, src.Counters("espep_gateway_")...)
	}
	if ike != nil {
		counters = append(counters, ike.Counters("espep_gateway_")...)
	}
	reg, err := metrics.Registry(counters)
	if err != nil {
		return err
	}
	go func() {
		if err := metrics.Serve(ctx, addr, reg, log); err != nil {
			log.Error("gateway: metrics", "err", err)
		}
	}()
	return nil
}

// serveSAs makes the security server a source of the gateway's SAs until
// ctx ends.
func serveSAs(ctx context.Context, gw *gateway.Gateway, ss *secserverConn) *gateway.ServerSAs {
	src := gateway.NewServerSAs(gw, ss.c, gateway.ServerOptions{})
	go src.Run(ctx)                // asks when packets show a pair it lacks
	go src.Watch(ctx, ss.c)        // takes what the server pushes for its areas
	go src.Lease(ctx, ss.c, ss.id) // a lease that, lapsing, has the agents rekey what it numbered
	return src
}

// secserverConn is the gateway's connection to the security server and
// the identifier it registered under.
type secserverConn struct {
	c  *secserver.Client
	id uint64
}

// dialSecServer connects to the security server with the TLS files of
// ss (re-reading its CRL while ctx lasts) and, with register, registers
// this gateway instance, trying for up to 30 s. The agent dials through it
// too (register false).
func dialSecServer(ctx context.Context, ss gateway.SecServerConfig, register bool, log *slog.Logger) (*secserverConn, error) {
	v, err := pki.LoadVerifier(ss.CA, ss.CRL)
	if err != nil {
		return nil, fmt.Errorf("secserver %s: %w", ss.Addr, err)
	}
	cert, err := pki.LoadTLS(ss.Cert, ss.Key)
	if err != nil {
		return nil, fmt.Errorf("secserver %s: %w", ss.Addr, err)
	}
	class := ipsec.ClassWrite
	if ss.Read {
		class = ipsec.ClassRead
	}
	c, err := secserver.Dial(ss.Addr, v.ClientTLS(cert, pki.RoleServer), class)
	if err != nil {
		return nil, err
	}
	if ss.CRL != "" {
		go v.WatchCRL(ctx, ss.CRL, 10*time.Second, log)
	}
	if !register {
		return &secserverConn{c: c}, nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		id, err := c.Register(rctx)
		cancel()
		if err == nil {
			log.Info("gateway: registered with the security server", "addr", ss.Addr, "gateway_id", id, "class", class)
			return &secserverConn{c: c, id: id}, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			c.Close()
			return nil, fmt.Errorf("gateway: secserver %s: %w", ss.Addr, err)
		}
		log.Warn("gateway: security server not reached yet", "err", err)
		time.Sleep(time.Second)
	}
}

// openState opens the state directory, or says what its absence costs.
func openState(dir string, part statedir.Partition, log *slog.Logger) (*statedir.Dir, error) {
	if dir == "" {
		return nil, nil
	}
	d, err := statedir.Open(dir, part, log)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return d, nil
}

// closeState records the last numbers used and closes the directory; the
// gateway must be closed first.
func closeState(d *statedir.Dir, log *slog.Logger) {
	if d == nil {
		return
	}
	if err := d.Close(); err != nil {
		log.Error("gateway: state dir: the last sequence numbers were not recorded", "err", err)
	}
}
