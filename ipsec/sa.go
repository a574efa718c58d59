package ipsec

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/ipsec/header"
)

// Proto is the IPsec protocol of an SA.
type Proto uint8

const (
	ESP Proto = header.ProtoESP
	AH  Proto = header.ProtoAH
)

func (p Proto) String() string {
	switch p {
	case ESP:
		return "esp"
	case AH:
		return "ah"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Mode is transport or tunnel (RFC 4301 §4.1).
type Mode uint8

const (
	// ModeAny is for inbound SAs learnt from sources that do not say the
	// mode (Wireshark esp_sa lines): the next header decides, IPv4 or
	// IPv6 inside meaning tunnel. Sealing with ModeAny uses transport.
	ModeAny Mode = iota
	Transport
	Tunnel
)

func (m Mode) String() string {
	switch m {
	case Transport:
		return "transport"
	case Tunnel:
		return "tunnel"
	}
	return "any"
}

// Class is an SA's permission class (DESIGN.md "Permission classes").
type Class uint8

const (
	// ClassNone: relay untouched; no keys.
	ClassNone Class = iota
	// ClassRead: decrypt to read; never seal or verify; no integrity key.
	ClassRead
	// ClassWrite: verify, decrypt, change, seal.
	ClassWrite
)

func (c Class) String() string {
	switch c {
	case ClassRead:
		return "read"
	case ClassWrite:
		return "write"
	}
	return "none"
}

// ParseClass parses "none", "read" or "write".
func ParseClass(s string) (Class, error) {
	switch s {
	case "none":
		return ClassNone, nil
	case "read":
		return ClassRead, nil
	case "write":
		return ClassWrite, nil
	}
	return 0, fmt.Errorf("unknown permission class %q (want none, read or write)", s)
}

// Lifetime bounds an SA's use (RFC 4301 §4.4.2.1). A zero field is no limit.
// Crossing a soft limit is reported once; past a hard limit the SA refuses
// to seal or open.
type Lifetime struct {
	SoftBytes, HardBytes uint64
	SoftTime, HardTime   time.Duration
}

// ID identifies an SA in the SAD: RFC 4301 §4.1 lookup by SPI, destination
// and protocol.
type ID struct {
	SPI   uint32
	Dst   netip.Addr
	Proto Proto
}

func (id ID) String() string { return fmt.Sprintf("%v spi=%#08x dst=%v", id.Proto, id.SPI, id.Dst) }

// Config is everything an SA is made from. Key slices are copied by New and
// may be wiped by the caller afterwards.
type Config struct {
	SPI      uint32
	Proto    Proto
	Src, Dst netip.Addr // tunnel endpoints, or the hosts in transport mode
	Mode     Mode
	// UDP encapsulation (RFC 3948); zero ports mean raw ESP. Ports are as
	// sent by this SA's sender: source, then destination.
	EncapSrcPort, EncapDstPort uint16

	Enc      Enc
	EncKey   []byte // for AES-GCM, AES-CTR and ChaCha20: key ‖ 4-byte salt
	Integ    Integ
	IntegKey []byte

	ESN          bool // 64-bit extended sequence numbers (RFC 4303 §2.2.1)
	ReplayWindow int  // inbound window size; 0 means 64; -1 disables
	Lifetime     Lifetime
	PMTU         int // 0: no limit checked when sealing
	Class        Class

	// TS is the traffic this SA protects, for SPD-less tools such as
	// `espep pcap encrypt`. Zero value: Src/Dst hosts, any protocol.
	TS Selector

	// Clock for time lifetimes; nil means time.Now.
	Clock func() time.Time
}

// ID returns the SAD key of the SA.
func (c *Config) ID() ID { return ID{SPI: c.SPI, Dst: c.Dst, Proto: c.Proto} }

// WipeKeys destroys the keys c holds (their bytes are zeroed where they
// lie: every copy sharing them is wiped too).
func (c *Config) WipeKeys() {
	clear(c.EncKey)
	clear(c.IntegKey)
}

// CloneKeys returns c with keys of its own, so that wiping either leaves
// the other's intact.
func (c Config) CloneKeys() Config {
	c.EncKey, c.IntegKey = slices.Clone(c.EncKey), slices.Clone(c.IntegKey)
	return c
}

// UDPEncap reports whether the SA's ESP travels in UDP.
func (c *Config) UDPEncap() bool { return c.EncapSrcPort != 0 || c.EncapDstPort != 0 }

// validate checks what is common to all classes.
func (c *Config) validate() error {
	if c.SPI < 256 {
		return fmt.Errorf("spi %d is reserved (RFC 4303 §2.1)", c.SPI)
	}
	if c.Proto != ESP && c.Proto != AH {
		return fmt.Errorf("protocol %v: want esp or ah", c.Proto)
	}
	if c.Mode == Tunnel && (!c.Src.IsValid() || !c.Dst.IsValid()) {
		return fmt.Errorf("tunnel mode needs source and destination addresses")
	}
	if c.Src.IsValid() && c.Dst.IsValid() && c.Src.Is4() != c.Dst.Is4() {
		return fmt.Errorf("src %v and dst %v: %w", c.Src, c.Dst, ErrFamily)
	}
	if c.Proto == AH && (c.Enc != EncNone || c.UDPEncap()) {
		return fmt.Errorf("ah takes no encryption and no udp encapsulation")
	}
	if c.Proto == AH && c.Integ == IntegNone {
		return fmt.Errorf("ah needs an integrity transform")
	}
	if c.Proto == ESP && c.Enc == EncNone {
		return fmt.Errorf("esp needs an encryption transform (null for integrity only)")
	}
	if c.UDPEncap() && (c.EncapSrcPort == 0 || c.EncapDstPort == 0) {
		return fmt.Errorf("udp encapsulation needs both ports")
	}
	if c.ReplayWindow != -1 && c.ReplayWindow != 0 && (c.ReplayWindow < MinWindow || c.ReplayWindow > MaxWindow) {
		return fmt.Errorf("replay window %d outside [%d, %d]", c.ReplayWindow, MinWindow, MaxWindow)
	}
	if c.PMTU != 0 && c.PMTU < 576 {
		return fmt.Errorf("pmtu %d below 576", c.PMTU)
	}
	return nil
}

// Stats is a snapshot of an SA's counters; they only grow. Bytes are those
// of the protected payload. Outbound and inbound are counted apart, and the
// lifetime byte limits apply to each direction: a gateway that opens and
// re-seals the same traffic on one SA does not count it twice.
type Stats struct {
	OutPackets, OutBytes uint64
	InPackets, InBytes   uint64
	ICVFailures          uint64
	ReplayDrops          uint64
	OtherDrops           uint64 // malformed, wrong SA, bad padding, dummy
}

// SA is a write-class security association: it seals, verifies and opens.
// Seal and Open may be called from different goroutines; each direction is
// serialised by its own lock.
type SA struct {
	cfg        Config // keys wiped from this copy after the transforms are built
	id         ID
	otherDrops atomic.Uint64

	frame   Frame // the outer form cfg states
	created time.Time
	clock   func() time.Time
	softHit atomic.Bool
	dead    atomic.Bool
	lens    espLens // ESP: the transform's fixed lengths, read without calls

	out struct {
		sync.Mutex
		seq    uint64 // last sequence number used
		ivSrc  IVSource
		c      espCipher // ESP
		mac    *hmacAuth // AH
		id     uint16    // outer IPv4 identification
		aadBuf [header.IPv6Len + maxAHHeaders]byte

		packets, bytes uint64
	}
	in struct {
		sync.Mutex
		win      *Window // always kept: ESN inference needs its top
		noReplay bool
		c        espCipher
		mac      *hmacAuth
		aadBuf   [header.IPv6Len + maxAHHeaders]byte

		packets, bytes, icvFail, replay uint64

		// ESN high-half search while nothing has been accepted (esp.go).
		searched time.Time
		search   []byte
	}
}

// Stats returns a snapshot of the SA's counters.
func (sa *SA) Stats() Stats {
	sa.out.Lock()
	st := Stats{OutPackets: sa.out.packets, OutBytes: sa.out.bytes}
	sa.out.Unlock()
	sa.in.Lock()
	st.InPackets, st.InBytes, st.ICVFailures, st.ReplayDrops = sa.in.packets, sa.in.bytes, sa.in.icvFail, sa.in.replay
	sa.in.Unlock()
	st.OtherDrops = sa.otherDrops.Load()
	return st
}

// maxAHHeaders bounds the IP options and IPv6 extension headers that AH
// processing copies to zero their mutable fields.
const maxAHHeaders = 512

// New makes a write-class SA. cfg.Class must be ClassWrite.
func New(cfg Config) (*SA, error) {
	if cfg.Class != ClassWrite {
		return nil, fmt.Errorf("sa %v: class %v: New makes write-class SAs (use NewReader for read)", cfg.ID(), cfg.Class)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("sa %v: %w", cfg.ID(), err)
	}
	sa := &SA{cfg: cfg, id: cfg.ID(), clock: cfg.Clock}
	if sa.clock == nil {
		sa.clock = time.Now
	}
	sa.created = sa.clock()
	sa.frame = Frame{mode: cfg.Mode, sport: cfg.EncapSrcPort, dport: cfg.EncapDstPort, dst: cfg.Dst}
	if cfg.Mode == Tunnel {
		sa.frame.tmpl = newOuterTemplate(cfg.Src, cfg.Dst)
	}
	var err error
	if cfg.Proto == ESP {
		if sa.out.c, err = newESPCipher(cfg.Enc, cfg.EncKey, cfg.Integ, cfg.IntegKey); err == nil {
			sa.in.c, err = newESPCipher(cfg.Enc, cfg.EncKey, cfg.Integ, cfg.IntegKey)
		}
		if err == nil {
			sa.lens = espLens{iv: sa.in.c.ivLen(), align: sa.in.c.align(), icv: sa.in.c.icvLen()}
			if cfg.Enc == EncAESCBC {
				sa.out.ivSrc, err = newCBCIV()
			} else {
				sa.out.ivSrc = SeqIV{}
			}
		}
	} else {
		if sa.out.mac, err = newHMAC(cfg.Integ, cfg.IntegKey); err == nil {
			sa.in.mac, err = newHMAC(cfg.Integ, cfg.IntegKey)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, err)
	}
	w := cfg.ReplayWindow
	if w <= 0 {
		w = 64
	}
	if sa.in.win, err = NewWindow(w); err != nil {
		return nil, fmt.Errorf("sa %v: %w", sa.id, err)
	}
	sa.in.noReplay = cfg.ReplayWindow == -1
	sa.cfg.EncKey = nil
	sa.cfg.IntegKey = nil
	return sa, nil
}

// ID returns the SA's SAD key.
func (sa *SA) ID() ID { return sa.id }

// Config returns the SA's configuration without its keys.
func (sa *SA) Config() Config { return sa.cfg }

// SetIVSource replaces the default IV source (SeqIV for counter and AEAD
// transforms, an encrypted counter for AES-CBC).
func (sa *SA) SetIVSource(s IVSource) {
	sa.out.Lock()
	sa.out.ivSrc = s
	sa.out.Unlock()
}

// OutSeq returns the last outbound sequence number used.
func (sa *SA) OutSeq() uint64 {
	sa.out.Lock()
	defer sa.out.Unlock()
	return sa.out.seq
}

// SetOutSeq sets the last outbound sequence number used; the next Seal uses
// seq+1. A gateway that takes over an SA continues from what the receiver
// has seen (DESIGN.md rule 2).
func (sa *SA) SetOutSeq(seq uint64) {
	sa.out.Lock()
	sa.out.seq = seq
	sa.out.Unlock()
}

// WindowState returns the inbound replay window's top and bitmap, which
// travel with the SA in a handoff (ESN high bits included in top).
func (sa *SA) WindowState() (top uint64, bitmap []uint64) {
	sa.in.Lock()
	defer sa.in.Unlock()
	return sa.in.win.State()
}

// InTop returns the highest inbound sequence number accepted so far (with
// its ESN high bits), without copying the window.
func (sa *SA) InTop() uint64 {
	sa.in.Lock()
	defer sa.in.Unlock()
	return sa.in.win.top
}

// SetWindowState restores an inbound replay window.
func (sa *SA) SetWindowState(top uint64, bitmap []uint64) error {
	sa.in.Lock()
	defer sa.in.Unlock()
	return sa.in.win.SetState(top, bitmap)
}

// TakeInbound makes sa, the same SA given again (a new value with the
// same keys), go on from old's inbound replay window, and ends old's
// inbound side in the same step: from then on old opens nothing, so no
// packet is accepted by both. old's packets seen so far count as seen on
// sa (Window.Adopt).
func (sa *SA) TakeInbound(old *SA) {
	if old == sa {
		return
	}
	old.in.Lock()
	defer old.in.Unlock()
	sa.in.Lock()
	defer sa.in.Unlock()
	sa.in.win.Adopt(old.in.win)
	old.in.c, old.in.mac = nil, nil
}

// SeenThrough counts every inbound sequence number up to n (with its ESN
// high bits) as seen: a gateway that restarts refuses what its
// predecessor may have accepted (Window.SeenThrough).
func (sa *SA) SeenThrough(n uint64) {
	sa.in.Lock()
	defer sa.in.Unlock()
	sa.in.win.SeenThrough(n)
}

// maxSeq is the last sequence number the SA may use (RFC 4303 §3.3.3: no
// cycling; a new SA must be made instead).
func (sa *SA) maxSeq() uint64 {
	if sa.cfg.ESN {
		return ^uint64(0)
	}
	return 1<<32 - 1
}

// SoftExpired reports whether a soft lifetime has been crossed.
func (sa *SA) SoftExpired() bool {
	sa.checkBoth()
	return sa.softHit.Load()
}

// HardExpired reports whether a hard lifetime has been crossed.
func (sa *SA) HardExpired() bool {
	sa.checkBoth()
	return sa.dead.Load()
}

func (sa *SA) checkBoth() {
	sa.out.Lock()
	sa.checkLife(sa.out.bytes, 0)
	sa.out.Unlock()
	sa.in.Lock()
	sa.checkLife(sa.in.bytes, 0)
	sa.in.Unlock()
}

// checkLife updates the expiry flags and returns ErrHardExpired when the
// SA is dead or the next n bytes would take the direction past its hard
// byte limit (which kills the SA). The caller holds that direction's lock.
func (sa *SA) checkLife(bytes uint64, n int) error {
	if sa.dead.Load() {
		return ErrHardExpired
	}
	lt := &sa.cfg.Lifetime
	var age time.Duration
	if lt.SoftTime != 0 || lt.HardTime != 0 {
		age = sa.clock().Sub(sa.created)
	}
	if lt.HardBytes != 0 && bytes+uint64(n) > lt.HardBytes {
		// A packet that would cross the limit is refused, and the SA is
		// done: it cannot carry whole packets any more.
		sa.dead.Store(true)
		sa.softHit.Store(true)
		return ErrHardExpired
	}
	if lt.HardTime != 0 && age >= lt.HardTime {
		sa.dead.Store(true)
		sa.softHit.Store(true)
		return ErrHardExpired
	}
	if (lt.SoftBytes != 0 && bytes >= lt.SoftBytes) || (lt.SoftTime != 0 && age >= lt.SoftTime) {
		sa.softHit.Store(true)
	}
	return nil
}

// Wipe destroys the SA's keys as far as Go allows (the transforms are
// dropped; the standard library keeps no key copy we can reach) and makes
// every later Seal and Open fail. The SAD calls it on delete.
func (sa *SA) Wipe() {
	sa.dead.Store(true)
	sa.out.Lock()
	sa.out.c, sa.out.mac = nil, nil
	sa.out.Unlock()
	sa.in.Lock()
	sa.in.c, sa.in.mac = nil, nil
	sa.in.Unlock()
}
