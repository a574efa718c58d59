package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// want fails unless ch signals within a few seconds.
func want(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no signal after %s", what)
	}
}

// quiet fails if ch signals within a short while.
func quiet(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("a signal after %s", what)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestWatch: a watched file written in place, replaced by a rename,
// removed and made again is each time signalled; another file of the same
// directory is not; nothing is left running after ctx ends.
func TestWatch(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("inotify is Linux's")
	}
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	sa := filepath.Join(dir, "gw.sa")
	if err := os.WriteFile(sa, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := Watch(ctx, []string{sa}, time.Hour, time.Hour, nil)
	quiet(t, ch, "nothing")
	os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o600)
	quiet(t, ch, "another file written")
	os.WriteFile(sa, []byte("two"), 0o600)
	want(t, ch, "a write in place")
	tmp := filepath.Join(dir, ".gw.sa.tmp")
	os.WriteFile(tmp, []byte("three"), 0o600)
	quiet(t, ch, "a temporary file written")
	os.Rename(tmp, sa)
	want(t, ch, "a rename over it")
	os.Remove(sa)
	want(t, ch, "its removal")
	os.WriteFile(sa, []byte("four"), 0o600)
	want(t, ch, "its creation")
	cancel()
}

// TestWatchSymlink: a watched path that is a symbolic link to a file in
// another directory is signalled when that file is written.
func TestWatchSymlink(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("inotify is Linux's")
	}
	defer goleak.VerifyNone(t)
	target := filepath.Join(t.TempDir(), "esp_sa")
	if err := os.WriteFile(target, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "gw.sa")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := Watch(ctx, []string{link}, time.Hour, time.Hour, nil)
	quiet(t, ch, "nothing")
	f, err := os.OpenFile(target, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("two") // as strongSwan's save-keys appends
	f.Close()
	want(t, ch, "an append to the link's target")
	cancel()
}

// TestWatchFallback: where the directory cannot be watched (it does not
// exist) the channel signals every fallback period.
func TestWatchFallback(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := Watch(ctx, []string{filepath.Join(t.TempDir(), "none", "gw.sa")}, time.Hour, 10*time.Millisecond, nil)
	for range 3 {
		want(t, ch, "a fallback period")
	}
	cancel()
}

// TestWatchPoll: with inotify working, the poll still signals.
func TestWatchPoll(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := Watch(ctx, []string{filepath.Join(t.TempDir(), "gw.sa")}, 10*time.Millisecond, time.Hour, nil)
	want(t, ch, "a poll period")
	cancel()
}
