package statedir

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Flows kept over a clean restart (DESIGN.md, "state that must survive a
// restart": the data acknowledged early).
//
// A split gateway that stops cleanly writes its flows — the bytes it
// acknowledged on the receivers' behalf included — to the file "flows"
// (SaveFlows), and its successor takes them back before its first packet
// (TakeFlows), which removes the file. The file holds, in the clear, what
// the endpoints' IPsec protected on the air: up to the engine's buffer
// bound (buffer-total) for the time between a stop and the next start.
// It is as private as the rest of the directory (0600, in a 0700
// directory of this user). A file older than the caller's bound is
// refused and removed; so is one that is torn or altered (a CRC over its
// head, another over its body), and nothing of it is acted on.
//
// Not covered: a gateway that is SIGKILLed (or crashes) writes nothing,
// and the bytes it held are lost with it.
//
// The file: "espep-flows 1\n", the time it was written (unix nanoseconds,
// 8 bytes big-endian), the body's length (8 bytes), the CRC-32C of the
// head so far (4 bytes); then the body (the caller's encoding) and its
// CRC-32C (4 bytes).

const (
	flowsFile  = "flows"
	flowsMagic = "espep-flows 1\n"
	flowsHead  = len(flowsMagic) + 20
)

// ErrNoFlows is TakeFlows finding no flows file.
var ErrNoFlows = errors.New("state dir: no flows kept")

// SaveFlows writes the flows file: encode writes the body. It is on disk
// (synced, the directory too) when SaveFlows returns nil; a file from an
// earlier stop is replaced. A Memory Dir keeps nothing.
func (d *Dir) SaveFlows(now time.Time, encode func(io.Writer) error) error {
	if d.mem {
		return nil
	}
	tmp := filepath.Join(d.path, flowsFile+".new")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := private(tmp, false); err != nil {
		return err
	}
	// The body first, after room for the head, whose length field waits
	// for it.
	if _, err := f.Seek(int64(flowsHead), io.SeekStart); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	crc := crc32.New(castagnoli)
	w := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<20)
	body := &countWriter{w: w}
	if err := encode(body); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	tail := binary.BigEndian.AppendUint32(nil, crc.Sum32())
	if _, err := f.Write(tail); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	head := flowsHeader(now, body.n)
	if _, err := f.WriteAt(head, 0); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("state dir: flows: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.path, flowsFile)); err != nil {
		return fmt.Errorf("state dir: flows: %w", err)
	}
	ok = true
	return syncDir(d.path)
}

func flowsHeader(at time.Time, n int64) []byte {
	b := append([]byte(nil), flowsMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(n))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// TakeFlows reads the flows file and removes it, whatever it held: its
// flows are handed to one successor, once. It returns the body and when
// it was written; ErrNoFlows when there is no file, and an error (the
// file removed all the same) when it is damaged or older than maxAge.
func (d *Dir) TakeFlows(now time.Time, maxAge time.Duration) (body []byte, at time.Time, err error) {
	if d.mem {
		return nil, time.Time{}, ErrNoFlows
	}
	path := filepath.Join(d.path, flowsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, time.Time{}, ErrNoFlows
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("state dir: flows: %w", err)
	}
	if err := os.Remove(path); err != nil {
		return nil, time.Time{}, fmt.Errorf("state dir: flows: %w", err)
	}
	if err := syncDir(d.path); err != nil {
		return nil, time.Time{}, err
	}
	if body, at, err = parseFlows(b); err != nil {
		return nil, time.Time{}, err
	}
	if age := now.Sub(at); age > maxAge || age < -time.Minute {
		return nil, at, fmt.Errorf("state dir: flows: written %v ago, past the %v bound: dropped", age.Round(time.Millisecond), maxAge)
	}
	return body, at, nil
}

// parseFlows checks a flows file and returns its body and time.
func parseFlows(b []byte) (body []byte, at time.Time, err error) {
	if len(b) < flowsHead+4 || string(b[:len(flowsMagic)]) != flowsMagic {
		return nil, time.Time{}, errors.New("state dir: flows: not a flows file")
	}
	h := b[len(flowsMagic):flowsHead]
	if crc32.Checksum(b[:flowsHead-4], castagnoli) != binary.BigEndian.Uint32(h[16:]) {
		return nil, time.Time{}, errors.New("state dir: flows: damaged head")
	}
	n := binary.BigEndian.Uint64(h[8:])
	if n != uint64(len(b)-flowsHead-4) {
		return nil, time.Time{}, fmt.Errorf("state dir: flows: a body of %d bytes in a file of %d", n, len(b))
	}
	body = b[flowsHead : len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return nil, time.Time{}, errors.New("state dir: flows: damaged body")
	}
	return body, time.Unix(0, int64(binary.BigEndian.Uint64(h))), nil
}

// countWriter counts what goes through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
