package gateway

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec/safile"
)

// p0 is the last element of a path.
func p0(p string) string { return filepath.Base(p) }

func TestFileConfig(t *testing.T) {
	c, err := LoadFileConfig("testdata/gateway.conf")
	if err != nil {
		t.Fatal(err)
	}
	e := c.Gateway.Engine
	abs, _ := filepath.Abs("testdata")
	rel := func(p string) bool { return p == filepath.Join("testdata", p0(p)) || p == filepath.Join(abs, p0(p)) }
	if c.Wire != "eth0" || c.Radio != "tun:espep-radio" || c.Metrics != "127.0.0.1:9465" || len(c.SAFiles) != 2 ||
		!rel(c.SAFiles[0]) || c.SAFiles[1] != "/etc/espep/more.sa" || !rel(c.StateDir) || c.IVPartition != (statedir.Partition{K: 3, N: 8}) {
		t.Errorf("interfaces and files: %+v", c)
	}
	if !c.NoJournal {
		t.Error("journal = no: NoJournal not set")
	}
	if len(c.IKEKeyFiles) != 2 || !rel(c.IKEKeyFiles[0]) || c.IKEKeyFiles[1] != "/etc/espep/more.keys" {
		t.Errorf("IKE key files: %v", c.IKEKeyFiles)
	}
	if ss := c.SecServer; ss.Addr != "secserver.example:7443" || !strings.HasSuffix(ss.Cert, filepath.Join("testdata", "pki", "gw1.crt")) ||
		!filepath.IsAbs(ss.Key) && !strings.HasPrefix(ss.Key, "testdata") || ss.CA != "/etc/espep/pki/ca.crt" ||
		!strings.HasSuffix(ss.CRL, filepath.Join("testdata", "pki", "ca.crl")) || !ss.Read {
		t.Errorf("security server: %+v", ss)
	}
	if !c.Gateway.Plain || c.Gateway.SeqJump != 1000 || c.Gateway.DrainIdle != 45*time.Second {
		t.Errorf("gateway settings: %+v", c.Gateway)
	}
	want := engine.Config{Mode: engine.ModeSnoop, CC: engine.CCReno, BufferPerFlow: 8 << 20, BufferTotal: 1e9, CachePerFlow: 512e3,
		MaxFlows: 1000, MinRTO: 30 * time.Millisecond, MaxRTO: 2 * time.Second, GiveUp: 90 * time.Second,
		IdleTimeout: 5 * time.Minute, MaxLocalRexmits: 4, DupAcks: engine.DupAcksForward,
		HandshakeTimeout: 20 * time.Second, MaxPlainFlows: 300, CacheTotal: 64 << 20}
	if e != want {
		t.Errorf("engine settings\n got %+v\nwant %+v", e, want)
	}
	eng, err := engine.New(e, nil)
	if err != nil {
		t.Errorf("the engine refuses the file's settings: %v", err)
	} else {
		eng.Close()
	}
}

// TestFileConfigDefaults: a file that names nothing gives the command
// line's defaults (split mode).
func TestFileConfigDefaults(t *testing.T) {
	c, err := ParseFileConfig(strings.NewReader("espep-gateway 1\n"), "t.conf")
	if err != nil {
		t.Fatal(err)
	}
	if c.Gateway.Engine.Mode != engine.ModeSplit || c.Gateway.Plain || c.Wire != "" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestFileConfigErrors(t *testing.T) {
	for _, tc := range []struct{ text, field string }{
		{"", ""},
		{"espep-gateway 2\n", ""},
		{"espep-gateway 1\nmode = fast\n", "mode"},
		{"espep-gateway 1\nmode\n", ""},
		{"espep-gateway 1\nbuffer-total = 4XB\n", "buffer-total"},
		{"espep-gateway 1\nbuffer-total = 100GiB\n", "buffer-total"},
		{"espep-gateway 1\nbuffer-total = -1\n", "buffer-total"},
		{"espep-gateway 1\nmin-rto = soon\n", "min-rto"},
		{"espep-gateway 1\nseq-jump = -5\n", "seq-jump"},
		{"espep-gateway 1\nplain = maybe\n", "plain"},
		{"espep-gateway 1\ncolour = blue\n", "colour"},
		{"espep-gateway 1\nwire = a\nwire = b\n", "wire"},
		{"espep-gateway 1\nwire = " + strings.Repeat("x", 5000) + "\n", ""},
		{"espep-gateway 1\nbuffer-per-flow = 1k\n", ""}, // the engine's bounds
		{"espep-gateway 1\nmin-rto = 2s\nmax-rto = 1s\n", ""},
		{"espep-gateway 1\niv-partition = 8/8\n", "iv-partition"},
		{"espep-gateway 1\nstate-dir = a\nstate-dir = b\n", "state-dir"},
	} {
		_, err := ParseFileConfig(strings.NewReader(tc.text), "t.conf")
		var fe *safile.Error
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%.40q: error %v, want one on field %q", tc.text, err, tc.field)
		}
	}
}

// FuzzFileConfig: the parser returns a configuration or an error, never
// panics, and whatever it accepts a gateway takes too.
func FuzzFileConfig(f *testing.F) {
	f.Add("espep-gateway 1\nmode = split\nbuffer-total = 1GiB\n")
	f.Add("espep-gateway 1\nseq-jump = 0\nmin-rto = 1ns\nmax-rto = 24h\n")
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseFileConfig(strings.NewReader(text), "fuzz")
		if err != nil {
			return
		}
		if _, err := New(c.Gateway, nil, func(engine.Side, []byte) {}); err != nil {
			t.Fatalf("accepted %q, the gateway refuses it: %v", text, err)
		}
	})
}

// TestFileConfigHandoff: handoff-listen and pms once, handoff-peer and
// station as often as there are neighbours and base stations.
func TestFileConfigHandoff(t *testing.T) {
	c, err := ParseFileConfig(strings.NewReader("espep-gateway 1\nwire = a\nradio = b\nhandoff-listen = 10.99.0.1:7700\n"+
		"handoff-peer = gw-2@10.99.0.2:7700\nhandoff-peer = gw-3@10.99.0.3:7700\npms = 10.0.0.9:7443\n"+
		"station = cell-1@48.85,2.35\nstation = cell-2@48.86,2.36\ndiscover = 239.77.0.1:7777\ndiscover-ttl = 3\ndiscover-iface = eth1\n"), "x")
	if err != nil {
		t.Fatal(err)
	}
	if c.HandoffListen != "10.99.0.1:7700" || len(c.HandoffPeers) != 2 || c.HandoffPeers[1] != "gw-3@10.99.0.3:7700" ||
		c.PMS != "10.0.0.9:7443" || len(c.Stations) != 2 || c.Stations[1] != "cell-2@48.86,2.36" ||
		c.Discover != "239.77.0.1:7777" || c.DiscoverTTL != 3 || c.DiscoverIface != "eth1" {
		t.Fatalf("%+v", c)
	}
	if _, err := ParseFileConfig(strings.NewReader("espep-gateway 1\nhandoff-listen = a:1\nhandoff-listen = b:2\n"), "x"); err == nil {
		t.Fatal("handoff-listen twice taken")
	}
	for _, bad := range []string{"discover-ttl = 0", "discover-ttl = 256", "discover-ttl = x"} {
		if _, err := ParseFileConfig(strings.NewReader("espep-gateway 1\n"+bad+"\n"), "x"); err == nil {
			t.Fatalf("%q taken", bad)
		}
	}
}
