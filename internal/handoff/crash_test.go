package handoff

import (
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/acklog"
	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/statedir"
)

// TestCrashMidTransfer: TestRestartMidTransfer's download, whose gateway
// dies halfway without a word — no flows handed on, its engine closed as
// a killed process's memory goes — and a new gateway on the same state
// directory takes the bytes the first acknowledged early from its
// journal (package acklog). The file arrives intact and neither router
// refuses a packet. Without the journal the download stalls: its sender
// has let go of what the receiver never got.
func TestCrashMidTransfer(t *testing.T) {
	n := newTunnelNet(t)
	dir := t.TempDir()
	path, logDir := filepath.Join(dir, "state"), filepath.Join(dir, "state", "acklog")
	start := func() (*gateway.Gateway, *statedir.Dir, *acklog.Log) {
		st := openState(t, path)
		j, err := acklog.Open(logDir, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		n.journal = j
		return n.gateway(t, st, n.ab, n.ba), st, j
	}
	g1, st1, j1 := start()
	var io sync.RWMutex
	cur := g1
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		io.RLock()
		defer io.RUnlock()
		cur.Process(from, pkt)
	})
	done := n.download(t, func() bool { return g1.Stats().Opened >= 1000 })
	io.Lock()
	held := buffered(g1.Engine().Export(false))
	g1.Close() // no hand-over: the engine's flows go, its journal's files stay
	j1.Close()
	st1.Close()
	if held == 0 {
		io.Unlock()
		t.Fatal("the gateway held no bytes when it died")
	}
	time.Sleep(200 * time.Millisecond)
	g2, st2, j2 := start()
	defer st2.Close()
	defer j2.Close()
	defer g2.Close()
	rec, err := ResumeAfterCrash(j2, g2, time.Now(), slog.New(slog.DiscardHandler))
	cur = g2
	io.Unlock()
	if err != nil || rec.Flows != 1 || rec.Bytes < held || rec.Damaged != 0 {
		t.Fatalf("recovered %+v, the gateway held %d bytes: %v", rec, held, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	n.refusedNothing(t)
	s2 := g2.Stats()
	if s2.Sealed == 0 || s2.Engine.JournalFailed != 0 {
		t.Errorf("the new gateway: %+v", s2)
	}
	// Until the endpoints' first packets show the routes, the resumed
	// flow's packets have none; when one does, they go again at once.
	if s2.NoRoute > 0 && s2.Retries == 0 {
		t.Errorf("the new gateway dropped %d packets for want of a route and never retried", s2.NoRoute)
	}
	t.Logf("no route for %d packets, %d retries", s2.NoRoute, s2.Retries)
	t.Logf("the dead gateway held %d bytes acknowledged early; its journal gave back %+v", held, rec)
}
