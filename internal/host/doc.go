// Package host is `espep host`: a userspace IPsec endpoint for the kernels
// here, which have no ESP. It creates a TUN device, routes the protected
// destinations into it, and applies an SPD and a SAD: packets from the TUN
// are sealed (PROTECT), sent as they are (BYPASS) or dropped (DISCARD);
// ESP and AH from the network — raw, or ESP in UDP 4500 — are opened,
// checked against the replay window and the inbound policy, and delivered
// into the TUN. Transport and tunnel mode; a host in tunnel mode for a
// subnet behind it is the seed's security-gateway router.
//
// Sealed and bypassed packets leave on a raw socket with a firewall mark,
// and the TUN routes live in a table that marked packets skip (the way
// wg-quick does it), so that transport-mode ESP to a peer whose address is
// routed into the TUN does not loop.
package host
