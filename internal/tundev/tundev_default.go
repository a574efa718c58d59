//go:build !linux

package tundev

import "golang.zx2c4.com/wireguard/tun"

// Create makes the TUN device name with the MTU mtu (wireguard-go's own
// device, its monitors included: only Linux's are known to wake the
// process for nothing).
func Create(name string, mtu int) (tun.Device, error) { return tun.CreateTUN(name, mtu) }
