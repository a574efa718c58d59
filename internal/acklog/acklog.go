// Package acklog keeps, in files of the state directory, the bytes a
// split gateway has acknowledged early, so that a gateway killed
// mid-transfer (SIGKILL, a crash) loses none of them: the next start
// recovers the flows that held bytes and delivers those to their
// receivers (DESIGN.md, state that must survive a restart).
//
// It is the engine's Journal. Each engine shard appends to files of its
// own — a generation per process start, a segment per checkpoint, named
// GGGGGGGGGGGG-SSS-NNNNNNNN — records of four kinds: a flow's state
// without its bytes (F, JSON), bytes of one direction (D), how far a
// receiver acknowledged (A) and a flow's end (G). A record is its length,
// its kind and body, and a CRC-32C of both; a torn or damaged record ends
// its file's reading.
//
// The bytes are written to the file (the kernel's page cache) before the
// engine takes them, and not synced: they survive the process, not the
// machine — a machine that goes down takes the early-acknowledged bytes
// with it, as it takes the endpoints' connections. A segment grows until
// it is four times what its shard's last checkpoint wrote (at least
// MinSegment); then the shard writes all it holds to its other slot and
// goes on there. So each byte is written about 1.3 times, not twice as
// with a factor of two (the checkpoints were a tenth of the gateway's CPU
// at full rate then), and the two slots stay within about eight times
// what the engine holds, which Config.BufferTotal bounds.
//
// What is on disk is the endpoints' payload in the clear, in the 0700
// state directory, 0600 files — as the flows file of a clean stop.
package acklog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/espep/espep/internal/engine"
)

// MinSegment is the size a shard's slot may reach before a checkpoint
// however little the shard holds.
const MinSegment = 4 << 20

// Record kinds.
const (
	kindFlow  = 'F'
	kindData  = 'D'
	kindAcked = 'A'
	kindGone  = 'G'
	kindDone  = 'C' // a checkpoint is complete: what came before in other slots is superseded
)

// Record framing: length (kind and body), kind, body, CRC-32C of kind and
// body.
const (
	headLen   = 5
	trailLen  = 4
	keyLen    = 2 * addrLen
	addrLen   = 19 // 16 address bytes, 2 port bytes, 1 family byte
	dataHead  = keyLen + 1 + 4 + 8
	maxRecord = 1 << 20 // a flow's JSON is a few kilobytes, a segment's bytes at most 64 KiB
	// pendingMax is how much of Acked's records may wait for the next write.
	pendingMax = 16 << 10
	// batchMax is how much may wait for Commit before Data writes itself:
	// a batch of reads, not a checkpoint's megabytes.
	batchMax = 256 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Log is one process's journal, in a directory of its own.
type Log struct {
	dir string
	gen uint64
	log *slog.Logger

	minSeg int64 // MinSegment; smaller in tests

	mu     sync.Mutex
	shards map[int]*shardLog
	older  []segName // files of earlier generations: Recover reads them, DropOlder removes them
}

// Open opens (creating it, 0700) the journal directory dir for a new
// generation; the files of earlier ones are left for Recover.
func Open(dir string, log *slog.Logger) (*Log, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("acklog: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("acklog: %w", err)
	}
	names, err := list(dir)
	if err != nil {
		return nil, err
	}
	l := &Log{dir: dir, log: log, shards: map[int]*shardLog{}, older: names, gen: 1, minSeg: MinSegment}
	for _, n := range names {
		l.gen = max(l.gen, n.gen+1)
	}
	return l, nil
}

// segName is a segment file's name, parsed.
type segName struct {
	gen        uint64
	shard, seg int
}

func (n segName) String() string { return fmt.Sprintf("%012d-%03d-%08d", n.gen, n.shard, n.seg) }

func parseName(s string) (segName, bool) {
	p := strings.Split(s, "-")
	if len(p) != 3 || len(p[0]) != 12 || len(p[1]) != 3 || len(p[2]) != 8 {
		return segName{}, false
	}
	g, err1 := strconv.ParseUint(p[0], 10, 64)
	sh, err2 := strconv.Atoi(p[1])
	sg, err3 := strconv.Atoi(p[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return segName{}, false
	}
	return segName{g, sh, sg}, true
}

// list returns dir's segment files in the order they were written within
// a shard: by generation, shard, segment.
func list(dir string) ([]segName, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("acklog: %w", err)
	}
	var out []segName
	for _, e := range ents {
		if n, ok := parseName(e.Name()); ok && e.Type().IsRegular() {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.gen != b.gen {
			return a.gen < b.gen
		}
		if a.shard != b.shard {
			return a.shard < b.shard
		}
		return a.seg < b.seg
	})
	return out, nil
}

// Shard returns shard i's log (engine.Journal); its first file is made
// at its first record.
func (l *Log) Shard(i int) engine.ShardLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.shards[i]
	if s == nil {
		s = newShardLog(l, i)
		l.shards[i] = s
	}
	return s
}

// DropOlder removes the files of earlier generations: call it once what
// Recover gave back is in the engine (whose import wrote it here again).
func (l *Log) DropOlder() error {
	l.mu.Lock()
	older := l.older
	l.older = nil
	l.mu.Unlock()
	var errs []error
	for _, n := range older {
		if err := os.Remove(filepath.Join(l.dir, n.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("acklog: %w", err)
	}
	return nil
}

// Close writes what waits and closes the files; they stay, for the next
// start (a clean stop that handed its flows over has written their ends).
// The engine must be closed first.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, s := range l.shards {
		errs = append(errs, s.close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("acklog: %w", err)
	}
	return nil
}

// putKey encodes a flow's endpoints.
func putKey(b []byte, wire, radio netip.AddrPort) {
	putAddr(b, wire)
	putAddr(b[addrLen:], radio)
}

func putAddr(b []byte, a netip.AddrPort) {
	ip := a.Addr().As16()
	copy(b, ip[:])
	binary.BigEndian.PutUint16(b[16:], a.Port())
	b[18] = 6
	if a.Addr().Is4() {
		b[18] = 4
	}
}

func getAddr(b []byte) (netip.AddrPort, bool) {
	ip := netip.AddrFrom16([16]byte(b[:16]))
	switch b[18] {
	case 4:
		if !ip.Is4In6() {
			return netip.AddrPort{}, false
		}
		ip = ip.Unmap()
	case 6:
	default:
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[16:])), true
}
