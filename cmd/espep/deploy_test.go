package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espep/espep/internal/gateway"
)

// TestDeployFiles: the example configuration in deploy/ is one espep
// gateway reads, in TUN mode with its routes; systemd accepts the unit
// (systemd-analyze verify), which runs the binary with that
// configuration under the hardening the README describes.
func TestDeployFiles(t *testing.T) {
	fc, err := gateway.LoadFileConfig(filepath.Join("..", "..", "deploy", "gateway.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(fc.Wire, "tun:") || !fc.Routes || fc.WireIface == "" || len(fc.SAFiles) != 1 || fc.Metrics == "" {
		t.Fatalf("the example is not the documented TUN gateway: %+v", fc)
	}
	unit, err := os.ReadFile(filepath.Join("..", "..", "deploy", "espep-gateway.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=/usr/local/bin/espep gateway --config /etc/espep/gateway.conf", "NoNewPrivileges=yes",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "ProtectSystem=strict", "StateDirectoryMode=0700", "DeviceAllow=/dev/net/tun rw"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze not installed (.ci/run installs systemd)")
		}
		t.Skip("systemd-analyze not installed: the unit is not verified")
	}
	// verify wants the ExecStart binary to exist: this test's, in a copy.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "espep-gateway.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/espep", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "espep-gateway.service:") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
