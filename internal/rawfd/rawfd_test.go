//go:build linux

package rawfd

import (
	"bytes"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func pair(t *testing.T) (*os.File, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "seqpacket")
	t.Cleanup(func() { f.Close(); unix.Close(fds[1]) })
	return f, fds[1]
}

func ops(t *testing.T, f *os.File) (rd, wr *Op) {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rd, wr = new(Op), new(Op)
	rd.Init(rc, syscall.SYS_READ, false)
	wr.Init(rc, syscall.SYS_WRITE, true)
	return rd, wr
}

func buf(p []byte) (unsafe.Pointer, uintptr) {
	return unsafe.Pointer(unsafe.SliceData(p)), uintptr(len(p))
}

// TestOp: a read waits in the poller until there is something, then
// returns it; a write goes out; a closed descriptor ends a waiting read
// with the poller's error; neither call allocates.
func TestOp(t *testing.T) {
	f, peer := pair(t)
	rd, wr := ops(t, f)
	got := make(chan []byte, 1)
	b := make([]byte, 100)
	go func() {
		n, errno, err := rd.Do(buf(b))
		if err != nil || errno != 0 {
			t.Errorf("read: %v %v", err, errno)
		}
		got <- b[:n]
	}()
	time.Sleep(20 * time.Millisecond) // the read waits in the poller
	if _, err := unix.Write(peer, []byte("frame")); err != nil {
		t.Fatal(err)
	}
	if g := <-got; string(g) != "frame" {
		t.Fatalf("read %q", g)
	}

	out := []byte("reply")
	if n, errno, err := wr.Do(buf(out)); n != len(out) || errno != 0 || err != nil {
		t.Fatalf("write: %d %v %v", n, errno, err)
	}
	in := make([]byte, 100)
	if n, err := unix.Read(peer, in); err != nil || !bytes.Equal(in[:n], out) {
		t.Fatalf("the peer read %q, %v", in[:n], err)
	}

	// Try does not wait: EAGAIN at once on an empty socket, the frame
	// when there is one.
	if n, errno, err := rd.Try(buf(b)); errno != unix.EAGAIN || err != nil {
		t.Fatalf("try on nothing: %d %v %v", n, errno, err)
	}
	unix.Write(peer, []byte("more"))
	if n, errno, err := rd.Try(buf(b)); errno != 0 || err != nil || string(b[:n]) != "more" {
		t.Fatalf("try: %q %v %v", b[:n], errno, err)
	}

	if a := testing.AllocsPerRun(100, func() {
		wr.Do(buf(out))
		unix.Read(peer, in)
		unix.Write(peer, out)
		rd.Do(buf(b))
		rd.Try(buf(b))
	}); a != 0 {
		t.Fatalf("%.1f allocations per write and read", a)
	}

	done := make(chan error, 1)
	go func() {
		_, _, err := rd.Do(buf(b))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	f.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a read waiting on a closed descriptor returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the descriptor did not end the waiting read")
	}
}
