package gateway

import (
	"encoding/binary"
	"slices"
	"sync"
	"testing"

	"github.com/espep/espep/internal/engine"
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
