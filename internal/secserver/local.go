package secserver

import (
	"crypto/rand"
	"crypto/tls"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/ipsec"
)

// Local is a security server living in one process — espep lab's, the
// tests' — with a CA of its own and a bbolt store in a directory, serving
// gRPC over mutual TLS on loopback.
type Local struct {
	CA       *pki.CA
	Verifier *pki.Verifier
	Addr     string
	Server   *Server
	g        *grpc.Server
	store    *BoltStore
}

// StartLocal makes the CA and the store in dir and serves; the audit log
// goes to audit.
func StartLocal(dir string, audit io.Writer) (*Local, error) {
	l := &Local{}
	var err error
	if l.CA, err = pki.Init(filepath.Join(dir, "ca"), "espep local CA", 24*time.Hour); err != nil {
		return nil, err
	}
	if l.Verifier, err = pki.NewVerifier(l.CA.Cert, nil); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	if l.store, err = OpenBolt(filepath.Join(dir, "sa.db"), key); err != nil {
		return nil, err
	}
	cert, err := l.Cert(pki.Identity{Role: pki.RoleServer, Name: "secserver"})
	if err != nil {
		l.store.Close()
		return nil, err
	}
	l.Server = New(l.store, l.Verifier, slog.New(slog.NewJSONHandler(audit, nil)))
	if l.Addr, l.g, err = l.Server.Serve("127.0.0.1:0", cert); err != nil {
		l.store.Close()
		return nil, err
	}
	return l, nil
}

// Cert issues a certificate and key for id, valid for a day.
func (l *Local) Cert(id pki.Identity) (tls.Certificate, error) {
	c, k, err := l.CA.Issue(id, 24*time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(c, k)
}

// Client connects as the holder of a certificate for id.
func (l *Local) Client(id pki.Identity, class ipsec.Class) (*Client, error) {
	cert, err := l.Cert(id)
	if err != nil {
		return nil, err
	}
	return Dial(l.Addr, l.Verifier.ClientTLS(cert, pki.RoleServer), class)
}

// Close stops serving and closes the store.
func (l *Local) Close() {
	l.g.Stop()
	l.store.Close()
}
