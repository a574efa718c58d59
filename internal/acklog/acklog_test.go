package acklog

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec/header"
)

var server = netip.MustParseAddrPort("198.51.100.7:80")

const (
	mss        = 1400
	isnW, isnR = 1000, 5000
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// split is a split engine writing to a journal in dir.
func split(t testing.TB, dir string, minSeg int64) (*engine.Engine, *Log) {
	t.Helper()
	j, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if minSeg > 0 {
		j.minSeg = minSeg
	}
	e, err := engine.New(engine.Config{Mode: engine.ModeSplit, Shards: 2, Journal: j}, func(engine.Side, []byte, engine.Emitted) {})
	if err != nil {
		t.Fatal(err)
	}
	return e, j
}

// mobile i's port.
func mobile(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("10.9.0.2"), uint16(20000+i))
}

// open opens flow i (window scale 7 both ways, so that it can hold
// megabytes).
func open(e *engine.Engine, i int) {
	syn := []byte{header.TCPOptMSS, 4, mss >> 8, mss & 0xff, header.TCPOptNop, header.TCPOptWS, 3, 7}
	m := mobile(i)
	e.Process(engine.Radio, packettest.Segment(m, server, header.TCPSyn, isnR, 0, 65535, syn, nil))
	e.Process(engine.Wire, packettest.Segment(server, m, header.TCPSyn|header.TCPAck, isnW, isnR+1, 65535, syn, nil))
	e.Process(engine.Radio, packettest.Segment(m, server, header.TCPAck, isnR+1, isnW+1, 65535, nil, nil))
}

// send has the server send segments [from, to) of flow i, segment k
// filled with byte k+i.
func send(e *engine.Engine, i, from, to int) {
	for k := from; k < to; k++ {
		e.Process(engine.Wire, packettest.Segment(server, mobile(i), header.TCPAck|header.TCPPsh, uint32(isnW+1+k*mss), isnR+1, 65535, nil,
			bytes.Repeat([]byte{byte(k + i)}, mss)))
	}
}

// ack has mobile i acknowledge the first n segments.
func ack(e *engine.Engine, i, n int) {
	e.Process(engine.Radio, packettest.Segment(mobile(i), server, header.TCPAck, isnR+1, uint32(isnW+1+n*mss), 65535, nil, nil))
}

// held returns what each flow holds toward the mobile, by port.
func held(t testing.TB, flows []engine.FlowState) map[uint16][]byte {
	t.Helper()
	out := map[uint16][]byte{}
	for _, f := range flows {
		s := f.Split.Streams[engine.Wire]
		out[f.Radio.Port()] = bytes.Join(s.Pieces(), nil)
	}
	return out
}

// TestRecoverAfterKill: an engine with three flows — one acknowledged in
// part, one whole (it holds nothing), one reset — dies without a word;
// the next start recovers exactly what each held, byte for byte, and an
// engine importing it writes it to its own journal, so that the files of
// the dead one can go and a second death loses nothing either.
func TestRecoverAfterKill(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "acklog")
	e1, _ := split(t, dir, 0)
	for i := range 4 {
		open(e1, i)
		send(e1, i, 0, 40)
	}
	ack(e1, 0, 15)
	ack(e1, 1, 40)
	e1.Process(engine.Wire, packettest.Segment(server, mobile(2), header.TCPRst, uint32(isnW+1+40*mss), 0, 0, nil, nil))
	want := held(t, e1.Export(false))
	delete(want, mobile(1).Port())
	delete(want, mobile(2).Port())
	if len(want) != 2 || len(want[mobile(0).Port()]) != 25*mss {
		t.Fatalf("the engine holds %d flows, flow 0 %d bytes", len(want), len(want[mobile(0).Port()]))
	}
	// e1 is neither closed nor its journal: a SIGKILL.

	j2, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	flows, rec, err := j2.Recover(time.Now(), time.Minute, 4<<20)
	if err != nil || rec.Flows != 2 || rec.Bytes != 65*mss || rec.Damaged != 0 {
		t.Fatalf("recovered %+v: %v", rec, err)
	}
	got := held(t, flows)
	for port, b := range want {
		if !bytes.Equal(got[port], b) {
			t.Errorf("flow %d: recovered %d bytes, it held %d (or other bytes)", port, len(got[port]), len(b))
		}
	}
	e2, err := engine.New(engine.Config{Mode: engine.ModeSplit, Journal: j2}, func(engine.Side, []byte, engine.Emitted) {})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.ImportMoved(flows); err != nil {
		t.Fatal(err)
	}
	if err := j2.DropOlder(); err != nil {
		t.Fatal(err)
	}
	j3, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	flows3, rec3, err := j3.Recover(time.Now(), time.Minute, 4<<20)
	if err != nil || rec3.Flows != 2 || rec3.Bytes != rec.Bytes {
		t.Fatalf("after the second death: %+v: %v", rec3, err)
	}
	for port, b := range held(t, flows3) {
		if !bytes.Equal(b, want[port]) {
			t.Errorf("flow %d: the second recovery differs", port)
		}
	}
	if late, rec, _ := j3.Recover(time.Now().Add(time.Hour), time.Minute, 4<<20); len(late) != 0 || rec.Stale == 0 {
		t.Errorf("files older than the engine's give-up time recovered: %+v", rec)
	}
}

// TestCheckpointBounds: a long transfer, acknowledged as it goes, through
// a journal whose segments are small: checkpoints keep each shard to a
// segment or two, and a recovery still gives what is held — and, since
// an ACK's record waits for the next write unless it drains the flow,
// what the receiver acknowledged after the last write before it.
func TestCheckpointBounds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "acklog")
	e, _ := split(t, dir, 256<<10)
	open(e, 0)
	open(e, 1)
	for k := 0; k < 2000; k += 50 {
		send(e, 0, k, k+50)
		send(e, 1, k, k+50)
		ack(e, 0, k+20)
		ack(e, 1, k+50)
	}
	if c := e.Stats().JournalCheckpoints; c < 10 {
		t.Fatalf("%d checkpoints for 5.6 MB through 256 KiB segments", c)
	}
	names, err := list(dir)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n.String()))
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
	}
	if len(names) > 2 || size > 3*256<<10 {
		t.Errorf("%d files, %d bytes after checkpoints", len(names), size)
	}
	want := held(t, e.Export(false))
	j, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	flows, rec, err := j.Recover(time.Now(), time.Minute, 4<<20)
	got, w := held(t, flows)[mobile(0).Port()], want[mobile(0).Port()]
	if err != nil || rec.Flows != 1 || !bytes.HasSuffix(got, w) || len(got) > len(w)+50*mss {
		t.Fatalf("recovered %+v (%v): %d bytes for the %d the engine holds", rec, err, len(got), len(w))
	}
}

// TestTornFiles: a file cut anywhere, or with any byte changed, is read
// up to the damage and counted; never an error or a panic, and never
// more than the engine held.
func TestTornFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "acklog")
	e, _ := split(t, dir, 0)
	open(e, 0)
	send(e, 0, 0, 6)
	names, _ := list(dir)
	if len(names) != 1 {
		t.Fatalf("%d files", len(names))
	}
	path := filepath.Join(dir, names[0].String())
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for cut := 0; cut < len(whole); cut += 97 {
		r := newReplay(4 << 20)
		err := r.read(bytes.NewReader(whole[:cut]))
		flows := r.flowStates()
		if n := len(flows); n > 1 || n == 1 && flows[0].Buffered() > 6*mss {
			t.Fatalf("cut at %d: %d flows", cut, n)
		}
		if cut > 0 && err == nil && len(flows) == 1 && flows[0].Buffered()%mss != 0 {
			t.Fatalf("cut at %d: a torn record taken", cut)
		}
	}
	for at := 0; at < len(whole); at += 31 {
		b := bytes.Clone(whole)
		b[at] ^= 0x10
		r := newReplay(4 << 20)
		if err := r.read(bytes.NewReader(b)); err == nil {
			t.Fatalf("byte %d changed: read whole", at)
		}
	}
}

// TestDataAllocates: a segment's record allocates nothing once the
// buffer has grown.
func TestDataAllocates(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "acklog"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	s := j.Shard(0)
	b := make([]byte, mss)
	var seq uint32
	n := testing.AllocsPerRun(200, func() {
		if err := s.Data(server, mobile(0), engine.Wire, seq, [2]uint32{1, 2}, b); err != nil {
			t.Fatal(err)
		}
		s.Acked(server, mobile(0), engine.Wire, seq, [2]uint32{1, 2}, false)
		seq += mss
	})
	if n != 0 {
		t.Errorf("%.1f allocations a segment", n)
	}
}

// BenchmarkData is what the journal adds to each 1400-byte segment split
// takes: one record, one write to the page cache. The baseline, measured
// interleaved in the same run, is a bare write of as many bytes to a file
// in the same directory; the ratio is the journal's time over it.
func BenchmarkData(b *testing.B) {
	dir := b.TempDir()
	j, err := Open(filepath.Join(dir, "acklog"), quiet())
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	f, err := os.Create(filepath.Join(dir, "bare"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := j.Shard(0)
	p := make([]byte, mss)
	b.SetBytes(mss)
	b.ReportAllocs()
	const chunk = 64
	var seq uint32
	var tj, tw time.Duration
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		t0 := time.Now()
		for range n {
			if err := s.Data(server, mobile(0), engine.Wire, seq, [2]uint32{1, 2}, p); err != nil {
				b.Fatal(err)
			}
			seq += mss
		}
		t1 := time.Now()
		for range n {
			if _, err := f.Write(p); err != nil {
				b.Fatal(err)
			}
		}
		tj += t1.Sub(t0)
		tw += time.Since(t1)
	}
	b.ReportMetric(float64(tj.Nanoseconds())/float64(b.N), "journal-ns/op")
	b.ReportMetric(float64(tw.Nanoseconds())/float64(b.N), "bare-write-ns/op")
	b.ReportMetric(float64(tj)/float64(tw), "ratio")
}
