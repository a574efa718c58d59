//go:build linux

package linkem

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/espep/espep/internal/offload"
	"github.com/espep/espep/internal/rawfd"
	"golang.org/x/sys/unix"
)

// port is an AF_PACKET socket bound to one interface, in promiscuous mode,
// blind to the frames it sends itself.
//
// Its socket is non-blocking and polled by the runtime, and its reads and
// writes are raw system calls (package rawfd), for the reason tunlink's are:
// an ordinary Go system call — worse, a blocking one, which the runtime's
// sysmon must notice to hand its P on — wakes sysmon at every frame of a
// trickle. A read that finds nothing waits in the poller; a write the
// socket cannot take yet (EAGAIN) waits for it there. One goroutine
// reads; writers, one at a time (wmu), come from the links and the engine.
type port struct {
	name string
	f    *os.File // the socket
	mtu  int
	c    portCounters

	rd rawfd.Op // the reader's

	wmu sync.Mutex
	wr  rawfd.Op      // under wmu
	iov [2]unix.Iovec // under wmu: the virtio header and the frame
}

// newPort makes a port of f, a packet socket (or, in tests, any file).
func newPort(name string, f *os.File, mtu int) (*port, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("linkem: %s: %w", name, err)
	}
	p := &port{name: name, f: f, mtu: mtu}
	p.rd.Init(rc, syscall.SYS_READ, false)
	p.wr.Init(rc, syscall.SYS_WRITEV, true)
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openPort(name string) (*port, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("linkem: interface %s: %w", name, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("linkem: packet socket on %s (needs CAP_NET_RAW): %w", name, err)
	}
	fail := func(what string, err error) (*port, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("linkem: %s on %s: %w", what, name, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return fail("bind", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fail("ignore outgoing", err)
	}
	// Every frame with a virtio_net_hdr before it, which says what the
	// interface's offloads left unfinished (offload.go): the interfaces
	// keep their default offloads.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fail("virtio_net_hdr", err)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return fail("promiscuous mode", err)
	}
	for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 4<<20) // best effort
	}
	// Non-blocking when made a file: the runtime's poller takes it.
	p, err := newPort(name, os.NewFile(uintptr(fd), "packet:"+name), ifi.MTU)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return p, nil
}

// readLoop hands every frame read to send until ctx is done, each
// finished as the wire would carry it (checksums whole, super-frames cut
// into segments). The frame is the port's buffer, lent for the call:
// send must copy what it keeps (Bridge.sendOn does, for a link that
// queues).
func (p *port) readLoop(ctx context.Context, send func([]byte)) error {
	buf := make([]byte, offload.HdrLen+65536+18)
	scratch := make([]byte, 65536+18) // a super-frame's segments, one at a time
	emit := func(f []byte) {
		if len(f) > p.mtu+18 { // Ethernet header and one VLAN tag
			p.c.oversize.Add(1)
		}
		send(f) // borrowed: valid until send returns (see Bridge.sendOn)
	}
	// The read waiting in the poller ends when ctx does.
	defer context.AfterFunc(ctx, func() { p.f.SetReadDeadline(time.Now()) })()
	for {
		n, errno, err := p.rd.Do(unsafe.Pointer(unsafe.SliceData(buf)), uintptr(len(buf)))
		if err == nil && errno != 0 {
			err = errno
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("linkem: read %s: %w", p.name, err)
		}
		p.c.rxFrames.Add(1)
		p.c.rxBytes.Add(uint64(n))
		h, err := offload.ParseHdr(buf[:n])
		if err != nil {
			p.c.offloadErrors.Add(1)
			continue
		}
		frame := buf[offload.HdrLen:n]
		csum, segs, err := offload.Finish(h, frame, offload.EtherLen(frame), scratch, emit)
		switch {
		case err != nil:
			p.c.offloadErrors.Add(1) // dropped: forwarded, the receiver would drop it
		case csum:
			p.c.checksummed.Add(1)
		case segs > 0:
			p.c.segmented.Add(1)
		}
	}
}

// noOffload is the virtio_net_hdr of a finished frame.
var noOffload [offload.HdrLen]byte

// write sends frame f (finished: no offloads asked of the kernel).
func (p *port) write(f []byte) {
	if len(f) == 0 {
		return
	}
	p.wmu.Lock()
	p.iov[0] = unix.Iovec{Base: &noOffload[0]}
	p.iov[0].SetLen(len(noOffload))
	p.iov[1] = unix.Iovec{Base: unsafe.SliceData(f)}
	p.iov[1].SetLen(len(f))
	_, errno, err := p.wr.Do(unsafe.Pointer(&p.iov[0]), uintptr(len(p.iov)))
	if err == nil && errno != 0 {
		err = errno
	}
	p.iov[1] = unix.Iovec{} // keep no reference to the frame
	p.wmu.Unlock()
	if err != nil {
		p.c.txErrors.Add(1)
		return
	}
	p.c.txFrames.Add(1)
	p.c.txBytes.Add(uint64(len(f)))
}

func (p *port) close() { p.f.Close() }
