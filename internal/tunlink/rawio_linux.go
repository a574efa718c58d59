package tunlink

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/espep/espep/internal/offload"
	"github.com/espep/espep/internal/rawfd"
	"github.com/espep/espep/ipsec/header"
	"golang.org/x/sys/unix"
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
	spare       []byte            // the reader's: where a drain reads (virtio header first)
	held        int               // the reader's: a super-packet the drain read into spare, for the next Read
	bad         atomic.Uint64     // packets read that could not be finished, dropped
	readCalls   atomic.Uint64     // read system calls
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
	r.gro.UDP = setUSO(d.File())
	return r
}

// setUSO asks the device for UDP segmentation offload besides TCP's
// (TUN_F_USO4/6, Linux 6.2 on; wireguard-go asks for the same when it
// can) and reports whether the device has it: then datagrams may be
// written coalesced (GSO_UDP_L4).
func setUSO(f *os.File) bool {
	const flags = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags) }); err != nil {
		return false
	}
	return ierr == nil
}

// newRawIO does the I/O of the TUN device whose descriptor (non-blocking,
// polled by the runtime) is f.
func newRawIO(f *os.File) (*rawIO, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tunlink: %w", err)
	}
	r := &rawIO{spare: make([]byte, offload.HdrLen+65536)}
	r.read.Init(rc, syscall.SYS_READ, false)
	r.write.Init(rc, syscall.SYS_WRITE, true)
	return r, nil
}

// Read reads one packet or super-packet into bufs[0] (its virtio header
// in the offset before it: offset must be at least offload.HdrLen) and
// gives the packets it carries in bufs, as tun.Device.Read does. After a
// packet alone it takes, without waiting, what else the device holds, up
// to len(bufs) packets: raw ESP and ESP in UDP come a packet a read, and
// a batch of one is a write of one — under load the batch is now what
// queued while the last was processed, its datagrams written coalesced. A
// super-packet met on the way waits in spare for the next Read. A packet
// that cannot be finished is counted and dropped (0 packets, no error): it
// would not be a reason to stop reading.
func (r *rawIO) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return r.ReadChecked(bufs, sizes, nil, offset)
}

// ReadChecked is Read that also says, in checked[i] (when checked is
// long enough), whether packet i's checksums hold on the kernel's word or
// by the reader's own making: a segment cut from a super-packet (its sums
// made here), a packet whose partial checksum the reader completed at its
// TCP or UDP header, or one the kernel marked verified (DATA_VALID). A
// super-packet or a partial checksum is what the kernel itself made or
// took in intact (GRO merges only what it has verified), so what stands
// in its checksums is what the kernel holds. Every other packet (checked
// false) has the checksums it came with, unverified.
func (r *rawIO) ReadChecked(bufs [][]byte, sizes []int, checked []bool, offset int) (int, error) {
	if offset < offload.HdrLen || len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tunlink: read with offset %d into %d buffers", offset, len(bufs))
	}
	if r.held > 0 {
		b := r.spare[:r.held]
		r.held = 0
		k, _ := r.finish(b, bufs, sizes, checked, offset)
		return k, nil
	}
	n, err := do(&r.read, bufs[0][offset-offload.HdrLen:])
	r.readCalls.Add(1)
	if err != nil {
		return 0, err
	}
	k, alone := r.finish(bufs[0][offset-offload.HdrLen:offset-offload.HdrLen+n], bufs, sizes, checked, offset)
	if !alone {
		return k, nil
	}
	return r.drain(bufs, sizes, checked, offset, k), nil
}

// finish turns b — a virtio header and what follows, read into bufs[0]
// or into spare — into the packets it carries in bufs from index 0, and
// says in checked (if long enough) which of them hold (ReadChecked); alone
// reports a packet that was not a super-packet.
func (r *rawIO) finish(b []byte, bufs [][]byte, sizes []int, checked []bool, offset int) (k int, alone bool) {
	h, err := offload.ParseHdr(b)
	if err != nil {
		r.bad.Add(1)
		return 0, true
	}
	pkt := b[offload.HdrLen:]
	if h.GSOType&^offload.GSOECN == offload.GSONone {
		ok := h.Flags&offload.DataValid != 0
		if h.Flags&offload.NeedsCsum != 0 {
			if offload.CompleteChecksum(pkt, h.CsumStart, h.CsumOffset) != nil {
				r.bad.Add(1)
				return 0, true
			}
			ok = ok || atL4(pkt, h.CsumStart, h.CsumOffset)
		}
		if len(pkt) > len(bufs[0])-offset {
			r.bad.Add(1)
			return 0, true
		}
		if unsafe.SliceData(pkt) != unsafe.SliceData(bufs[0][offset:]) {
			copy(bufs[0][offset:], pkt) // drained into spare
		}
		sizes[0] = len(pkt)
		if len(checked) > 0 {
			checked[0] = ok
		}
		return 1, true
	}
	k, err = offload.SegmentInto(h, pkt, bufs, offset, sizes)
	if err != nil {
		r.bad.Add(1)
		return 0, false
	}
	for i := range min(k, len(checked)) {
		checked[i] = true
	}
	return k, false
}

// atL4 reports whether a partial checksum completed at start+off was the
// packet's TCP or UDP checksum: start its transport header (no IPv4
// options skipped over, no IPv6 extension header), off that protocol's
// checksum field. Anywhere else, the packet's own sums stay to be checked.
func atL4(pkt []byte, start, off int) bool {
	var l4 int
	var proto byte
	switch {
	case len(pkt) >= header.IPv4MinLen && pkt[0]>>4 == 4:
		l4, proto = int(pkt[0]&0xf)*4, pkt[9]
	case len(pkt) >= header.IPv6Len && pkt[0]>>4 == 6:
		l4, proto = header.IPv6Len, pkt[6]
	default:
		return false
	}
	return start == l4 && (proto == header.ProtoTCP && off == 16 || proto == header.ProtoUDP && off == 6)
}

// drain reads into spare, without waiting, until the device is empty,
// bufs are full from k on, or a super-packet comes (held for the next
// Read: the buffers left may be too few for its segments); each packet
// alone is finished into the next of bufs (one that cannot be, counted
// and dropped as Read's own). It returns the packets in bufs now. An error
// ends it; the next Read's waiting read meets it.
func (r *rawIO) drain(bufs [][]byte, sizes []int, checked []bool, offset, k int) int {
	for k < len(bufs) {
		n, errno, err := r.read.Try(unsafe.Pointer(unsafe.SliceData(r.spare)), uintptr(len(r.spare)))
		r.readCalls.Add(1)
		if err != nil || errno != 0 || n == 0 {
			return k
		}
		h, err := offload.ParseHdr(r.spare[:n])
		if err == nil && (h.GSOType&^offload.GSOECN != offload.GSONone || n-offload.HdrLen > len(bufs[k])-offset) {
			r.held = n
			return k
		}
		got, _ := r.finish(r.spare[:n], bufs[k:], sizes[k:], checked[min(k, len(checked)):], offset)
		k += got
	}
	return k
}

// Write writes bufs (each a packet after offset bytes of headroom, at
// least offload.HdrLen): a flow's segments coalesced into super-packets
// (growing in their first segment's buffer, up to its capacity), each
// write after its virtio header. It returns how many writes succeeded and
// the first error.
func (r *rawIO) Write(bufs [][]byte, offset int) (int, error) {
	return r.WriteSums(bufs, nil, offset)
}

// WriteSums is Write where sums[i] says what stands in packet i's
// checksums (offload.Coalescer.CoalesceSums).
func (r *rawIO) WriteSums(bufs [][]byte, sums []offload.Sum, offset int) (int, error) {
	if offset < offload.HdrLen {
		return 0, fmt.Errorf("tunlink: write with offset %d", offset)
	}
	r.out = r.gro.CoalesceSums(bufs, sums, offset, r.out[:0])
	var first error
	n := 0
	r.writeCalls.Add(uint64(len(r.out)))
	for _, i := range r.out {
		if _, err := do(&r.write, bufs[i][offset-offload.HdrLen:]); err != nil {
			if errors.Is(err, unix.EINVAL) && bufs[i][offset-offload.HdrLen+1] == offload.GSOUDPL4 {
				r.gro.UDP = false // a device that refuses them after all: datagrams alone from now on
			}
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

// ReadCalls is how many read system calls the batches took.
func (r *rawIO) ReadCalls() uint64 { return r.readCalls.Load() }

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
