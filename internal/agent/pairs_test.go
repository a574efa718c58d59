package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/espep/espep/internal/host"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// memHost runs an espep host in memory whose TCP to peer takes its pair
// from the security server, with a control socket; it returns the host,
// its link and the socket's path.
func memHost(t *testing.T, dir string, self, peer netip.Addr) (*host.Host, *host.MemLink, string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("espep-host 1\n[host]\nstate-dir = state\ncontrol = ctl.sock\n[policy]\nname = tcp\nlocal = %s\nremote = %s\n"+
		"proto = tcp\naction = protect\nsa = server\nself = %[1]s\npeer = %[2]s\nproxy = write\n", self, peer)
	path := filepath.Join(dir, "host.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := host.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	m := host.NewMemLink()
	h, err := host.NewWithLink(cfg, slog.New(slog.DiscardHandler), m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		h.Close()
	})
	sock := filepath.Join(dir, "ctl.sock")
	for range 400 {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return h, m, sock
}

// TestAgentPairs is scheme 4 between two espep hosts, in memory: each
// host's agent asks the server for the pair of its sa = server policy and
// installs it; the hosts talk over it; the gateway of the mobile's area
// gets the same pair pushed. When the lease of a gateway that numbered
// the pair lapses, both agents are ordered to rekey: the pair is replaced
// once, both hosts move to it, and no packet between them is refused.
func TestAgentPairs(t *testing.T) {
	w := sectest.Start(t)
	w.Server.SetLease(500 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Server.Run(ctx)
	dir := t.TempDir()
	hl, ml, sockL := memHost(t, filepath.Join(dir, "left"), left, right)
	hr, mr, sockR := memHost(t, filepath.Join(dir, "right"), right, left)
	ml.Peer, mr.Peer = mr, ml
	srvL := w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "left", Addrs: []netip.Addr{left}})
	srvR := w.Client(t, pki.Identity{Role: pki.RoleAgent, Name: "right", Addrs: []netip.Addr{right}})
	al := New(Config{HostSockets: []string{sockL}, Log: slog.New(slog.DiscardHandler)}, srvL)
	ar := New(Config{HostSockets: []string{sockR}, Area: "cell-4", Log: slog.New(slog.DiscardHandler)}, srvR)
	gw := w.Client(t, pki.Identity{Role: pki.RoleGateway, Name: "gw-4", Areas: []string{"cell-4"}})
	pushed := make(chan []ipsec.Config, 16)
	go gw.Watch(ctx, func(add []ipsec.Config, _ []ipsec.ID, _ bool) { pushed <- add })
	<-pushed // the state at the start: nothing

	if err := ar.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := al.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if ar.Installs != 1 || al.Installs != 1 {
		t.Fatalf("installs: right %d, left %d", ar.Installs, al.Installs)
	}
	first := <-pushed
	if len(first) != 2 {
		t.Fatalf("pushed to the area's gateway: %v", first)
	}
	talk := func(what string) uint32 {
		t.Helper()
		ap, bp := netip.AddrPortFrom(left, 40000), netip.AddrPortFrom(right, 80)
		seg := packettest.Segment(ap, bp, header.TCPAck|header.TCPPsh, 1000, 1, 65535, nil, []byte("over the generated pair"))
		back := packettest.Segment(bp, ap, header.TCPAck, 1, 1023, 65535, nil, nil)
		ml.Tun <- seg
		mr.Tun <- back
		var gotR, gotL [][]byte
		var sent [][]byte
		for range 400 {
			d, s := mr.Take()
			gotR, sent = append(gotR, d...), append(sent, s...)
			d, _ = ml.Take()
			gotL = append(gotL, d...)
			if len(gotR) > 0 && len(gotL) > 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if len(gotR) != 1 || !bytes.Equal(gotR[0], seg) || len(gotL) != 1 || !bytes.Equal(gotL[0], back) {
			t.Fatalf("%s: right got %d, left %d; left %s; right %s", what, len(gotR), len(gotL), hl.Stats().Summary(), hr.Stats().Summary())
		}
		return spiOf(sent[0])
	}
	spi := talk("first pair")
	if spi != first[0].SPI && spi != first[1].SPI {
		t.Fatalf("right sealed on %#x, not on the pushed pair", spi)
	}

	// A gateway numbers the pair, then dies: both agents are ordered.
	go al.FollowOrders(ctx, srvL, nil)
	go ar.FollowOrders(ctx, srvR, nil)
	go al.Run(ctx, time.Hour) // Run is woken by the order, not by its ticker
	go ar.Run(ctx, time.Hour)
	time.Sleep(100 * time.Millisecond) // the order streams open
	id, err := gw.Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gw.Heartbeat(ctx, id, []ipsec.ID{first[0].ID(), first[1].ID()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var moved uint32
	for time.Now().Before(deadline) {
		if moved = talk("after the rekey order"); moved != first[0].SPI && moved != first[1].SPI {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if moved == first[0].SPI || moved == first[1].SPI {
		t.Fatal("the hosts did not move to a new pair after the gateway's lease lapsed")
	}
	time.Sleep(300 * time.Millisecond) // both agents done
	talk("on the new pair")
	if n := bytes.Count([]byte(w.Audit.String()), []byte(`"msg":"replaced"`)); n != 2 {
		t.Fatalf("the pair was replaced %d times (2 SAs once each expected):\n%s", n/2, w.Audit.String())
	}
	for _, h := range []*host.Host{hl, hr} {
		if st := h.Stats(); st.OpenErrors != 0 || st.SealErrors != 0 || st.NotOurs != 0 {
			t.Fatalf("a packet refused: %s", st.Summary())
		}
	}
}

// spiOf is the SPI of an ESP packet in IPv4 transport mode.
func spiOf(p []byte) uint32 {
	ihl := int(p[0]&0xf) * 4
	return uint32(p[ihl])<<24 | uint32(p[ihl+1])<<16 | uint32(p[ihl+2])<<8 | uint32(p[ihl+3])
}
