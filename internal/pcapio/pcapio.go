// Package pcapio reads classic libpcap captures (tcpdump -w: both byte
// orders, microsecond and nanosecond timestamps) and pcapng captures
// (dumpcap, tshark), and writes classic pcap. It is deliberately small:
// espep's tools read captures of IP traffic and write the same link type
// back. It is not a packet decoder.
package pcapio

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Link types (tcpdump.org/linktypes.html) espep understands.
const (
	LinkEthernet  = 1
	LinkRaw       = 101 // raw IPv4 or IPv6
	LinkLinuxSLL  = 113 // Linux "any" cooked capture v1
	LinkIPv4      = 228
	LinkIPv6      = 229
	LinkLinuxSLL2 = 276
)

const (
	magicMicro = 0xa1b2c3d4
	magicNano  = 0xa1b23c4d
	fileHdrLen = 24
	recHdrLen  = 16
	// MaxSnapLen bounds a record so that a corrupt file cannot make the
	// reader allocate gigabytes.
	MaxSnapLen = 256 << 10
)

// ErrFormat reports a file that is not a capture this package reads.
var ErrFormat = errors.New("not a classic pcap file")

// Header is a capture file's global header.
type Header struct {
	LinkType uint32
	SnapLen  uint32
	Nano     bool
}

// Record is one captured packet. Data is valid until the next Next call.
type Record struct {
	Time    time.Time
	OrigLen int
	Data    []byte
}

// Reader reads records from a classic pcap or a pcapng capture.
type Reader struct {
	r     *bufio.Reader
	order binary.ByteOrder
	Header
	buf [ngMaxBlock]byte
	hdr [recHdrLen]byte
	n   int      // records read, for errors
	ng  *ngState // non-nil for pcapng
}

// NewReader reads the global header.
func NewReader(r io.Reader) (*Reader, error) {
	pr := &Reader{r: bufio.NewReaderSize(r, 64<<10)}
	var h [fileHdrLen]byte
	if _, err := io.ReadFull(pr.r, h[:]); err != nil {
		return nil, fmt.Errorf("pcap header: %w", err)
	}
	switch {
	case binary.LittleEndian.Uint32(h[:]) == magicMicro:
		pr.order = binary.LittleEndian
	case binary.BigEndian.Uint32(h[:]) == magicMicro:
		pr.order = binary.BigEndian
	case binary.LittleEndian.Uint32(h[:]) == magicNano:
		pr.order, pr.Nano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(h[:]) == magicNano:
		pr.order, pr.Nano = binary.BigEndian, true
	case binary.LittleEndian.Uint32(h[:]) == ngSHB:
		// Put the header bytes back in front of the stream and read blocks.
		pr.r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(h[:]), pr.r), 64<<10)
		if err := pr.ngStart(h); err != nil {
			return nil, err
		}
		return pr, nil
	default:
		return nil, fmt.Errorf("magic %#x: %w", binary.LittleEndian.Uint32(h[:]), ErrFormat)
	}
	pr.SnapLen = pr.order.Uint32(h[16:])
	pr.LinkType = pr.order.Uint32(h[20:]) & 0x0fffffff // upper bits: FCS info
	return pr, nil
}

// Next returns the next record, or io.EOF at the end.
func (pr *Reader) Next() (Record, error) {
	if pr.ng != nil {
		return pr.ngNext()
	}
	if _, err := io.ReadFull(pr.r, pr.hdr[:]); err != nil {
		if err == io.EOF {
			return Record{}, io.EOF
		}
		return Record{}, fmt.Errorf("pcap record %d header: %w", pr.n+1, err)
	}
	pr.n++
	sec, frac := pr.order.Uint32(pr.hdr[0:]), pr.order.Uint32(pr.hdr[4:])
	incl, orig := pr.order.Uint32(pr.hdr[8:]), pr.order.Uint32(pr.hdr[12:])
	if incl > MaxSnapLen {
		return Record{}, fmt.Errorf("pcap record %d: length %d > %d: %w", pr.n, incl, MaxSnapLen, ErrFormat)
	}
	data := pr.buf[:incl]
	if _, err := io.ReadFull(pr.r, data); err != nil {
		return Record{}, fmt.Errorf("pcap record %d: %w", pr.n, io.ErrUnexpectedEOF)
	}
	ns := int64(frac)
	if !pr.Nano {
		ns *= 1000
	}
	return Record{Time: time.Unix(int64(sec), ns).UTC(), OrigLen: int(orig), Data: data}, nil
}

// Writer writes a little-endian capture with nanosecond timestamps.
type Writer struct {
	w   *bufio.Writer
	hdr [recHdrLen]byte
}

// NewWriter writes the global header.
func NewWriter(w io.Writer, linkType uint32) (*Writer, error) {
	pw := &Writer{w: bufio.NewWriterSize(w, 64<<10)}
	var h [fileHdrLen]byte
	binary.LittleEndian.PutUint32(h[0:], magicNano)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], MaxSnapLen)
	binary.LittleEndian.PutUint32(h[20:], linkType)
	if _, err := pw.w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("pcap header: %w", err)
	}
	return pw, nil
}

// Write appends one packet. origLen < len(data) is raised to len(data).
func (pw *Writer) Write(t time.Time, data []byte, origLen int) error {
	if len(data) > MaxSnapLen {
		return fmt.Errorf("pcap record of %d bytes > %d", len(data), MaxSnapLen)
	}
	origLen = max(origLen, len(data))
	binary.LittleEndian.PutUint32(pw.hdr[0:], uint32(t.Unix()))
	binary.LittleEndian.PutUint32(pw.hdr[4:], uint32(t.Nanosecond()))
	binary.LittleEndian.PutUint32(pw.hdr[8:], uint32(len(data)))
	binary.LittleEndian.PutUint32(pw.hdr[12:], uint32(origLen))
	if _, err := pw.w.Write(pw.hdr[:]); err != nil {
		return err
	}
	_, err := pw.w.Write(data)
	return err
}

// Flush writes buffered records out.
func (pw *Writer) Flush() error { return pw.w.Flush() }

// ReadFile returns the link type and a copy of every record's data of the
// capture at path, in order (tests and tools that want a whole capture).
func ReadFile(path string) (linkType uint32, frames [][]byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	r, err := NewReader(f)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", path, err)
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return r.LinkType, frames, nil
		}
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", path, err)
		}
		frames = append(frames, append([]byte(nil), rec.Data...))
	}
}
