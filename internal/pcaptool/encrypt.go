package pcaptool

import (
	"fmt"
	"io"

	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
)

// EncryptStats counts what Encrypt did.
type EncryptStats struct {
	Packets  int
	Sealed   int
	Bypassed int // matched no SA, or IPsec/IKE already
	Failed   int // an SA matched but sealing failed (too big, malformed, …)
}

func (s EncryptStats) String() string {
	return fmt.Sprintf("packets %d: sealed %d, bypassed %d, failed %d", s.Packets, s.Sealed, s.Bypassed, s.Failed)
}

// Sealer is an SA with the traffic it protects.
type Sealer struct {
	SA       *ipsec.SA
	Selector ipsec.Selector
}

// SealersFor builds sealers from SA configurations, in order. An SA without
// traffic selectors protects the traffic between its own addresses in
// transport (or any) mode, and all traffic in tunnel mode. Only write-class
// SAs can seal; others are an error.
func SealersFor(cfgs []ipsec.Config) ([]Sealer, error) {
	var out []Sealer
	for _, c := range cfgs {
		if c.Class != ipsec.ClassWrite {
			return nil, fmt.Errorf("sa %v: class %v cannot seal", c.ID(), c.Class)
		}
		sa, err := ipsec.New(c)
		if err != nil {
			return nil, err
		}
		sel := c.TS
		if sel == (ipsec.Selector{Proto: ipsec.ProtoAny}) && c.Mode != ipsec.Tunnel {
			if c.Src.IsValid() {
				sel.Local = ipsec.AddrRange{From: c.Src, To: c.Src}
			}
			if c.Dst.IsValid() {
				sel.Remote = ipsec.AddrRange{From: c.Dst, To: c.Dst}
			}
		}
		out = append(out, Sealer{SA: sa, Selector: sel})
	}
	return out, nil
}

// Encrypt copies the capture in to out, sealing every IP packet that the
// first matching sealer's selector covers. IPsec and IKE packets are never
// sealed again.
func Encrypt(in io.Reader, out io.Writer, sealers []Sealer) (EncryptStats, error) {
	var st EncryptStats
	r, err := pcapio.NewReader(in)
	if err != nil {
		return st, err
	}
	w, err := pcapio.NewWriter(out, r.LinkType)
	if err != nil {
		return st, err
	}
	buf := make([]byte, linkRoom+ipsec.MaxHeadroom+pcapio.MaxSnapLen+ipsec.MaxTailroom)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		st.Packets++
		frame := encryptFrame(r.LinkType, rec.Data, buf, sealers, &st)
		orig := rec.OrigLen
		if len(frame) != len(rec.Data) {
			orig = len(frame)
		}
		if err := w.Write(rec.Time, frame, orig); err != nil {
			return st, fmt.Errorf("write: %w", err)
		}
	}
	return st, w.Flush()
}

// linkRoom is headroom for the link-layer header in front of a sealed packet.
const linkRoom = 64

func encryptFrame(link uint32, data, buf []byte, sealers []Sealer, st *EncryptStats) []byte {
	off, protoOff, ok, err := pcapio.IPOffset(link, data)
	if err != nil || !ok {
		st.Bypassed++
		return data
	}
	pkt := data[off:]
	l, err := ipsec.Locate(pkt)
	if err != nil || l.Kind != ipsec.KindOther {
		st.Bypassed++
		return data
	}
	pkt = pkt[:l.Len] // drop link-layer padding
	t, err := ipsec.TrafficOf(pkt, true)
	if err != nil {
		st.Bypassed++
		return data
	}
	for i := range sealers {
		s := &sealers[i]
		if !s.Selector.Match(&t) {
			continue
		}
		h := linkRoom + ipsec.MaxHeadroom
		copy(buf[h:], pkt)
		sealed, err := s.SA.Seal(buf[:h+len(pkt)], h, len(pkt))
		if err != nil {
			st.Failed++
			return data
		}
		st.Sealed++
		start := len(buf) - cap(sealed) - off
		frame := buf[start : start+off+len(sealed)]
		copy(frame[:off], data[:off])
		pcapio.SetEtherType(frame, protoOff, sealed[0]>>4)
		return frame
	}
	st.Bypassed++
	return data
}
