package engine

import (
	"encoding/binary"
	"time"

	"github.com/espep/espep/internal/seqnum"
	"github.com/espep/espep/ipsec/header"
)

// ipTemplate is what the engine copies from an endpoint's packets into
// the packets it sends in that endpoint's name.
type ipTemplate struct {
	V6   bool
	TOS  uint8 // traffic class for IPv6
	TTL  uint8 // hop limit for IPv6
	DF   bool
	Flow uint32 // IPv6 flow label
	ID   uint16 // last IPv4 identification used
}

func templateOf(pkt []byte) ipTemplate {
	if pkt[0]>>4 == 6 {
		h := header.IPv6(pkt)
		return ipTemplate{V6: true, TOS: h.TrafficClass(), TTL: h.HopLimit(),
			Flow: binary.BigEndian.Uint32(pkt) & 0xfffff}
	}
	h := header.IPv4(pkt)
	return ipTemplate{TOS: h.TOS(), TTL: h.TTL(), DF: h.FlagsFrag()&0x4000 != 0, ID: h.ID()}
}

// segment describes a packet split mode sends in the name of one endpoint.
type segment struct {
	seq   seqnum.Value
	flags uint8
	data  *stream // where the payload comes from (nil: n zero bytes)
	n     int     // payload bytes, read from data.buf at seq
}

// maxSACKBlocks is how many SACK blocks fit beside a timestamp option.
const maxSACKBlocks = 3

// emit builds the segment toward side to, in the name of the endpoint on
// the other side, with the ACK, window, SACK and timestamp fields of the
// flow's current state, and hands it to out. It allocates nothing.
func (e *shard) emit(f *flow, to Side, s segment) {
	sp := f.sp
	from := to.other()
	back := &sp.st[to] // the stream whose sender is the packet's receiver: its ACK
	b := e.scratch[:cap(e.scratch)]
	tpl := &sp.ip[from]
	ipLen := header.IPv4MinLen
	if tpl.V6 {
		ipLen = header.IPv6Len
	}
	// Options: timestamps, then SACK blocks for what is held above the ACK.
	var opt [40]byte
	no := 0
	if sp.tsOn {
		opt[0], opt[1], opt[2], opt[3] = header.TCPOptNop, header.TCPOptNop, header.TCPOptTimestamp, 10
		binary.BigEndian.PutUint32(opt[4:], sp.ts[from])
		binary.BigEndian.PutUint32(opt[8:], sp.ts[to])
		no = 12
	}
	if sp.sackOn && (len(back.ooo) > 0 || back.nPeer > 0) && s.flags&header.TCPRst == 0 {
		no = back.appendSACK(opt[:], no, maxSACKBlocks+btoi(!sp.tsOn))
	}
	tl := header.TCPMinLen + no
	total := ipLen + tl + s.n
	src, dst := f.key.wire, f.key.radio
	if from == Radio {
		src, dst = dst, src
	}
	t := header.TCP(b[ipLen:total])
	binary.BigEndian.PutUint16(t, src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	t.SetSeq(uint32(s.seq))
	flags := s.flags | header.TCPAck
	t.SetAck(uint32(back.ackValue()))
	t[12] = byte(tl/4) << 4
	t.SetFlags(flags)
	t.SetWindow(e.advertise(back, sp.shift[from]))
	t[16], t[17], t[18], t[19] = 0, 0, 0, 0
	copy(t[header.TCPMinLen:], opt[:no])
	switch {
	case s.n > 0 && s.data != nil:
		s.data.buf.read(t[tl:], s.seq)
	case s.n > 0:
		clear(t[tl : tl+s.n])
	}
	var sa, da []byte
	if tpl.V6 {
		header.WriteIPv6(b, tpl.TOS, tpl.Flow, tl+s.n, header.ProtoTCP, tpl.TTL, src.Addr(), dst.Addr())
		sa, da = b[8:24], b[24:40]
	} else {
		tpl.ID++
		header.WriteIPv4(b, tpl.TOS, total, tpl.ID, tpl.DF, tpl.TTL, header.ProtoTCP, src.Addr(), dst.Addr())
		sa, da = b[12:16], b[16:20]
	}
	partial := e.cfg.PartialChecksums
	if partial {
		t.SetPartialChecksum(sa, da)
	} else {
		t.UpdateChecksum(sa, da)
	}
	back.ackNow, back.unacked, back.ackAt = false, 0, time.Time{}
	sp.sent[to]++
	e.st.Emitted++
	e.built(to, b[:total], src, dst, partial)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
