package gateway

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// TestReplayAcrossEntryReplacement: an SA given again with the same keys
// (a security server's push, a reload) keeps its replay window at the
// gateway: a packet opened before is refused after, as it would have been
// without the new entry (DESIGN.md rule 3).
func TestReplayAcrossEntryReplacement(t *testing.T) {
	r := newPathRig(t, ipsec.EncAESGCM16, true, engine.ModeSplit)
	r.batch(4)
	old := slices.Clone(r.data[1])
	for i := range 3 {
		r.g.Process(engine.Wire, slices.Clone(r.data[i]))
	}
	before := r.g.Stats()
	r.g.SetSAD(sadOf(t, r.cfgs))
	r.g.Process(engine.Wire, old)
	after := r.g.Stats()
	if after.Opened != before.Opened || after.Replays != before.Replays+1 {
		t.Fatalf("a packet opened before the SA was given again: opened %d → %d, replays %d → %d", before.Opened, after.Opened, before.Replays, after.Replays)
	}
	r.g.Process(engine.Wire, slices.Clone(r.data[3]))
	if got := r.g.Stats().Opened; got != after.Opened+1 {
		t.Fatalf("the next packet on the SA: opened %d → %d", after.Opened, got)
	}
}

// TestReplayNotRelayed: a replay of an endpoint's packet on an SA the
// gateway numbers is dropped, not relayed as it came. The receiver's
// window follows the gateway's numbers, which may be behind the
// endpoint's: relayed, a replay with a number above the gateway's would
// be accepted there, and the gateway's next packets refused as too old —
// one replayed packet from anyone would stall the SA.
func TestReplayNotRelayed(t *testing.T) {
	var mu sync.Mutex
	var seqs []uint32 // sequence numbers on A's SA the gateway sent
	r := newPathRigN(t, ipsec.EncAESGCM16, true, engine.ModeSplit, 1, false, func(pkt []byte) {
		if len(pkt) >= 28 && pkt[9] == header.ProtoESP && binary.BigEndian.Uint32(pkt[20:]) == 0x1001 {
			mu.Lock()
			seqs = append(seqs, binary.BigEndian.Uint32(pkt[24:]))
			mu.Unlock()
		}
	})
	r.batch(40) // no ACK from the radio host: the gateway sends its first window only
	var old []byte
	for i := range 40 {
		if i == 30 {
			old = slices.Clone(r.data[i])
		}
		r.g.Process(engine.Wire, r.data[i])
	}
	mu.Lock()
	top := slices.Max(seqs)
	mu.Unlock()
	oldSeq := binary.BigEndian.Uint32(old[24:])
	if oldSeq <= top {
		t.Fatalf("the test needs the gateway's numbers (%d) behind the endpoint's (%d)", top, oldSeq)
	}
	before := r.g.Stats()
	r.g.Process(engine.Wire, old)
	after := r.g.Stats()
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(seqs, oldSeq) {
		t.Fatalf("a replay (number %d, the gateway's at %d) went out as it came: %s", oldSeq, top, after.Summary())
	}
	if after.Replays != before.Replays+1 {
		t.Fatalf("the replay was not counted: %d → %d", before.Replays, after.Replays)
	}
}

// TestReplayAfterRestart: a gateway's replay windows outlive it through
// its state directory. After a crash (the directory copied as it stood on
// disk while the gateway ran, and a new gateway started on the copy) the
// endpoint's packets accepted before the last record are refused, and at
// most statedir.NoteEvery after it open again; after a clean stop none does. A
// packet the endpoint sends next opens in both cases. Without the records
// every one of them opened again.
func TestReplayAfterRestart(t *testing.T) {
	r := newPathRig(t, ipsec.EncAESGCM16, true, engine.ModeSplit)
	path := filepath.Join(t.TempDir(), "state")
	dir, err := statedir.Open(path, statedir.Partition{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g1 := newDirGateway(t, r, dir)
	const n = 200
	r.batch(n)
	old := make([][]byte, n)
	for i := range n {
		old[i] = slices.Clone(r.data[i])
		g1.Process(engine.Wire, r.data[i])
		time.Sleep(statedir.NoteGap + time.Millisecond) // every NoteEvery-th number is recorded
	}
	g1.smu.Lock()
	st := g1.states[r.cfgs[0].ID()]
	g1.smu.Unlock()
	noted := st.accepted.Noted()
	for deadline := time.Now().Add(5 * time.Second); st.accepted.Recorded() < noted; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("record %d never written (%d on disk)", noted, st.accepted.Recorded())
		}
	}
	top := st.e.Write.InTop()
	if noted+statedir.NoteEvery <= top {
		t.Fatalf("last record %d, top %d: more than %d behind", noted, top, statedir.NoteEvery)
	}

	crashed, err := statedir.Open(copyStateDir(t, path), statedir.Partition{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	replayed := replayAll(t, r, crashed, old)
	if want := top - noted; replayed != want {
		t.Fatalf("after a crash %d of %d replays opened, want %d: those accepted after the last record (%d; top %d)", replayed, n, want, noted, top)
	}
	crashed.Close()

	g1.Close()
	if err := dir.Close(); err != nil {
		t.Fatal(err)
	}
	dir, err = statedir.Open(path, statedir.Partition{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if replayed := replayAll(t, r, dir, old); replayed != 0 {
		t.Fatalf("after a clean stop %d of %d replays opened", replayed, n)
	}
}

// newDirGateway is a gateway on r's SAs with state directory dir, its
// output dropped.
func newDirGateway(t *testing.T, r *pathRig, dir *statedir.Dir) *Gateway {
	t.Helper()
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, State: dir}, sadOf(t, r.cfgs), func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// replayAll gives a new gateway on dir the packets old, then the
// endpoint's next packet, which must open; it returns how many of old
// opened.
func replayAll(t *testing.T, r *pathRig, dir *statedir.Dir, old [][]byte) uint64 {
	t.Helper()
	g := newDirGateway(t, r, dir)
	for _, p := range old {
		g.Process(engine.Wire, slices.Clone(p))
	}
	replayed := g.Stats().Opened
	r.batch(1)
	g.Process(engine.Wire, r.data[0])
	if got := g.Stats().Opened; got != replayed+1 {
		t.Fatalf("the endpoint's next packet did not open: %s", g.Stats().Summary())
	}
	g.Close()
	return replayed
}

// copyStateDir copies the state directory at path, as it stands on disk,
// to a new one: what a successor finds after a crash at this moment.
func copyStateDir(t *testing.T, path string) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), "copy")
	if err := os.Mkdir(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"iv-blocks", "seq.log"} {
		b, err := os.ReadFile(filepath.Join(path, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}
