package simnet

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/gvhost"
	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/ipsec"
)

var (
	wired = netem.Config{Rate: 100e6, Delay: 5 * time.Millisecond}
	radio = netem.Config{Rate: 20e6, Delay: 5 * time.Millisecond, QueuePackets: 200, Loss: 0.01, Seed: 3}
)

// TestRelayAndMiddle: bytes cross a plain relay both ways over a lossy
// radio; a middle box put in place sees every packet from then on and
// sends them on; taken away, the relay is back.
func TestRelayAndMiddle(t *testing.T) {
	n, err := New(Config{Wired: wired, Radio: radio, Hosts: gvhost.Options{SACK: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Transfer(true, 128<<10, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var seen [2]atomic.Int64
	n.SetMiddle(func(from engine.Side, pkt []byte) {
		seen[from].Add(1)
		to := engine.Radio
		if from == engine.Radio {
			to = engine.Wire
		}
		n.Send(to, pkt)
	})
	if _, err := n.Transfer(false, 128<<10, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if seen[engine.Wire].Load() == 0 || seen[engine.Radio].Load() < 64 {
		t.Fatalf("the middle box saw %d packets from the wire, %d from the radio", seen[engine.Wire].Load(), seen[engine.Radio].Load())
	}
	n.SetMiddle(nil)
	before := seen[engine.Radio].Load()
	if _, err := n.Transfer(false, 64<<10, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if seen[engine.Radio].Load() != before {
		t.Fatal("the middle box still saw packets after it was taken away")
	}
}

// TestCells: three cells with relays, a download to the mobile while it
// moves from cell 0 to 1 to 2; every cell's radio carries some of it both
// ways, what a radio brings to a cell the mobile left is lost (Stranded)
// and TCP makes up for it: the bytes arrive intact.
func TestCells(t *testing.T) {
	n, err := New(Config{Wired: wired, Radio: radio, Hosts: gvhost.Options{SACK: true}, Cells: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Move(3); err == nil {
		t.Fatal("moved to a cell that is not there")
	}
	done := make(chan error, 1)
	go func() { _, err := n.Transfer(true, 4<<20, 30*time.Second); done <- err }()
	var moved []uint64
	for cell := 1; cell < 3; cell++ {
		for n.Radios[cell-1].AB.Stats().Delivered < 300 {
			select {
			case err := <-done:
				t.Fatalf("the transfer ended in cell %d: %v", cell-1, err)
			case <-time.After(5 * time.Millisecond):
			}
		}
		if err := n.Move(cell); err != nil {
			t.Fatal(err)
		}
		moved = append(moved, n.Radios[cell-1].AB.Stats().Delivered)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n.Cell() != 2 {
		t.Fatalf("in cell %d", n.Cell())
	}
	for i, r := range n.Radios {
		if ab, ba := r.AB.Stats(), r.BA.Stats(); ab.Delivered == 0 || ba.Delivered == 0 {
			t.Errorf("cell %d's radio carried %d packets down, %d up", i, ab.Delivered, ba.Delivered)
		}
	}
	t.Logf("moved after %v packets down each cell; %d stranded", moved, n.Stranded.Load())
}

func testSA(t *testing.T, spi uint32, src, dst string) ipsec.Config {
	t.Helper()
	key := make([]byte, 20)
	for i := range key {
		key[i] = byte(spi) + byte(i)
	}
	return ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		Mode: ipsec.Tunnel, ReplayWindow: 64, Class: ipsec.ClassWrite, Enc: ipsec.EncAESGCM16, EncKey: key}
}

func mustSA(t *testing.T, c ipsec.Config) *ipsec.SA {
	t.Helper()
	sa, err := ipsec.New(c)
	if err != nil {
		t.Fatal(err)
	}
	return sa
}

// TestIPsecEnds: the hosts' TCP runs through ESP tunnels inside IP-in-IP
// over a plain relay, and Check finds nothing wrong; then the ends are
// handed what a faulty middle box would send — a copy of a packet they
// accepted (no failure), a packet outside the tunnel, one on an SPI they
// never had, one on an SA they deleted, one whose ICV is wrong — and each
// is refused and reported, while traffic on the rekeyed SAs still flows.
func TestIPsecEnds(t *testing.T) {
	ab, ba := testSA(t, 0x1001, "192.0.2.1", "192.0.2.2"), testSA(t, 0x2002, "192.0.2.2", "192.0.2.1")
	wEnd, mEnd := NewIPsec(mustSA(t, ab), mustSA(t, ba)), NewIPsec(mustSA(t, ba), mustSA(t, ab))
	ha, co := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	wEnd.Tunnel, mEnd.Tunnel = [2]netip.Addr{ha, co}, [2]netip.Addr{co, ha}
	var mu sync.Mutex
	var lastToMobile []byte
	wEnd.Sealed = func(p []byte) {
		mu.Lock()
		lastToMobile = append(lastToMobile[:0], p...)
		mu.Unlock()
	}
	n, err := New(Config{Wired: wired, Radio: radio, Hosts: gvhost.Options{SACK: true, MTU: 1400}, WiredEnd: wEnd, MobileEnd: mEnd})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Transfer(true, 256<<10, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := errorsOf(wEnd, mEnd); err != "" {
		t.Fatalf("a clean transfer: %s", err)
	}
	if mEnd.Inbound()[0].Stats().InPackets < 100 {
		t.Fatalf("the mobile's SA opened %d packets", mEnd.Inbound()[0].Stats().InPackets)
	}
	mu.Lock()
	copied := append([]byte(nil), lastToMobile...)
	mu.Unlock()
	tunnel := wEnd.tunnelled

	if mEnd.Open(tunnel(copied)) != nil || mEnd.Counts() != (Counts{}) {
		t.Fatalf("a copy of an accepted packet: %+v", mEnd.Counts())
	}
	if mEnd.Open(copied) != nil || mEnd.Counts().NotInTunnel != 1 {
		t.Fatalf("outside the tunnel: %+v", mEnd.Counts())
	}
	unknown := append([]byte(nil), copied...)
	unknown[20+3] ^= 0x40 // the SPI's last byte (the ESP header follows the outer IPv4 header)
	if mEnd.Open(tunnel(unknown)) != nil || mEnd.Counts().UnknownSPI != 1 {
		t.Fatalf("an unknown SPI: %+v", mEnd.Counts())
	}
	forged := append([]byte(nil), copied...)
	forged[len(forged)-1] ^= 1
	forged[20+6]++ // a sequence number not yet seen, so the ICV is what refuses it
	if mEnd.Open(tunnel(forged)) != nil || mEnd.Inbound()[0].Stats().ICVFailures != 1 {
		t.Fatalf("a bad ICV: %+v", mEnd.Inbound()[0].Stats())
	}

	ab2, ba2 := testSA(t, 0x3003, "192.0.2.1", "192.0.2.2"), testSA(t, 0x4004, "192.0.2.2", "192.0.2.1")
	wEnd.Rekey(mustSA(t, ab2), mustSA(t, ba2))
	mEnd.Rekey(mustSA(t, ba2), mustSA(t, ab2))
	mEnd.Delete(0x1001)
	wEnd.Delete(0x2002)
	if mEnd.Open(tunnel(copied)) != nil || mEnd.Counts().ToDeleted != 1 {
		t.Fatalf("a deleted SA: %+v", mEnd.Counts())
	}
	if _, err := n.Transfer(true, 64<<10, 30*time.Second); err != nil {
		t.Fatalf("after the rekey: %v", err)
	}
	got := errorsOf(wEnd, mEnd)
	for _, want := range []string{"1 packets outside the IP-in-IP tunnel", "1 packets on an unknown SA", "1 packets on a deleted SA", "refused 1 packets for their ICV"} {
		if !strings.Contains(got, want) {
			t.Errorf("Check does not report %q: %s", want, got)
		}
	}
}

// errorsOf is what Check reports for both ends, "" for nothing.
func errorsOf(ends ...*IPsec) string {
	var s []string
	for _, e := range ends {
		if err := e.Check(); err != nil {
			s = append(s, err.Error())
		}
	}
	return strings.Join(s, "; ")
}
