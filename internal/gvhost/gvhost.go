// Package gvhost is an in-process IP host whose TCP is gVisor's netstack —
// a real TCP stack written elsewhere — for espep's tests and the lab. A
// Host hands every IP packet it sends to a function and takes the packets
// it receives through Inject; what carries them in between (netem links,
// the engine, IPsec) is the caller's.
package gvhost

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	tcpiphdr "gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Options configure a host's TCP.
type Options struct {
	MTU  int  // default 1500
	SACK bool // RFC 2018 SACK (gVisor's default is off)
	// BufferBytes sets the largest send and receive buffers (default 4 MB,
	// enough for 100 ms at 100 Mbit/s and more).
	BufferBytes int
	// CC is the congestion control, "reno" (gVisor's default) or "cubic".
	CC string
}

// Host is one in-process TCP/IP host with one interface.
type Host struct {
	Stack  *stack.Stack
	ep     *channel.Endpoint
	addr   netip.Addr
	ctx    context.Context
	cancel context.CancelFunc
}

// New makes a host with address addr.
func New(addr netip.Addr, o Options) (*Host, error) {
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.BufferBytes == 0 {
		o.BufferBytes = 4 << 20
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(o.SACK)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: o.BufferBytes, Max: o.BufferBytes}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: o.BufferBytes, Max: o.BufferBytes}
	opts := []tcpip.SettableTransportProtocolOption{&sack, &snd, &rcv}
	if o.CC != "" {
		cc := tcpip.CongestionControlOption(o.CC)
		opts = append(opts, &cc)
	}
	for _, opt := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return nil, fmt.Errorf("gvhost: tcp option %T: %s", opt, err)
		}
	}
	ep := channel.New(4096, uint32(o.MTU), "")
	if err := s.CreateNIC(1, ep); err != nil {
		return nil, fmt.Errorf("gvhost: nic: %s", err)
	}
	proto, subnet := ipv4.ProtocolNumber, tcpiphdr.IPv4EmptySubnet
	if addr.Is6() {
		proto, subnet = ipv6.ProtocolNumber, tcpiphdr.IPv6EmptySubnet
	}
	pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("gvhost: address %v: %s", addr, err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	return &Host{Stack: s, ep: ep, addr: addr, ctx: ctx, cancel: cancel}, nil
}

// Addr is the host's address.
func (h *Host) Addr() netip.Addr { return h.addr }

// Run hands every packet the host sends to send (which owns it) until the
// host is closed. Run it on its own goroutine.
func (h *Host) Run(send func(pkt []byte)) {
	for {
		pkt := h.ep.ReadContext(h.ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		b := append([]byte(nil), v.AsSlice()...)
		v.Release()
		pkt.DecRef()
		send(b)
	}
}

// Inject delivers a received IP packet to the host.
func (h *Host) Inject(b []byte) {
	if len(b) == 0 {
		return
	}
	proto := ipv4.ProtocolNumber
	if b[0]>>4 == 6 {
		proto = ipv6.ProtocolNumber
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	h.ep.InjectInbound(proto, pkt)
	pkt.DecRef()
}

func (h *Host) full(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv4.ProtocolNumber
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	fa := tcpip.FullAddress{NIC: 1, Port: ap.Port()}
	if ap.Addr().IsValid() {
		fa.Addr = tcpip.AddrFromSlice(ap.Addr().AsSlice())
	}
	return fa, proto
}

// Listen listens for TCP on port.
func (h *Host) Listen(port uint16) (net.Listener, error) {
	fa, proto := h.full(netip.AddrPortFrom(h.addr, port))
	return gonet.ListenTCP(h.Stack, fa, proto)
}

// Dial opens a TCP connection to dst.
func (h *Host) Dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	fa, proto := h.full(dst)
	return gonet.DialContextTCP(ctx, h.Stack, fa, proto)
}

// Close stops Run and the stack.
func (h *Host) Close() {
	h.cancel()
	h.Stack.Close()
	h.ep.Close()
}
