package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec/safile"
)

// FileConfig is an `espep gateway --config` file: everything the command
// line does not say. One setting per line; command-line flags override
// the file.
//
//	espep-gateway 1
//	wire            = eth0          # interface (AF_PACKET) or tun:NAME
//	radio           = eth1
//	sa-file         = gateway.sa    # native or esp_sa lines; relative to this file; may be given more than once
//	state-dir       = state         # IV blocks and sequence numbers (0700); without it no AES-GCM,
//	                                # ChaCha20-Poly1305 or AES-CTR SA is sealed on
//	iv-partition    = 0/1           # this gateway's share K/N of the IV block space
//	mode            = split         # split (default) | snoop
//	cc              = bbr           # split mode's congestion controller: bbr | reno
//	plain           = no            # accelerate TCP that is not IPsec-protected too
//	metrics         = 127.0.0.1:9465
//	seq-jump        = 65536         # how far above an endpoint's numbers the gateway starts
//	buffer-per-flow = 4MiB          # split: bytes held per direction of a flow
//	buffer-total    = 512MiB        # split: over all flows
//	cache-per-flow  = 1MiB          # snoop: bytes cached per flow
//	max-flows       = 65536
//	min-rto         = 20ms          # local retransmission timeout bounds
//	max-rto         = 1s
//	give-up         = 2m            # split: reset a flow that makes no progress this long
//	idle-timeout    = 10m
//	handshake-timeout = 30s         # flows never established, or reset, forgotten after this
//	max-plain-flows = 32768         # flows opened by unverified packets (default max-flows/2)
//	cache-total     = 256MiB        # snoop: memory held by all caches
//	drain-idle      = 30s           # an SA the gateway numbers, gone from the SA files, kept this long after its last packet
//	max-local-rexmits = 6
//	dupacks         = auto          # snoop: auto | forward | swallow
type FileConfig struct {
	Wire, Radio string
	SAFiles     []string
	StateDir    string
	IVPartition statedir.Partition
	Metrics     string
	// Gateway holds the engine and gateway settings (zero: defaults).
	Gateway Config
}

// GatewayMagic starts a gateway configuration file.
const GatewayMagic = "espep-gateway"

// LoadFileConfig reads a configuration file; a relative sa-file is taken
// relative to the file's directory.
func LoadFileConfig(path string) (*FileConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	defer f.Close()
	c, err := ParseFileConfig(f, path)
	if err != nil {
		return nil, err
	}
	for i, p := range c.SAFiles {
		if !filepath.IsAbs(p) {
			c.SAFiles[i] = filepath.Join(filepath.Dir(path), p)
		}
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		c.StateDir = filepath.Join(filepath.Dir(path), c.StateDir)
	}
	return c, nil
}

// maxConfigLine bounds a line, so that a hostile file cannot make the
// parser buffer much.
const maxConfigLine = 4096

// ParseFileConfig reads configuration text; name is used in errors.
func ParseFileConfig(r io.Reader, name string) (*FileConfig, error) {
	c := &FileConfig{}
	e := &c.Gateway.Engine
	e.Mode = engine.ModeSplit // the gateway's default, as on the command line
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 512), maxConfigLine)
	n, head := 0, false
	seen := map[string]bool{}
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if !head {
			if line != GatewayMagic+" 1" {
				return nil, &safile.Error{File: name, Line: n, Err: fmt.Errorf("want %q first", GatewayMagic+" 1")}
			}
			head = true
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if !ok || key == "" || val == "" {
			return nil, &safile.Error{File: name, Line: n, Err: errors.New("want key = value")}
		}
		if seen[key] && key != "sa-file" {
			return nil, &safile.Error{File: name, Line: n, Field: key, Err: errors.New("given twice")}
		}
		seen[key] = true
		if err := c.set(e, key, val); err != nil {
			return nil, &safile.Error{File: name, Line: n, Field: key, Err: err}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, &safile.Error{File: name, Line: n + 1, Err: err}
	}
	if !head {
		return nil, &safile.Error{File: name, Line: n, Err: fmt.Errorf("empty: want %q first", GatewayMagic+" 1")}
	}
	// The engine judges its settings together (buffer bounds, RTO range).
	eng, err := engine.New(*e, nil)
	if err != nil {
		return nil, &safile.Error{File: name, Line: n, Err: err}
	}
	eng.Close()
	return c, nil
}

func (c *FileConfig) set(e *engine.Config, key, val string) error {
	var err error
	switch key {
	case "wire":
		c.Wire = val
	case "radio":
		c.Radio = val
	case "sa-file":
		c.SAFiles = append(c.SAFiles, val)
	case "state-dir":
		c.StateDir = val
	case "iv-partition":
		c.IVPartition, err = statedir.ParsePartition(val)
	case "drain-idle":
		c.Gateway.DrainIdle, err = parseDuration(val)
	case "handshake-timeout":
		e.HandshakeTimeout, err = parseDuration(val)
	case "max-plain-flows":
		e.MaxPlainFlows, err = parseCount(val)
	case "cache-total":
		e.CacheTotal, err = ParseBytes(val)
	case "metrics":
		c.Metrics = val
	case "mode":
		e.Mode, err = ParseMode(val)
	case "cc":
		if val != engine.CCBBR && val != engine.CCReno {
			return fmt.Errorf("%q: want %s or %s", val, engine.CCBBR, engine.CCReno)
		}
		e.CC = val
	case "plain":
		c.Gateway.Plain, err = parseBool(val)
	case "seq-jump":
		c.Gateway.SeqJump, err = strconv.ParseInt(val, 10, 64)
		if err == nil && (c.Gateway.SeqJump < 0 || c.Gateway.SeqJump > 1<<32) {
			err = errors.New("want 0 to 2^32")
		}
		if err == nil && c.Gateway.SeqJump == 0 {
			c.Gateway.SeqJump = -1 // Config's "none"
		}
	case "buffer-per-flow":
		e.BufferPerFlow, err = ParseBytes(val)
	case "buffer-total":
		e.BufferTotal, err = ParseBytes(val)
	case "cache-per-flow":
		e.CachePerFlow, err = ParseBytes(val)
	case "max-flows":
		e.MaxFlows, err = parseCount(val)
	case "max-local-rexmits":
		e.MaxLocalRexmits, err = parseCount(val)
	case "min-rto":
		e.MinRTO, err = parseDuration(val)
	case "max-rto":
		e.MaxRTO, err = parseDuration(val)
	case "give-up":
		e.GiveUp, err = parseDuration(val)
	case "idle-timeout":
		e.IdleTimeout, err = parseDuration(val)
	case "dupacks":
		switch val {
		case "auto":
			e.DupAcks = engine.DupAcksAuto
		case "forward":
			e.DupAcks = engine.DupAcksForward
		case "swallow":
			e.DupAcks = engine.DupAcksSwallow
		default:
			err = fmt.Errorf("%q: want auto, forward or swallow", val)
		}
	default:
		return errors.New("unknown setting")
	}
	return err
}

// ParseMode reads "split" or "snoop".
func ParseMode(s string) (engine.Mode, error) {
	switch s {
	case "split":
		return engine.ModeSplit, nil
	case "snoop":
		return engine.ModeSnoop, nil
	}
	return 0, fmt.Errorf("%q: want split or snoop", s)
}

func parseBool(s string) (bool, error) {
	switch s {
	case "yes", "true", "on":
		return true, nil
	case "no", "false", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q: want yes or no", s)
}

func parseCount(s string) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 || v > 1<<30 {
		return 0, fmt.Errorf("%q: want a whole number from 1 to 2^30", s)
	}
	return v, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > 24*time.Hour {
		return 0, fmt.Errorf("%q: want a duration from 1ns to 24h", s)
	}
	return d, nil
}

// ParseBytes reads a size: a whole number with an optional unit, k/K/KB
// (1000), KiB (1024), M/MB, MiB, G/GB, GiB; at most 64 GiB.
func ParseBytes(s string) (int, error) {
	num := strings.TrimRight(s, "KMGBikg")
	unit := s[len(num):]
	mult, ok := map[string]int64{"": 1, "k": 1e3, "K": 1e3, "KB": 1e3, "KiB": 1 << 10, "M": 1e6, "MB": 1e6, "MiB": 1 << 20,
		"G": 1e9, "GB": 1e9, "GiB": 1 << 30}[unit]
	v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if !ok || err != nil || v <= 0 || v > (64<<30)/mult {
		return 0, fmt.Errorf("%q: want a size such as 4MiB, from 1 byte to 64GiB", s)
	}
	return int(v * mult), nil
}
