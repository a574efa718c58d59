package ipsec

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzConfigs are one SA per kind of framing, shared by the targets.
func fuzzConfigs() []Config {
	var out []Config
	for _, i := range []int{0, 3, 4, 8, 10, 11} {
		for _, mode := range []Mode{Transport, Tunnel} {
			udp := suites[i].proto == ESP && mode == Tunnel
			c := suites[i].config(mode, udp, i%2 == 0, i == 0)
			c.SPI += uint32(len(out))
			c.ReplayWindow = -1
			out = append(out, c)
		}
	}
	return out
}

func fuzzSAs(t testing.TB) []*SA {
	var out []*SA
	for _, c := range fuzzConfigs() {
		out = append(out, mustSA(t, c))
	}
	return out
}

// fuzzSealed returns one packet sealed (deterministically) by each SA.
func fuzzSealed(t testing.TB) [][]byte {
	var out [][]byte
	for _, sa := range fuzzSAs(t) {
		p := tcpPacket(sa.cfg.Src, sa.cfg.Dst, []byte("seed"))
		buf, off := inBuf(p)
		iv := make([]byte, 16)
		if sa.cfg.Enc != EncAESCBC {
			iv = iv[:8]
		}
		if sa.cfg.Enc == EncNull || sa.cfg.Proto == AH {
			iv = nil
		}
		o, err := sa.SealWith(buf, off, len(p), 1, FixedIV(iv))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, append([]byte(nil), o...))
	}
	return out
}

func seedSealed(f *testing.F) {
	for _, p := range fuzzSealed(f) {
		f.Add(p)
	}
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2})
}

// FuzzLocate classifies anything; what it finds must lie in the packet.
func FuzzLocate(f *testing.F) {
	seedSealed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Locate(b)
		if err != nil {
			return
		}
		if l.Len > len(b) {
			t.Fatalf("length %d of %d", l.Len, len(b))
		}
		if (l.Kind == KindESP || l.Kind == KindAH) && (l.Off+8 > l.Len || l.NHOff >= l.HeaderLen() || l.SPI < 256) {
			t.Fatalf("bad location %+v", l)
		}
		if _, err := TrafficOf(b, true); err != nil && l.Kind != KindOther {
			t.Fatalf("Locate parsed what TrafficOf refused: %v", err)
		}
	})
}

// FuzzOpen feeds anything (seeded with real sealed packets) to every SA.
// Open must never panic, and may only succeed on an unmodified packet: a
// fuzzer cannot forge an ICV.
func FuzzOpen(f *testing.F) {
	seedSealed(f)
	sas := fuzzSAs(f)
	sealed := fuzzSealed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, sa := range sas {
			in := append([]byte(nil), b...)
			out, err := sa.Open(in)
			if err != nil {
				continue
			}
			// ESP authenticates from its header on (AH also the IP
			// header's immutable fields): what opened must carry a
			// sealed packet's authenticated bytes.
			l, _ := Locate(b)
			genuine := false
			for _, s := range sealed {
				ls, _ := Locate(s)
				genuine = genuine || bytes.Equal(b[l.Off:l.Len], s[ls.Off:ls.Len])
			}
			if !genuine && !errors.Is(err, ErrDummy) {
				t.Fatalf("forged packet opened: %x -> %x", b, out)
			}
		}
		// the read-class decrypter too
		c := suites[4].config(Tunnel, true, false, false)
		c.Class, c.IntegKey = ClassRead, nil
		r, _ := NewReader(c)
		r.Decrypt(make([]byte, len(b)), b)
	})
}

// FuzzSealOpen seals arbitrary payloads in every framing and opens them.
func FuzzSealOpen(f *testing.F) {
	f.Add([]byte("x"), uint8(0))
	f.Add(make([]byte, 1500), uint8(5))
	cfgs := fuzzConfigs()
	sas := fuzzSAs(f)
	f.Fuzz(func(t *testing.T, payload []byte, which uint8) {
		if len(payload) > 9000 {
			return
		}
		sa := sas[int(which)%len(sas)]
		c := cfgs[int(which)%len(sas)]
		rx := mustSA(t, c)
		p := tcpPacket(c.Src, c.Dst, payload)
		buf, off := inBuf(p)
		out, err := sa.Seal(buf, off, len(p))
		if err != nil {
			t.Fatal(err)
		}
		got, err := rx.Open(out)
		if err != nil || !bytes.Equal(got, p) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
