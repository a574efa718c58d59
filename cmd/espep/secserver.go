package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/pms"
	"github.com/espep/espep/internal/secserver"
)

const secserverUsage = `usage: espep secserver --listen ADDR --cert FILE --key FILE --ca FILE [--crl FILE]
                      (--db FILE | --etcd URL[,URL…] [--etcd-cert FILE --etcd-key FILE --etcd-ca FILE])
                      --db-key FILE [--audit FILE] [--lease D] [--pms [--pms-radius M]] [--duration D]

The security server: endpoints' agents upload the SAs they let a proxy
work on, gateways fetch those of the areas they serve (gRPC over mutual
TLS 1.3; certificates from espep pki, --cert of role secserver). The SAs
are kept in one bbolt file (--db), or for several replicas in an etcd
cluster (--etcd), sealed under a key kept apart from them (--db-key: 64
hex digits, mode 0600; the same for every replica). --crl is re-read while running.
Every release of key material and every refusal is a JSON line in the
audit log (--audit, appended; default stderr) — never a key.
--pms also serves the proxy management service on the same listener:
gateways register their base stations' locations and are told their
handoff neighbours (other gateways' stations within --pms-radius meters),
again at every change. Its registry is in this process's memory.

flags:
`

// secserverFlags are espep secserver's command line.
type secserverFlags struct {
	listen, certFile, keyFile, caFile, crlFile string
	db, etcd, etcdPrefix                       string
	etcdCert, etcdKey, etcdCA                  string
	dbKey, auditFile                           string
	leaseFor, dur                              time.Duration
	withPMS                                    bool
	radius                                     float64
}

func parseSecserverFlags(args []string, stderr io.Writer) (*secserverFlags, error) {
	var f secserverFlags
	fs := flag.NewFlagSet("secserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.listen, "listen", "", "address to serve on (host:port)")
	fs.StringVar(&f.certFile, "cert", "", "the server's certificate (espep pki issue --role secserver)")
	fs.StringVar(&f.keyFile, "key", "", "its key")
	fs.StringVar(&f.caFile, "ca", "", "the CA's certificate")
	fs.StringVar(&f.crlFile, "crl", "", "the CA's revocation list")
	fs.StringVar(&f.db, "db", "", "the store (a bbolt file)")
	fs.StringVar(&f.etcd, "etcd", "", "the store in an etcd cluster instead, for several replicas: its client URLs, comma-separated")
	fs.StringVar(&f.etcdPrefix, "etcd-prefix", "/espep", "with --etcd: the key prefix")
	fs.StringVar(&f.etcdCert, "etcd-cert", "", "with --etcd: the replica's client certificate for etcd's TLS (with --etcd-key, --etcd-ca)")
	fs.StringVar(&f.etcdKey, "etcd-key", "", "with --etcd: its key")
	fs.StringVar(&f.etcdCA, "etcd-ca", "", "with --etcd: the CA of the etcd members' certificates")
	fs.StringVar(&f.dbKey, "db-key", "", "the store's key file")
	fs.StringVar(&f.auditFile, "audit", "", "append the audit log to this file (default: stderr)")
	fs.DurationVar(&f.leaseFor, "lease", secserver.DefaultLease, "how long a gateway's heartbeat keeps its lease; when it lapses the agents rekey what the gateway numbered")
	fs.BoolVar(&f.withPMS, "pms", false, "also serve the proxy management service (neighbours, scheme A)")
	fs.Float64Var(&f.radius, "pms-radius", pms.DefaultRadius, "with --pms: gateways with base stations this close (meters) are neighbours")
	fs.DurationVar(&f.dur, "duration", 0, "stop after this long (0: run until a signal)")
	fs.Usage = func() { fmt.Fprint(stderr, secserverUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err.Error()}
	}
	if f.listen == "" || f.certFile == "" || f.keyFile == "" || f.caFile == "" || (f.db == "") == (f.etcd == "") || f.dbKey == "" || fs.NArg() != 0 {
		fs.Usage()
		return nil, usageError{"secserver: need --listen, --cert, --key, --ca, --db-key and one of --db or --etcd"}
	}
	if !(f.radius > 0) {
		return nil, usageError{fmt.Sprintf("secserver: --pms-radius %g: want meters above 0", f.radius)}
	}
	return &f, nil
}

func runSecserver(args []string, stdout, stderr io.Writer) error {
	f, err := parseSecserverFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	v, err := pki.LoadVerifier(f.caFile, f.crlFile)
	if err != nil {
		return err
	}
	cert, err := pki.LoadTLS(f.certFile, f.keyFile)
	if err != nil {
		return err
	}
	if id, err := pki.IdentityOf(cert.Leaf); err != nil || id.Role != pki.RoleServer {
		return fmt.Errorf("secserver: %s is not a security server's certificate (%v)", f.certFile, err)
	}
	store, err := f.openStore()
	if err != nil {
		return err
	}
	defer store.Close()
	audit := stderr
	if f.auditFile != "" {
		af, err := os.OpenFile(f.auditFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("secserver: audit log: %w", err)
		}
		defer af.Close()
		audit = af
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if f.dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.dur)
		defer cancel()
	}
	if f.crlFile != "" {
		go v.WatchCRL(ctx, f.crlFile, 10*time.Second, log)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(v.ServerTLS(cert, pki.RoleAgent, pki.RoleGateway))))
	f.attach(ctx, g, store, v, audit)
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	log.Info("secserver running", "listen", ln.Addr().String(), "db", f.db, "etcd", f.etcd)
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	if err := g.Serve(ln); err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	return nil
}

// openStore opens the bbolt file or the etcd cluster the flags name,
// sealed under the store's key.
func (f *secserverFlags) openStore() (secserver.Store, error) {
	key, err := secserver.LoadKey(f.dbKey)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	if f.etcd == "" {
		return secserver.OpenBolt(f.db, key)
	}
	var tlsCfg *tls.Config
	if f.etcdCert != "" || f.etcdKey != "" || f.etcdCA != "" {
		if tlsCfg, err = secserver.EtcdTLS(f.etcdCert, f.etcdKey, f.etcdCA); err != nil {
			return nil, err
		}
	}
	return secserver.OpenEtcd(strings.Split(f.etcd, ","), tlsCfg, f.etcdPrefix, key)
}

// attach puts the security server (and, with --pms, the proxy management
// service) on g and starts what runs beside them until ctx ends.
func (f *secserverFlags) attach(ctx context.Context, g *grpc.Server, store secserver.Store, v *pki.Verifier, audit io.Writer) {
	srv := secserver.New(store, v, slog.New(slog.NewJSONHandler(audit, nil)))
	srv.Attach(g)
	srv.SetLease(f.leaseFor)
	go srv.Run(ctx)
	if f.withPMS {
		p := pms.New(v, slog.New(slog.NewJSONHandler(audit, nil)))
		p.Radius = f.radius
		p.Attach(g)
		go p.Run(ctx)
	}
	if feed, ok := store.(secserver.Feed); ok {
		go srv.Follow(ctx, feed) // every replica's changes reach this one's gateways
	}
	if ls, ok := store.(secserver.LeaseStore); ok {
		srv.ShareLeases(ls) // a gateway keeps its lease on any replica, and a replica's crash forgets none
		go srv.FollowLeases(ctx, ls)
	}
}
