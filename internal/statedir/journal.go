package statedir

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/espep/espep/ipsec"
)

// The sequence journal, "seq.log": records of 64 bytes, appended,
//
//	 0  magic "eSQ1"
//	 4  SPI
//	 8  protocol, address family (0, 4 or 6), 2 reserved
//	12  destination address (16 bytes, IPv4 mapped)
//	28  key ID (16)
//	44  value: the highest sequence number the SA may have used (for
//	    "eSA1": the highest of the endpoint's it may have accepted)
//	52  time written, unix seconds
//	60  CRC-32C of bytes 0…59
//
// The last valid record of an SA counts: a reservation raises it, a clean
// stop lowers it to what was really used. A record torn by a crash fails
// its CRC and is skipped; its value was never used, because nothing is
// used before its record is synced.

// A record with the magic "eSA1" is of the SA's Accepted space: the
// endpoint's numbers the gateway may have accepted (SeqKey.Space).
//
// A record with the magic "eSL1" instead holds in its value the salt the
// gateway confirmed for the SA's IV generator (IV = seq ⊕ salt; nonce.go
// in the gateway): public — every packet shows IV and seq — and kept so
// that a successor seals from the endpoint's first verified packet on,
// instead of relaying originals until a second one confirms the salt.

const (
	recLen       = 64
	recMagic     = "eSQ1"
	seenMagic    = "eSA1"
	saltMagic    = "eSL1"
	compactAbove = 16 << 20 // journal bytes that trigger a rewrite
)

func encode(b []byte, k SeqKey, r record) {
	m := recMagic
	if k.Space == Accepted {
		m = seenMagic
	}
	encodeMagic(b, m, k, r)
}

func encodeMagic(b []byte, magic string, k SeqKey, r record) {
	copy(b, magic)
	binary.BigEndian.PutUint32(b[4:], k.ID.SPI)
	b[8] = uint8(k.ID.Proto)
	b[9], b[10], b[11] = 0, 0, 0
	switch {
	case k.ID.Dst.Is4():
		b[9] = 4
	case k.ID.Dst.Is6():
		b[9] = 6
	}
	a := k.ID.Dst.As16()
	if !k.ID.Dst.IsValid() {
		a = [16]byte{}
	}
	copy(b[12:28], a[:])
	copy(b[28:44], k.KeyID[:])
	binary.BigEndian.PutUint64(b[44:], r.value)
	binary.BigEndian.PutUint64(b[52:], uint64(r.at))
	binary.BigEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
}

// decode reads a record of either kind; salt says which.
func decode(b []byte) (k SeqKey, r record, salt, ok bool) {
	m := string(b[:4])
	if m != recMagic && m != seenMagic && m != saltMagic || crc32.Checksum(b[:60], castagnoli) != binary.BigEndian.Uint32(b[60:]) {
		return SeqKey{}, record{}, false, false
	}
	salt = m == saltMagic
	if m == seenMagic {
		k.Space = Accepted
	}
	k.ID.SPI = binary.BigEndian.Uint32(b[4:])
	k.ID.Proto = ipsec.Proto(b[8])
	a := netip.AddrFrom16([16]byte(b[12:28]))
	switch b[9] {
	case 4:
		k.ID.Dst = a.Unmap()
	case 6:
		k.ID.Dst = a
	}
	copy(k.KeyID[:], b[28:44])
	return k, record{value: binary.BigEndian.Uint64(b[44:]), at: int64(binary.BigEndian.Uint64(b[52:]))}, salt, true
}

// loadJournal reads seq.log into d.recs, rewriting it without stale or
// torn records if it has grown, and opens it for appending.
func (d *Dir) loadJournal() error {
	path := filepath.Join(d.path, "seq.log")
	f, err := openPrivate(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var buf [recLen]byte
	var n, bad int
	for {
		if _, err := io.ReadFull(f, buf[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			return fmt.Errorf("state dir: read %s: %w", path, err)
		}
		n++
		switch k, r, salt, ok := decode(buf[:]); {
		case !ok:
			bad++
		case salt:
			d.salts[k] = r
		default:
			d.recs[k] = r
		}
	}
	if bad > 0 {
		d.log.Warn("state dir: skipped torn sequence records", "file", path, "records", n, "torn", bad)
	}
	if int64(n)*recLen > compactAbove/16 || bad > 0 {
		return d.rewrite()
	}
	return d.openJournal()
}

func (d *Dir) openJournal() error {
	path := filepath.Join(d.path, "seq.log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("state dir: %w", err)
	}
	d.journal, d.size = f, fi.Size()
	return nil
}

// rewrite writes the journal anew with the last record of every SA
// renewed within Retention (a new file, synced, renamed over the old one,
// the directory synced), and reopens it.
func (d *Dir) rewrite() error {
	now := time.Now()
	for k, r := range d.recs {
		if now.Sub(time.Unix(r.at, 0)) > Retention && len(d.leases[k]) == 0 {
			delete(d.recs, k)
			delete(d.salts, k)
		}
	}
	tmp := filepath.Join(d.path, "seq.log.new")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	buf := make([]byte, 0, (len(d.recs)+len(d.salts))*recLen)
	for k, r := range d.recs {
		var b [recLen]byte
		encode(b[:], k, r)
		buf = append(buf, b[:]...)
	}
	for k, r := range d.salts {
		var b [recLen]byte
		encodeMagic(b[:], saltMagic, k, r)
		buf = append(buf, b[:]...)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(d.path, "seq.log"))
	}
	if err == nil {
		err = syncDir(d.path)
	}
	if err != nil {
		return fmt.Errorf("state dir: rewrite journal: %w", err)
	}
	if d.journal != nil {
		d.journal.Close()
		d.journal = nil
	}
	return d.openJournal()
}

// writer appends the leases' wanted reservations, one fsync per batch,
// and publishes them once synced; it ends with Close. A batch of Accepted
// records alone is written without a sync of its own (see AcceptSync):
// the writer then syncs within AcceptSync, or with the next batch.
func (d *Dir) writer() {
	defer close(d.stopped)
	lazy := time.NewTimer(AcceptSync)
	lazy.Stop()
	pending := false
	for {
		force := false
		select {
		case <-d.wake:
		case <-lazy.C:
			force, pending = true, false
		case <-d.done:
			lazy.Stop()
			return
		}
		if d.flush(false, force) && !pending {
			pending = true
			lazy.Reset(AcceptSync)
		}
	}
}

// AcceptSync bounds how long a record of Accepted numbers stays written
// but not synced. Such a record is in the kernel once written, so a
// killed process loses none of it; only a machine that loses power or
// crashes may lose the last AcceptSync of them — and with them the record
// of what was accepted in that time, which a successor may then accept
// once more. Reservations (the holder's own numbers, salts) are synced
// before they are allowed, always: those guard nonces and the receiver's
// window, these only against a replay.
const AcceptSync = time.Second

// flush writes what the leases want (and, final, what they used), then
// makes it Allowed. An SA's record is the highest any of its leases
// reserved: a released lease lowers it to what was used only where no
// other lease of the SA reserved more. The batch is synced unless it holds
// only Accepted records and sync is false; flush reports whether written
// records are left unsynced.
func (d *Dir) flush(final, sync bool) (unsynced bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.werr != nil || d.journal == nil {
		return false
	}
	buf, grants, reserve := d.batch(final)
	sync = sync || final || reserve
	if len(buf) == 0 && !(sync && d.unsynced) {
		return d.unsynced
	}
	var err error
	if len(buf) > 0 {
		_, err = d.journal.Write(buf)
	}
	if err == nil && sync {
		err = d.journal.Sync()
		d.syncs++
	}
	if err != nil {
		d.werr = err
		d.log.Error("state dir: cannot reserve sequence numbers; the SAs concerned stop being sealed on at their limit", "dir", d.path, "err", err)
		close(d.flushed)
		d.flushed = make(chan struct{})
		return false
	}
	d.unsynced = !sync
	d.size += int64(len(buf))
	for _, g := range grants {
		raise(&g.l.allowed, g.v)
	}
	close(d.flushed)
	d.flushed = make(chan struct{})
	if d.size > compactAbove && !final {
		if err := d.rewrite(); err != nil {
			d.werr = err
			d.log.Error("state dir: journal rewrite failed", "dir", d.path, "err", err)
		} else {
			d.unsynced = false // the new journal was synced whole
		}
	}
	return d.unsynced
}

// grant is a number a lease wanted, to be allowed once written.
type grant struct {
	l *Lease
	v uint64
}

// batch encodes what the leases want (final: what they used) and the new
// salts, records them as the SAs' last records, and reports whether any
// of them must be synced before it counts: all but Accepted records.
// d.mu is held.
func (d *Dir) batch(final bool) (buf []byte, grants []grant, sync bool) {
	now := time.Now().Unix()
	for k, ls := range d.leases {
		var v uint64
		write := false
		for _, l := range ls {
			switch {
			case final:
				v = max(v, l.reserved())
				write = write || l.final.Load() != 0
			default:
				if w := l.want.Load(); w > l.allowed.Load() {
					grants = append(grants, grant{l, w})
					write = true
				}
				v = max(v, l.want.Load(), l.allowed.Load())
			}
		}
		if !write {
			continue
		}
		sync = sync || k.Space != Accepted
		var b [recLen]byte
		r := record{value: v, at: now}
		encode(b[:], k, r)
		buf = append(buf, b[:]...)
		d.recs[k] = r
	}
	for k, v := range d.newSalts {
		var b [recLen]byte
		r := record{value: v, at: now}
		encodeMagic(b[:], saltMagic, k, r)
		buf = append(buf, b[:]...)
		d.salts[k] = r
		sync = true
	}
	clear(d.newSalts)
	return buf, grants, sync
}

// Close writes the final records of released leases and closes the
// directory. Leases must not be used after it.
func (d *Dir) Close() error {
	if d.mem {
		return nil
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	close(d.done)
	<-d.stopped
	d.flush(true, true)
	d.mu.Lock()
	err := d.werr
	d.mu.Unlock()
	d.closeFiles()
	return err
}

func (d *Dir) closeFiles() {
	if d.journal != nil {
		d.journal.Close()
	}
	if d.ivf != nil {
		d.ivf.Close()
	}
	if d.lock != nil {
		d.lock.Close() // releases the flock
	}
}
