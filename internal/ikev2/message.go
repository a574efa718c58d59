// Package ikev2 reads IKEv2 messages (RFC 7296) as they pass a gateway:
// the header, the chain of payloads, and the payloads a gateway following
// IKE needs — SA proposals and transforms, KE, Nonce, Notify, Delete,
// traffic selectors; it opens SK payloads with an IKE SA's delegated keys
// (Keys.Open: integrity first) and derives CHILD_SA keys (prf+, RFC 7296
// §2.17: Child.Derive). It only reads: it builds no message a peer would
// accept, and it cannot authenticate as a peer. Every length is checked
// against the bytes given; bad input is an error, never a panic. Package
// ikefollow keeps the state of the exchanges.
package ikev2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The IKE header (RFC 7296 §3.1):
//
//	                     1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       IKE SA Initiator's SPI                  |
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       IKE SA Responder's SPI                  |
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                          Message ID                           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                            Length                             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

// HeaderLen is the IKE header's length.
const HeaderLen = 28

// Exchange types (RFC 7296 §3.1).
const (
	ExchangeSAInit      = 34 // IKE_SA_INIT
	ExchangeAuth        = 35 // IKE_AUTH
	ExchangeCreateChild = 36 // CREATE_CHILD_SA
	ExchangeInformation = 37 // INFORMATIONAL
)

// Header flags (RFC 7296 §3.1).
const (
	FlagInitiator = 0x08 // I: sent by the original initiator of the IKE SA
	FlagVersion   = 0x10 // V
	FlagResponse  = 0x20 // R: a response
)

// Payload types (RFC 7296 §3.2; RFC 7383 for SKF).
const (
	PayloadNone     = 0
	PayloadSA       = 33
	PayloadKE       = 34
	PayloadIDi      = 35
	PayloadIDr      = 36
	PayloadCert     = 37
	PayloadCertReq  = 38
	PayloadAuth     = 39
	PayloadNonce    = 40
	PayloadNotify   = 41
	PayloadDelete   = 42
	PayloadVendorID = 43
	PayloadTSi      = 44
	PayloadTSr      = 45
	PayloadSK       = 46
	PayloadCP       = 47
	PayloadEAP      = 48
	PayloadSKF      = 53
)

// MaxPayloads bounds a chain: more is an error (a message of IKEv2 has a
// dozen or so).
const MaxPayloads = 64

// ErrMalformed is what every parse error wraps.
var ErrMalformed = errors.New("ikev2: malformed")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
}

// Message is a parsed IKE message; its payloads' bodies are views into
// the bytes parsed.
type Message struct {
	SPIi, SPIr uint64
	Version    uint8 // major << 4 | minor: 0x20 for IKEv2
	Exchange   uint8
	Flags      uint8
	MessageID  uint32
	// Payloads are the chain in order. An SK (or SKF) payload, if any,
	// is the last: what it encrypts is in its ciphertext, its Next
	// Payload (Payload.Next) names the first inner payload.
	Payloads []Payload
}

// Payload is one payload of a chain.
type Payload struct {
	Type     uint8
	Next     uint8 // the Next Payload field: the type of the payload after this one (for SK: the first one inside)
	Critical bool
	Reserved uint8  // the generic header's other seven bits: sent as 0, ignored on receipt (RFC 7296 §3.2)
	Body     []byte // after the generic header
}

// Response reports whether the message is a response.
func (m *Message) Response() bool { return m.Flags&FlagResponse != 0 }

// Initiator reports whether the original initiator of the IKE SA sent it.
func (m *Message) Initiator() bool { return m.Flags&FlagInitiator != 0 }

// Find returns the first payload of type t.
func (m *Message) Find(t uint8) (Payload, bool) { return find(m.Payloads, t) }

// Parse reads an IKE message (what follows the UDP header, or the
// non-ESP marker on port 4500). The header's Length must be the bytes
// given: no more, no less.
func Parse(b []byte) (Message, error) {
	if len(b) < HeaderLen {
		return Message{}, malformed("%d bytes, the header alone is %d", len(b), HeaderLen)
	}
	m := Message{SPIi: binary.BigEndian.Uint64(b[0:]), SPIr: binary.BigEndian.Uint64(b[8:]), Version: b[17], Exchange: b[18],
		Flags: b[19], MessageID: binary.BigEndian.Uint32(b[20:])}
	if m.Version>>4 != 2 {
		return Message{}, malformed("version %d.%d", m.Version>>4, m.Version&0xf)
	}
	if n := binary.BigEndian.Uint32(b[24:]); uint64(n) != uint64(len(b)) {
		return Message{}, malformed("length field %d, %d bytes", n, len(b))
	}
	var err error
	m.Payloads, err = ParseChain(b[16], b[HeaderLen:])
	if err != nil {
		return Message{}, err
	}
	return m, nil
}

// ParseChain reads a chain of payloads whose first is of type first
// (RFC 7296 §3.2) — a message's, or what an SK payload decrypts to. An SK
// or SKF payload ends the chain (RFC 7296 §3.14: it must be the last);
// bytes after the last payload are an error.
func ParseChain(first uint8, b []byte) ([]Payload, error) {
	var out []Payload
	next := first
	for next != PayloadNone {
		if len(out) == MaxPayloads {
			return nil, malformed("more than %d payloads", MaxPayloads)
		}
		if len(b) < 4 {
			return nil, malformed("payload %d: %d bytes left, its header is 4", next, len(b))
		}
		n := int(binary.BigEndian.Uint16(b[2:]))
		if n < 4 || n > len(b) {
			return nil, malformed("payload %d: length %d, %d bytes left", next, n, len(b))
		}
		p := Payload{Type: next, Next: b[0], Critical: b[1]&0x80 != 0, Reserved: b[1] & 0x7f, Body: b[4:n:n]}
		out = append(out, p)
		b = b[n:]
		if p.Type == PayloadSK || p.Type == PayloadSKF {
			break
		}
		next = p.Next
	}
	if len(b) != 0 {
		return nil, malformed("%d bytes after the last payload", len(b))
	}
	return out, nil
}

// AppendPayloads appends the chain ps to b as ParseChain reads it (each
// payload's Next field as given) and returns the type of the first.
func AppendPayloads(b []byte, ps []Payload) ([]byte, uint8, error) {
	var first uint8
	for i, p := range ps {
		if i == 0 {
			first = p.Type
		}
		if len(p.Body)+4 > 0xffff {
			return nil, 0, fmt.Errorf("ikev2: payload %d: %d bytes", p.Type, len(p.Body))
		}
		flags := p.Reserved & 0x7f
		if p.Critical {
			flags |= 0x80
		}
		b = append(b, p.Next, flags, 0, 0)
		binary.BigEndian.PutUint16(b[len(b)-2:], uint16(len(p.Body)+4))
		b = append(b, p.Body...)
	}
	return b, first, nil
}

// Append appends m as Parse reads it.
func (m *Message) Append(b []byte) ([]byte, error) {
	start := len(b)
	b = binary.BigEndian.AppendUint64(b, m.SPIi)
	b = binary.BigEndian.AppendUint64(b, m.SPIr)
	b = append(b, 0, m.Version, m.Exchange, m.Flags)
	b = binary.BigEndian.AppendUint32(b, m.MessageID)
	b = append(b, 0, 0, 0, 0)
	b, first, err := AppendPayloads(b, m.Payloads)
	if err != nil {
		return nil, err
	}
	b[start+16] = first
	binary.BigEndian.PutUint32(b[start+24:], uint32(len(b)-start))
	return b, nil
}
