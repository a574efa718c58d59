package agent

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

var (
	left  = netip.MustParseAddr("192.0.2.1")
	right = netip.MustParseAddr("192.0.2.2")
)

func sa(spi uint32, src, dst netip.Addr, key byte) ipsec.Config {
	return ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: src, Dst: dst, Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16,
		EncKey: bytes.Repeat([]byte{key}, 20), Class: ipsec.ClassWrite}
}

// writeESPSA writes sas as strongSwan's save-keys plugin does (Wireshark
// esp_sa lines), mode 0600.
func writeESPSA(t *testing.T, path string, sas ...ipsec.Config) {
	t.Helper()
	var b bytes.Buffer
	if _, err := safile.WriteESPSA(&b, sas); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAgentFollowsKeyFile: the agent of the right endpoint uploads the
// CHILD_SA pair it finds in a save-keys file, a gateway of its area
// fetches it; a rekey (new SPIs appended, the old lines removed) uploads
// the new pair and withdraws the old, and the gateway sees the change; a
// file opened to others is refused and withdraws nothing; nothing is
// sent again while the file does not change.
func TestAgentFollowsKeyFile(t *testing.T) {
	w := sectest.Start(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "charon.keys")
	writeESPSA(t, path, sa(0xc1000001, left, right, 1), sa(0xc2000002, right, left, 2))
	a := New(Config{Files: []string{path}, Area: "cell-4"}, w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "right", Addrs: []netip.Addr{right}}))
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}})
	spis := func() string {
		t.Helper()
		got, err := gw.Fetch(ctx, left, right)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, c := range got {
			s = append(s, c.ID().String())
		}
		return strings.Join(s, " ")
	}
	if err := a.Sync(ctx); err != nil || a.Uploads != 2 {
		t.Fatalf("first sync: %v, %d uploads", err, a.Uploads)
	}
	if got := spis(); !strings.Contains(got, "c1000001") || !strings.Contains(got, "c2000002") {
		t.Fatalf("the gateway got %q", got)
	}
	if err := a.Sync(ctx); err != nil || a.Uploads != 2 {
		t.Fatalf("an unchanged file uploaded again: %v, %d uploads", err, a.Uploads)
	}
	writeESPSA(t, path, sa(0xc3000003, left, right, 3), sa(0xc4000004, right, left, 4))
	if err := a.Sync(ctx); err != nil || a.Uploads != 4 || a.Withdrawals != 2 {
		t.Fatalf("rekey: %v, %d uploads, %d withdrawals", err, a.Uploads, a.Withdrawals)
	}
	if got := spis(); strings.Contains(got, "c1000001") || !strings.Contains(got, "c3000003") || !strings.Contains(got, "c4000004") {
		t.Fatalf("after the rekey the gateway got %q", got)
	}
	os.Chmod(path, 0o644)
	if err := a.Sync(ctx); err == nil || a.Withdrawals != 2 {
		t.Fatalf("a key file open to others: %v, %d withdrawals", err, a.Withdrawals)
	}
	if log := w.Audit.String(); strings.Count(log, `"msg":"withdrawn"`) != 2 || bytes.Contains([]byte(log), bytes.Repeat([]byte{3}, 8)) {
		t.Fatalf("audit:\n%s", log)
	}
}

// TestAgentClass: with --class read, a CBC SA goes without its integrity
// key and an AES-GCM SA is not delegated at all; an agent whose
// certificate does not own the SA's addresses is refused by the server.
func TestAgentClass(t *testing.T) {
	w := sectest.Start(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys")
	cbc := ipsec.Config{SPI: 0xd1, Proto: ipsec.ESP, Src: left, Dst: right, Mode: ipsec.Tunnel, Enc: ipsec.EncAESCBC,
		EncKey: bytes.Repeat([]byte{5}, 16), Integ: ipsec.IntegSHA256_128, IntegKey: bytes.Repeat([]byte{6}, 32), Class: ipsec.ClassWrite}
	cbc.SPI = 0xd1000001
	writeESPSA(t, path, cbc, sa(0xd2000002, right, left, 7))
	a := New(Config{Files: []string{path}, Area: "cell-4", Class: ipsec.ClassRead},
		w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "right", Addrs: []netip.Addr{right}}))
	if err := a.Sync(ctx); err != nil || a.Uploads != 1 {
		t.Fatalf("sync: %v, %d uploads", err, a.Uploads)
	}
	got, err := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}}).Fetch(ctx, left, right)
	if err != nil || len(got) != 1 || got[0].Class != ipsec.ClassRead || len(got[0].IntegKey) != 0 {
		t.Fatalf("fetch: %+v %v", got, err)
	}
	stranger := New(Config{Files: []string{path}, Area: "cell-4"},
		w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "elsewhere", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.9")}}))
	if err := stranger.Sync(ctx); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("an agent uploading SAs of addresses it does not own: %v", err)
	}
}

// TestAgentHostConfig: per-connection permission. An espep host's policies
// say which traffic a proxy may touch; the agent delegates the SA of the
// web policy (proxy = write) and never the ssh policy's, and a gateway of
// the area fetches only the one.
func TestAgentHostConfig(t *testing.T) {
	w := sectest.Start(t)
	dir := t.TempDir()
	conf := `espep-host 1
[host]
sa-file = sa.conf
state-dir = state
[policy]
name = web
proto = tcp
remote-ports = 80-443
action = protect
sa = 0xe1000001
proxy = write
[policy]
name = ssh
proto = tcp
remote-ports = 22
action = protect
sa = 0xe2000002
`
	var sas bytes.Buffer
	if err := safile.WriteNative(&sas, []ipsec.Config{sa(0xe1000001, right, left, 1), sa(0xe2000002, right, left, 2)}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "host.conf"), []byte(conf), 0o600)
	os.WriteFile(filepath.Join(dir, "sa.conf"), sas.Bytes(), 0o600)
	a := New(Config{HostConfigs: []string{filepath.Join(dir, "host.conf")}, Area: "cell-4"},
		w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "right", Addrs: []netip.Addr{right}}))
	if err := a.Sync(context.Background()); err != nil || a.Uploads != 1 {
		t.Fatalf("sync: %v, %d uploads", err, a.Uploads)
	}
	got, err := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}}).Fetch(context.Background(), left, right)
	if err != nil || len(got) != 1 || got[0].SPI != 0xe1000001 {
		t.Fatalf("the gateway got %+v (%v): want the web policy's SA only", got, err)
	}
}
