package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
)

// TestJournalSwitch: journal = no in the file or --journal=false turns
// split's journal off, a flag given overrides the file; with it off the
// journal is still opened (a start reads what the process before left)
// but the engine does not write to it.
func TestJournalSwitch(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "gateway.conf")
	if err := os.WriteFile(conf, []byte("espep-gateway 1\njournal = no\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--wire", "a", "--radio", "b", "--sa", "x.sa"}
	for _, tc := range []struct {
		args []string
		off  bool
	}{
		{nil, false},
		{[]string{"--journal=false"}, true},
		{[]string{"--config", conf}, true},
		{[]string{"--config", conf, "--journal=true"}, false},
	} {
		fc, _, err := gatewayConfig(append(append([]string{}, base...), tc.args...), io.Discard)
		if err != nil || fc.NoJournal != tc.off {
			t.Errorf("%v: journal off %v (want %v), %v", tc.args, fc != nil && fc.NoJournal, tc.off, err)
		}
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	state, err := openState(filepath.Join(dir, "state"), statedir.Partition{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer closeState(state, log)
	j, err := openJournal(state, engine.ModeSplit, log)
	if err != nil || j == nil {
		t.Fatalf("split with a state directory: journal %v, %v", j, err)
	}
	defer j.Close()
	var off, on engine.Config
	useJournal(&off, j, false, log)
	useJournal(&on, j, true, log)
	if off.Journal != nil || on.Journal == nil {
		t.Fatalf("the engine's journal: off %v, on %v", off.Journal, on.Journal)
	}
}
