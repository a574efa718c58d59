package tunlink

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/espep/espep/internal/offload"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
	"golang.org/x/sys/unix"
)

// seqpacket is a stand-in for a TUN descriptor that needs no root: a unix
// SOCK_SEQPACKET pair keeps each write one message, as the device keeps
// each packet. dev is rawIO's end (non-blocking, runtime-polled), peer
// the kernel's.
func seqpacket(t *testing.T) (dev *os.File, peer int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	dev = os.NewFile(uintptr(fds[0]), "seqpacket")
	t.Cleanup(func() { dev.Close(); unix.Close(fds[1]) })
	return dev, fds[1]
}

// seqpacketRawIO is a rawIO on a seqpacket stand-in: the rawIO, its
// descriptor and the kernel's end.
func seqpacketRawIO(t *testing.T) (r *rawIO, dev *os.File, peer int) {
	t.Helper()
	dev, peer = seqpacket(t)
	r, err := newRawIO(dev)
	if err != nil {
		t.Fatal(err)
	}
	return r, dev, peer
}

// sender writes, from the kernel's end peer, one message: a virtio
// header h and the packet after it.
func sender(t *testing.T, peer int) func(h, pkt []byte) {
	return func(h, pkt []byte) {
		t.Helper()
		if _, err := unix.Write(peer, append(append([]byte(nil), h...), pkt...)); err != nil {
			t.Fatal(err)
		}
	}
}

// gsoTCPv4 is the virtio header of a TCP/IPv4 super-packet cut every mss
// payload bytes.
func gsoTCPv4(mss int) []byte {
	return []byte{0, offload.GSOTCPv4, 0, 0, byte(mss), byte(mss >> 8), 0, 0, 0, 0}
}

// flowSegments is n contiguous 1400-byte segments of one flow, as its
// sender makes them (IPv4 identifications counting up): a run the
// writer coalesces.
func flowSegments(src, dst netip.AddrPort, n int) [][]byte {
	var out [][]byte
	for i := range n {
		p := packettest.Segment(src, dst, header.TCPAck, 1000+uint32(i*1400), 1, 500, nil, bytes.Repeat([]byte{byte(i)}, 1400))
		header.IPv4(p).SetID(uint16(5 + i))
		header.IPv4(p).UpdateChecksum()
		out = append(out, p)
	}
	return out
}

func readBufs() ([][]byte, []int) {
	bufs, sizes := make([][]byte, offload.MaxSegments), make([]int, offload.MaxSegments)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+65536)
	}
	return bufs, sizes
}

// TestRawIO: what the kernel hands a TUN descriptor with its virtio
// header on — a finished packet, one whose checksum it left to us, a GSO
// super-packet, garbage — is read as the wire's packets (the super-packet
// as exactly the segments package offload makes), garbage counted and
// dropped; one packet is written with a virtio header that asks nothing,
// a flow's contiguous segments as one super-packet; a read waits in the
// poller for a packet; and a closed descriptor ends the reader with
// os.ErrClosed.
func TestRawIO(t *testing.T) {
	r, f, peer := seqpacketRawIO(t)
	bufs, sizes := readBufs()
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	whole := packettest.Segment(src, dst, header.TCPAck, 7, 1, 500, nil, make([]byte, 100))
	send := sender(t, peer)

	// A finished packet, as it is.
	var none [offload.HdrLen]byte
	send(none[:], whole)
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 1 || !bytes.Equal(bufs[0][headroom:headroom+sizes[0]], whole) {
		t.Fatalf("finished packet: %d, %v", n, err)
	}

	// Checksum left to us: the field holds the pseudo-header sum only.
	partial := append([]byte(nil), whole...)
	tcp := partial[header.IPv4MinLen:]
	tcp[16], tcp[17] = 0, 0
	ps := ^header.Checksum(nil, header.PseudoHeaderSum(src.Addr().AsSlice(), dst.Addr().AsSlice(), header.ProtoTCP, len(tcp)))
	tcp[16], tcp[17] = byte(^ps>>8), byte(^ps)
	send([]byte{offload.NeedsCsum, 0, 0, 0, 0, 0, header.IPv4MinLen, 0, 16, 0}, partial)
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 1 || !bytes.Equal(bufs[0][headroom:headroom+sizes[0]], whole) {
		t.Fatalf("partial checksum: %d, %v; the packet is not the finished one", n, err)
	}

	// A super-packet: the segments offload makes, in order.
	super := packettest.Segment(src, dst, header.TCPAck|header.TCPPsh, 1000, 1, 500, nil, bytes.Repeat([]byte("espep"), 2000))
	h := offload.Hdr{GSOType: offload.GSOTCPv4, GSOSize: 1448}
	var want [][]byte
	if _, _, err := offload.Finish(h, append([]byte(nil), super...), 0, nil, func(p []byte) { want = append(want, append([]byte(nil), p...)) }); err != nil {
		t.Fatal(err)
	}
	send(gsoTCPv4(1448), super)
	n, err := r.Read(bufs, sizes, headroom)
	if err != nil || n != len(want) || n != 7 {
		t.Fatalf("super-packet: %d packets, %v; want %d", n, err, len(want))
	}
	for i := range n {
		if !bytes.Equal(bufs[i][headroom:headroom+sizes[i]], want[i]) {
			t.Fatalf("segment %d differs from offload's", i)
		}
	}

	// Packets alone that queued: one Read takes them all; a
	// super-packet among them waits for the next Read, which gives its
	// segments; then the packets after it.
	calls := r.ReadCalls()
	for i := range 3 {
		p := append([]byte(nil), whole...)
		p[len(p)-1] = byte(i) // (its checksum no longer holds: not this test's matter)
		send(none[:], p)
	}
	send(gsoTCPv4(1448), super)
	send(none[:], whole)
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 3 || bufs[2][headroom+sizes[2]-1] != 2 {
		t.Fatalf("drain: %d packets, %v; want the 3 alone", n, err)
	}
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 7 || !bytes.Equal(bufs[6][headroom:headroom+sizes[6]], want[6]) {
		t.Fatalf("the held super-packet: %d packets, %v", n, err)
	}
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 1 || !bytes.Equal(bufs[0][headroom:headroom+sizes[0]], whole) {
		t.Fatalf("after it: %d packets, %v", n, err)
	}
	// Four reads (the fourth the super-packet's), none for the held
	// one, the last packet's and an EAGAIN.
	if c := r.ReadCalls() - calls; c != 6 {
		t.Fatalf("%d read system calls, want 6", c)
	}
	// A drained read too short for a virtio header: counted and
	// dropped, as the waiting read's, and the drain goes on.
	bad := r.Dropped()
	send(none[:], whole)
	send([]byte{0, 0}, nil)
	send(none[:], whole)
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 2 || r.Dropped()-bad != 1 {
		t.Fatalf("a short drained read: %d packets, %v, %d dropped", n, err, r.Dropped()-bad)
	}

	// Garbage: counted, dropped, not an error.
	bad = r.Dropped()
	send([]byte{0, 0x42}, nil)
	send([]byte{0, offload.GSOTCPv4, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{0x45, 1, 2})
	for range 2 {
		if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 0 {
			t.Fatalf("garbage: %d packets, %v", n, err)
		}
	}
	if r.Dropped()-bad != 2 {
		t.Fatalf("%d dropped, want 2", r.Dropped()-bad)
	}

	// One packet written by rawIO, after an empty virtio header.
	out := make([]byte, headroom+len(whole))
	copy(out[headroom:], whole)
	if _, err := r.Write([][]byte{out}, headroom); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4000)
	m, err := unix.Read(peer, got)
	if err != nil || m != offload.HdrLen+len(whole) || !bytes.Equal(got[:offload.HdrLen], none[:]) || !bytes.Equal(got[offload.HdrLen:m], whole) {
		t.Fatalf("written: %d bytes, %v", m, err)
	}
	// Two contiguous segments of a flow: one write, which the kernel's
	// segmentation (offload.SegmentInto's) turns back into both.
	two := flowSegments(src, dst, 2)
	batch := [][]byte{make([]byte, headroom+len(two[0]), bufSize), make([]byte, headroom+len(two[1]), bufSize)}
	copy(batch[0][headroom:], two[0])
	copy(batch[1][headroom:], two[1])
	if n, err := r.Write(batch, headroom); err != nil || n != 1 {
		t.Fatalf("a flow's two segments: %d writes, %v", n, err)
	}
	m, err = unix.Read(peer, got[:cap(got)])
	if err != nil {
		t.Fatal(err)
	}
	h2, err := offload.ParseHdr(got[:m])
	segs, segSizes := make([][]byte, 4), make([]int, 4)
	for i := range segs {
		segs[i] = make([]byte, 2000)
	}
	k, err2 := offload.SegmentInto(h2, got[offload.HdrLen:m], segs, 0, segSizes)
	if err != nil || err2 != nil || k != 2 || !bytes.Equal(segs[0][:segSizes[0]], two[0]) || !bytes.Equal(segs[1][:segSizes[1]], two[1]) {
		t.Fatalf("the super-packet written (%+v, %v, %v) is not the two segments (%d)", h2, err, err2, k)
	}

	// A read with nothing there waits in the poller.
	done := make(chan int)
	go func() {
		n, _ := r.Read(bufs, sizes, headroom)
		done <- n
	}()
	select {
	case n := <-done:
		t.Fatalf("read returned %d with nothing to read", n)
	case <-time.After(50 * time.Millisecond):
	}
	send(none[:], whole)
	if n := <-done; n != 1 {
		t.Fatalf("woken read: %d packets", n)
	}

	// Closed.
	go func() {
		_, err := r.Read(bufs, sizes, headroom)
		done <- map[bool]int{true: 1}[errors.Is(err, os.ErrClosed)]
	}()
	time.Sleep(20 * time.Millisecond)
	f.Close()
	if <-done != 1 {
		t.Fatal("the read on a closed descriptor did not end with os.ErrClosed")
	}
}

// TestRawIOChecked: ReadChecked vouches for the packets whose checksums
// the kernel verified (DATA_VALID) or the reader made — a partial sum it
// completed at the TCP header, every segment it cut from a super-packet —
// and for no other: one that asks nothing, one completed anywhere but at
// its transport checksum. In a drained batch each packet has its own
// answer, and a read with nothing to say (Read) still works.
func TestRawIOChecked(t *testing.T) {
	r, _, peer := seqpacketRawIO(t)
	bufs, sizes := readBufs()
	checked := make([]bool, len(bufs))
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	whole := packettest.Segment(src, dst, header.TCPAck, 7, 1, 500, nil, make([]byte, 100))
	send := sender(t, peer)
	read := func(name string, want ...bool) {
		t.Helper()
		for i, w := range want {
			checked[i] = !w // an answer not written shows
		}
		n, err := r.ReadChecked(bufs, sizes, checked, headroom)
		if err != nil || n != len(want) {
			t.Fatalf("%s: %d packets, %v; want %d", name, n, err, len(want))
		}
		for i, w := range want {
			if checked[i] != w {
				t.Fatalf("%s: packet %d checked %v, want %v", name, i, checked[i], w)
			}
		}
	}
	partialAt := func(start, off int) []byte {
		return []byte{offload.NeedsCsum, 0, 0, 0, 0, 0, byte(start), 0, byte(off), 0}
	}
	var none [offload.HdrLen]byte
	send(none[:], whole)
	read("a packet that asks nothing", false)
	send([]byte{offload.DataValid, 0, 0, 0, 0, 0, 0, 0, 0, 0}, whole)
	read("verified by the kernel", true)
	send(partialAt(header.IPv4MinLen, 16), whole)
	read("completed at its TCP checksum", true)
	send(partialAt(header.IPv4MinLen, 4), whole)
	read("completed at its sequence number", false)
	send(partialAt(header.IPv4MinLen+4, 12), whole)
	read("completed from inside its TCP header", false)

	super := packettest.Segment(src, dst, header.TCPAck, 1000, 1, 500, nil, bytes.Repeat([]byte("espep"), 2000))
	send(gsoTCPv4(1448), super)
	read("a super-packet's segments", true, true, true, true, true, true, true)

	send(none[:], whole)
	send([]byte{offload.DataValid, 0, 0, 0, 0, 0, 0, 0, 0, 0}, whole)
	send(none[:], whole)
	read("a drained batch", false, true, false)

	v6 := packettest.Segment(netip.MustParseAddrPort("[2001:db8::1]:5001"), netip.MustParseAddrPort("[2001:db8::2]:80"), header.TCPAck, 7, 1, 500, nil, make([]byte, 100))
	send(partialAt(header.IPv6Len, 16), v6)
	read("IPv6, completed at its TCP checksum", true)

	send(none[:], whole)
	if n, err := r.Read(bufs, sizes, headroom); err != nil || n != 1 {
		t.Fatalf("Read: %d, %v", n, err)
	}
}

// TestRawIOZeroAllocs: reading a packet and a super-packet, writing one
// packet and a batch coalesced into one, allocate nothing.
func TestRawIOZeroAllocs(t *testing.T) {
	r, _, peer := seqpacketRawIO(t)
	bufs, sizes := readBufs()
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	pkt := append(make([]byte, offload.HdrLen), packettest.Segment(src, dst, header.TCPAck, 7, 1, 500, nil, make([]byte, 1400))...)
	super := append(gsoTCPv4(1448),
		packettest.Segment(src, dst, header.TCPAck, 7, 1, 500, nil, make([]byte, 20000))...)
	out := [][]byte{make([]byte, headroom+1400)}
	sink := make([]byte, 70000)
	flow := flowSegments(src, dst, 4) // coalesced when written
	batch := make([][]byte, len(flow))
	for i := range batch {
		batch[i] = make([]byte, 0, bufSize)
	}
	allocs := testing.AllocsPerRun(200, func() {
		unix.Write(peer, pkt)
		unix.Write(peer, super)
		if n, err := r.Read(bufs, sizes, headroom); n != 1 || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
		if n, err := r.Read(bufs, sizes, headroom); n != 14 || err != nil {
			t.Fatalf("read super %d, %v", n, err)
		}
		if _, err := r.Write(out, headroom); err != nil {
			t.Fatal(err)
		}
		unix.Read(peer, sink)
		for i, p := range flow {
			batch[i] = batch[i][:headroom+len(p)]
			copy(batch[i][headroom:], p)
		}
		if n, err := r.Write(batch, headroom); n != 1 || err != nil {
			t.Fatalf("a flow's batch: %d writes, %v", n, err)
		}
		unix.Read(peer, sink)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round", allocs)
	}
}
