package lab

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/internal/simnet"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Addresses of the lab's network.
var (
	wiredHost  = netip.MustParseAddr("10.0.0.1") // the wired terminal
	mobileHost = netip.MustParseAddr("10.0.0.2") // the mobile
	// Tunnel mode: the wired terminal's security gateway (a router doing
	// IPsec for it) and the mobile itself.
	wiredRouter = netip.MustParseAddr("192.0.2.1")
	mobileOuter = netip.MustParseAddr("192.0.2.2")
	// IP-in-IP: the mobile's home agent and its care-of address.
	homeAgent = netip.MustParseAddr("198.51.100.1")
	careOf    = netip.MustParseAddr("198.51.100.2")
)

// IPsec is how the lab protects the traffic between the two hosts.
type IPsec string

// The IPsec settings.
const (
	IPsecNone      IPsec = "none"          // plain TCP; the gateway accelerates it by policy
	IPsecTransport IPsec = "esp-transport" // both hosts do ESP themselves
	IPsecTunnel    IPsec = "esp-tunnel"    // a router does ESP for the wired terminal, the mobile for itself
)

// Mode is what sits at the base station.
type Mode string

// The modes.
const (
	ModeE2E   Mode = "e2e"   // a plain relay: end-to-end TCP
	ModeSnoop Mode = "snoop" // the gateway, snoop
	ModeSplit Mode = "split" // the gateway, split (TCP-GW)
)

// NetConfig describes one network.
type NetConfig struct {
	Mode  Mode
	IPsec IPsec
	// CBC protects with AES-CBC and HMAC-SHA-256 instead of AES-GCM.
	CBC bool
	// Read gives the gateway read-class SAs (no integrity key; AES-CBC
	// then, since a read SA cannot be combined mode).
	Read bool
	// IPIP carries the tunnel in an IP-in-IP tunnel from the mobile's home
	// agent to its care-of address (Mobile IP, RFC 2003).
	IPIP         bool
	Wired, Radio netem.Config
	SACK         bool
	// FromServer starts the gateway with no SA: the mobile's agent
	// delegates its SAs to an in-process security server, which pushes
	// them to the gateway (secserver.go).
	FromServer bool
	// Cells is how many base stations the mobile moves across (0: one),
	// each with its radio and, unless end to end, a gateway of its own;
	// the gateways hand the mobile over (handoff.go). Needs IPsec.
	Cells int
	// NoStateTransfer: the gateways pre-provision each other's SAs but
	// never hand flows or SA counters over — the baseline a handoff is
	// measured against.
	NoStateTransfer bool
}

// Net is the wired terminal and the mobile, their IPsec, the links and
// what sits between them (a simnet network):
//
//	wired ─ [IPsec] ══ wired link ══ base station ══ radio ══ [IPsec] ─ mobile
type Net struct {
	*simnet.Net
	Gateway  *gateway.Gateway   // nil in e2e mode; cell 0's
	Gateways []*gateway.Gateway // by cell
	cells    *cellGateways      // with several cells
	// noTransfer: NetConfig.NoStateTransfer.
	noTransfer bool
	// The IPsec at each end (nil without IPsec).
	wiredEnd, mobileEnd *simnet.IPsec
	// PayloadPerFrame is the TCP payload one full-sized radio packet
	// carries, and FrameBytes its size: the link limit is
	// Rate·PayloadPerFrame/FrameBytes.
	PayloadPerFrame, FrameBytes int
	// With FromServer: the security server and the gateway's source.
	server *labServer
}

// hostMTU is the hosts' MTU: room for the IPsec and IP-in-IP headers in a
// 1500-byte radio packet.
const hostMTU = 1400

// NewNet builds and starts a network.
func NewNet(cfg NetConfig) (*Net, error) {
	n := &Net{noTransfer: cfg.NoStateTransfer}
	scfg := simnet.Config{Wired: cfg.Wired, Radio: cfg.Radio, Hosts: gvhost.Options{SACK: cfg.SACK, MTU: hostMTU, CC: "cubic"},
		WiredHost: wiredHost, MobileHost: mobileHost}
	var wm, mw ipsec.Config // wired → mobile, mobile → wired
	if cfg.IPsec != IPsecNone {
		wm, mw = saConfigs(cfg)
		var err error
		mk := func(c ipsec.Config) *ipsec.SA {
			sa, e := ipsec.New(c)
			err = errors.Join(err, e)
			return sa
		}
		wOut, mIn, mOut, wIn := mk(wm), mk(wm), mk(mw), mk(mw)
		if err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
		n.wiredEnd, n.mobileEnd = simnet.NewIPsec(wOut, wIn), simnet.NewIPsec(mOut, mIn)
		if cfg.IPIP {
			n.wiredEnd.Tunnel = [2]netip.Addr{homeAgent, careOf}
			n.mobileEnd.Tunnel = [2]netip.Addr{careOf, homeAgent}
		}
		scfg.WiredEnd, scfg.MobileEnd = n.wiredEnd, n.mobileEnd
	}
	n.PayloadPerFrame, n.FrameBytes = hostMTU-40-12, n.frame(cfg)

	if cfg.Mode != ModeE2E {
		if err := n.newGateways(cfg, wm, mw); err != nil {
			n.Close()
			return nil, err
		}
	}
	scfg.Cells = cfg.Cells
	sn, err := simnet.New(scfg)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("lab: %w", err)
	}
	n.Net = sn
	for i, g := range n.Gateways {
		n.SetCellMiddle(i, g.Process)
	}
	if n.Gateway != nil && cfg.FromServer && cfg.IPsec != IPsecNone {
		if n.server, err = startLabServer(n.Gateway, cfg, wm, mw); err != nil {
			n.Close()
			return nil, fmt.Errorf("lab: %w", err)
		}
		n.SetMiddle(n.server.watchFirst(n.Gateway))
	}
	if len(n.Gateways) > 1 {
		if n.cells, err = startCellGateways(n.Gateways, !cfg.NoStateTransfer); err == nil {
			err = provisioned(n.Gateways, []ipsec.Config{wm, mw})
		}
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("lab: handoff: %w", err)
		}
	}
	return n, nil
}

// newGateways makes the gateway of each cell, in its own IV partition
// (the security server gives every gateway instance one); with one cell
// it holds the SAs from the start (unless FromServer), with several only
// cell 0's does, as its own source (an SA file's, which it offers on).
func (n *Net) newGateways(cfg NetConfig, wm, mw ipsec.Config) error {
	cells := max(cfg.Cells, 1)
	if cells > 1 && (cfg.IPsec == IPsecNone || cfg.FromServer) {
		return errors.New("lab: a network of several cells needs IPsec from SA files: handoff moves SA state")
	}
	var entries []*ipsec.Entry
	if cfg.IPsec != IPsecNone && !cfg.FromServer {
		for _, c := range []ipsec.Config{wm, mw} {
			c.Class = ipsec.ClassWrite
			if cfg.Read {
				c.Class, c.IntegKey = ipsec.ClassRead, nil // what a security server gives a read gateway
			}
			e, err := ipsec.NewEntry(c.CloneKeys())
			if err != nil {
				return fmt.Errorf("lab: %w", err)
			}
			entries = append(entries, e)
		}
	}
	ecfg := engine.Config{Mode: engine.ModeSplit}
	if cfg.Mode == ModeSnoop {
		ecfg.Mode = engine.ModeSnoop
	}
	for i := range cells {
		// The whole network lives and dies with this process — endpoints,
		// SAs and gateways — so the gateways' reservations may too. Each
		// sends through the network, built next.
		state := statedir.MemoryIn(statedir.Partition{K: uint32(i), N: uint32(cells)})
		g, err := gateway.New(gateway.Config{Engine: ecfg, Plain: true, Log: quietLog, State: state}, &ipsec.SAD{},
			func(to engine.Side, pkt []byte) { n.SendCell(i, to, pkt) })
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		n.Gateways = append(n.Gateways, g)
	}
	n.Gateway = n.Gateways[0]
	if len(entries) > 0 {
		if err := n.Gateway.SetSource("lab", entries); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	return nil
}

// saConfigs are the SAs of a network: AES-GCM-128 (or AES-CBC with
// HMAC-SHA-256), in the mode asked for.
func saConfigs(cfg NetConfig) (wm, mw ipsec.Config) {
	mk := func(spi uint32, src, dst netip.Addr) ipsec.Config {
		c := ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: src, Dst: dst, Mode: ipsec.Tunnel, ReplayWindow: 64, Class: ipsec.ClassWrite,
			Enc: ipsec.EncAESGCM16, EncKey: key(20, byte(spi))}
		if cfg.Read || cfg.CBC {
			c.Enc, c.EncKey = ipsec.EncAESCBC, key(16, byte(spi))
			c.Integ, c.IntegKey = ipsec.IntegSHA256_128, key(32, byte(spi)+1)
		}
		return c
	}
	if cfg.IPsec == IPsecTransport {
		wm, mw = mk(0x1001, wiredHost, mobileHost), mk(0x2002, mobileHost, wiredHost)
		wm.Mode, mw.Mode = ipsec.Transport, ipsec.Transport
		return wm, mw
	}
	return mk(0x1001, wiredRouter, mobileOuter), mk(0x2002, mobileOuter, wiredRouter)
}

// key is a fixed test key: the lab's keys protect nothing.
func key(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)*29
	}
	return b
}

// frame is the size of a full-sized packet on the radio.
func (n *Net) frame(cfg NetConfig) int {
	size := hostMTU
	if cfg.IPsec != IPsecNone {
		buf := make([]byte, ipsec.MaxHeadroom+hostMTU+ipsec.MaxTailroom)
		header.WriteIPv4(buf[ipsec.MaxHeadroom:], 0, hostMTU, 1, true, 64, header.ProtoTCP, wiredHost, mobileHost)
		// A throwaway SA of the same kind, so that the real one's sequence
		// numbers stay untouched.
		wm, _ := saConfigs(cfg)
		if sa, err := ipsec.New(wm); err == nil {
			if out, err := sa.Seal(buf, ipsec.MaxHeadroom, hostMTU); err == nil {
				size = len(out)
			}
		}
	}
	if cfg.IPIP {
		size += header.IPv4MinLen
	}
	return size
}

// Check reports what the endpoints' IPsec refused: packets with a bad
// ICV, malformed ones, packets refused as replays that the receiver never
// had, and packets outside the IP-in-IP tunnel. A network passes when
// there are none. (A copy of a packet the receiver has, refused as a
// replay, is not a failure: a read gateway's resends are such copies.)
func (n *Net) Check() error {
	var errs []error
	for name, e := range map[string]*simnet.IPsec{"wired": n.wiredEnd, "mobile": n.mobileEnd} {
		if e == nil {
			continue
		}
		if err := e.Check(); err != nil {
			errs = append(errs, fmt.Errorf("%s end: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Close stops everything: the gateways' handoff services, the network,
// the security server, then the gateways and their engines.
func (n *Net) Close() {
	if n.cells != nil {
		n.cells.close()
	}
	if n.Net != nil {
		n.Net.Close()
	}
	if n.server != nil {
		n.server.close()
	}
	for _, g := range n.Gateways {
		g.Close()
		g.Engine().Close()
	}
}
