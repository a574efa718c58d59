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
	"sync"
	"sync/atomic"

	"github.com/espep/espep/internal/engine"
	"golang.zx2c4.com/wireguard/tun"
)

// Processor takes the IP packets read from either device.
type Processor interface {
	Process(from engine.Side, pkt []byte)
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
}

// Link is the two devices and the processor between them.
type Link struct {
	names [2]string
	dev   [2]tun.Device
	proc  Processor
	log   *slog.Logger

	wmu   [2]sync.Mutex
	wbuf  [2][]byte
	close sync.Once

	read, written, werr [2]atomic.Uint64
}

// Open creates the TUN devices wire and radio (brought up by the caller,
// or by `ip link set … up`) and the processor mk makes, which sends
// through the function it is given (it must not keep pkt).
func Open(wire, radio string, mk func(out func(to engine.Side, pkt []byte)) (Processor, error), log *slog.Logger) (*Link, error) {
	l := &Link{names: [2]string{wire, radio}, log: log}
	for side, name := range l.names {
		d, err := tun.CreateTUN(name, MTU)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("tunlink: tun %s: %w", name, err)
		}
		l.dev[side] = d
		l.wbuf[side] = make([]byte, headroom+65536)
	}
	p, err := mk(l.send)
	if err != nil {
		l.Close()
		return nil, err
	}
	l.proc = p
	return l, nil
}

// send writes pkt into the device of side to.
func (l *Link) send(to engine.Side, pkt []byte) {
	if len(pkt) > len(l.wbuf[to])-headroom {
		l.werr[to].Add(1)
		return
	}
	l.wmu[to].Lock()
	defer l.wmu[to].Unlock()
	b := l.wbuf[to][:headroom+len(pkt)]
	copy(b[headroom:], pkt)
	if _, err := l.dev[to].Write([][]byte{b}, headroom); err != nil {
		l.werr[to].Add(1)
		return
	}
	l.written[to].Add(1)
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
	d := l.dev[side]
	n := d.BatchSize()
	bufs, sizes := make([][]byte, n), make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+65536)
	}
	for {
		cnt, err := d.Read(bufs, sizes, headroom)
		for i := range cnt {
			l.read[side].Add(1)
			l.proc.Process(side, bufs[i][headroom:headroom+sizes[i]])
		}
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

// Stats returns the counters.
func (l *Link) Stats() Stats {
	var s Stats
	for i := range 2 {
		s.Read[i], s.Written[i], s.WriteErrors[i] = l.read[i].Load(), l.written[i].Load(), l.werr[i].Load()
	}
	return s
}
