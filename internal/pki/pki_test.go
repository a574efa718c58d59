package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	server = Identity{Role: RoleServer, Name: "secserver-1", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, DNS: []string{"secserver.example"}}
	gw     = Identity{Role: RoleGateway, Name: "gw-north", Areas: []string{"cell-17", "cell-18"}}
	agent  = Identity{Role: RoleAgent, Name: "router-a", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("2001:db8:1::/48")}}
)

func newCA(t *testing.T) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := Init(dir, "espep test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

func issue(t *testing.T, ca *CA, id Identity) (*x509.Certificate, tls.Certificate) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c, pair
}

// TestIssueAndRead: each role's identity goes into a certificate and
// comes back out the same; the verifier believes it for its role only;
// the CA reopens from its directory, whose key is closed to others.
func TestIssueAndRead(t *testing.T) {
	ca, dir := newCA(t)
	v, err := NewVerifier(ca.Cert, ca.crl)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []Identity{server, gw, agent} {
		c, _ := issue(t, ca, id)
		got, err := v.Verify([]*x509.Certificate{c}, time.Now(), x509.ExtKeyUsageClientAuth, id.Role)
		if err != nil {
			t.Fatalf("%s: %v", id.Role, err)
		}
		if got.Role != id.Role || got.Name != id.Name || len(got.Addrs) != len(id.Addrs) || len(got.Prefixes) != len(id.Prefixes) ||
			len(got.Areas) != len(id.Areas) || len(got.DNS) != len(id.DNS) {
			t.Fatalf("%s: got %+v, want %+v", id.Role, got, id)
		}
		other := RoleAgent
		if id.Role == RoleAgent {
			other = RoleGateway
		}
		if _, err := v.Verify([]*x509.Certificate{c}, time.Now(), x509.ExtKeyUsageClientAuth, other); !errors.Is(err, ErrWrongRole) {
			t.Fatalf("%s believed as a %s: %v", id.Role, other, err)
		}
	}
	if !agent.Owns(netip.MustParseAddr("10.1.200.3")) || !agent.Owns(netip.MustParseAddr("192.0.2.1")) || agent.Owns(netip.MustParseAddr("10.2.0.1")) {
		t.Fatal("Owns")
	}
	if !gw.Serves("cell-18") || gw.Serves("cell-19") || agent.Serves("cell-17") {
		t.Fatal("Serves")
	}
	if fi, err := os.Stat(filepath.Join(dir, caKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key file: %v %v", fi.Mode(), err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(dir, "again", time.Hour); err == nil {
		t.Fatal("a second CA made over the first")
	}
	os.Chmod(filepath.Join(dir, caKeyFile), 0o640)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "closed to group and others") {
		t.Fatalf("a CA key open to its group was used: %v", err)
	}
}

// TestIdentityRefused: identities a CA must not issue.
func TestIdentityRefused(t *testing.T) {
	ca, _ := newCA(t)
	for name, id := range map[string]Identity{
		"no role":          {Name: "x"},
		"unknown role":     {Role: "admin", Name: "x"},
		"no name":          {Role: RoleAgent},
		"control in name":  {Role: RoleAgent, Name: "a\nb"},
		"area on an agent": {Role: RoleAgent, Name: "x", Areas: []string{"c1"}},
		"prefix on a gw":   {Role: RoleGateway, Name: "x", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		"host bits":        {Role: RoleAgent, Name: "x", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}},
		"area with slash":  {Role: RoleGateway, Name: "x", Areas: []string{"a/b"}},
	} {
		if _, _, err := ca.Issue(id, time.Hour); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
}

// TestMutualTLS: a server that admits agents and gateways, over loopback.
// A client with such a certificate gets in and the server reads its
// identity; one with no certificate, one from another CA, an expired one,
// a revoked one and a security server's are each refused.
func TestMutualTLS(t *testing.T) {
	ca, _ := newCA(t)
	v, err := NewVerifier(ca.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, srvCert := issue(t, ca, server)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", v.ServerTLS(srvCert, RoleAgent, RoleGateway))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					seen <- "refused: " + err.Error()
					return
				}
				id, err := PeerIdentity(tc.ConnectionState())
				if err != nil {
					seen <- "no identity: " + err.Error()
					return
				}
				seen <- string(id.Role) + " " + id.Name
				tc.Write([]byte("ok"))
			}()
		}
	}()
	dial := func(cfg *tls.Config) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cfg)
		if err != nil {
			return <-seen, err
		}
		defer c.Close()
		buf := make([]byte, 2)
		_, err = c.Read(buf)
		return <-seen, err
	}
	_, agentCert := issue(t, ca, agent)
	if got, err := dial(v.ClientTLS(agentCert, RoleServer)); err != nil || got != "agent router-a" {
		t.Fatalf("the agent was not let in: %q %v", got, err)
	}
	// The client refuses a server that is not of the role it wants.
	if _, err := tls.Dial("tcp", ln.Addr().String(), v.ClientTLS(agentCert, RoleGateway)); !errors.Is(err, ErrWrongRole) {
		t.Fatalf("a client believed a server of the wrong role: %v", err)
	}
	<-seen

	other, _ := newCA(t)
	_, foreign := issue(t, other, agent)
	_, srvAsClient := issue(t, ca, server)
	now = func() time.Time { return time.Now().Add(-3 * time.Hour) }
	_, expired := issue(t, ca, agent)
	now = time.Now
	revokedLeaf, revoked := issue(t, ca, gw)
	if err := ca.Revoke(revokedLeaf.SerialNumber); err != nil {
		t.Fatal(err)
	}
	if err := v.SetCRL(ca.crl); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		cert tls.Certificate
		want string
	}{
		"no certificate":      {tls.Certificate{}, "certificate"},
		"another CA":          {foreign, "unknown authority"},
		"expired":             {expired, "expired"},
		"revoked":             {revoked, "revoked"},
		"a server, as client": {srvAsClient, "wrong role"},
	} {
		cfg := v.ClientTLS(tc.cert, RoleServer)
		if tc.cert.Certificate == nil {
			cfg.Certificates = nil
		}
		got, err := dial(cfg)
		if err == nil || !strings.HasPrefix(got, "refused") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: server saw %q (client: %v), want a refusal for %q", name, got, err, tc.want)
		}
	}
}

// TestOpenSSLAgrees: OpenSSL, an independent X.509 implementation,
// verifies an issued certificate against the CA and its revocation list,
// and rejects it once revoked.
func TestOpenSSLAgrees(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl missing (.ci/run installs it)")
		}
		t.Skip("SKIP: openssl not installed")
	}
	ca, dir := newCA(t)
	certPEM, _, err := ca.Issue(agent, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leafFile := filepath.Join(t.TempDir(), "leaf.crt")
	os.WriteFile(leafFile, certPEM, 0o644)
	verify := func() (string, error) {
		out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, caCertFile), "-crl_check",
			"-CRLfile", filepath.Join(dir, caCRLFile), "-purpose", "sslclient", leafFile).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("openssl refused an issued certificate: %v\n%s", err, out)
	}
	leaf, err := LoadCert(leafFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Revoke(leaf.SerialNumber); err != nil {
		t.Fatal(err)
	}
	if out, err := verify(); err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("openssl accepted a revoked certificate: %v\n%s", err, out)
	}
	out, err := exec.Command("openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", leafFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "URI:espep:role/agent") || !strings.Contains(string(out), "URI:espep:prefix/10.1.0.0/16") {
		t.Fatalf("openssl reads other names: %v\n%s", err, out)
	}
}

// FuzzParseURIs: any list of URIs gives an identity or an error, never a
// panic; an identity read has exactly one role.
func FuzzParseURIs(f *testing.F) {
	for _, s := range []string{
		"espep:role/agent\nespep:prefix/10.0.0.0/8",
		"espep:role/gateway\nespep:area/cell-1\nespep:area/cell-2",
		"espep:role/agent\nespep:role/gateway",
		"espep:role/\nespep:area",
		"espep:prefix/10.0.0.1/33\nespep:role/agent",
		"https://example/x\nespep:role/secserver",
		"espep:color/blue\nespep:role/agent",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseURIs(strings.Split(s, "\n"))
		if err == nil && id.Role == "" {
			t.Fatalf("%q: an identity with no role", s)
		}
	})
}
