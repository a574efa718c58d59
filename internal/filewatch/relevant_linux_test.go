package filewatch

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// event is one inotify event as the kernel writes it, its name padded.
func event(wd int32, mask uint32, name string, pad int) []byte {
	b := make([]byte, unix.SizeofInotifyEvent+len(name)+pad)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(len(name)+pad))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

var watched = map[int32]map[string]bool{1: {"gw.sa": true}, 2: {"ike.keys": true}}

// TestRelevant: the events of a watched name count, in any position of a
// read; others do not; an overflow, a directory gone, a short or
// over-long event count (something may have been missed).
func TestRelevant(t *testing.T) {
	cat := func(bs ...[]byte) (out []byte) {
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"empty", nil, false},
		{"watched", event(1, unix.IN_CLOSE_WRITE, "gw.sa", 3), true},
		{"watched, no padding", event(2, unix.IN_MOVED_TO, "ike.keys", 0), true},
		{"other name", event(1, unix.IN_CLOSE_WRITE, "gw.sa.tmp", 7), false},
		{"other directory's name", event(2, unix.IN_CLOSE_WRITE, "gw.sa", 3), false},
		{"unknown watch", event(9, unix.IN_CLOSE_WRITE, "gw.sa", 3), false},
		{"second of three", cat(event(1, unix.IN_CREATE, "x", 15), event(2, unix.IN_DELETE, "ike.keys", 8), event(1, unix.IN_CREATE, "y", 3)), true},
		{"overflow", event(-1, unix.IN_Q_OVERFLOW, "", 0), true},
		{"directory moved", event(1, unix.IN_MOVE_SELF, "", 0), true},
		{"short header", event(1, unix.IN_CLOSE_WRITE, "gw.sa", 3)[:10], true},
		{"name past the end", event(1, unix.IN_CLOSE_WRITE, "gw.sa", 3)[:unix.SizeofInotifyEvent+4], true},
	} {
		if got := relevant(tc.b, watched); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzRelevant: whatever a read holds, relevant returns.
func FuzzRelevant(f *testing.F) {
	f.Add(event(1, unix.IN_CLOSE_WRITE, "gw.sa", 3))
	f.Add(append(event(2, unix.IN_MOVED_TO, "ike.keys", 0), event(1, unix.IN_CREATE, "x", 15)...))
	f.Add(event(1, unix.IN_CLOSE_WRITE, "gw.sa", 3)[:20])
	b := event(1, unix.IN_CLOSE_WRITE, "gw.sa", 3)
	binary.NativeEndian.PutUint32(b[12:], 0xffffffff) // a length that overflows int32
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) { relevant(b, watched) })
}
