package agent

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/host"
	"github.com/espep/espep/internal/hostctl"
	"github.com/espep/espep/internal/xfrm"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// A source reads the SAs where the endpoint's IPsec keeps them: its good
// entries, and its bad ones joined as an error. Nil entries with an error:
// the source could not be read at all (and what it gave before is not
// withdrawn on that account).
type source func(ctx context.Context) ([]ipsec.Config, error)

// sources are the configured sources.
func (a *Agent) sources() []source {
	var out []source
	for _, path := range a.cfg.Files {
		out = append(out, func(context.Context) ([]ipsec.Config, error) { return readKeys(path) })
	}
	for _, path := range a.cfg.HostConfigs {
		out = append(out, func(context.Context) ([]ipsec.Config, error) {
			hc, err := host.LoadConfig(path)
			if err != nil {
				return nil, err
			}
			return hc.Delegable(), nil
		})
	}
	for _, path := range a.cfg.HostSockets {
		c := &hostctl.Client{Path: path}
		out = append(out, c.SAs)
	}
	for _, path := range a.cfg.CharonLogs {
		out = append(out, func(context.Context) ([]ipsec.Config, error) { return readCharonLog(path) })
	}
	if a.cfg.XFRM {
		out = append(out, readXFRM)
	}
	return out
}

// readKeys reads one key file: its good entries, and its bad ones joined
// as an error. Nil entries and an error: the file could not be used.
func readKeys(path string) ([]ipsec.Config, error) {
	return readPrivate(path, func(f *os.File) ([]ipsec.Config, error) {
		cfgs, bad, fatal := safile.ParseEntries(f, path)
		if fatal != nil {
			return nil, fatal
		}
		if cfgs == nil {
			cfgs = []ipsec.Config{} // read, if every entry was bad
		}
		return cfgs, errors.Join(bad...)
	})
}

// readCharonLog reads the SAs charon holds from its log.
func readCharonLog(path string) ([]ipsec.Config, error) {
	return readPrivate(path, func(f *os.File) ([]ipsec.Config, error) {
		cfgs, err := charonlog.ParseLive(f, path)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		return cfgs, nil
	})
}

// readPrivate parses a file that holds keys, and so must be closed to
// group and others; an empty result is not nil (nil: unreadable).
func readPrivate[T any](path string, parse func(*os.File) ([]T, error)) ([]T, error) {
	if err := safile.CheckPrivate(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	defer f.Close()
	got, err := parse(f)
	if got == nil && err == nil {
		got = []T{}
	}
	return got, err
}

// readXFRM reads the kernel's SAD (Linux XFRM over netlink).
func readXFRM(context.Context) ([]ipsec.Config, error) {
	sas, bad, err := xfrm.Dump()
	if err != nil {
		for i := range sas {
			sas[i].WipeKeys()
		}
		return nil, fmt.Errorf("agent: %w", err)
	}
	if sas == nil {
		sas = []ipsec.Config{}
	}
	return sas, errors.Join(bad...)
}
