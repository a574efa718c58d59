package pcapio

import (
	"encoding/binary"
	"fmt"
)

// EtherType values for IP.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88a8
)

// IPOffset returns where the IP packet starts in a frame of the given link
// type, and the offset of the 16-bit protocol field to rewrite if the IP
// version changes (-1 if the link has none). ok is false for frames that
// carry no IP.
func IPOffset(linkType uint32, frame []byte) (off, protoOff int, ok bool, err error) {
	switch linkType {
	case LinkRaw, LinkIPv4, LinkIPv6:
		return 0, -1, len(frame) > 0, nil
	case LinkEthernet:
		off, protoOff = 14, 12
		for {
			if len(frame) < off {
				return 0, 0, false, fmt.Errorf("ethernet frame of %d bytes: truncated", len(frame))
			}
			et := binary.BigEndian.Uint16(frame[protoOff:])
			if et == etherTypeVLAN || et == etherTypeQinQ {
				protoOff, off = off-2+4, off+4
				continue
			}
			return off, protoOff, et == EtherTypeIPv4 || et == EtherTypeIPv6, nil
		}
	case LinkLinuxSLL:
		if len(frame) < 16 {
			return 0, 0, false, fmt.Errorf("sll frame of %d bytes: truncated", len(frame))
		}
		et := binary.BigEndian.Uint16(frame[14:])
		return 16, 14, et == EtherTypeIPv4 || et == EtherTypeIPv6, nil
	case LinkLinuxSLL2:
		if len(frame) < 20 {
			return 0, 0, false, fmt.Errorf("sll2 frame of %d bytes: truncated", len(frame))
		}
		et := binary.BigEndian.Uint16(frame[0:])
		return 20, 0, et == EtherTypeIPv4 || et == EtherTypeIPv6, nil
	}
	return 0, 0, false, fmt.Errorf("link type %d not supported", linkType)
}

// SetEtherType writes the EtherType for an IP packet of version v at
// protoOff (from IPOffset); protoOff < 0 is a no-op.
func SetEtherType(frame []byte, protoOff int, v uint8) {
	if protoOff < 0 {
		return
	}
	et := uint16(EtherTypeIPv4)
	if v == 6 {
		et = EtherTypeIPv6
	}
	binary.BigEndian.PutUint16(frame[protoOff:], et)
}
