package ikefollow

import (
	"bytes"
	"container/list"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/ipsec"
)

// ikeSA is what the follower knows of one IKE SA.
type ikeSA struct {
	spis spis
	keys *ikev2.Keys // nil until delegated
	init *initReq    // its IKE_SA_INIT, if seen
	// pending are its requests (decrypted) awaiting their responses;
	// done, the last ones answered (a retransmitted pair creates nothing
	// twice).
	pending map[reqKey]*request
	done    []reqKey
	held    []Packet // messages waiting for keys
	// children are the SAs derived on this IKE SA (or inherited from the
	// one it rekeyed) and not yet deleted: they go with its Delete.
	children []ipsec.ID
	elem     *list.Element // in Follower.unkeyed while it has no keys
	seen     time.Time
	// encap: ESP goes in UDP (NAT detected in IKE_SA_INIT, or inherited
	// by a rekeyed IKE SA from the one before, or said by the neighbour
	// that handed its keys over).
	encap, encapKnown bool
	// handedUntil: keys a neighbour handed over (handed.go) for an IKE SA
	// not seen here since; past it they may make room for another.
	handedUntil time.Time
}

// reqKey names an exchange of an IKE SA: each end numbers its own
// requests (RFC 7296 §2.2).
type reqKey struct {
	id            uint32
	fromInitiator bool // the request came from the IKE SA's original initiator
}

type request struct {
	exchange uint8
	payloads []ikev2.Payload // decrypted: views into their own plaintext
	src, dst netip.AddrPort
}

const (
	maxPending  = 8
	maxDone     = 16
	maxChildren = 1024 // SAs remembered per IKE SA for its Delete
)

// initReq is an IKE_SA_INIT exchange, by the initiator's SPI: its nonces,
// whether NAT was detected, and whether anything contradicts them.
type initReq struct {
	spiR        uint64
	ni, nr      []byte
	conflict    bool // two different requests or responses: nonces unknown
	nat         bool
	requestNATD [][2][]byte // the request's NAT_DETECTION_{SOURCE,DESTINATION}_IP data, checked at the response
	requestSeen netip.AddrPort
	requestDest netip.AddrPort
}

// saInit reads an IKE_SA_INIT message: cleartext, so nothing in it is
// believed beyond the nonces and NAT detection, and those only while
// nothing contradicts them.
func (f *Follower) saInit(p Packet, m *ikev2.Message) {
	nonce, _ := findNonce(m.Payloads)
	in := f.inits[m.SPIi]
	if !m.Response() {
		if m.SPIr != 0 || nonce == nil {
			f.stats.Malformed++
			return
		}
		if in == nil {
			if len(f.inits) >= f.cfg.MaxIKESAs && !f.evictInit() {
				return
			}
			in = &initReq{}
			f.inits[m.SPIi] = in
		}
		if in.spiR != 0 {
			// A request after the response: only a retransmission.
			if !bytes.Equal(in.ni, nonce) {
				in.conflict = true
			}
			return
		}
		if in.ni != nil && !bytes.Equal(in.ni, nonce) && !in.retry() {
			in.conflict = true
		}
		in.ni = append(in.ni[:0:0], nonce...)
		in.requestNATD = natd(m.Payloads)
		in.requestSeen, in.requestDest = p.Src, p.Dst
		return
	}
	if in == nil || m.SPIr == 0 {
		return // a response to a request not seen, or one refusing it
	}
	if nonce == nil {
		// COOKIE or INVALID_KE_PAYLOAD: the request will come again,
		// with another nonce.
		in.ni = nil
		return
	}
	if in.spiR != 0 && (in.spiR != m.SPIr || !bytes.Equal(in.nr, nonce)) {
		in.conflict = true
		return
	}
	in.spiR = m.SPIr
	in.nr = append(in.nr[:0:0], nonce...)
	// NAT detection (RFC 7296 §2.23): the hashes each end sent of the
	// addresses it saw, against those the gateway sees.
	in.nat = natMismatch(in.requestNATD, m.SPIi, 0, in.requestSeen, in.requestDest) ||
		natMismatch(natd(m.Payloads), m.SPIi, m.SPIr, p.Src, p.Dst)
	if sa := f.sas[spis{m.SPIi, m.SPIr}]; sa != nil && sa.init == nil {
		sa.init = in
	}
}

// evictInit makes room among the IKE_SA_INIT exchanges (anyone can forge
// them): an unanswered one first, else one whose IKE SA has no keys —
// never one a keyed IKE SA still needs. False if every one is needed.
func (f *Follower) evictInit() bool {
	var fallback uint64
	found := false
	for spi, in := range f.inits {
		if in.spiR == 0 {
			delete(f.inits, spi)
			return true
		}
		if sa := f.sas[spis{spi, in.spiR}]; !found && (sa == nil || sa.keys == nil) {
			fallback, found = spi, true
		}
	}
	if found {
		delete(f.inits, fallback)
	}
	return found
}

// retry reports whether the request before was answered by COOKIE or
// INVALID_KE_PAYLOAD (the nonce was cleared): a new nonce is expected.
func (in *initReq) retry() bool { return in.ni == nil }

func findNonce(ps []ikev2.Payload) ([]byte, bool) {
	for _, p := range ps {
		if p.Type == ikev2.PayloadNonce {
			n, err := ikev2.ParseNonce(p.Body)
			return n, err == nil
		}
	}
	return nil, false
}

// natd returns the NAT_DETECTION_SOURCE_IP and _DESTINATION_IP data of a
// message, as [type-0/1][data].
func natd(ps []ikev2.Payload) [][2][]byte {
	var out [][2][]byte
	for _, p := range ps {
		if p.Type != ikev2.PayloadNotify {
			continue
		}
		n, err := ikev2.ParseNotify(p.Body)
		if err != nil {
			continue
		}
		switch n.Type {
		case ikev2.NotifyNATDetectionSrcIP:
			out = append(out, [2][]byte{{0}, n.Data})
		case ikev2.NotifyNATDetectionDstIP:
			out = append(out, [2][]byte{{1}, n.Data})
		}
	}
	return out
}

// natMismatch reports whether a NAT detection hash does not match the
// addresses the gateway saw: SHA-1(SPIi | SPIr | IP | port).
func natMismatch(hashes [][2][]byte, spiI, spiR uint64, src, dst netip.AddrPort) bool {
	var srcOK, dstOK, anySrc bool
	for _, h := range hashes {
		ap := dst
		if h[0][0] == 0 {
			ap, anySrc = src, true
		}
		b := binary.BigEndian.AppendUint64(nil, spiI)
		b = binary.BigEndian.AppendUint64(b, spiR)
		b = append(b, ap.Addr().Unmap().AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, ap.Port())
		sum := sha1.Sum(b)
		if bytes.Equal(sum[:], h[1]) {
			if h[0][0] == 0 {
				srcOK = true
			} else {
				dstOK = true
			}
		}
	}
	if len(hashes) == 0 {
		return false
	}
	return anySrc && !srcOK || !dstOK
}

// read takes a message of an IKE SA with keys: verified and decrypted, a
// request waits for its response; a response completes the exchange.
func (f *Follower) read(sa *ikeSA, p Packet, m *ikev2.Message, res *Result) {
	ps, err := sa.keys.Open(p.Msg, m)
	switch {
	case errors.Is(err, ikev2.ErrIntegrity):
		f.stats.Integrity++
		return
	case errors.Is(err, ikev2.ErrUnsupported):
		f.stats.Unsupported++
		return
	case err != nil:
		f.stats.Malformed++
		return
	}
	key := reqKey{id: m.MessageID, fromInitiator: m.Initiator() != m.Response()}
	for _, d := range sa.done {
		if d == key {
			return // a retransmission of an exchange already read
		}
	}
	if !m.Response() {
		if len(sa.pending) >= maxPending {
			for k := range sa.pending {
				delete(sa.pending, k)
				break
			}
		}
		sa.pending[key] = &request{exchange: m.Exchange, payloads: ps, src: p.Src, dst: p.Dst}
		return
	}
	req := sa.pending[key]
	if req == nil || req.exchange != m.Exchange {
		return // its request was not seen
	}
	delete(sa.pending, key)
	if len(sa.done) == maxDone {
		sa.done = sa.done[1:]
	}
	sa.done = append(sa.done, key)
	switch m.Exchange {
	case ikev2.ExchangeAuth, ikev2.ExchangeCreateChild:
		f.created(sa, req, ps, m.Exchange, res)
	case ikev2.ExchangeInformation:
		f.deleted(sa, req, ps, res)
	}
}

// created derives what an IKE_AUTH or CREATE_CHILD_SA exchange created.
func (f *Follower) created(sa *ikeSA, req *request, resp []ikev2.Payload, exchange uint8, res *Result) {
	c, err := ikev2.ReadCreated(req.payloads, resp)
	if err != nil {
		f.stats.Malformed++
		return
	}
	if c.NewSPIi != 0 {
		// The IKE SA was rekeyed: its successor is known by its SPIs,
		// and its keys must be delegated anew.
		f.stats.IKERekeys++
		if next := f.lookup(spis{c.NewSPIi, c.NewSPIr}, true); next != nil {
			next.encap, next.encapKnown = sa.encap || sa.natFromInit(), true
			// The CHILD_SAs move to the new IKE SA (RFC 7296 §2.18).
			next.children, sa.children = append(next.children, sa.children...), nil
		}
		return
	}
	if c.Child == nil {
		return
	}
	pair := [2]netip.Addr{req.src.Addr(), req.dst.Addr()}
	if c.Child.PFS {
		f.stats.PFS++
		res.PFS = append(res.PFS, pair)
		return
	}
	ni, nr := c.Ni, c.Nr
	if exchange == ikev2.ExchangeAuth {
		if sa.init == nil || sa.init.conflict || sa.init.ni == nil || sa.init.nr == nil {
			f.stats.Missed++
			return
		}
		ni, nr = sa.init.ni, sa.init.nr
	}
	if ni == nil || nr == nil {
		f.stats.Malformed++
		return
	}
	iToR, rToI, err := c.Child.Derive(sa.keys.PRF, sa.keys.D, ni, nr)
	if err != nil {
		f.stats.Unsupported++
		return
	}
	encap := sa.encap || sa.natFromInit()
	a := childConfig(c.Child, c.Child.SPIr, req.src, req.dst, iToR, c.Child.TSi, c.Child.TSr, encap)
	b := childConfig(c.Child, c.Child.SPIi, req.dst, req.src, rToI, c.Child.TSr, c.Child.TSi, encap)
	res.Created = append(res.Created, a, b)
	if len(sa.children) < maxChildren {
		sa.children = append(sa.children, a.ID(), b.ID())
	}
	f.stats.Children++
}

func (sa *ikeSA) natFromInit() bool { return !sa.encapKnown && sa.init != nil && sa.init.nat }

// deleted reads the Delete payloads of an INFORMATIONAL request whose
// response was seen: CHILD_SAs leave (both directions: the response's
// Delete names the peer's half), an IKE SA is forgotten.
func (f *Follower) deleted(sa *ikeSA, req *request, resp []ikev2.Payload, res *Result) {
	for _, x := range []struct {
		ps  []ikev2.Payload
		dst netip.Addr // the SPIs a Delete names are its sender's inbound ones
	}{{req.payloads, req.src.Addr()}, {resp, req.dst.Addr()}} {
		for _, p := range x.ps {
			if p.Type != ikev2.PayloadDelete {
				continue
			}
			d, err := ikev2.ParseDelete(p.Body)
			if err != nil {
				continue
			}
			if d.Protocol == ikev2.ProtoIKE {
				// Its CHILD_SAs go with it (RFC 7296 §1.4.1).
				res.Deleted = append(res.Deleted, sa.children...)
				f.stats.Deletes += uint64(len(sa.children))
				f.forget(sa)
				return
			}
			proto := ipsec.ESP
			if d.Protocol == ikev2.ProtoAH {
				proto = ipsec.AH
			}
			for _, s := range d.SPIs {
				id := ipsec.ID{SPI: binary.BigEndian.Uint32(s), Dst: x.dst, Proto: proto}
				res.Deleted = append(res.Deleted, id)
				sa.children = slices.DeleteFunc(sa.children, func(c ipsec.ID) bool { return c == id })
				f.stats.Deletes++
			}
		}
	}
}

// childConfig is one direction of a CHILD_SA: from src to dst, on the SPI
// dst chose.
func childConfig(c *ikev2.Child, spi uint32, src, dst netip.AddrPort, k ikev2.Keymat, tsSrc, tsDst []ikev2.Selector, encap bool) ipsec.Config {
	cfg := ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: src.Addr().Unmap(), Dst: dst.Addr().Unmap(), Mode: ipsec.Tunnel,
		EncKey: k.Enc, IntegKey: k.Integ, ESN: c.ESN, Class: ipsec.ClassWrite, TS: selector(tsSrc, tsDst)}
	if c.Protocol == ikev2.ProtoAH {
		cfg.Proto = ipsec.AH
	}
	if c.Transport {
		cfg.Mode = ipsec.Transport
	}
	cfg.Enc = encOf(c.Encr)
	cfg.Integ = integOf(c.Integ)
	if encap && cfg.Proto == ipsec.ESP {
		cfg.EncapSrcPort, cfg.EncapDstPort = src.Port(), dst.Port()
	}
	return cfg
}

func encOf(id uint16) ipsec.Enc {
	switch id {
	case ikev2.EncrNull:
		return ipsec.EncNull
	case ikev2.EncrAESCBC:
		return ipsec.EncAESCBC
	case ikev2.EncrAESCTR:
		return ipsec.EncAESCTR
	case ikev2.EncrAESGCM12:
		return ipsec.EncAESGCM12
	case ikev2.EncrAESGCM16:
		return ipsec.EncAESGCM16
	case ikev2.EncrChaCha20Poly1305:
		return ipsec.EncChaCha20Poly1305
	}
	return ipsec.EncNone
}

func integOf(id uint16) ipsec.Integ {
	switch id {
	case ikev2.IntegHMACSHA196:
		return ipsec.IntegSHA1_96
	case ikev2.IntegHMACSHA2256128:
		return ipsec.IntegSHA256_128
	case ikev2.IntegHMACSHA2384192:
		return ipsec.IntegSHA384_192
	case ikev2.IntegHMACSHA2512256:
		return ipsec.IntegSHA512_256
	}
	return ipsec.IntegNone
}

// selector is the SA's traffic selector from one TS each way; more than
// one range either way is not expressible: any traffic (the SA's
// addresses decide).
func selector(src, dst []ikev2.Selector) ipsec.Selector {
	if len(src) != 1 || len(dst) != 1 || src[0].Protocol != dst[0].Protocol {
		return ipsec.Selector{Proto: ipsec.ProtoAny}
	}
	s := ipsec.Selector{Proto: ipsec.ProtoAny,
		Local:       ipsec.AddrRange{From: src[0].Start, To: src[0].End},
		Remote:      ipsec.AddrRange{From: dst[0].Start, To: dst[0].End},
		LocalPorts:  ipsec.PortRange{From: src[0].StartPort, To: src[0].EndPort},
		RemotePorts: ipsec.PortRange{From: dst[0].StartPort, To: dst[0].EndPort}}
	if src[0].Protocol != 0 {
		s.Proto = int(src[0].Protocol)
	}
	return s
}
