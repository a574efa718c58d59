package fdclock

import (
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/espep/espep/internal/rawfd"
	"golang.org/x/sys/unix"
)

// fdAlarm is a timerfd (CLOCK_MONOTONIC, non-blocking) in the runtime's
// poller. Its system calls are RawSyscalls (the read through package
// rawfd): an ordinary one wakes the runtime's monitor thread when every P
// was idle, which is what this clock is for avoiding.
type fdAlarm struct {
	f  *os.File
	rc syscall.RawConn
	// set's, under the clock's lock: its argument and result, and the
	// function the descriptor is controlled with, bound once — no
	// allocation per call.
	spec    unix.ItimerSpec
	setErr  syscall.Errno
	setCall func(fd uintptr)
	// wait's, on the clock's goroutine: the read, and the expiration count.
	rd  rawfd.Op
	buf [8]byte
}

func newAlarm() (alarm, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	a := &fdAlarm{f: f, rc: rc}
	a.setCall = a.settime
	a.rd.Init(rc, syscall.SYS_READ, false)
	return a, nil
}

func (a *fdAlarm) set(d time.Duration) error {
	a.spec = unix.ItimerSpec{}
	if d > 0 {
		a.spec.Value = unix.NsecToTimespec(int64(d))
	}
	a.setErr = 0
	if err := a.rc.Control(a.setCall); err != nil {
		return err
	}
	if a.setErr != 0 {
		return fmt.Errorf("timerfd_settime: %w", a.setErr)
	}
	return nil
}

func (a *fdAlarm) settime(fd uintptr) {
	_, _, a.setErr = syscall.RawSyscall6(unix.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&a.spec)), 0, 0, 0)
}

// wait parks in the runtime's poller until the timerfd has expired.
func (a *fdAlarm) wait() error {
	_, errno, err := a.rd.Do(unsafe.Pointer(&a.buf[0]), uintptr(len(a.buf)))
	if err != nil {
		return err
	}
	if errno != 0 {
		return fmt.Errorf("timerfd read: %w", errno)
	}
	return nil
}

func (a *fdAlarm) close() error { return a.f.Close() }
