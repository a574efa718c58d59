//go:build linux

package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/espep/espep/internal/metrics"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// Mark is the firewall mark on espep host's own packets, and the routing
// table that holds the TUN routes.
const Mark = 0xe5e5

// Stats are the host's counters.
type Stats struct {
	TunIn, Sealed, Bypassed, Discarded, SealErrors  atomic.Uint64
	NetIn, Opened, OpenErrors, PolicyDrops, NotOurs atomic.Uint64
	IKE, Keepalives, TunWriteErrors, SendErrors     atomic.Uint64
	SoftExpired, HardExpired                        atomic.Uint64
}

// Host is a running endpoint.
type Host struct {
	cfg *Config
	log *slog.Logger
	tun tun.Device
	mu  sync.RWMutex // guards sad, spd and leases on reload
	sad *ipsec.SAD
	spd *ipsec.SPD
	// state keeps the outbound SAs' sequence numbers (and so their
	// counter IVs: IV = seq) across restarts; each outbound SA seals only
	// numbers its lease allows.
	state  *statedir.Dir
	leases map[ipsec.ID]*statedir.Lease

	send4, esp4, ah4, udp4 int
	send6, esp6, ah6, udp6 int // -1 when IPv6 is not available
	Stats                  Stats
	rules                  [][]string // ip commands to undo on Close
}

// New sets up the TUN device, routes and sockets; Run moves packets.
func New(cfg *Config, log *slog.Logger) (*Host, error) {
	if log == nil {
		log = slog.Default()
	}
	h := &Host{cfg: cfg, log: log, send4: -1, esp4: -1, ah4: -1, udp4: -1, send6: -1, esp6: -1, ah6: -1, udp6: -1}
	if cfg.StateDir != "" {
		d, err := statedir.Open(cfg.StateDir, statedir.Partition{}, log)
		if err != nil {
			return nil, fmt.Errorf("host: %w", err)
		}
		h.state = d
	}
	if err := h.load(cfg); err != nil {
		h.closeState()
		return nil, err
	}
	// The TUN MTU leaves room for the largest IPsec overhead (of one SA or
	// of a policy's bundle), so the
	// kernel's TCP never hands over a packet that cannot be sent sealed.
	over := 0
	for _, e := range h.sad.Entries() {
		if e.Write != nil {
			over = max(over, e.Write.MaxOverhead())
		}
	}
	for _, p := range cfg.Policies { // a bundle adds up
		sum := 0
		for _, id := range p.SAs {
			if e, ok := h.sad.Get(id); ok && e.Write != nil {
				sum += e.Write.MaxOverhead()
			}
		}
		over = max(over, sum)
	}
	if cfg.MTU == 0 {
		cfg.MTU = cfg.LinkMTU - over
	} else if cfg.MTU+over > cfg.LinkMTU {
		log.Warn("tun mtu plus the largest sa overhead exceeds the link mtu: big packets will not be sent",
			"mtu", cfg.MTU, "overhead", over, "link-mtu", cfg.LinkMTU)
	}
	var err error
	if h.tun, err = tun.CreateTUN(cfg.TUN, cfg.MTU); err != nil {
		return nil, fmt.Errorf("host: tun %s: %w", cfg.TUN, err)
	}
	if err := h.openSockets(); err != nil {
		h.Close()
		return nil, err
	}
	if err := h.setupRoutes(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// load builds the SAD and SPD from a configuration. An SA that is already
// installed with the same ID, transforms and mode is kept as it is, with
// its sequence counter and replay window, so a reload does not disturb
// the flows on it; SAs no longer listed are deleted and wiped.
func (h *Host) load(cfg *Config) error {
	old, _ := h.tables()
	var sad ipsec.SAD
	for _, c := range cfg.SAs {
		if old != nil {
			if e, ok := old.Get(c.ID()); ok && sameSA(e.Config, c) {
				if err := sad.Add(e); err != nil {
					return fmt.Errorf("host: %w", err)
				}
				continue
			}
		}
		e, err := ipsec.NewEntry(c)
		if err != nil {
			return fmt.Errorf("host: %w", err)
		}
		if err := sad.Add(e); err != nil {
			return fmt.Errorf("host: %w", err)
		}
	}
	var spd ipsec.SPD
	spd.Set(cfg.Policies)
	leases := h.leaseSAs(&sad, cfg)
	h.mu.Lock()
	h.sad, h.spd, h.leases = &sad, &spd, leases
	h.mu.Unlock()
	if old != nil {
		for _, e := range old.Entries() {
			if _, kept := sad.Get(e.Config.ID()); !kept {
				old.Delete(e.Config.ID()) // wipes its keys
			}
		}
	}
	return nil
}

// leaseSAs gives each outbound SA (one a protect policy seals with) its
// lease on its sequence space: an SA it already had keeps its lease; a new
// one starts above every number a predecessor may have used. Leases of SAs
// gone are dropped.
func (h *Host) leaseSAs(sad *ipsec.SAD, cfg *Config) map[ipsec.ID]*statedir.Lease {
	if h.state == nil {
		return nil
	}
	h.mu.RLock()
	old, oldSAD := h.leases, h.sad
	h.mu.RUnlock()
	leases := map[ipsec.ID]*statedir.Lease{}
	for _, p := range cfg.Policies {
		for _, id := range p.SAs {
			e, ok := sad.Get(id)
			if !ok || e.Write == nil || leases[id] != nil {
				continue
			}
			if l := old[id]; l != nil && oldSAD != nil {
				if oe, _ := oldSAD.Get(id); oe == e {
					leases[id] = l
					continue
				}
			}
			l := h.state.Lease(statedir.SeqKey{ID: id, KeyID: e.KeyID})
			e.Write.SetOutSeq(max(e.Write.OutSeq(), l.Floor()))
			l.Want(l.Floor() + seqBlock)
			leases[id] = l
		}
	}
	for id, l := range old {
		if leases[id] != l {
			l.Drop()
		}
	}
	return leases
}

// seqBlock is how many sequence numbers the host reserves on an SA at a
// time, asking for the next block when half of this one is used.
const seqBlock = 4096

// reserved reports whether the SA's next sequence number is reserved on
// disk, waiting briefly if it is about to be.
func reserved(l *statedir.Lease, sa *ipsec.SA) bool {
	if l == nil {
		return true
	}
	next := sa.OutSeq() + 1
	if next+seqBlock/2 > l.Allowed() {
		l.Want(next + seqBlock)
	}
	return next <= l.Allowed() || l.Await(next+seqBlock, 100*time.Millisecond)
}

// closeState records the last numbers the outbound SAs used and closes
// the state directory.
func (h *Host) closeState() {
	if h.state == nil {
		return
	}
	h.mu.RLock()
	for id, l := range h.leases {
		if e, ok := h.sad.Get(id); ok && e.Write != nil {
			l.Release(e.Write.OutSeq())
		}
	}
	h.mu.RUnlock()
	if err := h.state.Close(); err != nil {
		h.log.Error("host: state dir: the last sequence numbers were not recorded", "err", err)
	}
	h.state = nil
}

// Reload applies a new configuration's SAs and policies. The TUN, its
// addresses and routes stay as they were started.
func (h *Host) Reload(cfg *Config) error {
	if err := h.load(cfg); err != nil {
		return err
	}
	h.log.Info("espep host reloaded", "sas", len(cfg.SAs), "policies", len(cfg.Policies))
	return nil
}

func sameSA(a, b ipsec.Config) bool {
	return a.Src == b.Src && a.Dst == b.Dst && a.Mode == b.Mode && a.Enc == b.Enc && a.Integ == b.Integ &&
		a.ESN == b.ESN && a.EncapSrcPort == b.EncapSrcPort && a.EncapDstPort == b.EncapDstPort && a.Class == b.Class
}

func (h *Host) tables() (*ipsec.SAD, *ipsec.SPD) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sad, h.spd
}

func (h *Host) openSockets() error {
	var err error
	// Sending: one IPv4 raw socket with our own headers, marked.
	if h.send4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		return fmt.Errorf("host: raw socket (needs CAP_NET_RAW): %w", err)
	}
	if err := unix.SetsockoptInt(h.send4, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return fmt.Errorf("host: SO_MARK: %w", err)
	}
	// Receiving: ESP and AH as raw IP (the kernel delivers the IPv4
	// header too), ESP in UDP on the NAT-T port.
	for _, x := range []struct {
		fd    *int
		proto int
	}{{&h.esp4, unix.IPPROTO_ESP}, {&h.ah4, unix.IPPROTO_AH}} {
		if *x.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, x.proto); err != nil {
			return fmt.Errorf("host: raw socket for protocol %d: %w", x.proto, err)
		}
		if err := setTimeout(*x.fd); err != nil {
			return err
		}
	}
	if h.cfg.UDPPort != 0 {
		if h.udp4, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return fmt.Errorf("host: udp socket: %w", err)
		}
		unix.SetsockoptInt(h.udp4, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(h.udp4, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return fmt.Errorf("host: IP_PKTINFO: %w", err)
		}
		if err := unix.Bind(h.udp4, &unix.SockaddrInet4{Port: h.cfg.UDPPort}); err != nil {
			return fmt.Errorf("host: bind udp %d: %w", h.cfg.UDPPort, err)
		}
		if err := setTimeout(h.udp4); err != nil {
			return err
		}
	}
	if err := h.openSockets6(); err != nil {
		h.log.Warn("IPv6 not available: IPv4 only", "err", err)
		for _, fd := range []*int{&h.send6, &h.esp6, &h.ah6, &h.udp6} {
			if *fd >= 0 {
				unix.Close(*fd)
				*fd = -1
			}
		}
	}
	return nil
}

// openSockets6 opens the IPv6 counterparts. IPv6 raw sockets do not hand
// over the IPv6 header, so the receivers ask for the destination address
// (IPV6_RECVPKTINFO) and rebuild one.
func (h *Host) openSockets6() error {
	var err error
	if h.send6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(h.send6, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
		return fmt.Errorf("IPV6_HDRINCL: %w", err)
	}
	if err := unix.SetsockoptInt(h.send6, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return err
	}
	for _, x := range []struct {
		fd    *int
		proto int
	}{{&h.esp6, unix.IPPROTO_ESP}, {&h.ah6, unix.IPPROTO_AH}} {
		if *x.fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, x.proto); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(*x.fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return err
		}
		if err := setTimeout(*x.fd); err != nil {
			return err
		}
	}
	if h.cfg.UDPPort != 0 {
		if h.udp6, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		unix.SetsockoptInt(h.udp6, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		unix.SetsockoptInt(h.udp6, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(h.udp6, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return err
		}
		if err := unix.Bind(h.udp6, &unix.SockaddrInet6{Port: h.cfg.UDPPort}); err != nil {
			return fmt.Errorf("bind udp6 %d: %w", h.cfg.UDPPort, err)
		}
		if err := setTimeout(h.udp6); err != nil {
			return err
		}
	}
	return nil
}

func setTimeout(fd int) error {
	tv := unix.Timeval{Usec: 200_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("host: SO_RCVTIMEO: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	return nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupRoutes brings the TUN up with its addresses and puts the protected
// destinations in table Mark, which every packet without the mark
// consults first.
func (h *Host) setupRoutes() error {
	name, _ := h.tun.Name()
	table := strconv.Itoa(Mark)
	steps := [][]string{{"link", "set", name, "up", "mtu", strconv.Itoa(h.cfg.MTU)}}
	for _, a := range h.cfg.Addrs {
		steps = append(steps, []string{"addr", "add", a.String(), "dev", name})
	}
	for _, r := range h.cfg.Routes {
		steps = append(steps, []string{"route", "add", r.String(), "dev", name, "table", table})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("host: %w", err)
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		rule := []string{fam, "rule", "add", "not", "fwmark", strconv.Itoa(Mark), "lookup", table, "pref", "5000"}
		del := append([]string(nil), rule...)
		del[2] = "del"
		// A predecessor killed with SIGKILL left its rule behind (its TUN,
		// and the routes on it, went with it): take it away first, so that
		// a restart is a normal event.
		for i := 0; i < 4 && ip(del...) == nil; i++ {
		}
		if err := ip(rule...); err != nil {
			return fmt.Errorf("host: %w", err)
		}
		h.rules = append(h.rules, del)
	}
	return nil
}

// Run moves packets until ctx is done.
func (h *Host) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 16) // room for every goroutine below, so none blocks on exit
	run := func(f func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- f(ctx) }()
	}
	run(h.tunLoop)
	run(func(ctx context.Context) error { return h.rawLoop(ctx, h.esp4) })
	run(func(ctx context.Context) error { return h.rawLoop(ctx, h.ah4) })
	if h.udp4 >= 0 {
		run(func(ctx context.Context) error { return h.udpLoop(ctx, h.udp4, false) })
	}
	if h.esp6 >= 0 {
		run(func(ctx context.Context) error { return h.raw6Loop(ctx, h.esp6, header.ProtoESP) })
		run(func(ctx context.Context) error { return h.raw6Loop(ctx, h.ah6, header.ProtoAH) })
	}
	if h.udp6 >= 0 {
		run(func(ctx context.Context) error { return h.udpLoop(ctx, h.udp6, true) })
	}
	run(h.lifetimeLoop)
	if h.cfg.Metrics != "" {
		reg, err := metrics.Registry(h.counters())
		if err != nil {
			return err
		}
		run(func(ctx context.Context) error { return metrics.Serve(ctx, h.cfg.Metrics, reg, h.log) })
	}
	h.log.Info("espep host running", "tun", h.cfg.TUN, "mtu", h.cfg.MTU, "sas", len(h.cfg.SAs), "policies", len(h.cfg.Policies))
	<-ctx.Done()
	h.tun.Close() // unblocks the TUN reader
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// lifetimeLoop enforces SA lifetimes (RFC 4301 §4.4.2.1): a soft limit is
// logged and counted once, a hard one removes the SA (wiping its keys);
// without a key manager here, replacing it is the operator's job (SIGHUP
// with new SAs).
func (h *Host) lifetimeLoop(ctx context.Context) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	soft := map[ipsec.ID]bool{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		sad, _ := h.tables()
		for _, e := range sad.Entries() {
			if e.Write == nil {
				continue
			}
			id := e.Config.ID()
			if e.Write.SoftExpired() && !soft[id] {
				soft[id] = true
				h.Stats.SoftExpired.Add(1)
				h.log.Warn("sa soft lifetime reached: replace it", "sa", id.String())
			}
			if e.Write.HardExpired() {
				sad.Delete(id)
				h.Stats.HardExpired.Add(1)
				h.log.Warn("sa hard lifetime reached: removed", "sa", id.String())
			}
		}
	}
}

// counters describes the host's counters for Prometheus.
func (h *Host) counters() []metrics.Counter {
	s := &h.Stats
	events := []struct {
		name string
		v    *atomic.Uint64
	}{
		{"tun_in", &s.TunIn}, {"sealed", &s.Sealed}, {"bypassed", &s.Bypassed}, {"discarded", &s.Discarded},
		{"seal_error", &s.SealErrors}, {"net_in", &s.NetIn}, {"opened", &s.Opened}, {"open_error", &s.OpenErrors},
		{"policy_drop", &s.PolicyDrops}, {"not_ours", &s.NotOurs}, {"ike", &s.IKE}, {"keepalive", &s.Keepalives},
		{"tun_write_error", &s.TunWriteErrors}, {"send_error", &s.SendErrors},
		{"sa_soft_expired", &s.SoftExpired}, {"sa_hard_expired", &s.HardExpired},
	}
	ev := metrics.Counter{Name: "espep_host_packets_total", Help: "Packets and events by what espep host did with them.",
		Labels: []string{"event"}, Read: func() []metrics.Sample {
			out := make([]metrics.Sample, len(events))
			for i, e := range events {
				out[i] = metrics.Sample{Value: float64(e.v.Load()), Labels: []string{e.name}}
			}
			return out
		}}
	return append(metrics.SACounters("espep_host_", func() *ipsec.SAD { sad, _ := h.tables(); return sad }), ev)
}

// Close removes the routes and rules, closes the device and sockets, and
// then records the sequence numbers used and closes the state directory.
func (h *Host) Close() error {
	defer h.closeState()
	for _, r := range h.rules {
		ip(r...)
	}
	h.rules = nil
	if h.tun != nil {
		h.tun.Close()
	}
	for _, fd := range []int{h.send4, h.esp4, h.ah4, h.udp4, h.send6, h.esp6, h.ah6, h.udp6} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	return nil
}

// tunLoop reads what the kernel routes into the TUN and applies the SPD.
func (h *Host) tunLoop(ctx context.Context) error {
	const off = ipsec.MaxHeadroom + 16
	n := h.tun.BatchSize()
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, off+65535+ipsec.MaxTailroom)
	}
	for {
		for i := range bufs {
			bufs[i] = bufs[i][:cap(bufs[i])-ipsec.MaxTailroom]
		}
		cnt, err := h.tun.Read(bufs, sizes, off)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, unix.EBADF) {
				return nil
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				continue
			}
			return fmt.Errorf("host: tun read: %w", err)
		}
		for i := 0; i < cnt; i++ {
			h.outbound(bufs[i][:off+sizes[i]], off, sizes[i])
		}
	}
}

func (h *Host) outbound(buf []byte, off, n int) {
	h.Stats.TunIn.Add(1)
	pkt := buf[off : off+n]
	t, err := ipsec.TrafficOf(pkt, true)
	if err != nil {
		h.Stats.Discarded.Add(1)
		return
	}
	h.mu.RLock()
	sad, spd, leases := h.sad, h.spd, h.leases
	h.mu.RUnlock()
	p, ok := spd.Lookup(&t)
	if !ok || p.Action == ipsec.Discard {
		h.Stats.Discarded.Add(1)
		return
	}
	if p.Action == ipsec.Bypass {
		h.Stats.Bypassed.Add(1)
		h.send(pkt)
		return
	}
	// Apply the bundle innermost first; each SA seals what the one
	// before produced, in the same buffer.
	for _, id := range p.SAs {
		e, ok := sad.Get(id)
		if !ok || e.Write == nil || !reserved(leases[id], e.Write) {
			h.Stats.SealErrors.Add(1)
			return
		}
		out, err := e.Write.Seal(buf[:cap(buf)][:off+n], off, n)
		if err != nil {
			h.Stats.SealErrors.Add(1)
			return
		}
		off = cap(buf) - cap(out)
		n = len(out)
		pkt = out
	}
	h.Stats.Sealed.Add(1)
	h.send(pkt)
}

// send puts an IP packet with its own header on the wire.
func (h *Host) send(pkt []byte) {
	var err error
	switch {
	case len(pkt) >= header.IPv4MinLen && pkt[0]>>4 == 4:
		var sa unix.SockaddrInet4
		copy(sa.Addr[:], pkt[16:20])
		err = unix.Sendto(h.send4, pkt, 0, &sa)
	case len(pkt) >= header.IPv6Len && pkt[0]>>4 == 6 && h.send6 >= 0:
		var sa unix.SockaddrInet6
		copy(sa.Addr[:], pkt[24:40])
		err = unix.Sendto(h.send6, pkt, 0, &sa)
	default:
		err = errors.New("not sendable")
	}
	if err != nil {
		h.Stats.SendErrors.Add(1)
	}
}

// readErr sorts a receive error: a timeout or an interrupt is retried (the
// loop then checks ctx), an error while stopping ends the loop quietly,
// anything else ends it with the error.
func readErr(ctx context.Context, what string, err error) (retry bool, _ error) {
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
		return true, nil
	case ctx.Err() != nil:
		return false, nil
	}
	return false, fmt.Errorf("host: %s read: %w", what, err)
}

// rawLoop reads ESP or AH packets (IPv4 header included) and opens them.
func (h *Host) rawLoop(ctx context.Context, fd int) error {
	buf := make([]byte, 65536+64)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf[64:], 0)
		if err != nil {
			if retry, err := readErr(ctx, "raw", err); !retry {
				return err
			}
			continue
		}
		h.inbound(buf[:64+n], 64)
	}
	return nil
}

// udpLoop reads ESP in UDP (RFC 3948) and rebuilds the IP and UDP
// headers the kernel took off, so that the packet opens as it was sent.
func (h *Host) udpLoop(ctx context.Context, fd int, v6 bool) error {
	hl := header.IPv4MinLen + header.UDPLen
	if v6 {
		hl = header.IPv6Len + header.UDPLen
	}
	buf := make([]byte, 64+hl+65536)
	oob := make([]byte, 128)
	for ctx.Err() == nil {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf[64+hl:], oob, 0)
		if err != nil {
			if retry, err := readErr(ctx, "udp", err); !retry {
				return err
			}
			continue
		}
		p := buf[64+hl : 64+hl+n]
		switch {
		case n == 1 && p[0] == 0xff:
			h.Stats.Keepalives.Add(1)
			continue
		case n >= 4 && binary.BigEndian.Uint32(p) == 0:
			h.Stats.IKE.Add(1) // IKE is not espep host's business
			continue
		}
		src, sport, ok := sockaddrAddr(from)
		dst, ok2 := pktinfoDst(oob[:oobn])
		if !ok || !ok2 {
			h.Stats.NotOurs.Add(1)
			continue
		}
		pkt := buf[64 : 64+hl+n]
		if v6 {
			header.WriteIPv6(pkt, 0, 0, header.UDPLen+n, header.ProtoUDP, 64, src, dst)
			header.WriteUDP(pkt[header.IPv6Len:], sport, uint16(h.cfg.UDPPort), header.UDPLen+n)
		} else {
			header.WriteIPv4(pkt, 0, len(pkt), 0, false, 64, header.ProtoUDP, src, dst)
			header.WriteUDP(pkt[header.IPv4MinLen:], sport, uint16(h.cfg.UDPPort), header.UDPLen+n)
		}
		h.inbound(buf[:64+hl+n], 64)
	}
	return nil
}

// raw6Loop reads ESP or AH from an IPv6 raw socket, which delivers the
// packet without its IPv6 header, and rebuilds the header (extension
// headers, if there were any, are gone: AH over them would not verify).
func (h *Host) raw6Loop(ctx context.Context, fd int, proto uint8) error {
	buf := make([]byte, 64+header.IPv6Len+65536)
	oob := make([]byte, 128)
	for ctx.Err() == nil {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf[64+header.IPv6Len:], oob, 0)
		if err != nil {
			if retry, err := readErr(ctx, "raw6", err); !retry {
				return err
			}
			continue
		}
		src, _, ok := sockaddrAddr(from)
		dst, ok2 := pktinfoDst(oob[:oobn])
		if !ok || !ok2 {
			h.Stats.NotOurs.Add(1)
			continue
		}
		header.WriteIPv6(buf[64:], 0, 0, n, proto, 64, src, dst)
		h.inbound(buf[:64+header.IPv6Len+n], 64)
	}
	return nil
}

func sockaddrAddr(sa unix.Sockaddr) (netip.Addr, uint16, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr), uint16(a.Port), true
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr), uint16(a.Port), true
	}
	return netip.Addr{}, 0, false
}

func pktinfoDst(oob []byte) (netip.Addr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12 {
			return netip.AddrFrom4([4]byte(m.Data[8:12])), true // struct in_pktinfo: ipi_addr
		}
		if m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 16 {
			return netip.AddrFrom16([16]byte(m.Data[:16])), true // struct in6_pktinfo: ipi6_addr
		}
	}
	return netip.Addr{}, false
}

// maxBundle bounds how many IPsec headers one packet may carry.
const maxBundle = 4

// inbound opens an IPsec packet at buf[off:] — and what is inside it, as
// long as that is IPsec again (an AH+ESP bundle) — and delivers the result.
func (h *Host) inbound(buf []byte, off int) {
	h.Stats.NetIn.Add(1)
	sad, spd := h.tables()
	inner := buf[off:]
	for depth := 0; ; depth++ {
		l, err := ipsec.Locate(inner)
		if err != nil {
			h.Stats.NotOurs.Add(1)
			return
		}
		if l.Kind != ipsec.KindESP && l.Kind != ipsec.KindAH {
			if depth == 0 {
				h.Stats.NotOurs.Add(1)
				return
			}
			break
		}
		if depth == maxBundle {
			h.Stats.OpenErrors.Add(1)
			return
		}
		e, ok := sad.LookupLoc(&l)
		if !ok || e.Write == nil {
			h.Stats.NotOurs.Add(1)
			return
		}
		if inner, err = e.Write.OpenAt(inner, l); err != nil {
			h.Stats.OpenErrors.Add(1)
			return
		}
	}
	// RFC 4301 §5.2: what came out must be traffic a PROTECT policy
	// covers; anything else is dropped, never delivered.
	t, err := ipsec.TrafficOf(inner, false)
	if err != nil {
		h.Stats.PolicyDrops.Add(1)
		return
	}
	if p, ok := spd.Lookup(&t); !ok || p.Action != ipsec.Protect {
		h.Stats.PolicyDrops.Add(1)
		return
	}
	h.Stats.Opened.Add(1)
	start := cap(buf) - cap(inner)
	if _, err := h.tun.Write([][]byte{buf[:start+len(inner)]}, start); err != nil {
		h.Stats.TunWriteErrors.Add(1)
	}
}
