package ikev2

import (
	"encoding/binary"
	"fmt"
)

// Child is a CHILD_SA as an IKE_AUTH or CREATE_CHILD_SA exchange
// negotiated it (RFC 7296 §1.3, §2.17). "Initiator" and "responder" are
// those of the exchange, which for a CREATE_CHILD_SA need not be those of
// the IKE SA.
type Child struct {
	Protocol uint8 // ProtoESP or ProtoAH
	// SPIi is the SPI the exchange's initiator chose: the one it receives
	// on, so the SA from the responder to the initiator. SPIr is the
	// responder's: the SA from the initiator to the responder.
	SPIi, SPIr uint32
	Encr       uint16 // 0 for AH
	KeyLength  int    // bits, from the Key Length attribute
	Integ      uint16 // 0 with an AEAD
	ESN        bool
	Transport  bool       // USE_TRANSPORT_MODE in the request and the response
	TSi, TSr   []Selector // the response's: what was agreed
	// Rekeys is the SPI named by the request's REKEY_SA notify (the SA
	// this one replaces, as its initiator receives on it), 0 if none.
	Rekeys uint32
	// PFS: the exchange carried a KE payload, so KEYMAT includes a
	// Diffie-Hellman secret that only the peers have (RFC 7296 §2.17).
	PFS bool
}

// Keymat is one direction's keys of a CHILD_SA: for ESP the encryption
// key (with its salt, as package ipsec takes it) then the integrity key.
type Keymat struct{ Enc, Integ []byte }

// Wipe zeroes the keys.
func (k *Keymat) Wipe() { clear(k.Enc); clear(k.Integ) }

// encKeyLen is the bytes of KEYMAT an encryption transform takes: the
// key and, for the counter-based ones, a 4-byte salt or nonce (RFC 3686
// §5.1, RFC 4106 §8.1, RFC 7634 §3).
func encKeyLen(encr uint16, bits int) (int, error) {
	switch encr {
	case 0, EncrNull:
		return 0, nil
	case EncrAESCBC, EncrAESCTR, EncrAESGCM12, EncrAESGCM16:
		if bits != 128 && bits != 192 && bits != 256 {
			return 0, fmt.Errorf("%w: encryption %d with a %d-bit key", ErrUnsupported, encr, bits)
		}
		if encr == EncrAESCBC {
			return bits / 8, nil
		}
		return bits/8 + 4, nil
	case EncrChaCha20Poly1305:
		return 36, nil
	}
	return 0, fmt.Errorf("%w: encryption %d for a CHILD_SA", ErrUnsupported, encr)
}

// Derive computes the CHILD_SA's keys from the IKE SA's SK_d and the
// exchange's nonces: KEYMAT = prf+(SK_d, Ni | Nr), the initiator-to-
// responder SA's keys first, each SA's encryption key before its
// integrity key (RFC 7296 §2.17). A Child with PFS cannot be derived.
func (c *Child) Derive(prf uint16, skd, ni, nr []byte) (iToR, rToI Keymat, err error) {
	if c.PFS {
		return Keymat{}, Keymat{}, fmt.Errorf("ikev2: child spi %#x/%#x: PFS (a KE payload): KEYMAT needs the Diffie-Hellman secret", c.SPIi, c.SPIr)
	}
	el, err := encKeyLen(c.Encr, c.KeyLength)
	if err != nil {
		return Keymat{}, Keymat{}, err
	}
	il := integKeyLen(c.Integ)
	if c.Integ != 0 && il == 0 {
		return Keymat{}, Keymat{}, fmt.Errorf("%w: integrity %d", ErrUnsupported, c.Integ)
	}
	if aead(c.Encr) && c.Integ != 0 || !aead(c.Encr) && c.Integ == 0 {
		return Keymat{}, Keymat{}, fmt.Errorf("%w: encryption %d with integrity %d", ErrUnsupported, c.Encr, c.Integ)
	}
	seed := append(append(make([]byte, 0, len(ni)+len(nr)), ni...), nr...)
	km, err := PRFPlus(prf, skd, seed, 2*(el+il))
	if err != nil {
		return Keymat{}, Keymat{}, err
	}
	iToR = Keymat{Enc: km[:el:el], Integ: km[el : el+il : el+il]}
	km = km[el+il:]
	rToI = Keymat{Enc: km[:el:el], Integ: km[el : el+il : el+il]}
	return iToR, rToI, nil
}

// Created is what an exchange created, read from its request's and
// response's payloads (the SK payload's, decrypted).
type Created struct {
	// Child is set when the exchange created a CHILD_SA.
	Child *Child
	// NewSPIi and NewSPIr are set when a CREATE_CHILD_SA rekeyed the IKE
	// SA (RFC 7296 §1.3.2): the new IKE SA's SPIs. Its keys come from a
	// Diffie-Hellman exchange: a follower needs them delegated anew.
	NewSPIi, NewSPIr uint64
	// Ni and Nr are the exchange's nonces (CREATE_CHILD_SA only; an
	// IKE_AUTH's are IKE_SA_INIT's).
	Ni, Nr []byte
}

// ReadCreated reads what an IKE_AUTH or CREATE_CHILD_SA exchange created
// from its request's and response's payloads. A response without an SA
// payload (an error notify; an IKE_AUTH with no CHILD_SA) created nothing.
func ReadCreated(req, resp []Payload) (Created, error) {
	var out Created
	for _, x := range []struct {
		ps  []Payload
		dst *[]byte
	}{{req, &out.Ni}, {resp, &out.Nr}} {
		if p, ok := find(x.ps, PayloadNonce); ok {
			n, err := ParseNonce(p.Body)
			if err != nil {
				return Created{}, err
			}
			*x.dst = n
		}
	}
	rp, ok := find(resp, PayloadSA)
	if !ok {
		return out, nil
	}
	chosen, err := ParseSA(rp.Body)
	if err != nil {
		return Created{}, fmt.Errorf("response: %w", err)
	}
	if len(chosen) != 1 {
		return Created{}, malformed("response: %d proposals, the chosen one only", len(chosen))
	}
	qp, ok := find(req, PayloadSA)
	if !ok {
		return Created{}, malformed("request: no SA payload")
	}
	offered, err := ParseSA(qp.Body)
	if err != nil {
		return Created{}, fmt.Errorf("request: %w", err)
	}
	// The response's proposal carries the number of the one it chose
	// (RFC 7296 §3.3.1).
	r := chosen[0]
	if int(r.Num) < 1 || int(r.Num) > len(offered) || offered[r.Num-1].Protocol != r.Protocol {
		return Created{}, malformed("response chose proposal %d (protocol %d) of %d", r.Num, r.Protocol, len(offered))
	}
	q := offered[r.Num-1]
	if r.Protocol == ProtoIKE {
		if len(q.SPI) != 8 || len(r.SPI) != 8 {
			return Created{}, malformed("IKE SA rekey: SPIs of %d and %d bytes", len(q.SPI), len(r.SPI))
		}
		out.NewSPIi, out.NewSPIr = binary.BigEndian.Uint64(q.SPI), binary.BigEndian.Uint64(r.SPI)
		return out, nil
	}
	c, err := readChild(q, r, req, resp)
	if err != nil {
		return Created{}, err
	}
	out.Child = c
	return out, nil
}

func readChild(q, r Proposal, req, resp []Payload) (*Child, error) {
	if r.Protocol != ProtoESP && r.Protocol != ProtoAH || len(q.SPI) != 4 || len(r.SPI) != 4 {
		return nil, malformed("child: protocol %d, SPIs of %d and %d bytes", r.Protocol, len(q.SPI), len(r.SPI))
	}
	c := &Child{Protocol: r.Protocol, SPIi: binary.BigEndian.Uint32(q.SPI), SPIr: binary.BigEndian.Uint32(r.SPI)}
	if t, ok := r.Find(TransformEncr); ok {
		c.Encr, c.KeyLength = t.ID, t.KeyLength
	}
	if t, ok := r.Find(TransformInteg); ok {
		c.Integ = t.ID
	}
	if t, ok := r.Find(TransformESN); ok {
		c.ESN = t.ID == ESNExtended
	}
	if r.Protocol == ProtoESP && c.Encr == 0 {
		return nil, malformed("child: ESP without an encryption transform")
	}
	_, c.PFS = find(req, PayloadKE)
	if _, ok := find(resp, PayloadKE); ok {
		c.PFS = true
	}
	c.Transport = hasNotify(req, NotifyUseTransportMode) && hasNotify(resp, NotifyUseTransportMode)
	for _, p := range req {
		if p.Type != PayloadNotify {
			continue
		}
		if n, err := ParseNotify(p.Body); err == nil && n.Type == NotifyRekeySA && len(n.SPI) == 4 {
			c.Rekeys = binary.BigEndian.Uint32(n.SPI)
		}
	}
	for _, x := range []struct {
		t   uint8
		dst *[]Selector
	}{{PayloadTSi, &c.TSi}, {PayloadTSr, &c.TSr}} {
		p, ok := find(resp, x.t)
		if !ok {
			return nil, malformed("child: response without payload %d", x.t)
		}
		ts, err := ParseTS(p.Body)
		if err != nil {
			return nil, err
		}
		*x.dst = ts
	}
	return c, nil
}

func find(ps []Payload, t uint8) (Payload, bool) {
	for _, p := range ps {
		if p.Type == t {
			return p, true
		}
	}
	return Payload{}, false
}

func hasNotify(ps []Payload, typ uint16) bool {
	for _, p := range ps {
		if p.Type != PayloadNotify {
			continue
		}
		if n, err := ParseNotify(p.Body); err == nil && n.Type == typ {
			return true
		}
	}
	return false
}
