package header

import (
	"encoding/binary"
	"fmt"
)

//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          Source Port          |       Destination Port        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                        Sequence Number                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Acknowledgment Number                      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Data |       |C|E|U|A|P|R|S|F|                               |
//	| Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|           Checksum            |         Urgent Pointer        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Options (0-40 bytes)                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	                     RFC 9293 §3.1

// TCPMinLen is the length of a TCP header without options.
const TCPMinLen = 20

// TCP flags.
const (
	TCPFin = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
)

// TCP is a view of a TCP segment, header first.
type TCP []byte

// ParseTCP checks that b holds a whole TCP header as its data offset says.
func ParseTCP(b []byte) (TCP, error) {
	if len(b) < TCPMinLen {
		return nil, fmt.Errorf("tcp header: %d bytes: %w", len(b), ErrTruncated)
	}
	off := int(b[12]>>4) * 4
	if off < TCPMinLen || off > len(b) {
		return nil, fmt.Errorf("tcp header: data offset %d of %d bytes: %w", off, len(b), ErrMalformed)
	}
	return TCP(b), nil
}

func (t TCP) SrcPort() uint16    { return binary.BigEndian.Uint16(t) }
func (t TCP) DstPort() uint16    { return binary.BigEndian.Uint16(t[2:]) }
func (t TCP) Seq() uint32        { return binary.BigEndian.Uint32(t[4:]) }
func (t TCP) Ack() uint32        { return binary.BigEndian.Uint32(t[8:]) }
func (t TCP) HeaderLen() int     { return int(t[12]>>4) * 4 }
func (t TCP) Flags() uint8       { return t[13] }
func (t TCP) Window() uint16     { return binary.BigEndian.Uint16(t[14:]) }
func (t TCP) Checksum() uint16   { return binary.BigEndian.Uint16(t[16:]) }
func (t TCP) Options() []byte    { return t[TCPMinLen:t.HeaderLen()] }
func (t TCP) Payload() []byte    { return t[t.HeaderLen():] }
func (t TCP) SetSeq(v uint32)    { binary.BigEndian.PutUint32(t[4:], v) }
func (t TCP) SetAck(v uint32)    { binary.BigEndian.PutUint32(t[8:], v) }
func (t TCP) SetFlags(f uint8)   { t[13] = f }
func (t TCP) SetWindow(w uint16) { binary.BigEndian.PutUint16(t[14:], w) }

// SetChecksum sets the checksum field.
func (t TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(t[16:], c) }

// Has reports whether every flag in f is set.
func (t TCP) Has(f uint8) bool { return t[13]&f == f }

// UpdateChecksum computes the checksum over the segment and the pseudo
// header of src and dst (4 or 16 bytes each).
func (t TCP) UpdateChecksum(src, dst []byte) {
	t[16], t[17] = 0, 0
	binary.BigEndian.PutUint16(t[16:], ^Checksum(t, PseudoHeaderSum(src, dst, ProtoTCP, len(t))))
}

// SetPartialChecksum sets the checksum field to the pseudo header's sum
// alone, folded and not complemented: a checksum left partial, as
// VIRTIO_NET_HDR_F_NEEDS_CSUM asks of a packet (csum_start at the TCP
// header, csum_offset 16), which whoever completes it — the kernel, a
// NIC, CompleteChecksum — finishes by summing the segment from its first
// byte. It costs the pseudo header, not the payload.
func (t TCP) SetPartialChecksum(src, dst []byte) {
	binary.BigEndian.PutUint16(t[16:], Checksum(nil, PseudoHeaderSum(src, dst, ProtoTCP, len(t))))
}

// CompleteChecksum completes a checksum SetPartialChecksum left partial:
// afterwards the segment has the checksum UpdateChecksum gives it.
func (t TCP) CompleteChecksum() {
	binary.BigEndian.PutUint16(t[16:], ^Checksum(t, 0))
}

// CompleteTCPIn is CompleteChecksum for the TCP segment that IP packet
// pkt carries right after its header: IPv4 (options allowed) or IPv6
// without extension headers. It reports false, changing nothing, for any
// other packet.
func CompleteTCPIn(pkt []byte) bool {
	l4 := 0
	switch {
	case len(pkt) >= IPv4MinLen && pkt[0]>>4 == 4 && pkt[9] == ProtoTCP:
		l4 = IPv4(pkt).HeaderLen()
	case len(pkt) >= IPv6Len && pkt[0]>>4 == 6 && pkt[6] == ProtoTCP:
		l4 = IPv6Len
	}
	if l4 < IPv4MinLen || len(pkt) < l4+TCPMinLen {
		return false
	}
	TCP(pkt[l4:]).CompleteChecksum()
	return true
}

// ChecksumValid reports whether the checksum over the segment and pseudo
// header is correct.
func (t TCP) ChecksumValid(src, dst []byte) bool {
	return Checksum(t, PseudoHeaderSum(src, dst, ProtoTCP, len(t))) == 0xffff
}

// TCP option kinds (IANA).
const (
	TCPOptEnd       = 0
	TCPOptNop       = 1
	TCPOptMSS       = 2
	TCPOptWS        = 3
	TCPOptSACKPerm  = 4
	TCPOptSACK      = 5
	TCPOptTimestamp = 8
)

// SACKBlock is one SACK block [Start, End).
type SACKBlock struct{ Start, End uint32 }

// TCPOptions are the options espep's engine reads. Has* say which were
// present.
type TCPOptions struct {
	MSS           uint16
	WS            uint8
	HasMSS, HasWS bool
	SACKPermitted bool
	HasTS         bool
	TSVal, TSEcr  uint32
	SACK          [4]SACKBlock
	NSACK         int
}

// ParseTCPOptions parses an option list (RFC 9293 §3.1, RFC 7323, RFC
// 2018). Unknown options are skipped; malformed lengths are an error.
// Window scale is clamped to 14 (RFC 7323 §2.3).
func ParseTCPOptions(b []byte, o *TCPOptions) error {
	*o = TCPOptions{}
	for i := 0; i < len(b); {
		kind := b[i]
		switch kind {
		case TCPOptEnd:
			return nil
		case TCPOptNop:
			i++
			continue
		}
		if i+1 >= len(b) {
			return fmt.Errorf("tcp option %d at %d: %w", kind, i, ErrTruncated)
		}
		l := int(b[i+1])
		if l < 2 || i+l > len(b) {
			return fmt.Errorf("tcp option %d at %d: length %d: %w", kind, i, l, ErrMalformed)
		}
		v := b[i+2 : i+l]
		switch kind {
		case TCPOptMSS:
			if l != 4 {
				return fmt.Errorf("tcp mss option length %d: %w", l, ErrMalformed)
			}
			o.MSS, o.HasMSS = binary.BigEndian.Uint16(v), true
		case TCPOptWS:
			if l != 3 {
				return fmt.Errorf("tcp window scale option length %d: %w", l, ErrMalformed)
			}
			o.WS, o.HasWS = min(v[0], 14), true
		case TCPOptSACKPerm:
			if l != 2 {
				return fmt.Errorf("tcp sack-permitted option length %d: %w", l, ErrMalformed)
			}
			o.SACKPermitted = true
		case TCPOptTimestamp:
			if l != 10 {
				return fmt.Errorf("tcp timestamp option length %d: %w", l, ErrMalformed)
			}
			o.HasTS, o.TSVal, o.TSEcr = true, binary.BigEndian.Uint32(v), binary.BigEndian.Uint32(v[4:])
		case TCPOptSACK:
			if (l-2)%8 != 0 {
				return fmt.Errorf("tcp sack option length %d: %w", l, ErrMalformed)
			}
			for j := 0; j+8 <= len(v) && o.NSACK < len(o.SACK); j += 8 {
				o.SACK[o.NSACK] = SACKBlock{binary.BigEndian.Uint32(v[j:]), binary.BigEndian.Uint32(v[j+4:])}
				o.NSACK++
			}
		}
		i += l
	}
	return nil
}
