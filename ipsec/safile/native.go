package safile

import (
	"encoding/hex"
	"fmt"
	"github.com/espep/espep/internal/keyval"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/espep/espep/ipsec"
)

// NativeMagic starts a native SA file; the number after it is the version.
const NativeMagic = "espep-sa"

// NativeVersion is the version this package writes and reads.
const NativeVersion = 1

// Error is a mistake at a line and, where known, a field
// (FILE:LINE: field KEY: WHAT), as every espep key = value file reports
// one.
type Error = keyval.Error

// ParseNative reads a native SA file. name is used in errors.
func ParseNative(r io.Reader, name string) ([]ipsec.Config, error) {
	return strict(parseNative(r, name))
}

// parseNative reads a native SA file, skipping each [sa] block that has a
// mistake: it returns the good SAs, an error for each bad block, and an
// error that ends the file (a bad first line, an unreadable line).
func parseNative(r io.Reader, name string) (out []ipsec.Config, bad []error, fatal error) {
	rd := keyval.NewReader(r, name, NativeMagic, NativeVersion)
	var (
		cur    *ipsec.Config
		curBad bool
		start  int
	)
	flush := func() {
		if cur == nil || curBad {
			return
		}
		if err := checkNative(cur); err != nil {
			bad = append(bad, &Error{File: name, Line: start, Err: err})
			return
		}
		out = append(out, *cur)
	}
	for {
		l, err := rd.Next()
		switch {
		case err == io.EOF:
			flush()
			return out, bad, nil
		case keyval.Fatal(err):
			flush()
			return out, bad, err
		case err != nil:
			bad, curBad = append(bad, err), true
		case l.Header && l.Section == "sa":
			flush()
			cur = &ipsec.Config{Proto: ipsec.ESP, Class: ipsec.ClassWrite, Mode: ipsec.Transport, TS: ipsec.Selector{Proto: ipsec.ProtoAny}}
			start, curBad = l.N, false
		case l.Header:
			flush()
			cur = nil
			bad = append(bad, rd.Errorf(l, "", "[%s]: want [sa]", l.Section))
		case cur == nil:
			bad = append(bad, rd.Errorf(l, l.Key, "outside an [sa] block"))
		default:
			if err := setField(cur, l.Key, l.Value); err != nil {
				bad, curBad = append(bad, rd.Wrap(l, l.Key, err)), true
			}
		}
	}
}

func setField(c *ipsec.Config, k, v string) error {
	var err error
	switch k {
	case "spi":
		var n uint64
		n, err = strconv.ParseUint(v, 0, 32)
		c.SPI = uint32(n)
	case "proto":
		switch v {
		case "esp":
			c.Proto = ipsec.ESP
		case "ah":
			c.Proto = ipsec.AH
		default:
			err = fmt.Errorf("%q: want esp or ah", v)
		}
	case "src":
		c.Src, err = parseAddr(v)
	case "dst":
		c.Dst, err = parseAddr(v)
	case "mode":
		switch v {
		case "transport":
			c.Mode = ipsec.Transport
		case "tunnel":
			c.Mode = ipsec.Tunnel
		case "any":
			c.Mode = ipsec.ModeAny
		default:
			err = fmt.Errorf("%q: want transport, tunnel or any", v)
		}
	case "encap":
		err = parseEncap(c, v)
	case "enc":
		c.Enc, err = ipsec.ParseEnc(v)
	case "enc-key":
		c.EncKey, err = parseHex(v)
	case "integ":
		c.Integ, err = ipsec.ParseInteg(v)
	case "integ-key":
		c.IntegKey, err = parseHex(v)
	case "esn":
		c.ESN, err = keyval.Bool(v)
	case "replay-window":
		if v == "off" {
			c.ReplayWindow = -1
		} else if c.ReplayWindow, err = strconv.Atoi(v); err == nil && (c.ReplayWindow < ipsec.MinWindow || c.ReplayWindow > ipsec.MaxWindow) {
			err = fmt.Errorf("%d outside [%d, %d]", c.ReplayWindow, ipsec.MinWindow, ipsec.MaxWindow)
		}
	case "class":
		c.Class, err = ipsec.ParseClass(v)
	case "lifetime":
		err = parseLifetime(&c.Lifetime, v)
	case "pmtu":
		c.PMTU, err = strconv.Atoi(v)
	case "ts-local":
		c.TS.Local, err = ipsec.ParseAddrRange(v)
	case "ts-remote":
		c.TS.Remote, err = ipsec.ParseAddrRange(v)
	case "ts-proto":
		c.TS.Proto, err = parseProto(v)
	case "ts-local-ports":
		c.TS.LocalPorts, err = ipsec.ParsePortRange(v)
	case "ts-remote-ports":
		c.TS.RemotePorts, err = ipsec.ParsePortRange(v)
	case "ts-user":
		c.TS.UserID = v
	case "ts-level":
		c.TS.Sensitivity, err = strconv.Atoi(v)
	default:
		err = fmt.Errorf("unknown field")
	}
	return err
}

func parseAddr(v string) (netip.Addr, error) {
	if v == "*" || v == "any" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return a, err
	}
	return a.Unmap(), nil
}

func parseHex(v string) ([]byte, error) {
	v = strings.TrimPrefix(strings.TrimPrefix(v, "0x"), "0X")
	v = strings.ReplaceAll(v, ":", "")
	b, err := hex.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("not hex: %w", err)
	}
	return b, nil
}

func parseEncap(c *ipsec.Config, v string) error {
	f := strings.Fields(v)
	if len(f) == 1 && f[0] == "none" {
		c.EncapSrcPort, c.EncapDstPort = 0, 0
		return nil
	}
	if len(f) != 3 || f[0] != "udp" {
		return fmt.Errorf("%q: want none or udp SRCPORT DSTPORT", v)
	}
	sp, err1 := strconv.ParseUint(f[1], 10, 16)
	dp, err2 := strconv.ParseUint(f[2], 10, 16)
	if err1 != nil || err2 != nil || sp == 0 || dp == 0 {
		return fmt.Errorf("%q: ports must be 1…65535", v)
	}
	c.EncapSrcPort, c.EncapDstPort = uint16(sp), uint16(dp)
	return nil
}

var protoNames = map[string]int{"any": ipsec.ProtoAny, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}

func parseProto(v string) (int, error) {
	if p, ok := protoNames[v]; ok {
		return p, nil
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%q: want any, tcp, udp, icmp, icmpv6, sctp or 0…255", v)
	}
	return int(n), nil
}

func parseLifetime(l *ipsec.Lifetime, v string) error {
	for _, kv := range strings.Fields(v) {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%q: want soft-bytes=N hard-bytes=N soft-time=D hard-time=D", kv)
		}
		var err error
		switch k {
		case "soft-bytes":
			l.SoftBytes, err = parseBytes(val)
		case "hard-bytes":
			l.HardBytes, err = parseBytes(val)
		case "soft-time":
			l.SoftTime, err = time.ParseDuration(val)
		case "hard-time":
			l.HardTime, err = time.ParseDuration(val)
		default:
			err = fmt.Errorf("unknown lifetime %q", k)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	if l.HardBytes != 0 && l.SoftBytes > l.HardBytes || l.HardTime != 0 && l.SoftTime > l.HardTime {
		return fmt.Errorf("soft limit above hard limit")
	}
	return nil
}

// parseBytes parses a count with an optional K, M, G or T suffix (powers of 1024).
func parseBytes(v string) (uint64, error) {
	mul := uint64(1)
	if n := len(v); n > 0 {
		switch v[n-1] {
		case 'K', 'k':
			mul = 1 << 10
		case 'M', 'm':
			mul = 1 << 20
		case 'G', 'g':
			mul = 1 << 30
		case 'T', 't':
			mul = 1 << 40
		}
		if mul != 1 {
			v = v[:n-1]
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, err
	}
	if n > ^uint64(0)/mul {
		return 0, fmt.Errorf("%s: too large", v)
	}
	return n * mul, nil
}

// checkNative applies the checks a whole block needs; the ipsec package
// checks keys against transforms when the SA is built.
func checkNative(c *ipsec.Config) error {
	if c.SPI == 0 {
		return fmt.Errorf("[sa] without spi")
	}
	if c.SPI < 256 {
		return fmt.Errorf("spi %d is reserved", c.SPI)
	}
	if c.Proto == ipsec.ESP && c.Enc == ipsec.EncNone {
		return fmt.Errorf("esp sa %#x without enc", c.SPI)
	}
	if c.Proto == ipsec.AH && c.Integ == ipsec.IntegNone {
		return fmt.Errorf("ah sa %#x without integ", c.SPI)
	}
	if c.Mode == ipsec.Tunnel && (!c.Src.IsValid() || !c.Dst.IsValid()) {
		return fmt.Errorf("tunnel sa %#x needs src and dst", c.SPI)
	}
	if c.Class == ipsec.ClassRead {
		switch {
		case c.Enc.AEAD():
			return fmt.Errorf("sa %#x: class read with %v: its decryption key forges too; an AEAD SA is write or none", c.SPI, c.Enc)
		case c.Integ == ipsec.IntegNone:
			return fmt.Errorf("sa %#x: class read needs the SA's integ transform named (its key left out), or the ICV cannot be found", c.SPI)
		case len(c.IntegKey) > 0:
			return fmt.Errorf("sa %#x: class read must not carry an integ-key", c.SPI)
		}
	}
	return nil
}
