package xfrm

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/espep/espep/ipsec"
)

// Dump asks the kernel for its SAD (an XFRM_MSG_GETSA dump) and parses
// the replies. It needs CAP_NET_ADMIN; the SAs it cannot use are in bad.
func Dump() (sas []ipsec.Config, bad []error, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_XFRM)
	if err != nil {
		return nil, nil, fmt.Errorf("xfrm: netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, nil, fmt.Errorf("xfrm: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, nil, fmt.Errorf("xfrm: bind: %w", err)
	}
	// The request: a header and an all-zero xfrm_usersa_info (no filter).
	req := make([]byte, nlmsgHdrLen+usersaInfoLen)
	const seq = 1
	binary.NativeEndian.PutUint32(req, uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], MsgGetSA)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, nil, fmt.Errorf("xfrm: dump request: %w", err)
	}
	buf := make([]byte, 1<<16)
	defer clear(buf)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return sas, bad, fmt.Errorf("xfrm: dump: %w", err)
		}
		part, partBad, err := Parse(buf[:n])
		sas, bad = append(sas, part...), append(bad, partBad...)
		if err != nil {
			return sas, bad, err
		}
		if done(buf[:n]) {
			return sas, bad, nil
		}
	}
}

// done reports whether a datagram holds NLMSG_DONE (or an error), which
// ends a dump.
func done(b []byte) bool {
	for len(b) >= nlmsgHdrLen {
		n := int(binary.NativeEndian.Uint32(b))
		switch binary.NativeEndian.Uint16(b[4:]) {
		case nlmsgDone, nlmsgError:
			return true
		}
		if n < nlmsgHdrLen || n > len(b) {
			return true
		}
		b = b[min(align4(n), len(b)):]
	}
	return false
}
