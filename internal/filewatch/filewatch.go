// Package filewatch tells a daemon when files it reads may have changed,
// without waking it while they have not: on Linux, inotify on the files'
// directories (so that a file replaced by a rename, as editors and
// configuration tools do, is seen too); elsewhere, or where inotify
// fails, a ticker. It says "may have": the reader compares what it reads
// with what it had. It is not for following a file's appends.
//
// Why: a gateway at a radio's rate is idle most of the time, and every
// wake-up costs (a thread woken, the runtime's monitor woken with it); an
// SA file checked every 200 ms was a tenth of the gateway's idle CPU
// and the most frequent of its wake-ups.
package filewatch

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"
)

// Watch sends on the returned channel (capacity one; signals coalesce)
// whenever one of paths may have changed, and every poll in any case (a
// safety net for what inotify does not see: a symbolic link moved to
// another target after Watch, a network file system), until ctx ends. A
// path that is a symbolic link is watched at its target too. Where the
// platform cannot watch, it sends every fallback instead.
func Watch(ctx context.Context, paths []string, poll, fallback time.Duration, log *slog.Logger) <-chan struct{} {
	ch := make(chan struct{}, 1)
	names := map[string]map[string]bool{} // directory → base names watched in it
	var all []string
	for _, p := range paths {
		all = append(all, p)
		if t, err := filepath.EvalSymlinks(p); err == nil && t != filepath.Clean(p) {
			all = append(all, t)
		}
	}
	for _, p := range all {
		dir, base := filepath.Split(filepath.Clean(p))
		if dir == "" {
			dir = "."
		}
		if names[dir] == nil {
			names[dir] = map[string]bool{}
		}
		names[dir][base] = true
	}
	every := poll
	if err := watchDirs(ctx, names, ch); err != nil {
		if log != nil {
			log.Debug("filewatch: no change notification; polling", "every", fallback, "err", err)
		}
		every = fallback
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				notify(ch)
			}
		}
	}()
	return ch
}

// notify signals ch without blocking: a signal pending already covers
// this change.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
