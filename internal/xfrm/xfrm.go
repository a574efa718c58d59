// Package xfrm reads the Linux kernel's IPsec SAD as its netlink
// interface (NETLINK_XFRM) describes it: Parse turns XFRM_MSG_NEWSA
// messages — a dump's replies, or what `ip xfrm state add` sends — into
// SA configurations, keys included; Dump (Linux) asks the kernel for them.
// It is how espep agent delegates the SAs of an endpoint whose IPsec is
// the kernel's (scheme 3). It does not write the SAD.
//
// The layouts are linux/xfrm.h's, on 64-bit Linux (struct
// xfrm_usersa_info is 224 bytes there; its u64 lifetimes align it).
//
//	nlmsghdr (16) | xfrm_usersa_info (224) | attributes (nlattr: len, type; 4-aligned)
//
//	xfrm_usersa_info:
//	  0 sel (xfrm_selector, 56)     56 id.daddr (16)  72 id.spi (be32)  76 id.proto
//	 80 saddr (16)                  96 lft (8 × u64)  160 curlft (4 × u64)
//	192 stats (3 × u32)            204 seq  208 reqid  212 family (u16)
//	214 mode  215 replay_window  216 flags
//
//	attributes read: XFRMA_ALG_AEAD, XFRMA_ALG_CRYPT, XFRMA_ALG_AUTH,
//	XFRMA_ALG_AUTH_TRUNC (xfrm_algo*: name[64], key length in bits, [ICV
//	or truncation bits], key), XFRMA_ENCAP (xfrm_encap_tmpl: type, sport,
//	dport), XFRMA_REPLAY_ESN_VAL (its replay_window).
package xfrm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/espep/espep/ipsec"
)

// Netlink and XFRM constants (linux/netlink.h, linux/xfrm.h).
const (
	nlmsgHdrLen = 16
	nlmsgError  = 2
	nlmsgDone   = 3
	MsgNewSA    = 0x10
	MsgGetSA    = 0x12
	MsgUpdSA    = 0x1a

	usersaInfoLen = 224

	attrAlgAuth      = 1
	attrAlgCrypt     = 2
	attrEncap        = 4
	attrAlgAEAD      = 18
	attrAlgAuthTrunc = 20
	attrReplayESN    = 23

	algoNameLen = 64
	flagESN     = 128 // XFRM_STATE_ESN
	afInet      = 2
	afInet6     = 10
	protoESP    = 50
	protoAH     = 51
	modeTransp  = 0
	modeTunnel  = 1
	udpEncapESP = 2 // UDP_ENCAP_ESPINUDP (RFC 3948)

	infinite = ^uint64(0) // XFRM_INF
)

// Parse reads a stream of netlink messages (one datagram or a file of
// them): every NEWSA or UPDSA message is an SA; NLMSG_DONE ends the
// stream; other types are skipped. An SA espep cannot use (an algorithm it
// lacks, a mode like BEET) is reported in bad and skipped; a malformed
// message ends the parse with an error.
func Parse(b []byte) (sas []ipsec.Config, bad []error, err error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return sas, bad, fmt.Errorf("xfrm: %d bytes left: not a netlink header", len(b))
		}
		n := binary.NativeEndian.Uint32(b)
		typ := binary.NativeEndian.Uint16(b[4:])
		if n < nlmsgHdrLen || uint64(n) > uint64(len(b)) {
			return sas, bad, fmt.Errorf("xfrm: message length %d of %d bytes", n, len(b))
		}
		msg := b[nlmsgHdrLen:n]
		b = b[min(align4(int(n)), len(b)):]
		switch typ {
		case nlmsgDone:
			return sas, bad, nil
		case nlmsgError:
			if len(msg) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(msg)); code != 0 {
					return sas, bad, fmt.Errorf("xfrm: the kernel answered error %d", -code)
				}
			}
		case MsgNewSA, MsgUpdSA:
			c, err := parseSA(msg)
			var skip skipped
			switch {
			case errors.As(err, &skip):
				bad = append(bad, err)
			case err != nil:
				return sas, bad, err
			default:
				sas = append(sas, c)
			}
		}
	}
	return sas, bad, nil
}

// skipped is an SA that is well formed but not one espep can hold.
type skipped struct{ error }

func align4(n int) int { return (n + 3) &^ 3 }

// parseSA reads one xfrm_usersa_info and its attributes.
func parseSA(m []byte) (ipsec.Config, error) {
	var c ipsec.Config
	if len(m) < usersaInfoLen {
		return c, fmt.Errorf("xfrm: sa of %d bytes, want at least %d", len(m), usersaInfoLen)
	}
	c.SPI = binary.BigEndian.Uint32(m[72:])
	family := binary.NativeEndian.Uint16(m[212:])
	var ok bool
	if c.Dst, ok = addrOf(m[56:72], family); !ok {
		return c, fmt.Errorf("xfrm: sa %#08x: address family %d", c.SPI, family)
	}
	c.Src, _ = addrOf(m[80:96], family)
	switch m[76] {
	case protoESP:
		c.Proto = ipsec.ESP
	case protoAH:
		c.Proto = ipsec.AH
	default:
		return c, skipped{fmt.Errorf("xfrm: sa %#08x: protocol %d is not ESP or AH", c.SPI, m[76])}
	}
	switch m[214] {
	case modeTransp:
		c.Mode = ipsec.Transport
	case modeTunnel:
		c.Mode = ipsec.Tunnel
	default:
		return c, skipped{fmt.Errorf("xfrm: sa %#08x: mode %d", c.SPI, m[214])}
	}
	c.ReplayWindow = int(m[215])
	c.ESN = m[216]&flagESN != 0
	c.Lifetime = lifetime(m[96:160])
	c.Class = ipsec.ClassWrite // the kernel holds every key
	if err := attrs(&c, m[usersaInfoLen:]); err != nil {
		wipe(&c)
		return c, err
	}
	if c.Proto == ipsec.AH {
		clear(c.EncKey)
		c.Enc, c.EncKey = ipsec.EncNone, nil
	}
	e, err := ipsec.NewEntry(c)
	if err != nil {
		wipe(&c)
		return c, skipped{fmt.Errorf("xfrm: sa %#08x: %w", c.SPI, err)}
	}
	e.Wipe()
	return c, nil
}

func addrOf(b []byte, family uint16) (netip.Addr, bool) {
	switch family {
	case afInet:
		return netip.AddrFrom4([4]byte(b[:4])), true
	case afInet6:
		return netip.AddrFrom16([16]byte(b[:16])), true
	}
	return netip.Addr{}, false
}

// lifetime reads xfrm_lifetime_cfg: soft and hard byte limits, then
// packet limits, then seconds after adding (and after first use, which
// espep does not keep).
func lifetime(b []byte) ipsec.Lifetime {
	u := func(i int) uint64 { return binary.NativeEndian.Uint64(b[8*i:]) }
	lim := func(v uint64) uint64 {
		if v == infinite {
			return 0
		}
		return v
	}
	secs := func(v uint64) time.Duration {
		if v == infinite || v > uint64(1<<62)/uint64(time.Second) {
			return 0
		}
		return time.Duration(v) * time.Second
	}
	return ipsec.Lifetime{SoftBytes: lim(u(0)), HardBytes: lim(u(1)), SoftTime: secs(u(4)), HardTime: secs(u(5))}
}

// attrs reads the attributes that carry the transforms and keys.
func attrs(c *ipsec.Config, b []byte) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("xfrm: sa %#08x: %d bytes of attribute header", c.SPI, len(b))
		}
		n := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
		if n < 4 || n > len(b) {
			return fmt.Errorf("xfrm: sa %#08x: attribute %d of length %d in %d bytes", c.SPI, typ, n, len(b))
		}
		v := b[4:n]
		b = b[min(align4(n), len(b)):]
		var err error
		switch typ {
		case attrAlgAEAD:
			err = aead(c, v)
		case attrAlgCrypt:
			err = crypt(c, v)
		case attrAlgAuth, attrAlgAuthTrunc:
			err = auth(c, v, typ == attrAlgAuthTrunc)
		case attrEncap:
			err = encap(c, v)
		case attrReplayESN:
			if len(v) < 24 {
				err = fmt.Errorf("replay state of %d bytes", len(v))
			} else {
				c.ReplayWindow = int(min(binary.NativeEndian.Uint32(v[20:]), 1<<20))
			}
		}
		if err != nil {
			return fmt.Errorf("xfrm: sa %#08x: %w", c.SPI, err)
		}
	}
	return nil
}

// algo reads an xfrm_algo* body: the name, the key length in bits, extra
// u32 fields, and the key.
func algo(v []byte, extra int) (name string, key []byte, fields []uint32, err error) {
	head := algoNameLen + 4 + 4*extra
	if len(v) < head {
		return "", nil, nil, fmt.Errorf("algorithm of %d bytes", len(v))
	}
	name = string(v[:algoNameLen])
	if i := bytes.IndexByte(v[:algoNameLen], 0); i >= 0 {
		name = name[:i]
	}
	bits := binary.NativeEndian.Uint32(v[algoNameLen:])
	for i := range extra {
		fields = append(fields, binary.NativeEndian.Uint32(v[algoNameLen+4+4*i:]))
	}
	if bits%8 != 0 || uint64(bits/8) > uint64(len(v)-head) {
		return name, nil, nil, fmt.Errorf("%s: key of %d bits in %d bytes", name, bits, len(v)-head)
	}
	key = bytes.Clone(v[head : head+int(bits/8)])
	return name, key, fields, nil
}

func aead(c *ipsec.Config, v []byte) error {
	name, key, f, err := algo(v, 1)
	if err != nil {
		return err
	}
	switch {
	case name == "rfc4106(gcm(aes))" && f[0] == 128:
		c.Enc = ipsec.EncAESGCM16
	case name == "rfc4106(gcm(aes))" && f[0] == 96:
		c.Enc = ipsec.EncAESGCM12
	case name == "rfc7539esp(chacha20,poly1305)" && f[0] == 128:
		c.Enc = ipsec.EncChaCha20Poly1305
	default:
		clear(key)
		return skipped{fmt.Errorf("AEAD %s with a %d-bit ICV: not supported", name, f[0])}
	}
	c.EncKey = key
	return nil
}

func crypt(c *ipsec.Config, v []byte) error {
	name, key, _, err := algo(v, 0)
	if err != nil {
		return err
	}
	switch name {
	case "cbc(aes)":
		c.Enc = ipsec.EncAESCBC
	case "rfc3686(ctr(aes))":
		c.Enc = ipsec.EncAESCTR
	case "ecb(cipher_null)", "cipher_null":
		c.Enc = ipsec.EncNull
	default:
		clear(key)
		return skipped{fmt.Errorf("cipher %s: not supported", name)}
	}
	c.EncKey = key
	if len(key) == 0 {
		c.EncKey = nil
	}
	return nil
}

func auth(c *ipsec.Config, v []byte, trunc bool) error {
	extra := 0
	if trunc {
		extra = 1
	}
	name, key, f, err := algo(v, extra)
	if err != nil {
		return err
	}
	want := map[string]struct {
		integ ipsec.Integ
		bits  uint32 // the truncation espep's transform uses
	}{
		"hmac(sha1)": {ipsec.IntegSHA1_96, 96}, "hmac(sha256)": {ipsec.IntegSHA256_128, 128},
		"hmac(sha384)": {ipsec.IntegSHA384_192, 192}, "hmac(sha512)": {ipsec.IntegSHA512_256, 256},
	}[name]
	// XFRMA_ALG_AUTH without truncation means the kernel's default:
	// 96 bits for every HMAC, which RFC 4868 SHA-2 peers do not use.
	tr := uint32(96)
	if trunc {
		tr = f[0]
	}
	if want.integ == ipsec.IntegNone || tr != want.bits {
		clear(key)
		return skipped{fmt.Errorf("integrity %s truncated to %d bits: not supported", name, tr)}
	}
	c.Integ, c.IntegKey = want.integ, key
	return nil
}

func encap(c *ipsec.Config, v []byte) error {
	if len(v) < 6 {
		return fmt.Errorf("encapsulation of %d bytes", len(v))
	}
	if t := binary.NativeEndian.Uint16(v); t != udpEncapESP {
		return skipped{fmt.Errorf("encapsulation type %d: only ESP in UDP (RFC 3948)", t)}
	}
	c.EncapSrcPort = binary.BigEndian.Uint16(v[2:])
	c.EncapDstPort = binary.BigEndian.Uint16(v[4:])
	return nil
}

func wipe(c *ipsec.Config) {
	c.WipeKeys()
	c.EncKey, c.IntegKey = nil, nil
}
