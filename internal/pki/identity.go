// Package pki is espep's private certificate authority. It makes the CA,
// issues the certificates the control plane's mutual TLS runs on — with
// the holder's identity inside: its role (security server, gateway,
// agent), the addresses and prefixes an agent may speak for, the areas a
// gateway serves — takes certificates back with a revocation list, and
// reads the identity out of a peer's certificate once the chain, the
// validity, the revocation list and the role have been checked.
//
// The identity travels in the certificate's subject alternative names:
// IP addresses as IP SANs, everything else as URIs of the scheme espep
// (espep:role/gateway, espep:area/cell-17, espep:prefix/10.1.0.0/16).
// A certificate with an espep URI this package does not know is refused:
// a newer CA must not be able to grant what an older reader would ignore.
package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// Role is what a certificate's holder is.
type Role string

// The roles.
const (
	RoleServer  Role = "secserver" // a security server replica
	RoleGateway Role = "gateway"   // a gateway instance
	RoleAgent   Role = "agent"     // an endpoint's agent, or a router's for the hosts behind it
)

// Identity is who a certificate speaks for.
type Identity struct {
	Role Role
	// Name is the subject's common name (a host name, a gateway's name).
	Name string
	// Addrs are the holder's own addresses (IP SANs): a server's to be
	// reached at, an endpoint's to upload or ask SAs for.
	Addrs []netip.Addr
	// Prefixes are the networks an agent on a router protects: it may
	// upload or ask SAs for any address in them. Agents only.
	Prefixes []netip.Prefix
	// Areas are the base-station areas a gateway serves. Gateways only.
	Areas []string
	// DNS are names a server answers to (DNS SANs).
	DNS []string
}

// Validate reports what makes id unfit for a certificate.
func (id Identity) Validate() error {
	switch id.Role {
	case RoleServer, RoleGateway, RoleAgent:
	default:
		return fmt.Errorf("pki: role %q: want %s, %s or %s", id.Role, RoleServer, RoleGateway, RoleAgent)
	}
	if id.Name == "" || len(id.Name) > 64 || strings.ContainsFunc(id.Name, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Errorf("pki: name %q: want 1 to 64 printable characters", id.Name)
	}
	if len(id.Prefixes) > 0 && id.Role != RoleAgent {
		return fmt.Errorf("pki: prefixes are for agents, not a %s", id.Role)
	}
	if len(id.Areas) > 0 && id.Role != RoleGateway {
		return fmt.Errorf("pki: areas are for gateways, not a %s", id.Role)
	}
	for _, a := range id.Addrs {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("pki: address %v", a)
		}
	}
	for _, p := range id.Prefixes {
		if !p.IsValid() || p != p.Masked() {
			return fmt.Errorf("pki: prefix %v: want a network address with its length", p)
		}
	}
	for _, a := range id.Areas {
		if !validToken(a) {
			return fmt.Errorf("pki: area %q: want 1 to 64 of A-Z a-z 0-9 . _ -", a)
		}
	}
	return nil
}

// validToken reports whether s is a short token safe in a URI path.
func validToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Owns reports whether the identity may speak for address a: one of its
// own addresses, or inside a prefix it protects.
func (id Identity) Owns(a netip.Addr) bool {
	a = a.Unmap()
	if slices.Contains(id.Addrs, a) {
		return true
	}
	for _, p := range id.Prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Serves reports whether a gateway identity serves area.
func (id Identity) Serves(area string) bool {
	return id.Role == RoleGateway && slices.Contains(id.Areas, area)
}

// uris is the identity's espep URIs.
func (id Identity) uris() []*url.URL {
	u := []*url.URL{{Scheme: "espep", Opaque: "role/" + string(id.Role)}}
	for _, a := range id.Areas {
		u = append(u, &url.URL{Scheme: "espep", Opaque: "area/" + a})
	}
	for _, p := range id.Prefixes {
		u = append(u, &url.URL{Scheme: "espep", Opaque: "prefix/" + p.String()})
	}
	return u
}

// ErrNoIdentity is returned for a certificate that carries no espep
// identity, or one this package cannot read.
var ErrNoIdentity = errors.New("pki: no espep identity")

// IdentityOf reads the identity a certificate carries. It checks nothing
// else: Verifier.Verify is what decides whether to believe it.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	uris := make([]string, len(c.URIs))
	for i, u := range c.URIs {
		uris[i] = u.String()
	}
	id, err := parseURIs(uris)
	if err != nil {
		return Identity{}, err
	}
	id.Name = c.Subject.CommonName
	for _, ip := range c.IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return Identity{}, fmt.Errorf("%w: IP SAN %v", ErrNoIdentity, ip)
		}
		id.Addrs = append(id.Addrs, a.Unmap())
	}
	id.DNS = slices.Clone(c.DNSNames)
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrNoIdentity, err)
	}
	return id, nil
}

// parseURIs reads the espep URIs of a certificate: exactly one role, and
// areas and prefixes. URIs of other schemes are left alone.
func parseURIs(uris []string) (Identity, error) {
	var id Identity
	for _, s := range uris {
		rest, ours := strings.CutPrefix(s, "espep:")
		if !ours {
			continue
		}
		kind, val, ok := strings.Cut(rest, "/")
		if !ok || val == "" {
			return Identity{}, fmt.Errorf("%w: URI %q", ErrNoIdentity, s)
		}
		switch kind {
		case "role":
			if id.Role != "" {
				return Identity{}, fmt.Errorf("%w: two roles (%s, %s)", ErrNoIdentity, id.Role, val)
			}
			id.Role = Role(val)
		case "area":
			id.Areas = append(id.Areas, val)
		case "prefix":
			p, err := netip.ParsePrefix(val)
			if err != nil {
				return Identity{}, fmt.Errorf("%w: URI %q: %w", ErrNoIdentity, s, err)
			}
			id.Prefixes = append(id.Prefixes, p)
		default:
			return Identity{}, fmt.Errorf("%w: unknown URI %q", ErrNoIdentity, s)
		}
	}
	if id.Role == "" {
		return Identity{}, fmt.Errorf("%w: no role", ErrNoIdentity)
	}
	return id, nil
}
