package agent

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/sectest"
)

// TestAgentDelegatesIKE: the agent of the right strongSwan peer reads its
// charon log (ike = 4; a recording with an IKE SA and its rekey) and
// uploads both IKE SAs' keys once each; a write gateway of the area is
// released exactly those keys with the pair; syncing again sends nothing;
// a log open to others is refused.
func TestAgentDelegatesIKE(t *testing.T) {
	src := filepath.Join("..", "ikev2", "testdata", "follow", "right-charon.log")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "charon.log")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	w := sectest.Start(t)
	peer := netip.MustParseAddr("10.77.2.1")
	a := New(Config{IKECharonLogs: []string{path}, Area: "cell-4"}, w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "right", Addrs: []netip.Addr{peer}}))
	ctx := context.Background()
	if err := a.Sync(ctx); err != nil || a.IKEUploads != 2 || a.Uploads != 0 {
		t.Fatalf("sync: %v; %d IKE SAs, %d SAs uploaded", err, a.IKEUploads, a.Uploads)
	}
	if err := a.Sync(ctx); err != nil || a.IKEUploads != 2 {
		t.Fatalf("sync again: %v; %d IKE SAs uploaded", err, a.IKEUploads)
	}
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}})
	var got []ikev2.Keys
	gw.OnIKE = func(k ikev2.Keys) { got = append(got, k) }
	if _, err := gw.Fetch(ctx, netip.MustParseAddr("10.77.1.1"), peer); err != nil {
		t.Fatal(err)
	}
	want, err := charonlog.ParseIKE(bytes.NewReader(b), src)
	if err != nil || len(got) != len(want) {
		t.Fatalf("released %d key sets, the log has %d (%v)", len(got), len(want), err)
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || bytes.Equal(g.D, w.D) && bytes.Equal(g.Ei, w.Ei) && bytes.Equal(g.Ar, w.Ar) && g.Encr == w.Encr
		}
		if !found {
			t.Errorf("the IKE SA with SK_d %x… was not released as logged", w.D[:4])
		}
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx); err == nil {
		t.Fatal("a charon log open to others was read")
	}
}
