// Package charonlog extracts the ESP SAs strongSwan's charon negotiated —
// SPI, addresses, transforms and keys — from its log written with the CHD
// log level at 4 ("chd = 4" in a filelog section), which dumps the derived
// CHILD_SA keys. It is how espep's tests (and an operator delegating SAs
// from strongSwan by hand) get keys for `espep pcap decrypt` and the
// gateway without a save-keys plugin. It parses charon 5.9.x output.
//
// Key order follows RFC 7296 §2.17: the initiator's keys protect traffic
// from the initiator to the responder.
package charonlog

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"

	"github.com/espep/espep/ipsec"
)

var (
	lineRE     = regexp.MustCompile(`^\S+ (\d+)\[(\w+)\] (.*)$`)
	hexRE      = regexp.MustCompile(`^\s*\d+: ((?:[0-9A-F]{2} ?)+)`)
	keyRE      = regexp.MustCompile(`^(encryption|integrity) (initiator|responder) key => (\d+) bytes`)
	proposalRE = regexp.MustCompile(`^selected proposal: ESP:(\S+)`)
	spiRE      = regexp.MustCompile(`^SPI 0x([0-9a-f]{8}), src (\S+) dst (\S+)`)
	childRE    = regexp.MustCompile(`CHILD_SA (\S+\{\d+\}) state change: (\w+) => (\w+)`)
	initRE     = regexp.MustCompile(`^establishing CHILD_SA (\S+\{\d+\})`)
)

// dump is the key dumps of one charon thread: a line naming a key
// ("encryption initiator key => 16 bytes", "Sk_d secret => 32 bytes")
// and then lines of hex.
type dump struct {
	keys map[string][]byte // key name → bytes
	cur  string            // key whose hex dump lines follow
}

// start begins the dump of key name.
func (d *dump) start(name string) {
	if d.keys == nil {
		d.keys = map[string][]byte{}
	}
	d.cur = name
	d.keys[name] = nil
}

// hexLine takes msg if it is a hex line of the key being dumped; any other
// line ends the dump.
func (d *dump) hexLine(msg string) (bool, error) {
	if mm := hexRE.FindStringSubmatch(msg); mm != nil && d.cur != "" {
		b, err := hex.DecodeString(strings.ReplaceAll(mm[1], " ", ""))
		if err != nil {
			return true, fmt.Errorf("key dump: %w", err)
		}
		d.keys[d.cur] = append(d.keys[d.cur], b...)
		return true, nil
	}
	d.cur = ""
	return false, nil
}

// thread is what one charon worker thread is in the middle of.
type thread struct {
	proposal string
	child    string
	dump            // "encryption initiator" → bytes
	dir      string // "inbound" / "outbound" before an SPI line
}

type found struct {
	child, proposal, dir string
	keys                 map[string][]byte
	spi                  uint32
	src, dst             netip.Addr
}

// Parse reads one charon log and returns every installed ESP SA it shows,
// in the order they appear. name is used in errors.
func Parse(r io.Reader, name string) ([]ipsec.Config, error) { return parse(r, name, false) }

// ParseLive is Parse without the SAs of CHILD_SAs that were rekeyed away
// or deleted since (state REKEYED, DELETING, DELETED or DESTROYING): the
// SAs charon holds now, as far as the log tells.
func ParseLive(r io.Reader, name string) ([]ipsec.Config, error) { return parse(r, name, true) }

func parse(r io.Reader, name string, live bool) ([]ipsec.Config, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	p := &parser{threads: map[string]*thread{}, initiated: map[string]bool{}, installed: map[string]bool{}, gone: map[string]bool{},
		seen: map[saKey]bool{}}
	for n := 1; sc.Scan(); n++ {
		if err := p.line(sc.Text()); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var out []ipsec.Config
	for _, f := range p.sas {
		if !p.installed[f.child] || live && p.gone[f.child] {
			continue // e.g. libipsec refused the mode; or rekeyed away
		}
		c, err := f.config(p.initiated[f.child])
		if err != nil {
			return nil, fmt.Errorf("%s: spi %#08x: %w", name, f.spi, err)
		}
		out = append(out, c)
	}
	return out, nil
}

type saKey struct {
	spi uint32
	dst netip.Addr
}

// parser is what Parse has read so far: each charon thread's proposal,
// child and keys, the CHILD_SAs this end initiated and those installed,
// and the SAs added.
type parser struct {
	threads                    map[string]*thread
	initiated, installed, gone map[string]bool
	seen                       map[saKey]bool
	sas                        []found
}

// line takes one log line.
func (p *parser) line(text string) error {
	m := lineRE.FindStringSubmatch(text)
	if m == nil {
		return nil
	}
	tid, group, msg := m[1], m[2], m[3]
	th := p.threads[tid]
	if th == nil {
		th = &thread{}
		p.threads[tid] = th
	}
	switch group {
	case "IKE":
		if mm := initRE.FindStringSubmatch(msg); mm != nil {
			p.initiated[mm[1]] = true
		}
	case "CFG":
		if mm := proposalRE.FindStringSubmatch(msg); mm != nil {
			*th = thread{proposal: mm[1]}
		}
	case "CHD":
		return p.child(th, msg)
	}
	return nil
}

// child takes a CHD line of thread th: a CHILD_SA's state, a key dump
// (its name, then lines of hex), an SA being added.
func (p *parser) child(th *thread, msg string) error {
	if mm := childRE.FindStringSubmatch(msg); mm != nil {
		if mm[2] == "CREATED" && mm[3] == "INSTALLING" {
			th.child = mm[1]
		}
		switch mm[3] {
		case "INSTALLED":
			p.installed[mm[1]] = true
		case "REKEYED", "DELETING", "DELETED", "DESTROYING":
			p.gone[mm[1]] = true
		}
		return nil
	}
	if mm := keyRE.FindStringSubmatch(msg); mm != nil {
		th.start(mm[1] + " " + mm[2])
		return nil
	}
	if ok, err := th.hexLine(msg); ok {
		return err
	}
	switch {
	case strings.HasPrefix(msg, "adding inbound ESP SA"):
		th.dir = "inbound"
	case strings.HasPrefix(msg, "adding outbound ESP SA"), strings.HasPrefix(msg, "registering outbound ESP SA"):
		// The responder of a rekey registers the outbound SA with its
		// keys and adds it later (after the old SA's delete), possibly
		// from another thread, which knows no keys: the registration is
		// what counts, the adding names it again.
		th.dir = "outbound"
	default:
		mm := spiRE.FindStringSubmatch(strings.TrimSpace(msg))
		if mm == nil || th.dir == "" || th.proposal == "" {
			return nil
		}
		var spi uint32
		fmt.Sscanf(mm[1], "%x", &spi)
		src, err1 := netip.ParseAddr(mm[2])
		dst, err2 := netip.ParseAddr(mm[3])
		if err1 != nil || err2 != nil {
			return fmt.Errorf("addresses %q %q", mm[2], mm[3])
		}
		if p.seen[saKey{spi, dst}] {
			th.dir = ""
			return nil // registered, now added
		}
		p.seen[saKey{spi, dst}] = true
		keys := map[string][]byte{}
		for k, v := range th.keys {
			keys[k] = v
		}
		p.sas = append(p.sas, found{child: th.child, proposal: th.proposal, dir: th.dir, keys: keys, spi: spi, src: src, dst: dst})
		th.dir = ""
	}
	return nil
}

var encByProposal = []struct {
	prefix string
	enc    ipsec.Enc
}{
	{"AES_GCM_16", ipsec.EncAESGCM16}, {"AES_GCM_12", ipsec.EncAESGCM12},
	{"AES_CBC", ipsec.EncAESCBC}, {"AES_CTR", ipsec.EncAESCTR},
	{"CHACHA20_POLY1305", ipsec.EncChaCha20Poly1305}, {"NULL", ipsec.EncNull},
}

var integByProposal = map[string]ipsec.Integ{
	"HMAC_SHA1_96": ipsec.IntegSHA1_96, "HMAC_SHA2_256_128": ipsec.IntegSHA256_128,
	"HMAC_SHA2_384_192": ipsec.IntegSHA384_192, "HMAC_SHA2_512_256": ipsec.IntegSHA512_256,
}

func (f *found) config(initiator bool) (ipsec.Config, error) {
	c := ipsec.Config{SPI: f.spi, Proto: ipsec.ESP, Src: f.src, Dst: f.dst, Mode: ipsec.Tunnel,
		Class: ipsec.ClassWrite, TS: ipsec.Selector{Proto: ipsec.ProtoAny}}
	parts := strings.Split(f.proposal, "/")
	found := false
	for _, e := range encByProposal {
		if strings.HasPrefix(parts[0], e.prefix) {
			c.Enc, found = e.enc, true
			break
		}
	}
	if !found {
		return c, fmt.Errorf("proposal %s: encryption not supported", f.proposal)
	}
	for _, p := range parts[1:] {
		if i, ok := integByProposal[p]; ok {
			c.Integ = i
		}
		if p == "EXT_SEQ" {
			c.ESN = true
		}
	}
	// The initiator's keys protect initiator → responder.
	outbound := f.dir == "outbound"
	side := "responder"
	if initiator == outbound {
		side = "initiator"
	}
	c.EncKey = f.keys["encryption "+side]
	c.IntegKey = f.keys["integrity "+side]
	if len(c.EncKey) == 0 && c.Enc != ipsec.EncNull {
		return c, fmt.Errorf("no %s encryption key in the log (chd log level must be 4)", side)
	}
	return c, nil
}
