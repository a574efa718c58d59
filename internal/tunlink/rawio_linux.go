package tunlink

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/espep/espep/internal/offload"
	"github.com/espep/espep/internal/rawfd"
	"golang.zx2c4.com/wireguard/tun"
)

// Why the link makes a device's system calls itself.
//
// At a radio's rate a TUN device carries a packet (an ACK, mostly) every
// few hundred microseconds, each its own read. The Go runtime wraps an
// ordinary system call in entersyscall/exitsyscall, and entersyscall wakes
// the runtime's monitor thread (sysmon) whenever every P was idle — which,
// between such packets, they always are; sysmon then polls every 20 µs
// until they are idle again. Measured through the gateway at 20 Mbit/s,
// that and the scheduler's hand-offs around it were a sixth of its CPU.
// A read or write on a non-blocking TUN descriptor returns at once (EAGAIN
// when there is nothing), so it is made with RawSyscall, outside the
// runtime's bookkeeping, and the wait for readability is the runtime
// poller's (syscall.RawConn), as before. Package offload does what the
// virtio_net_hdr asks of a read (a checksum completed, a GSO super-packet
// cut into segments) and, for a batch written, coalesces each flow's
// segments into one super-packet (GRO), as wireguard-go's device did: at
// full rate that makes a write of dozens of packets cost about one.

// rawIO is one device's packet I/O with the device's virtio_net_hdr on
// (tun.Device.BatchSize > 1). One goroutine reads and one at a time
// writes (the side's batch lock), so each direction's call state is its
// own and needs no lock.
type rawIO struct {
	read, write rawfd.Op
	gro         offload.Coalescer // the writer's
	out         []int             // the writer's: what Coalesce says to write
	bad         atomic.Uint64     // packets read that could not be finished, dropped
	writeCalls  atomic.Uint64     // write system calls (super-packets and packets alone)
}

// newIO returns the I/O for d: rawIO when d has its virtio header on and
// a descriptor the runtime polls, else d itself.
func newIO(d tun.Device) packetIO {
	if d.BatchSize() <= 1 || d.File() == nil {
		return d
	}
	r, err := newRawIO(d.File())
	if err != nil {
		return d
	}
	return r
}

// newRawIO does the I/O of the TUN device whose descriptor (non-blocking,
// polled by the runtime) is f.
func newRawIO(f *os.File) (*rawIO, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tunlink: %w", err)
	}
	r := &rawIO{}
	r.read.Init(rc, syscall.SYS_READ, false)
	r.write.Init(rc, syscall.SYS_WRITE, true)
	return r, nil
}

// Read reads one packet or super-packet into bufs[0] (its virtio header
// in the offset before it: offset must be at least offload.HdrLen) and
// gives the packets it carries in bufs, as tun.Device.Read does. A packet
// that cannot be finished is counted and dropped (0 packets, no error):
// it would not be a reason to stop reading.
func (r *rawIO) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < offload.HdrLen || len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tunlink: read with offset %d into %d buffers", offset, len(bufs))
	}
	n, err := do(&r.read, bufs[0][offset-offload.HdrLen:])
	if err != nil {
		return 0, err
	}
	h, err := offload.ParseHdr(bufs[0][offset-offload.HdrLen : offset-offload.HdrLen+n])
	if err != nil {
		r.bad.Add(1)
		return 0, nil
	}
	pkt := bufs[0][offset : offset-offload.HdrLen+n]
	if h.GSOType&^offload.GSOECN == offload.GSONone {
		if h.Flags&offload.NeedsCsum != 0 && offload.CompleteChecksum(pkt, h.CsumStart, h.CsumOffset) != nil {
			r.bad.Add(1)
			return 0, nil
		}
		sizes[0] = len(pkt)
		return 1, nil
	}
	k, err := offload.SegmentInto(h, pkt, bufs, offset, sizes)
	if err != nil {
		r.bad.Add(1)
		return 0, nil
	}
	return k, nil
}

// Write writes bufs (each a packet after offset bytes of headroom, at
// least offload.HdrLen): a flow's segments coalesced into super-packets
// (growing in their first segment's buffer, up to its capacity), each
// write after its virtio header. It returns how many writes succeeded and
// the first error.
func (r *rawIO) Write(bufs [][]byte, offset int) (int, error) {
	if offset < offload.HdrLen {
		return 0, fmt.Errorf("tunlink: write with offset %d", offset)
	}
	r.out = r.gro.Coalesce(bufs, offset, r.out[:0])
	var first error
	n := 0
	r.writeCalls.Add(uint64(len(r.out)))
	for _, i := range r.out {
		if _, err := do(&r.write, bufs[i][offset-offload.HdrLen:]); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		n++
	}
	return n, first
}

// Dropped is how many packets read could not be finished.
func (r *rawIO) Dropped() uint64 { return r.bad.Load() }

// WriteCalls is how many write system calls the batches took.
func (r *rawIO) WriteCalls() uint64 { return r.writeCalls.Load() }

// do reads into p or writes p with op, waiting in the runtime's poller
// while the descriptor is not ready. A closed device (the poller's error,
// or EBADFD once the device is gone) is os.ErrClosed.
func do(op *rawfd.Op, p []byte) (int, error) {
	n, errno, err := op.Do(unsafe.Pointer(unsafe.SliceData(p)), uintptr(len(p)))
	switch {
	case err != nil:
		return 0, fmt.Errorf("tunlink: %w (%v)", os.ErrClosed, err)
	case errno == syscall.EBADFD:
		return 0, os.ErrClosed
	case errno != 0:
		return 0, errno
	}
	return n, nil
}
