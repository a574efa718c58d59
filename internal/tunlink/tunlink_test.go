package tunlink

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/offload"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
)

// recorder is a packetIO that records how many packets each Write took.
type recorder struct{ writes []int }

func (r *recorder) Read([][]byte, []int, int) (int, error) { return 0, nil }

func (r *recorder) Write(bufs [][]byte, _ int) (int, error) {
	r.writes = append(r.writes, len(bufs))
	return len(bufs), nil
}

// TestBatch: packets sent while no reader is busy (an engine timer's) are
// written at once, one system call each; sent inside Batch they wait and
// leave together at its end, toward each side they are for.
func TestBatch(t *testing.T) {
	wire, radio := &recorder{}, &recorder{}
	l := &Link{io: [2]packetIO{wire, radio}}
	pkt := make([]byte, 100)
	for range 3 {
		l.send(engine.Radio, pkt)
	}
	if want := []int{1, 1, 1}; !slices.Equal(radio.writes, want) {
		t.Fatalf("outside Batch: writes of %v packets, want %v", radio.writes, want)
	}
	radio.writes = nil
	l.Batch(func() {
		for range 5 {
			l.send(engine.Radio, pkt)
		}
		l.send(engine.Wire, pkt)
		if len(radio.writes)+len(wire.writes) > 0 {
			t.Error("written before Batch's end")
		}
	})
	if !slices.Equal(radio.writes, []int{5}) || !slices.Equal(wire.writes, []int{1}) {
		t.Fatalf("inside Batch: writes of %v (radio) and %v (wire) packets, want [5] and [1]", radio.writes, wire.writes)
	}
	if n := l.active.Load(); n != 0 {
		t.Fatalf("%d readers busy after Batch", n)
	}
}

// keeper is a packetIO that keeps the packets written, and with sums set
// also takes what stands in their checksums (a sumsWriter, as rawIO is).
type keeper struct {
	pkts [][]byte
	sums []offload.Sum
}

func (k *keeper) Read([][]byte, []int, int) (int, error) { return 0, nil }

func (k *keeper) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		k.pkts = append(k.pkts, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

type sumsKeeper struct{ keeper }

func (k *sumsKeeper) WriteSums(bufs [][]byte, sums []offload.Sum, offset int) (int, error) {
	k.sums = append(k.sums, sums...)
	return k.Write(bufs, offset)
}

// TestSendPartial: a segment sent with its TCP checksum partial reaches a
// device that completes checksums (rawIO) as it is, said to be partial;
// one without, completed by the link — IPv4 and IPv6. What is sent known
// or as it came is never touched.
func TestSendPartial(t *testing.T) {
	for _, addrs := range [][2]string{{"10.0.0.1:5001", "10.0.0.2:80"}, {"[fd00::1]:5001", "[fd00::2]:80"}} {
		src, dst := netip.MustParseAddrPort(addrs[0]), netip.MustParseAddrPort(addrs[1])
		whole := packettest.Segment(src, dst, header.TCPAck, 7, 1, 500, nil, []byte("partial bytes"))
		partial := append([]byte(nil), whole...)
		l4 := header.IPv4MinLen
		if src.Addr().Is6() {
			l4 = header.IPv6Len
		}
		header.TCP(partial[l4:]).SetPartialChecksum(src.Addr().AsSlice(), dst.Addr().AsSlice())

		plain, offloading := &keeper{}, &sumsKeeper{}
		l := &Link{io: [2]packetIO{plain, offloading}}
		l.SendPartial(engine.Wire, partial)
		l.SendPartial(engine.Radio, partial)
		l.SendKnown(engine.Wire, partial)
		l.send(engine.Wire, partial)
		if len(plain.pkts) != 3 || !bytes.Equal(plain.pkts[0], whole) {
			t.Fatalf("%s: without offloads the partial checksum was not completed", addrs[0])
		}
		if !bytes.Equal(plain.pkts[1], partial) || !bytes.Equal(plain.pkts[2], partial) {
			t.Fatalf("%s: a packet sent known or as it came was changed", addrs[0])
		}
		if len(offloading.pkts) != 1 || !bytes.Equal(offloading.pkts[0], partial) || !slices.Equal(offloading.sums, []offload.Sum{offload.SumPartial}) {
			t.Fatalf("%s: with offloads: %d packets, sums %v", addrs[0], len(offloading.pkts), offloading.sums)
		}
	}
}
