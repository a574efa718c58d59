package engine

import (
	"errors"
	"flag"
	"fmt"
	"sort"
	"time"

	"github.com/espep/espep/internal/keyval"
)

// Options: every engine setting has one name, spelled the same in a
// configuration file (NAME = VALUE, keyval's grammar) and on a command
// line (--NAME VALUE), and one parser (Config.Set), so the gateway's
// config file, its flags and linkem's flags cannot drift apart.

// Option is one engine setting.
type Option struct {
	Name, Usage string
	set         func(*Config, string) error
}

// Options lists the engine's settings.
var Options = []Option{
	{"mode", "TCP engine: split (early ACKs, the engine's own sender) or snoop (local resends only)", func(c *Config, v string) (err error) {
		c.Mode, err = ParseMode(v)
		return err
	}},
	{"cc", "split mode's congestion controller: bbr (default) or reno", func(c *Config, v string) error {
		if v != CCBBR && v != CCReno {
			return fmt.Errorf("%q: want %s or %s", v, CCBBR, CCReno)
		}
		c.CC = v
		return nil
	}},
	{"dupacks", "snoop: what to do with the duplicate ACKs it answered: auto (swallow without SACK, forward with it), forward or swallow", func(c *Config, v string) error {
		m := map[string]DupAckPolicy{"auto": DupAcksAuto, "forward": DupAcksForward, "swallow": DupAcksSwallow}
		p, ok := m[v]
		if !ok {
			return fmt.Errorf("%q: want auto, forward or swallow", v)
		}
		c.DupAcks = p
		return nil
	}},
	{"buffer-per-flow", "split: bytes held per direction of a flow (4MiB)", sizeOpt(func(c *Config) *int { return &c.BufferPerFlow })},
	{"buffer-total", "split: bytes held over all flows (512MiB)", sizeOpt(func(c *Config) *int { return &c.BufferTotal })},
	{"cache-per-flow", "snoop: bytes cached per flow (1MiB)", sizeOpt(func(c *Config) *int { return &c.CachePerFlow })},
	{"cache-total", "snoop: memory held by all caches (256MiB)", sizeOpt(func(c *Config) *int { return &c.CacheTotal })},
	{"max-flows", "flows tracked; beyond, relayed untouched (65536)", countOpt(func(c *Config) *int { return &c.MaxFlows })},
	{"max-plain-flows", "flows opened by unverified packets (max-flows/2)", countOpt(func(c *Config) *int { return &c.MaxPlainFlows })},
	{"max-local-rexmits", "resends of one segment before recovery is left to the sender (6)", countOpt(func(c *Config) *int { return &c.MaxLocalRexmits })},
	{"shards", "parts of the flow table, each with its own lock (gateway: 4 per core)", countOpt(func(c *Config) *int { return &c.Shards })},
	{"min-rto", "lower bound of the local retransmission timeout (20ms)", durationOpt(func(c *Config) *time.Duration { return &c.MinRTO })},
	{"max-rto", "upper bound of the local retransmission timeout (1s)", durationOpt(func(c *Config) *time.Duration { return &c.MaxRTO })},
	{"give-up", "split: reset a flow whose receiver makes no progress this long (2m)", durationOpt(func(c *Config) *time.Duration { return &c.GiveUp })},
	{"idle-timeout", "forget a flow silent this long (10m)", durationOpt(func(c *Config) *time.Duration { return &c.IdleTimeout })},
	{"handshake-timeout", "forget a flow never established, or reset, silent this long (30s)", durationOpt(func(c *Config) *time.Duration { return &c.HandshakeTimeout })},
	{"tail-probes", "split: tail loss probes, RFC 8985 (yes)", func(c *Config, v string) error {
		on, err := keyval.Bool(v)
		c.NoTailProbes = !on
		return err
	}},
}

// ErrUnknownOption: no engine setting has that name.
var ErrUnknownOption = errors.New("unknown setting")

// Set applies the setting name = value.
func (c *Config) Set(name, value string) error {
	for _, o := range Options {
		if o.Name == name {
			return o.set(c, value)
		}
	}
	return ErrUnknownOption
}

// ParseMode reads "split" or "snoop".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "split":
		return ModeSplit, nil
	case "snoop":
		return ModeSnoop, nil
	}
	return 0, fmt.Errorf("%q: want split or snoop", s)
}

func sizeOpt(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) (err error) {
		*field(c), err = keyval.Bytes(v)
		return err
	}
}

func countOpt(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) (err error) {
		*field(c), err = keyval.Count(v)
		return err
	}
}

func durationOpt(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) (err error) {
		*field(c), err = keyval.Duration(v)
		return err
	}
}

// Flags are the engine's settings as given on a command line, kept to be
// applied over a configuration file's (Apply).
type Flags struct {
	given map[string]string
}

// AddFlags defines --NAME for every option on fs (except those in skip,
// which the command defines itself).
func AddFlags(fs *flag.FlagSet, skip ...string) *Flags {
	f := &Flags{given: map[string]string{}}
	for _, o := range Options {
		if contains(skip, o.Name) {
			continue
		}
		fs.Func(o.Name, o.Usage, func(v string) error {
			if err := (&Config{}).Set(o.Name, v); err != nil {
				return err
			}
			f.given[o.Name] = v
			return nil
		})
	}
	return f
}

// Given reports whether any engine flag was given.
func (f *Flags) Given() bool { return len(f.given) > 0 }

// Apply sets the flags given on c, in a fixed order.
func (f *Flags) Apply(c *Config) error {
	names := make([]string, 0, len(f.given))
	for n := range f.given {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := c.Set(n, f.given[n]); err != nil {
			return fmt.Errorf("--%s: %w", n, err)
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
