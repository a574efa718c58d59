package host

import "context"

// link is the host's packet I/O — the part that differs by platform: on
// Linux a TUN device, raw and UDP sockets and policy routing
// (link_linux.go); in tests, memory. The host's packet paths
// (packets.go) are the same over any link: the link hands them packets
// and sends or delivers what they return.
type link interface {
	// run reads until ctx ends (returning nil) or a read fails for good
	// (returning the error): a packet routed into the TUN goes to
	// h.outbound, with ipsec.MaxHeadroom before it and MaxTailroom after,
	// and what that returns onto the network; a packet from the network,
	// as a whole IP packet (the link rebuilds the headers a socket takes
	// off), goes to h.inbound, and what that returns into the TUN. Send
	// and write failures are counted (cSendErrors, cTunWriteErrors).
	run(ctx context.Context, h *Host) error
	// close undoes what opening the link did.
	close() error
}
