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
type shardLog struct {
	l     *Log
	name  segName // the current segment (seg −1: none yet)
	f     *os.File
	prev  []segName // this shard's earlier segments of this generation
	size  int64     // of the current segment
	limit int64     // Full beyond it
	buf   []byte    // records waiting (Acked), then the one being written
	err   error     // the last write's: the segment is given up at the next checkpoint
}

// begin starts the next segment.
func (s *shardLog) begin() error {
	next := s.name
	next.seg++
	f, err := os.OpenFile(filepath.Join(s.l.dir, next.String()), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("acklog: %w", err)
	}
	if s.f != nil {
		s.prev = append(s.prev, s.name)
		s.f.Close()
	}
	s.name, s.f, s.size, s.err = next, f, 0, nil
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
	binary.BigEndian.PutUint32(r[headLen+n:], crc32.Checksum(r[4:headLen+n], castagnoli))
}

// flush writes every record waiting.
func (s *shardLog) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	if s.f == nil {
		if err := s.begin(); err != nil {
			return err
		}
	}
	n, err := s.f.Write(s.buf)
	s.size += int64(n)
	s.buf = s.buf[:0]
	if err != nil {
		// The segment may end in part of a record: the reader stops there.
		// Nothing after it would be read, so the next write starts anew.
		s.err = fmt.Errorf("acklog: %w", err)
		s.prev = append(s.prev, s.name) // read at a start, removed at the next checkpoint
		s.f.Close()
		s.f = nil
		return s.err
	}
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
	return s.flush()
}

func (s *shardLog) Data(wire, radio netip.AddrPort, from engine.Side, seq uint32, ts [2]uint32, b []byte) error {
	n := dataHead + len(b)
	body := s.record(kindData, n)
	putStream(body, wire, radio, from, seq, ts)
	copy(body[dataHead:], b)
	s.seal(n)
	return s.flush()
}

// Acked waits for the next write, unless the stream is drained (a flow
// holding nothing would otherwise be resent whole by a start) or many
// wait: one lost only makes a start resend bytes the receiver has.
func (s *shardLog) Acked(wire, radio netip.AddrPort, from engine.Side, una uint32, ts [2]uint32, drained bool) {
	putStream(s.record(kindAcked, dataHead), wire, radio, from, una, ts)
	s.seal(dataHead)
	if drained || len(s.buf) >= pendingMax {
		s.flush() // an error shows at the next Data
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

func (s *shardLog) Full() bool { return s.size >= s.limit || s.err != nil }

// Checkpoint starts a new segment, has write fill it with every flow, and
// removes this shard's earlier segments — unless write failed, when they
// stay (a start reads them, then the new one, whose records come later).
func (s *shardLog) Checkpoint(write func() error) error {
	if err := s.flush(); err != nil && s.f != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	if err := write(); err != nil {
		return err
	}
	if err := s.flush(); err != nil {
		return err
	}
	s.limit = max(s.l.minSeg, 2*s.size)
	var errs []error
	for _, n := range s.prev {
		if err := os.Remove(filepath.Join(s.l.dir, n.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	s.prev = s.prev[:0]
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("acklog: %w", err)
	}
	return nil
}

func (s *shardLog) close() error {
	err := s.flush()
	if s.f != nil {
		err = errors.Join(err, s.f.Close())
		s.f = nil
	}
	return err
}
