package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// Verifier decides whether to believe a peer: its chain leads to the CA,
// it is valid now, it is not on the CA's revocation list, and it carries
// an espep identity of an allowed role.
type Verifier struct {
	ca    *x509.Certificate
	roots *x509.CertPool

	mu      sync.RWMutex
	revoked map[string]bool // serial numbers, as text
	stale   time.Time       // the list's NextUpdate
}

// NewVerifier makes a verifier for certificates of ca with the revocation
// list crl (nil: none revoked yet).
func NewVerifier(ca *x509.Certificate, crl *x509.RevocationList) (*Verifier, error) {
	v := &Verifier{ca: ca, roots: x509.NewCertPool()}
	v.roots.AddCert(ca)
	return v, v.SetCRL(crl)
}

// LoadVerifier reads the CA certificate and, if the file exists, its
// revocation list.
func LoadVerifier(caFile, crlFile string) (*Verifier, error) {
	ca, err := LoadCert(caFile)
	if err != nil {
		return nil, err
	}
	crl, err := LoadCRL(crlFile, ca)
	if err != nil {
		return nil, err
	}
	return NewVerifier(ca, crl)
}

// SetCRL replaces the revocation list (one the CA signed).
func (v *Verifier) SetCRL(crl *x509.RevocationList) error {
	revoked := map[string]bool{}
	var stale time.Time
	if crl != nil {
		if err := crl.CheckSignatureFrom(v.ca); err != nil {
			return fmt.Errorf("pki: revocation list not signed by the CA: %w", err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			revoked[e.SerialNumber.String()] = true
		}
		stale = crl.NextUpdate
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.revoked, v.stale = revoked, stale
	return nil
}

// Errors a refused peer gets (wrapped with the details).
var (
	ErrRevoked   = errors.New("pki: certificate revoked")
	ErrWrongRole = errors.New("pki: certificate of the wrong role")
)

// Verify checks a peer's chain (leaf first) at time t for usage, and
// returns the identity of its leaf if it has one of the roles (any role
// when none is given).
func (v *Verifier) Verify(chain []*x509.Certificate, t time.Time, usage x509.ExtKeyUsage, roles ...Role) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, errors.New("pki: no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: t, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return Identity{}, fmt.Errorf("pki: %q: %w", leaf.Subject.CommonName, err)
	}
	v.mu.RLock()
	revoked := v.revoked[leaf.SerialNumber.String()]
	v.mu.RUnlock()
	if revoked {
		return Identity{}, fmt.Errorf("%w: %q (serial %s)", ErrRevoked, leaf.Subject.CommonName, leaf.SerialNumber)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return Identity{}, err
	}
	if len(roles) > 0 && !slices.Contains(roles, id.Role) {
		return Identity{}, fmt.Errorf("%w: %q is a %s, want %v", ErrWrongRole, id.Name, id.Role, roles)
	}
	return id, nil
}

// CRLStale reports whether the revocation list is past its next update
// (a server should then say so: revocations may be missing).
func (v *Verifier) CRLStale(t time.Time) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return !v.stale.IsZero() && t.After(v.stale)
}

// verifyConn is a tls.Config.VerifyConnection for peers of the roles.
func (v *Verifier) verifyConn(usage x509.ExtKeyUsage, roles []Role) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		_, err := v.Verify(cs.PeerCertificates, now(), usage, roles...)
		return err
	}
}

// ServerTLS is the TLS configuration of a control-plane server that
// presents cert and admits only clients the verifier believes, of the
// roles given.
func (v *Verifier) ServerTLS(cert tls.Certificate, roles ...Role) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain is checked in VerifyConnection (with revocation and
		// role); the library only insists that there is one.
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: v.verifyConn(x509.ExtKeyUsageClientAuth, roles),
	}
}

// ClientTLS is the TLS configuration of a control-plane client that
// presents cert and believes only a server the verifier believes, of the
// roles given.
func (v *Verifier) ClientTLS(cert tls.Certificate, roles ...Role) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Servers are known by their certificate's identity, not by a
		// host name: the chain, revocation and role are checked in
		// VerifyConnection.
		InsecureSkipVerify: true,
		VerifyConnection:   v.verifyConn(x509.ExtKeyUsageServerAuth, roles),
	}
}

// PeerIdentity is the identity of a connection's verified peer.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, errors.New("pki: no peer certificate")
	}
	return IdentityOf(cs.PeerCertificates[0])
}

// LoadTLS reads a certificate and its key for TLS, refusing a key file
// group or others may read.
func LoadTLS(certFile, keyFile string) (tls.Certificate, error) {
	if _, err := LoadKey(keyFile); err != nil {
		return tls.Certificate{}, err
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: %w", err)
	}
	return c, nil
}

// WatchCRL re-reads the revocation list at path every interval until ctx
// ends, taking a new one when it is signed by the CA (a bad one is logged
// and the list in force stays).
func (v *Verifier) WatchCRL(ctx context.Context, path string, every time.Duration, log *slog.Logger) {
	var last time.Time
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if fi, err := os.Stat(path); err == nil && !fi.ModTime().Equal(last) {
			crl, err := LoadCRL(path, v.ca)
			if err == nil {
				err = v.SetCRL(crl)
			}
			if err != nil {
				log.Warn("pki: revocation list not taken", "file", path, "err", err)
			} else {
				last = fi.ModTime()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
