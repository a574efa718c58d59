package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// hostConfig is a host at local protecting TCP to remote with the SA pair
// (out, in) of enc, bypassing UDP port 53 and discarding the rest.
func hostConfig(t *testing.T, dir, local, remote string, out, in uint32, enc string) *Config {
	t.Helper()
	key := "0x" + strings.Repeat("5a", 20)
	if enc == "chacha20-poly1305" {
		key = "0x" + strings.Repeat("5a", 36)
	}
	sas := "espep-sa 1\n"
	for _, sa := range []struct {
		spi      uint32
		src, dst string
	}{{out, local, remote}, {in, remote, local}} {
		sas += fmt.Sprintf("[sa]\nspi = %#x\nsrc = %s\ndst = %s\nmode = transport\nenc = %s\nenc-key = %s\n", sa.spi, sa.src, sa.dst, enc, key)
	}
	os.MkdirAll(dir, 0o700)
	if err := os.WriteFile(filepath.Join(dir, "sa"), []byte(sas), 0o600); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf(`espep-host 1
[host]
sa-file = sa
state-dir = state
[policy]
name = dns
remote = %[2]s
proto = udp
remote-ports = 53
action = bypass
[policy]
name = tcp
local = %[1]s
remote = %[2]s
proto = tcp
action = protect
sa = %#[3]x
`, local, remote, out)
	if err := os.WriteFile(filepath.Join(dir, "host.conf"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(filepath.Join(dir, "host.conf"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)) }

// memHost makes a host on a memLink and runs it until the test ends.
func memHost(t *testing.T, cfg *Config) (*Host, *MemLink, func() error) {
	t.Helper()
	h, err := newHost(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMemLink()
	h.link = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		err := <-done
		h.Close()
		return err
	})
	t.Cleanup(func() { stop() })
	return h, m, stop
}

// settle waits until the hosts' links have handled everything queued to
// them — packets one host sends land on the other's queue, so it goes
// round until a pass finds every queue empty — and then until the
// counters stop moving.
func settle(hs ...*Host) {
	for range 100 {
		empty := true
		for _, h := range hs {
			if m, ok := h.link.(*MemLink); ok {
				empty = m.Drained(5*time.Second) && empty
			}
		}
		for _, h := range hs {
			if m, ok := h.link.(*MemLink); ok && (len(m.Tun) > 0 || len(m.Net) > 0) {
				empty = false
			}
		}
		if empty {
			break
		}
	}
	var last []Stats
	for range 200 {
		now := make([]Stats, len(hs))
		for i, h := range hs {
			now[i] = h.Stats()
		}
		if fmt.Sprint(now) == fmt.Sprint(last) {
			return
		}
		last = now
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHostsInMemory: two hosts, their links joined in memory, no root:
// TCP the policy protects crosses sealed and arrives as it was sent; DNS
// the policy bypasses goes in the clear; other traffic is discarded; a
// cleartext packet from the network claiming the protected traffic is
// dropped by the inbound policy; IKE and NAT keepalives are counted.
func TestHostsInMemory(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, enc := range []string{"aes-gcm16", "chacha20-poly1305"} {
		t.Run(enc, func(t *testing.T) {
			dir := t.TempDir()
			a, ma, stopA := memHost(t, hostConfig(t, filepath.Join(dir, "a"), "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, enc))
			b, mb, stopB := memHost(t, hostConfig(t, filepath.Join(dir, "b"), "10.77.1.2", "10.77.1.1", 0x2002, 0x1001, enc))
			ma.Peer, mb.Peer = mb, ma
			ap, bp := netip.MustParseAddrPort("10.77.1.1:40000"), netip.MustParseAddrPort("10.77.1.2:80")
			var segs [][]byte
			for i := range 20 {
				s := packettest.Segment(ap, bp, header.TCPAck|header.TCPPsh, uint32(1000+i*100), 1, 65535, nil, bytes.Repeat([]byte{byte(i)}, 100))
				segs = append(segs, s)
				ma.Tun <- s
			}
			dns := packettest.UDP(netip.MustParseAddrPort("10.77.1.1:5353"), netip.MustParseAddrPort("10.77.1.2:53"), []byte("query"))
			ma.Tun <- dns
			ma.Tun <- packettest.UDP(netip.MustParseAddrPort("10.77.1.1:5353"), netip.MustParseAddrPort("10.77.1.2:9"), []byte("other"))
			settle(a, b)
			got, _ := mb.Take()
			if len(got) != len(segs) {
				t.Fatalf("b delivered %d packets, a was given %d: a %s; b %s", len(got), len(segs), a.Stats().Summary(), b.Stats().Summary())
			}
			for i := range got {
				if !bytes.Equal(got[i], segs[i]) {
					t.Fatalf("packet %d changed on the way", i)
				}
			}
			_, sent := ma.Take()
			var clear int
			for _, p := range sent {
				if bytes.Contains(p, []byte("query")) {
					clear++
				}
				if p[9] == header.ProtoTCP || bytes.Contains(p, []byte("other")) {
					t.Fatal("protected or discarded traffic left a in the clear")
				}
			}
			// From the network: the protected traffic in the clear, IKE, a
			// keepalive.
			mb.Net <- packettest.Segment(ap, bp, header.TCPAck, 1, 1, 65535, nil, []byte("forged"))
			mb.Net <- packettest.UDP(netip.MustParseAddrPort("10.77.1.1:4500"), netip.MustParseAddrPort("10.77.1.2:4500"), []byte{0xff})
			mb.Net <- packettest.UDP(netip.MustParseAddrPort("10.77.1.1:500"), netip.MustParseAddrPort("10.77.1.2:500"), make([]byte, 28))
			settle(a, b)
			if d, _ := mb.Take(); len(d) != 0 {
				t.Fatal("a cleartext packet claiming protected traffic was delivered")
			}
			sa, sb := a.Stats(), b.Stats()
			if clear != 1 || sa.Sealed != 20 || sa.Bypassed != 1 || sa.Discarded != 1 || sb.Opened != 20 || sb.NotOurs != 2 || sb.Keepalives != 1 || sb.IKE != 1 {
				t.Fatalf("a %s\nb %s", sa.Summary(), sb.Summary())
			}
			if err := stopA(); err != nil {
				t.Fatal(err)
			}
			if err := stopB(); err != nil {
				t.Fatal(err)
			}
			if !ma.Closed() || !mb.Closed() {
				t.Fatal("Close did not close the links")
			}
		})
	}
}

// TestHostRunReturnsOnLinkFailure: when the link fails for good (a TUN
// reader that errs), Run returns that error at once, with its other
// goroutines (lifetimes, metrics) stopped — not a host left half-dead.
func TestHostRunReturnsOnLinkFailure(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := hostConfig(t, t.TempDir(), "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, "aes-gcm16")
	cfg.Metrics = "127.0.0.1:0"
	h, err := newHost(cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMemLink()
	h.link = m
	done := make(chan error, 1)
	go func() { done <- h.Run(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	boom := errors.New("tun read: device gone")
	m.Fail <- boom
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Fatalf("Run returned %v, want the link's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the link failed")
	}
	h.Close()
}

// TestHostLifetimesAndState: an SA's hard lifetime removes it (counted,
// its packets no longer sealed); the numbers an SA used survive the host
// (the next one on the same state directory starts above them).
func TestHostLifetimesAndState(t *testing.T) {
	dir := t.TempDir()
	cfg := hostConfig(t, dir, "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, "aes-gcm16")
	h, m, stop := memHost(t, cfg)
	ap, bp := netip.MustParseAddrPort("10.77.1.1:40000"), netip.MustParseAddrPort("10.77.1.2:80")
	for range 5 {
		m.Tun <- packettest.Segment(ap, bp, header.TCPAck, 1, 1, 65535, nil, []byte("x"))
	}
	settle(h)
	sad, _ := h.tables()
	e, _ := sad.Get(ipsec.ID{SPI: 0x1001, Dst: bp.Addr(), Proto: ipsec.ESP})
	used := e.Write.OutSeq()
	if err := stop(); err != nil || used != 5 {
		t.Fatalf("stop: %v; %d numbers used, want 5", err, used)
	}
	cfg2 := hostConfig(t, dir, "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, "aes-gcm16")
	cfg2.SAs[0].Lifetime.HardBytes = 3 * 60
	h2, m2, _ := memHost(t, cfg2)
	sad2, _ := h2.tables()
	e2, _ := sad2.Get(ipsec.ID{SPI: 0x1001, Dst: bp.Addr(), Proto: ipsec.ESP})
	if e2.Write.OutSeq() < used {
		t.Fatalf("a new host starts at %d, below the %d its predecessor used", e2.Write.OutSeq(), used)
	}
	for range 10 {
		m2.Tun <- packettest.Segment(ap, bp, header.TCPAck, 1, 1, 65535, nil, []byte("x"))
	}
	settle(h2)
	h2.checkLifetimes(map[ipsec.ID]bool{})
	st := h2.Stats()
	if st.HardExpired != 1 || st.SealErrors == 0 || st.Sealed >= 10 {
		t.Fatalf("hard lifetime: %s", st.Summary())
	}
	if _, ok := sad2.Get(e2.Config.ID()); ok {
		t.Fatal("an SA past its hard lifetime is still in the SAD")
	}
}

// TestHostReplayAfterRestart: an espep host's replay windows outlive it
// through its state directory. The peer's packets accepted before a
// clean stop are all refused by the next host; after a crash (the state
// directory as it stood on disk while the host ran) those accepted before
// the last record are, and at most statedir.NoteEvery after it are not.
// The peer's next packet is accepted in both cases. Without the records
// every one was accepted again.
func TestHostReplayAfterRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := hostConfig(t, dir, "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, "aes-gcm16")
	var inCfg ipsec.Config
	for _, c := range cfg.SAs {
		if c.SPI == 0x2002 {
			inCfg = c
			inCfg.EncKey = slices.Clone(c.EncKey)
		}
	}
	peer, err := ipsec.New(inCfg)
	if err != nil {
		t.Fatal(err)
	}
	from, to := netip.MustParseAddrPort("10.77.1.2:80"), netip.MustParseAddrPort("10.77.1.1:40000")
	next := func() []byte {
		seg := packettest.Segment(from, to, header.TCPAck, 1, 1, 65535, nil, []byte("x"))
		buf := make([]byte, ipsec.MaxHeadroom+len(seg)+ipsec.MaxTailroom)
		copy(buf[ipsec.MaxHeadroom:], seg)
		out, err := peer.Seal(buf, ipsec.MaxHeadroom, len(seg))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	h, m, stop := memHost(t, cfg)
	const n = 150
	var old [][]byte
	for range n {
		p := next()
		old = append(old, slices.Clone(p))
		m.Net <- p
		settle(h)
		time.Sleep(statedir.NoteGap + time.Millisecond) // every NoteEvery-th number is recorded
	}
	if got := h.Stats().Opened; got != n {
		t.Fatalf("%d of %d opened", got, n)
	}
	id := inCfg.ID()
	h.mu.RLock()
	a := h.accepts[id]
	h.mu.RUnlock()
	for deadline := time.Now().Add(5 * time.Second); a.Recorded() < a.Noted(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("record %d never written", a.Noted())
		}
	}
	crashDir := filepath.Join(t.TempDir(), "crash")
	crashCfg := hostConfig(t, crashDir, "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, "aes-gcm16")
	for _, f := range []string{"iv-blocks", "seq.log"} {
		b, err := os.ReadFile(filepath.Join(dir, "state", f))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(crashDir, "state"), 0o700)
		if err := os.WriteFile(filepath.Join(crashDir, "state", f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	replay := func(cfg *Config) uint64 {
		h, m, stop := memHost(t, cfg)
		defer stop()
		for _, p := range old {
			m.Net <- slices.Clone(p)
		}
		settle(h)
		got := h.Stats().Opened
		m.Net <- next()
		settle(h)
		if h.Stats().Opened != got+1 {
			t.Fatalf("the peer's next packet was refused: %s", h.Stats().Summary())
		}
		return got
	}
	if got := replay(hostConfig(t, dir, "10.77.1.1", "10.77.1.2", 0x1001, 0x2002, "aes-gcm16")); got != 0 {
		t.Fatalf("after a clean stop %d of %d replays accepted", got, n)
	}
	if got := replay(crashCfg); got == 0 || got > statedir.NoteEvery {
		t.Fatalf("after a crash %d of %d replays accepted, want 1 … %d (those after the last record)", got, n, statedir.NoteEvery)
	}
}
