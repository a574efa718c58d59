//go:build linux

package host

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/espep/espep/ipsec/header"
)

// Batched I/O of the Linux link. Ownership: each reading goroutine of
// the link owns one batch (a txBatch for the TUN reader, an rxBatch for
// each socket reader); a batch's buffers stay with it until it is
// flushed, which every loop does before it blocks in a read again.

// txBatch holds the packets one TUN read made for the network and sends
// them: runs of ESP-in-UDP datagrams through the UDP socket as one
// segmented send (gso.go), the rest one by one through the raw socket.
type txBatch struct {
	k   *linuxLink
	c   *counters
	dgs []datagram // in order; a packet that is not a datagram has only pkt
	gso bool       // cleared when the kernel refuses segmented sends

	iov  []unix.Iovec
	oob  []byte
	name unix.RawSockaddrAny
	msg  unix.Msghdr
}

func newTxBatch(k *linuxLink, c *counters, n int) *txBatch {
	return &txBatch{k: k, c: c, dgs: make([]datagram, 0, n), gso: k.udp4 >= 0 || k.udp6 >= 0,
		iov: make([]unix.Iovec, maxGSOSegs), oob: make([]byte, 128)}
}

// add queues pkt (held, not copied: it must stay until flush); sealed
// says the host made it, so that it may leave through the UDP socket.
func (t *txBatch) add(pkt []byte, sealed bool) {
	t.dgs = append(t.dgs, datagram{pkt: pkt})
	d := &t.dgs[len(t.dgs)-1]
	if !sealed || !t.gso || !asDatagram(pkt, uint16(t.k.cfg.UDPPort), d) {
		d.payload = nil
	}
}

// flush sends what add queued and empties the batch.
func (t *txBatch) flush() {
	for i := 0; i < len(t.dgs); {
		n := 1
		if t.gso && t.dgs[i].payload != nil {
			n = gsoRun(t.dgs[i:])
		}
		if n < 2 || !t.sendRun(t.dgs[i:i+n]) {
			for _, d := range t.dgs[i : i+n] {
				if !t.sendRaw(d.pkt) {
					t.c.add(cSendErrors)
				}
			}
		}
		i += n
	}
	clear(t.dgs) // drop the references into the read buffers
	t.dgs = t.dgs[:0]
}

// sendRun sends a run of datagrams in one sendmsg with UDP_SEGMENT and
// reports whether it is done with them (sent, or failed in a way sending
// them one by one would not mend). A kernel that cannot segment them
// turns segmented sends off; one too big for the path's MTU is sent one
// by one.
func (t *txBatch) sendRun(run []datagram) bool {
	d := &run[0]
	fd := t.k.udp4
	if d.dst.Is6() {
		fd = t.k.udp6
	}
	if fd < 0 {
		return false
	}
	for i := range run {
		t.iov[i].Base = &run[i].payload[0]
		t.iov[i].SetLen(len(run[i].payload))
	}
	t.msg = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&t.name)), Iov: &t.iov[0], Control: &t.oob[0]}
	t.msg.Namelen = putSockaddr(&t.name, d.dst, d.dport)
	t.msg.SetIovlen(len(run))
	t.msg.SetControllen(t.putCmsgs(d))
	_, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&t.msg)), 0)
	clear(t.iov[:len(run)])
	t.c.add(cNetSends)
	switch {
	case errno == 0:
		return true
	case errno == unix.EMSGSIZE:
		return false
	case errno == unix.EIO || errno == unix.EINVAL || errno == unix.ENOPROTOOPT || errno == unix.EOPNOTSUPP:
		t.gso = false
		t.k.log.Warn("host: segmented UDP send refused: ESP in UDP leaves one datagram a system call from now on", "err", errno)
		return false
	}
	for range run {
		t.c.add(cSendErrors)
	}
	return true
}

// sendRaw puts an IP packet with its own header on the network through
// the raw socket of its family (the kernel routes it by the destination
// given, which is the header's: only those bytes are read here).
func (t *txBatch) sendRaw(pkt []byte) bool {
	var fd int
	var dst netip.Addr
	switch {
	case len(pkt) >= header.IPv4MinLen && pkt[0]>>4 == 4:
		fd, dst = t.k.send4, netip.AddrFrom4([4]byte(pkt[16:20]))
	case len(pkt) >= header.IPv6Len && pkt[0]>>4 == 6:
		fd, dst = t.k.send6, netip.AddrFrom16([16]byte(pkt[24:40]))
	default:
		return false
	}
	if fd < 0 {
		return false
	}
	namelen := putSockaddr(&t.name, dst, 0)
	t.c.add(cNetSends)
	_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)), 0,
		uintptr(unsafe.Pointer(&t.name)), uintptr(namelen))
	return errno == 0
}

// putCmsgs writes the control messages of a run's send into t.oob: the
// segment size, the source address (IP_PKTINFO; the socket is bound to
// the port only) and the TOS or traffic class, and returns their length.
func (t *txBatch) putCmsgs(d *datagram) int {
	var seg [2]byte
	binary.NativeEndian.PutUint16(seg[:], uint16(len(d.payload)))
	off := putCmsg(t.oob, unix.SOL_UDP, unix.UDP_SEGMENT, seg[:])
	var tos [4]byte
	binary.NativeEndian.PutUint32(tos[:], uint32(d.tos))
	if d.src.Is4() {
		var pi [12]byte // struct in_pktinfo: ifindex, spec_dst (the source), addr
		a := d.src.As4()
		copy(pi[4:8], a[:])
		off += putCmsg(t.oob[off:], unix.IPPROTO_IP, unix.IP_PKTINFO, pi[:])
		off += putCmsg(t.oob[off:], unix.IPPROTO_IP, unix.IP_TOS, tos[:])
	} else {
		var pi [20]byte // struct in6_pktinfo: addr (the source), ifindex
		a := d.src.As16()
		copy(pi[:16], a[:])
		off += putCmsg(t.oob[off:], unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, pi[:])
		off += putCmsg(t.oob[off:], unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tos[:])
	}
	return off
}

// putCmsg writes one control message at the start of b and returns the
// room it takes.
func putCmsg(b []byte, level, typ int, data []byte) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return unix.CmsgSpace(len(data))
}

// putSockaddr writes addr:port as a sockaddr and returns its length.
func putSockaddr(sa *unix.RawSockaddrAny, addr netip.Addr, port uint16) uint32 {
	if addr.Is4() {
		s := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*s = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: addr.As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&s.Port))[:], port)
		return unix.SizeofSockaddrInet4
	}
	s := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	*s = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: addr.As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&s.Port))[:], port)
	return unix.SizeofSockaddrInet6
}

// getSockaddr reads the address and port of a received sockaddr.
func getSockaddr(sa *unix.RawSockaddrAny) (netip.Addr, uint16, bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		s := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrFrom4(s.Addr), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&s.Port))[:]), true
	case unix.AF_INET6:
		s := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrFrom16(s.Addr), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&s.Port))[:]), true
	}
	return netip.Addr{}, 0, false
}

// Receiving: a socket reader reads until nothing more is queued (the
// first read waits, the next ones do not) or its batch is full, opens
// each packet, and writes what opened into the TUN in one write, where
// the TUN's offloads join a flow's segments (GRO) as the kernel's own
// IPsec would hand them up.

const (
	rxSlots = 128                 // packets a batch holds
	rxSegs  = 64                  // most datagrams the kernel joins for one read (UDP_GRO)
	rxRoom  = 64 + 40 + 8 + 65536 // a slot: headroom, the headers rebuilt, a payload
	tunOff  = 16                  // headroom a TUN write needs (its virtio header)
)

// rxBatch holds the opened packets of one reader's round until one TUN
// write takes them.
type rxBatch struct {
	tun   tun.Device
	c     *counters
	slots [][]byte // allocated as first needed
	used  int      // slots taken this round
	out   [][]byte // opened packets, each at tunOff

	// recvmsg's arguments, kept so that a read allocates nothing
	iov  unix.Iovec
	oob  []byte
	name unix.RawSockaddrAny
	msg  unix.Msghdr
}

func newRxBatch(t tun.Device, c *counters) *rxBatch {
	return &rxBatch{tun: t, c: c, slots: make([][]byte, rxSlots), out: make([][]byte, 0, rxSlots), oob: make([]byte, 128)}
}

// slot returns the i-th free slot, whole.
func (r *rxBatch) slot(i int) []byte {
	s := r.slots[r.used+i]
	if s == nil {
		s = make([]byte, rxRoom)
		r.slots[r.used+i] = s
	}
	return s
}

// deliver queues buf[start:end], an opened packet in a slot, for the
// TUN (start ≥ tunOff).
func (r *rxBatch) deliver(buf []byte, start, end int) {
	r.out = append(r.out, buf[start-tunOff:end])
}

// flush writes the queued packets into the TUN and frees the slots.
func (r *rxBatch) flush() {
	if len(r.out) > 0 {
		r.c.add(cTunWrites)
		if _, err := r.tun.Write(r.out, tunOff); err != nil {
			r.c.add(cTunWriteErrors)
		}
	}
	clear(r.out)
	r.out = r.out[:0]
	r.used = 0
}

// recv reads one packet (or one joined run of datagrams) into p, with its
// source address in r.name and its control messages in r.oob[:oobn]; it
// waits only when the batch is empty.
func (r *rxBatch) recv(fd int, p []byte) (n, oobn int, err error) {
	flags := 0
	if r.used > 0 {
		flags = unix.MSG_DONTWAIT
	}
	r.iov.Base = &p[0]
	r.iov.SetLen(len(p))
	r.msg = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&r.name)), Namelen: unix.SizeofSockaddrAny, Iov: &r.iov, Control: &r.oob[0]}
	r.msg.SetIovlen(1)
	r.msg.SetControllen(len(r.oob))
	nr, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.msg)), uintptr(flags))
	r.iov.Base = nil
	if errno != 0 {
		return 0, 0, errno
	}
	r.c.add(cNetReads)
	return int(nr), int(r.msg.Controllen), nil
}

// control reads the destination address (IP_PKTINFO, IPV6_PKTINFO) and
// the joined datagrams' size (UDP_GRO; 0 without) from control messages.
func control(oob []byte) (dst netip.Addr, seg int) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= 12:
			dst = netip.AddrFrom4([4]byte(data[8:12])) // struct in_pktinfo: ipi_addr
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= 16:
			dst = netip.AddrFrom16([16]byte(data[:16])) // struct in6_pktinfo: ipi6_addr
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2:
			if len(data) >= 4 {
				seg = int(binary.NativeEndian.Uint32(data))
			} else {
				seg = int(binary.NativeEndian.Uint16(data))
			}
		}
		oob = rest
	}
	return dst, seg
}

// wouldWait reports whether a non-waiting read found nothing.
func wouldWait(err error) bool { return errors.Is(err, unix.EAGAIN) }
