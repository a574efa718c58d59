package fdclock

import (
	"net"
	"sync"
	"time"
)

// goAlarm is an alarm made of a runtime timer: where there is no timerfd,
// or it failed.
type goAlarm struct {
	t      *time.Timer
	ring   chan struct{} // one pending ring at most
	closed chan struct{}
	once   sync.Once
}

func newGoAlarm() *goAlarm {
	a := &goAlarm{ring: make(chan struct{}, 1), closed: make(chan struct{})}
	a.t = time.AfterFunc(time.Hour, func() {
		select {
		case a.ring <- struct{}{}:
		default:
		}
	})
	a.t.Stop()
	return a
}

func (a *goAlarm) set(d time.Duration) error {
	if d <= 0 {
		a.t.Stop()
		return nil
	}
	a.t.Reset(d)
	return nil
}

func (a *goAlarm) wait() error {
	select {
	case <-a.ring:
		return nil
	case <-a.closed:
		return net.ErrClosed
	}
}

func (a *goAlarm) close() error {
	a.t.Stop()
	a.once.Do(func() { close(a.closed) })
	return nil
}
