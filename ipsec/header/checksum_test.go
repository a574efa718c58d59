package header

import (
	"encoding/binary"
	"math/rand"
	"net/netip"
	"testing"
	"time"
)

// checksumRef is RFC 1071's sum the plain way: 16-bit words, carries
// folded at the end.
func checksumRef(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return uint16(sum)
}

// TestChecksumUpdate: adjusting a checksum for a changed span gives what
// summing the whole region anew gives, for spans at every even offset and
// of every length, regions of odd and even lengths, bytes that make every
// carry; and a region whose checksum did not hold still does not, by the
// same amount.
func TestChecksumUpdate(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for round := 0; round < 3000; round++ {
		n := 8 + r.Intn(120)
		region := make([]byte, n)
		for i := range region {
			region[i] = byte(r.Intn(256))
			if round%3 == 0 {
				region[i] = 0xff
			}
		}
		check := ^Checksum(region, 0) // the field, as if it sat outside the region
		lo := 2 * r.Intn(n/2)
		hi := lo + 2*r.Intn((n-lo)/2+1)
		if hi > n {
			hi = n
		}
		old := append([]byte(nil), region[lo:hi]...)
		for i := lo; i < hi; i++ {
			region[i] = byte(r.Intn(256))
		}
		got, want := ChecksumUpdate(check, old, region[lo:hi]), ^Checksum(region, 0)
		// ~0 and ~0xffff are both a zero sum in one's complement.
		if got != want && !(got|want == 0xffff && got&want == 0) {
			t.Fatalf("round %d: %d bytes, span %d–%d: %#04x, want %#04x", round, n, lo, hi, got, want)
		}
		// Wrong before the change, wrong after.
		if bad := ChecksumUpdate(check^0x0100, old, region[lo:hi]); bad == got {
			t.Fatalf("round %d: a wrong checksum came out right", round)
		}
	}
}

// TestChecksum: the word-wise sum equals the plain one for every length
// up to a few hundred bytes, any initial value, bytes that make every
// carry (all 0xff) and random ones, at every alignment.
func TestChecksum(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	buf := make([]byte, 2000)
	for _, fill := range []string{"ones", "random", "zero"} {
		for i := range buf {
			switch fill {
			case "ones":
				buf[i] = 0xff
			case "random":
				buf[i] = byte(r.Intn(256))
			default:
				buf[i] = 0
			}
		}
		for n := 0; n <= 300; n++ {
			for _, off := range []int{0, 1, 3, 7} {
				for _, init := range []uint32{0, 0xffff, 0x1fffe, 0xffffffff, r.Uint32()} {
					b := buf[off : off+n]
					if got, want := Checksum(b, init), checksumRef(b, init); got != want {
						t.Fatalf("%s, %d bytes at %d, initial %#x: %#04x, want %#04x", fill, n, off, init, got, want)
					}
				}
			}
		}
	}
	// A whole packet, both ways round.
	b := buf[:1500]
	if Checksum(b, 0) != checksumRef(b, 0) {
		t.Fatal("1500 random bytes")
	}
}

// FuzzChecksum: any bytes and initial value sum as the plain way does.
func FuzzChecksum(f *testing.F) {
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint32(0xffffffff))
	f.Add(make([]byte, 67), uint32(1))
	f.Fuzz(func(t *testing.T, b []byte, init uint32) {
		if got, want := Checksum(b, init), checksumRef(b, init); got != want {
			t.Fatalf("%#04x, want %#04x", got, want)
		}
	})
}

// BenchmarkChecksum: 1448 bytes (a segment's payload), the word-wise sum,
// with the plain one timed in the same run for the ratio (x-plain).
func BenchmarkChecksum(b *testing.B) {
	buf := make([]byte, 1448)
	rand.New(rand.NewSource(2)).Read(buf)
	b.SetBytes(int64(len(buf)))
	var sink uint16
	for b.Loop() {
		sink += Checksum(buf, 0)
	}
	fast := b.Elapsed().Seconds() / float64(b.N)
	start := time.Now()
	for range b.N {
		sink += checksumRef(buf, 0)
	}
	ref := time.Since(start).Seconds() / float64(b.N)
	b.ReportMetric(ref/fast, "x-plain")
	_ = sink
}

// TestChecksumsValid: a TCP or UDP packet's checksums over IPv4 and IPv6
// hold as made and fail with a byte changed; a bad IPv4 header checksum
// fails; a UDP datagram without a checksum passes over IPv4 only.
func TestChecksumsValid(t *testing.T) {
	// build makes a TCP or UDP packet over IPv4 or IPv6 (hdr bytes of IP
	// header), its checksums made (a UDP one only if sum).
	build := func(hdr int, proto uint8, sum bool) []byte {
		p := make([]byte, hdr+TCPMinLen+10)
		src, dst := p[12:16], p[16:20]
		if hdr == IPv6Len {
			WriteIPv6(p, 0, 0, len(p)-IPv6Len, proto, 64, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"))
			src, dst = p[8:24], p[24:40]
		} else {
			WriteIPv4(p, 0, len(p), 1, true, 64, proto, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"))
		}
		l4 := p[hdr:]
		if proto == ProtoUDP {
			WriteUDP(l4, 1, 2, len(l4))
			if sum {
				UDP(l4).UpdateChecksum(src, dst)
			}
		} else {
			l4[12] = 5 << 4
			TCP(l4).UpdateChecksum(src, dst)
		}
		return p
	}
	v4 := func(proto uint8, sum bool) []byte { return build(IPv4MinLen, proto, sum) }
	v6 := func(proto uint8, sum bool) []byte { return build(IPv6Len, proto, sum) }
	flip := func(p []byte, i int) []byte { p[i] ^= 0x10; return p }
	for _, c := range []struct {
		name  string
		pkt   []byte
		l4    int
		proto uint8
		want  bool
	}{
		{"ipv4 tcp", v4(ProtoTCP, true), IPv4MinLen, ProtoTCP, true},
		{"ipv4 tcp, payload changed", flip(v4(ProtoTCP, true), 45), IPv4MinLen, ProtoTCP, false},
		{"ipv4 header checksum wrong", flip(v4(ProtoTCP, true), 10), IPv4MinLen, ProtoTCP, false},
		{"ipv4 udp", v4(ProtoUDP, true), IPv4MinLen, ProtoUDP, true},
		{"ipv4 udp without checksum", v4(ProtoUDP, false), IPv4MinLen, ProtoUDP, true},
		{"ipv6 tcp", v6(ProtoTCP, true), IPv6Len, ProtoTCP, true},
		{"ipv6 tcp, payload changed", flip(v6(ProtoTCP, true), 65), IPv6Len, ProtoTCP, false},
		{"ipv6 udp", v6(ProtoUDP, true), IPv6Len, ProtoUDP, true},
		{"ipv6 udp without checksum", v6(ProtoUDP, false), IPv6Len, ProtoUDP, false},
		{"empty", nil, 0, ProtoTCP, false},
		{"ipv6 cut inside its header", v6(ProtoTCP, true)[:30], 20, ProtoTCP, false},
		{"ipv4 cut inside its header", v4(ProtoTCP, true)[:12], 0, ProtoTCP, false},
		{"l4 past the end", v4(ProtoTCP, true), 100, ProtoTCP, false},
	} {
		if got := ChecksumsValid(c.pkt, c.l4, c.proto); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPartialChecksum: a checksum left partial and completed is the one
// made whole at once, for segments of every length up to 300 bytes (odd
// ones too), random bytes and addresses of both versions.
func TestPartialChecksum(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	for n := TCPMinLen; n < 300; n++ {
		for _, alen := range []int{4, 16} {
			src, dst := make([]byte, alen), make([]byte, alen)
			r.Read(src)
			r.Read(dst)
			seg := make([]byte, n)
			r.Read(seg)
			whole := TCP(append([]byte(nil), seg...))
			whole.UpdateChecksum(src, dst)
			part := TCP(seg)
			part.SetPartialChecksum(src, dst)
			part.CompleteChecksum()
			if part.Checksum() != whole.Checksum() {
				t.Fatalf("%d bytes, %d-byte addresses: completed %#04x, made whole %#04x", n, alen, part.Checksum(), whole.Checksum())
			}
			if !part.ChecksumValid(src, dst) {
				t.Fatalf("%d bytes: the completed checksum does not hold", n)
			}
		}
	}
}

// TestCompleteTCPIn: the segment inside an IPv4 packet (with options or
// without) or an IPv6 one is completed; a UDP datagram, an IPv6 packet
// whose next header is not TCP, and packets cut short are refused and
// left as they are.
func TestCompleteTCPIn(t *testing.T) {
	v4 := func(opts int) []byte {
		p := make([]byte, IPv4MinLen+opts+TCPMinLen+7)
		WriteIPv4(p, 0, len(p), 1, true, 64, ProtoTCP, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"))
		p[0] = 0x40 | byte((IPv4MinLen+opts)/4)
		IPv4(p).UpdateChecksum()
		return p
	}
	v6 := func(next uint8) []byte {
		p := make([]byte, IPv6Len+TCPMinLen+7)
		WriteIPv6(p, 0, 0, len(p)-IPv6Len, next, 64, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"))
		return p
	}
	partial := func(p []byte, l4 int, src, dst []byte) []byte {
		seg := TCP(p[l4:])
		seg[12] = 5 << 4
		copy(seg[TCPMinLen:], "partial")
		seg.SetPartialChecksum(src, dst)
		return p
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		l4   int
	}{
		{"ipv4", v4(0), IPv4MinLen},
		{"ipv4 with options", v4(8), IPv4MinLen + 8},
		{"ipv6", v6(ProtoTCP), IPv6Len},
	} {
		src, dst := c.pkt[12:16], c.pkt[16:20]
		if c.l4 == IPv6Len {
			src, dst = c.pkt[8:24], c.pkt[24:40]
		}
		p := partial(c.pkt, c.l4, src, dst)
		if !CompleteTCPIn(p) || !TCP(p[c.l4:]).ChecksumValid(src, dst) {
			t.Fatalf("%s: not completed", c.name)
		}
	}
	udp := v4(0)
	udp[9] = ProtoUDP
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"udp", udp},
		{"ipv6, not tcp", v6(ProtoUDP)},
		{"ipv4 cut inside its tcp header", v4(0)[:IPv4MinLen+10]},
		{"ipv4 whose header is longer than the packet", v4(40)[:IPv4MinLen+8]},
		{"ipv6 cut", v6(ProtoTCP)[:IPv6Len+4]},
		{"empty", nil},
	} {
		before := append([]byte(nil), c.pkt...)
		if CompleteTCPIn(c.pkt) || string(before) != string(c.pkt) {
			t.Fatalf("%s: completed, or changed", c.name)
		}
	}
}
