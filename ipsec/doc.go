// Package ipsec implements the IPsec packet transforms that espep's gateway,
// userspace host and tools share: ESP (RFC 4303) and AH (RFC 4302) in
// transport and tunnel mode over IPv4 and IPv6, ESP in UDP (RFC 3948),
// anti-replay windows with extended sequence numbers (RFC 6479, RFC 4303
// Appendix A), security associations with permission classes, and the SAD
// and SPD of RFC 4301.
//
// Packets are sealed and opened in place in caller-owned buffers that reserve
// headroom and tailroom (see SA.Headroom and SA.Tailroom); the hot path
// allocates nothing. The caller may choose the outbound sequence number and
// the IV source of each sealed packet, which a gateway that re-seals an
// endpoint's traffic needs (DESIGN.md rules 1 and 2).
//
// An SA's permission class decides what the API lets a holder do: a write SA
// (type SA) can seal, verify and open; a read SA (type ReadSA) holds no
// integrity key and can only decrypt into a separate buffer; a none-class
// entry holds no keys at all. IKE is not part of this package.
package ipsec
