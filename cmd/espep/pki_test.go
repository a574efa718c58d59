package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
)

// TestPkiCommands: espep pki makes a CA, issues a gateway's and an
// agent's certificates with their identities, shows them, revokes one by
// file — and the revocation list it writes takes it back in a verifier —
// and refuses a bad identity as a usage error.
func TestPkiCommands(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	pkiRun := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := run(append([]string{"pki"}, args...), &stdout, &stderr)
		return stdout.String() + stderr.String(), err
	}
	if out, err := pkiRun("init", "--ca", ca, "--name", "fleet CA"); err != nil || !strings.Contains(out, `CA "fleet CA"`) {
		t.Fatalf("init: %v\n%s", err, out)
	}
	gw := filepath.Join(dir, "gw1")
	out, err := pkiRun("issue", "--ca", ca, "--role", "gateway", "--name", "gw1", "--area", "cell-17", "--area", "cell-18", "--ip", "192.0.2.10", "--out", gw)
	if err != nil || !strings.Contains(out, `gateway "gw1"`) || !strings.Contains(out, "area=cell-18") || !strings.Contains(out, "ip=192.0.2.10") {
		t.Fatalf("issue gateway: %v\n%s", err, out)
	}
	if fi, err := os.Stat(gw + ".key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	ag := filepath.Join(dir, "router")
	if out, err := pkiRun("issue", "--ca", ca, "--role", "agent", "--name", "router-a", "--prefix", "10.1.0.0/16", "--out", ag); err != nil || !strings.Contains(out, "prefix=10.1.0.0/16") {
		t.Fatalf("issue agent: %v\n%s", err, out)
	}
	if out, err := pkiRun("show", ag+".crt"); err != nil || !strings.Contains(out, `agent "router-a"`) {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if out, err := pkiRun("revoke", "--ca", ca, "--cert", gw+".crt"); err != nil || !strings.Contains(out, "revoked serial") {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	v, err := pki.LoadVerifier(filepath.Join(ca, "ca.crt"), filepath.Join(ca, "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	for file, revoked := range map[string]bool{gw: true, ag: false} {
		c, err := pki.LoadCert(file + ".crt")
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify([]*x509.Certificate{c}, time.Now(), x509.ExtKeyUsageClientAuth)
		if revoked != (err != nil) {
			t.Errorf("%s: revoked %v, verify: %v", file, revoked, err)
		}
	}
	if _, err := pkiRun("crl", "--ca", ca); err != nil {
		t.Fatalf("crl: %v", err)
	}
	for _, bad := range [][]string{
		{"issue", "--ca", ca, "--role", "agent", "--name", "x", "--area", "cell-1", "--out", filepath.Join(dir, "x")},
		{"issue", "--ca", ca, "--role", "agent", "--name", "x", "--prefix", "10.0.0.0/33", "--out", filepath.Join(dir, "x")},
		{"issue", "--ca", ca, "--role", "root", "--name", "x", "--out", filepath.Join(dir, "x")},
		{"revoke", "--ca", ca},
		{"init", "--ca", ca},
	} {
		if _, err := pkiRun(bad...); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}
