package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/espep/espep/internal/host"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestAgentCharonLog: the agent delegates the CHILD_SA pair a real
// charon log (chd = 4) shows; when the log shows the CHILD_SA rekeyed
// away, it withdraws it; a log open to others is refused.
func TestAgentCharonLog(t *testing.T) {
	w := sectest.Start(t)
	log, err := os.ReadFile("../charonlog/testdata/aes256gcm16-left.log")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "charon.log")
	os.WriteFile(path, log, 0o600)
	cfgs, err := safile.Load("../../ipsec/testdata/strongswan/aes256gcm16/sa.native")
	if err != nil {
		t.Fatal(err)
	}
	owner := cfgs[0].Src
	a := New(Config{CharonLogs: []string{path}, Area: "cell-4", Log: slog.New(slog.DiscardHandler)},
		w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "left", Addrs: []netip.Addr{owner}}))
	ctx := context.Background()
	if err := a.Sync(ctx); err != nil || a.Uploads != 2 {
		t.Fatalf("sync: %v, %d uploads", err, a.Uploads)
	}
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}})
	got, err := gw.Fetch(ctx, cfgs[0].Src, cfgs[0].Dst)
	if err != nil || len(got) != 2 {
		t.Fatalf("fetch: %v %v", got, err)
	}
	for _, g := range got {
		i := 0
		if g.SPI != cfgs[0].SPI {
			i = 1
		}
		if g.SPI != cfgs[i].SPI || !bytes.Equal(g.EncKey, cfgs[i].EncKey) {
			t.Fatalf("the gateway got %#x with other keys than save-keys wrote", g.SPI)
		}
	}
	os.WriteFile(path, append(log, []byte("17:36:44 09[CHD] CHILD_SA pep{1} state change: INSTALLED => REKEYING\n"+
		"17:36:44 09[CHD] CHILD_SA pep{1} state change: REKEYING => REKEYED\n")...), 0o600)
	if err := a.Sync(ctx); err != nil || a.Withdrawals != 2 {
		t.Fatalf("after the rekey: %v, %d withdrawals", err, a.Withdrawals)
	}
	os.Chmod(path, 0o644)
	if err := a.Sync(ctx); err == nil {
		t.Fatal("a charon log open to others was read")
	}
}

// TestAgentHostSocket: through a running espep host's control socket the
// agent delegates the SAs the host runs on that its policies permit —
// the web policy's, not ssh's — as it does from the file.
func TestAgentHostSocket(t *testing.T) {
	w := sectest.Start(t)
	dir := filepath.Join(t.TempDir(), "host")
	os.Mkdir(dir, 0o700) // keys cross the socket: its directory is closed to others
	conf := "espep-host 1\n[host]\nsa-file = sa.conf\nstate-dir = state\ncontrol = ctl.sock\n" +
		"[policy]\nname = web\nproto = tcp\nremote-ports = 80-443\naction = protect\nsa = 0xe1000001\nproxy = write\n" +
		"[policy]\nname = ssh\nproto = tcp\nremote-ports = 22\naction = protect\nsa = 0xe2000002\n"
	var sas bytes.Buffer
	if err := safile.WriteNative(&sas, []ipsec.Config{sa(0xe1000001, right, left, 1), sa(0xe2000002, right, left, 2)}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "host.conf"), []byte(conf), 0o600)
	os.WriteFile(filepath.Join(dir, "sa.conf"), sas.Bytes(), 0o600)
	cfg, err := host.LoadConfig(filepath.Join(dir, "host.conf"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := host.NewWithLink(cfg, slog.New(slog.DiscardHandler), host.NewMemLink())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		h.Close()
	}()
	sock := filepath.Join(dir, "ctl.sock")
	a := New(Config{HostSockets: []string{sock}, Area: "cell-4", Log: slog.New(slog.DiscardHandler)},
		w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "right", Addrs: []netip.Addr{right}}))
	var syncErr error
	for range 200 { // the socket opens when Run starts
		if syncErr = a.Sync(ctx); syncErr == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if syncErr != nil || a.Uploads != 1 {
		t.Fatalf("sync: %v, %d uploads", syncErr, a.Uploads)
	}
	got, err := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}}).Fetch(ctx, left, right)
	if err != nil || len(got) != 1 || got[0].SPI != 0xe1000001 {
		t.Fatalf("the gateway got %+v (%v): want the web policy's SA only", got, err)
	}
}
