package testbed

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
)

// secPKI is a security-server test's CA, certificates and store key, in
// dir: what espep secserver, gateways and agents are started with.
type secPKI struct {
	dir string
	ca  *pki.CA
}

func newSecPKI(t *testing.T, dir string) *secPKI {
	t.Helper()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "test CA", 24*time.Hour)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "db.key"), []byte(strings.Repeat("3c", 32)), 0o600))
	p := &secPKI{dir: dir, ca: ca}
	p.issue(t, "ss", pki.Identity{Role: pki.RoleServer, Name: "secserver", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	return p
}

// issue writes name.crt and name.key for id.
func (p *secPKI) issue(t *testing.T, name string, id pki.Identity) {
	t.Helper()
	c, k, err := p.ca.Issue(id, time.Hour)
	must(t, err)
	must(t, pki.WriteFile(filepath.Join(p.dir, name+".key"), k, 0o600))
	must(t, pki.WriteFile(filepath.Join(p.dir, name+".crt"), c, 0o644))
}

// flags are the TLS flags of who's certificate, each prefixed (espep
// gateway's are --secserver-cert and so on).
func (p *secPKI) flags(prefix, who string) []string {
	return []string{"--" + prefix + "cert", filepath.Join(p.dir, who+".crt"), "--" + prefix + "key", filepath.Join(p.dir, who+".key"),
		"--" + prefix + "ca", filepath.Join(p.dir, "ca", "ca.crt"), "--" + prefix + "crl", filepath.Join(p.dir, "ca", "ca.crl")}
}

// startServer runs espep secserver on a bbolt store in namespace ns at
// addr, and waits until it serves.
func (p *secPKI) startServer(t *testing.T, b *Bed, ns, addr string, extra ...string) *Proc {
	t.Helper()
	args := append([]string{espepBin, "secserver", "--listen", addr, "--db", filepath.Join(p.dir, "sa.db"),
		"--db-key", filepath.Join(p.dir, "db.key")}, p.flags("", "ss")...)
	srv, err := b.Start(ns, append(args, extra...)...)
	must(t, err)
	must(t, waitFor(srv, "secserver running", 5*time.Second))
	return srv
}
