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
	"github.com/espep/espep/internal/ikev2"
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
	g, s, relayed := ikeGateway(t)
	keys := charonIKEKeys(t, log)
	for _, k := range keys {
		if err := s.AddKeys(k); err != nil {
			t.Fatal(err)
		}
	}
	feedIKE(g, pkts)
	st := waitRemoved(s, 6)
	if st.Children != 4 || st.Installed != 8 || st.Removed != 6 || st.QueueDrops != 0 || st.Queued != uint64(len(pkts)) {
		t.Fatalf("stats %+v", st)
	}
	if n := relayed(); n != len(pkts) || g.Stats().IKE != uint64(len(pkts)) {
		t.Fatalf("%d of %d IKE packets relayed (%d counted)", n, len(pkts), g.Stats().IKE)
	}
	opensLastChild(t, g, log)
}

// TestGatewayHandsIKE: gateway 1 follows the IKE SA through IKE_AUTH and
// hands its keys to gateway 2 as a handoff offer would (Keyed, then
// ProvisionIKE); gateway 2, seeing only the exchanges after that — two
// CHILD_SA rekeys, the IKE SA's rekey (its new keys delegated to it as
// usual), a rekey on the new IKE SA — ends with the last CHILD_SA's two
// SAs in its SAD, in UDP 4500 as the peers' ESP is (learnt from the
// offer, not from an IKE_SA_INIT it never saw), and opens a packet
// charon's keys sealed on them.
func TestGatewayHandsIKE(t *testing.T) {
	pkts, log := ikeRecording(t)
	keys := charonIKEKeys(t, log)
	g1, s1, _ := ikeGateway(t)
	if err := s1.AddKeys(keys[0]); err != nil {
		t.Fatal(err)
	}
	feedIKE(g1, pkts[:4]) // IKE_SA_INIT, IKE_AUTH
	deadline := time.Now().Add(5 * time.Second)
	for s1.Stats().Installed < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	handed := s1.Keyed()
	if len(handed) != 1 || !handed[0].Encap {
		t.Fatalf("gateway 1 would hand %+v", handed)
	}
	g2, s2, _ := ikeGateway(t)
	if err := s2.ProvisionIKE("gw-1", handed, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s2.AddKeys(keys[1]); err != nil {
		t.Fatal(err)
	}
	feedIKE(g2, pkts[4:])
	st := waitRemoved(s2, 4)
	if st.Handed != 1 || st.Children != 3 || st.Installed != 6 || st.Removed != 4 {
		t.Fatalf("gateway 2: %s", st.Summary())
	}
	opensLastChild(t, g2, log)
}

// ikeGateway is a split gateway following IKE (its follower running until
// the test ends); relayed counts the packets it sent.
func ikeGateway(t *testing.T) (g *Gateway, s *IKESAs, relayed func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	g, err := New(Config{Engine: engine.Config{Mode: engine.ModeSplit}, Log: slog.New(slog.DiscardHandler)}, &ipsec.SAD{},
		func(engine.Side, []byte) {
			mu.Lock()
			n++
			mu.Unlock()
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	s = NewIKESAs(g, ikefollow.New(ikefollow.Config{}))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go s.Run(ctx)
	return g, s, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// charonIKEKeys are the two IKE key sets of the recording's charon log.
func charonIKEKeys(t *testing.T, log string) []ikev2.Keys {
	t.Helper()
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys, err := charonlog.ParseIKE(f, log)
	if err != nil || len(keys) != 2 {
		t.Fatalf("%d key sets, %v", len(keys), err)
	}
	return keys
}

// feedIKE passes the recording's packets through g, each from the side
// of its sender.
func feedIKE(g *Gateway, pkts [][]byte) {
	left := netip.MustParseAddr("10.77.1.1")
	for _, p := range pkts {
		from := engine.Radio
		if netip.AddrFrom4([4]byte(p[12:16])) == left {
			from = engine.Wire
		}
		g.Process(from, p)
	}
}

// waitRemoved waits (at most 5 s) until the IKE source has withdrawn n
// SAs, and returns its counts.
func waitRemoved(s *IKESAs, n uint64) IKEStats {
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Removed < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return s.Stats()
}

// opensLastChild checks that g's SAD holds exactly charon's two live SAs
// (the last CHILD_SA) and that g opens an ESP packet charon's keys sealed
// on the one toward the right, in UDP 4500.
func opensLastChild(t *testing.T, g *Gateway, log string) {
	t.Helper()
	f, _ := os.Open(log)
	want, err := charonlog.ParseLive(f, log)
	f.Close()
	if err != nil || len(want) != 2 {
		t.Fatalf("charon's live SAs: %d, %v", len(want), err)
	}
	have := map[ipsec.ID]bool{}
	for _, e := range g.sad.Load().Entries() {
		have[e.Config.ID()] = true
		if e.Config.EncapSrcPort != 4500 || e.Config.EncapDstPort != 4500 {
			t.Errorf("SA %v: UDP encapsulation %d→%d, want 4500→4500 as the peers' ESP", e.Config.ID(), e.Config.EncapSrcPort, e.Config.EncapDstPort)
		}
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
