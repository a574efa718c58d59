package handoff

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff/pb"
)

// The two flow encodings of a Take stream (proto/espep/v1/handoff.proto,
// TakeChunk). Version 1 gob-encodes whole parts, a split flow's buffered
// megabytes inside: one message the size of the flow, copied whole by
// the export, gob, protobuf and gRPC on each side — into memory that a
// gateway which has not held that much before must first fault in
// (~14 ms per fresh 4 MB on the machine of 2026-12-02; a one-flow
// handoff took 100–230 ms). Version 2 sends a part's buffered bytes
// after it, in pieces of at most MaxPiece: the sender gathers them from
// the chunks the old engine handed over (engine.StreamState.Chunks, not
// a copy), and the receiver keeps the pieces as protobuf decoded them
// until its engine takes them in — no buffer the size of a flow on
// either side.

// Version is the newest flow encoding this package speaks; it serves
// both, and asks for Version first (Client.Take).
const Version = 2

// MaxPiece bounds a version-2 data chunk.
const MaxPiece = 256 << 10

// maxStream bounds one stream's buffered bytes as a header announces
// them (the engine that imports them holds them to its own, tighter
// bound).
const maxStream = maxMessage

// partHeader is a version-2 part as gob carries it: the part with its split
// flows' buffered bytes taken out, and their lengths — two a split flow,
// its streams in turn, flow by flow — in the order the data chunks bring
// them.
type partHeader struct {
	Part Part
	Lens []int
}

// sendChunks sends h in the version asked for, in parts of at most
// MaxChunk bytes of flows (or one flow), the SAs and bindings in the
// first; there is always a first part.
func sendChunks(h gateway.Handoff, version uint32, send func(*pb.TakeChunk) error) error {
	var buf bytes.Buffer
	flows := h.Flows
	for first := true; first || len(flows) > 0; first = false {
		n, size := 0, 0
		for n < len(flows) {
			fs := flowSize(&flows[n])
			if n > 0 && size+fs > MaxChunk {
				break
			}
			size += fs
			n++
		}
		part := Part{Flows: flows[:n]}
		if first {
			part.SAs, part.Routes = h.SAs, h.Routes
		}
		var err error
		if version == 1 {
			err = sendV1(&buf, part, size, send)
		} else {
			err = sendV2(&buf, part, send)
		}
		if err != nil {
			return err
		}
		flows = flows[n:]
	}
	return nil
}

// sendV1 sends a part as one gob-encoded chunk. Version 1's flows hold
// their bytes in Data alone (a gateway of that version knows no Chunks):
// a flow whose buffer was handed over in chunks is sent joined, a copy.
func sendV1(buf *bytes.Buffer, part Part, size int, send func(*pb.TakeChunk) error) error {
	part.Flows = eachStream(part.Flows, func(x *engine.StreamState) {
		if len(x.Chunks) > 0 {
			x.Data, x.Chunks = bytes.Join(x.Pieces(), nil), nil
		}
	})
	b, err := encode(buf, &part, size)
	if err != nil {
		return err
	}
	return send(&pb.TakeChunk{Version: 1, Flows: b})
}

// sendV2 sends a part's header, then its buffered bytes gathered into
// pieces of MaxPiece (the engine's chunks are 16 KiB: sent one a message,
// 1,000 small flows took a quarter longer, and the first of them up to
// three times as long). The piece's buffer is used again once Send
// returns: gRPC has marshalled the message by then, and no stats handler
// holds on to it here. The caller's flows are not changed: the header
// carries copies of their split state without the bytes.
func sendV2(buf *bytes.Buffer, part Part, send func(*pb.TakeChunk) error) error {
	var data [][]byte
	hdr := partHeader{Part: part}
	hdr.Part.Flows = eachStream(part.Flows, func(x *engine.StreamState) {
		data = append(data, x.Pieces()...)
		hdr.Lens = append(hdr.Lens, x.Held())
		x.Data, x.Chunks = nil, nil
	})
	b, err := encode(buf, &hdr, 0)
	if err != nil {
		return err
	}
	if err := send(&pb.TakeChunk{Version: 2, Flows: b}); err != nil {
		return err
	}
	piece := make([]byte, 0, MaxPiece)
	for _, d := range data {
		for len(d) > 0 {
			k := min(len(d), MaxPiece-len(piece))
			piece, d = append(piece, d[:k]...), d[k:]
			if len(piece) == MaxPiece {
				if err := send(&pb.TakeChunk{Version: 2, Data: piece}); err != nil {
					return err
				}
				piece = piece[:0]
			}
		}
	}
	if len(piece) > 0 {
		return send(&pb.TakeChunk{Version: 2, Data: piece})
	}
	return nil
}

// eachStream is a copy of flows in which fn has changed each split
// stream; the caller's flows, and the split states they point to, stay
// as they were.
func eachStream(flows []engine.FlowState, fn func(*engine.StreamState)) []engine.FlowState {
	out := slices.Clone(flows)
	for i := range out {
		if out[i].Split == nil {
			continue
		}
		sp := *out[i].Split
		for j := range sp.Streams {
			fn(&sp.Streams[j])
		}
		out[i].Split = &sp
	}
	return out
}

// encode gob-encodes v into buf, grown once for about size bytes.
func encode(buf *bytes.Buffer, v any, size int) ([]byte, error) {
	buf.Reset()
	buf.Grow(size + size/8 + 4096) // gob's framing on top: no regrowth copies
	if err := gob.NewEncoder(buf).Encode(v); err != nil {
		return nil, status.Errorf(codes.Internal, "handoff: encode: %v", err)
	}
	return buf.Bytes(), nil
}

// flowSize is about how many bytes a flow encodes to.
func flowSize(f *engine.FlowState) int {
	n := 1024 + f.Buffered()
	for _, c := range f.Cache {
		n += len(c.Packet)
	}
	return n
}

// DecodeChunk reads one version-1 chunk. A bad chunk is an error, never
// a panic.
func DecodeChunk(b []byte) (Part, error) {
	var p Part
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&p); err != nil {
		return Part{}, fmt.Errorf("handoff: chunk: %w", err)
	}
	return p, nil
}

// assembler puts the parts of a Take stream back together, chunk by
// chunk: a version-1 chunk is a part; a version-2 header waits for its
// bytes. A stream that breaks the encoding is an error, never a panic.
type assembler struct {
	version uint32
	part    Part
	fills   []fill // the part's streams still to fill, in order
	pending bool   // a header has come, its bytes have not all
}

// fill is a stream still to fill and how many bytes it still wants.
type fill struct {
	x    *engine.StreamState
	want int
}

// add takes one chunk; whole is true when it completes a part. A part
// holds on to the chunks' data (as gRPC decoded it, the receiver's own).
func (a *assembler) add(ch *pb.TakeChunk) (part Part, whole bool, err error) {
	if ch.GetVersion() != a.version {
		return Part{}, false, fmt.Errorf("handoff: flow encoding %d in a stream of %d", ch.GetVersion(), a.version)
	}
	if a.version == 1 {
		part, err := DecodeChunk(ch.GetFlows())
		return part, err == nil, err
	}
	switch flows, data := ch.GetFlows(), ch.GetData(); {
	case len(flows) > 0 && len(data) > 0:
		return Part{}, false, errors.New("handoff: a chunk with a part and data")
	case len(flows) > 0:
		err = a.header(flows)
	case len(data) > 0:
		err = a.data(data)
	default:
		err = errors.New("handoff: an empty chunk")
	}
	if err != nil || !a.pending || len(a.fills) > 0 {
		return Part{}, false, err
	}
	a.pending = false
	part, a.part = a.part, Part{}
	return part, true, nil
}

// end is the stream's end: an error if a part is still missing bytes.
func (a *assembler) end() error {
	if a.pending {
		return errors.New("handoff: the stream ended inside a part's data")
	}
	return nil
}

// header starts a version-2 part.
func (a *assembler) header(b []byte) error {
	if a.pending {
		return errors.New("handoff: a part before the last one's data")
	}
	var h partHeader
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&h); err != nil {
		return fmt.Errorf("handoff: part: %w", err)
	}
	a.fills = a.fills[:0]
	k := 0
	for i := range h.Part.Flows {
		sp := h.Part.Flows[i].Split
		if sp == nil {
			continue
		}
		for j := range sp.Streams {
			if k == len(h.Lens) {
				return errors.New("handoff: part: fewer lengths than streams")
			}
			x, n := &sp.Streams[j], h.Lens[k]
			k++
			if n < 0 || n > maxStream || x.Held() != 0 {
				return fmt.Errorf("handoff: part: a stream of %d bytes (bound %d), %d inside", n, maxStream, x.Held())
			}
			if n > 0 {
				a.fills = append(a.fills, fill{x, n})
			}
		}
	}
	if k != len(h.Lens) {
		return errors.New("handoff: part: more lengths than streams")
	}
	a.part, a.pending = h.Part, true
	return nil
}

// data gives a piece to the streams it fills, in turn, as their Chunks:
// not copied (each chunk's bytes are its own, as protobuf decoded them).
// A stream's bytes thus never sit in one buffer the size of the stream,
// and the receiver holds only what has come.
func (a *assembler) data(b []byte) error {
	if !a.pending {
		return errors.New("handoff: data outside a part")
	}
	for len(b) > 0 {
		if len(a.fills) == 0 {
			return errors.New("handoff: more data than the part holds")
		}
		f := &a.fills[0]
		k := min(len(b), f.want)
		f.x.Chunks = append(f.x.Chunks, b[:k:k])
		b, f.want = b[k:], f.want-k
		if f.want == 0 {
			a.fills = a.fills[1:]
		}
	}
	return nil
}
