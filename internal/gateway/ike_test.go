package gateway

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/ctable"
	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
)

// ikeRecording is internal/ikev2's "follow" recording: strongSwan's IKE
// between 10.77.1.1 (left, the wire side here) and 10.77.2.1 — IKE_AUTH,
// two CHILD_SA rekeys, an IKE SA rekey, a third CHILD_SA rekey — as IPv4
// packets, and the charon log of the left.
func ikeRecording(t *testing.T) (pkts [][]byte, log string) {
	t.Helper()
	dir := filepath.Join("..", "ikev2", "testdata", "follow")
	link, frames, err := pcapio.ReadFile(filepath.Join(dir, "ike.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	for _, fr := range frames {
		if off, _, ok, err := pcapio.IPOffset(link, fr); err == nil && ok {
			pkts = append(pkts, fr[off:])
		}
	}
	return pkts, filepath.Join(dir, "left-charon.log")
}

// TestGatewayFollowsIKE: a gateway given only the IKE SA keys (both key
// sets charon logged: the IKE SA and the one that rekeyed it) relays the
// IKE messages untouched and, as each exchange's response passes,
// installs the CHILD_SAs it derives; the deletes withdraw the ones
// rekeyed away. Then an ESP packet sealed with charon's own keys on the
// last CHILD_SA is opened by the gateway, not relayed as unknown.
func TestGatewayFollowsIKE(t *testing.T) {
	pkts, log := ikeRecording(t)
	var mu sync.Mutex
	var out [][]byte
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, Log: slog.New(slog.DiscardHandler)}, &ipsec.SAD{},
		func(_ engine.Side, p []byte) {
			mu.Lock()
			out = append(out, append([]byte(nil), p...))
			mu.Unlock()
		})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	s := NewIKESAs(g, ikefollow.New(ikefollow.Config{}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := charonlog.ParseIKE(f, log)
	f.Close()
	if err != nil || len(keys) != 2 {
		t.Fatalf("%d key sets, %v", len(keys), err)
	}
	for _, k := range keys {
		if err := s.AddKeys(k); err != nil {
			t.Fatal(err)
		}
	}
	left := netip.MustParseAddr("10.77.1.1")
	for _, p := range pkts {
		from := engine.Radio
		if netip.AddrFrom4([4]byte(p[12:16])) == left {
			from = engine.Wire
		}
		g.Process(from, p)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Removed < 6 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := s.Stats()
	if st.Children != 4 || st.Installed != 8 || st.Removed != 6 || st.QueueDrops != 0 || st.Queued != uint64(len(pkts)) {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	relayed := len(out)
	mu.Unlock()
	if relayed != len(pkts) || g.Stats().IKE != uint64(len(pkts)) {
		t.Fatalf("%d of %d IKE packets relayed (%d counted)", relayed, len(pkts), g.Stats().IKE)
	}
	// charon's last two SAs are the last CHILD_SA's: in the SAD.
	f, _ = os.Open(log)
	want, err := charonlog.ParseLive(f, log)
	f.Close()
	if err != nil || len(want) != 2 {
		t.Fatalf("charon's live SAs: %d, %v", len(want), err)
	}
	have := map[ipsec.ID]bool{}
	for _, e := range g.sad.Load().Entries() {
		have[e.Config.ID()] = true
	}
	if len(have) != 2 {
		t.Errorf("SAD has %d SAs, want the last CHILD_SA's 2", len(have))
	}
	var toRight ipsec.Config
	for _, c := range want {
		if !have[c.ID()] {
			t.Errorf("charon's SA %v is not in the gateway's SAD", c.ID())
		}
		if c.Dst == netip.MustParseAddr("10.77.2.1") {
			toRight = c
		}
	}
	toRight.EncapSrcPort, toRight.EncapDstPort = 4500, 4500
	sa, err := ipsec.New(toRight)
	if err != nil {
		t.Fatal(err)
	}
	syn := packettest.Segment(netip.MustParseAddrPort("10.78.1.1:40000"), netip.MustParseAddrPort("10.78.2.1:80"), 0x02, 1000, 0, 65535, nil, nil)
	before := g.Stats().Opened
	g.Process(engine.Wire, seal(sa, syn))
	if g.Stats().Opened != before+1 {
		t.Fatalf("the gateway did not open a packet on the derived SA: %+v", g.Stats())
	}
}

// TestIKECounters: every counter of the IKE source — its own and the
// follower's — has a row in its table.
func TestIKECounters(t *testing.T) {
	if err := ctable.CheckTable(IKECounterTable(), IKEStats{}); err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, d := range IKECounterTable() {
		rows[d.Field] = true
	}
	ft := reflect.TypeOf(ikefollow.Stats{})
	for i := range ft.NumField() {
		if !rows[ft.Field(i).Name] {
			t.Errorf("follower counter %s has no row", ft.Field(i).Name)
		}
	}
}
