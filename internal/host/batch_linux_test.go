//go:build linux

package host

import (
	"bytes"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// loopUDP opens a UDP socket on 127.0.0.1 and returns it and its port;
// it is closed when the test ends.
func loopUDP(t *testing.T) (int, uint16) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := setTimeout(fd); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, uint16(sa.(*unix.SockaddrInet4).Port)
}

// loopTx is a txBatch sending ESP in UDP from fd, a UDP socket bound to
// port: a link with that socket alone (no raw sockets, no TUN).
func loopTx(fd int, port uint16, c *counters) *txBatch {
	k := &linuxLink{cfg: &Config{UDPPort: int(port)}, log: quiet(), udp4: fd, udp6: -1, send4: -1, send6: -1}
	return newTxBatch(k, c, 16)
}

// TestTxBatchRuns: datagrams the host sealed leave as runs, one sendmsg
// with UDP_SEGMENT each, through the real kernel on loopback — the
// receiver gets every datagram as it was, from the right address and
// port with the right TOS — and sending allocates nothing.
func TestTxBatchRuns(t *testing.T) {
	rfd, rport := loopUDP(t)
	sfd, sport := loopUDP(t)
	if err := unix.SetsockoptInt(rfd, unix.IPPROTO_IP, unix.IP_RECVTOS, 1); err != nil {
		t.Fatal(err)
	}
	var c counters
	tx := loopTx(sfd, sport, &c)
	lo := netip.MustParseAddr("127.0.0.1")
	type dg struct {
		n   int
		tos uint8
	}
	// Two runs: four full and a short one with one TOS, then three of
	// another size and TOS.
	want := []dg{{1000, 0x20}, {1000, 0x20}, {1000, 0x20}, {1000, 0x20}, {300, 0x20}, {500, 0}, {500, 0}, {500, 0}}
	pkts := make([][]byte, len(want))
	for i, w := range want {
		pkts[i] = udpPacket(lo, lo, sport, rport, w.tos, w.n, byte(i))
	}
	send := func() {
		for _, p := range pkts {
			tx.add(p, true)
		}
		tx.flush()
	}
	send()
	if got := c[cNetSends].Load(); got != 2 || c[cSendErrors].Load() != 0 {
		t.Fatalf("%d sends, %d errors; want 2 runs and no errors", got, c[cSendErrors].Load())
	}
	buf, oob := make([]byte, 2000), make([]byte, 64)
	for i, w := range want {
		n, oobn, _, from, err := unix.Recvmsg(rfd, buf, oob, 0)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if n != w.n || !bytes.Equal(buf[:n], bytes.Repeat([]byte{byte(i)}, w.n)) {
			t.Fatalf("datagram %d: %d bytes (%x…), want %d of %#x", i, n, buf[:min(n, 4)], w.n, i)
		}
		if f := from.(*unix.SockaddrInet4); f.Port != int(sport) || f.Addr != lo.As4() {
			t.Fatalf("datagram %d from %v:%d, want 127.0.0.1:%d", i, f.Addr, f.Port, sport)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 || msgs[0].Header.Type != unix.IP_TOS || msgs[0].Data[0] != w.tos {
			t.Fatalf("datagram %d: control %v, want TOS %#x", i, msgs, w.tos)
		}
	}
	allocs := testing.AllocsPerRun(20, func() {
		send()
		for range want {
			if _, err := unix.Read(rfd, buf); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations a batch, want 0", allocs)
	}
}

// TestRecvJoined: a socket with UDP_GRO takes a run of datagrams in one
// read, and control reads the size they were cut at and the destination
// address — what udpLoop splits the read by; the read allocates nothing.
func TestRecvJoined(t *testing.T) {
	rfd, rport := loopUDP(t)
	sfd, sport := loopUDP(t)
	if err := unix.SetsockoptInt(rfd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
		t.Fatalf("UDP_GRO: %v", err) // Linux 5.0 and later have it
	}
	if err := unix.SetsockoptInt(rfd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
		t.Fatal(err)
	}
	var c counters
	tx := loopTx(sfd, sport, &c)
	lo := netip.MustParseAddr("127.0.0.1")
	var pkts [][]byte
	for i := range 5 {
		pkts = append(pkts, udpPacket(lo, lo, sport, rport, 0, 1200-700*(i/4), byte(i)))
	}
	send := func() {
		for _, p := range pkts {
			tx.add(p, true)
		}
		tx.flush()
	}
	send()
	rx := newRxBatch(nil, &c)
	buf := make([]byte, 65536)
	n, oobn, err := rx.recv(rfd, buf)
	if err != nil {
		t.Fatal(err)
	}
	dst, seg := control(rx.oob[:oobn])
	src, port, ok := getSockaddr(&rx.name)
	if n != 4*1200+500 || seg != 1200 || dst != lo || !ok || src != lo || port != sport {
		t.Fatalf("read %d bytes cut at %d, to %v from %v:%d; want %d cut at 1200, 127.0.0.1 both ways, port %d", n, seg, dst, src, port, 4*1200+500, sport)
	}
	for i := range 5 {
		if buf[i*1200] != byte(i) {
			t.Fatalf("datagram %d starts with %#x", i, buf[i*1200])
		}
	}
	allocs := testing.AllocsPerRun(20, func() {
		send()
		if _, _, err := rx.recv(rfd, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations a read, want 0", allocs)
	}
}

// TestTxBatchRefused: a run the kernel refuses to segment (here: a
// socket without UDP checksums, SO_NO_CHECK, which segmentation needs)
// turns segmented sends off and goes to the raw socket one by one — none
// here, so each is a send error, counted; a run refused for another
// reason (a source address the machine does not have) is counted as
// send errors and leaves segmented sends on.
func TestTxBatchRefused(t *testing.T) {
	for _, c := range []struct {
		name    string
		src     string
		noCheck bool
		gso     bool
	}{
		{"cannot segment", "127.0.0.1", true, false},
		{"foreign source", "192.0.2.1", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, rport := loopUDP(t)
			sfd, sport := loopUDP(t)
			if c.noCheck {
				if err := unix.SetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
					t.Fatal(err)
				}
			}
			var ctr counters
			tx := loopTx(sfd, sport, &ctr)
			src, lo := netip.MustParseAddr(c.src), netip.MustParseAddr("127.0.0.1")
			for i := range 3 {
				tx.add(udpPacket(src, lo, sport, rport, 0, 500, byte(i)), true)
			}
			tx.flush()
			if tx.gso != c.gso || ctr[cSendErrors].Load() != 3 {
				t.Fatalf("segmented sends on: %v, send errors %d; want %v and 3", tx.gso, ctr[cSendErrors].Load(), c.gso)
			}
		})
	}
}
