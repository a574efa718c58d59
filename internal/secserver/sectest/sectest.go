// Package sectest runs a security server for tests: a CA of its own, the
// server on loopback (gRPC over mutual TLS, a bbolt store in a temporary
// directory) and clients holding certificates of any identity.
package sectest

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/ipsec"
)

// World is a running security server and its CA.
type World struct {
	CA       *pki.CA
	Verifier *pki.Verifier
	Addr     string
	Audit    *Buffer
	Server   *secserver.Server
}

// Buffer is a log safe to write from several goroutines.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs a server on a bbolt store (secserver.StartLocal) until the
// test ends.
func Start(t testing.TB) *World {
	t.Helper()
	w := &World{Audit: &Buffer{}}
	l, err := secserver.StartLocal(t.TempDir(), w.Audit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	w.CA, w.Verifier, w.Addr, w.Server = l.CA, l.Verifier, l.Addr, l.Server
	return w
}

// NewWorld makes the CA (no server yet: Serve).
func NewWorld(t testing.TB) *World {
	t.Helper()
	dir := t.TempDir()
	w := &World{Audit: &Buffer{}}
	var err error
	if w.CA, err = pki.Init(filepath.Join(dir, "ca"), "test CA", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if w.Verifier, err = pki.LoadVerifier(filepath.Join(dir, "ca", "ca.crt"), filepath.Join(dir, "ca", "ca.crl")); err != nil {
		t.Fatal(err)
	}
	return w
}

// Serve runs one server replica over store on loopback until the test
// ends or stop is called; it returns its address.
func (w *World) Serve(t testing.TB, store secserver.Store) (addr string, srv *secserver.Server, stop func()) {
	t.Helper()
	srv = secserver.New(store, w.Verifier, slog.New(slog.NewJSONHandler(w.Audit, nil)))
	addr, g, err := srv.Serve("127.0.0.1:0", w.Cert(t, pki.Identity{Role: pki.RoleServer, Name: "secserver"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	return addr, srv, g.Stop
}

// Cert issues a certificate and key for id.
func (w *World) Cert(t testing.TB, id pki.Identity) tls.Certificate {
	t.Helper()
	c, k, err := w.CA.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// Client connects to the server Start ran as the holder of a certificate
// for id.
func (w *World) Client(t testing.TB, id pki.Identity) *secserver.Client {
	t.Helper()
	return w.ClientOf(t, w.Addr, id)
}

// ClientOf connects to the replica at addr as the holder of a certificate
// for id.
func (w *World) ClientOf(t testing.TB, addr string, id pki.Identity) *secserver.Client {
	t.Helper()
	c, err := secserver.Dial(addr, w.Verifier.ClientTLS(w.Cert(t, id), pki.RoleServer), ipsec.ClassWrite)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
