package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
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
}

// Net is the wired terminal and the mobile, their IPsec, the links and
// what sits between them:
//
//	wired ─ [IPsec] ══ wired link ══ base station ══ radio ══ [IPsec] ─ mobile
type Net struct {
	Wired, Mobile *gvhost.Host
	Gateway       *gateway.Gateway // nil in e2e mode
	wired, radio  *netem.Pair
	// The IPsec at each end: sealing its host's packets, opening the
	// other's (nil without IPsec).
	wOut, wIn, mOut, mIn *ipsec.SA
	// PayloadPerFrame is the TCP payload one full-sized radio packet
	// carries, and FrameBytes its size: the link limit is
	// Rate·PayloadPerFrame/FrameBytes.
	PayloadPerFrame, FrameBytes int

	notInTunnel atomic.Int64
	// Sequence numbers each end's IPsec accepted, and packets it refused
	// as replays that it never had: a snoop gateway with a read SA resends
	// the ciphertext as it came, and a copy of a packet the receiver has is
	// rightly refused; a refused packet it never had is a failure.
	mu           sync.Mutex
	accepted     map[*ipsec.SA]map[uint32]bool
	freshRefused int
	// Started is when the links came up: their outages count from it.
	Started time.Time
}

// hostMTU is the hosts' MTU: room for the IPsec and IP-in-IP headers in a
// 1500-byte radio packet.
const hostMTU = 1400

// NewNet builds and starts a network.
func NewNet(cfg NetConfig) (*Net, error) {
	n := &Net{accepted: map[*ipsec.SA]map[uint32]bool{}}
	opts := gvhost.Options{SACK: cfg.SACK, MTU: hostMTU, CC: "cubic"}
	var err error
	if n.Wired, err = gvhost.New(wiredHost, opts); err != nil {
		return nil, err
	}
	if n.Mobile, err = gvhost.New(mobileHost, opts); err != nil {
		n.Wired.Close()
		return nil, err
	}
	var wm, mw ipsec.Config // wired → mobile, mobile → wired
	if cfg.IPsec != IPsecNone {
		wm, mw = saConfigs(cfg)
		mk := func(c ipsec.Config) *ipsec.SA {
			sa, e := ipsec.New(c)
			err = errors.Join(err, e)
			return sa
		}
		n.wOut, n.mIn, n.mOut, n.wIn = mk(wm), mk(wm), mk(mw), mk(mw)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("lab: %w", err)
		}
	}
	n.PayloadPerFrame, n.FrameBytes = hostMTU-40-12, n.frame(cfg)

	if cfg.Mode != ModeE2E {
		sad := &ipsec.SAD{}
		if cfg.IPsec != IPsecNone {
			for _, c := range []ipsec.Config{wm, mw} {
				c.Class = ipsec.ClassWrite
				if cfg.Read {
					c.Class, c.IntegKey = ipsec.ClassRead, nil // what a security server gives a read gateway
				}
				e, err := ipsec.NewEntry(c)
				if err != nil {
					n.Close()
					return nil, fmt.Errorf("lab: %w", err)
				}
				if err := sad.Add(e); err != nil {
					n.Close()
					return nil, fmt.Errorf("lab: %w", err)
				}
			}
		}
		ecfg := engine.Config{Mode: engine.ModeSplit}
		if cfg.Mode == ModeSnoop {
			ecfg.Mode = engine.ModeSnoop
		}
		// The whole network lives and dies with this process — endpoints,
		// SAs and gateway — so the gateway's reservations may too.
		g, err := gateway.New(gateway.Config{Engine: ecfg, Plain: true, Log: quietLog, State: statedir.Memory()}, sad, func(to engine.Side, pkt []byte) {
			c := append([]byte(nil), pkt...)
			if to == engine.Radio {
				n.radio.AB.Send(c)
			} else {
				n.wired.BA.Send(c)
			}
		})
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("lab: %w", err)
		}
		n.Gateway = g
	}
	middle := func(from engine.Side) func([]byte) {
		return func(p []byte) {
			if n.Gateway != nil {
				n.Gateway.Process(from, p)
				return
			}
			if from == engine.Wire {
				n.radio.AB.Send(p)
			} else {
				n.wired.BA.Send(p)
			}
		}
	}
	radioBA := cfg.Radio
	radioBA.Seed++
	if n.wired, err = netem.NewPair(cfg.Wired, cfg.Wired, nil, middle(engine.Wire), n.receive(n.wIn, n.Wired, cfg.IPIP)); err != nil {
		n.Close()
		return nil, fmt.Errorf("lab: wired link: %w", err)
	}
	if n.radio, err = netem.NewPair(cfg.Radio, radioBA, nil, n.receive(n.mIn, n.Mobile, cfg.IPIP), middle(engine.Radio)); err != nil {
		n.Close()
		return nil, fmt.Errorf("lab: radio: %w", err)
	}
	n.Started = time.Now()
	go n.Wired.Run(n.send(n.wOut, homeAgent, careOf, cfg.IPIP, func(p []byte) { n.wired.AB.Send(p) }))
	go n.Mobile.Run(n.send(n.mOut, careOf, homeAgent, cfg.IPIP, func(p []byte) { n.radio.BA.Send(p) }))
	return n, nil
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

// send is what a host's IPsec does with the host's packets: seal them (and
// put them in the IP-in-IP tunnel) and put them on the link.
func (n *Net) send(out *ipsec.SA, tsrc, tdst netip.Addr, ipip bool, link func([]byte)) func([]byte) {
	return func(p []byte) {
		if out != nil {
			buf := make([]byte, ipsec.MaxHeadroom+len(p)+ipsec.MaxTailroom)
			copy(buf[ipsec.MaxHeadroom:], p)
			s, err := out.Seal(buf, ipsec.MaxHeadroom, len(p))
			if err != nil {
				return
			}
			p = s
			if ipip {
				b := make([]byte, header.IPv4MinLen+len(p))
				header.WriteIPv4(b, 0, len(b), 0, false, 64, header.ProtoIPIP, tsrc, tdst)
				copy(b[header.IPv4MinLen:], p)
				p = b
			}
		}
		link(p)
	}
}

// receive is what a host's IPsec does with what arrives for it: take it
// out of the IP-in-IP tunnel, open it, and hand it to the host; anything it
// refuses is counted.
func (n *Net) receive(in *ipsec.SA, h *gvhost.Host, ipip bool) func([]byte) {
	return func(p []byte) {
		if in == nil {
			h.Inject(p)
			return
		}
		if ipip {
			ip, err := header.ParseIPv4(p)
			if err != nil || ip.Protocol() != header.ProtoIPIP {
				n.notInTunnel.Add(1)
				return
			}
			p = ip.Payload()
		}
		l, _ := ipsec.Locate(p)
		inner, err := in.Open(p) // a refusal is counted by the SA
		n.mu.Lock()
		switch {
		case err == nil:
			if n.accepted[in] == nil {
				n.accepted[in] = map[uint32]bool{}
			}
			n.accepted[in][l.Seq] = true
		case (errors.Is(err, ipsec.ErrReplay) || errors.Is(err, ipsec.ErrTooOld)) && !n.accepted[in][l.Seq]:
			n.freshRefused++
		}
		n.mu.Unlock()
		if err == nil {
			h.Inject(inner)
		}
	}
}

// Check reports what the endpoints' IPsec refused: packets with a bad
// ICV, malformed ones, packets refused as replays that the receiver never
// had, and packets outside the IP-in-IP tunnel. A network passes when
// there are none. (A copy of a packet the receiver has, refused as a
// replay, is not a failure: a read gateway's resends are such copies.)
func (n *Net) Check() error {
	var errs []error
	for name, sa := range map[string]*ipsec.SA{"wired": n.wIn, "mobile": n.mIn} {
		if sa == nil {
			continue
		}
		if s := sa.Stats(); s.ICVFailures+s.OtherDrops != 0 {
			errs = append(errs, fmt.Errorf("%s end refused packets: %d ICV, %d other", name, s.ICVFailures, s.OtherDrops))
		}
	}
	n.mu.Lock()
	if n.freshRefused != 0 {
		errs = append(errs, fmt.Errorf("%d packets refused as replays that the receiver never had", n.freshRefused))
	}
	n.mu.Unlock()
	if k := n.notInTunnel.Load(); k != 0 {
		errs = append(errs, fmt.Errorf("%d packets outside the IP-in-IP tunnel", k))
	}
	return errors.Join(errs...)
}

// Close stops everything.
func (n *Net) Close() {
	for _, p := range []*netem.Pair{n.wired, n.radio} {
		if p != nil {
			p.Close()
		}
	}
	if n.Gateway != nil {
		n.Gateway.Close()
		n.Gateway.Engine().Close()
	}
	for _, h := range []*gvhost.Host{n.Wired, n.Mobile} {
		if h != nil {
			h.Close()
		}
	}
}
