package acklog

import (
	"bytes"
	"errors"
	"fmt"
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
	e, j := split(t, dir, 256<<10)
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
	if err := j.Close(); err != nil { // the open segments' reserved tails cut off
		t.Fatal(err)
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
	if len(names) > 4 || size > 4*2*256<<10 { // two slots a shard, each within twice the limit
		t.Errorf("%d files, %d bytes after checkpoints", len(names), size)
	}
	want := held(t, e.Export(false))
	j, err = Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	flows, rec, err := j.Recover(time.Now(), time.Minute, 4<<20)
	got, w := held(t, flows)[mobile(0).Port()], want[mobile(0).Port()]
	if err != nil || rec.Flows != 1 || !bytes.HasSuffix(got, w) || len(got) > len(w)+50*mss {
		t.Fatalf("recovered %+v (%v): %d bytes for the %d the engine holds", rec, err, len(got), len(w))
	}
}

// TestKilledInCheckpoint: a process killed while a checkpoint rewrites a
// flow — its state and part of its bytes in the new slot — loses none of
// them: the last complete checkpoint's slot is read first, and the flow
// written again keeps what it held there.
func TestKilledInCheckpoint(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "acklog")
	j, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(engine.Config{Mode: engine.ModeSplit, Shards: 1, Journal: j}, func(engine.Side, []byte, engine.Emitted) {})
	if err != nil {
		t.Fatal(err)
	}
	open(e, 0)
	send(e, 0, 0, 20)
	ack(e, 0, 5)
	states := e.Export(false)
	want := held(t, states)[mobile(0).Port()]
	if len(want) != 15*mss {
		t.Fatalf("the engine holds %d bytes", len(want))
	}
	s := j.Shard(0).(*shardLog)
	s.Checkpoint(func() error {
		if err := s.Flow(&states[0]); err != nil {
			return err
		}
		for k := 5; k < 8; k++ {
			if err := s.Data(server, mobile(0), engine.Wire, uint32(isnW+1+k*mss), [2]uint32{}, want[(k-5)*mss:(k-4)*mss]); err != nil {
				return err
			}
		}
		if err := s.Commit(); err != nil {
			return err
		}
		return errors.New("killed")
	})
	j2, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	flows, rec, err := j2.Recover(time.Now(), time.Minute, 4<<20)
	if err != nil || rec.Files != 2 || rec.Flows != 1 {
		t.Fatalf("recovered %+v: %v", rec, err)
	}
	if got := held(t, flows)[mobile(0).Port()]; !bytes.Equal(got, want) {
		t.Fatalf("recovered %d bytes, the engine held %d", len(got), len(want))
	}
}

// replayBytes replays one slot file's bytes.
func replayBytes(b []byte, bound int) []engine.FlowState {
	r := newReplay(bound)
	if sf, ok := parseSlot(b); ok {
		r.replayShard([]slotFile{*sf})
	}
	return r.flowStates()
}

// TestTornFiles: a slot cut anywhere, or with any byte changed, is read
// up to the damage: never a panic, never more than the engine held, and
// never a byte other than those it held.
func TestTornFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "acklog")
	e, j := split(t, dir, 0)
	open(e, 0)
	send(e, 0, 0, 6)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := list(dir)
	if len(names) != 1 {
		t.Fatalf("%d files", len(names))
	}
	whole, err := os.ReadFile(filepath.Join(dir, names[0].String()))
	if err != nil {
		t.Fatal(err)
	}
	all := held(t, replayBytes(whole, 4<<20))[mobile(0).Port()]
	if len(all) != 6*mss {
		t.Fatalf("the whole file gives %d bytes", len(all))
	}
	for cut := 0; cut < len(whole); cut += 97 {
		flows := replayBytes(whole[:cut], 4<<20)
		if n := len(flows); n > 1 || n == 1 && (flows[0].Buffered()%mss != 0 || !bytes.HasPrefix(all, held(t, flows)[mobile(0).Port()])) {
			t.Fatalf("cut at %d: %d flows, a torn record taken", cut, n)
		}
	}
	for at := 0; at < len(whole); at += 31 {
		b := bytes.Clone(whole)
		b[at] ^= 0x10
		got := held(t, replayBytes(b, 4<<20))[mobile(0).Port()]
		if !bytes.HasPrefix(all, got) || len(got) == len(all) {
			t.Fatalf("byte %d changed: %d bytes read, not a shorter prefix of what was written", at, len(got))
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
// takes: a record, and a Commit — one write into a slot's pages in the
// page cache — after every segment or after a batch of 16 (a batch of
// reads), with a checkpoint whenever the slot is full (the shard holds
// nothing here). The baseline, measured interleaved in the same run,
// appends as many bytes, as many times, to a file in the same directory —
// what a journal that appends costs, a new page for every 4 KiB; the
// ratio is the journal's time over it.
func BenchmarkData(b *testing.B) {
	for _, batch := range []int{1, 16} {
		b.Run(fmt.Sprintf("commit-every-%d", batch), func(b *testing.B) { benchData(b, batch) })
	}
}

func benchData(b *testing.B, batch int) {
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
	p := make([]byte, mss*batch)
	b.SetBytes(mss)
	b.ReportAllocs()
	var seq uint32
	var tj, tw time.Duration
	for done := 0; done < b.N; done += batch {
		n := min(batch, b.N-done)
		t0 := time.Now()
		for range n {
			if err := s.Data(server, mobile(0), engine.Wire, seq, [2]uint32{1, 2}, p[:mss]); err != nil {
				b.Fatal(err)
			}
			seq += mss
		}
		if err := s.Commit(); err != nil {
			b.Fatal(err)
		}
		if s.Full() {
			if err := s.Checkpoint(func() error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		if _, err := f.Write(p[:n*mss]); err != nil {
			b.Fatal(err)
		}
		tj += t1.Sub(t0)
		tw += time.Since(t1)
	}
	b.ReportMetric(float64(tj.Nanoseconds())/float64(b.N), "journal-ns/op")
	b.ReportMetric(float64(tw.Nanoseconds())/float64(b.N), "bare-write-ns/op")
	b.ReportMetric(float64(tj)/float64(tw), "ratio")
}
