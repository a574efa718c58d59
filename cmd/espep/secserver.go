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

func runSecserver(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("secserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "address to serve on (host:port)")
	certFile := fs.String("cert", "", "the server's certificate (espep pki issue --role secserver)")
	keyFile := fs.String("key", "", "its key")
	caFile := fs.String("ca", "", "the CA's certificate")
	crlFile := fs.String("crl", "", "the CA's revocation list")
	db := fs.String("db", "", "the store (a bbolt file)")
	etcd := fs.String("etcd", "", "the store in an etcd cluster instead, for several replicas: its client URLs, comma-separated")
	etcdPrefix := fs.String("etcd-prefix", "/espep", "with --etcd: the key prefix")
	etcdCert := fs.String("etcd-cert", "", "with --etcd: the replica's client certificate for etcd's TLS (with --etcd-key, --etcd-ca)")
	etcdKey := fs.String("etcd-key", "", "with --etcd: its key")
	etcdCA := fs.String("etcd-ca", "", "with --etcd: the CA of the etcd members' certificates")
	dbKey := fs.String("db-key", "", "the store's key file")
	auditFile := fs.String("audit", "", "append the audit log to this file (default: stderr)")
	leaseFor := fs.Duration("lease", secserver.DefaultLease, "how long a gateway's heartbeat keeps its lease; when it lapses the agents rekey what the gateway numbered")
	withPMS := fs.Bool("pms", false, "also serve the proxy management service (neighbours, scheme A)")
	radius := fs.Float64("pms-radius", pms.DefaultRadius, "with --pms: gateways with base stations this close (meters) are neighbours")
	dur := fs.Duration("duration", 0, "stop after this long (0: run until a signal)")
	fs.Usage = func() { fmt.Fprint(stderr, secserverUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *listen == "" || *certFile == "" || *keyFile == "" || *caFile == "" || (*db == "") == (*etcd == "") || *dbKey == "" || fs.NArg() != 0 {
		fs.Usage()
		return usageError{"secserver: need --listen, --cert, --key, --ca, --db-key and one of --db or --etcd"}
	}
	if !(*radius > 0) {
		return usageError{fmt.Sprintf("secserver: --pms-radius %g: want meters above 0", *radius)}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	v, err := pki.LoadVerifier(*caFile, *crlFile)
	if err != nil {
		return err
	}
	cert, err := pki.LoadTLS(*certFile, *keyFile)
	if err != nil {
		return err
	}
	if id, err := pki.IdentityOf(cert.Leaf); err != nil || id.Role != pki.RoleServer {
		return fmt.Errorf("secserver: %s is not a security server's certificate (%v)", *certFile, err)
	}
	key, err := secserver.LoadKey(*dbKey)
	if err != nil {
		return err
	}
	var store secserver.Store
	if *etcd != "" {
		var tlsCfg *tls.Config
		if *etcdCert != "" || *etcdKey != "" || *etcdCA != "" {
			if tlsCfg, err = secserver.EtcdTLS(*etcdCert, *etcdKey, *etcdCA); err != nil {
				return err
			}
		}
		store, err = secserver.OpenEtcd(strings.Split(*etcd, ","), tlsCfg, *etcdPrefix, key)
	} else {
		store, err = secserver.OpenBolt(*db, key)
	}
	clear(key)
	if err != nil {
		return err
	}
	defer store.Close()
	audit := stderr
	if *auditFile != "" {
		f, err := os.OpenFile(*auditFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("secserver: audit log: %w", err)
		}
		defer f.Close()
		audit = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	if *crlFile != "" {
		go v.WatchCRL(ctx, *crlFile, 10*time.Second, log)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(v.ServerTLS(cert, pki.RoleAgent, pki.RoleGateway))))
	srv := secserver.New(store, v, slog.New(slog.NewJSONHandler(audit, nil)))
	srv.Attach(g)
	srv.SetLease(*leaseFor)
	go srv.Run(ctx)
	if *withPMS {
		p := pms.New(v, slog.New(slog.NewJSONHandler(audit, nil)))
		p.Radius = *radius
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
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	log.Info("secserver running", "listen", ln.Addr().String(), "db", *db, "etcd", *etcd)
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	if err := g.Serve(ln); err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	return nil
}
