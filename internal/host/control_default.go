//go:build !linux

package host

import "net"

// peerAllowed relies on the socket's mode (0600) and its directory's
// where the platform has no SO_PEERCRED.
func peerAllowed(net.Conn) error { return nil }
