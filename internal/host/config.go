package host

import (
	"fmt"
	"github.com/espep/espep/internal/keyval"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// Config is an `espep host` configuration file:
//
//	espep-host 1
//
//	[host]
//	tun      = espep0            # TUN device to create
//	mtu      = 1400              # TUN MTU (inner packets); default: link-mtu less the largest SA overhead
//	link-mtu = 1500              # MTU of the path the sealed packets take
//	addr     = 10.78.1.1/32      # addresses on the TUN (tunnel-mode inner addresses; repeatable)
//	route    = 10.78.2.0/24      # destinations routed into the TUN (repeatable)
//	sa-file  = left.sa           # SAs, native or esp_sa (repeatable; relative to this file)
//	udp-port = 4500              # port for ESP in UDP (RFC 3948); 0: none
//	metrics  = 127.0.0.1:9101    # Prometheus listener (optional)
//	control  = /run/espep/host.sock  # control socket for espep agent (optional; its
//	                             # directory must be closed to others; relative to this file)
//	state-dir = /var/lib/espep-host  # sequence numbers reserved on disk (0700): needed for every
//	                             # outbound SA with counter IVs (AES-GCM, ChaCha20, AES-CTR), whose
//	                             # IVs a restart would otherwise use again; relative to this file
//
//	[policy]                     # ordered; first match wins (RFC 4301 §4.4.1)
//	name     = to-right
//	local    = 10.78.1.1         # any | ADDR | PREFIX | FROM-TO
//	remote   = 10.78.2.0/24
//	proto    = tcp               # any | tcp | udp | icmp | NUMBER
//	local-ports  = any
//	remote-ports = any
//	action   = protect           # protect | bypass | discard
//	sa       = 0xc0de0001        # outbound SA (its SPI) for protect; repeat the
//	                             # field for a bundle, innermost first (ESP, then AH);
//	                             # or `server`: the security server makes the SA pair
//	                             # (scheme 4) and espep agent installs it through the
//	                             # control socket; until then the traffic is dropped
//	self     = 192.0.2.1         # with sa = server: this host's address and the peer's
//	peer     = 192.0.2.2         # (the SAs' ends)
//	mode     = transport         # with sa = server: transport | tunnel
//	enc      = aes-gcm16         # with sa = server (default aes-gcm16, 128-bit key);
//	integ    = hmac-sha256-128   # integ only with a non-AEAD enc
//	proxy    = write             # none | read | write: what a proxy may do on this
//	                             # traffic; espep agent --host-config delegates the
//	                             # policy's SAs in that class (default none: never)
//
// Traffic that no policy matches is discarded.
type Config struct {
	TUN      string
	MTU      int // 0: LinkMTU less the largest overhead of the SAs
	LinkMTU  int
	Addrs    []netip.Prefix
	Routes   []netip.Prefix
	SAFiles  []string
	UDPPort  int
	Metrics  string
	StateDir string
	Policies []ipsec.Policy
	// PolicySPIs are the outbound SA SPIs of each Protect policy, and
	// PolicyProxy what each lets a proxy do (DESIGN.md's classes).
	PolicySPIs  [][]uint32
	PolicyProxy []ipsec.Class
	// PolicyGen is, for a policy with sa = server, what SA pair to ask
	// the security server for (nil for the others).
	PolicyGen []*Generated
	SAs       []ipsec.Config
	Control   string // the control socket's path; "": none
}

// Generated is a policy's SA pair that the security server makes (scheme
// 4 of DESIGN.md).
type Generated struct {
	Self, Peer netip.Addr
	Mode       ipsec.Mode
	Enc        ipsec.Enc
	Integ      ipsec.Integ
}

// Delegable returns the outbound SAs that a proxy may work on, each in the
// class the policies using it permit (the least, when several name it):
// what the endpoint's agent delegates. An SA that any policy permits no
// proxy is not among them.
func (c *Config) Delegable() []ipsec.Config {
	class := map[uint32]ipsec.Class{}
	for i, p := range c.Policies {
		if p.Action != ipsec.Protect {
			continue
		}
		for _, spi := range c.PolicySPIs[i] {
			if k, seen := class[spi]; !seen || c.PolicyProxy[i] < k {
				class[spi] = c.PolicyProxy[i]
			}
		}
	}
	var out []ipsec.Config
	for _, sa := range c.SAs {
		if k := class[sa.SPI]; k != ipsec.ClassNone {
			sa.Class = k
			out = append(out, sa)
		}
	}
	return out
}

// HostMagic starts a host configuration file.
const HostMagic = "espep-host"

// LoadConfig reads a configuration and the SA files it names.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("host config: %w", err)
	}
	defer f.Close()
	c, err := ParseConfig(f, path)
	if err != nil {
		return nil, err
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		c.StateDir = filepath.Join(filepath.Dir(path), c.StateDir)
	}
	if c.Control != "" && !filepath.IsAbs(c.Control) {
		c.Control = filepath.Join(filepath.Dir(path), c.Control)
	}
	for _, sf := range c.SAFiles {
		if !filepath.IsAbs(sf) {
			sf = filepath.Join(filepath.Dir(path), sf)
		}
		if err := safile.CheckPrivate(sf); err != nil {
			return nil, fmt.Errorf("host config: %w", err)
		}
		sas, err := safile.Load(sf)
		if err != nil {
			return nil, err
		}
		c.SAs = append(c.SAs, sas...)
	}
	return c, c.check()
}

// ParseConfig reads the configuration text (not the SA files).
func ParseConfig(r io.Reader, name string) (*Config, error) {
	c := &Config{TUN: "espep0", LinkMTU: 1500, UDPPort: 4500}
	rd := keyval.NewReader(r, name, HostMagic, 1, "addr", "route", "sa-file", "sa")
	var pol *ipsec.Policy
	var spis []uint32
	var proxy ipsec.Class
	var gen *Generated
	flush := func() {
		if pol != nil {
			c.Policies = append(c.Policies, *pol)
			c.PolicySPIs = append(c.PolicySPIs, spis)
			c.PolicyProxy = append(c.PolicyProxy, proxy)
			c.PolicyGen = append(c.PolicyGen, gen)
			pol, spis, proxy, gen = nil, nil, ipsec.ClassNone, nil
		}
	}
	for {
		l, err := rd.Next()
		switch {
		case err == io.EOF:
			flush()
			return c, nil
		case err != nil:
			return nil, err
		case l.Header && l.Section == "host":
			flush()
			continue
		case l.Header && l.Section == "policy":
			flush()
			pol = &ipsec.Policy{Selector: ipsec.Selector{Proto: ipsec.ProtoAny}, Action: ipsec.Discard}
			continue
		case l.Header:
			return nil, rd.Errorf(l, "", "[%s]: want [host] or [policy]", l.Section)
		}
		switch l.Section {
		case "host":
			err = c.setHost(l.Key, l.Value)
		case "policy":
			switch l.Key {
			case "proxy":
				proxy, err = ipsec.ParseClass(l.Value)
			case "self", "peer", "mode", "enc", "integ":
				err = setGenerated(&gen, l.Key, l.Value)
			case "sa":
				if l.Value == "server" {
					err = setGenerated(&gen, "", "")
					break
				}
				fallthrough
			default:
				err = setPolicy(pol, &spis, l.Key, l.Value)
			}
		default:
			err = fmt.Errorf("outside a section")
		}
		if err != nil {
			return nil, rd.Wrap(l, l.Key, err)
		}
	}
}

func (c *Config) setHost(k, v string) error {
	var err error
	switch k {
	case "tun":
		if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ ") {
			return fmt.Errorf("%q: want an interface name of 1-15 characters", v)
		}
		c.TUN = v
	case "mtu", "link-mtu":
		var m int
		if m, err = strconv.Atoi(v); err == nil && (m < 576 || m > 65535) {
			err = fmt.Errorf("%d outside 576…65535", m)
		}
		if k == "mtu" {
			c.MTU = m
		} else {
			c.LinkMTU = m
		}
	case "addr", "route":
		var p netip.Prefix
		if p, err = netip.ParsePrefix(v); err == nil {
			if k == "addr" {
				c.Addrs = append(c.Addrs, p)
			} else {
				c.Routes = append(c.Routes, p.Masked())
			}
		}
	case "sa-file":
		c.SAFiles = append(c.SAFiles, v)
	case "udp-port":
		if c.UDPPort, err = strconv.Atoi(v); err == nil && (c.UDPPort < 0 || c.UDPPort > 65535) {
			err = fmt.Errorf("%d outside 0…65535", c.UDPPort)
		}
	case "state-dir":
		if v == "" {
			return fmt.Errorf("empty")
		}
		c.StateDir = v
	case "metrics":
		c.Metrics = v
	case "control":
		if v == "" {
			return fmt.Errorf("empty")
		}
		c.Control = v
	default:
		err = fmt.Errorf("unknown field")
	}
	return err
}

func setPolicy(p *ipsec.Policy, spis *[]uint32, k, v string) error {
	var err error
	switch k {
	case "name":
		p.Name = v
	case "local":
		p.Selector.Local, err = ipsec.ParseAddrRange(v)
	case "remote":
		p.Selector.Remote, err = ipsec.ParseAddrRange(v)
	case "proto":
		p.Selector.Proto, err = parseProto(v)
	case "local-ports":
		p.Selector.LocalPorts, err = ipsec.ParsePortRange(v)
	case "remote-ports":
		p.Selector.RemotePorts, err = ipsec.ParsePortRange(v)
	case "action":
		p.Action, err = ipsec.ParseAction(v)
	case "sa":
		var x uint64
		if x, err = strconv.ParseUint(v, 0, 32); err == nil {
			if len(*spis) == 4 {
				return fmt.Errorf("more than 4 SAs in one bundle")
			}
			*spis = append(*spis, uint32(x))
		}
	default:
		err = fmt.Errorf("unknown field")
	}
	return err
}

// setGenerated sets a field of the policy's generated pair (k empty: sa =
// server itself), making it on the first.
func setGenerated(g **Generated, k, v string) error {
	if *g == nil {
		*g = &Generated{Mode: ipsec.Transport, Enc: ipsec.EncAESGCM16}
	}
	var err error
	switch k {
	case "self":
		(*g).Self, err = netip.ParseAddr(v)
	case "peer":
		(*g).Peer, err = netip.ParseAddr(v)
	case "mode":
		switch v {
		case "transport":
			(*g).Mode = ipsec.Transport
		case "tunnel":
			(*g).Mode = ipsec.Tunnel
		default:
			err = fmt.Errorf("%q: want transport or tunnel", v)
		}
	case "enc":
		(*g).Enc, err = ipsec.ParseEnc(v)
	case "integ":
		(*g).Integ, err = ipsec.ParseInteg(v)
	}
	return err
}

func parseProto(v string) (int, error) {
	switch v {
	case "any":
		return ipsec.ProtoAny, nil
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	case "icmp":
		return 1, nil
	case "icmpv6":
		return 58, nil
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%q: want any, tcp, udp, icmp, icmpv6 or 0…255", v)
	}
	return int(n), nil
}

// check ties policies to SAs: every protect policy names one or more
// write-class SAs that can seal, or asks the security server for them.
func (c *Config) check() error {
	for i, p := range c.Policies {
		if g := c.PolicyGen[i]; g != nil {
			if err := c.checkGenerated(i); err != nil {
				return fmt.Errorf("policy %q: %w", p.Name, err)
			}
			continue
		}
		if p.Action != ipsec.Protect {
			continue
		}
		if len(c.PolicySPIs[i]) == 0 {
			return fmt.Errorf("policy %q: protect needs sa = SPI or sa = server", p.Name)
		}
		if c.PolicyProxy[i] == ipsec.ClassRead {
			for _, spi := range c.PolicySPIs[i] {
				for _, sa := range c.SAs {
					if sa.SPI == spi && sa.Enc.AEAD() {
						return fmt.Errorf("policy %q: proxy = read for sa %#x (%v): an AEAD SA cannot be read without its integrity key", p.Name, spi, sa.Enc)
					}
				}
			}
		}
		c.Policies[i].SAs = nil
		for _, spi := range c.PolicySPIs[i] {
			var found *ipsec.Config
			for j := range c.SAs {
				if c.SAs[j].SPI == spi {
					found = &c.SAs[j]
				}
			}
			if found == nil {
				return fmt.Errorf("policy %q: no sa with spi %#x in the sa files", p.Name, spi)
			}
			if found.Class != ipsec.ClassWrite {
				return fmt.Errorf("policy %q: sa %#x is class %v; sealing needs write", p.Name, spi, found.Class)
			}
			if c.StateDir == "" && (found.Enc.AEAD() || found.Enc == ipsec.EncAESCTR) {
				return fmt.Errorf("policy %q: sa %#x uses counter IVs (%v): give the host a state-dir, or a restart would seal under IVs it used before", p.Name, spi, found.Enc)
			}
			c.Policies[i].SAs = append(c.Policies[i].SAs, found.ID())
		}
	}
	return nil
}

// checkGenerated checks policy i's sa = server fields.
func (c *Config) checkGenerated(i int) error {
	g, p := c.PolicyGen[i], c.Policies[i]
	switch {
	case p.Action != ipsec.Protect:
		return fmt.Errorf("self, peer, mode, enc and integ go with action = protect and sa = server")
	case p.Name == "" || slices.ContainsFunc(c.Policies[:i], func(q ipsec.Policy) bool { return q.Name == p.Name }):
		return fmt.Errorf("sa = server needs a name no other policy has (the agent installs the pair by it)")
	case len(c.PolicySPIs[i]) > 0:
		return fmt.Errorf("sa = server and sa = SPI in one policy")
	case !g.Self.IsValid() || !g.Peer.IsValid() || g.Self.Is4() != g.Peer.Is4() || g.Self == g.Peer:
		return fmt.Errorf("sa = server needs self and peer, two addresses of one family")
	case c.PolicyProxy[i] == ipsec.ClassNone:
		return fmt.Errorf("sa = server makes SAs a proxy may work on: say proxy = read or write")
	case g.Enc == ipsec.EncNone || g.Enc.AEAD() != (g.Integ == ipsec.IntegNone):
		return fmt.Errorf("enc %v with integ %v: want an AEAD alone, or a cipher with an integrity transform", g.Enc, g.Integ)
	case c.PolicyProxy[i] == ipsec.ClassRead && g.Enc.AEAD():
		return fmt.Errorf("proxy = read with %v: an AEAD SA cannot be read without its integrity key", g.Enc)
	case c.StateDir == "" && (g.Enc.AEAD() || g.Enc == ipsec.EncAESCTR):
		return fmt.Errorf("%v uses counter IVs: give the host a state-dir, or a restart would seal under IVs it used before", g.Enc)
	}
	return nil
}
