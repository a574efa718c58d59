package linkem

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/espep/espep/internal/offload"
	"golang.org/x/sys/unix"
)

// TestPortIO: a port's reads and writes, on a SOCK_SEQPACKET pair standing
// in for its packet socket (no root): frames after their virtio header
// are handed on finished, a write goes out after an empty header, the
// read waits in the poller, and cancelling ends the read loop at once —
// there is no receive timeout to wait for.
func TestPortIO(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "seqpacket")
	peer := fds[1]
	t.Cleanup(func() { f.Close(); unix.Close(peer) })
	p, err := newPort("seqpacket", f, 1500)
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, etherLen+60)
	frame[12], frame[13] = 0x08, 0x00
	copy(frame[etherLen:], []byte{0x45, 0, 0, 60, 0, 1, 0x40, 0, 64, 17})
	got := make(chan []byte, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.readLoop(ctx, func(b []byte) { got <- append([]byte(nil), b...) }) }()

	time.Sleep(20 * time.Millisecond) // the loop is waiting in the poller
	var hdr [offload.HdrLen]byte
	if _, err := unix.Write(peer, append(hdr[:], frame...)); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, frame) {
			t.Fatalf("read % x", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the frame was not read")
	}

	p.write(frame)
	out := make([]byte, 200)
	n, err := unix.Read(peer, out)
	if err != nil || n != offload.HdrLen+len(frame) || !bytes.Equal(out[:offload.HdrLen], hdr[:]) || !bytes.Equal(out[offload.HdrLen:n], frame) {
		t.Fatalf("written: %d bytes, %v", n, err)
	}
	if st := p.c.snapshot(); st.RxFrames != 1 || st.TxFrames != 1 || st.TxErrors != 0 {
		t.Fatalf("counters %+v", st)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read loop: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("the read loop took %v to end", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read loop did not end with its context")
	}
}
