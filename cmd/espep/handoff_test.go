package main

import (
	"io"
	"strings"
	"testing"
)

// TestHandoffFlags: espep gateway and espep linkem refuse handoff settings
// that cannot work — a neighbour without a name, no certificate — and take
// the right ones, from flags or the configuration file.
func TestHandoffFlags(t *testing.T) {
	base := []string{"--wire", "w0", "--radio", "r0", "--sa", "x.sa"}
	certs := []string{"--secserver-cert", "gw.crt", "--secserver-key", "gw.key", "--secserver-ca", "ca.crt"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(base, "--handoff-listen", "127.0.0.1:7700"), "need the gateway's certificate"},
		{append(append(base, certs...), "--handoff-peer", "10.0.0.2:7700"), "want NAME@HOST:PORT"},
		{append(append(base, certs...), "--handoff-peer", "@10.0.0.2:7700"), "want NAME@HOST:PORT"},
		{append(append(base, certs...), "--pms", "10.0.0.9:7443", "--station", "cell-1@48.85,2.35"), "--pms needs --handoff-listen"},
		{append(append(base, certs...), "--pms", "10.0.0.9:7443", "--handoff-listen", "10.0.0.1:7700"), "--pms needs"},
		{append(append(base, certs...), "--pms", "10.0.0.9:7443", "--handoff-listen", "10.0.0.1:7700", "--station", "cell-1@91,2"), "want AREA@LATITUDE,LONGITUDE"},
		{append(append(base, certs...), "--pms", "10.0.0.9:7443", "--handoff-listen", "10.0.0.1:7700", "--station", "cell-1"), "want AREA@LATITUDE,LONGITUDE"},
		{append(append(base, certs...), "--discover", "239.77.0.1:7777"), "--discover"},
		{append(append(base, certs...), "--discover", "nonsense", "--handoff-listen", "10.0.0.1:7700"), "--discover"},
	} {
		_, _, err := gatewayConfig(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("gateway %v: %v, want %q", tc.args, err, tc.want)
		}
		largs := append([]string{"--a", "x", "--b", "y"}, tc.args[6:]...)
		if _, err := linkemArgs(largs, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("linkem %v: %v, want %q", largs, err, tc.want)
		}
	}
	fc, _, err := gatewayConfig(append(append(base, certs...), "--handoff-listen", ":7700", "--handoff-peer", "gw-2@10.0.0.2:7700",
		"--handoff-peer", "gw-3@10.0.0.3:7700"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if h := handoffOf(fc); !h.enabled() || h.listen != ":7700" || len(h.peers) != 2 || h.tls.Cert != "gw.crt" {
		t.Fatalf("%+v", h)
	}
	fc, _, err = gatewayConfig(append(append(base, certs...), "--handoff-listen", "10.0.0.1:7700", "--pms", "10.0.0.9:7443",
		"--station", "cell-1@48.85,2.35", "--station", "cell-2@-33.9,151.2", "--discover", "239.77.0.1:7777", "--discover-ttl", "3"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := handoffOf(fc)
	st, err := parseStations(h.stations)
	if err != nil || len(st) != 2 || st[1].Lat != -33.9 || st[1].Lon != 151.2 || h.pms != "10.0.0.9:7443" || h.discover != "239.77.0.1:7777" || h.discoverTTL != 3 {
		t.Fatalf("%+v %+v %v", h, st, err)
	}
}

// TestGatewayIKEKeysFlag: --ike-keys alone is a source of SAs (scheme 2),
// repeatable; without any source the gateway refuses to start.
func TestGatewayIKEKeysFlag(t *testing.T) {
	fc, _, err := gatewayConfig([]string{"--wire", "a", "--radio", "b", "--ike-keys", "x.keys", "--ike-keys", "y.keys"}, io.Discard)
	if err != nil || len(fc.IKEKeyFiles) != 2 || fc.IKEKeyFiles[1] != "y.keys" || len(fc.SAFiles) != 0 {
		t.Fatalf("%+v %v", fc, err)
	}
	if _, _, err := gatewayConfig([]string{"--wire", "a", "--radio", "b"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--ike-keys") {
		t.Fatalf("no source: %v", err)
	}
}
