package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/espep/espep/internal/agent"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/ipsec"
)

const agentUsage = `usage: espep agent --secserver HOST:PORT --cert FILE --key FILE --ca FILE [--crl FILE]
                  (--keys FILE | --host-config FILE | --host-socket PATH | --charon-log FILE | --xfrm | --ike-charon-log FILE)…
                  [--area AREA] [--class read|write] [--interval D] [--once]
                  [--rekey-command CMD] [--duration D]

Runs on an endpoint and delegates its SAs to the security server.

Scheme 3, the endpoint's own SAs: the agent reads them where its IPsec
keeps them, uploads those that permit a proxy with the endpoint's area,
and withdraws those that leave (deleted, rekeyed away):
  --keys         key files: Wireshark esp_sa lines as strongSwan's save-keys
                 plugin writes them, or espep's native SA format (mode 0600)
  --charon-log   strongSwan's charon log written with "chd = 4" (mode 0600):
                 the CHILD_SAs charon holds, not those rekeyed away
  --host-config  an espep host configuration: the SAs of its policies with
                 proxy = read or write, in that class; never the others
                 (the endpoint's per-connection permission)
  --host-socket  a running espep host's control socket: the same, as the
                 host runs them
  --xfrm         the Linux kernel's SAD (netlink; needs CAP_NET_ADMIN):
                 every SA, so cap them with --class
Scheme 2, the IKE SAs' keys: gateways that follow IKE derive every
CHILD_SA (rekeys included) from them; they go to write gateways only:
  --ike-charon-log  strongSwan's charon log written with "ike = 4" (mode
                 0600; charon then also logs its PSK and DH secrets): the
                 keys of each IKE SA, uploaded once
--class is a ceiling (read: no integrity key, and no AEAD SA); below it
each SA's own class counts (esp_sa lines and charon's SAs: write).

Scheme 4, pairs the server makes: for every policy with sa = server of
the espep hosts named by --host-socket, the agent asks the server for the
pair (the peer's agent gets the same one) and installs it, and replaces
it when the server orders (a gateway that numbered it is gone) or renews
it.

When the server orders an SA of the endpoint's own IPsec rekeyed (the
lease of a gateway that numbered it lapsed), --rekey-command runs.
--cert is an agent certificate (espep pki issue --role agent) whose
addresses or prefixes own the SAs' addresses.

flags:
`

func runAgent(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("secserver", "", "the security server (host:port)")
	certFile := fs.String("cert", "", "the agent's certificate")
	keyFile := fs.String("key", "", "its key")
	caFile := fs.String("ca", "", "the CA's certificate")
	crlFile := fs.String("crl", "", "the CA's revocation list")
	var keys, hostCfgs, hostSocks, charonLogs, ikeLogs stringList
	fs.Var(&keys, "keys", "key file to delegate (repeatable)")
	fs.Var(&hostCfgs, "host-config", "espep host configuration: delegate the SAs of its policies with proxy = read|write (repeatable)")
	fs.Var(&hostSocks, "host-socket", "a running espep host's control socket: delegate its SAs, install its sa = server pairs (repeatable)")
	fs.Var(&charonLogs, "charon-log", "strongSwan charon log (chd = 4): delegate the CHILD_SAs charon holds (repeatable)")
	fs.Var(&ikeLogs, "ike-charon-log", "strongSwan charon log (ike = 4): delegate the IKE SA keys it shows, for gateways that follow IKE (repeatable)")
	useXFRM := fs.Bool("xfrm", false, "delegate the Linux kernel's SAs (netlink)")
	area := fs.String("area", "", "the radio area the endpoint is in (a mobile's cell); none for a wired endpoint: its SAs reach gateways through its peer's area")
	class := fs.String("class", "", "delegate every SA in this class: read or write")
	every := fs.Duration("interval", time.Second, "how often the files are read")
	once := fs.Bool("once", false, "sync once and exit")
	rekeyCmd := fs.String("rekey-command", "", "run (sh -c) when the server orders an SA rekeyed — its gateway's lease lapsed; ESPEP_SPI and ESPEP_DST name the SA (e.g. swanctl --rekey --child NAME)")
	dur := fs.Duration("duration", 0, "stop after this long (0: run until a signal)")
	fs.Usage = func() { fmt.Fprint(stderr, agentUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *addr == "" || *certFile == "" || *keyFile == "" || *caFile == "" || len(keys)+len(hostCfgs)+len(hostSocks)+len(charonLogs)+len(ikeLogs) == 0 && !*useXFRM || fs.NArg() != 0 {
		fs.Usage()
		return usageError{"agent: need --secserver, --cert, --key, --ca, and a source (--keys, --host-config, --host-socket, --charon-log, --xfrm or --ike-charon-log)"}
	}
	cfg := agent.Config{Files: keys, HostConfigs: hostCfgs, HostSockets: hostSocks, CharonLogs: charonLogs, IKECharonLogs: ikeLogs, XFRM: *useXFRM,
		Area: *area, Log: slog.New(slog.NewTextHandler(stderr, nil))}
	switch *class {
	case "":
	case "read":
		cfg.Class = ipsec.ClassRead
	case "write":
		cfg.Class = ipsec.ClassWrite
	default:
		return usageError{fmt.Sprintf("agent: --class %q: want read or write", *class)}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	conn, err := dialSecServer(ctx, gateway.SecServerConfig{Addr: *addr, Cert: *certFile, Key: *keyFile, CA: *caFile, CRL: *crlFile}, false, cfg.Log)
	if err != nil {
		return err
	}
	c := conn.c
	defer c.Close()
	a := agent.New(cfg, c)
	if *once {
		err := a.Sync(ctx)
		fmt.Fprintf(stdout, "agent: %d uploaded, %d withdrawn, %d pairs installed, %d IKE SAs' keys uploaded\n", a.Uploads, a.Withdrawals, a.Installs, a.IKEUploads)
		return err
	}
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	var rekey func(ipsec.ID, string)
	if *rekeyCmd != "" {
		rekey = func(id ipsec.ID, why string) {
			cmd := exec.CommandContext(ctx, "sh", "-c", *rekeyCmd)
			cmd.Env = append(os.Environ(), fmt.Sprintf("ESPEP_SPI=%#08x", id.SPI), "ESPEP_DST="+id.Dst.String(), "ESPEP_WHY="+why)
			if out, err := cmd.CombinedOutput(); err != nil {
				cfg.Log.Warn("agent: rekey command", "err", err, "output", string(out))
			}
		}
	}
	go a.FollowOrders(ctx, c, rekey)
	a.Run(ctx, *every)
	fmt.Fprintf(stdout, "agent: %d uploaded, %d withdrawn, %d pairs installed, %d IKE SAs' keys uploaded\n", a.Uploads, a.Withdrawals, a.Installs, a.IKEUploads)
	return nil
}
