package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// SAFiles keeps a gateway's SAs in step with one or more SA files (each
// native or Wireshark esp_sa lines), as strongSwan's save-keys plugin
// appends them: SAs added later take effect, removed ones stop being used
// (and are wiped, unless they drain: sad.go), and an SA whose entry did
// not change keeps its state. A bad entry is reported (file:line: field)
// and skipped, every good one loads — so a key file that only grows is
// not stopped by one bad line. A file that cannot be read, or that group
// or others may read or write, is refused whole and its SAs in force stay.
// Nothing of a file's bytes is kept: a change is seen by its size, time
// and inode, then by a hash; the bytes read and the parsed keys are
// cleared once the SAs are built.
type SAFiles struct {
	g     *Gateway
	files []*saFile
	kept  map[ipsec.ID]keptEntry
	Loads int // loads that changed the gateway's SAs
}

type saFile struct {
	path    string
	sig     fileSig
	sum     [32]byte
	entries []keptEntry // what the file gave at its last good read
	errs    []error     // what was wrong with it then
	loaded  bool
}

// fileSig is what a stat shows of a file's content changing.
type fileSig struct {
	size, mtime int64
	ino         uint64
}

type keptEntry struct {
	sum [32]byte // fingerprint: the SA's configuration and key ID
	e   *ipsec.Entry
}

// NewSAFiles binds a gateway to SA files; call Load (or Watch).
func NewSAFiles(g *Gateway, paths ...string) *SAFiles {
	f := &SAFiles{g: g, kept: map[ipsec.ID]keptEntry{}}
	for _, p := range paths {
		f.files = append(f.files, &saFile{path: p})
	}
	return f
}

// maxSAFile bounds what is read of an SA file.
const maxSAFile = 64 << 20

// Load reads the files that changed and, if their SAs changed, gives the
// gateway the SAs of all of them. It returns every problem found (bad
// entries, files refused, an SA in two files), joined; the SAs of what
// was good are in force whatever it returns.
func (f *SAFiles) Load() error {
	changed := false
	var errs []error
	for _, sf := range f.files {
		c, err := f.read(sf)
		changed = changed || c
		if err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, sf.errs...)
	}
	if !changed {
		return errors.Join(errs...)
	}
	sad := &ipsec.SAD{}
	kept := map[ipsec.ID]keptEntry{}
	n := 0
	for _, sf := range f.files {
		for _, k := range sf.entries {
			if err := sad.Add(k.e); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w (the first file that gives it wins)", sf.path, err))
				continue
			}
			kept[k.e.Config.ID()] = k
			n++
		}
	}
	if err := f.g.SetSource("sa-files", sad.Entries()); err != nil {
		errs = append(errs, err)
	}
	f.kept = kept
	f.Loads++
	f.g.log.Info("gateway: SAs loaded", "files", len(f.files), "sas", n)
	return errors.Join(errs...)
}

// read brings one file's entries up to date and reports whether they
// changed.
func (f *SAFiles) read(sf *saFile) (bool, error) {
	fi, err := os.Stat(sf.path)
	if err != nil {
		return false, fmt.Errorf("gateway: sa file: %w", err)
	}
	sig := fileSig{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		sig.ino = st.Ino
	}
	// Timestamps are coarse (a kernel tick): a file changed within the
	// last second is read again whatever its signature says.
	if sf.loaded && sig == sf.sig && time.Since(fi.ModTime()) > time.Second {
		return false, nil
	}
	if err := safile.CheckPrivate(sf.path); err != nil {
		return false, fmt.Errorf("gateway: %w; not loaded", err)
	}
	fd, err := os.Open(sf.path)
	if err != nil {
		return false, fmt.Errorf("gateway: sa file: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(fd, maxSAFile+1))
	fd.Close()
	defer clear(b)
	if err != nil {
		return false, fmt.Errorf("gateway: sa file %s: %w", sf.path, err)
	}
	if len(b) > maxSAFile {
		return false, fmt.Errorf("gateway: sa file %s is larger than %d bytes; not loaded", sf.path, maxSAFile)
	}
	sum := sha256.Sum256(b)
	sf.sig = sig
	if sf.loaded && sum == sf.sum {
		return false, nil
	}
	cfgs, bad, fatal := safile.ParseEntries(bytes.NewReader(b), sf.path)
	defer func() {
		for i := range cfgs {
			cfgs[i].WipeKeys()
		}
	}()
	if fatal != nil && len(cfgs) == 0 {
		sf.sig = fileSig{} // read it again next time
		return false, fmt.Errorf("gateway: %w (the file's SAs in force stay)", fatal)
	}
	var entries []keptEntry
	for _, c := range cfgs {
		fp := fingerprint(&c)
		k := f.kept[c.ID()]
		if k.e == nil || k.sum != fp {
			e, err := ipsec.NewEntry(c)
			if err != nil {
				bad = append(bad, fmt.Errorf("%s: %w", sf.path, err))
				continue
			}
			k = keptEntry{fp, e}
		}
		entries = append(entries, k)
	}
	if fatal != nil {
		bad = append(bad, fatal)
	}
	sf.sum, sf.entries, sf.errs, sf.loaded = sum, entries, bad, true
	return true, nil
}

// Watch loads the files whenever changed (filewatch.Watch) or reload
// delivers, until ctx ends; what is wrong is logged when it changes.
func (f *SAFiles) Watch(ctx context.Context, changed <-chan struct{}, reload <-chan os.Signal) {
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-reload:
		}
		err := f.Load()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last && err != nil {
			f.g.log.Warn("gateway: SA files: entries not loaded; the others are in force", "err", err)
		}
		last = msg
	}
}

// fingerprint identifies everything of an SA that its state depends on:
// its configuration and its keys (by their key ID, never the keys).
func fingerprint(c *ipsec.Config) [32]byte {
	h := sha256.New()
	var b [64]byte
	n := binary.PutUvarint(b[:], uint64(c.Enc))
	n += binary.PutUvarint(b[n:], uint64(c.Integ))
	n += binary.PutUvarint(b[n:], uint64(c.Mode))
	n += binary.PutUvarint(b[n:], uint64(c.Class))
	n += binary.PutUvarint(b[n:], uint64(c.EncapSrcPort)<<16|uint64(c.EncapDstPort))
	n += binary.PutUvarint(b[n:], uint64(c.ReplayWindow)+1)
	if c.ESN {
		b[n] = 1
	}
	n++
	h.Write(b[:n])
	id := ipsec.KeyIDOf(c)
	h.Write(id[:])
	s, _ := c.Src.MarshalBinary()
	h.Write(s)
	fmt.Fprintf(h, "%v|%v|%v", c.TS, c.Lifetime, c.PMTU)
	return [32]byte(h.Sum(nil))
}
