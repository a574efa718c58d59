package filewatch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The events that may change what a file holds or which file a name
// names; a file's in-place writes are seen when it is closed.
const events = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// watchDirs watches the directories of names with one inotify descriptor
// and signals ch when an event names a watched file (or may have: the
// queue overflowed, a directory itself moved), until ctx ends.
func watchDirs(ctx context.Context, names map[string]map[string]bool, ch chan struct{}) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	wds := map[int32]map[string]bool{}
	for dir, base := range names {
		wd, err := unix.InotifyAddWatch(fd, dir, events)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("inotify %s: %w", dir, err)
		}
		wds[int32(wd)] = base
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: read through the runtime's poller
	go func() {
		<-ctx.Done()
		f.Close() // ends the read below
	}()
	go func() {
		buf := make([]byte, 16<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrClosed) {
					notify(ch) // the watch is gone: let the reader look; the poll goes on
				}
				return
			}
			if relevant(buf[:n], wds) {
				notify(ch)
			}
		}
	}()
	return nil
}

// relevant reports whether a read of inotify events names a watched file
// of its directory (wds: watch descriptor → base names), or may have
// missed one (the queue overflowed, a directory went, the read is
// malformed). Each event is (inotify(7)): wd int32, mask, cookie, len
// uint32, then len bytes of NUL-padded name.
func relevant(b []byte, wds map[int32]map[string]bool) bool {
	for len(b) > 0 {
		if len(b) < unix.SizeofInotifyEvent {
			return true
		}
		wd := int32(binary.NativeEndian.Uint32(b[0:]))
		mask := binary.NativeEndian.Uint32(b[4:])
		l := int(binary.NativeEndian.Uint32(b[12:]))
		b = b[unix.SizeofInotifyEvent:]
		if l < 0 || l > len(b) {
			return true
		}
		name := b[:l]
		b = b[l:]
		if mask&(unix.IN_Q_OVERFLOW|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0 {
			return true
		}
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		if wds[wd][string(name)] {
			return true
		}
	}
	return false
}
