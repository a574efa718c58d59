package secserver_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
)

// BenchmarkFetch: gateways fetching an SA pair from one replica (bbolt
// store, gRPC over mutual TLS on loopback), from as many goroutines as
// -cpu says; it reports SAs served per second (two per fetch).
//
//	go test ./internal/secserver -run - -bench Fetch -cpu 1,8
func BenchmarkFetch(b *testing.B) {
	w := sectest.Start(b)
	ctx := context.Background()
	agent := w.Client(b, pki.Identity{Role: pki.RoleAgent, Name: "m", Addrs: []netip.Addr{mobile}})
	if err := agent.Upload(ctx, "cell-1", []ipsec.Config{gcm(0x1001, wired, mobile), gcm(0x2002, mobile, wired)}); err != nil {
		b.Fatal(err)
	}
	gw := w.Client(b, pki.Identity{Role: pki.RoleGateway, Name: "gw", Areas: []string{"cell-1"}})
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if got, err := gw.Fetch(ctx, wired, mobile); err != nil || len(got) != 2 {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(2*b.N)/b.Elapsed().Seconds(), "SAs/s")
}

// BenchmarkStoredSA: what one stored SA costs — bytes of the bbolt file
// and of the server's heap — for 10,000 SAs.
//
//	go test ./internal/secserver -run - -bench StoredSA -benchtime 1x
func BenchmarkStoredSA(b *testing.B) {
	const n = 10000
	for range b.N {
		dir := b.TempDir()
		path := filepath.Join(dir, "sa.db")
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		st, err := secserver.OpenBolt(path, make([]byte, 32))
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			c := gcm(uint32(0x10000+i), wired, mobile)
			if err := st.Put(secserver.SAKey{SPI: c.SPI, Dst: c.Dst, Proto: "esp"}, [2]netip.Addr{c.Src, c.Dst}, secserver.Record{SA: make([]byte, 80), Area: "cell-1", Owner: "m/1"}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		st.Close()
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size())/n, "file-B/SA")
		b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/n, "heap-B/SA")
	}
}
