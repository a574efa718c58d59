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
                  (--keys FILE | --host-config FILE)… --area AREA [--class read|write]
                  [--interval D] [--once] [--rekey-command CMD] [--duration D]

Runs on an endpoint and delegates its SAs to the security server (scheme
3): it watches the key files (Wireshark esp_sa lines as strongSwan's
save-keys plugin writes them, or espep's native SA format; mode 0600),
uploads the SAs that permit a proxy with the endpoint's area, and
withdraws those that leave the files (deleted, rekeyed away).
--host-config takes an espep host configuration: the SAs of its policies
with proxy = read or write are delegated in that class, the others never
(the endpoint's per-connection permission). --class is a ceiling (read:
no integrity key, and no AEAD SA); below it each SA's own class counts
(esp_sa lines: write). --cert is an
agent certificate (espep pki issue --role agent) whose addresses or
prefixes own the SAs' addresses.

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
	var keys, hostCfgs stringList
	fs.Var(&keys, "keys", "key file to delegate (repeatable)")
	fs.Var(&hostCfgs, "host-config", "espep host configuration: delegate the SAs of its policies with proxy = read|write (repeatable)")
	area := fs.String("area", "", "the area the endpoint is in")
	class := fs.String("class", "", "delegate every SA in this class: read or write")
	every := fs.Duration("interval", time.Second, "how often the files are read")
	once := fs.Bool("once", false, "sync once and exit")
	rekeyCmd := fs.String("rekey-command", "", "run (sh -c) when the server orders an SA rekeyed — its gateway's lease lapsed; ESPEP_SPI and ESPEP_DST name the SA (e.g. swanctl --rekey --child NAME)")
	dur := fs.Duration("duration", 0, "stop after this long (0: run until a signal)")
	fs.Usage = func() { fmt.Fprint(stderr, agentUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *addr == "" || *certFile == "" || *keyFile == "" || *caFile == "" || len(keys)+len(hostCfgs) == 0 || *area == "" || fs.NArg() != 0 {
		fs.Usage()
		return usageError{"agent: need --secserver, --cert, --key, --ca, --keys or --host-config, and --area"}
	}
	cfg := agent.Config{Files: keys, HostConfigs: hostCfgs, Area: *area, Log: slog.New(slog.NewTextHandler(stderr, nil))}
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
		fmt.Fprintf(stdout, "agent: %d uploaded, %d withdrawn\n", a.Uploads, a.Withdrawals)
		return err
	}
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	if *rekeyCmd != "" {
		go agent.FollowOrders(ctx, c, cfg.Log, func(id ipsec.ID, why string) {
			cmd := exec.CommandContext(ctx, "sh", "-c", *rekeyCmd)
			cmd.Env = append(os.Environ(), fmt.Sprintf("ESPEP_SPI=%#08x", id.SPI), "ESPEP_DST="+id.Dst.String(), "ESPEP_WHY="+why)
			if out, err := cmd.CombinedOutput(); err != nil {
				cfg.Log.Warn("agent: rekey command", "err", err, "output", string(out))
			}
		})
	}
	a.Run(ctx, *every)
	fmt.Fprintf(stdout, "agent: %d uploaded, %d withdrawn\n", a.Uploads, a.Withdrawals)
	return nil
}
