package host

import "context"

// link is the host's packet I/O — the part that differs by platform: on
// Linux a TUN device, raw and UDP sockets and policy routing
// (link_linux.go); in tests, memory. The host's packet paths
// (packets.go) are the same over any link.
type link interface {
	// run reads until ctx ends (returning nil) or a read fails for good
	// (returning the error): packets routed into the TUN go to
	// h.outbound, with ipsec.MaxHeadroom before them and MaxTailroom
	// after; packets from the network, as whole IP packets (the link
	// rebuilds the headers a socket takes off), to h.inbound.
	run(ctx context.Context, h *Host) error
	// deliver writes an opened packet, buf[off:], into the TUN.
	deliver(buf []byte, off int) error
	// send puts an IP packet with its own header on the network.
	send(pkt []byte) error
	// close undoes what opening the link did.
	close() error
}
