package acklog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/espep/espep/internal/engine"
)

// shardLog is one engine shard's log (engine.ShardLog). The engine calls
// it under the shard's lock; Close comes after the engine's. Writes
// allocate nothing once its buffer has grown to a record.
//
// It writes into two slot files in turn. A slot begins with a header
// (its epoch) and a checkpoint — every flow the shard holds, then a C
// record — and goes on with the log until the shard is Full; the next
// checkpoint goes to the other slot, over what it held, and leaves this
// one, the newest complete checkpoint, alone until it is done. So the
// files' pages are written over, not made anew: a write is a copy into
// the page cache, not a page allocated per 4 KiB of traffic (an appended
// journal had halved split's throughput in TUN mode).
type shardLog struct {
	l        *Log
	gen      uint64
	shard    int
	slots    [2]*os.File // opened at their first use
	cur      int         // the slot written
	complete int         // the slot with the newest complete checkpoint (−1: none yet)
	epoch    uint64      // of the current slot: every record's CRC covers it
	seed     uint32      // epochSeed(epoch)
	begun    bool        // a slot was begun: the next begins the next epoch
	off      int64       // where the next write goes in the current slot
	limit    int64       // Full beyond it
	buf      []byte      // records waiting for the next write (Commit's, or one of their own)
	err      error       // the last write's: the slot is not written to again before a checkpoint
	lost     error       // a write's since the last Commit: records are missing
}

func newShardLog(l *Log, i int) *shardLog {
	return &shardLog{l: l, gen: l.gen, shard: i, complete: -1, epoch: 1, seed: epochSeed(1), limit: l.minSeg}
}

// slot opens slot i's file (created, or written over).
func (s *shardLog) slot(i int) (*os.File, error) {
	if s.slots[i] == nil {
		f, err := os.OpenFile(filepath.Join(s.l.dir, segName{s.gen, s.shard, i}.String()), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("acklog: %w", err)
		}
		s.slots[i] = f
	}
	return s.slots[i], nil
}

// begin starts a checkpoint in the slot that does not hold the newest
// complete one: a new epoch, its header written over the slot's start.
// What the slot held after it can no longer pass a CRC.
func (s *shardLog) begin() error {
	s.cur = 0
	if s.complete >= 0 {
		s.cur = 1 - s.complete
	}
	f, err := s.slot(s.cur)
	if err != nil {
		return err
	}
	if s.begun {
		s.epoch++
	}
	s.begun = true
	s.seed = epochSeed(s.epoch)
	// A slot that a peak made far larger than the log now needs is cut.
	if fi, err := f.Stat(); err == nil && fi.Size() > 4*s.limit {
		f.Truncate(s.limit)
	}
	var h [slotHeadLen]byte
	putSlotHead(h[:], s.epoch)
	s.off, s.err = 0, nil
	return s.writeAt(h[:])
}

// writeAt writes b at the current offset of the current slot.
func (s *shardLog) writeAt(b []byte) error {
	n, err := pwrite(s.slots[s.cur], b, s.off)
	s.off += int64(n)
	if err != nil {
		// The slot may end in part of a record: the reader stops there.
		// Nothing after it would be read: no more writes until a checkpoint.
		s.err = fmt.Errorf("acklog: %w", err)
		s.lost = s.err
		return s.err
	}
	return nil
}

// record appends a record's framing around body, which the caller fills
// (it is the n bytes after the head), to the waiting records.
func (s *shardLog) record(kind byte, n int) (body []byte) {
	at := len(s.buf)
	s.buf = append(s.buf, make([]byte, headLen+n+trailLen)...)
	r := s.buf[at:]
	binary.BigEndian.PutUint32(r, uint32(1+n))
	r[4] = kind
	return r[headLen : headLen+n]
}

// seal puts the CRC on the last record appended (whose body is filled).
func (s *shardLog) seal(n int) {
	r := s.buf[len(s.buf)-headLen-n-trailLen:]
	binary.BigEndian.PutUint32(r[headLen+n:], recordCRC(s.seed, r[4:headLen+n]))
}

// flush writes every record waiting. The first starts the first slot.
func (s *shardLog) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	defer func() { s.buf = s.buf[:0] }()
	if !s.begun {
		if err := s.startFirst(); err != nil {
			return err
		}
	}
	if s.err != nil {
		s.lost = s.err
		return s.err
	}
	return s.writeAt(s.buf)
}

// startFirst writes the first slot's header and an empty checkpoint
// before the records waiting: nothing was held before them.
func (s *shardLog) startFirst() error {
	waiting := s.buf
	s.buf = nil
	err := s.begin()
	if err == nil {
		s.record(kindDone, 0)
		s.seal(0)
		err = s.writeAt(s.buf)
	}
	s.buf = waiting
	if err != nil {
		s.lost = err
		return err
	}
	s.complete = s.cur
	return nil
}

func (s *shardLog) Flow(fs *engine.FlowState) error {
	b, err := json.Marshal(fs)
	if err != nil {
		return fmt.Errorf("acklog: %w", err)
	}
	if len(b)+1 > maxRecord {
		return fmt.Errorf("acklog: flow state of %d bytes", len(b))
	}
	copy(s.record(kindFlow, len(b)), b)
	s.seal(len(b))
	return s.spill()
}

// Data waits for Commit, as the ACK that covers the bytes does, so that a
// batch's segments go to the file in one write.
func (s *shardLog) Data(wire, radio netip.AddrPort, from engine.Side, seq uint32, ts [2]uint32, b []byte) error {
	n := dataHead + len(b)
	body := s.record(kindData, n)
	putStream(body, wire, radio, from, seq, ts)
	copy(body[dataHead:], b)
	s.seal(n)
	return s.spill()
}

// spill writes what waits once it is more than a batch.
func (s *shardLog) spill() error {
	if len(s.buf) < batchMax {
		return nil
	}
	return s.flush()
}

// Commit writes what waits; an error also when an earlier write since the
// last Commit failed (records are missing from the file).
func (s *shardLog) Commit() error {
	err := s.flush()
	if s.lost != nil {
		err, s.lost = s.lost, nil
	}
	return err
}

// Acked waits for the next write, unless the stream is drained (a flow
// holding nothing would otherwise be resent whole by a start) or many
// wait: one lost only makes a start resend bytes the receiver has.
func (s *shardLog) Acked(wire, radio netip.AddrPort, from engine.Side, una uint32, ts [2]uint32, drained bool) {
	putStream(s.record(kindAcked, dataHead), wire, radio, from, una, ts)
	s.seal(dataHead)
	if drained || len(s.buf) >= pendingMax {
		s.flush() // an error shows at the next Commit
	}
}

func (s *shardLog) Gone(wire, radio netip.AddrPort) {
	putKey(s.record(kindGone, keyLen), wire, radio)
	s.seal(keyLen)
	s.flush() // a flow resurrected would be answered by an RST: not worth keeping quiet
}

// putStream encodes a D or A record's head.
func putStream(b []byte, wire, radio netip.AddrPort, from engine.Side, seq uint32, ts [2]uint32) {
	putKey(b, wire, radio)
	b[keyLen] = byte(from)
	binary.BigEndian.PutUint32(b[keyLen+1:], seq)
	binary.BigEndian.PutUint32(b[keyLen+5:], ts[0])
	binary.BigEndian.PutUint32(b[keyLen+9:], ts[1])
}

func (s *shardLog) Full() bool { return s.off >= s.limit || s.err != nil }

// Checkpoint starts the other slot, has write fill it with every flow,
// and marks it complete; until then the slot with the last complete
// checkpoint stays as it is (a start reads it, then this one, whose
// records come later).
func (s *shardLog) Checkpoint(write func() error) error {
	s.flush() // a failure only leaves the slot behind: everything is written again
	s.lost = nil
	if err := s.begin(); err != nil {
		s.buf = s.buf[:0]
		return err
	}
	if err := write(); err != nil {
		s.buf = s.buf[:0]
		return err
	}
	s.record(kindDone, 0)
	s.seal(0)
	if err := s.Commit(); err != nil {
		return err
	}
	s.complete = s.cur
	s.limit = max(s.l.minSeg, 4*s.off)
	return nil
}

func (s *shardLog) close() error {
	err := s.flush()
	for i, f := range s.slots {
		if f != nil {
			err = errors.Join(err, f.Close())
			s.slots[i] = nil
		}
	}
	return err
}

// The slot header: magic, epoch, CRC-32C of both.
const slotHeadLen = 4 + 8 + 4

var slotMagic = [4]byte{'E', 'A', 'K', '1'}

func putSlotHead(b []byte, epoch uint64) {
	copy(b, slotMagic[:])
	binary.BigEndian.PutUint64(b[4:], epoch)
	binary.BigEndian.PutUint32(b[12:], crc32.Checksum(b[:12], castagnoli))
}

// slotEpoch reads a slot header; false if it is none.
func slotEpoch(b []byte) (uint64, bool) {
	if len(b) < slotHeadLen || [4]byte(b[:4]) != slotMagic || crc32.Checksum(b[:12], castagnoli) != binary.BigEndian.Uint32(b[12:]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[4:]), true
}

// A record's CRC-32C covers its slot's epoch, then its kind and body: a
// record an earlier epoch left in the slot fails it. epochSeed is the
// CRC of the epoch, from which each record's goes on (recordCRC).
func epochSeed(epoch uint64) uint32 {
	var e [8]byte
	binary.BigEndian.PutUint64(e[:], epoch)
	return crc32.Checksum(e[:], castagnoli)
}

func recordCRC(seed uint32, kindBody []byte) uint32 {
	return crc32.Update(seed, castagnoli, kindBody)
}
