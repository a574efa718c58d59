package secserver

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// toConfig reads an SA off the wire and checks it as the ipsec package
// would build it (keys of the right length, a known transform, a mode its
// addresses allow).
func toConfig(s *pb.SA) (ipsec.Config, error) {
	c := ipsec.Config{SPI: s.GetSpi(), EncKey: clone(s.GetEncKey()), IntegKey: clone(s.GetIntegKey()),
		ESN: s.GetEsn(), ReplayWindow: int(s.GetReplayWindow()),
		Lifetime: ipsec.Lifetime{SoftBytes: s.GetSoftBytes(), HardBytes: s.GetHardBytes(),
			SoftTime: time.Duration(s.GetSoftSeconds()) * time.Second, HardTime: time.Duration(s.GetHardSeconds()) * time.Second}}
	switch s.GetProto() {
	case "esp":
		c.Proto = ipsec.ESP
	case "ah":
		c.Proto = ipsec.AH
	default:
		return c, fmt.Errorf("proto %q: want esp or ah", s.GetProto())
	}
	var ok bool
	if c.Src, ok = netip.AddrFromSlice(s.GetSrc()); !ok {
		return c, fmt.Errorf("source address of %d bytes", len(s.GetSrc()))
	}
	if c.Dst, ok = netip.AddrFromSlice(s.GetDst()); !ok {
		return c, fmt.Errorf("destination address of %d bytes", len(s.GetDst()))
	}
	switch s.GetMode() {
	case "transport":
		c.Mode = ipsec.Transport
	case "tunnel":
		c.Mode = ipsec.Tunnel
	case "any", "":
		c.Mode = ipsec.ModeAny // not said (esp_sa lines): the gateway learns it from verified packets
	default:
		return c, fmt.Errorf("mode %q: want transport, tunnel or any", s.GetMode())
	}
	if s.GetEncapSrcPort() > 0xffff || s.GetEncapDstPort() > 0xffff {
		return c, fmt.Errorf("UDP encapsulation ports %d, %d", s.GetEncapSrcPort(), s.GetEncapDstPort())
	}
	c.EncapSrcPort, c.EncapDstPort = uint16(s.GetEncapSrcPort()), uint16(s.GetEncapDstPort())
	var err error
	if c.Proto == ipsec.ESP {
		if c.Enc, err = ipsec.ParseEnc(s.GetEnc()); err != nil {
			return c, err
		}
	}
	if s.GetInteg() != "" {
		if c.Integ, err = ipsec.ParseInteg(s.GetInteg()); err != nil {
			return c, err
		}
	}
	switch s.GetClass() {
	case pb.Class_CLASS_READ:
		c.Class = ipsec.ClassRead
	case pb.Class_CLASS_WRITE:
		c.Class = ipsec.ClassWrite
	default:
		return c, fmt.Errorf("class %v: an SA that permits no proxy is not uploaded", s.GetClass())
	}
	if c.Class == ipsec.ClassRead {
		if c.Enc.AEAD() {
			return c, fmt.Errorf("class read for %v: an AEAD SA cannot be read without its integrity key", c.Enc)
		}
		clear(c.IntegKey)
		c.IntegKey = nil // what only permits reading is never held whole
	}
	e, err := ipsec.NewEntry(c)
	if err != nil {
		return c, err
	}
	e.Wipe() // built only to check; the store keeps c
	return c, nil
}

// toPB writes c for the wire in class (ClassRead: no integrity key).
func toPB(c *ipsec.Config, class ipsec.Class) *pb.SA {
	s := &pb.SA{Spi: c.SPI, Proto: "esp", Src: c.Src.AsSlice(), Dst: c.Dst.AsSlice(), Mode: c.Mode.String(),
		EncapSrcPort: uint32(c.EncapSrcPort), EncapDstPort: uint32(c.EncapDstPort), Enc: c.Enc.String(),
		EncKey: clone(c.EncKey), Esn: c.ESN, ReplayWindow: int32(c.ReplayWindow),
		SoftBytes: c.Lifetime.SoftBytes, HardBytes: c.Lifetime.HardBytes,
		SoftSeconds: int64(c.Lifetime.SoftTime / time.Second), HardSeconds: int64(c.Lifetime.HardTime / time.Second),
		Class: pb.Class_CLASS_WRITE}
	if c.Proto == ipsec.AH {
		s.Proto, s.Enc = "ah", ""
	}
	if c.Integ != ipsec.IntegNone {
		s.Integ = c.Integ.String()
	}
	if class == ipsec.ClassRead {
		s.Class = pb.Class_CLASS_READ
	} else {
		s.IntegKey = clone(c.IntegKey)
	}
	return s
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}
