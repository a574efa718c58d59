package host

import (
	"net/netip"

	"github.com/espep/espep/ipsec/header"
)

// ESP in UDP (RFC 3948) leaves in runs: the datagrams one TUN read sealed
// for one peer are mostly of one size — a TCP flow's full segments — and
// a UDP socket sends such a run in one system call (UDP_SEGMENT: the
// kernel cuts the payload into datagrams of the first one's size; the
// last may be shorter). This file decides what can go together; the
// Linux link sends it (batch_linux.go).

// Limits of one segmented send: the kernel's segment limit (64 before
// Linux 5.x raised it to 128) and the room of one IP packet.
const (
	maxGSOSegs  = 64
	maxGSOBytes = 65535 - header.IPv6Len - header.UDPLen
)

// datagram is a packet the host sealed, seen as a UDP socket sends it.
type datagram struct {
	src, dst     netip.Addr
	sport, dport uint16
	tos          uint8  // IPv4 TOS or IPv6 traffic class
	payload      []byte // the UDP payload, in pkt
	pkt          []byte // the whole IP packet
}

// asDatagram reports whether pkt, an IP packet the host sealed, is a UDP
// datagram from port that the UDP socket bound to port may send in its
// place, and fills d: IPv4 without options and not a fragment, or IPv6
// with UDP right after its header, the UDP length agreeing with the
// packet's. The kernel then writes the IP header (its own TTL and ID) and
// the checksum.
func asDatagram(pkt []byte, port uint16, d *datagram) bool {
	var ip header.Parsed
	if port == 0 || header.Parse(pkt, &ip) != nil || ip.Proto != header.ProtoUDP || ip.Fragment || ip.Len != len(pkt) {
		return false
	}
	switch {
	case ip.Version == 4 && ip.L4 == header.IPv4MinLen:
		d.tos = pkt[1]
	case ip.Version == 6 && ip.L4 == header.IPv6Len:
		d.tos = pkt[0]<<4 | pkt[1]>>4
	default:
		return false
	}
	u, err := header.ParseUDP(pkt[ip.L4:])
	if err != nil || u.SrcPort() != port || u.Length() != len(pkt)-ip.L4 {
		return false
	}
	d.src, d.dst, d.sport, d.dport = ip.Src, ip.Dst, u.SrcPort(), u.DstPort()
	d.payload = u.Payload()
	return true
}

// gsoRun returns how many datagrams from ds[0] on can go in one
// segmented send: to the same peer and port with the same TOS, each as
// long as the first but the last, which may be shorter, at most
// maxGSOSegs and maxGSOBytes together. It is at least 1 when ds is not
// empty.
func gsoRun(ds []datagram) int {
	if len(ds) == 0 {
		return 0
	}
	first := &ds[0]
	size, total := len(first.payload), len(first.payload)
	if size == 0 {
		return 1 // a segment size of 0 means no segmentation
	}
	n := 1
	for n < len(ds) && n < maxGSOSegs {
		d := &ds[n]
		if d.src != first.src || d.dst != first.dst || d.dport != first.dport || d.tos != first.tos ||
			len(d.payload) > size || len(d.payload) == 0 || total+len(d.payload) > maxGSOBytes {
			break
		}
		total += len(d.payload)
		n++
		if len(d.payload) < size { // a shorter one ends the run
			break
		}
	}
	return n
}

// joined returns how many datagrams a read of n bytes holds when the
// kernel joined them at seg bytes each (UDP_GRO; seg 0: one datagram) and
// the size they are cut at, and whether the read is one to open: not
// empty, and not more datagrams than the kernel joins (max).
func joined(n, seg, max int) (count, size int, ok bool) {
	if n <= 0 {
		return 0, 0, false
	}
	if seg <= 0 || seg > n {
		seg = n
	}
	count = (n + seg - 1) / seg
	return count, seg, count <= max
}
