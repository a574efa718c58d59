package acklog

import (
	"os"
	"syscall"
	"unsafe"
)

// pwrite writes b at off in f with raw pwrite(2) calls, outside the Go
// runtime's system-call bookkeeping.
//
// Why: the engine commits a batch's records before it sends the ACK that
// covers them, so at a radio's rate a commit comes after every burst,
// when every P has been idle. An ordinary Go system call made then wakes
// the runtime's sysmon, which polls every 20 µs for a millisecond — the
// cost package rawfd avoids for the TUN devices. Through the TUN gateway
// at 20 Mbit/s (tunbench, 2026-12-04, alternated) the journal's ordinary
// writes put the process on a CPU 190–256 times a second instead of
// ~90 and cost 6.2–10.3 ms of CPU per MB instead of 4.0–4.2 without a
// journal; raw, 93–101 times and 4.3–5.7 ms.
//
// The price: a write the kernel makes wait (dirty-page throttling, the
// file system's journal) holds its thread and P without the runtime
// knowing, so with one P nothing else in the process runs meanwhile. The
// slots are written over in place, a batch at a time, into pages already
// cached: over ~60,000 writes a run at 3 Gbit/s the longest took 0.1–2.4
// ms (about one in 300 over 100 µs), at 20 Mbit/s under 0.3 ms — and the
// shard whose records they are waits for the write either way. (Package
// rawfd keeps raw calls to descriptors that cannot block; this is the
// exception, for the reason above.)
func pwrite(f *os.File, b []byte, off int64) (int, error) {
	fd := f.Fd()
	done := 0
	for done < len(b) {
		r, _, e := syscall.RawSyscall6(syscall.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&b[done])), uintptr(len(b)-done), uintptr(off+int64(done)), 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return done, &os.PathError{Op: "pwrite", Path: f.Name(), Err: e}
		case r == 0:
			return done, &os.PathError{Op: "pwrite", Path: f.Name(), Err: syscall.EIO} // no progress: never loop
		}
		done += int(r)
	}
	return done, nil
}
