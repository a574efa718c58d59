package engine

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/espep/espep/internal/netem"
	"github.com/espep/espep/ipsec/header"
)

// TestIdleFlowMemory opens 100,000 flows (handshakes only, nothing
// cached) and reports the heap per flow; it fails above 1 KiB, which
// would mean the per-flow state stopped being small.
func TestIdleFlowMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k flows")
	}
	const n = 100_000
	c := netem.NewSimClock(time.Unix(0, 0))
	e := mustNew(t, Config{Clock: c, MaxFlows: n}, func(Side, []byte) {})
	syn := mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, header.TCPOptMSS, 4, 5, 0xb4)
	synack := mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, header.TCPOptMSS, 4, 5, 0xb4)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		port := uint16(1024 + i%60000)
		host := netip.AddrFrom4([4]byte{10, 9, byte(i / 60000), 2})
		r := netip.AddrPortFrom(host, port)
		s, sa := append([]byte(nil), syn...), append([]byte(nil), synack...)
		// rewrite the radio-side address and port of both packets
		copy(s[16:20], host.AsSlice())
		binary.BigEndian.PutUint16(s[22:], port)
		copy(sa[12:16], host.AsSlice())
		binary.BigEndian.PutUint16(sa[20:], port)
		e.Process(Wire, s)
		e.Process(Radio, sa)
		_ = r
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got := e.Stats().Flows; got != n {
		t.Fatalf("%d flows", got)
	}
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%d idle flows: %.0f bytes of heap per flow", n, per)
	if per > 1024 {
		t.Fatalf("%.0f bytes per idle flow", per)
	}
	runtime.KeepAlive(e)
}
