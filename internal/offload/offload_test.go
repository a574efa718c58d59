package offload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
)

// etherLen is an untagged Ethernet header's length.
const etherLen = 14

// ether puts an Ethernet header (IPv4 or IPv6 by the packet) before pkt.
func ether(pkt []byte) []byte {
	f := make([]byte, etherLen+len(pkt))
	copy(f, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1})
	et := uint16(0x0800)
	if pkt[0]>>4 == 6 {
		et = 0x86dd
	}
	binary.BigEndian.PutUint16(f[12:], et)
	copy(f[etherLen:], pkt)
	return f
}

// l4Valid reports whether a frame's TCP or UDP checksum verifies.
func l4Valid(t *testing.T, f []byte) bool {
	return l4ValidAt(t, f, etherLen)
}

// l4ValidAt is l4Valid for a frame with l2 bytes before its IP packet.
func l4ValidAt(t *testing.T, f []byte, l2 int) bool {
	t.Helper()
	var ip header.Parsed
	if err := header.Parse(f[l2:], &ip); err != nil {
		t.Fatal(err)
	}
	l4 := ip.Upper(f[l2:])
	return header.Checksum(l4, header.PseudoHeaderSum(ip.Src.AsSlice(), ip.Dst.AsSlice(), ip.Proto, len(l4))) == 0xffff
}

// TestSegmentTCP: a GSO super-frame becomes the segments the sender's
// stack would have put on the wire — IPv4 and IPv6, with TCP options —
// each with its own lengths, identification, sequence number, flags and
// whole checksums, and between them exactly the super-frame's payload;
// in Ethernet frames (a packet socket's) and bare (a TUN device's).
func TestSegmentTCP(t *testing.T) {
	ts := []byte{header.TCPOptNop, header.TCPOptNop, header.TCPOptTimestamp, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	for _, tc := range []struct {
		name     string
		src, dst string
		gso      uint8
		l2       int
	}{{"v4", "10.0.0.1:5001", "10.0.0.2:80", GSOTCPv4, etherLen}, {"v6", "[fd00::1]:5001", "[fd00::2]:80", GSOTCPv6, etherLen},
		{"tun-v4", "10.0.0.1:5001", "10.0.0.2:80", GSOTCPv4, 0}, {"tun-v6", "[fd00::1]:5001", "[fd00::2]:80", GSOTCPv6, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			etherLen := tc.l2
			payload := make([]byte, 10000)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
			super := packettest.Segment(src, dst, header.TCPAck|header.TCPPsh|header.TCPFin|header.TCPCwr, 1000, 1, 500, ts, payload)
			if tc.l2 > 0 {
				super = ether(super)
			}
			if tc.gso == GSOTCPv4 {
				header.IPv4(super[etherLen:]).SetID(100)
			}
			var got [][]byte
			_, n, err := Finish(Hdr{GSOType: tc.gso | GSOECN, GSOSize: 1448, Flags: NeedsCsum}, super, etherLen, nil,
				func(f []byte) { got = append(got, append([]byte(nil), f...)) })
			if err != nil || n != 7 || len(got) != 7 {
				t.Fatalf("%d segments (%d emitted), err %v; want 7", n, len(got), err)
			}
			var joined []byte
			for i, f := range got {
				var ip header.Parsed
				if err := header.Parse(f[etherLen:], &ip); err != nil || ip.Len != len(f)-etherLen {
					t.Fatalf("segment %d: %v, length %d of %d", i, err, ip.Len, len(f)-etherLen)
				}
				if tc.gso == GSOTCPv4 {
					h := header.IPv4(f[etherLen:])
					if !h.ChecksumValid() || h.ID() != 100+uint16(i) {
						t.Fatalf("segment %d: ipv4 checksum %v, id %d", i, h.ChecksumValid(), h.ID())
					}
				}
				if !l4ValidAt(t, f, tc.l2) {
					t.Fatalf("segment %d: bad tcp checksum", i)
				}
				tcp := header.TCP(ip.Upper(f[etherLen:]))
				last := i == len(got)-1
				if tcp.Seq() != 1000+uint32(i*1448) || tcp.Has(header.TCPFin) != last || tcp.Has(header.TCPPsh) != last ||
					tcp.Has(header.TCPCwr) != (i == 0) || !tcp.Has(header.TCPAck) || tcp.HeaderLen() != 32 {
					t.Fatalf("segment %d: seq %d flags %#x", i, tcp.Seq(), tcp.Flags())
				}
				if len(tcp.Payload()) > 1448 {
					t.Fatalf("segment %d: %d bytes of payload", i, len(tcp.Payload()))
				}
				joined = append(joined, tcp.Payload()...)
			}
			if !bytes.Equal(joined, payload) {
				t.Fatal("the segments do not carry the super-frame's payload")
			}
		})
	}
}

// TestSegmentUDP: a UDP GSO super-frame (UDP_SEGMENT) becomes datagrams
// of gso_size bytes, each with its own length and checksum.
func TestSegmentUDP(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 350) // 3500 bytes: 1200+1200+1100
	super := ether(packettest.UDP(netip.MustParseAddrPort("10.0.0.1:4500"), netip.MustParseAddrPort("10.0.0.2:4500"), payload))
	var got [][]byte
	if _, n, err := Finish(Hdr{GSOType: GSOUDPL4, GSOSize: 1200}, super, etherLen, nil, func(f []byte) { got = append(got, append([]byte(nil), f...)) }); err != nil || n != 3 {
		t.Fatalf("%d datagrams, %v", n, err)
	}
	var joined []byte
	for i, f := range got {
		u := f[etherLen+header.IPv4MinLen:]
		if int(binary.BigEndian.Uint16(u[4:])) != len(u) || !l4Valid(t, f) || !header.IPv4(f[etherLen:]).ChecksumValid() {
			t.Fatalf("datagram %d: udp length %d of %d, checksums", i, binary.BigEndian.Uint16(u[4:]), len(u))
		}
		joined = append(joined, u[header.UDPLen:]...)
	}
	if !bytes.Equal(joined, payload) {
		t.Fatal("the datagrams do not carry the super-frame's payload")
	}
}

// TestCompleteChecksum: a CHECKSUM_PARTIAL frame (the field holds the
// pseudo-header sum) leaves with its checksum whole; a bad offset is an
// error, not a panic.
func TestCompleteChecksum(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	f := ether(packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, []byte("partial")))
	tcp := f[etherLen+header.IPv4MinLen:]
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], header.Checksum(nil, header.PseudoHeaderSum(src.Addr().AsSlice(), dst.Addr().AsSlice(), header.ProtoTCP, len(tcp))))
	if l4Valid(t, f) {
		t.Fatal("the partial checksum verifies: the test tests nothing")
	}
	csum, _, err := Finish(Hdr{Flags: NeedsCsum, CsumStart: etherLen + header.IPv4MinLen, CsumOffset: 16}, f, etherLen, nil, func([]byte) {})
	if err != nil || !csum || !l4Valid(t, f) {
		t.Fatalf("completed %v, err %v, valid %v", csum, err, l4Valid(t, f))
	}
	if _, _, err := Finish(Hdr{Flags: NeedsCsum, CsumStart: len(f), CsumOffset: 16}, f, etherLen, nil, func([]byte) {}); err == nil {
		t.Fatal("a checksum outside the frame was accepted")
	}
	if _, _, err := Finish(Hdr{GSOType: GSOUDP, GSOSize: 100}, f, etherLen, nil, func([]byte) {}); err == nil {
		t.Fatal("UFO was accepted")
	}
}

// FuzzFinish: any virtio_net_hdr and frame give frames or an error, never
// a panic; every frame a super-frame became is a whole IP packet. The
// header's flag 0x80 (unused by the kernel) makes the frame a TUN
// device's — an IP packet with no link-layer header — instead of an
// Ethernet frame.
func FuzzFinish(f *testing.F) {
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	bare := packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, make([]byte, 3000))
	seg := ether(bare)
	src6, dst6 := netip.MustParseAddrPort("[fd00::1]:5001"), netip.MustParseAddrPort("[fd00::2]:80")
	bare6 := packettest.Segment(src6, dst6, header.TCPAck, 1, 1, 500, nil, make([]byte, 2000))
	for _, h := range [][]byte{{0, GSOTCPv4, 54, 0, 0xa8, 5, 0, 0, 0, 0}, {1, 0, 0, 0, 0, 0, 34, 0, 16, 0}, {0, GSOUDPL4, 0, 0, 100, 0, 0, 0, 0, 0},
		{1, GSOTCPv6 | GSOECN, 0, 0, 1, 0, 255, 255, 255, 255}} {
		f.Add(append(h, seg...))
	}
	for _, h := range [][]byte{{0x80, GSOTCPv4, 40, 0, 0xa8, 5, 20, 0, 16, 0}, {0x81, 0, 0, 0, 0, 0, 20, 0, 16, 0}, {0x81, 0, 0, 0, 0, 0, 0xff, 0xff, 16, 0}} {
		f.Add(append(h, bare...))
	}
	f.Add(append([]byte{0x81, GSOTCPv6, 60, 0, 0x90, 1, 40, 0, 16, 0}, bare6...))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHdr(b)
		if err != nil {
			return
		}
		l2 := etherLen
		if h.Flags&0x80 != 0 {
			l2 = 0
		}
		frame := append([]byte(nil), b[HdrLen:]...)
		_, segs, err := Finish(h, frame, l2, nil, func(out []byte) {
			if h.GSOType&^GSOECN == GSONone {
				return
			}
			var ip header.Parsed
			if e := header.Parse(out[l2:], &ip); e != nil || ip.Len != len(out)-l2 {
				t.Fatalf("a segment that is not a whole packet: %v", e)
			}
		})
		if err == nil && segs > MaxSegments {
			t.Fatalf("%d segments", segs)
		}
	})
}

// segmentsOf is what Finish emits for a bare IP super-packet.
func segmentsOf(h Hdr, pkt []byte) ([][]byte, error) {
	var got [][]byte
	_, _, err := Finish(h, append([]byte(nil), pkt...), 0, nil, func(f []byte) { got = append(got, append([]byte(nil), f...)) })
	return got, err
}

// intoBufs runs SegmentInto with n buffers of size bytes after off; in
// place, with pkt read into the first buffer (which is then made large
// enough for it), as a TUN reader does.
func intoBufs(h Hdr, pkt []byte, n, size, off int, inPlace bool) ([][]byte, error) {
	bufs, sizes := make([][]byte, n), make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, off+size)
	}
	src := append([]byte(nil), pkt...)
	if inPlace && n > 0 {
		if len(pkt) > size {
			bufs[0] = make([]byte, off+len(pkt))
		}
		src = bufs[0][off : off+copy(bufs[0][off:], pkt)]
	}
	k, err := SegmentInto(h, src, bufs, off, sizes)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, k)
	for i := range out {
		out[i] = bufs[i][off : off+sizes[i]]
	}
	return out, nil
}

// TestSegmentInto: a TUN device's super-packet cut into the reader's
// buffers is, segment for segment, what Finish emits; buffers too few or
// too small are an error, not a short segment.
func TestSegmentInto(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	src6, dst6 := netip.MustParseAddrPort("[fd00::1]:5001"), netip.MustParseAddrPort("[fd00::2]:80")
	for _, tc := range []struct {
		name string
		h    Hdr
		pkt  []byte
		segs int
	}{
		{"tcp4", Hdr{GSOType: GSOTCPv4, GSOSize: 1448}, packettest.Segment(src, dst, header.TCPAck|header.TCPPsh, 1, 1, 500, nil, make([]byte, 5000)), 4},
		{"tcp6", Hdr{GSOType: GSOTCPv6, GSOSize: 1000}, packettest.Segment(src6, dst6, header.TCPAck, 1, 1, 500, nil, make([]byte, 3000)), 3},
		{"one", Hdr{GSOType: GSOTCPv4, GSOSize: 1448}, packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, make([]byte, 100)), 1},
		{"empty", Hdr{GSOType: GSOTCPv4, GSOSize: 1448}, packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, nil), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := segmentsOf(tc.h, tc.pkt)
			if err != nil || len(want) != tc.segs {
				t.Fatalf("Finish: %d segments, %v", len(want), err)
			}
			for _, inPlace := range []bool{false, true} {
				got, err := intoBufs(tc.h, tc.pkt, 8, 1600, 16, inPlace)
				if err != nil || len(got) != len(want) {
					t.Fatalf("SegmentInto (in place %v): %d segments, %v; want %d", inPlace, len(got), err, len(want))
				}
				for i := range got {
					if !bytes.Equal(got[i], want[i]) {
						t.Fatalf("segment %d (in place %v) differs from Finish's", i, inPlace)
					}
					if !l4ValidAt(t, got[i], 0) {
						t.Fatalf("segment %d: bad checksum", i)
					}
				}
			}
			if tc.segs > 1 {
				if _, err := intoBufs(tc.h, tc.pkt, tc.segs-1, 1600, 16, false); !errors.Is(err, ErrOffload) {
					t.Fatalf("too few buffers: %v", err)
				}
			}
			if _, err := intoBufs(tc.h, tc.pkt, 8, 30, 16, false); !errors.Is(err, ErrOffload) {
				t.Fatalf("buffers too small: %v", err)
			}
		})
	}
	if _, err := intoBufs(Hdr{}, packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, nil), 8, 1600, 16, false); !errors.Is(err, ErrOffload) {
		t.Fatalf("no GSO: %v", err)
	}
}

// FuzzSegmentInto: for any header and packet, SegmentInto fails or gives
// exactly the segments Finish emits for a bare IP frame, whether it cuts
// from a copy or in place.
func FuzzSegmentInto(f *testing.F) {
	src, dst := netip.MustParseAddrPort("10.0.0.1:5001"), netip.MustParseAddrPort("10.0.0.2:80")
	src6, dst6 := netip.MustParseAddrPort("[fd00::1]:5001"), netip.MustParseAddrPort("[fd00::2]:80")
	f.Add([]byte{0, GSOTCPv4, 40, 0, 0xa8, 5, 20, 0, 16, 0}, packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, make([]byte, 3000)))
	f.Add([]byte{1, GSOTCPv6 | GSOECN, 60, 0, 0x10, 0, 40, 0, 16, 0}, packettest.Segment(src6, dst6, header.TCPFin, 1, 1, 500, nil, make([]byte, 200)))
	f.Add([]byte{0, GSOUDPL4, 0, 0, 100, 0, 0, 0, 0, 0}, packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, make([]byte, 1000)))
	f.Add([]byte{0, GSOTCPv4, 0, 0, 1, 0, 0, 0, 0, 0}, packettest.Segment(src, dst, header.TCPAck, 1, 1, 500, nil, make([]byte, 130)))
	f.Fuzz(func(t *testing.T, hb, pkt []byte) {
		h, err := ParseHdr(hb)
		if err != nil {
			return
		}
		got, err := intoBufs(h, pkt, MaxSegments, 9000, 16, false)
		inPlace, errInPlace := intoBufs(h, pkt, MaxSegments, 9000, 16, true)
		if (err == nil) != (errInPlace == nil) {
			t.Fatalf("in place: %v; from a copy: %v", errInPlace, err)
		}
		if err != nil {
			return
		}
		want, err := segmentsOf(h, pkt)
		if err != nil || len(want) != len(got) || len(inPlace) != len(got) {
			t.Fatalf("SegmentInto gave %d segments (%d in place), Finish %d (%v)", len(got), len(inPlace), len(want), err)
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) || !bytes.Equal(inPlace[i], want[i]) {
				t.Fatalf("segment %d differs", i)
			}
		}
	})
}
