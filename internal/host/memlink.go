package host

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/espep/espep/ipsec"
)

// MemLink is a link in memory, for running hosts without root (tests,
// in-process networks): what is put in Tun is what the kernel routed into
// the TUN, what is put in Net arrived from the network; what the host
// delivers and sends is kept until Take (and sent on to Peer's Net, if
// there is one). An error put in Fail ends the host's Run with it.
type MemLink struct {
	Tun, Net chan []byte
	Fail     chan error
	Peer     *MemLink

	barrier chan chan struct{} // answered by run between packets (Drained)

	mu        sync.Mutex
	delivered [][]byte // into the TUN
	sent      [][]byte // onto the network
	closed    bool
}

// NewMemLink makes a MemLink; NewWithLink runs a host on it.
func NewMemLink() *MemLink {
	return &MemLink{Tun: make(chan []byte, 64), Net: make(chan []byte, 64), Fail: make(chan error, 1), barrier: make(chan chan struct{})}
}

// NewWithLink is New on a link in memory instead of the platform's.
func NewWithLink(cfg *Config, log *slog.Logger, m *MemLink) (*Host, error) {
	h, err := newHost(cfg, log)
	if err != nil {
		return nil, err
	}
	h.link = m
	return h, nil
}

func (m *MemLink) run(ctx context.Context, h *Host) error {
	const off = ipsec.MaxHeadroom
	buf := make([]byte, off+65536+ipsec.MaxTailroom)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-m.Fail:
			return err
		case done := <-m.barrier:
			close(done)
		case p := <-m.Tun:
			b := buf[:off+len(p)+ipsec.MaxTailroom]
			copy(b[off:], p)
			if out, _ := h.outbound(b[:off+len(p)], off, len(p)); out != nil {
				m.send(out)
			}
		case p := <-m.Net:
			b := buf[:off+len(p)]
			copy(b[off:], p)
			if start, end := h.inbound(b, off); end > 0 {
				m.deliver(b[start:end])
			}
		}
	}
}

// Drained waits until the host's loop is between packets with nothing
// queued on Tun or Net, so that everything put there before the call has
// been handled (and sent on to Peer's Net). It reports false if the loop
// does not answer within d (the host is not running). A test that reads
// the host's counters after Drained of both ends of a link sees the
// effect of every packet it queued, however slow the machine is.
func (m *MemLink) Drained(d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		done := make(chan struct{})
		select {
		case m.barrier <- done:
		case <-deadline.C:
			return false
		}
		<-done
		if len(m.Tun) == 0 && len(m.Net) == 0 {
			return true
		}
	}
}

func (m *MemLink) deliver(pkt []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.delivered = append(m.delivered, append([]byte(nil), pkt...))
}

func (m *MemLink) send(pkt []byte) {
	m.mu.Lock()
	m.sent = append(m.sent, append([]byte(nil), pkt...))
	m.mu.Unlock()
	if m.Peer != nil {
		m.Peer.Net <- append([]byte(nil), pkt...)
	}
}

func (m *MemLink) close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Take returns what the host delivered into the TUN and sent onto the
// network since the last Take.
func (m *MemLink) Take() (delivered, sent [][]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delivered, sent, m.delivered, m.sent = m.delivered, m.sent, nil, nil
	return delivered, sent
}

// Closed reports whether the host closed the link.
func (m *MemLink) Closed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}
