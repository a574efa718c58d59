// Package tunlink puts a packet processor (espep's gateway) between two
// TUN devices: what the kernel routes into one device is processed as
// coming from that side, and what the processor sends toward a side is
// written into that side's device, for the kernel to route on. It is
// espep gateway's layer-3 mode: the kernel is the forwarder, and policy
// routing (ip rule … iif) steers each side's traffic into its device.
package tunlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/offload"
	"github.com/espep/espep/internal/tundev"
	"github.com/espep/espep/ipsec/header"
)

// Processor takes the IP packets read from either device.
type Processor interface {
	Process(from engine.Side, pkt []byte)
}

// batchProcessor is a Processor that takes a read's packets as a batch
// (the gateway: one ACK per flow and batch, not one per two segments):
// more says others follow; checked, that the packet's checksums hold on
// the kernel's word or the reader's making (checkedReader), so that the
// processor need not sum it again — nor the writer, if the processor
// sends it on as it came with SendKnown.
type batchProcessor interface {
	ProcessRead(from engine.Side, pkt []byte, more, checked bool)
	Flush()
}

// MTU of the devices: large, so that the kernel never fragments on the
// way into the gateway what the path itself carries.
const MTU = 9000

// headroom is what the TUN device may need before a packet (its virtio
// header when offloads are on).
const headroom = 16

// Stats count packets at the two devices, by engine.Side.
type Stats struct {
	Read, Written, WriteErrors [2]uint64
	Writes                     [2]uint64 // Write calls (batches)
	Reads                      [2]uint64 // Read calls (batches read)
	ReadCalls                  [2]uint64 // read system calls, when the link makes them (a batch drains the device)
	Unfinished                 [2]uint64 // read, but their offloads could not be finished: dropped
	WriteCalls                 [2]uint64 // write system calls (a batch's flows coalesced), when the link makes them
}

// packetIO is how the link reads and writes a device's packets: the
// device's own methods, or on Linux its own system calls (rawio_linux.go).
type packetIO interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
}

// checkedReader is a packetIO that says which packets of a read have
// checksums that hold (rawIO.ReadChecked).
type checkedReader interface {
	ReadChecked(bufs [][]byte, sizes []int, checked []bool, offset int) (int, error)
}

// sumsWriter is a packetIO that coalesces and can be told what stands in
// each packet's checksums: made by the processor itself (SendKnown), to
// merge them unsummed, or left partial (SendPartial), for the device to
// complete.
type sumsWriter interface {
	WriteSums(bufs [][]byte, sums []offload.Sum, offset int) (int, error)
}

// Link is the two devices and the processor between them.
//
// Writes are batched: what the processor sends toward a side waits in
// that side's batch (out) and goes to the device in one Write, which
// coalesces a flow's segments into one super-packet for the kernel (the
// device has TSO/GRO offloads) — one system call and one trip through the
// kernel's stack per batch, not per packet. A reader flushes both
// batches when it has processed what one Read gave it; a packet sent
// while no reader is busy (an engine timer's) is flushed at once.
type Link struct {
	names [2]string
	dev   [2]tun.Device
	io    [2]packetIO
	proc  Processor
	log   *slog.Logger

	out    [2]batch
	active atomic.Int32 // readers processing a Read's packets now
	close  sync.Once

	read, written, werr, writes, reads [2]atomic.Uint64
}

// batch is one side's packets waiting to be written.
type batch struct {
	mu   sync.Mutex
	bufs [][]byte      // pending, each headroom + packet (cap for coalescing)
	sums []offload.Sum // per pending packet: SumKnown if sent with SendKnown, SumPartial with SendPartial
	free [][]byte
}

// batchMax bounds a batch: it is written when full.
const batchMax = 64

// bufSize is a write buffer's capacity: a coalesced super-packet may grow
// to 64 KB behind the headroom.
const bufSize = headroom + 65536

// Open creates the TUN devices wire and radio (brought up by the caller,
// or by `ip link set … up`) and the processor mk makes, which sends
// through the function it is given (it must not keep pkt).
func Open(wire, radio string, mk func(out func(to engine.Side, pkt []byte)) (Processor, error), log *slog.Logger) (*Link, error) {
	l := &Link{names: [2]string{wire, radio}, log: log}
	for side, name := range l.names {
		d, err := tundev.Create(name, MTU)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("tunlink: tun %s: %w", name, err)
		}
		l.dev[side] = d
		l.io[side] = newIO(d)
	}
	p, err := mk(l.send)
	if err != nil {
		l.Close()
		return nil, err
	}
	l.proc = p
	return l, nil
}

// send queues pkt (copied) for the device of side to, and writes the
// batch if it is full, or if no reader will flush it soon.
func (l *Link) send(to engine.Side, pkt []byte) { l.enqueue(to, pkt, offload.SumAsCame) }

// SendKnown is send for a packet whose checksums the processor made
// itself (a segment it built, a datagram it sealed): coalescing merges it
// without summing it again.
func (l *Link) SendKnown(to engine.Side, pkt []byte) { l.enqueue(to, pkt, offload.SumKnown) }

// SendPartial is SendKnown for a TCP segment whose checksum the
// processor left partial (engine.Config.PartialChecksums): the device
// completes it — the kernel, when it must, or the NIC; on a veth nobody
// does, its peer taking the segment as verified — or, on a device
// without offloads, the link does before writing it.
func (l *Link) SendPartial(to engine.Side, pkt []byte) { l.enqueue(to, pkt, offload.SumPartial) }

func (l *Link) enqueue(to engine.Side, pkt []byte, sum offload.Sum) {
	if len(pkt) > bufSize-headroom {
		l.werr[to].Add(1)
		return
	}
	b := &l.out[to]
	b.mu.Lock()
	var buf []byte
	if n := len(b.free); n > 0 {
		buf, b.free = b.free[n-1], b.free[:n-1]
	} else {
		buf = make([]byte, bufSize)
	}
	buf = buf[:headroom+len(pkt)]
	copy(buf[headroom:], pkt)
	if _, ok := l.io[to].(sumsWriter); !ok && sum == offload.SumPartial {
		header.CompleteTCPIn(buf[headroom:])
		sum = offload.SumKnown
	}
	b.bufs = append(b.bufs, buf)
	b.sums = append(b.sums, sum)
	full := len(b.bufs) >= batchMax
	if full {
		l.writeLocked(to)
	}
	b.mu.Unlock()
	if !full && l.active.Load() == 0 {
		l.flush(to) // no reader busy: nobody else will
	}
}

// Batch runs f as a reader runs a Read's packets: what f sends waits in
// the batches and is written at its end, not packet by packet — for the
// engine's timers (fdclock.Clock.SetAround), whose bursts were otherwise
// written one packet a system call. Between two espep hosts a third of
// split's writes toward b were such single packets.
func (l *Link) Batch(f func()) {
	l.active.Add(1)
	defer l.endBatch()
	f()
}

// endBatch ends what a reader or Batch began (active raised): it no
// longer counts as busy, then writes both batches — after, so that a
// packet another goroutine queued meanwhile is in the batch, or sees no
// reader busy and flushes it itself.
func (l *Link) endBatch() {
	l.active.Add(-1)
	l.flush(engine.Wire)
	l.flush(engine.Radio)
}

// flush writes side to's batch.
func (l *Link) flush(to engine.Side) {
	b := &l.out[to]
	b.mu.Lock()
	l.writeLocked(to)
	b.mu.Unlock()
}

// writeLocked writes the batch of side to (its lock held) and keeps the
// buffers for reuse.
func (l *Link) writeLocked(to engine.Side) {
	b := &l.out[to]
	if len(b.bufs) == 0 {
		return
	}
	n := len(b.bufs)
	var err error
	if sw, ok := l.io[to].(sumsWriter); ok {
		_, err = sw.WriteSums(b.bufs, b.sums, headroom)
	} else {
		_, err = l.io[to].Write(b.bufs, headroom)
	}
	if err != nil {
		l.werr[to].Add(uint64(n))
	} else {
		l.written[to].Add(uint64(n))
	}
	l.writes[to].Add(1)
	for _, buf := range b.bufs {
		if len(b.free) < 2*batchMax {
			b.free = append(b.free, buf[:cap(buf)])
		}
	}
	clear(b.bufs)
	b.bufs, b.sums = b.bufs[:0], b.sums[:0]
}

// Run reads both devices until ctx ends, then closes them.
func (l *Link) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	for side := range l.dev {
		go func() { errc <- l.readLoop(engine.Side(side)) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	l.Close()
	return err
}

func (l *Link) readLoop(side engine.Side) error {
	d, io := l.dev[side], l.io[side]
	n := d.BatchSize()
	// The first buffer takes a whole super-packet (the read); the others
	// only its segments, which the device's MTU bounds (one larger is
	// refused and counted, not cut short): 1.2 MB a device, not 8.
	bufs, sizes, checked := make([][]byte, n), make([]int, n), make([]bool, n)
	bufs[0] = make([]byte, headroom+65536)
	for i := 1; i < n; i++ {
		bufs[i] = make([]byte, headroom+MTU)
	}
	cr, _ := io.(checkedReader)
	for {
		var cnt int
		var err error
		if cr != nil {
			cnt, err = cr.ReadChecked(bufs, sizes, checked, headroom)
		} else {
			cnt, err = io.Read(bufs, sizes, headroom) // checked stays false
		}
		l.active.Add(1)
		if bp, ok := l.proc.(batchProcessor); ok {
			for i := range cnt {
				bp.ProcessRead(side, bufs[i][headroom:headroom+sizes[i]], i < cnt-1, checked[i])
			}
			bp.Flush()
		} else {
			for i := range cnt {
				l.proc.Process(side, bufs[i][headroom:headroom+sizes[i]])
			}
		}
		l.read[side].Add(uint64(cnt))
		l.reads[side].Add(1)
		l.endBatch()
		switch {
		case err == nil, errors.Is(err, tun.ErrTooManySegments):
		case errors.Is(err, os.ErrClosed):
			return nil
		default:
			return fmt.Errorf("tunlink: read %s: %w", l.names[side], err)
		}
	}
}

// Close removes the devices; later writes fail (counted).
func (l *Link) Close() {
	l.close.Do(func() {
		for _, d := range l.dev {
			if d != nil {
				d.Close()
			}
		}
	})
}

// Summary is the counters on one line, by device: packets in how many
// system calls, which is what a packet daemon's CPU follows.
func (s Stats) Summary() string {
	var b strings.Builder
	for i, name := range [2]string{"wire", "radio"} {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s read %d in %d batches (%d system calls), wrote %d in %d batches (%d system calls), %d write errors, %d unfinished",
			name, s.Read[i], s.Reads[i], s.ReadCalls[i], s.Written[i], s.Writes[i], s.WriteCalls[i], s.WriteErrors[i], s.Unfinished[i])
	}
	return b.String()
}

// Stats returns the counters.
func (l *Link) Stats() Stats {
	var s Stats
	for i := range 2 {
		s.Read[i], s.Written[i], s.WriteErrors[i], s.Writes[i] = l.read[i].Load(), l.written[i].Load(), l.werr[i].Load(), l.writes[i].Load()
		s.Reads[i] = l.reads[i].Load()
		if d, ok := l.io[i].(interface{ Dropped() uint64 }); ok {
			s.Unfinished[i] = d.Dropped()
		}
		if d, ok := l.io[i].(interface{ WriteCalls() uint64 }); ok {
			s.WriteCalls[i] = d.WriteCalls()
		}
		if d, ok := l.io[i].(interface{ ReadCalls() uint64 }); ok {
			s.ReadCalls[i] = d.ReadCalls()
		}
	}
	return s
}
