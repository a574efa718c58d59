package mcast

import (
	"errors"
	"strings"
	"testing"
)

// TestMessageRoundTrip: what Append writes Parse reads back.
func TestMessageRoundTrip(t *testing.T) {
	for _, m := range []Message{
		{Kind: KindProbe, TTLSent: 2, Nonce: 0x0102030405060708, Name: "gw-1", Addr: "10.90.0.2:7700"},
		{Kind: KindAnswer, TTLSent: 3, TTLSeen: 1, Nonce: 1, Name: strings.Repeat("g", MaxName), Addr: strings.Repeat("a", MaxAddr)},
		{Kind: KindAnswer, TTLSent: 255, TTLSeen: 255, Name: "ü", Addr: ""},
	} {
		b, err := m.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(b)
		if err != nil || got != m {
			t.Fatalf("%+v: got %+v, %v", m, got, err)
		}
	}
}

// TestMessageRefused: too long, too short, wrong magic or kind, bad
// lengths, not UTF-8.
func TestMessageRefused(t *testing.T) {
	if _, err := (&Message{Kind: KindProbe, Name: ""}).Append(nil); err == nil {
		t.Fatal("a message without a name written")
	}
	if _, err := (&Message{Kind: KindProbe, Name: strings.Repeat("g", MaxName+1)}).Append(nil); err == nil {
		t.Fatal("a name over the bound written")
	}
	good, _ := (&Message{Kind: KindProbe, TTLSent: 2, Name: "gw", Addr: "a:1"}).Append(nil)
	for name, b := range map[string][]byte{
		"empty":         nil,
		"magic":         append([]byte("EPD2"), good[4:]...),
		"kind":          append(append(append([]byte(nil), good[:4]...), 9), good[5:]...),
		"short":         good[:headerLen],
		"name too long": append(append(append([]byte(nil), good[:7]...), 200), good[8:]...),
		"trailing":      append(append([]byte(nil), good...), 0),
		"addr cut":      good[:len(good)-1],
		"not utf-8":     append(append(append([]byte(nil), good[:headerLen]...), 0xff, 0xfe), good[headerLen+2:]...),
	} {
		if _, err := Parse(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzParse: a datagram from anyone never panics a gateway, and what
// parses writes back to the same bytes.
func FuzzParse(f *testing.F) {
	good, _ := (&Message{Kind: KindProbe, TTLSent: 2, Nonce: 7, Name: "gw-1", Addr: "10.90.0.2:7700"}).Append(nil)
	ans, _ := (&Message{Kind: KindAnswer, TTLSent: 3, TTLSeen: 1, Name: "gw-2", Addr: ""}).Append(nil)
	f.Add(good)
	f.Add(ans)
	f.Add(good[:headerLen+1])
	f.Add([]byte("EPD1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		out, err := m.Append(nil)
		if err != nil || string(out) != string(b) {
			t.Fatalf("%x parsed to %+v, wrote back %x (%v)", b, m, out, err)
		}
	})
}
