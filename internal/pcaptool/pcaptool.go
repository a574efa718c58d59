// Package pcaptool implements `espep pcap decrypt` and `espep pcap
// encrypt`: it runs every IP packet of a capture through the ipsec package
// and writes the result as a capture of the same link type. It owns no
// crypto; it is the capture-file face of ipsec.SA.Open and SA.Seal.
package pcaptool

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
)

// DecryptStats counts what Decrypt did with each packet.
type DecryptStats struct {
	Packets    int // records read
	Opened     int // ESP/AH packets opened and verified (write-class SA)
	Decrypted  int // ESP/AH packets decrypted unverified (read-class SA)
	ICVFailed  int
	Replayed   int // duplicate or left of the window
	UnknownSPI int
	NoKeys     int // SA of class none: relayed as is
	Dummy      int // RFC 4303 TFC dummy packets (next header 59), dropped
	Malformed  int // IP or IPsec headers that do not parse, or bad padding
	IKE        int
	Keepalive  int
	Fragments  int // IPsec fragments: not reassembled, copied
	NotIPsec   int
}

func (s DecryptStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "packets %d: opened %d, decrypted-unverified %d, failed-icv %d, replayed %d, unknown-spi %d, no-keys %d, dummy %d, malformed %d; ike %d, keepalive %d, fragments %d, not-ipsec %d",
		s.Packets, s.Opened, s.Decrypted, s.ICVFailed, s.Replayed, s.UnknownSPI, s.NoKeys, s.Dummy, s.Malformed, s.IKE, s.Keepalive, s.Fragments, s.NotIPsec)
	return b.String()
}

// Decrypt copies the capture in to out, replacing every ESP or AH packet
// that an SA in sad opens by the packet inside it. Everything else, failed
// packets included, is copied unchanged.
func Decrypt(in io.Reader, out io.Writer, sad *ipsec.SAD) (DecryptStats, error) {
	var st DecryptStats
	r, err := pcapio.NewReader(in)
	if err != nil {
		return st, err
	}
	w, err := pcapio.NewWriter(out, r.LinkType)
	if err != nil {
		return st, err
	}
	work := make([]byte, pcapio.MaxSnapLen)
	dst := make([]byte, pcapio.MaxSnapLen)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		st.Packets++
		frame := decryptFrame(r.LinkType, rec.Data, work, dst, sad, &st)
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

// decryptFrame returns the frame to write for data.
func decryptFrame(link uint32, data, work, dst []byte, sad *ipsec.SAD, st *DecryptStats) []byte {
	off, protoOff, ok, err := pcapio.IPOffset(link, data)
	if err != nil || !ok {
		st.NotIPsec++
		return data
	}
	pkt := data[off:]
	l, err := ipsec.Locate(pkt)
	if err != nil {
		st.Malformed++
		return data
	}
	switch l.Kind {
	case ipsec.KindESP, ipsec.KindAH:
	case ipsec.KindIKE:
		st.IKE++
		return data
	case ipsec.KindKeepalive:
		st.Keepalive++
		return data
	case ipsec.KindFragment:
		st.Fragments++
		return data
	default:
		st.NotIPsec++
		return data
	}
	e, ok := sad.LookupLoc(&l)
	if !ok {
		st.UnknownSPI++
		return data
	}
	var inner []byte
	switch {
	case e.Write != nil:
		// Open works in place; keep data intact for the failure case.
		n := copy(work[off:], pkt)
		inner, err = e.Write.OpenAt(work[off:off+n], l)
		if err == nil {
			st.Opened++
		}
	case e.Read != nil:
		inner, err = e.Read.Decrypt(dst[off:], pkt)
		if err == nil {
			st.Decrypted++
		}
	default:
		st.NoKeys++
		return data
	}
	if err != nil {
		switch {
		case errors.Is(err, ipsec.ErrICV):
			st.ICVFailed++
		case errors.Is(err, ipsec.ErrReplay), errors.Is(err, ipsec.ErrTooOld):
			st.Replayed++
		case errors.Is(err, ipsec.ErrDummy):
			st.Dummy++
		default:
			st.Malformed++
		}
		return data
	}
	// Output: link header, then the inner packet. inner lies inside work
	// or dst at or after off, so put the link header right before it.
	base := work
	if e.Write == nil {
		base = dst
	}
	start := len(base) - cap(inner) - off
	frame := base[start : start+off+len(inner)]
	copy(frame[:off], data[:off])
	pcapio.SetEtherType(frame, protoOff, inner[0]>>4)
	return frame
}
