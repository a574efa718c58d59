package pcapio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	var b bytes.Buffer
	w, err := NewWriter(&b, LinkEthernet)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1795700000, 123456789).UTC()
	frames := [][]byte{{1, 2, 3}, make([]byte, 1514), {}}
	for i, f := range frames {
		if err := w.Write(t0.Add(time.Duration(i)*time.Millisecond), f, len(f)+i); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	r, err := NewReader(&b)
	if err != nil || r.LinkType != LinkEthernet || !r.Nano {
		t.Fatalf("%v %+v", err, r.Header)
	}
	for i, f := range frames {
		rec, err := r.Next()
		if err != nil || !bytes.Equal(rec.Data, f) || !rec.Time.Equal(t0.Add(time.Duration(i)*time.Millisecond)) || rec.OrigLen != len(f)+i {
			t.Fatalf("record %d: %v %+v", i, err, rec.Time)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

// TestTcpdumpFile reads a capture tcpdump wrote (microseconds, Ethernet).
func TestTcpdumpFile(t *testing.T) {
	f, err := os.Open("../../ipsec/testdata/strongswan/aes128gcm16/cap.pcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := NewReader(f)
	if err != nil || r.LinkType != LinkEthernet || r.Nano {
		t.Fatalf("%v %+v", err, r.Header)
	}
	n := 0
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := IPOffset(r.LinkType, rec.Data); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n < 10 {
		t.Fatalf("%d records", n)
	}
}

func TestBigEndianAndErrors(t *testing.T) {
	h := make([]byte, 24+16+4)
	binary.BigEndian.PutUint32(h, magicMicro)
	binary.BigEndian.PutUint32(h[20:], LinkRaw)
	binary.BigEndian.PutUint32(h[24:], 5)
	binary.BigEndian.PutUint32(h[28:], 7)
	binary.BigEndian.PutUint32(h[32:], 4)
	binary.BigEndian.PutUint32(h[36:], 4)
	r, err := NewReader(bytes.NewReader(h))
	if err != nil || r.LinkType != LinkRaw {
		t.Fatal(err)
	}
	rec, err := r.Next()
	if err != nil || rec.Time != time.Unix(5, 7000).UTC() || len(rec.Data) != 4 {
		t.Fatalf("%v %+v", err, rec)
	}
	if _, err := NewReader(bytes.NewReader([]byte{0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})); !errors.Is(err, ErrFormat) {
		t.Fatalf("broken pcapng: %v", err)
	}
	binary.BigEndian.PutUint32(h[32:], MaxSnapLen+1)
	r, _ = NewReader(bytes.NewReader(h))
	if _, err := r.Next(); !errors.Is(err, ErrFormat) {
		t.Fatalf("huge record: %v", err)
	}
}

func TestIPOffset(t *testing.T) {
	eth := make([]byte, 14+20)
	binary.BigEndian.PutUint16(eth[12:], EtherTypeIPv4)
	if off, po, ok, err := IPOffset(LinkEthernet, eth); off != 14 || po != 12 || !ok || err != nil {
		t.Fatal(off, po, ok, err)
	}
	vlan := make([]byte, 18+20)
	binary.BigEndian.PutUint16(vlan[12:], etherTypeVLAN)
	binary.BigEndian.PutUint16(vlan[16:], EtherTypeIPv6)
	if off, po, ok, err := IPOffset(LinkEthernet, vlan); off != 18 || po != 16 || !ok || err != nil {
		t.Fatal(off, po, ok, err)
	}
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	if _, _, ok, _ := IPOffset(LinkEthernet, arp); ok {
		t.Fatal("arp is not ip")
	}
	if _, _, _, err := IPOffset(LinkEthernet, eth[:10]); err == nil {
		t.Fatal("short frame")
	}
}

// FuzzReader reads anything as a capture: errors, never panics, and never
// returns a record longer than MaxSnapLen.
func FuzzReader(f *testing.F) {
	if b, err := os.ReadFile("../../ipsec/testdata/strongswan/aes128gcm16/cap.pcap"); err == nil {
		f.Add(b[:min(len(b), 600)])
	}
	if b, err := os.ReadFile("testdata/strongswan-aes128gcm16.pcapng"); err == nil {
		f.Add(b[:min(len(b), 900)])
	}
	var b bytes.Buffer
	w, _ := NewWriter(&b, LinkRaw)
	w.Write(time.Unix(1, 2), []byte{0x45, 0, 0, 20}, 0)
	w.Flush()
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := NewReader(bytes.NewReader(in))
		if err != nil {
			return
		}
		for i := 0; i < 1000; i++ {
			rec, err := r.Next()
			if err != nil {
				return
			}
			if len(rec.Data) > MaxSnapLen {
				t.Fatal("record too long")
			}
			IPOffset(r.LinkType, rec.Data)
		}
	})
}

func TestIPOffsetCooked(t *testing.T) {
	sll := make([]byte, 16+40)
	binary.BigEndian.PutUint16(sll[14:], EtherTypeIPv6)
	if off, po, ok, err := IPOffset(LinkLinuxSLL, sll); off != 16 || po != 14 || !ok || err != nil {
		t.Fatal("sll", off, po, ok, err)
	}
	sll2 := make([]byte, 20+20)
	binary.BigEndian.PutUint16(sll2[0:], EtherTypeIPv4)
	if off, po, ok, err := IPOffset(LinkLinuxSLL2, sll2); off != 20 || po != 0 || !ok || err != nil {
		t.Fatal("sll2", off, po, ok, err)
	}
	SetEtherType(sll2, po(t, sll2), 6)
	if binary.BigEndian.Uint16(sll2) != EtherTypeIPv6 {
		t.Fatal("SetEtherType")
	}
	if off, _, ok, _ := IPOffset(LinkRaw, []byte{0x45}); off != 0 || !ok {
		t.Fatal("raw")
	}
	if _, _, _, err := IPOffset(999, sll); err == nil {
		t.Fatal("unknown link type accepted")
	}
}

func po(t *testing.T, f []byte) int {
	_, p, _, err := IPOffset(LinkLinuxSLL2, f)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPcapng reads a pcapng file (written by Wireshark's editcap from a
// tcpdump capture) and finds the same packets and times as in the pcap.
func TestPcapng(t *testing.T) {
	read := func(path string) (uint32, []Record) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r, err := NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		var out []Record
		for {
			rec, err := r.Next()
			if err == io.EOF {
				return r.LinkType, out
			}
			if err != nil {
				t.Fatal(err)
			}
			rec.Data = append([]byte(nil), rec.Data...)
			out = append(out, rec)
		}
	}
	l1, a := read("../../ipsec/testdata/strongswan/aes128gcm16/cap.pcap")
	l2, b := read("testdata/strongswan-aes128gcm16.pcapng")
	if l1 != l2 || len(a) != len(b) || len(a) == 0 {
		t.Fatalf("link %d/%d, %d/%d records", l1, l2, len(a), len(b))
	}
	for i := range a {
		if !bytes.Equal(a[i].Data, b[i].Data) || !a[i].Time.Equal(b[i].Time) || a[i].OrigLen != b[i].OrigLen {
			t.Fatalf("record %d differs: %v %v", i, a[i].Time, b[i].Time)
		}
	}
}

func TestNgTime(t *testing.T) {
	for _, tc := range []struct {
		ts   uint64
		res  uint8
		want time.Time
	}{
		{1795700000123456, 6, time.Unix(1795700000, 123456000)},
		{1795700000123456789, 9, time.Unix(1795700000, 123456789)},
		{17957000001, 1, time.Unix(1795700000, 100000000)},
		{3<<30 | 1<<29, 0x80 | 30, time.Unix(3, 500000000)},
		{5, 0x80, time.Unix(5, 0)},
	} {
		if got := ngTime(tc.ts, tc.res); !got.Equal(tc.want) {
			t.Errorf("ngTime(%d, %#x) = %v, want %v", tc.ts, tc.res, got, tc.want)
		}
	}
}
