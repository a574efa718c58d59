package metrics

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec"
)

func TestServeSACounters(t *testing.T) {
	var sad ipsec.SAD
	c := ipsec.Config{SPI: 0x1234, Proto: ipsec.ESP, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
		Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16, EncKey: make([]byte, 20), Class: ipsec.ClassWrite}
	e, err := ipsec.NewEntry(c)
	if err != nil {
		t.Fatal(err)
	}
	sad.Add(e)
	pkt := packettest.TCP(c.Src, c.Dst, []byte("x"))
	buf := make([]byte, ipsec.MaxHeadroom+len(pkt)+ipsec.MaxTailroom)
	copy(buf[ipsec.MaxHeadroom:], pkt)
	if _, err := e.Write.Seal(buf[:ipsec.MaxHeadroom+len(pkt)], ipsec.MaxHeadroom, len(pkt)); err != nil {
		t.Fatal(err)
	}
	events := Counter{Name: "espep_test_events_total", Help: "Test.", Labels: []string{"event"},
		Read: func() []Sample { return []Sample{{7, []string{"sealed"}}} }}
	held := Counter{Name: "espep_test_held_bytes", Help: "Test.", Gauge: true,
		Read: func() []Sample { return []Sample{{4096, nil}} }}
	reg, err := Registry(append(SACounters("espep_test_", func() *ipsec.SAD { return &sad }), events, held))
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, addr, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var body string
	for i := 0; i < 50; i++ {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{
		`espep_test_sa_out_packets_total{dst="10.0.0.2",proto="esp",spi="0x1234"} 1`,
		`espep_test_events_total{event="sealed"} 7`,
		"# TYPE espep_test_sa_icv_failures_total counter",
		"# TYPE espep_test_held_bytes gauge",
		"espep_test_held_bytes 4096",
	} {
		if !strings.Contains(body, want) {
			t.Fatalf("missing %q in:\n%s", want, body)
		}
	}
}
