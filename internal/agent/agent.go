// Package agent is what runs on an endpoint (a terminal, a mobile, or the
// router doing tunnel mode for hosts without IPsec) and delegates its SAs
// to the security server.
//
// Scheme 3 of DESIGN.md: it reads the endpoint's SAs where its IPsec
// keeps them (sources.go: key files — Wireshark esp_sa lines as
// strongSwan's save-keys plugin writes them, or espep's native format —
// strongSwan's charon log, espep host configurations and a running espep
// host's control socket, Linux XFRM over netlink), uploads those that
// permit a proxy, with their class and the endpoint's area, and withdraws
// those that left (deleted, rekeyed away), so that gateways follow as
// they follow an SA file.
//
// Scheme 4 (pairs.go): for each espep host policy with sa = server it
// asks the server for the pair and installs it in the host.
//
// Orders (orders.go): when a gateway that numbered an SA is gone the
// server orders a rekey: a generated pair is replaced at once, an SA of
// the endpoint's own IPsec is handed to the endpoint's rekey command.
package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/ipsec"
)

// Server is the security server as the agent sees it (secserver.Client).
type Server interface {
	Upload(ctx context.Context, area string, sas []ipsec.Config) error
	Withdraw(ctx context.Context, ids []ipsec.ID) error
	Generate(ctx context.Context, w secserver.Want) (out, in ipsec.Config, err error)
	UploadIKE(ctx context.Context, area string, us []secserver.IKEUpload) error
}

// Config is what the agent delegates and where from.
type Config struct {
	Files []string // key files (esp_sa lines or native), each closed to group and others
	// HostConfigs are espep host configurations: each delegates the
	// outbound SAs of the policies that permit a proxy (proxy = read or
	// write), in that class — the endpoint's per-connection permission.
	HostConfigs []string
	// HostSockets are running espep hosts' control sockets: the SAs of
	// their files that permit a proxy are delegated (as HostConfigs,
	// but as the host runs them), and their sa = server policies get
	// their pairs.
	HostSockets []string
	// CharonLogs are strongSwan charon logs written with "chd = 4": the
	// CHILD_SAs charon holds (not those rekeyed away) are delegated.
	CharonLogs []string
	// IKECharonLogs are charon logs written with "ike = 4": the IKE SA
	// keys they show are delegated (scheme 2, ike.go).
	IKECharonLogs []string
	// XFRM delegates the SAs of the Linux kernel's SAD (read over
	// netlink) — every one: the kernel has no per-SA proxy permission,
	// so Class should cap them.
	XFRM bool
	Area string // where the endpoint is: which gateways may fetch
	// Class, when not ClassNone, is the most any SA is delegated in;
	// below it each SA's own class counts (native files and espep host's
	// policies say it; an esp_sa line with both keys is write, one with an
	// empty auth key read) — and an SA of class none is not delegated.
	Class ipsec.Class
	Log   *slog.Logger
}

// Agent keeps the server's copy of the endpoint's SAs in step with its
// key files.
type Agent struct {
	cfg Config
	srv Server
	// up is what the server holds from this agent: a fingerprint per SA
	// (its configuration and keys), so a rekey under the same SPI uploads
	// again. No key is kept.
	up map[ipsec.ID][32]byte
	// Uploads and Withdrawals count what the agent sent; Installs the
	// pairs installed in hosts.
	Uploads, Withdrawals, Installs int
	// IKEUploads counts the IKE SAs whose keys were uploaded; ikeUp is
	// a digest of each one's SK_d (no key is kept).
	IKEUploads int
	ikeUp      map[[32]byte]bool
	pairs      pairState // pairs.go
}

// New makes an agent for srv.
func New(cfg Config, srv Server) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Agent{cfg: cfg, srv: srv, up: map[ipsec.ID][32]byte{}, ikeUp: map[[32]byte]bool{}, pairs: newPairState()}
}

// Sync reads the files and brings the server up to date: it uploads the
// SAs that are new or changed and withdraws those that left. A bad entry
// in a file is reported and skipped; a file that cannot be read (or is
// open to others) withdraws nothing of what it gave before.
func (a *Agent) Sync(ctx context.Context) error {
	err := a.delegate(ctx)
	return errors.Join(err, a.delegateIKE(ctx), a.syncPairs(ctx))
}

// delegate is scheme 3: the sources' SAs that permit a proxy uploaded,
// those gone withdrawn.
func (a *Agent) delegate(ctx context.Context) error {
	want := map[ipsec.ID]ipsec.Config{}
	var errs []error
	unreadable := false
	for _, src := range a.sources() {
		cfgs, err := src(ctx)
		if err != nil {
			errs = append(errs, err)
			if cfgs == nil {
				unreadable = true
				continue
			}
		}
		for _, c := range cfgs {
			if a.cfg.Class != ipsec.ClassNone {
				c.Class = min(c.Class, a.cfg.Class) // a ceiling: never more than the SA's own permission
			}
			if c.Class == ipsec.ClassRead {
				clear(c.IntegKey)
				c.IntegKey = nil
			}
			if c.Class == ipsec.ClassNone || c.Class == ipsec.ClassRead && c.Enc.AEAD() {
				continue // permits no proxy (or none that could read it)
			}
			want[c.ID()] = c
		}
	}
	var upload []ipsec.Config
	sums := map[ipsec.ID][32]byte{}
	for id, c := range want {
		sums[id] = fingerprint(&c)
		if a.up[id] != sums[id] {
			upload = append(upload, c)
		}
	}
	var gone []ipsec.ID
	if !unreadable {
		for id := range a.up {
			if _, ok := want[id]; !ok {
				gone = append(gone, id)
			}
		}
	}
	defer func() {
		for _, c := range want {
			c.WipeKeys()
		}
	}()
	for len(upload) > 0 {
		n := min(len(upload), 64) // the server's bound per call
		if err := a.srv.Upload(ctx, a.cfg.Area, upload[:n]); err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, c := range upload[:n] {
			a.up[c.ID()] = sums[c.ID()]
			a.cfg.Log.Info("agent: uploaded", "spi", fmt.Sprintf("%#08x", c.SPI), "dst", c.Dst, "class", c.Class)
		}
		a.Uploads += n
		upload = upload[n:]
	}
	for len(gone) > 0 {
		n := min(len(gone), 64)
		if err := a.srv.Withdraw(ctx, gone[:n]); err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, id := range gone[:n] {
			delete(a.up, id)
			a.cfg.Log.Info("agent: withdrawn", "spi", fmt.Sprintf("%#08x", id.SPI), "dst", id.Dst)
		}
		a.Withdrawals += n
		gone = gone[n:]
	}
	return errors.Join(errs...)
}

// Run syncs every interval until ctx ends; a failed sync is logged and
// tried again at the next.
func (a *Agent) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := a.Sync(ctx); err != nil {
			a.cfg.Log.Warn("agent: sync", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.pairs.kick: // a rekey ordered: now, not at the next tick
		}
	}
}

// fingerprint identifies an SA's configuration and keys without keeping
// them.
func fingerprint(c *ipsec.Config) [32]byte {
	id := ipsec.KeyIDOf(c)
	return sha256.Sum256(fmt.Appendf(id[:], "%v|%v|%v|%v|%v|%d|%d|%v", c.ID(), c.Src, c.Mode, c.Enc, c.Integ, c.EncapSrcPort, c.EncapDstPort, c.Class))
}
