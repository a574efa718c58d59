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

// TestIdleFlowMemory opens 100,000 flows and reports the heap per flow:
// in snoop mode after the handshake (nothing cached), in split mode after
// a segment each way and its ACK (buffers given back, timers armed). It
// fails above 1 KiB (snoop) and 4 KiB (split), which would mean the
// per-flow state stopped being small.
func TestIdleFlowMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k flows")
	}
	const n = 100_000
	for _, tc := range []struct {
		mode  Mode
		bound float64
	}{{ModeSnoop, 1024}, {ModeSplit, 4096}} {
		c := netem.NewSimClock(time.Unix(0, 0))
		e := mustNew(t, Config{Clock: c, MaxFlows: n, Mode: tc.mode}, func(Side, []byte) {})
		opts := []byte{header.TCPOptMSS, 4, 5, 0xb4, header.TCPOptNop, header.TCPOptWS, 3, 7, header.TCPOptSACKPerm, 2}
		pkts := []struct {
			from Side
			pkt  []byte
		}{
			{Wire, mkseg(wireHost, radioHost, header.TCPSyn, isnW, 0, 65535, 0, opts...)},
			{Radio, mkseg(radioHost, wireHost, header.TCPSyn|header.TCPAck, isnR, isnW+1, 65535, 0, opts...)},
			{Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 512, 0)},
			{Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+1, isnR+1, 512, 100)},
			{Radio, mkseg(radioHost, wireHost, header.TCPAck, isnR+1, isnW+101, 512, 100)},
			{Wire, mkseg(wireHost, radioHost, header.TCPAck, isnW+101, isnR+101, 512, 0)},
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := 0; i < n; i++ {
			port := uint16(1024 + i%60000)
			host := netip.AddrFrom4([4]byte{10, 9, byte(i / 60000), 2})
			for _, p := range pkts {
				b := append([]byte(nil), p.pkt...)
				// rewrite the radio-side address and port (no checksums checked)
				if p.from == Wire {
					copy(b[16:20], host.AsSlice())
					binary.BigEndian.PutUint16(b[22:], port)
				} else {
					copy(b[12:16], host.AsSlice())
					binary.BigEndian.PutUint16(b[20:], port)
				}
				e.Process(p.from, b)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := e.Stats()
		if st.Flows != n || tc.mode == ModeSplit && (st.EarlyAcked != 200*n || st.BufferedBytes != 0) {
			t.Fatalf("%v: %+v", tc.mode, st)
		}
		per := float64(after.HeapAlloc-before.HeapAlloc) / n
		t.Logf("%v: %d idle flows: %.0f bytes of heap per flow", tc.mode, n, per)
		if per > tc.bound {
			t.Fatalf("%v: %.0f bytes per idle flow", tc.mode, per)
		}
		runtime.KeepAlive(e)
	}
}
