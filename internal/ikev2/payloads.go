package ikev2

import (
	"encoding/binary"
	"net/netip"
)

// Protocol IDs (RFC 7296 §3.3.1).
const (
	ProtoIKE = 1
	ProtoAH  = 2
	ProtoESP = 3
)

// Transform types (RFC 7296 §3.3.2).
const (
	TransformEncr  = 1
	TransformPRF   = 2
	TransformInteg = 3
	TransformDH    = 4
	TransformESN   = 5
)

// AttrKeyLength is the Key Length transform attribute (RFC 7296 §3.3.5).
const AttrKeyLength = 14

// Notify message types a gateway following IKE reads (RFC 7296 §3.10.1).
const (
	NotifyInvalidKEPayload  = 17
	NotifyUseTransportMode  = 16391
	NotifyRekeySA           = 16393
	NotifyESPTFCPaddingNot  = 16394
	NotifyNATDetectionSrcIP = 16388
	NotifyNATDetectionDstIP = 16389
)

// Bounds on what one SA payload may hold.
const (
	MaxProposals  = 64
	MaxTransforms = 64
)

// Proposal is one proposal of an SA payload (RFC 7296 §3.3.1).
type Proposal struct {
	Num        uint8
	Protocol   uint8
	SPI        []byte // 0 (IKE_SA_INIT), 4 (ESP, AH) or 8 bytes (an IKE SA rekey)
	Transforms []Transform
}

// Transform is one transform of a proposal (RFC 7296 §3.3.2).
type Transform struct {
	Type      uint8
	ID        uint16
	KeyLength int // bits, from the Key Length attribute; 0 without one
}

// Find returns the proposal's first transform of type t.
func (p *Proposal) Find(t uint8) (Transform, bool) {
	for _, x := range p.Transforms {
		if x.Type == t {
			return x, true
		}
	}
	return Transform{}, false
}

// ParseSA reads an SA payload's body: its proposals, numbered 1, 2, … in
// order, the last marked last (RFC 7296 §3.3).
func ParseSA(b []byte) ([]Proposal, error) {
	var out []Proposal
	for {
		if len(out) == MaxProposals {
			return nil, malformed("sa: more than %d proposals", MaxProposals)
		}
		if len(b) < 8 {
			return nil, malformed("sa: proposal %d: %d bytes, its header is 8", len(out)+1, len(b))
		}
		last, n := b[0], int(binary.BigEndian.Uint16(b[2:]))
		if last != 0 && last != 2 || n < 8 || n > len(b) {
			return nil, malformed("sa: proposal %d: last-substructure %d, length %d of %d", len(out)+1, last, n, len(b))
		}
		p, err := parseProposal(b[:n])
		if err != nil {
			return nil, err
		}
		if int(p.Num) != len(out)+1 {
			return nil, malformed("sa: proposal %d numbered %d", len(out)+1, p.Num)
		}
		out = append(out, p)
		b = b[n:]
		if last == 0 {
			break
		}
	}
	if len(b) != 0 {
		return nil, malformed("sa: %d bytes after the last proposal", len(b))
	}
	return out, nil
}

// parseProposal reads one proposal substructure (its length checked).
func parseProposal(b []byte) (Proposal, error) {
	p := Proposal{Num: b[4], Protocol: b[5]}
	spiSize, count := int(b[6]), int(b[7])
	if spiSize != 0 && spiSize != 4 && spiSize != 8 || 8+spiSize > len(b) {
		return Proposal{}, malformed("sa: proposal %d: SPI of %d bytes", p.Num, spiSize)
	}
	if count > MaxTransforms {
		return Proposal{}, malformed("sa: proposal %d: %d transforms", p.Num, count)
	}
	p.SPI = b[8 : 8+spiSize : 8+spiSize]
	b = b[8+spiSize:]
	for i := range count {
		if len(b) < 8 {
			return Proposal{}, malformed("sa: proposal %d: transform %d: %d bytes", p.Num, i+1, len(b))
		}
		last, n := b[0], int(binary.BigEndian.Uint16(b[2:]))
		if n < 8 || n > len(b) || (last == 0) != (i == count-1) || last != 0 && last != 3 {
			return Proposal{}, malformed("sa: proposal %d: transform %d: last-substructure %d, length %d of %d", p.Num, i+1, last, n, len(b))
		}
		t := Transform{Type: b[4], ID: binary.BigEndian.Uint16(b[6:])}
		for a := b[8:n]; len(a) > 0; {
			// Attributes (RFC 7296 §3.3.5): TV (AF set, 2-byte value) or
			// TLV (AF clear, a length and that many bytes).
			if len(a) < 4 {
				return Proposal{}, malformed("sa: proposal %d: transform %d: attribute of %d bytes", p.Num, i+1, len(a))
			}
			typ := binary.BigEndian.Uint16(a)
			if typ&0x8000 != 0 {
				if typ&0x7fff == AttrKeyLength {
					t.KeyLength = int(binary.BigEndian.Uint16(a[2:]))
				}
				a = a[4:]
				continue
			}
			l := int(binary.BigEndian.Uint16(a[2:]))
			if 4+l > len(a) {
				return Proposal{}, malformed("sa: proposal %d: transform %d: attribute of %d bytes, %d left", p.Num, i+1, l, len(a)-4)
			}
			a = a[4+l:]
		}
		p.Transforms = append(p.Transforms, t)
		b = b[n:]
	}
	if len(b) != 0 {
		return Proposal{}, malformed("sa: proposal %d: %d bytes after its transforms", p.Num, len(b))
	}
	return p, nil
}

// KE is a Key Exchange payload (RFC 7296 §3.4).
type KE struct {
	Group uint16
	Data  []byte
}

// ParseKE reads a KE payload's body.
func ParseKE(b []byte) (KE, error) {
	if len(b) < 4 {
		return KE{}, malformed("ke: %d bytes", len(b))
	}
	return KE{Group: binary.BigEndian.Uint16(b), Data: b[4:]}, nil
}

// ParseNonce reads a Nonce payload's body: 16 to 256 bytes (RFC 7296
// §3.9).
func ParseNonce(b []byte) ([]byte, error) {
	if len(b) < 16 || len(b) > 256 {
		return nil, malformed("nonce of %d bytes", len(b))
	}
	return b, nil
}

// Notify is a Notify payload (RFC 7296 §3.10).
type Notify struct {
	Protocol uint8
	Type     uint16
	SPI      []byte
	Data     []byte
}

// ParseNotify reads a Notify payload's body.
func ParseNotify(b []byte) (Notify, error) {
	if len(b) < 4 || 4+int(b[1]) > len(b) {
		return Notify{}, malformed("notify: %d bytes", len(b))
	}
	spi := int(b[1])
	return Notify{Protocol: b[0], Type: binary.BigEndian.Uint16(b[2:]), SPI: b[4 : 4+spi : 4+spi], Data: b[4+spi:]}, nil
}

// Delete is a Delete payload (RFC 7296 §3.11): the SAs of a protocol it
// deletes (none listed for the IKE SA itself).
type Delete struct {
	Protocol uint8
	SPIs     [][]byte
}

// ParseDelete reads a Delete payload's body.
func ParseDelete(b []byte) (Delete, error) {
	if len(b) < 4 {
		return Delete{}, malformed("delete: %d bytes", len(b))
	}
	d := Delete{Protocol: b[0]}
	size, n := int(b[1]), int(binary.BigEndian.Uint16(b[2:]))
	switch {
	case d.Protocol == ProtoIKE && (size != 0 || n != 0),
		d.Protocol != ProtoIKE && (size != 4 || n == 0),
		len(b) != 4+size*n:
		return Delete{}, malformed("delete: protocol %d, %d SPIs of %d bytes in %d bytes", d.Protocol, n, size, len(b))
	}
	for i := range n {
		o := 4 + i*size
		d.SPIs = append(d.SPIs, b[o:o+size:o+size])
	}
	return d, nil
}

// Traffic selector types (RFC 7296 §3.13.1).
const (
	TSIPv4 = 7
	TSIPv6 = 8
)

// Selector is one traffic selector: a protocol (0: any), a port range and
// an address range.
type Selector struct {
	Protocol           uint8
	StartPort, EndPort uint16
	Start, End         netip.Addr
}

// MaxSelectors bounds a TS payload.
const MaxSelectors = 64

// ParseTS reads a TSi or TSr payload's body.
func ParseTS(b []byte) ([]Selector, error) {
	if len(b) < 4 {
		return nil, malformed("ts: %d bytes", len(b))
	}
	n := int(b[0])
	if n == 0 || n > MaxSelectors {
		return nil, malformed("ts: %d selectors", n)
	}
	b = b[4:]
	out := make([]Selector, 0, n)
	for i := range n {
		if len(b) < 8 {
			return nil, malformed("ts: selector %d: %d bytes", i+1, len(b))
		}
		typ, l := b[0], int(binary.BigEndian.Uint16(b[2:]))
		alen := 0
		switch typ {
		case TSIPv4:
			alen = 4
		case TSIPv6:
			alen = 16
		}
		if alen == 0 || l != 8+2*alen || l > len(b) {
			return nil, malformed("ts: selector %d: type %d, length %d of %d", i+1, typ, l, len(b))
		}
		s := Selector{Protocol: b[1], StartPort: binary.BigEndian.Uint16(b[4:]), EndPort: binary.BigEndian.Uint16(b[6:])}
		s.Start, _ = netip.AddrFromSlice(b[8 : 8+alen])
		s.End, _ = netip.AddrFromSlice(b[8+alen : 8+2*alen])
		out = append(out, s)
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, malformed("ts: %d bytes after the last selector", len(b))
	}
	return out, nil
}

// SplitSK divides an SK payload's body (RFC 7296 §3.14) into its IV, its
// ciphertext (the encrypted payloads, their padding and pad length) and
// its integrity checksum, given the IV and checksum lengths the IKE SA's
// transforms use. It decrypts nothing.
func SplitSK(body []byte, ivLen, icvLen int) (iv, ciphertext, icv []byte, err error) {
	if ivLen < 0 || icvLen < 0 || len(body) < ivLen+icvLen+1 {
		return nil, nil, nil, malformed("sk: %d bytes for a %d-byte IV and a %d-byte checksum", len(body), ivLen, icvLen)
	}
	c := len(body) - icvLen
	return body[:ivLen:ivLen], body[ivLen:c:c], body[c:], nil
}
