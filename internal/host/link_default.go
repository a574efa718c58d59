//go:build !linux

package host

import (
	"errors"
	"log/slog"
)

// openLink fails: the host's link — a TUN device, raw sockets, policy
// routing — is Linux's. Everything else of espep host is portable.
func openLink(*Config, *slog.Logger) (link, error) {
	return nil, errors.New("espep host needs Linux (TUN, raw sockets, policy routing)")
}
