// Package statedir keeps what a gateway's safety depends on across
// restarts and crashes: the IV counter space and the sequence numbers it
// has reserved on the SAs it seals on. It is not a cache: losing it could
// make a gateway reuse an AEAD nonce, the one failure that breaks the
// endpoints' confidentiality and integrity for good (DESIGN.md rule 1).
//
// # The argument
//
// Everything here is reserved before it is used, and a reservation is on
// disk — written and fsynced — before the call that makes it returns. A
// process that dies at any moment (SIGKILL, power loss) has used only
// values its reservations cover, so its successor, which starts above
// every reservation it finds, never uses a value twice.
//
// IV space. A gateway seals AES-GCM, ChaCha20-Poly1305 and AES-CTR packets
// with IV counters c = 2^63 | b·2^32 | n (the gateway package XORs the
// endpoint's salt in): b is a block of 2^32 counters that IVBlock hands
// out, n counts within it. Blocks come from one counter for the whole
// directory, read, incremented and fsynced under an exclusive lock, so no
// two processes that share the directory — one after the other, or two at
// once — ever hold the same block, and no block is handed out twice
// whatever the SA: a key the gateway forgot and meets again gets fresh
// counters all the same. Gateways that do not share a directory are kept
// apart by a partition (K of N: blocks ≡ K mod N), which the operator —
// later the security server — assigns.
//
// Sequence numbers. A receiver's replay window refuses a number it has
// seen, so a restarted gateway must number above its predecessor. Each SA
// (its SAD ID and key ID) has a lease: the gateway may use numbers up to
// the lease's durable limit and asks for more ahead of need; the records
// go to an append-only journal in batches, one fsync per batch. A
// successor reads the last record of each SA and numbers above it. Here
// losing a record costs availability only — the receiver refuses packets
// until the numbers pass the old ones — never a nonce, so old records are
// pruned after Retention.
//
// Accepted numbers. A gateway that verifies an endpoint's packets keeps a
// replay window; a successor that started with an empty one would accept
// once more every packet its predecessor had accepted, and act on it (a
// replayed packet re-sealed with a fresh number is new to the receiver).
// So the endpoint's numbers are recorded too, in the SA's Accepted space:
// the gateway records (Want) a number it accepted every so often, and
// exactly at a clean stop (Release); its successor counts everything up to
// the lease's Floor as seen. Such a record lags what was accepted, never
// leads it: after a crash the packets accepted since the last record may
// open once more — the gateway states how many — where a record ahead
// would have the successor refuse the endpoint's next packets. These
// records are written at once but synced within AcceptSync (or with the
// next reservation), not each on its own: a killed process loses none of
// them, a machine that loses power the last second's. Its records are
// kept as long as the others (Retention), longer than any SA lives.
//
// The directory must belong to the user and be closed to group and
// others (0700); so must its files. One process holds it at a time (an
// flock on "lock"); a second is refused.
package statedir

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/espep/espep/ipsec"
)

// Partition is this gateway's share of the IV block space: blocks whose
// index is K modulo N. The zero value is the whole space.
type Partition struct{ K, N uint32 }

// ParsePartition parses "K/N" (0 ≤ K < N ≤ 65536).
func ParsePartition(s string) (Partition, error) {
	var p Partition
	if _, err := fmt.Sscanf(s, "%d/%d", &p.K, &p.N); err != nil || p.N == 0 || p.N > 1<<16 || p.K >= p.N {
		return Partition{}, fmt.Errorf("iv partition %q: want K/N with 0 ≤ K < N ≤ 65536", s)
	}
	return p, nil
}

func (p Partition) String() string { return fmt.Sprintf("%d/%d", p.K, max(p.N, 1)) }

// MaxBlock bounds block indexes: b·2^32 must stay below 2^63.
const MaxBlock = 1<<31 - 1

// Retention is how long a sequence record no process renewed is kept.
const Retention = 30 * 24 * time.Hour

// Dir is an open state directory, or the in-memory stand-in of Memory.
type Dir struct {
	path string
	part Partition
	log  *slog.Logger
	mem  bool

	lock *os.File // holds the flock for the process's life
	ivf  *os.File

	ivMu   sync.Mutex
	ivNext uint64 // Memory: the next block

	mu       sync.Mutex
	journal  *os.File
	size     int64
	recs     map[SeqKey]record // the last record of each SA
	salts    map[SeqKey]record // each SA's confirmed IV salt
	newSalts map[SeqKey]uint64 // salts not yet written
	leases   map[SeqKey][]*Lease
	werr     error         // the first write error; reservations stop
	unsynced bool          // Accepted records written, not yet synced
	syncs    int           // journal syncs, for tests
	flushed  chan struct{} // closed (and replaced) after each batch written
	wake     chan struct{}
	done     chan struct{}
	stopped  chan struct{}
	closed   bool
}

// SeqKey names an SA's sequence space: its SAD ID and the key ID of its
// keys (ipsec.Entry.KeyID), so that an SPI given again with new keys
// starts afresh, and which of the SA's two spaces.
type SeqKey struct {
	ID    ipsec.ID
	KeyID [16]byte
	Space Space
}

// Space says whose numbers on an SA a lease covers.
type Space uint8

const (
	// Numbers are the numbers the holder seals with.
	Numbers Space = iota
	// Accepted are the endpoint's numbers the holder accepted (verified
	// and acted on), recorded with Want, never ahead: a successor refuses
	// every one up to the lease's Floor.
	Accepted
)

type record struct {
	value uint64
	at    int64 // unix seconds
}

// Memory returns a Dir that keeps everything in this process: for a
// gateway whose whole life is one process (the lab, tests). Nothing
// survives the process, so a gateway that restarts must not use it.
func Memory() *Dir { return MemoryIn(Partition{}) }

// MemoryIn is Memory with IV blocks from partition part only: for
// gateways of one process that seal on the same SAs (the lab's handoff),
// each in a partition of its own, as the security server gives gateways
// that share no state directory.
func MemoryIn(part Partition) *Dir {
	part.N = max(part.N, 1)
	return &Dir{mem: true, part: part, recs: map[SeqKey]record{}, salts: map[SeqKey]record{}, newSalts: map[SeqKey]uint64{}, leases: map[SeqKey][]*Lease{}}
}

// Open opens (or creates) the state directory at path.
func Open(path string, part Partition, log *slog.Logger) (*Dir, error) {
	if log == nil {
		log = slog.Default()
	}
	if part.N == 0 {
		part.N = 1
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := private(path, true); err != nil {
		return nil, err
	}
	d := &Dir{path: path, part: part, log: log, recs: map[SeqKey]record{}, salts: map[SeqKey]record{}, newSalts: map[SeqKey]uint64{},
		leases: map[SeqKey][]*Lease{}, flushed: make(chan struct{}),
		wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	var err error
	if d.lock, err = openPrivate(filepath.Join(path, "lock")); err != nil {
		return nil, err
	}
	if err := unix.Flock(int(d.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		d.lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %s is held by another process (one gateway per state directory)", path)
		}
		return nil, fmt.Errorf("state dir %s: lock: %w", path, err)
	}
	fail := func(err error) (*Dir, error) {
		d.closeFiles()
		return nil, err
	}
	if d.ivf, err = openPrivate(filepath.Join(path, "iv-blocks")); err != nil {
		return fail(err)
	}
	if err := d.loadJournal(); err != nil {
		return fail(err)
	}
	if err := syncDir(path); err != nil {
		return fail(err)
	}
	go d.writer()
	return d, nil
}

// private checks that path belongs to this user and is closed to group
// and others.
func private(path string, dir bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if dir != fi.IsDir() {
		return fmt.Errorf("state dir: %s: not a %s", path, map[bool]string{true: "directory", false: "file"}[dir])
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("state dir: %s has mode %#o: it holds what nonce safety depends on and must be closed to group and others (chmod go-rwx)", path, m)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state dir: %s belongs to uid %d, not to this process (uid %d)", path, st.Uid, os.Geteuid())
	}
	return nil
}

func openPrivate(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := private(path, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("state dir: sync %s: %w", path, err)
	}
	return nil
}

// Path returns the directory ("" for Memory).
func (d *Dir) Path() string { return d.path }

// Durable reports whether the Dir survives the process.
func (d *Dir) Durable() bool { return !d.mem }

// IV blocks. The file holds two slots of 16 bytes — the count of blocks
// handed out (8 bytes), its CRC-32C (4), padding — written alternately, so
// that a write torn by a crash leaves the other slot intact. The reader
// takes the larger valid count.

const ivSlot = 16

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// IVBlock reserves a block of IV counter space no process using this
// directory (or this Memory) has had, and returns its index b ≥ 1: the
// counters b·2^32 … b·2^32 + 2^32 − 1 are the caller's. The reservation is
// on disk before IVBlock returns.
func (d *Dir) IVBlock() (uint64, error) {
	d.ivMu.Lock()
	defer d.ivMu.Unlock()
	if d.mem {
		d.ivNext++
		if b := d.ivNext*uint64(d.part.N) + uint64(d.part.K); b <= MaxBlock {
			return b, nil
		}
		return 0, fmt.Errorf("state dir: iv block space exhausted (%d blocks handed out)", d.ivNext-1)
	}
	var buf [2 * ivSlot]byte
	n, err := d.ivf.ReadAt(buf[:], 0)
	if err != nil && err != io.EOF {
		return 0, fmt.Errorf("state dir: read iv-blocks: %w", err)
	}
	var count uint64
	for s := 0; s+ivSlot <= n; s += ivSlot {
		slot := buf[s : s+ivSlot]
		if v := binary.BigEndian.Uint64(slot); crc32.Checksum(slot[:8], castagnoli) == binary.BigEndian.Uint32(slot[8:]) {
			count = max(count, v)
		}
	}
	count++
	b := count*uint64(d.part.N) + uint64(d.part.K)
	if b > MaxBlock {
		return 0, fmt.Errorf("state dir: iv block space exhausted (%d blocks handed out)", count-1)
	}
	var slot [ivSlot]byte
	binary.BigEndian.PutUint64(slot[:], count)
	binary.BigEndian.PutUint32(slot[8:], crc32.Checksum(slot[:8], castagnoli))
	if _, err := d.ivf.WriteAt(slot[:], int64(count%2)*ivSlot); err != nil {
		return 0, fmt.Errorf("state dir: write iv-blocks: %w", err)
	}
	if err := d.ivf.Sync(); err != nil {
		return 0, fmt.Errorf("state dir: sync iv-blocks: %w", err)
	}
	return b, nil
}

// Salt returns the IV salt confirmed for an SA before (by this process or
// an earlier one), if any.
func (d *Dir) Salt(k SeqKey) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.newSalts[k]; ok {
		return v, true
	}
	r, ok := d.salts[k]
	return r.value, ok
}

// SetSalt records the IV salt confirmed for an SA; it is written with the
// next batch (not synced on its own: losing it costs a successor one
// packet relayed as it came).
func (d *Dir) SetSalt(k SeqKey, salt uint64) {
	d.mu.Lock()
	if d.mem {
		d.salts[k] = record{value: salt}
	} else {
		d.newSalts[k] = salt
	}
	d.mu.Unlock()
	if !d.mem {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// Lease is an SA's sequence space, held by one user (an SA state of the
// gateway). The holder uses numbers above Floor and up to Allowed only,
// and asks for more ahead of need with Want: the directory's writer
// records them, one fsync per batch, and only then raises Allowed. In a
// Memory Dir, Want grants at once.
type Lease struct {
	d       *Dir
	key     SeqKey
	floor   uint64
	allowed atomic.Uint64
	want    atomic.Uint64
	final   atomic.Uint64 // set by Release: the last number used
}

// Lease returns a new lease on an SA's sequence space. Its floor is the
// last number reserved on the SA before — by an earlier process, or by an
// earlier lease of this one (a state the gateway forgot and made again) —
// so that the holder numbers above everything anyone may have used.
func (d *Dir) Lease(k SeqKey) *Lease {
	d.mu.Lock()
	defer d.mu.Unlock()
	floor := d.recs[k].value
	for _, o := range d.leases[k] {
		floor = max(floor, o.reserved())
	}
	l := &Lease{d: d, key: k, floor: floor}
	l.allowed.Store(floor)
	l.want.Store(floor)
	d.leases[k] = append(d.leases[k], l)
	return l
}

// reserved is the highest number the lease may have handed out.
func (l *Lease) reserved() uint64 {
	if f := l.final.Load(); f != 0 {
		return f
	}
	return max(l.allowed.Load(), l.want.Load())
}

// Floor is the last number reserved on the SA before this lease (0: none,
// or its record was pruned): anyone may have used any number up to it.
func (l *Lease) Floor() uint64 { return l.floor }

// Allowed is the highest number the holder may use now.
func (l *Lease) Allowed() uint64 { return l.allowed.Load() }

// Want asks for Allowed to reach n; it returns at once (in a Memory Dir,
// with n granted).
func (l *Lease) Want(n uint64) {
	raise(&l.want, n)
	if l.d.mem {
		l.d.mu.Lock()
		if r := l.d.recs[l.key]; r.value < n {
			l.d.recs[l.key] = record{value: n}
		}
		l.d.mu.Unlock()
		raise(&l.allowed, n)
		return
	}
	select {
	case l.d.wake <- struct{}{}:
	default:
	}
}

// Await is Want(n) that waits up to timeout for n to be allowed, and
// reports whether it is. The gateway calls it when it has outrun its
// reservation — at the first packet after a start — rather than drop the
// packet.
func (l *Lease) Await(n uint64, timeout time.Duration) bool {
	l.Want(n)
	if l.Allowed() >= n {
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.d.mu.Lock()
		ch := l.d.flushed
		failed := l.d.werr != nil
		l.d.mu.Unlock()
		if l.Allowed() >= n {
			return true
		}
		if failed {
			return false
		}
		select {
		case <-ch:
		case <-deadline.C:
			return l.Allowed() >= n
		}
	}
}

// Drop ends the lease without a final record: its holder forgot the SA.
// What it reserved still counts for the leases that follow.
func (l *Lease) Drop() {
	d := l.d
	d.mu.Lock()
	defer d.mu.Unlock()
	ls := d.leases[l.key]
	for i, o := range ls {
		if o == l {
			ls = append(ls[:i], ls[i+1:]...)
			break
		}
	}
	if len(ls) == 0 {
		delete(d.leases, l.key)
	} else {
		d.leases[l.key] = ls
	}
	if r := d.recs[l.key]; r.value < l.allowed.Load() {
		d.recs[l.key] = record{value: l.allowed.Load(), at: max(r.at, time.Now().Unix())}
	}
}

// Release records that last is the highest number the holder used, so
// that a successor after a clean stop wastes none of the reserved rest.
// Close writes it; the lease takes no more Want after it.
func (l *Lease) Release(last uint64) { l.final.Store(max(last, l.floor, 1)) }

// raise makes a at least n.
func raise(a *atomic.Uint64, n uint64) {
	for {
		v := a.Load()
		if n <= v || a.CompareAndSwap(v, n) {
			return
		}
	}
}
