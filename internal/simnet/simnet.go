// Package simnet is the in-process network the lab and the tests run on:
// a wired host and a mobile (gVisor TCP stacks), each behind an optional
// end that seals its packets and opens what arrives for it (its IPsec),
// joined by a wired link and a radio (netem) through a middle box — a
// plain relay, an engine or a gateway — that may be replaced while the
// network runs (a restart, a flow moving):
//
//	wired ─ [end] ══ wired link ══ middle ══ radio ══ [end] ─ mobile
//
// With Config.Cells > 1 the mobile can be under one of several base
// stations, each with its radio and its middle box (a gateway of its
// own); Move takes it from one to the next, and the wired side's packets
// follow it (as the routing of a radio access network does):
//
//	                         ╔═ middle 0 ══ radio 0 ═╗
//	wired ─ [end] ══ wired ══╬═ middle 1 ══ radio 1 ═╬═ [end] ─ mobile
//	                         ╚═ middle 2 ══ radio 2 ═╝
//
// The lab builds its figures on it (internal/lab), the engine's and the
// gateway's end-to-end tests their transfers, so a network is described
// once.
package simnet

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
)

// Default addresses of the two hosts.
var (
	WiredAddr  = netip.MustParseAddr("10.0.0.1")
	MobileAddr = netip.MustParseAddr("10.0.0.2")
)

// End is what stands between a host and its link: an IPsec
// implementation, an IP-in-IP tunnel end. Seal takes a packet the host
// sends, Open one that arrives for it; either returns nil to drop it. Both
// may keep the packet they return; neither may keep the one given.
type End interface {
	Seal(pkt []byte) []byte
	Open(pkt []byte) []byte
}

// Middle is what the base station does with a packet from one side: an
// engine's or a gateway's Process. It sends on through Net.Send.
type Middle func(from engine.Side, pkt []byte)

// Config describes a network.
type Config struct {
	// Wired is the wired link (both directions alike); Radio the radio,
	// whose mobile → base station direction takes Radio with Seed+1.
	Wired, Radio netem.Config
	// Hosts are the hosts' TCP options; WiredHost and MobileHost their
	// addresses (WiredAddr and MobileAddr when zero).
	Hosts                 gvhost.Options
	WiredHost, MobileHost netip.Addr
	// WiredEnd and MobileEnd stand between each host and its link (nil:
	// none, the host's packets go as they are).
	WiredEnd, MobileEnd End
	// Cells is how many base stations there are (0: one), each with a
	// radio like Radio (cell i's seeds Seed+2i and Seed+2i+1).
	Cells int
}

// Net is a running network.
type Net struct {
	Wired, Mobile *gvhost.Host
	// WiredLink carries wired → base station on AB and back on BA; Radio
	// base station → mobile on AB and back on BA (Radios[0]; Radios[i]
	// is cell i's).
	WiredLink, Radio *netem.Pair
	Radios           []*netem.Pair
	// Started is when the links came up: their outages count from it.
	Started time.Time
	// Stranded counts packets a radio brought to a cell the mobile had
	// left (lost, as on a real radio).
	Stranded atomic.Uint64
	middles  []atomic.Pointer[Middle] // by cell
	cell     atomic.Int32             // the mobile's
	port     atomic.Uint32            // the last port a Transfer used
}

// New builds and starts a network whose middle box is a plain relay until
// SetMiddle.
func New(cfg Config) (_ *Net, err error) {
	if !cfg.WiredHost.IsValid() {
		cfg.WiredHost = WiredAddr
	}
	if !cfg.MobileHost.IsValid() {
		cfg.MobileHost = MobileAddr
	}
	n := &Net{}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if n.Wired, err = gvhost.New(cfg.WiredHost, cfg.Hosts); err != nil {
		return nil, fmt.Errorf("simnet: wired host: %w", err)
	}
	if n.Mobile, err = gvhost.New(cfg.MobileHost, cfg.Hosts); err != nil {
		return nil, fmt.Errorf("simnet: mobile: %w", err)
	}
	cells := max(cfg.Cells, 1)
	n.middles = make([]atomic.Pointer[Middle], cells)
	if n.WiredLink, err = netem.NewPair(cfg.Wired, cfg.Wired, nil, n.fromWire, deliver(cfg.WiredEnd, n.Wired)); err != nil {
		return nil, fmt.Errorf("simnet: wired link: %w", err)
	}
	for i := range cells {
		ab, ba := cfg.Radio, cfg.Radio
		ab.Seed, ba.Seed = cfg.Radio.Seed+2*uint64(i), cfg.Radio.Seed+2*uint64(i)+1
		toMobile := deliver(cfg.MobileEnd, n.Mobile)
		r, err := netem.NewPair(ab, ba, nil, func(pkt []byte) {
			if int(n.cell.Load()) != i {
				n.Stranded.Add(1)
				return
			}
			toMobile(pkt)
		}, n.fromRadio(i))
		if err != nil {
			return nil, fmt.Errorf("simnet: radio %d: %w", i, err)
		}
		n.Radios = append(n.Radios, r)
	}
	n.Radio = n.Radios[0]
	n.Started = time.Now()
	go n.Wired.Run(send(cfg.WiredEnd, n.WiredLink.AB.Send))
	go n.Mobile.Run(send(cfg.MobileEnd, func(pkt []byte) { n.Radios[n.cell.Load()].BA.Send(pkt) }))
	return n, nil
}

// SetMiddle puts m at the base station (nil: a plain relay): cell 0's.
func (n *Net) SetMiddle(m Middle) { n.SetCellMiddle(0, m) }

// SetCellMiddle puts m at cell's base station (nil: a plain relay).
// Packets already on their way to the old one still reach it.
func (n *Net) SetCellMiddle(cell int, m Middle) {
	if m == nil {
		n.middles[cell].Store(nil)
		return
	}
	n.middles[cell].Store(&m)
}

// Move puts the mobile under cell's base station: what it sends goes on
// that cell's radio, and what the wired side sends reaches that cell's
// middle box from now on. What the other radios still carry toward it is
// lost (Stranded).
func (n *Net) Move(cell int) error {
	if cell < 0 || cell >= len(n.Radios) {
		return fmt.Errorf("simnet: no cell %d of %d", cell, len(n.Radios))
	}
	n.cell.Store(int32(cell))
	return nil
}

// Cell is the cell the mobile is in.
func (n *Net) Cell() int { return int(n.cell.Load()) }

// Send puts a copy of pkt on the link toward side to: what the middle box
// calls for every packet it sends on (cell 0's).
func (n *Net) Send(to engine.Side, pkt []byte) { n.SendCell(0, to, pkt) }

// SendCell is Send for cell's middle box.
func (n *Net) SendCell(cell int, to engine.Side, pkt []byte) {
	n.relay(cell, to, append([]byte(nil), pkt...))
}

// relay puts pkt, which the link may keep, on cell's link toward side to.
func (n *Net) relay(cell int, to engine.Side, pkt []byte) {
	if to == engine.Radio {
		n.Radios[cell].AB.Send(pkt)
	} else {
		n.WiredLink.BA.Send(pkt)
	}
}

// fromWire is what the base stations do with what the wired link brings:
// the mobile's cell takes it.
func (n *Net) fromWire(pkt []byte) {
	cell := int(n.cell.Load())
	if m := n.middles[cell].Load(); m != nil {
		(*m)(engine.Wire, pkt)
		return
	}
	n.relay(cell, engine.Radio, pkt)
}

// fromRadio is what cell's base station does with what its radio brings.
func (n *Net) fromRadio(cell int) func([]byte) {
	return func(pkt []byte) {
		if m := n.middles[cell].Load(); m != nil {
			(*m)(engine.Radio, pkt)
			return
		}
		n.relay(cell, engine.Wire, pkt)
	}
}

// send is a host's way out: through its end onto its link.
func send(end End, link func([]byte)) func([]byte) {
	if end == nil {
		return link // the host hands over a packet of its own
	}
	return func(pkt []byte) {
		if s := end.Seal(pkt); s != nil {
			link(s)
		}
	}
}

// deliver is a host's way in: through its end into its stack.
func deliver(end End, h *gvhost.Host) func([]byte) {
	if end == nil {
		return h.Inject
	}
	return func(pkt []byte) {
		if o := end.Open(pkt); o != nil {
			h.Inject(o)
		}
	}
}

// Close stops the links and the hosts. The middle box is the caller's to
// close (after this: nothing reaches it any more).
func (n *Net) Close() {
	for _, p := range append([]*netem.Pair{n.WiredLink}, n.Radios...) {
		if p != nil {
			p.Close()
		}
	}
	for _, h := range []*gvhost.Host{n.Wired, n.Mobile} {
		if h != nil {
			h.Close()
		}
	}
}

// Transfer sends size random bytes from one host to the other and checks
// them (gvhost.Transfer), each time on a TCP port of its own from 5001
// on; it returns the goodput in Mbit/s.
func (n *Net) Transfer(toMobile bool, size int, timeout time.Duration) (float64, error) {
	src, dst := n.Wired, n.Mobile
	if !toMobile {
		src, dst = dst, src
	}
	gp, err := gvhost.Transfer(src, dst, uint16(5000+n.port.Add(1)), size, timeout)
	if err != nil {
		return 0, errors.Join(errors.New("simnet: transfer"), err)
	}
	return gp, nil
}
