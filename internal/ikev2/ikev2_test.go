package ikev2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// strongswan reads the messages recorded from two strongSwan peers
// (testdata/strongswan; internal/testbed TestStrongSwanIKE): IKE_SA_INIT,
// IKE_AUTH, a CREATE_CHILD_SA rekey of the CHILD_SA and the DELETE of the
// old one, each request and response.
func strongswan(t testing.TB) [][]byte {
	t.Helper()
	paths, err := filepath.Glob("testdata/strongswan/msg*.bin")
	if err != nil || len(paths) != 8 {
		t.Fatalf("%d recorded messages, %v", len(paths), err)
	}
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// TestStrongSwanMessages: every message strongSwan sent parses, in the
// order of the exchanges, and what a gateway following IKE reads of each
// is there: IKE_SA_INIT's proposals (AES-CBC-128, HMAC-SHA-256, X25519 —
// the peers' aes128-sha256-x25519), its KE of group 31 and 32 bytes, its
// nonces; after it, everything is in an SK payload whose IV and checksum
// split off for those transforms. Each round-trips byte for byte.
func TestStrongSwanMessages(t *testing.T) {
	msgs := strongswan(t)
	want := []struct {
		exchange uint8
		response bool
	}{{ExchangeSAInit, false}, {ExchangeSAInit, true}, {ExchangeAuth, false}, {ExchangeAuth, true},
		{ExchangeCreateChild, false}, {ExchangeCreateChild, true}, {ExchangeInformation, false}, {ExchangeInformation, true}}
	var spii uint64
	for i, b := range msgs {
		m, err := Parse(b)
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		if m.Exchange != want[i].exchange || m.Response() != want[i].response {
			t.Fatalf("message %d: exchange %d response %v, want %d %v", i+1, m.Exchange, m.Response(), want[i].exchange, want[i].response)
		}
		if i == 0 {
			spii = m.SPIi
		} else if m.SPIi != spii || m.SPIr == 0 {
			t.Fatalf("message %d: SPIs %#x %#x, the IKE SA's initiator SPI %#x", i+1, m.SPIi, m.SPIr, spii)
		}
		again, err := m.Append(nil)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("message %d does not round-trip: %v", i+1, err)
		}
		if m.Exchange == ExchangeSAInit {
			saInit(t, i+1, &m)
			continue
		}
		sk, ok := m.Find(PayloadSK)
		if !ok || len(m.Payloads) != 1 {
			t.Fatalf("message %d: payloads %v, want one SK", i+1, types(m.Payloads))
		}
		// AES-CBC: a 16-byte IV, ciphertext in whole blocks; HMAC-SHA-256-128: a 16-byte checksum.
		iv, ct, icv, err := SplitSK(sk.Body, 16, 16)
		if err != nil || len(iv) != 16 || len(icv) != 16 || len(ct)%16 != 0 || len(ct) == 0 {
			t.Fatalf("message %d: SK of %d bytes: iv %d, ciphertext %d, icv %d, %v", i+1, len(sk.Body), len(iv), len(ct), len(icv), err)
		}
	}
}

func saInit(t *testing.T, n int, m *Message) {
	t.Helper()
	sa, ok := m.Find(PayloadSA)
	if !ok {
		t.Fatalf("message %d: no SA payload: %v", n, types(m.Payloads))
	}
	props, err := ParseSA(sa.Body)
	if err != nil || len(props) != 1 || props[0].Protocol != ProtoIKE || len(props[0].SPI) != 0 {
		t.Fatalf("message %d: proposals %+v, %v", n, props, err)
	}
	for _, x := range []struct {
		typ  uint8
		id   uint16
		bits int
	}{{TransformEncr, 12, 128}, {TransformPRF, 5, 0}, {TransformInteg, 12, 0}, {TransformDH, 31, 0}} { // ENCR_AES_CBC, PRF_HMAC_SHA2_256, AUTH_HMAC_SHA2_256_128, Curve25519
		if tr, ok := props[0].Find(x.typ); !ok || tr.ID != x.id || tr.KeyLength != x.bits {
			t.Errorf("message %d: transform type %d: %+v, want id %d, %d bits", n, x.typ, tr, x.id, x.bits)
		}
	}
	kp, _ := m.Find(PayloadKE)
	if ke, err := ParseKE(kp.Body); err != nil || ke.Group != 31 || len(ke.Data) != 32 {
		t.Errorf("message %d: KE %+v, %v", n, ke, err)
	}
	np, _ := m.Find(PayloadNonce)
	if nonce, err := ParseNonce(np.Body); err != nil || len(nonce) < 16 {
		t.Errorf("message %d: nonce of %d bytes, %v", n, len(np.Body), err)
	}
	nat := 0
	for _, p := range m.Payloads {
		if p.Type == PayloadNotify {
			nt, err := ParseNotify(p.Body)
			if err != nil {
				t.Fatalf("message %d: notify: %v", n, err)
			}
			if nt.Type == NotifyNATDetectionSrcIP || nt.Type == NotifyNATDetectionDstIP {
				nat++
			}
		}
	}
	if nat != 2 {
		t.Errorf("message %d: %d NAT detection notifies", n, nat)
	}
}

func types(ps []Payload) []uint8 {
	var t []uint8
	for _, p := range ps {
		t = append(t, p.Type)
	}
	return t
}

// A CREATE_CHILD_SA request of RFC 7296 §1.3.3's shape, as the payloads
// inside its SK payload: a rekey of an ESP CHILD_SA in transport mode
// with PFS — Notify REKEY_SA (the old SPI), Notify USE_TRANSPORT_MODE, SA
// (ESP, AES-GCM-16-128, ESN off, group 31), Nonce, KE, TSi, TSr; and a
// Delete of two ESP SAs.
func childPayloads(t testing.TB) []byte {
	t.Helper()
	sa := []byte{
		0, 0, 0, 40, 1, ProtoESP, 4, 3, 0xc0, 0x01, 0x02, 0x03, // last proposal, 40 bytes, #1, ESP, 4-byte SPI, 3 transforms
		3, 0, 0, 12, TransformEncr, 0, 0, 20, 0x80, AttrKeyLength, 0, 128, // ENCR_AES_GCM_16, 128 bits
		3, 0, 0, 8, TransformESN, 0, 0, 0,
		0, 0, 0, 8, TransformDH, 0, 0, 31,
	}
	ts := func(a, b string) []byte {
		out := []byte{1, 0, 0, 0, TSIPv4, 6, 0, 16, 0, 0, 0xff, 0xff}
		out = append(out, netip.MustParseAddr(a).AsSlice()...)
		return append(out, netip.MustParseAddr(b).AsSlice()...)
	}
	ke := append([]byte{0, 31, 0, 0}, bytes.Repeat([]byte{7}, 32)...)
	ps := []Payload{
		{Type: PayloadNotify, Next: PayloadNotify, Body: append([]byte{ProtoESP, 4, 0x40, 0x09}, 0xc0, 0xff, 0xee, 0x01)}, // REKEY_SA 16393
		{Type: PayloadNotify, Next: PayloadSA, Body: []byte{0, 0, 0x40, 0x07}},                                            // USE_TRANSPORT_MODE 16391
		{Type: PayloadSA, Next: PayloadNonce, Body: sa},
		{Type: PayloadNonce, Next: PayloadKE, Body: bytes.Repeat([]byte{9}, 32)},
		{Type: PayloadKE, Next: PayloadTSi, Body: ke},
		{Type: PayloadTSi, Next: PayloadTSr, Body: ts("10.0.0.1", "10.0.0.1")},
		{Type: PayloadTSr, Next: PayloadDelete, Body: ts("10.0.0.2", "10.0.0.2")},
		{Type: PayloadDelete, Next: PayloadNone, Body: []byte{ProtoESP, 4, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8}},
	}
	b, first, err := AppendPayloads(nil, ps)
	if err != nil || first != PayloadNotify {
		t.Fatal(err)
	}
	return b
}

// TestChildPayloads: the payloads of a CREATE_CHILD_SA read back as
// written, each typed parser giving what a gateway deriving the CHILD_SA
// needs.
func TestChildPayloads(t *testing.T) {
	ps, err := ParseChain(PayloadNotify, childPayloads(t))
	if err != nil || len(ps) != 8 {
		t.Fatalf("%d payloads, %v", len(ps), err)
	}
	rekey, err := ParseNotify(ps[0].Body)
	if err != nil || rekey.Type != NotifyRekeySA || rekey.Protocol != ProtoESP || binary.BigEndian.Uint32(rekey.SPI) != 0xc0ffee01 {
		t.Fatalf("REKEY_SA %+v, %v", rekey, err)
	}
	if tm, err := ParseNotify(ps[1].Body); err != nil || tm.Type != NotifyUseTransportMode || len(tm.SPI) != 0 {
		t.Fatalf("USE_TRANSPORT_MODE %+v, %v", tm, err)
	}
	props, err := ParseSA(ps[2].Body)
	if err != nil || len(props) != 1 || len(props[0].Transforms) != 3 || binary.BigEndian.Uint32(props[0].SPI) != 0xc0010203 {
		t.Fatalf("SA %+v, %v", props, err)
	}
	if enc, _ := props[0].Find(TransformEncr); enc.ID != 20 || enc.KeyLength != 128 {
		t.Fatalf("encryption %+v", enc)
	}
	if ke, err := ParseKE(ps[4].Body); err != nil || ke.Group != 31 || len(ke.Data) != 32 {
		t.Fatalf("KE %+v, %v", ke, err)
	}
	for i, want := range []string{"10.0.0.1", "10.0.0.2"} {
		sel, err := ParseTS(ps[5+i].Body)
		if err != nil || len(sel) != 1 || sel[0].Start.String() != want || sel[0].End.String() != want || sel[0].Protocol != 6 || sel[0].EndPort != 0xffff {
			t.Fatalf("TS %d: %+v, %v", i, sel, err)
		}
	}
	d, err := ParseDelete(ps[7].Body)
	if err != nil || len(d.SPIs) != 2 || d.Protocol != ProtoESP || !bytes.Equal(d.SPIs[1], []byte{5, 6, 7, 8}) {
		t.Fatalf("Delete %+v, %v", d, err)
	}
}

// TestHostile: every length and count wrong by one, or out of range, is
// an error wrapping ErrMalformed — never a panic, never a read past the
// bytes given.
func TestHostile(t *testing.T) {
	msgs := strongswan(t)
	init := msgs[0]
	bad := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	for cut := range init {
		_, err := Parse(init[:cut])
		bad("cut message", err)
	}
	long := append(append([]byte(nil), init...), 0)
	_, err := Parse(long)
	bad("a byte past the length", err)
	v1 := append([]byte(nil), init...)
	v1[17] = 0x10
	_, err = Parse(v1)
	bad("IKEv1", err)
	m, _ := Parse(init)
	sa, _ := m.Find(PayloadSA)
	for i := 0; i < len(sa.Body); i++ {
		for _, d := range []byte{1, 0xff} {
			b := append([]byte(nil), sa.Body...)
			b[i] += d
			if _, err := ParseSA(b); err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("sa byte %d %+d: %v", i, d, err)
			}
		}
	}
	chain := childPayloads(t)
	for cut := range chain {
		if _, err := ParseChain(PayloadNotify, chain[:cut]); cut > 0 && err == nil {
			t.Fatalf("a chain cut at %d parsed", cut)
		}
	}
	_, err = ParseNonce(make([]byte, 15))
	bad("15-byte nonce", err)
	_, err = ParseNonce(make([]byte, 257))
	bad("257-byte nonce", err)
	_, err = ParseDelete([]byte{ProtoESP, 4, 0, 2, 1, 2, 3, 4})
	bad("delete short of an SPI", err)
	_, err = ParseDelete([]byte{ProtoIKE, 0, 0, 1})
	bad("IKE delete with an SPI count", err)
	_, err = ParseTS([]byte{0, 0, 0, 0})
	bad("no selectors", err)
	_, err = ParseNotify([]byte{3, 8, 0, 1, 1, 2})
	bad("notify SPI past the end", err)
	_, _, _, err = SplitSK(make([]byte, 32), 16, 16)
	bad("SK without ciphertext", err)
	many := bytes.Repeat([]byte{PayloadVendorID, 0, 0, 4}, MaxPayloads+1)
	many[len(many)-4] = 0
	_, err = ParseChain(PayloadVendorID, many)
	bad("too many payloads", err)
}

func FuzzParse(f *testing.F) {
	for _, b := range strongswan(f) {
		f.Add(b)
	}
	hdr := func(first uint8, body []byte) []byte {
		m := make([]byte, HeaderLen, HeaderLen+len(body))
		m[16], m[17], m[18] = first, 0x20, ExchangeCreateChild
		m = append(m, body...)
		binary.BigEndian.PutUint32(m[24:], uint32(len(m)))
		return m
	}
	f.Add(hdr(PayloadNotify, childPayloads(f)))
	f.Add(hdr(PayloadNone, nil))
	f.Add(hdr(PayloadSA, []byte{0, 0, 0, 4}))
	f.Add(hdr(PayloadTSi, []byte{0, 0, 0, 12, 1, 0, 0, 0, TSIPv6, 0, 0, 40}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		again, err := m.Append(nil)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("no round trip: %v", err)
		}
		for _, p := range m.Payloads {
			switch p.Type {
			case PayloadSA:
				ParseSA(p.Body)
			case PayloadKE:
				ParseKE(p.Body)
			case PayloadNonce:
				ParseNonce(p.Body)
			case PayloadNotify:
				ParseNotify(p.Body)
			case PayloadDelete:
				ParseDelete(p.Body)
			case PayloadTSi, PayloadTSr:
				ParseTS(p.Body)
			case PayloadSK:
				SplitSK(p.Body, 16, 16)
				if ps, err := ParseChain(p.Next, p.Body); err == nil {
					AppendPayloads(nil, ps)
				}
			}
		}
	})
}
