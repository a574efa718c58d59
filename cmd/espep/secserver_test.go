package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestSecserverCommand: espep secserver, set up with espep pki, serves
// espep agent's upload (from a save-keys file) and a gateway's fetch over
// mutual TLS, writes both to its
// audit file without the key, and stops at the end of --duration.
func TestSecserverCommand(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	must := func(args ...string) {
		t.Helper()
		var out bytes.Buffer
		if err := run(args, &out, &out); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out.String())
		}
	}
	must("pki", "init", "--ca", ca)
	must("pki", "issue", "--ca", ca, "--role", "secserver", "--name", "ss1", "--ip", "127.0.0.1", "--out", filepath.Join(dir, "ss1"))
	must("pki", "issue", "--ca", ca, "--role", "agent", "--name", "mobile", "--ip", "192.0.2.2", "--out", filepath.Join(dir, "agent"))
	must("pki", "issue", "--ca", ca, "--role", "gateway", "--name", "gw1", "--area", "cell-1", "--out", filepath.Join(dir, "gw"))
	os.WriteFile(filepath.Join(dir, "db.key"), []byte(strings.Repeat("7f", 32)+"\n"), 0o600)
	audit := filepath.Join(dir, "audit.log")
	stdout := &sectest.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"secserver", "--listen", "127.0.0.1:0", "--cert", filepath.Join(dir, "ss1.crt"), "--key", filepath.Join(dir, "ss1.key"),
			"--ca", filepath.Join(ca, "ca.crt"), "--crl", filepath.Join(ca, "ca.crl"), "--db", filepath.Join(dir, "sa.db"),
			"--db-key", filepath.Join(dir, "db.key"), "--audit", audit, "--duration", "3s"}, stdout, &sectest.Buffer{})
	}()
	re := regexp.MustCompile(`listening on (\S+)`)
	var addr string
	for deadline := time.Now().Add(5 * time.Second); addr == ""; time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatal("the server did not start")
		}
	}
	v, err := pki.LoadVerifier(filepath.Join(ca, "ca.crt"), "")
	if err != nil {
		t.Fatal(err)
	}
	dial := func(name string) *secserver.Client {
		cert, err := pki.LoadTLS(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := secserver.Dial(addr, v.ClientTLS(cert, pki.RoleServer), ipsec.ClassWrite)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	key := bytes.Repeat([]byte{0x42}, 20)
	sa := ipsec.Config{SPI: 0x1234, Proto: ipsec.ESP, Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"),
		Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: key, Class: ipsec.ClassWrite}
	ctx := context.Background()
	// The agent delegates what a save-keys file holds.
	var keys bytes.Buffer
	if _, err := safile.WriteESPSA(&keys, []ipsec.Config{sa}); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "charon.keys")
	os.WriteFile(keyFile, keys.Bytes(), 0o600)
	var out bytes.Buffer
	if err := run([]string{"agent", "--secserver", addr, "--cert", filepath.Join(dir, "agent.crt"), "--key", filepath.Join(dir, "agent.key"),
		"--ca", filepath.Join(ca, "ca.crt"), "--keys", keyFile, "--area", "cell-1", "--once"}, &out, &out); err != nil || !strings.Contains(out.String(), "1 uploaded") {
		t.Fatalf("agent: %v\n%s", err, out.String())
	}
	got, err := dial("gw").Fetch(ctx, sa.Dst, sa.Src)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].EncKey, key) || got[0].SPI != sa.SPI {
		t.Fatalf("fetch: %+v %v", got, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("secserver: %v", err)
	}
	b, err := os.ReadFile(audit)
	if err != nil || !strings.Contains(string(b), `"msg":"stored"`) || !strings.Contains(string(b), `"msg":"released"`) || bytes.Contains(b, []byte("4242424242")) {
		t.Fatalf("audit log (%v):\n%s", err, b)
	}
}
