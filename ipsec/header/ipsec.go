package header

import (
	"encoding/binary"
	"fmt"
)

// ESP header (RFC 4303 §2), as it appears on the wire before the IV:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|               Security Parameters Index (SPI)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                      Sequence Number                          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    IV, Payload Data, Padding, Pad Length,     |
//	|                    Next Header, ICV ...                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

// ESPLen is the length of the fixed ESP header (SPI and sequence number).
const ESPLen = 8

// ESP is a view of an ESP packet starting at the SPI.
type ESP []byte

// ParseESP checks that b holds at least the fixed ESP header and that the
// SPI is not one of the values RFC 4303 §2.1 reserves (0 is also the RFC
// 3948 non-ESP marker).
func ParseESP(b []byte) (ESP, error) {
	if len(b) < ESPLen {
		return nil, fmt.Errorf("esp header: %d bytes: %w", len(b), ErrTruncated)
	}
	if spi := binary.BigEndian.Uint32(b); spi < 256 {
		return nil, fmt.Errorf("esp header: reserved spi %d: %w", spi, ErrMalformed)
	}
	return ESP(b), nil
}

func (e ESP) SPI() uint32 { return binary.BigEndian.Uint32(e) }
func (e ESP) Seq() uint32 { return binary.BigEndian.Uint32(e[4:]) }

// AH header (RFC 4302 §2):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| Next Header   |  Payload Len  |          RESERVED             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 Security Parameters Index (SPI)               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Sequence Number Field                      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                Integrity Check Value-ICV (variable)           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

// AHFixedLen is the length of the AH header before the ICV.
const AHFixedLen = 12

// AH is a view of an AH header (and what follows it).
type AH []byte

// ParseAH checks that b holds a whole AH header as its Payload Len says.
func ParseAH(b []byte) (AH, error) {
	if len(b) < AHFixedLen {
		return nil, fmt.Errorf("ah header: %d bytes: %w", len(b), ErrTruncated)
	}
	n := (int(b[1]) + 2) * 4
	if n < AHFixedLen || n > len(b) {
		return nil, fmt.Errorf("ah header: length %d of %d bytes: %w", n, len(b), ErrMalformed)
	}
	if spi := binary.BigEndian.Uint32(b[4:]); spi < 256 {
		return nil, fmt.Errorf("ah header: reserved spi %d: %w", spi, ErrMalformed)
	}
	return AH(b), nil
}

func (a AH) NextHeader() uint8 { return a[0] }
func (a AH) Len() int          { return (int(a[1]) + 2) * 4 }
func (a AH) SPI() uint32       { return binary.BigEndian.Uint32(a[4:]) }
func (a AH) Seq() uint32       { return binary.BigEndian.Uint32(a[8:]) }
func (a AH) ICV() []byte       { return a[AHFixedLen:a.Len()] }
func (a AH) Payload() []byte   { return a[a.Len():] }

// WriteAH writes an AH header of total length n (a multiple of 4) with a
// zeroed ICV field.
func WriteAH(b []byte, next uint8, n int, spi, seq uint32) {
	b[0] = next
	b[1] = uint8(n/4 - 2)
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:], spi)
	binary.BigEndian.PutUint32(b[8:], seq)
	clear(b[AHFixedLen:n])
}

// WriteESP writes the fixed ESP header.
func WriteESP(b []byte, spi, seq uint32) {
	binary.BigEndian.PutUint32(b, spi)
	binary.BigEndian.PutUint32(b[4:], seq)
}
