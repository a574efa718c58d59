//go:build unix

// Package rawfd makes the reads and writes of a non-blocking descriptor
// that the Go runtime polls as raw system calls (RawSyscall), waiting in
// the runtime's poller while the descriptor would block. It is for
// packet daemons at a trickle: an ordinary Go system call made while
// every P is idle wakes the runtime's sysmon, which then polls every
// 20 µs for a millisecond — after every packet of a radio's rate (see
// package tunlink's rawio_linux.go for what that cost). It is not for
// calls that may block in the kernel: those need the runtime's
// bookkeeping.
package rawfd

import (
	"syscall"
	"unsafe"
)

// Op is one kind of call on a descriptor — read, write, writev: the
// system call, and its argument and results kept here, so that the
// function the runtime's poller calls is made once and no call
// allocates. One goroutine at a time uses an Op.
type Op struct {
	rc    syscall.RawConn
	trap  uintptr
	write bool // waits for writability, not readability
	fn    func(fd uintptr) bool
	wait  bool           // during a call: wait on EAGAIN (Do), or not (Try)
	ptr   unsafe.Pointer // the call's buffer (or iovec array), during a call
	len   uintptr
	r     int
	errno syscall.Errno
}

// Init sets o to make system call trap (arguments: the descriptor, a
// pointer, a length) on rc's descriptor, waiting for it to be writable if
// write, else readable.
func (o *Op) Init(rc syscall.RawConn, trap uintptr, write bool) {
	o.rc, o.trap, o.write = rc, trap, write
	o.fn = o.call // bound once: no allocation per call
}

// Do makes the call with ptr and n, retried on EINTR and waited for in
// the poller on EAGAIN. err is the poller's (the descriptor closed, a
// deadline passed); otherwise errno is the call's and r its result.
func (o *Op) Do(ptr unsafe.Pointer, n uintptr) (r int, errno syscall.Errno, err error) {
	return o.run(true, ptr, n)
}

// Try is Do without the wait: a descriptor that would block gives errno
// EAGAIN at once.
func (o *Op) Try(ptr unsafe.Pointer, n uintptr) (r int, errno syscall.Errno, err error) {
	return o.run(false, ptr, n)
}

func (o *Op) run(wait bool, ptr unsafe.Pointer, n uintptr) (r int, errno syscall.Errno, err error) {
	o.wait, o.ptr, o.len, o.r, o.errno = wait, ptr, n, 0, 0
	if o.write {
		err = o.rc.Write(o.fn)
	} else {
		err = o.rc.Read(o.fn)
	}
	o.ptr = nil // keep no reference to the caller's memory
	return o.r, o.errno, err
}

// call makes the system call; false (wait for the descriptor) on EAGAIN
// if the call waits.
func (o *Op) call(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(o.trap, fd, uintptr(o.ptr), o.len)
		switch {
		case e == syscall.EINTR:
			continue
		case e == syscall.EAGAIN && o.wait:
			return false
		}
		o.r, o.errno = int(r), e
		return true
	}
}
