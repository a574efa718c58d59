package host

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/espep/espep/internal/hostctl"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// The control socket (internal/hostctl): espep agent's way in. Keys cross
// it, so the socket's directory must be closed to group and others, the
// socket itself is made 0600, and on Linux the peer must run as the
// host's user or root (SO_PEERCRED, control_linux.go). At most
// maxControlConns calls run at once (more wait in the kernel's backlog);
// each has controlTimeout to send its request and take the reply.

const (
	maxControlConns = 4
	controlTimeout  = 5 * time.Second
)

// listenControl opens the control socket at path, replacing a stale
// socket left by a host that died, never another kind of file.
func listenControl(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("host: control socket: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("host: control socket: directory %s has mode %#o: it must be closed to group and others (chmod go-rwx): keys cross the socket", dir, fi.Mode().Perm())
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("host: control socket: %s exists and is not a socket", path)
		}
		os.Remove(path) // a host that was killed left it
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("host: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("host: control socket: %w", err)
	}
	return ln, nil
}

// serveControl answers calls on ln until ctx ends, then closes ln (which
// removes the socket file) and waits for the calls under way.
func (h *Host) serveControl(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	sem := make(chan struct{}, maxControlConns)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			ln.Close()
			return fmt.Errorf("host: control socket: %w", err)
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			conn.Close()
			return nil
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			defer conn.Close()
			h.controlCall(conn)
		}()
	}
}

// controlCall answers one call.
func (h *Host) controlCall(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(controlTimeout))
	var rep hostctl.Reply
	if err := peerAllowed(conn); err != nil {
		h.log.Warn("host: control socket: refused", "err", err)
		rep.Err = err.Error()
	} else if line, err := hostctl.ReadLine(bufio.NewReader(conn)); err != nil {
		rep.Err = fmt.Sprintf("request: %v", err)
	} else {
		rep = h.control(line)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return
	}
	conn.Write(append(b, '\n'))
	clear(b)
}

// control does one request.
func (h *Host) control(line []byte) hostctl.Reply {
	req, sas, err := hostctl.ParseRequest(line)
	if err != nil {
		return hostctl.Reply{Err: err.Error()}
	}
	switch req.Op {
	case hostctl.OpSAs:
		cfgs := h.Delegable()
		defer func() {
			for i := range cfgs {
				cfgs[i].WipeKeys()
			}
		}()
		var b strings.Builder
		if err := safile.WriteNative(&b, cfgs); err != nil {
			return hostctl.Reply{Err: err.Error()}
		}
		return hostctl.Reply{SAs: b.String()}
	case hostctl.OpPairs:
		var rep hostctl.Reply
		for _, p := range h.Pairs() {
			x := hostctl.Pair{Policy: p.Policy, Self: p.Self, Peer: p.Peer, Mode: p.Mode.String(), Enc: p.Enc.String(),
				Class: p.Class.String(), Out: p.Out.SPI, In: p.In.SPI, HardSecs: int64(p.Expires / time.Second)}
			if p.Integ != ipsec.IntegNone {
				x.Integ = p.Integ.String()
			}
			rep.Pairs = append(rep.Pairs, x)
		}
		return rep
	case hostctl.OpInstall:
		defer func() {
			for i := range sas {
				sas[i].WipeKeys()
			}
		}()
		if err := h.Install(req.Policy, sas[0], sas[1]); err != nil {
			return hostctl.Reply{Err: err.Error()}
		}
		return hostctl.Reply{}
	}
	return hostctl.Reply{Err: "unknown operation"} // ParseRequest admits none other
}
