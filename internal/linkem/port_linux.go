//go:build linux

package linkem

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/espep/espep/internal/offload"
	"golang.org/x/sys/unix"
)

// port is an AF_PACKET socket bound to one interface, in promiscuous mode,
// blind to the frames it sends itself.
type port struct {
	name string
	fd   int
	mtu  int
	c    portCounters
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openPort(name string) (*port, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("linkem: interface %s: %w", name, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("linkem: packet socket on %s (needs CAP_NET_RAW): %w", name, err)
	}
	p := &port{name: name, fd: fd, mtu: ifi.MTU}
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
	// Wake up now and then to notice cancellation.
	tv := unix.Timeval{Usec: 200_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("receive timeout", err)
	}
	for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 4<<20) // best effort
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
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
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
	return nil
}

// noOffload is the virtio_net_hdr of a finished frame.
var noOffload [offload.HdrLen]byte

func (p *port) write(f []byte) {
	if _, err := unix.Writev(p.fd, [][]byte{noOffload[:], f}); err != nil {
		p.c.txErrors.Add(1)
		return
	}
	p.c.txFrames.Add(1)
	p.c.txBytes.Add(uint64(len(f)))
}

func (p *port) close() { unix.Close(p.fd) }
