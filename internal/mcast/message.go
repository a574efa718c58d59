// Package mcast is neighbour discovery scheme B, for deployments where
// base-station locations are unknown: a gateway sends a probe to a
// multicast group with a small TTL; gateways that receive it answer by
// unicast, saying with what TTL the probe reached them; the prober counts
// each answer's hops (the TTL it sent less the TTL that arrived) and
// prefers the fewest. The TTL bounds who hears the probe: multicast
// routers forward a packet only while its TTL stays above 1.
//
// Discovery only names candidates. Nothing in a probe or an answer is
// trusted for more than that: a gateway acts on a neighbour only over the
// mutually authenticated channel (internal/pki) that handoff uses. IPv4
// only (IPv6's hop limit would serve the same way; not built).
package mcast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// A message on the wire:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     magic "EPD1"                              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     kind      |   TTL sent    |   TTL seen    |   name len    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                        nonce (8 octets)                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  name (name len octets, UTF-8) ... | addr len | addr ...      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// kind 1 is a probe, 2 an answer. An answer echoes the probe's nonce and
// TTL sent, and says the TTL the probe arrived with (TTL seen). addr is
// where the sender takes handoff requests (host:port).

const (
	magic     = "EPD1"
	headerLen = 16
	// MaxName and MaxAddr bound the two strings.
	MaxName = 64
	MaxAddr = 64
	// MaxMessage is the largest message.
	MaxMessage = headerLen + MaxName + 1 + MaxAddr
)

// Kinds.
const (
	KindProbe  = 1
	KindAnswer = 2
)

// Message is a probe or an answer.
type Message struct {
	Kind    uint8
	TTLSent uint8
	TTLSeen uint8 // answers: the TTL the probe arrived with
	Nonce   uint64
	Name    string // the sender's gateway name (its certificate's)
	Addr    string // where it takes handoff requests
}

// ErrFormat is a message that is not one.
var ErrFormat = errors.New("mcast: not a discovery message")

// Append writes m after b.
func (m *Message) Append(b []byte) ([]byte, error) {
	if len(m.Name) == 0 || len(m.Name) > MaxName || len(m.Addr) > MaxAddr {
		return b, fmt.Errorf("mcast: name of %d bytes or address of %d", len(m.Name), len(m.Addr))
	}
	b = append(b, magic...)
	b = append(b, m.Kind, m.TTLSent, m.TTLSeen, uint8(len(m.Name)))
	b = binary.BigEndian.AppendUint64(b, m.Nonce)
	b = append(b, m.Name...)
	b = append(b, uint8(len(m.Addr)))
	return append(b, m.Addr...), nil
}

// Parse reads a message; anything malformed is an error wrapping
// ErrFormat.
func Parse(b []byte) (Message, error) {
	var m Message
	if len(b) < headerLen+1 || string(b[:4]) != magic {
		return m, ErrFormat
	}
	m.Kind, m.TTLSent, m.TTLSeen = b[4], b[5], b[6]
	if m.Kind != KindProbe && m.Kind != KindAnswer {
		return m, fmt.Errorf("kind %d: %w", m.Kind, ErrFormat)
	}
	n := int(b[7])
	m.Nonce = binary.BigEndian.Uint64(b[8:])
	rest := b[headerLen:]
	if n == 0 || n > MaxName || len(rest) < n+1 {
		return m, fmt.Errorf("name of %d bytes in %d: %w", n, len(rest), ErrFormat)
	}
	m.Name, rest = string(rest[:n]), rest[n:]
	a := int(rest[0])
	if a > MaxAddr || len(rest) != a+1 {
		return m, fmt.Errorf("address of %d bytes in %d: %w", a, len(rest)-1, ErrFormat)
	}
	m.Addr = string(rest[1:])
	if !utf8.ValidString(m.Name) || !utf8.ValidString(m.Addr) {
		return m, fmt.Errorf("not UTF-8: %w", ErrFormat)
	}
	return m, nil
}
