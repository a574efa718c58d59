package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"time"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// SAFile keeps a gateway's SAs in step with a file of SA lines (native or
// Wireshark esp_sa), as strongSwan's save-keys plugin appends them: SAs
// added later take effect, removed ones stop being used, and an SA whose
// line did not change keeps its state (replay window, numbering). A file
// that does not load leaves the SAs in force.
type SAFile struct {
	g     *Gateway
	path  string
	prev  []byte
	kept  map[ipsec.ID]keptEntry
	Loads int // successful loads that changed something
}

type keptEntry struct {
	sum [32]byte
	e   *ipsec.Entry
}

// NewSAFile binds a gateway to an SA file; call Load (or Watch).
func NewSAFile(g *Gateway, path string) *SAFile {
	return &SAFile{g: g, path: path, kept: map[ipsec.ID]keptEntry{}}
}

// Load reads the file and, if it changed, gives the gateway its SAs.
func (f *SAFile) Load() error {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("gateway: sa file: %w", err)
	}
	if bytes.Equal(b, f.prev) {
		return nil
	}
	cfgs, err := safile.Parse(bytes.NewReader(b), f.path)
	if err != nil {
		return fmt.Errorf("gateway: %w", err) // keep the SAs in force
	}
	sad := &ipsec.SAD{}
	kept := map[ipsec.ID]keptEntry{}
	for _, c := range cfgs {
		sum := fingerprint(&c)
		e := f.kept[c.ID()].e
		if e == nil || f.kept[c.ID()].sum != sum {
			if e, err = ipsec.NewEntry(c); err != nil {
				return fmt.Errorf("gateway: sa file %s: %w", f.path, err)
			}
		}
		if err := sad.Add(e); err != nil {
			return fmt.Errorf("gateway: sa file %s: %w", f.path, err)
		}
		kept[c.ID()] = keptEntry{sum, e}
	}
	f.g.SetSAD(sad)
	f.prev, f.kept = b, kept
	f.Loads++
	f.g.log.Info("gateway: SAs loaded", "file", f.path, "sas", len(cfgs))
	return nil
}

// Watch loads the file every interval and whenever reload delivers, until
// ctx ends; load errors are logged.
func (f *SAFile) Watch(ctx context.Context, every time.Duration, reload <-chan os.Signal) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-reload:
		}
		if err := f.Load(); err != nil {
			f.g.log.Warn("gateway: SA file not loaded; the SAs in force stay", "err", err)
		}
	}
}

// fingerprint identifies everything of an SA that its state depends on.
func fingerprint(c *ipsec.Config) [32]byte {
	h := sha256.New()
	var b [64]byte
	n := binary.PutUvarint(b[:], uint64(c.Enc))
	n += binary.PutUvarint(b[n:], uint64(c.Integ))
	n += binary.PutUvarint(b[n:], uint64(c.Mode))
	n += binary.PutUvarint(b[n:], uint64(c.Class))
	n += binary.PutUvarint(b[n:], uint64(c.EncapSrcPort)<<16|uint64(c.EncapDstPort))
	if c.ESN {
		b[n] = 1
	}
	n++
	h.Write(b[:n])
	h.Write(c.EncKey)
	h.Write([]byte{0})
	h.Write(c.IntegKey)
	s, _ := c.Src.MarshalBinary()
	h.Write(s)
	return [32]byte(h.Sum(nil))
}
