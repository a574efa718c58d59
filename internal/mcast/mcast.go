package mcast

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/ipv4"
)

// Config is one gateway's discovery endpoint.
type Config struct {
	Group netip.AddrPort // the multicast group and port, e.g. 239.77.0.1:7777
	Iface string         // the interface to join and send on; "" lets the routes decide
	Name  string         // this gateway's name
	Addr  string         // where it takes handoff requests
	Log   *slog.Logger
	// Probed, if set, is told of every probe Serve answers: the prober
	// (its name, handoff address and hops) — a gateway within the
	// prober's TTL, so, the relation being symmetric, a candidate
	// neighbour of this one too. It must not block.
	Probed func(Answer)
}

func (c *Config) check() error {
	if !c.Group.Addr().Is4() || !c.Group.Addr().IsMulticast() || c.Group.Port() == 0 {
		return fmt.Errorf("mcast: group %v: want an IPv4 multicast address and a port", c.Group)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

func (c *Config) iface() (*net.Interface, error) {
	if c.Iface == "" {
		return nil, nil
	}
	ifi, err := net.InterfaceByName(c.Iface)
	if err != nil {
		return nil, fmt.Errorf("mcast: %w", err)
	}
	return ifi, nil
}

// Answer is a gateway that answered a probe.
type Answer struct {
	Name, Addr string
	From       netip.Addr
	Hops       int // multicast routers between the two: TTL sent less TTL seen
}

// Probe sends one probe with ttl to the group and gathers the answers
// that come within wait, fewest hops first (then by name). Answers to
// another probe, and the gateway's own, are left out.
func Probe(ctx context.Context, cfg Config, ttl int, wait time.Duration) ([]Answer, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if ttl < 1 || ttl > 255 {
		return nil, fmt.Errorf("mcast: ttl %d", ttl)
	}
	conn, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return nil, fmt.Errorf("mcast: %w", err)
	}
	defer conn.Close()
	p := ipv4.NewPacketConn(conn)
	if err := p.SetMulticastTTL(ttl); err != nil {
		return nil, fmt.Errorf("mcast: %w", err)
	}
	if ifi, err := cfg.iface(); err != nil {
		return nil, err
	} else if ifi != nil {
		if err := p.SetMulticastInterface(ifi); err != nil {
			return nil, fmt.Errorf("mcast: %w", err)
		}
	}
	var nb [8]byte
	rand.Read(nb[:])
	probe := Message{Kind: KindProbe, TTLSent: uint8(ttl), Nonce: binary.BigEndian.Uint64(nb[:]), Name: cfg.Name, Addr: cfg.Addr}
	b, err := probe.Append(nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.WriteTo(b, net.UDPAddrFromAddrPort(cfg.Group)); err != nil {
		return nil, fmt.Errorf("mcast: probe: %w", err)
	}
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetReadDeadline(deadline)
	best := map[string]Answer{}
	buf := make([]byte, MaxMessage+1)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			break // the deadline
		}
		m, err := Parse(buf[:n])
		if err != nil || m.Kind != KindAnswer || m.Nonce != probe.Nonce || m.Name == cfg.Name || m.TTLSeen > m.TTLSent {
			continue
		}
		a := Answer{Name: m.Name, Addr: m.Addr, Hops: int(probe.TTLSent) - int(m.TTLSeen)}
		if ua, ok := from.(*net.UDPAddr); ok {
			a.From = ua.AddrPort().Addr().Unmap()
		}
		if old, seen := best[a.Name]; !seen || a.Hops < old.Hops {
			best[a.Name] = a
		}
	}
	out := make([]Answer, 0, len(best))
	for _, a := range best {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Answer) int {
		if a.Hops != b.Hops {
			return a.Hops - b.Hops
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// answerRate bounds the answers a gateway sends per second: a flood of
// probes (from anyone) makes it answer no more than this.
const answerRate = 50

// Serve joins the group and answers every probe (not its own) by
// unicast to its sender, saying with what TTL it arrived, until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	ifi, err := cfg.iface()
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	conn, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", cfg.Group.Port()))
	if err != nil {
		return fmt.Errorf("mcast: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	p := ipv4.NewPacketConn(conn)
	if err := p.JoinGroup(ifi, &net.UDPAddr{IP: cfg.Group.Addr().AsSlice()}); err != nil {
		return fmt.Errorf("mcast: join %v: %w", cfg.Group.Addr(), err)
	}
	if err := p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst, true); err != nil {
		return fmt.Errorf("mcast: %w", err)
	}
	cfg.Log.Info("mcast: answering probes", "group", cfg.Group, "iface", cfg.Iface, "name", cfg.Name)
	buf := make([]byte, MaxMessage+1)
	var out []byte
	window, sent := time.Now(), 0
	for {
		n, cm, from, err := p.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("mcast: %w", err)
		}
		m, err := Parse(buf[:n])
		if err != nil || m.Kind != KindProbe || m.Name == cfg.Name || cm == nil || !cm.Dst.Equal(cfg.Group.Addr().AsSlice()) {
			continue
		}
		if now := time.Now(); now.Sub(window) >= time.Second {
			window, sent = now, 0
		}
		if sent >= answerRate {
			continue
		}
		sent++
		ans := Message{Kind: KindAnswer, TTLSent: m.TTLSent, TTLSeen: uint8(cm.TTL), Nonce: m.Nonce, Name: cfg.Name, Addr: cfg.Addr}
		if out, err = ans.Append(out[:0]); err != nil {
			return err
		}
		if _, err := p.WriteTo(out, nil, from); err != nil {
			cfg.Log.Debug("mcast: answer", "to", from, "err", err)
		}
		if cfg.Probed != nil && int(cm.TTL) <= int(m.TTLSent) {
			a := Answer{Name: m.Name, Addr: m.Addr, Hops: int(m.TTLSent) - cm.TTL}
			if ua, ok := from.(*net.UDPAddr); ok {
				a.From = ua.AddrPort().Addr().Unmap()
			}
			cfg.Probed(a)
		}
	}
}
