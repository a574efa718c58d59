package engine

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// TestOptions: each setting is set by its name in a file and by its flag
// alike, and refuses a bad value.
func TestOptions(t *testing.T) {
	good := map[string]string{"mode": "split", "cc": "reno", "dupacks": "swallow", "buffer-per-flow": "2MiB", "buffer-total": "1GiB",
		"cache-per-flow": "512KiB", "cache-total": "64MiB", "max-flows": "1000", "max-plain-flows": "10", "max-local-rexmits": "3",
		"shards": "4", "min-rto": "10ms", "max-rto": "2s", "give-up": "1m", "idle-timeout": "5m", "handshake-timeout": "10s", "tail-probes": "no"}
	if len(good) != len(Options) {
		t.Fatalf("%d options, %d tested", len(Options), len(good))
	}
	var fromFile Config
	var args []string
	for name, v := range good {
		if err := fromFile.Set(name, v); err != nil {
			t.Fatalf("%s = %s: %v", name, v, err)
		}
		if err := (&Config{}).Set(name, "nonsense"); err == nil {
			t.Errorf("%s = nonsense accepted", name)
		}
		args = append(args, "--"+name, v)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	var fromFlags Config
	if err := f.Apply(&fromFlags); err != nil {
		t.Fatal(err)
	}
	if fromFile != fromFlags || fromFile.Mode != ModeSplit || fromFile.BufferPerFlow != 2<<20 || fromFile.MinRTO != 10*time.Millisecond || !fromFile.NoTailProbes {
		t.Fatalf("file %+v\nflags %+v", fromFile, fromFlags)
	}
	if err := (&Config{}).Set("warp-speed", "9"); err != ErrUnknownOption {
		t.Fatalf("unknown setting: %v", err)
	}
	if err := fs.Parse([]string{"--mode", "fast"}); err == nil || !strings.Contains(err.Error(), "want split or snoop") {
		t.Fatalf("bad flag: %v", err)
	}
}
