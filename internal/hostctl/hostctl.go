// Package hostctl is the control protocol of a running espep host, spoken
// over a Unix stream socket that only the host's own user (or root) may
// use: espep agent reads the SAs the host runs on that permit a proxy
// (scheme 3) and installs the SA pairs the security server made for its
// sa = server policies (scheme 4). It is not a remote protocol: keys cross
// it in the clear, so the socket lives in a directory closed to others and
// the host checks the peer's credentials.
//
// One request per connection: a JSON object on one line, answered by one
// JSON line. SAs travel in the native SA file format (ipsec/safile).
package hostctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// Version is the protocol's version; a request of another is refused.
const Version = 1

// MaxLine bounds a request or a reply line.
const MaxLine = 256 << 10

// Operations.
const (
	OpSAs     = "sas"     // the SAs that permit a proxy, in their class
	OpPairs   = "pairs"   // the sa = server policies and their pairs
	OpInstall = "install" // Policy's pair: SAs holds out, then in
)

// Request is one call.
type Request struct {
	Version int    `json:"v"`
	Op      string `json:"op"`
	Policy  string `json:"policy,omitempty"`
	SAs     string `json:"sas,omitempty"` // native SA file text
}

// Reply is the answer.
type Reply struct {
	Err   string `json:"err,omitempty"`
	SAs   string `json:"sas,omitempty"`
	Pairs []Pair `json:"pairs,omitempty"`
}

// Pair is an sa = server policy: what to ask the security server for and
// what is installed.
type Pair struct {
	Policy   string     `json:"policy"`
	Self     netip.Addr `json:"self"`
	Peer     netip.Addr `json:"peer"`
	Mode     string     `json:"mode"`
	Enc      string     `json:"enc"`
	Integ    string     `json:"integ,omitempty"`
	Class    string     `json:"class"`
	Out      uint32     `json:"out,omitempty"` // SPIs installed; 0: none yet
	In       uint32     `json:"in,omitempty"`
	HardSecs int64      `json:"hard_secs,omitempty"`
}

// ParseRequest reads one request line, checking its version, operation
// and SAs; a bad request is an error, never a panic.
func ParseRequest(line []byte) (Request, []ipsec.Config, error) {
	var r Request
	if len(line) > MaxLine {
		return r, nil, fmt.Errorf("hostctl: request of %d bytes", len(line))
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, nil, fmt.Errorf("hostctl: request: %w", err)
	}
	if r.Version != Version {
		return r, nil, fmt.Errorf("hostctl: protocol version %d: this host speaks %d", r.Version, Version)
	}
	switch r.Op {
	case OpSAs, OpPairs:
		return r, nil, nil
	case OpInstall:
	default:
		return r, nil, fmt.Errorf("hostctl: unknown operation %q", r.Op)
	}
	if r.Policy == "" {
		return r, nil, errors.New("hostctl: install: no policy")
	}
	sas, err := safile.ParseNative(strings.NewReader(r.SAs), "request")
	if err != nil {
		return r, nil, fmt.Errorf("hostctl: install: %w", err)
	}
	if len(sas) != 2 {
		return r, nil, fmt.Errorf("hostctl: install: %d SAs: want the pair, out then in", len(sas))
	}
	return r, sas, nil
}

// Client calls a host's control socket.
type Client struct {
	Path    string
	Timeout time.Duration // per call; 0: 5 s
}

// call makes one request.
func (c *Client) call(ctx context.Context, req Request) (Reply, error) {
	req.Version = Version
	d := c.Timeout
	if d == 0 {
		d = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return Reply{}, fmt.Errorf("hostctl: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Reply{}, fmt.Errorf("hostctl: %w", err)
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return Reply{}, fmt.Errorf("hostctl: %s: %w", req.Op, err)
	}
	rd := bufio.NewReaderSize(conn, 64<<10)
	line, err := ReadLine(rd)
	if err != nil {
		return Reply{}, fmt.Errorf("hostctl: %s: %w", req.Op, err)
	}
	var rep Reply
	if err := json.Unmarshal(line, &rep); err != nil {
		return Reply{}, fmt.Errorf("hostctl: %s: reply: %w", req.Op, err)
	}
	if rep.Err != "" {
		return rep, fmt.Errorf("hostctl: %s: %s", req.Op, rep.Err)
	}
	return rep, nil
}

// ReadLine reads one line of at most MaxLine bytes.
func ReadLine(rd *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		part, more, err := rd.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, part...)
		if len(line) > MaxLine {
			return nil, fmt.Errorf("a line over %d bytes", MaxLine)
		}
		if !more {
			return line, nil
		}
	}
}

// SAs returns the SAs the host runs on that its policies permit a proxy,
// each in that class.
func (c *Client) SAs(ctx context.Context) ([]ipsec.Config, error) {
	rep, err := c.call(ctx, Request{Op: OpSAs})
	if err != nil {
		return nil, err
	}
	sas, err := safile.ParseNative(strings.NewReader(rep.SAs), c.Path)
	if err != nil {
		return nil, fmt.Errorf("hostctl: sas: %w", err)
	}
	return sas, nil
}

// Pairs returns the host's sa = server policies.
func (c *Client) Pairs(ctx context.Context) ([]Pair, error) {
	rep, err := c.call(ctx, Request{Op: OpPairs})
	return rep.Pairs, err
}

// Install gives policy its pair.
func (c *Client) Install(ctx context.Context, policy string, out, in ipsec.Config) error {
	var b strings.Builder
	if err := safile.WriteNative(&b, []ipsec.Config{out, in}); err != nil {
		return fmt.Errorf("hostctl: install: %w", err)
	}
	_, err := c.call(ctx, Request{Op: OpInstall, Policy: policy, SAs: b.String()})
	return err
}
