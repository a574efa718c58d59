// Package tundev creates the TUN devices of espep's gateway and host:
// wireguard-go's devices (batched reads and writes, GSO/GRO offloads)
// without wireguard-go's status monitors.
//
// Why: tun.CreateTUN starts, per device, a goroutine that writes an
// empty packet into the device every second to learn whether it is up
// (wireguard-go's "tun status hack", for devices moved across network
// namespaces) and one that listens to netlink for link events. espep does
// not read those events; the writes woke an idle gateway twice a second
// (its two devices), and each wake-up is what a daemon at a radio's rate
// spends most on.
package tundev
