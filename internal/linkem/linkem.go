// Package linkem is a bump in the wire: it forwards every Ethernet frame
// between two network interfaces, through a netem Link in each direction,
// so that unmodified Linux TCP and strongSwan in network namespaces can be
// put behind an emulated radio link (the kernel here has no netem qdisc).
//
// It reads and writes frames with AF_PACKET sockets and expects the
// interfaces' peers to have checksum and segmentation offloads turned off
// (the testbed does this): frames with unfinished checksums or GSO
// super-frames would be forwarded as they are and dropped by the receiver.
// Frames longer than the interface MTU are counted as oversize.
package linkem

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/espep/espep/internal/netem"
)

// PortStats count frames at one interface.
type PortStats struct {
	RxFrames, RxBytes uint64
	TxFrames, TxBytes uint64
	TxErrors          uint64
	Oversize          uint64 // longer than MTU + Ethernet header: offloads left on?
}

// Stats is everything a bridge counts.
type Stats struct {
	A, B   PortStats   // frames read from and written to each interface
	AB, BA netem.Stats // the emulated link each way
}

// Bridge forwards between interfaces A and B.
type Bridge struct {
	a, b   *port
	ab, ba *netem.Link
	log    *slog.Logger
}

type portCounters struct {
	rxFrames, rxBytes, txFrames, txBytes, txErrors, oversize atomic.Uint64
}

func (c *portCounters) snapshot() PortStats {
	return PortStats{c.rxFrames.Load(), c.rxBytes.Load(), c.txFrames.Load(), c.txBytes.Load(), c.txErrors.Load(), c.oversize.Load()}
}

// Open binds to both interfaces and builds the links; frames flow once Run
// is called.
func Open(a, b string, ab, ba netem.Config, log *slog.Logger) (*Bridge, error) {
	if log == nil {
		log = slog.Default()
	}
	pa, err := openPort(a)
	if err != nil {
		return nil, err
	}
	pb, err := openPort(b)
	if err != nil {
		pa.close()
		return nil, err
	}
	br := &Bridge{a: pa, b: pb, log: log}
	if br.ab, err = netem.New(ab, nil, func(f []byte) { pb.write(f) }); err == nil {
		br.ba, err = netem.New(ba, nil, func(f []byte) { pa.write(f) })
	}
	if err != nil {
		pa.close()
		pb.close()
		return nil, fmt.Errorf("linkem: %w", err)
	}
	return br, nil
}

// Run forwards frames until ctx is done, then closes everything. It
// returns the first read error other than the cancellation.
func (br *Bridge) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- br.a.readLoop(ctx, br.ab) }()
	go func() { errc <- br.b.readLoop(ctx, br.ba) }()
	var first error
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil && first == nil && ctx.Err() == nil {
			first = err
		}
		if i == 0 && first != nil {
			break
		}
	}
	br.ab.Close()
	br.ba.Close()
	br.a.close()
	br.b.close()
	return first
}

// Stats returns the counters.
func (br *Bridge) Stats() Stats {
	return Stats{A: br.a.c.snapshot(), B: br.b.c.snapshot(), AB: br.ab.Stats(), BA: br.ba.Stats()}
}
