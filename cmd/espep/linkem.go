package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/linkem"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/internal/statedir"
)

const linkemUsage = `usage: espep linkem --a IFACE --b IFACE [impairments] [--ab.X … --ba.X …]
                    [--mode split|snoop [engine settings] [--wire.X …]]

Forwards every frame between two interfaces through an emulated link.
Each impairment applies to both directions; --ab.NAME (frames from a to b)
and --ba.NAME override it for one direction. With --mode the TCP engine
sits at the a end of the link (a is its wire side, the link its radio),
with the settings the gateway takes (--cc, --dupacks, …: the same names
as in a gateway config file);
--wire.NAME adds an emulated wired leg between a and the engine.
Counters (and the split flows that hold bytes) are printed on exit and
on SIGUSR1. The interfaces' peers need offloads off
(ethtool -K DEV tx off tso off gso off gro off).

impairments (see README for the syntax):
`

// impairmentFlags registers the impairment flags under a prefix.
type impairmentFlags struct {
	rate, delay, jitter, loss, queue, reorder, duplicate, corrupt, mtu *string
	geBurst, geLoss, ge                                                *string
	outages                                                            stringList
	seed                                                               *string
}

func addImpairments(fs *flag.FlagSet, prefix, what string) *impairmentFlags {
	s := func(name, usage string) *string { return fs.String(prefix+name, "", usage+what) }
	f := &impairmentFlags{
		rate:      s("rate", "link rate, e.g. 20mbit"),
		delay:     s("delay", "one-way delay, e.g. 10ms"),
		jitter:    s("jitter", "uniform jitter ±, e.g. 2ms (no reordering)"),
		loss:      s("loss", "random loss, e.g. 2%"),
		queue:     s("queue", "drop-tail queue, e.g. 100p or 64kb"),
		reorder:   s("reorder", "share of packets that skip the delay, e.g. 1%"),
		duplicate: s("duplicate", "duplication, e.g. 0.1%"),
		corrupt:   s("corrupt", "one flipped bit, e.g. 0.1%"),
		mtu:       s("mtu", "drop frames longer than this many bytes"),
		geBurst:   s("ge-burst", "Gilbert-Elliott mean burst length in packets (with --ge-loss)"),
		geLoss:    s("ge-loss", "Gilbert-Elliott mean loss, e.g. 2%"),
		ge:        s("ge", "Gilbert-Elliott P,R,LOSSGOOD,LOSSBAD as probabilities"),
		seed:      s("seed", "random seed"),
	}
	fs.Var(&f.outages, prefix+"outage", "link down FROM-TO after start, e.g. 10s-12s (repeatable)"+what)
	return f
}

// apply writes the flags that were given into c.
func (f *impairmentFlags) apply(c *netem.Config) error {
	var err error
	set := func(v *string, fn func(string) error) {
		if err == nil && *v != "" {
			err = fn(*v)
		}
	}
	prob := func(dst *float64) func(string) error {
		return func(s string) (e error) { *dst, e = netem.ParseProb(s); return }
	}
	dur := func(dst *time.Duration) func(string) error {
		return func(s string) (e error) { *dst, e = time.ParseDuration(s); return }
	}
	set(f.rate, func(s string) (e error) { c.Rate, e = netem.ParseRate(s); return })
	set(f.delay, dur(&c.Delay))
	set(f.jitter, dur(&c.Jitter))
	set(f.loss, prob(&c.Loss))
	set(f.queue, func(s string) error { return netem.ParseQueue(s, c) })
	set(f.reorder, prob(&c.Reorder))
	set(f.duplicate, prob(&c.Duplicate))
	set(f.corrupt, prob(&c.Corrupt))
	set(f.mtu, func(s string) (e error) { c.MTU, e = strconv.Atoi(s); return })
	set(f.seed, func(s string) (e error) { c.Seed, e = strconv.ParseUint(s, 0, 64); return })
	set(f.ge, func(s string) error {
		var g netem.GilbertElliott
		if _, e := fmt.Sscanf(s, "%g,%g,%g,%g", &g.P, &g.R, &g.LossGood, &g.LossBad); e != nil {
			return fmt.Errorf("ge %q: want P,R,LOSSGOOD,LOSSBAD", s)
		}
		c.GE = &g
		return nil
	})
	if err == nil && (*f.geBurst != "" || *f.geLoss != "") {
		if *f.geBurst == "" || *f.geLoss == "" {
			return fmt.Errorf("--ge-burst and --ge-loss go together")
		}
		burst, e1 := strconv.ParseFloat(*f.geBurst, 64)
		loss, e2 := netem.ParseProb(*f.geLoss)
		if e1 != nil || e2 != nil {
			return fmt.Errorf("ge-burst %q / ge-loss %q: want a number of packets and a probability", *f.geBurst, *f.geLoss)
		}
		g, e := netem.GEFromMean(loss, burst)
		if e != nil {
			return e
		}
		c.GE = &g
	}
	for _, o := range f.outages {
		if err != nil {
			break
		}
		var out netem.Outage
		if out, err = netem.ParseOutage(o); err == nil {
			c.Outages = append(c.Outages, out)
		}
	}
	if err != nil {
		return err
	}
	return c.Validate()
}

// linkemSetup is what espep linkem's command line asks for.
type linkemSetup struct {
	a, b           string
	ab, ba         netem.Config
	wire           *netem.Config  // the wired leg, or nil
	engine         *engine.Config // nil: none
	saPaths        []string
	ikePaths       []string
	stateDir       string
	secserver      gateway.SecServerConfig
	partition      statedir.Partition // zero: from the security server, or none
	handoff        handoffSetup
	dur            time.Duration
	pcapAB, pcapBA string
}

func runLinkem(args []string, stdout, stderr io.Writer) error {
	c, err := linkemArgs(args, stderr)
	if err != nil {
		return err
	}
	closeCaptures, err := c.openCaptures()
	defer closeCaptures()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var gw *gateway.Gateway
	var br *linkem.Bridge
	var ike *gateway.IKESAs
	if len(c.saPaths) > 0 || len(c.ikePaths) > 0 || c.secserver.Addr != "" {
		var closeGateway func()
		br, gw, ike, closeGateway, err = c.openIPsecGateway(ctx, log)
		defer closeGateway()
		if err != nil {
			return err
		}
	} else if br, err = linkem.OpenGateway(c.a, c.b, c.ab, c.ba, c.engine, c.wire, log); err != nil {
		return err
	}
	if c.dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.dur)
		defer cancel()
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() { // ends with ctx
		for {
			select {
			case <-usr1:
				printLinkemStats(stdout, c.a, c.b, br.Stats())
				printGatewayStats(stdout, gw, br.Engine())
			case <-ctx.Done():
				return
			}
		}
	}()
	wdesc, engDesc := "", "none"
	if c.wire != nil {
		wdesc = describe(*c.wire)
	}
	if c.engine != nil {
		engDesc = c.engine.Mode.String()
	}
	log.Info("linkem running", "a", c.a, "b", c.b, "ab", describe(c.ab), "ba", describe(c.ba), "engine", engDesc, "wire", wdesc)
	err = br.Run(ctx)
	printLinkemStats(stdout, c.a, c.b, br.Stats())
	printGatewayStats(stdout, gw, br.Engine())
	if ike != nil {
		fmt.Fprintf(stdout, "ike: %s\n", ike.Stats().Summary())
	}
	return err
}

// openCaptures starts the pcap captures the flags ask for; closeAll
// flushes and closes them (also after an error).
func (c *linkemSetup) openCaptures() (closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	for _, x := range []struct {
		path string
		c    *netem.Config
	}{{c.pcapAB, &c.ab}, {c.pcapBA, &c.ba}} {
		if x.path == "" {
			continue
		}
		f, err := os.Create(x.path)
		if err != nil {
			return closeAll, err
		}
		closers = append(closers, func() { f.Close() })
		capture, flush, err := netem.PcapCapture(f, pcapio.LinkEthernet)
		if err != nil {
			return closeAll, err
		}
		closers = append(closers, func() { flush() })
		x.c.Capture = capture
	}
	return closeAll, nil
}

// openIPsecGateway opens the bridge with an IPsec gateway around the
// engine and starts its SA sources (files, IKE, the security server) and
// handoffs; closeAll stops them in reverse order (also after an error).
func (c *linkemSetup) openIPsecGateway(ctx context.Context, log *slog.Logger) (br *linkem.Bridge, gw *gateway.Gateway, ike *gateway.IKESAs, closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if c.engine == nil {
		c.engine = &engine.Config{Mode: engine.ModeSplit}
	}
	var ss *secserverConn
	part := c.partition
	if c.secserver.Addr != "" {
		if ss, err = dialWithPartition(ctx, c.secserver, &part, log); err != nil {
			return nil, nil, nil, closeAll, err
		}
		closers = append(closers, func() { ss.c.Close() })
	}
	state, err := openState(c.stateDir, part, log)
	if err != nil {
		return nil, nil, nil, closeAll, err
	}
	closers = append(closers, func() { closeState(state, log) })
	j, err := openJournal(state, c.engine.Mode, log)
	if err != nil {
		return nil, nil, nil, closeAll, err
	}
	closers = append(closers, func() { closeJournal(j, log) })
	useJournal(c.engine, j, true, log)
	if br, gw, err = openBridge(c.a, c.b, c.ab, c.ba, c.wire, gateway.Config{Engine: *c.engine, Log: log, State: state}); err != nil {
		return nil, nil, nil, closeAll, err
	}
	closers = append(closers, func() { gw.Close() })
	closers = append(closers, func() { keepFlows(gw, state, log) }) // the bridge has stopped: Run returned
	if len(c.saPaths) > 0 {
		closers = append(closers, watchSAs(ctx, gw, c.saPaths, log))
	}
	if ss != nil || len(c.ikePaths) > 0 {
		ike = followIKE(ctx, gw, ss, c.ikePaths, log)
	}
	if ss != nil {
		serveSAs(ctx, gw, ss)
	}
	if c.handoff.enabled() {
		if err := c.handoff.start(ctx, gw, ike, log); err != nil {
			return nil, nil, nil, closeAll, err
		}
	}
	resumeFlows(gw, state, log)
	resumeJournal(gw, j, log)
	return br, gw, ike, closeAll, nil
}

// linkemArgs reads espep linkem's command line.
func linkemArgs(args []string, stderr io.Writer) (*linkemSetup, error) {
	fs := flag.NewFlagSet("linkem", flag.ContinueOnError)
	fs.SetOutput(stderr)
	a := fs.String("a", "", "first interface")
	b := fs.String("b", "", "second interface")
	dur := fs.Duration("duration", 0, "stop after this long (0: run until a signal)")
	pcapAB := fs.String("pcap-ab", "", "write the frames delivered a→b to this pcap file")
	pcapBA := fs.String("pcap-ba", "", "write the frames delivered b→a to this pcap file")
	// The TCP engine at the a end of the link (a: wire side, b: radio
	// side), with the gateway's settings and spelling: --mode split|snoop
	// turns it on; none without.
	ef := engine.AddFlags(fs)
	both := addImpairments(fs, "", "")
	ab := addImpairments(fs, "ab.", " (a→b only)")
	ba := addImpairments(fs, "ba.", " (b→a only)")
	wire := addImpairments(fs, "wire.", " (a wired leg between a and the engine, both ways)")
	var saPaths stringList
	fs.Var(&saPaths, "sa", "IPsec gateway: open and re-seal the ESP/AH of the SAs in this file (native or esp_sa; re-read when it changes and on SIGHUP) around the engine; repeatable")
	var ikePaths stringList
	fs.Var(&ikePaths, "ike-keys", "IPsec gateway: follow IKE with the IKE SA keys in this file (espep-ike 1; re-read when it changes) and derive the CHILD_SAs, as espep gateway does; repeatable")
	stateDir := fs.String("state-dir", "", "IPsec gateway: directory for the IV blocks and sequence numbers it reserves (without it, AES-GCM, ChaCha20 and AES-CTR SAs are relayed)")
	var ss gateway.SecServerConfig
	fs.StringVar(&ss.Addr, "secserver", "", "IPsec gateway: get SAs from the security server at host:port (beside or instead of --sa), as espep gateway does")
	fs.StringVar(&ss.Cert, "secserver-cert", "", "with --secserver: the gateway's certificate")
	fs.StringVar(&ss.Key, "secserver-key", "", "with --secserver: its key")
	fs.StringVar(&ss.CA, "secserver-ca", "", "with --secserver: the CA's certificate")
	fs.StringVar(&ss.CRL, "secserver-crl", "", "with --secserver: the CA's revocation list")
	part := fs.String("iv-partition", "", "IPsec gateway: K/N, the IV partition of this gateway's state directory (gateways that share SAs and no state directory need distinct ones; with --secserver it comes from the server)")
	var h handoffSetup
	addHandoffFlags(fs, &h) // IPsec gateway: handoffs to and from neighbours
	fs.Usage = func() { fmt.Fprint(stderr, linkemUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err.Error()}
	}
	if *a == "" || *b == "" || fs.NArg() != 0 {
		fs.Usage()
		return nil, usageError{"linkem: need --a and --b"}
	}
	if ss.Addr != "" && (ss.Cert == "" || ss.Key == "" || ss.CA == "") {
		return nil, usageError{"linkem: --secserver needs --secserver-cert, --secserver-key and --secserver-ca"}
	}
	c := &linkemSetup{a: *a, b: *b, saPaths: saPaths, ikePaths: ikePaths, stateDir: *stateDir, secserver: ss, dur: *dur, pcapAB: *pcapAB, pcapBA: *pcapBA,
		handoff: h}
	c.handoff.tls = ss
	if *part != "" {
		var err error
		if c.partition, err = statedir.ParsePartition(*part); err != nil {
			return nil, usageError{"linkem: " + err.Error()}
		}
	}
	if err := c.handoff.check(); err != nil {
		return nil, usageError{"linkem: " + err.Error()}
	}
	if err := c.impair(fs, both, ab, ba, wire); err != nil {
		return nil, usageError{"linkem: " + err.Error()}
	}
	if ef.Given() {
		c.engine = &engine.Config{}
		if err := ef.Apply(c.engine); err != nil {
			return nil, usageError{"linkem: " + err.Error()}
		}
	}
	return c, nil
}

// impair sets the link's impairments from the flags: those for both
// directions first, then each direction's own, and the wired leg's if any
// of its flags was given.
func (c *linkemSetup) impair(fs *flag.FlagSet, both, ab, ba, wire *impairmentFlags) error {
	for _, step := range []struct {
		f *impairmentFlags
		c []*netem.Config
	}{{both, []*netem.Config{&c.ab, &c.ba}}, {ab, []*netem.Config{&c.ab}}, {ba, []*netem.Config{&c.ba}}} {
		for _, nc := range step.c {
			if err := step.f.apply(nc); err != nil {
				return err
			}
		}
	}
	if c.ba.Seed == c.ab.Seed {
		c.ba.Seed = c.ab.Seed + 1 // independent draws each way
	}
	fs.Visit(func(f *flag.Flag) {
		if strings.HasPrefix(f.Name, "wire.") {
			c.wire = &netem.Config{}
		}
	})
	if c.wire != nil {
		return wire.apply(c.wire)
	}
	return nil
}

func describe(c netem.Config) string {
	s := ""
	if c.Rate > 0 {
		s += " rate=" + netem.FormatRate(c.Rate)
	}
	if c.Delay > 0 {
		s += " delay=" + c.Delay.String()
	}
	if c.Loss > 0 {
		s += fmt.Sprintf(" loss=%g%%", c.Loss*100)
	}
	if c.GE != nil {
		s += fmt.Sprintf(" ge-loss=%.3g%%", c.GE.MeanLoss()*100)
	}
	if s == "" {
		return "none"
	}
	return s[1:]
}

// printLinkemStats writes the counters as a table, one row per direction.
func printLinkemStats(w io.Writer, a, b string, st linkem.Stats) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "direction\toffered\tdelivered\tdrop-queue\tdrop-loss\tdrop-outage\tdrop-mtu\tdup\tcorrupt\treorder\tqueue-max-bytes\ttx-errors\toversize\tchecksummed\tsegmented\toffload-errors\t")
	row := func(name string, s netem.Stats, out linkem.PortStats, in linkem.PortStats) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", name, s.Offered, s.Delivered,
			s.DropQueue, s.DropLoss, s.DropOutage, s.DropMTU, s.Duplicated, s.Corrupted, s.Reordered, s.QueueHighBytes, out.TxErrors, in.Oversize,
			in.Checksummed, in.Segmented, in.OffloadErrors)
	}
	row(a+"→"+b, st.AB, st.B, st.A)
	row(b+"→"+a, st.BA, st.A, st.B)
	tw.Flush()
}

// printGatewayStats prints the gateway's and the engine's counter lines
// (either may be nil).
func printGatewayStats(stdout io.Writer, gw *gateway.Gateway, e *engine.Engine) {
	if gw != nil {
		st := gw.Stats()
		fmt.Fprintf(stdout, "gateway: %s\n", st.Summary())
		for _, sa := range gw.SAs() {
			fmt.Fprintf(stdout, "gateway sa %v: owned %v endpoint-seq %d gateway-seq %d lead %d draining %v\n", sa.ID, sa.Owned, sa.EndpointSeq, sa.GatewaySeq, sa.Lead, sa.Draining)
		}
		e = gw.Engine()
	}
	if e != nil {
		fmt.Fprintf(stdout, "engine: %s\n", e.Stats().Summary())
		printHeldFlows(stdout, e)
	}
}

// maxFlowLines bounds the flows printHeldFlows lists.
const maxFlowLines = 8

// printHeldFlows lists the split flows that still hold bytes at the end
// (a few): what a stall left behind.
func printHeldFlows(stdout io.Writer, e *engine.Engine) {
	n := 0
	for _, f := range e.Flows() {
		if !f.Split || f.Down.Buffered+f.Up.Buffered == 0 {
			continue
		}
		if n++; n > maxFlowLines {
			break
		}
		for _, d := range []struct {
			name string
			s    engine.StreamInfo
		}{{"down", f.Down}, {"up", f.Up}} {
			fmt.Fprintf(stdout, "engine flow %v %v %s: buffered %d in-flight %d cwnd %d window %d pacing %.0f B/s srtt %v rto %v rexmits %d timeouts %d tail-probes %d\n",
				f.Wire, f.Radio, d.name, d.s.Buffered, d.s.InFlight, d.s.Cwnd, d.s.Window, d.s.PacingRate, d.s.SRTT, d.s.RTO, d.s.Rexmits, d.s.Timeouts, d.s.TailProbes)
		}
	}
}
