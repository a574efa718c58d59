package ipsec

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/espep/espep/ipsec/header"
)

// Hostile input: packets that look valid with one field wrong. Open and
// Decrypt must refuse them with an error — never panic — and may accept
// only a packet whose authenticated bytes are a genuine packet's.

// TestAHLengthField: every value of the AH Payload Len field. One
// unauthenticated packet with a length of 18 or more once made the ICV
// computation slice past a fixed buffer and crash the process.
func TestAHLengthField(t *testing.T) {
	for _, s := range suites[11:] {
		for _, v6 := range []bool{false, true} {
			for _, mode := range []Mode{Transport, Tunnel} {
				c := s.config(mode, false, v6, false)
				c.ReplayWindow = -1
				w := mustSA(t, c)
				src, dst := v4a, v4b
				if v6 {
					src, dst = v6a, v6b
				}
				wire := sealOne(t, w, tcpPacket(src, dst, make([]byte, 300)))
				l, err := Locate(wire)
				if err != nil {
					t.Fatal(err)
				}
				rc := c
				rc.Class, rc.IntegKey = ClassRead, nil
				r, err := NewReader(rc)
				if err != nil {
					t.Fatal(err)
				}
				for v := range 256 {
					p := append([]byte(nil), wire...)
					p[l.Off+1] = byte(v)
					_, openErr := w.Open(append([]byte(nil), p...))
					_, readErr := r.Decrypt(make([]byte, 0, len(p)), p)
					if byte(v) == wire[l.Off+1] {
						if openErr != nil || readErr != nil {
							t.Fatalf("%s v6=%v %v: the genuine packet: %v, %v", s.name, v6, mode, openErr, readErr)
						}
						continue
					}
					if openErr == nil {
						t.Fatalf("%s v6=%v %v: ah length field %d opened", s.name, v6, mode, v)
					}
				}
			}
		}
	}
}

// mutations are the values each header byte is set to in turn.
func mutations(v byte) []byte {
	return []byte{0, 1, 2, 0x3f, 0x7f, 0x80, 0xfe, 0xff, v + 1, v - 1, v ^ 0x80}
}

// TestHostileHeaderFields: every byte of the outer headers of a sealed
// packet — IP header, IPv6 extension headers, UDP, ESP or AH, IV — set to
// edge values, one at a time, for every transform, mode, family and
// encapsulation: Open never panics, and whatever it accepts yields the
// original packet (only unauthenticated fields such as the TTL may
// change and still open). The read-class decrypter never panics either.
func TestHostileHeaderFields(t *testing.T) {
	n := 0
	for _, s := range suites {
		for _, mode := range []Mode{Transport, Tunnel} {
			for _, v6 := range []bool{false, true} {
				for _, udp := range []bool{false, true} {
					if udp && s.proto == AH {
						continue
					}
					c := s.config(mode, udp, v6, false)
					c.ReplayWindow = -1
					w := mustSA(t, c)
					var r *ReadSA
					if !s.enc.AEAD() {
						rc := c
						rc.Class, rc.IntegKey = ClassRead, nil
						var err error
						if r, err = NewReader(rc); err != nil {
							t.Fatal(err)
						}
					}
					src, dst := v4a, v4b
					if v6 {
						src, dst = v6a, v6b
					}
					pkt := tcpPacket(src, dst, []byte("hostile header fields"))
					if v6 && mode == Transport {
						pkt = withHopByHop(pkt)
					}
					wire := sealOne(t, w, pkt)
					l, err := Locate(wire)
					if err != nil {
						t.Fatal(err)
					}
					end := min(l.Off+header.ESPLen+16, len(wire))
					for i := 0; i < end; i++ {
						for _, v := range mutations(wire[i]) {
							if v == wire[i] {
								continue
							}
							p := append([]byte(nil), wire...)
							p[i] = v
							name := fmt.Sprintf("%s %v v6=%v udp=%v byte %d = %#x", s.name, mode, v6, udp, i, v)
							got, err := w.Open(append([]byte(nil), p...))
							if err == nil && !bytes.Equal(got, pkt) && !(mode == Transport && sameButMutable(got, pkt)) {
								t.Fatalf("%s: opened to something else:\n got  %x\n want %x", name, got, pkt)
							}
							if r != nil {
								r.Decrypt(make([]byte, 0, len(p)), p)
							}
							n++
						}
					}
				}
			}
		}
	}
	t.Logf("%d mutated packets", n)
}

// sameButMutable reports whether a transport-mode packet that opened
// carries the original upper layer: ESP authenticates nothing of the IP
// header in front of it (RFC 4303 §3.1.1), and AH not its mutable fields,
// so a mutated ID, TTL or address there comes back as sent.
func sameButMutable(got, want []byte) bool {
	lg, err1 := Locate(got)
	lw, err2 := Locate(want)
	return err1 == nil && err2 == nil && lg.Off == lw.Off && bytes.Equal(got[lg.Off:], want[lw.Off:])
}

// sealBody seals an arbitrary ESP body — what should be payload ‖ padding
// ‖ pad length ‖ next header, here anything — with a valid ICV, so that
// what is wrong is only what the decrypted trailer and inner packet say.
func sealBody(t testing.TB, sa *SA, body []byte, seq uint32) []byte {
	t.Helper()
	c := sa.out.c
	ivLen, icv := c.ivLen(), c.icvLen()
	if r := len(body) % c.align(); r != 0 {
		body = append(body, make([]byte, c.align()-r)...)
	}
	hl := header.IPv4MinLen
	e := make([]byte, header.ESPLen+ivLen+len(body)+icv)
	header.WriteESP(e, sa.cfg.SPI, seq)
	for i := range ivLen {
		e[header.ESPLen+i] = byte(i + int(seq))
	}
	copy(e[header.ESPLen+ivLen:], body)
	c.seal(e, header.ESPLen+ivLen+len(body), 0, false)
	pkt := make([]byte, hl+len(e))
	header.WriteIPv4(pkt, 0, len(pkt), 1, true, 64, header.ProtoESP, sa.cfg.Src, sa.cfg.Dst)
	copy(pkt[hl:], e)
	return pkt
}

// TestHostileTrailer: verified packets whose decrypted trailer or inner
// packet is wrong — every pad length, next headers that name nothing, an
// inner IP header whose lengths lie, an empty payload — are refused with
// an error, in either mode.
func TestHostileTrailer(t *testing.T) {
	inner := tcpPacket(v4a, v4b, []byte("inner"))
	bodies := map[string][]byte{}
	for _, pad := range []int{0, 1, 2, 3, 14, 15, 16, 200, 254, 255} {
		b := append(append([]byte(nil), inner...), byte(pad), header.ProtoIPIP)
		bodies[fmt.Sprintf("pad length %d", pad)] = b
	}
	for _, next := range []uint8{0, header.ProtoNoNext, header.ProtoTCP, header.ProtoIPv6, 255} {
		bodies[fmt.Sprintf("next header %d", next)] = append(append([]byte(nil), inner...), 0, next)
	}
	short := append([]byte(nil), inner...)
	header.IPv4(short).SetTotalLen(len(inner) + 100)
	bodies["inner length beyond the payload"] = append(short, 0, header.ProtoIPIP)
	bodies["inner header length 0"] = append([]byte{0x40, 0, 0, 20}, append(inner[4:], 0, header.ProtoIPIP)...)
	bodies["only a trailer"] = []byte{0, header.ProtoIPIP}
	bodies["two bytes of ipv6"] = []byte{0x60, 0, 0, header.ProtoIPv6}
	for _, s := range suites[:11] {
		for _, mode := range []Mode{Transport, Tunnel, ModeAny} {
			c := s.config(mode, false, false, false)
			c.ReplayWindow = -1
			w := mustSA(t, c)
			for name, b := range bodies {
				p := sealBody(t, w, b, 7)
				got, err := w.Open(p)
				if err == nil {
					if len(got) < header.IPv4MinLen || (got[0]>>4 != 4 && got[0]>>4 != 6) {
						t.Errorf("%s %v %s: opened to %x", s.name, mode, name, got)
					}
				} else if errors.Is(err, ErrICV) {
					t.Errorf("%s %v %s: the raw seal is wrong: %v", s.name, mode, name, err)
				}
			}
		}
	}
}

// FuzzOpenBody seals whatever body the fuzzer makes (a trailer and inner
// packet of its choosing, with a valid ICV) on each ESP transform and
// mode, and opens it: no panic, and what opens is an IP packet within
// the buffer (its inside is the receiver's to judge: an inner extension
// header chain that does not parse still opens).
func FuzzOpenBody(f *testing.F) {
	inner := tcpPacket(v4a, v4b, []byte("seed"))
	f.Add(append(append([]byte(nil), inner...), 0, header.ProtoIPIP), uint8(0))
	f.Add(append(append([]byte(nil), inner[20:]...), 2, 1, 2, header.ProtoTCP), uint8(5))
	f.Add([]byte{0xff, 0xff}, uint8(9))
	var sas []*SA
	for _, s := range suites[:11] {
		for _, mode := range []Mode{Transport, Tunnel, ModeAny} {
			c := s.config(mode, false, false, false)
			c.ReplayWindow = -1
			sas = append(sas, mustSA(f, c))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		if len(body) < 2 || len(body) > 4000 {
			return
		}
		sa := sas[int(which)%len(sas)]
		p := sealBody(t, sa, body, 1)
		got, err := sa.Open(p)
		if err == nil {
			if len(got) < header.IPv4MinLen || (got[0]>>4 != 4 && got[0]>>4 != 6) || payloadOffset(p, got) < 0 {
				t.Fatalf("opened to %x", got)
			}
		} else if errors.Is(err, ErrICV) {
			t.Fatalf("raw seal: %v", err)
		}
	})
}

// TestESNLateStart: a receiver that meets an ESN SA after the sender
// passed 2^32 packets (a gateway started late) finds the high half on the
// first packet and opens everything after; a packet nobody can verify
// searches at most once per esnSearchGap.
func TestESNLateStart(t *testing.T) {
	for _, s := range []suite{suites[0], suites[3], suites[4], suites[11]} {
		c := s.config(Tunnel, false, false, true)
		now := time.Unix(1000, 0)
		c.Clock = func() time.Time { return now }
		tx, rx := mustSA(t, c), mustSA(t, c)
		tx.SetOutSeq(5<<32 + 100)
		pkt := tcpPacket(v4a, v4b, []byte("late"))
		for i := range 3 {
			got, err := rx.Open(sealOne(t, tx, pkt))
			if err != nil || !bytes.Equal(got, pkt) {
				t.Fatalf("%s: packet %d: %v", s.name, i, err)
			}
		}
		if top := rx.InTop(); top != 5<<32+103 {
			t.Fatalf("%s: window top %#x", s.name, top)
		}

		// Before anything verified, a forged packet searches once; the
		// next within the gap does not, so a genuine one must wait.
		rx2 := mustSA(t, c)
		bad := sealOne(t, tx, pkt)
		l, _ := Locate(bad)
		bad[len(bad)-1] ^= 1
		if _, err := rx2.Open(bad); !errors.Is(err, ErrICV) {
			t.Fatalf("%s: forged: %v", s.name, err)
		}
		good := sealOne(t, tx, pkt)
		if _, err := rx2.Open(append([]byte(nil), good...)); !errors.Is(err, ErrICV) {
			t.Fatalf("%s: searched again within the gap: %v", s.name, err)
		}
		now = now.Add(esnSearchGap)
		if _, err := rx2.Open(good); err != nil {
			t.Fatalf("%s: after the gap: %v (seq %d)", s.name, err, l.Seq)
		}
	}
}
