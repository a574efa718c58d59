package gateway

import (
	"errors"
	"fmt"
	"github.com/espep/espep/internal/keyval"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
)

// FileConfig is an `espep gateway --config` file: everything the command
// line does not say. One setting per line; command-line flags override
// the file.
//
//	espep-gateway 1
//	wire            = eth0          # interface (AF_PACKET) or tun:NAME
//	radio           = eth1
//	routes          = no            # TUN mode: install the policy rules (and remove them on exit)
//	wire-iface      = eth0          #   what arrives here goes into the wire device (table route-table)
//	radio-iface     = eth1          #   what arrives here goes into the radio device (table route-table+1)
//	route-table     = 100
//	sa-file         = gateway.sa    # native or esp_sa lines; relative to this file; may be given more than once
//	ike-key-file    = ike.keys      # IKE SA keys (espep-ike 1): follow IKE, derive CHILD_SAs (scheme 2); repeatable
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
//	handoff-listen  = 10.99.0.1:7700  # serve handoffs to neighbour gateways (mutual TLS, the secserver-cert certificate)
//	handoff-peer    = gw-2@10.99.0.2:7700  # a neighbour, asked for mobiles met mid-stream; may be given more than once
//	pms             = 10.0.0.9:7443 # the proxy management service: neighbours from base-station locations (beside handoff-peer)
//	station         = cell-1@48.8566,2.3522  # a base station of this gateway: its area, latitude, longitude; may be given more than once
//	discover        = 239.77.0.1:7777  # TTL-limited multicast discovery of neighbours (answering, and probing every 30 s)
//	discover-ttl    = 2             # the probes' TTL: each multicast router takes one
//	discover-iface  = eth1          # the interface to join and probe on (default: as routed)
//	max-local-rexmits = 6
//	dupacks         = auto          # snoop: auto | forward | swallow
//	shards          = 8             # parts of the flow table (default 4 per core)
//	tail-probes     = yes           # split: RFC 8985 tail loss probes
//
// The engine's settings (mode … tail-probes) are engine.Options, spelled
// the same as the flags of espep gateway and espep linkem. The grammar,
// limits and error form are keyval's.
type FileConfig struct {
	Wire, Radio string
	// TUN mode: with Routes, the gateway installs (and on exit removes)
	// the policy rules that route what arrives on WireIface and RadioIface
	// into its devices (tables RouteTable and RouteTable+1).
	Routes                bool
	WireIface, RadioIface string
	RouteTable            int
	SAFiles               []string
	// IKEKeyFiles hold IKE SA keys delegated to the gateway (ikefollow's
	// key file): with any, it follows IKE and derives CHILD_SAs (ike.go).
	IKEKeyFiles []string
	StateDir    string
	// NoJournal (journal = no): split keeps no journal of the bytes it
	// acknowledged early in the state directory — faster, but a kill or
	// crash of the process loses them and stalls their connections. A
	// journal the process before left is still read.
	NoJournal   bool
	IVPartition statedir.Partition
	Metrics     string
	// SecServer is the security server the gateway fetches SAs from
	// (fetch.go), with the files of its mutual TLS; Addr empty: none.
	SecServer SecServerConfig
	// HandoffListen is where the gateway serves handoffs to its
	// neighbours, HandoffPeers its neighbours (NAME@HOST:PORT); both use
	// SecServer's certificate files.
	HandoffListen string
	HandoffPeers  []string
	// PMS is the proxy management service (host:port, or a list) the
	// gateway joins with its base stations (Stations: AREA@LAT,LON) to be
	// told its neighbours; empty: none.
	PMS      string
	Stations []string
	// Discover is the multicast group (ADDR:PORT) of neighbour discovery
	// by TTL-limited probes, DiscoverTTL their TTL (0: 2), DiscoverIface
	// the interface; empty: none.
	Discover      string
	DiscoverTTL   int
	DiscoverIface string
	// Gateway holds the engine and gateway settings (zero: defaults).
	Gateway Config
}

// SecServerConfig is where the security server is and how the gateway
// proves who it is to it.
type SecServerConfig struct {
	Addr          string // host:port
	Cert, Key, CA string // the gateway's certificate and key, the CA's certificate (espep pki)
	CRL           string // the CA's revocation list, re-read while running; empty: none
	Read          bool   // ask for read grants only
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
	for _, files := range [][]string{c.SAFiles, c.IKEKeyFiles} {
		for i, p := range files {
			if !filepath.IsAbs(p) {
				files[i] = filepath.Join(filepath.Dir(path), p)
			}
		}
	}
	for _, p := range []*string{&c.StateDir, &c.SecServer.Cert, &c.SecServer.Key, &c.SecServer.CA, &c.SecServer.CRL} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	return c, nil
}

// ParseFileConfig reads configuration text; name is used in errors.
func ParseFileConfig(r io.Reader, name string) (*FileConfig, error) {
	c := &FileConfig{}
	e := &c.Gateway.Engine
	e.Mode = engine.ModeSplit // the gateway's default, as on the command line
	rd := keyval.NewReader(r, name, GatewayMagic, 1, "sa-file", "ike-key-file", "handoff-peer", "station")
	var last keyval.Line
	for {
		l, err := rd.Next()
		switch {
		case err == io.EOF:
			// The engine judges its settings together (buffer bounds, RTO range).
			eng, err := engine.New(*e, nil)
			if err != nil {
				return nil, rd.Wrap(last, "", err)
			}
			eng.Close()
			return c, nil
		case err != nil:
			return nil, err
		case l.Header:
			return nil, rd.Errorf(l, "", "[%s]: a gateway configuration has no sections", l.Section)
		}
		if err := c.set(e, l.Key, l.Value); err != nil {
			return nil, rd.Wrap(l, l.Key, err)
		}
		last = l
	}
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
	case "ike-key-file":
		c.IKEKeyFiles = append(c.IKEKeyFiles, val)
	case "routes":
		c.Routes, err = keyval.Bool(val)
	case "wire-iface":
		c.WireIface = val
	case "radio-iface":
		c.RadioIface = val
	case "route-table":
		c.RouteTable, err = keyval.Count(val)
		if err == nil && c.RouteTable > 1<<31-2 {
			err = errors.New("want a table number below 2^31-1")
		}
	case "state-dir":
		c.StateDir = val
	case "journal":
		var on bool
		on, err = keyval.Bool(val)
		c.NoJournal = !on
	case "iv-partition":
		c.IVPartition, err = statedir.ParsePartition(val)
	case "drain-idle":
		c.Gateway.DrainIdle, err = keyval.Duration(val)
	case "metrics":
		c.Metrics = val
	case "secserver":
		c.SecServer.Addr = val
	case "secserver-cert":
		c.SecServer.Cert = val
	case "secserver-key":
		c.SecServer.Key = val
	case "secserver-ca":
		c.SecServer.CA = val
	case "secserver-crl":
		c.SecServer.CRL = val
	case "handoff-listen":
		c.HandoffListen = val
	case "handoff-peer":
		c.HandoffPeers = append(c.HandoffPeers, val)
	case "pms":
		c.PMS = val
	case "station":
		c.Stations = append(c.Stations, val)
	case "discover":
		c.Discover = val
	case "discover-ttl":
		c.DiscoverTTL, err = strconv.Atoi(val)
		if err == nil && (c.DiscoverTTL < 1 || c.DiscoverTTL > 255) {
			err = fmt.Errorf("want 1 to 255")
		}
	case "discover-iface":
		c.DiscoverIface = val
	case "secserver-read":
		c.SecServer.Read, err = keyval.Bool(val)
	case "plain":
		c.Gateway.Plain, err = keyval.Bool(val)
	case "seq-jump":
		c.Gateway.SeqJump, err = strconv.ParseInt(val, 10, 64)
		if err == nil && (c.Gateway.SeqJump < 0 || c.Gateway.SeqJump > 1<<32) {
			err = errors.New("want 0 to 2^32")
		}
		if err == nil && c.Gateway.SeqJump == 0 {
			c.Gateway.SeqJump = -1 // Config's "none"
		}
	default:
		// The engine's settings, spelled as its flags are (engine.Options).
		return e.Set(key, val)
	}
	return err
}
