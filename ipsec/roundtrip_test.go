package ipsec

import (
	"errors"
	"fmt"
	"testing"
)

// TestRoundTrip seals and opens every transform in every framing and checks
// the packet comes back byte for byte (and differs on the wire).
func TestRoundTrip(t *testing.T) {
	for _, s := range suites {
		for _, mode := range []Mode{Transport, Tunnel} {
			for _, udp := range []bool{false, true} {
				for _, v6 := range []bool{false, true} {
					for _, esn := range []bool{false, true} {
						if udp && s.proto == AH {
							continue
						}
						name := fmt.Sprintf("%s/%v/udp=%v/v6=%v/esn=%v", s.name, mode, udp, v6, esn)
						t.Run(name, func(t *testing.T) {
							c := s.config(mode, udp, v6, esn)
							tx, rx := mustSA(t, c), mustSA(t, c)
							for i, size := range []int{0, 1, 15, 16, 100, 1400} {
								src, dst := c.Src, c.Dst
								if mode == Tunnel { // inner of the other family, too
									src, dst = v4a, v4b
									if i%2 == 1 {
										src, dst = v6a, v6b
									}
								}
								pkt := tcpPacket(src, dst, key(size, byte(i)))
								buf, off := inBuf(pkt)
								sealed, err := tx.Seal(buf, off, len(pkt))
								if err != nil {
									t.Fatalf("seal %d: %v", size, err)
								}
								if got, max := len(sealed), len(pkt)+tx.MaxOverhead(); got > max || got <= len(pkt) {
									t.Errorf("sealed %d bytes from %d, MaxOverhead allows %d", got, len(pkt), max)
								}
								l, err := Locate(sealed)
								if err != nil || (l.Kind != KindESP && l.Kind != KindAH) || l.SPI != c.SPI || (l.UDPOff >= 0) != udp {
									t.Fatalf("locate sealed: %+v %v", l, err)
								}
								wire := append([]byte(nil), sealed...)
								opened, err := rx.Open(wire)
								if err != nil {
									t.Fatalf("open %d: %v", size, err)
								}
								eq(t, "opened", opened, pkt)
								// the same packet again is a replay
								wire = append(wire[:0], sealed...)
								if _, err := rx.Open(wire); !errors.Is(err, ErrReplay) {
									t.Fatalf("replayed packet: err %v, want ErrReplay", err)
								}
							}
						})
					}
				}
			}
		}
	}
}
