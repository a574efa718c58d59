// Package header provides zero-copy views of the IP, UDP, ESP and AH headers
// that IPsec processing touches: each type is a []byte with accessor methods,
// validated once by its Parse function and then trusted.
//
// It is not a general packet library: it knows only what espep needs to find,
// open, seal and rewrite IPsec packets (and the TCP inside them, later). It
// never allocates and never panics on bad input; Parse functions return errors.
package header

import "errors"

// IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
const (
	ProtoHopByHop = 0
	ProtoICMP     = 1
	ProtoIPIP     = 4 // IPv4 in IP (RFC 2003), also the tunnel-mode next header
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoIPv6     = 41
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoESP      = 50
	ProtoAH       = 51
	ProtoICMPv6   = 58
	ProtoNoNext   = 59
	ProtoDestOpts = 60
	ProtoMobility = 135
)

// ErrTruncated reports a header or packet shorter than its fields claim.
var ErrTruncated = errors.New("truncated")

// ErrMalformed reports a header whose fields contradict each other.
var ErrMalformed = errors.New("malformed")
