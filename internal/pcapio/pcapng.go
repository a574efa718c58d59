package pcapio

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"time"
)

// pcapng (draft-ietf-opsawg-pcapng): a section header block, interface
// description blocks, then packet blocks. espep reads enhanced and simple
// packet blocks of sections whose interfaces share one link type, which is
// what dumpcap and tshark write for a capture on one interface.

const (
	ngSHB      = 0x0a0d0d0a
	ngIDB      = 1
	ngSPB      = 3
	ngEPB      = 6
	ngBOM      = 0x1a2b3c4d
	ngMaxBlock = MaxSnapLen + 4096
)

type ngIface struct {
	link  uint32
	tsres uint8 // if_tsresol: 10^-n seconds, or 2^-(n&0x7f) if the top bit is set
}

// ngTime converts a timestamp in the interface's units, exactly.
func ngTime(ts uint64, res uint8) time.Time {
	e := uint(res & 0x7f)
	var sec, ns uint64
	if res&0x80 != 0 {
		if e >= 64 {
			return time.Unix(0, 0).UTC()
		}
		sec = ts >> e
		if e > 0 { // ns = frac·10⁹ / 2^e, in 128 bits
			hi, lo := bits.Mul64(ts&(1<<e-1), 1e9)
			ns = hi<<(64-e) | lo>>e
		}
		return time.Unix(int64(sec), int64(ns)).UTC()
	}
	if e > 19 {
		return time.Unix(0, 0).UTC()
	}
	p := uint64(1)
	for i := uint(0); i < e; i++ {
		p *= 10
	}
	sec, frac := ts/p, ts%p
	if e <= 9 {
		for i := e; i < 9; i++ {
			frac *= 10
		}
		ns = frac
	} else {
		for i := uint(9); i < e; i++ {
			frac /= 10
		}
		ns = frac
	}
	return time.Unix(int64(sec), int64(ns)).UTC()
}

type ngState struct {
	ifaces []ngIface
}

// readBlock reads one block: its type and its body (after type and
// length, before the trailing length), in pr.buf.
func (pr *Reader) readBlock() (uint32, []byte, error) {
	var h [8]byte
	if _, err := io.ReadFull(pr.r, h[:]); err != nil {
		if err == io.EOF {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("pcapng block header: %w", err)
	}
	typ := pr.order.Uint32(h[:])
	if typ == ngSHB {
		// A new section may change the byte order: peek at its magic.
		bom, err := pr.r.Peek(4)
		if err != nil {
			return 0, nil, fmt.Errorf("pcapng section: %w", err)
		}
		switch {
		case binary.LittleEndian.Uint32(bom) == ngBOM:
			pr.order = binary.LittleEndian
		case binary.BigEndian.Uint32(bom) == ngBOM:
			pr.order = binary.BigEndian
		default:
			return 0, nil, fmt.Errorf("pcapng byte-order magic %x: %w", bom, ErrFormat)
		}
	}
	n := pr.order.Uint32(h[4:])
	if n < 12 || n%4 != 0 || n > ngMaxBlock {
		return 0, nil, fmt.Errorf("pcapng block type %d length %d: %w", typ, n, ErrFormat)
	}
	body := pr.buf[:n-8]
	if _, err := io.ReadFull(pr.r, body); err != nil {
		return 0, nil, fmt.Errorf("pcapng block: %w", io.ErrUnexpectedEOF)
	}
	if pr.order.Uint32(body[len(body)-4:]) != n {
		return 0, nil, fmt.Errorf("pcapng block type %d: trailing length differs: %w", typ, ErrFormat)
	}
	return typ, body[:len(body)-4], nil
}

// ngStart is called after the first 4 bytes showed an SHB; the whole file
// is re-read from the start through readBlock.
func (pr *Reader) ngStart(first [fileHdrLen]byte) error {
	pr.ng = &ngState{}
	pr.order = binary.LittleEndian
	if binary.BigEndian.Uint32(first[8:]) == ngBOM {
		pr.order = binary.BigEndian
	} else if binary.LittleEndian.Uint32(first[8:]) != ngBOM {
		return fmt.Errorf("pcapng byte-order magic: %w", ErrFormat)
	}
	// Read blocks until the first interface is known, so LinkType is set.
	for len(pr.ng.ifaces) == 0 {
		typ, body, err := pr.readBlock()
		if err != nil {
			if err == io.EOF {
				return fmt.Errorf("pcapng without an interface: %w", ErrFormat)
			}
			return err
		}
		if err := pr.ngMeta(typ, body); err != nil {
			return err
		}
		if typ == ngEPB || typ == ngSPB {
			return fmt.Errorf("pcapng packet before any interface: %w", ErrFormat)
		}
	}
	pr.LinkType = pr.ng.ifaces[0].link
	pr.Nano = true
	return nil
}

// ngMeta handles section and interface blocks.
func (pr *Reader) ngMeta(typ uint32, body []byte) error {
	switch typ {
	case ngSHB:
		pr.ng.ifaces = pr.ng.ifaces[:0]
	case ngIDB:
		if len(body) < 8 {
			return fmt.Errorf("pcapng interface block: %w", ErrFormat)
		}
		ifc := ngIface{link: uint32(pr.order.Uint16(body)), tsres: 6}
		opts := body[8:]
		for len(opts) >= 4 {
			code, l := pr.order.Uint16(opts), int(pr.order.Uint16(opts[2:]))
			if code == 0 || 4+l > len(opts) {
				break
			}
			if code == 9 && l >= 1 { // if_tsresol
				ifc.tsres = opts[4]
			}
			opts = opts[4+(l+3)/4*4:]
		}
		if len(pr.ng.ifaces) > 0 && ifc.link != pr.ng.ifaces[0].link {
			return fmt.Errorf("pcapng interfaces of link types %d and %d in one file (split it with editcap)", pr.ng.ifaces[0].link, ifc.link)
		}
		if len(pr.ng.ifaces) >= 256 {
			return fmt.Errorf("pcapng with more than 256 interfaces: %w", ErrFormat)
		}
		pr.ng.ifaces = append(pr.ng.ifaces, ifc)
	}
	return nil
}

// ngNext returns the next packet of a pcapng file.
func (pr *Reader) ngNext() (Record, error) {
	for {
		typ, body, err := pr.readBlock()
		if err != nil {
			return Record{}, err
		}
		switch typ {
		case ngEPB:
			if len(body) < 20 {
				return Record{}, fmt.Errorf("pcapng packet block: %w", ErrFormat)
			}
			id := pr.order.Uint32(body)
			if int(id) >= len(pr.ng.ifaces) {
				return Record{}, fmt.Errorf("pcapng packet on interface %d of %d: %w", id, len(pr.ng.ifaces), ErrFormat)
			}
			ts := uint64(pr.order.Uint32(body[4:]))<<32 | uint64(pr.order.Uint32(body[8:]))
			capLen, orig := pr.order.Uint32(body[12:]), pr.order.Uint32(body[16:])
			if uint64(capLen) > uint64(len(body)-20) {
				return Record{}, fmt.Errorf("pcapng packet of %d bytes in a %d-byte block: %w", capLen, len(body), ErrFormat)
			}
			pr.n++
			t := ngTime(ts, pr.ng.ifaces[id].tsres)
			return Record{Time: t, OrigLen: int(orig), Data: body[20 : 20+capLen]}, nil
		case ngSPB:
			if len(body) < 4 || len(pr.ng.ifaces) == 0 {
				return Record{}, fmt.Errorf("pcapng simple packet block: %w", ErrFormat)
			}
			orig := pr.order.Uint32(body)
			data := body[4:]
			if uint64(orig) < uint64(len(data)) {
				data = data[:orig]
			}
			pr.n++
			return Record{OrigLen: int(orig), Data: data}, nil
		default:
			if err := pr.ngMeta(typ, body); err != nil {
				return Record{}, err
			}
		}
	}
}
