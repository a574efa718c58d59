package ipsec

import (
	"testing"
)

// TestZeroAllocs proves the hot path allocates nothing per packet: seal
// and open for every transform, mode and encapsulation, and the read-class
// decrypt.
func TestZeroAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumented builds allocate")
	}
	for _, s := range suites {
		for _, mode := range []Mode{Transport, Tunnel} {
			for _, udp := range []bool{false, true} {
				if udp && s.proto == AH {
					continue
				}
				for _, esn := range []bool{false, true} {
					c := s.config(mode, udp, false, esn)
					tx, rx := mustSA(t, c), mustSA(t, c)
					pkt := tcpPacket(v4a, v4b, make([]byte, 1000))
					buf := make([]byte, MaxHeadroom+len(pkt)+MaxTailroom)
					var err error
					n := testing.AllocsPerRun(200, func() {
						copy(buf[MaxHeadroom:], pkt)
						var out []byte
						out, err = tx.Seal(buf[:MaxHeadroom+len(pkt)], MaxHeadroom, len(pkt))
						if err == nil {
							_, err = rx.Open(out)
						}
					})
					if err != nil {
						t.Fatalf("%s %v udp=%v: %v", s.name, mode, udp, err)
					}
					if n != 0 {
						t.Errorf("%s %v udp=%v esn=%v: %.1f allocations per seal+open", s.name, mode, udp, esn, n)
					}
				}
			}
		}
	}
	for _, s := range []suite{suites[4], suites[8]} {
		c := s.config(Tunnel, true, false, false)
		tx := mustSA(t, c)
		c.Class, c.IntegKey = ClassRead, nil
		r, err := NewReader(c)
		if err != nil {
			t.Fatal(err)
		}
		pkt := tcpPacket(v4a, v4b, make([]byte, 1000))
		buf, off := inBuf(pkt)
		wire, _ := tx.Seal(buf, off, len(pkt))
		dst := make([]byte, 2048)
		n := testing.AllocsPerRun(200, func() { _, err = r.Decrypt(dst, wire) })
		if err != nil || n != 0 {
			t.Errorf("%s read decrypt: %v, %.1f allocations", s.name, err, n)
		}
	}
	// Locate is on every packet's path too.
	pkt := tcpPacket(v4a, v4b, nil)
	if n := testing.AllocsPerRun(100, func() { Locate(pkt) }); n != 0 {
		t.Errorf("Locate: %.1f allocations", n)
	}
}
