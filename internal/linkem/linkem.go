// Package linkem is a bump in the wire: it forwards every Ethernet frame
// between two network interfaces, through a netem Link in each direction,
// so that unmodified Linux TCP and strongSwan in network namespaces can be
// put behind an emulated radio link (the kernel here has no netem qdisc).
//
// It reads and writes frames with AF_PACKET sockets, with a
// virtio_net_hdr before each (PACKET_VNET_HDR), so that the interfaces
// may keep their offloads: a frame whose checksum the kernel left to the
// NIC gets it completed, and a GSO/GRO super-frame is cut into the
// segments the wire would have carried (package offload), before anything
// else sees them. Frames longer than the interface MTU after that are
// counted as oversize.
package linkem

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/netem"
)

// PortStats count frames at one interface.
type PortStats struct {
	RxFrames, RxBytes uint64
	TxFrames, TxBytes uint64
	TxErrors          uint64
	Oversize          uint64 // longer than MTU + Ethernet header, even after segmenting
	Checksummed       uint64 // frames whose checksum the kernel had left to the NIC, completed
	Segmented         uint64 // GSO/GRO super-frames cut into segments
	OffloadErrors     uint64 // frames whose offload could not be finished: dropped
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
	wire   *netem.Pair // the wired leg between a and the engine (nil: none)
	log    *slog.Logger
	proc   Processor // nil: none

	// The Ethernet header of the last IP frame from each side, put on
	// what the engine sends on in the same direction.
	l2mu sync.Mutex
	l2   [2][etherLen]byte // by engine.Side the frame came from
	have [2]bool
}

type portCounters struct {
	rxFrames, rxBytes, txFrames, txBytes, txErrors, oversize atomic.Uint64
	checksummed, segmented, offloadErrors                    atomic.Uint64
}

func (c *portCounters) snapshot() PortStats {
	return PortStats{c.rxFrames.Load(), c.rxBytes.Load(), c.txFrames.Load(), c.txBytes.Load(), c.txErrors.Load(), c.oversize.Load(),
		c.checksummed.Load(), c.segmented.Load(), c.offloadErrors.Load()}
}

// Open binds to both interfaces and builds the links; frames flow once Run
// is called.
func Open(a, b string, ab, ba netem.Config, log *slog.Logger) (*Bridge, error) {
	return OpenWithEngine(a, b, ab, ba, nil, log)
}

// OpenWithEngine is Open with a TCP engine at the a end of the emulated
// link, as a base station sits at the wired end of the radio: a is the
// engine's wire side, b its radio side. IP packets go through the engine;
// other frames (ARP) pass as they are. ecfg nil means no engine.
func OpenWithEngine(a, b string, ab, ba netem.Config, ecfg *engine.Config, log *slog.Logger) (*Bridge, error) {
	return OpenGateway(a, b, ab, ba, ecfg, nil, log)
}

// OpenGateway is OpenWithEngine with, when wire is not nil, an emulated
// wired leg between a and the engine (the same impairments both ways):
// a ── wire ── engine ── ab/ba ── b, as the wired network and the radio
// of the seed's topology with the gateway between them (without an
// engine, the two links simply follow each other).
func OpenGateway(a, b string, ab, ba netem.Config, ecfg *engine.Config, wire *netem.Config, log *slog.Logger) (*Bridge, error) {
	var mk func(out func(engine.Side, []byte)) (Processor, error)
	if ecfg != nil {
		mk = func(out func(engine.Side, []byte)) (Processor, error) {
			return engine.New(*ecfg, func(to engine.Side, pkt []byte, _ engine.Emitted) { out(to, pkt) })
		}
	}
	return OpenWith(a, b, ab, ba, wire, mk, log)
}

// Processor takes the IP packets arriving from either side: the TCP
// engine, or the IPsec gateway with the engine inside.
type Processor interface {
	Process(from engine.Side, pkt []byte)
}

// OpenWith is OpenGateway with the processor at the a end made by mk,
// which is given the function the processor sends through (nil mk: none).
func OpenWith(a, b string, ab, ba netem.Config, wire *netem.Config, mk func(out func(engine.Side, []byte)) (Processor, error), log *slog.Logger) (*Bridge, error) {
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
	toA := br.toA
	fromWire := func(f []byte) { sendOn(br.ab, f) }
	if mk != nil {
		if br.proc, err = mk(br.engineOut); err != nil {
			pa.close()
			pb.close()
			return nil, fmt.Errorf("linkem: %w", err)
		}
		toA = func(f []byte) { br.fromRadio(f) }
		fromWire = br.fromWire
	}
	if wire != nil {
		w2 := *wire
		w2.Seed++
		if br.wire, err = netem.NewPair(*wire, w2, nil, fromWire, pa.write); err != nil {
			pa.close()
			pb.close()
			return nil, fmt.Errorf("linkem: wired leg: %w", err)
		}
	}
	if br.ab, err = netem.New(ab, nil, func(f []byte) { pb.write(f) }); err == nil {
		br.ba, err = netem.New(ba, nil, toA)
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
	// The ports lend their read buffers: what goes into a link that
	// queues is copied there (sendOn), and nothing else keeps a frame.
	fromA := func(f []byte) { sendOn(br.ab, f) }
	if br.proc != nil {
		fromA = br.fromWire
	}
	if br.wire != nil {
		fromA = func(f []byte) { sendOn(br.wire.AB, f) }
	}
	go func() { errc <- br.a.readLoop(ctx, fromA) }()
	go func() { errc <- br.b.readLoop(ctx, func(f []byte) { sendOn(br.ba, f) }) }()
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
	if br.wire != nil {
		br.wire.Close()
	}
	br.a.close()
	br.b.close()
	return first
}

// Stats returns the counters.
func (br *Bridge) Stats() Stats {
	return Stats{A: br.a.c.snapshot(), B: br.b.c.snapshot(), AB: br.ab.Stats(), BA: br.ba.Stats()}
}

// Engine returns the bridge's TCP engine, or nil.
func (br *Bridge) Engine() *engine.Engine {
	e, _ := br.proc.(*engine.Engine)
	return e
}

// Processor returns what processes the bridge's IP packets, or nil.
func (br *Bridge) Processor() Processor { return br.proc }

const etherLen = 14

func isIP(f []byte) bool {
	if len(f) <= etherLen {
		return false
	}
	et := uint16(f[12])<<8 | uint16(f[13])
	return et == 0x0800 || et == 0x86dd
}

// sendOn sends f on l: lent as it is to a transparent link, which
// delivers it before Send returns, and copied for one that queues it.
func sendOn(l *netem.Link, f []byte) {
	if l.Transparent() {
		l.Send(f)
		return
	}
	l.Send(append([]byte(nil), f...))
}

// fromWire takes a frame read on a: IP goes to the engine, the rest on.
func (br *Bridge) fromWire(f []byte) { br.toEngine(engine.Wire, f, br.toB) }

// toB sends a frame toward b, over the radio.
func (br *Bridge) toB(f []byte) { sendOn(br.ab, f) }

// fromRadio takes a frame that crossed the radio toward a.
func (br *Bridge) fromRadio(f []byte) { br.toEngine(engine.Radio, f, br.toA) }

// toA sends a frame toward a, over the wired leg if there is one.
func (br *Bridge) toA(f []byte) {
	if br.wire != nil {
		sendOn(br.wire.BA, f)
		return
	}
	br.a.write(f)
}

// toEngine hands an IP frame from a side to the engine, remembering its
// Ethernet header; other frames (ARP) go on through pass.
func (br *Bridge) toEngine(from engine.Side, f []byte, pass func([]byte)) {
	if !isIP(f) {
		pass(f)
		return
	}
	br.l2mu.Lock()
	copy(br.l2[from][:], f[:etherLen])
	br.have[from] = true
	br.l2mu.Unlock()
	br.proc.Process(from, f[etherLen:])
}

// engineOut frames what the engine sends with the direction's Ethernet
// header (a two-host link: one header per direction).
func (br *Bridge) engineOut(to engine.Side, pkt []byte) {
	from := engine.Wire // the direction the packet travels comes from the other side
	if to == engine.Wire {
		from = engine.Radio
	}
	br.l2mu.Lock()
	hdr, ok := br.l2[from], br.have[from]
	br.l2mu.Unlock()
	if !ok {
		return
	}
	bp := framePool.Get().(*[]byte)
	if cap(*bp) < etherLen+len(pkt) {
		*bp = make([]byte, etherLen+len(pkt))
	}
	f := (*bp)[:etherLen+len(pkt)]
	copy(f, hdr[:])
	copy(f[etherLen:], pkt)
	if to == engine.Radio {
		br.toB(f)
	} else {
		br.toA(f)
	}
	framePool.Put(bp)
}

// framePool holds the buffers engineOut frames packets in: each is lent
// to the link for one Send (sendOn copies it where the link queues), so
// it is back in the pool when Send returns.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}
