//go:build linux

package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/espep/espep/internal/tundev"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Mark is the firewall mark on espep host's own packets, and the routing
// table that holds the TUN routes.
const Mark = 0xe5e5

// linuxLink is the host's link on Linux: a TUN device the protected
// destinations are routed into (table Mark, which every packet without
// the mark consults first), a marked raw socket per family that sends
// what the host made, and raw sockets for ESP and AH and a UDP socket for
// ESP in UDP that receive.
type linuxLink struct {
	cfg *Config
	log *slog.Logger
	tun tun.Device

	send4, esp4, ah4, udp4 int
	send6, esp6, ah6, udp6 int        // -1 when IPv6 is not available
	rules                  [][]string // ip commands to undo on close
}

// openLink creates the TUN device, opens the sockets and installs the
// routes and rules; on failure it undoes what it did.
func openLink(cfg *Config, log *slog.Logger) (link, error) {
	k := &linuxLink{cfg: cfg, log: log, send4: -1, esp4: -1, ah4: -1, udp4: -1, send6: -1, esp6: -1, ah6: -1, udp6: -1}
	var err error
	if k.tun, err = tundev.Create(cfg.TUN, cfg.MTU); err != nil {
		return nil, fmt.Errorf("host: tun %s: %w", cfg.TUN, err)
	}
	if err := k.openSockets(); err != nil {
		k.close()
		return nil, err
	}
	if err := k.setupRoutes(); err != nil {
		k.close()
		return nil, err
	}
	return k, nil
}

// run starts a reader per device and socket and returns when ctx ends or
// the first of them fails, having stopped the others (the TUN reader by
// closing the device; the socket readers see ctx within their 200 ms
// receive timeout).
func (k *linuxLink) run(ctx context.Context, h *Host) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	start := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	start(func(ctx context.Context) error { return k.tunLoop(ctx, h) })
	start(func(ctx context.Context) error { return k.rawLoop(ctx, h, k.esp4) })
	start(func(ctx context.Context) error { return k.rawLoop(ctx, h, k.ah4) })
	if k.udp4 >= 0 {
		start(func(ctx context.Context) error { return k.udpLoop(ctx, h, k.udp4, false) })
	}
	if k.esp6 >= 0 {
		start(func(ctx context.Context) error { return k.raw6Loop(ctx, h, k.esp6, header.ProtoESP) })
		start(func(ctx context.Context) error { return k.raw6Loop(ctx, h, k.ah6, header.ProtoAH) })
	}
	if k.udp6 >= 0 {
		start(func(ctx context.Context) error { return k.udpLoop(ctx, h, k.udp6, true) })
	}
	<-ctx.Done()
	k.tun.Close() // unblocks the TUN reader
	wg.Wait()
	close(errc)
	return <-errc
}

// close removes the routes and rules, closes the device and sockets.
func (k *linuxLink) close() error {
	for _, r := range k.rules {
		ip(r...)
	}
	k.rules = nil
	if k.tun != nil {
		k.tun.Close()
	}
	for _, fd := range []*int{&k.send4, &k.esp4, &k.ah4, &k.udp4, &k.send6, &k.esp6, &k.ah6, &k.udp6} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	return nil
}

func (k *linuxLink) openSockets() error {
	var err error
	// Sending: one IPv4 raw socket with our own headers, marked.
	if k.send4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		return fmt.Errorf("host: raw socket (needs CAP_NET_RAW): %w", err)
	}
	if err := unix.SetsockoptInt(k.send4, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return fmt.Errorf("host: SO_MARK: %w", err)
	}
	// Receiving: ESP and AH as raw IP (the kernel delivers the IPv4
	// header too), ESP in UDP on the NAT-T port.
	for _, x := range []struct {
		fd    *int
		proto int
	}{{&k.esp4, unix.IPPROTO_ESP}, {&k.ah4, unix.IPPROTO_AH}} {
		if *x.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, x.proto); err != nil {
			return fmt.Errorf("host: raw socket for protocol %d: %w", x.proto, err)
		}
		if err := setTimeout(*x.fd); err != nil {
			return err
		}
	}
	if k.cfg.UDPPort != 0 {
		if k.udp4, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return fmt.Errorf("host: udp socket: %w", err)
		}
		unix.SetsockoptInt(k.udp4, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(k.udp4, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return fmt.Errorf("host: IP_PKTINFO: %w", err)
		}
		if err := unix.Bind(k.udp4, &unix.SockaddrInet4{Port: k.cfg.UDPPort}); err != nil {
			return fmt.Errorf("host: bind udp %d: %w", k.cfg.UDPPort, err)
		}
		if err := k.setUDP(k.udp4); err != nil {
			return err
		}
	}
	if err := k.openSockets6(); err != nil {
		k.log.Warn("IPv6 not available: IPv4 only", "err", err)
		for _, fd := range []*int{&k.send6, &k.esp6, &k.ah6, &k.udp6} {
			if *fd >= 0 {
				unix.Close(*fd)
				*fd = -1
			}
		}
	}
	return nil
}

// openSockets6 opens the IPv6 counterparts. IPv6 raw sockets do not hand
// over the IPv6 header, so the receivers ask for the destination address
// (IPV6_RECVPKTINFO) and rebuild one.
func (k *linuxLink) openSockets6() error {
	var err error
	if k.send6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(k.send6, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
		return fmt.Errorf("IPV6_HDRINCL: %w", err)
	}
	if err := unix.SetsockoptInt(k.send6, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return err
	}
	for _, x := range []struct {
		fd    *int
		proto int
	}{{&k.esp6, unix.IPPROTO_ESP}, {&k.ah6, unix.IPPROTO_AH}} {
		if *x.fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, x.proto); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(*x.fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return err
		}
		if err := setTimeout(*x.fd); err != nil {
			return err
		}
	}
	if k.cfg.UDPPort != 0 {
		if k.udp6, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		unix.SetsockoptInt(k.udp6, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		unix.SetsockoptInt(k.udp6, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(k.udp6, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return err
		}
		if err := unix.Bind(k.udp6, &unix.SockaddrInet6{Port: k.cfg.UDPPort}); err != nil {
			return fmt.Errorf("bind udp6 %d: %w", k.cfg.UDPPort, err)
		}
		if err := k.setUDP(k.udp6); err != nil {
			return err
		}
	}
	return nil
}

// setUDP readies a socket for ESP in UDP: the receive timeout, the mark
// (it sends runs of datagrams the host sealed, which must not be routed
// back into the TUN), and joined reads (UDP_GRO: a run of datagrams in one
// read; without it, a kernel that has one does the cutting at the socket).
func (k *linuxLink) setUDP(fd int) error {
	if err := setTimeout(fd); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return fmt.Errorf("host: SO_MARK: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
		k.log.Info("host: UDP_GRO not available: ESP in UDP is read a datagram at a time", "err", err)
	}
	return nil
}

func setTimeout(fd int) error {
	tv := unix.Timeval{Usec: 200_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("host: SO_RCVTIMEO: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	return nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupRoutes brings the TUN up with its addresses and puts the protected
// destinations in table Mark, which every packet without the mark
// consults first.
func (k *linuxLink) setupRoutes() error {
	name, _ := k.tun.Name()
	table := strconv.Itoa(Mark)
	steps := [][]string{{"link", "set", name, "up", "mtu", strconv.Itoa(k.cfg.MTU)}}
	for _, a := range k.cfg.Addrs {
		steps = append(steps, []string{"addr", "add", a.String(), "dev", name})
	}
	for _, r := range k.cfg.Routes {
		steps = append(steps, []string{"route", "add", r.String(), "dev", name, "table", table})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("host: %w", err)
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		rule := []string{fam, "rule", "add", "not", "fwmark", strconv.Itoa(Mark), "lookup", table, "pref", "5000"}
		del := append([]string(nil), rule...)
		del[2] = "del"
		// A predecessor killed with SIGKILL left its rule behind (its TUN,
		// and the routes on it, went with it): take it away first, so that
		// a restart is a normal event.
		for i := 0; i < 4 && ip(del...) == nil; i++ {
		}
		if err := ip(rule...); err != nil {
			return fmt.Errorf("host: %w", err)
		}
		k.rules = append(k.rules, del)
	}
	return nil
}

// tunLoop reads what the kernel routes into the TUN, applies the SPD,
// and sends what that makes, a read's batch at a time.
func (k *linuxLink) tunLoop(ctx context.Context, h *Host) error {
	const off = ipsec.MaxHeadroom + 16
	n := k.tun.BatchSize()
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, off+65535+ipsec.MaxTailroom)
	}
	tx := newTxBatch(k, &h.c, n)
	for {
		for i := range bufs {
			bufs[i] = bufs[i][:cap(bufs[i])-ipsec.MaxTailroom]
		}
		cnt, err := k.tun.Read(bufs, sizes, off)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				continue
			}
			return fmt.Errorf("host: tun read: %w", err)
		}
		for i := 0; i < cnt; i++ {
			if out, sealed := h.outbound(bufs[i][:off+sizes[i]], off, sizes[i]); out != nil {
				tx.add(out, sealed)
			}
		}
		tx.flush()
	}
}

// readErr sorts a receive error: a timeout or an interrupt is retried (the
// loop then checks ctx), an error while stopping ends the loop quietly,
// anything else ends it with the error.
func readErr(ctx context.Context, what string, err error) (retry bool, _ error) {
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
		return true, nil
	case ctx.Err() != nil:
		return false, nil
	}
	return false, fmt.Errorf("host: %s read: %w", what, err)
}

// sockLoop reads packets from a socket into rx's slots with read until
// nothing more is queued or the batch is full, then writes what opened
// into the TUN. read takes the slots it keeps (rx.used) and returns the
// read's error. What is pending when ctx ends is dropped: the TUN is
// being closed.
func (k *linuxLink) sockLoop(ctx context.Context, what string, rx *rxBatch, need int, read func() error) error {
	for ctx.Err() == nil {
		if rx.used+need > rxSlots {
			rx.flush()
		}
		if err := read(); err != nil {
			if rx.used > 0 && wouldWait(err) {
				rx.flush() // drained: now wait
				continue
			}
			if retry, err := readErr(ctx, what, err); !retry {
				return err
			}
		}
	}
	return nil
}

// rawLoop reads ESP or AH packets (IPv4 header included) and opens them.
func (k *linuxLink) rawLoop(ctx context.Context, h *Host, fd int) error {
	rx := newRxBatch(k.tun, &h.c)
	return k.sockLoop(ctx, "raw", rx, 1, func() error {
		buf := rx.slot(0)
		n, _, err := rx.recv(fd, buf[64:])
		if err != nil {
			return err
		}
		open(h, rx, buf[:64+n])
		return nil
	})
}

// open opens a packet received into rx's next slot (64 bytes of headroom)
// and queues what comes out for the TUN; the slot is kept only then.
func open(h *Host, rx *rxBatch, buf []byte) {
	if start, end := h.inbound(buf, 64); end > 0 {
		rx.deliver(buf, start, end)
		rx.used++
	}
}

// udpLoop reads ESP in UDP (RFC 3948) — datagrams the kernel may have
// joined (UDP_GRO) — and rebuilds the IP and UDP headers the kernel took
// off each, so that it opens as it was sent.
func (k *linuxLink) udpLoop(ctx context.Context, h *Host, fd int, v6 bool) error {
	hl := header.IPv4MinLen + header.UDPLen
	if v6 {
		hl = header.IPv6Len + header.UDPLen
	}
	rx := newRxBatch(k.tun, &h.c)
	return k.sockLoop(ctx, "udp", rx, rxSegs, func() error {
		first := rx.slot(0)
		n, oobn, err := rx.recv(fd, first[64+hl:])
		if err != nil {
			return err
		}
		src, sport, ok := getSockaddr(&rx.name)
		dst, seg := control(rx.oob[:oobn])
		if !ok || !dst.IsValid() {
			h.c.add(cNotOurs)
			return nil
		}
		// The joined datagrams after the first go to slots of their own,
		// each with room for its headers; then each is opened.
		segs, seg, ok := joined(n, seg, rxSegs)
		if !ok {
			h.c.add(cNotOurs) // empty, or more than the kernel joins
			return nil
		}
		for i := 0; i < segs; i++ {
			buf, size := rx.slot(i), min(seg, n-i*seg)
			if i > 0 {
				copy(buf[64+hl:], first[64+hl+i*seg:64+hl+i*seg+size])
			}
			pkt := buf[64 : 64+hl+size]
			if v6 {
				header.WriteIPv6(pkt, 0, 0, header.UDPLen+size, header.ProtoUDP, 64, src, dst)
				header.WriteUDP(pkt[header.IPv6Len:], sport, uint16(k.cfg.UDPPort), header.UDPLen+size)
			} else {
				header.WriteIPv4(pkt, 0, len(pkt), 0, false, 64, header.ProtoUDP, src, dst)
				header.WriteUDP(pkt[header.IPv4MinLen:], sport, uint16(k.cfg.UDPPort), header.UDPLen+size)
			}
		}
		for i := 0; i < segs; i++ {
			buf := rx.slots[rx.used]
			if start, end := h.inbound(buf[:64+hl+min(seg, n-i*seg)], 64); end > 0 {
				rx.deliver(buf, start, end)
			}
			rx.used++
		}
		return nil
	})
}

// raw6Loop reads ESP or AH from an IPv6 raw socket, which delivers the
// packet without its IPv6 header, and rebuilds the header (extension
// headers, if there were any, are gone: AH over them would not verify).
func (k *linuxLink) raw6Loop(ctx context.Context, h *Host, fd int, proto uint8) error {
	rx := newRxBatch(k.tun, &h.c)
	return k.sockLoop(ctx, "raw6", rx, 1, func() error {
		buf := rx.slot(0)
		n, oobn, err := rx.recv(fd, buf[64+header.IPv6Len:])
		if err != nil {
			return err
		}
		src, _, ok := getSockaddr(&rx.name)
		dst, _ := control(rx.oob[:oobn])
		if !ok || !dst.IsValid() {
			h.c.add(cNotOurs)
			return nil
		}
		header.WriteIPv6(buf[64:], 0, 0, n, proto, 64, src, dst)
		open(h, rx, buf[:64+header.IPv6Len+n])
		return nil
	})
}
