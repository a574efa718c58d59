package handoff

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/handoff/pb"
)

// TestChunksRoundTrip: a handoff sent in either encoding and put back
// together chunk by chunk is what was sent — flows with nothing
// buffered, small flows sharing a part, a flow of several pieces (over
// MaxChunk: alone in its part), snoop flows, buffers handed over in the
// engine's chunks — and the two encodings give the same bytes. Version 1
// carries them in Data alone, as a gateway of that version reads them.
// The sender's flows are left as they were.
func TestChunksRoundTrip(t *testing.T) {
	e := splitEngine(t)
	openFlows(e, mobile, 6, 3)
	openFlows(e, other, 2, 0)
	flows := e.Export(true)
	big := flows[0]
	sp := *big.Split
	sp.Streams[0].Chunks = [][]byte{bytes.Repeat([]byte("0123456789abcdef"), MaxChunk/16), []byte("tail"), bytes.Repeat([]byte{7}, MaxPiece/3)}
	sp.Streams[1].Data = []byte("up")
	big.Split = &sp
	flows = append(flows, big, engine.FlowState{Wire: big.Wire, Radio: big.Radio, Mode: engine.ModeSnoop,
		Cache: []engine.SegState{{Seq: 1, End: 3, Packet: []byte{1, 2, 3}}}})
	h := gateway.Handoff{Flows: flows, SAs: []gateway.SAHandoff{{Owned: true, Last: 9, Window: []uint64{1, 2}}},
		Routes: []gateway.RouteHandoff{{From: engine.Radio}}}
	want := buffered(flows)
	var got [3][]engine.FlowState
	for _, version := range []uint32{1, 2} {
		a := assembler{version: version}
		chunks, parts := 0, 0
		err := sendChunks(h, version, overWire(t, func(ch *pb.TakeChunk) error {
			chunks++
			if version == 2 && len(ch.Data) > MaxPiece {
				t.Fatalf("a piece of %d bytes", len(ch.Data))
			}
			part, whole, err := a.add(ch)
			if whole {
				if parts++; parts == 1 && (len(part.SAs) != 1 || part.SAs[0].Last != 9 || len(part.Routes) != 1) {
					t.Fatalf("version %d: the first part lost the SAs or bindings", version)
				}
				got[version] = append(got[version], part.Flows...)
			}
			return err
		}))
		if err == nil {
			err = a.end()
		}
		if err != nil {
			t.Fatalf("version %d: %v", version, err)
		}
		back := got[version]
		t.Logf("version %d: %d flows, %d bytes, in %d parts, %d chunks", version, len(back), buffered(back), parts, chunks)
		if len(back) != len(flows) || buffered(back) != want || parts < 3 {
			t.Fatalf("version %d: %d flows with %d bytes in %d parts came back; sent %d with %d", version, len(back), buffered(back), parts, len(flows), want)
		}
		for i := range back {
			if sp := back[i].Split; version == 1 && sp != nil && len(sp.Streams[0].Chunks)+len(sp.Streams[1].Chunks) > 0 {
				t.Fatal("version 1 carried chunks")
			}
		}
	}
	if !reflect.DeepEqual(joined(got[1]), joined(got[2])) {
		t.Fatal("the two encodings gave different flows")
	}
	if !bytes.Equal(joined(got[2])[len(flows)-2].Split.Streams[0].Data, bytes.Join(sp.Streams[0].Chunks, nil)) {
		t.Fatal("the large flow's bytes changed")
	}
	if len(flows[len(flows)-2].Split.Streams[0].Chunks) != 3 || buffered(flows) != want {
		t.Fatal("sending took the bytes out of the sender's flows")
	}
}

// overWire is send behind what gRPC does to a message: marshalled when
// sent (the sender may use its buffers again), unmarshalled into memory
// of the receiver's own.
func overWire(t testing.TB, send func(*pb.TakeChunk) error) func(*pb.TakeChunk) error {
	return func(ch *pb.TakeChunk) error {
		b, err := proto.Marshal(ch)
		if err != nil {
			t.Fatal(err)
		}
		var got pb.TakeChunk
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		return send(&got)
	}
}

// joined is flows with each stream's bytes in Data alone.
func joined(flows []engine.FlowState) []engine.FlowState {
	return eachStream(flows, func(x *engine.StreamState) {
		if b := bytes.Join(x.Pieces(), nil); len(b) > 0 {
			x.Data = b
		}
		x.Chunks = nil
	})
}

// TestAssembleRefuses: version-2 streams that break the encoding are
// errors: data before a header, a second header before the first part's
// bytes, more bytes than announced, a stream that ends short, lengths that
// do not match the streams, a chunk of the other version.
func TestAssembleRefuses(t *testing.T) {
	e := splitEngine(t)
	openFlows(e, mobile, 1, 3)
	var chunks []*pb.TakeChunk
	if err := sendChunks(gateway.Handoff{Flows: e.Export(false)}, 2, overWire(t, func(ch *pb.TakeChunk) error { chunks = append(chunks, ch); return nil })); err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 2 {
		t.Fatalf("set-up: %d chunks", len(chunks))
	}
	hdr, data := chunks[0], chunks[1]
	var buf bytes.Buffer
	lens := func(l ...int) *pb.TakeChunk {
		h := partHeader{Part: Part{Flows: e.Export(false)}, Lens: l}
		for i := range h.Part.Flows {
			s := *h.Part.Flows[i].Split
			s.Streams[0].Data, s.Streams[1].Data = nil, nil
			h.Part.Flows[i].Split = &s
		}
		b, err := encode(&buf, &h, 0)
		if err != nil {
			t.Fatal(err)
		}
		return &pb.TakeChunk{Version: 2, Flows: append([]byte(nil), b...)}
	}
	for _, c := range []struct {
		name   string
		chunks []*pb.TakeChunk
		want   string
	}{
		{"data first", []*pb.TakeChunk{data}, "data outside a part"},
		{"two headers", []*pb.TakeChunk{hdr, hdr}, "before the last one's data"},
		{"too much", []*pb.TakeChunk{hdr, data, data}, "outside a part"},
		{"too much in one", []*pb.TakeChunk{hdr, {Version: 2, Data: append(bytes.Clone(data.Data), 0)}}, "more data than the part holds"},
		{"short", []*pb.TakeChunk{hdr, {Version: 2, Data: data.Data[1:]}}, "ended inside a part's data"},
		{"fewer lengths", []*pb.TakeChunk{lens(len(data.Data))}, "fewer lengths"},
		{"more lengths", []*pb.TakeChunk{lens(len(data.Data), 0, 5)}, "more lengths"},
		{"negative", []*pb.TakeChunk{lens(-1, 0)}, "stream of -1 bytes"},
		{"huge", []*pb.TakeChunk{lens(maxStream+1, 0)}, "bound"},
		{"both", []*pb.TakeChunk{{Version: 2, Flows: hdr.Flows, Data: data.Data}}, "a part and data"},
		{"empty", []*pb.TakeChunk{hdr, {Version: 2}}, "an empty chunk"},
		{"version 1 inside", []*pb.TakeChunk{hdr, {Version: 1, Data: data.Data}}, "flow encoding 1 in a stream of 2"},
	} {
		a := assembler{version: 2}
		var err error
		for _, ch := range c.chunks {
			if _, _, err = a.add(ch); err != nil {
				break
			}
		}
		if err == nil {
			err = a.end()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestTakeFromOldGateway: a gateway that speaks only version 1 refuses
// the request for 2; Take asks again in 1 and every flow and byte comes.
func TestTakeFromOldGateway(t *testing.T) {
	old, neu := splitEngine(t), splitEngine(t)
	openFlows(old, mobile, 20, 16)
	want := buffered(old.Export(false))
	w := newWorld(t, EngineSource{old})
	addr, srv := w.serve(EngineSource{old}, "gw-v1")
	srv.newest = 1
	n, err := w.clientAt(addr, newGW).Take(context.Background(), mobile, func(p Part) error {
		return neu.Import(p.Flows)
	})
	if err != nil || n != 20 || buffered(neu.Export(false)) != want {
		t.Fatalf("take: %d flows, %v; the new engine holds %d bytes of %d", n, err, buffered(neu.Export(false)), want)
	}
	if len(old.Export(false)) != 0 {
		t.Fatal("the old engine kept flows")
	}
}
