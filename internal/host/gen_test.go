package host

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/hostctl"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/header"
)

// genConfig is a host whose TCP policy gets its pair from the security
// server (sa = server), with a control socket.
func genConfig(t *testing.T, dir, self, peer string) *Config {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf(`espep-host 1
[host]
state-dir = state
control = ctl.sock
[policy]
name = tcp
local = %[1]s
remote = %[2]s
proto = tcp
action = protect
sa = server
self = %[1]s
peer = %[2]s
proxy = write
`, self, peer)
	if err := os.WriteFile(filepath.Join(dir, "host.conf"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(filepath.Join(dir, "host.conf"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// genPair is what the security server would make: a→b and b→a.
func genPair(t *testing.T, a, b string, spiAB, spiBA uint32) (ab, ba ipsec.Config) {
	t.Helper()
	mk := func(spi uint32, src, dst string) ipsec.Config {
		c := ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Mode: ipsec.Transport,
			Enc: ipsec.EncAESGCM16, EncKey: make([]byte, 20), ESN: true, Class: ipsec.ClassWrite}
		rand.Read(c.EncKey)
		return c
	}
	return mk(spiAB, a, b), mk(spiBA, b, a)
}

// TestGeneratedPairs: a policy with sa = server drops its traffic (never
// in the clear) until the agent installs a pair over the control socket;
// then the two hosts talk; a new pair replaces it make-before-break (the
// old inbound SA still opens until it retires); the control socket lists
// the policy and the delegable SAs and refuses what it must.
func TestGeneratedPairs(t *testing.T) {
	dir := t.TempDir()
	a, ma, _ := memHost(t, genConfig(t, filepath.Join(dir, "a"), "10.77.1.1", "10.77.1.2"))
	b, mb, _ := memHost(t, genConfig(t, filepath.Join(dir, "b"), "10.77.1.2", "10.77.1.1"))
	ma.Peer, mb.Peer = mb, ma
	ca := &hostctl.Client{Path: filepath.Join(dir, "a", "ctl.sock")}
	cb := &hostctl.Client{Path: filepath.Join(dir, "b", "ctl.sock")}
	ctx := context.Background()
	waitSocket(t, ca.Path)
	waitSocket(t, cb.Path)

	ap, bp := netip.MustParseAddrPort("10.77.1.1:40000"), netip.MustParseAddrPort("10.77.1.2:80")
	seg := func(i int) []byte {
		return packettest.Segment(ap, bp, header.TCPAck|header.TCPPsh, uint32(1000+i*100), 1, 65535, nil, bytes.Repeat([]byte("secret"), 10))
	}
	ma.Tun <- seg(0)
	settle(a, b)
	if _, sent := ma.Take(); len(sent) != 0 || a.Stats().AwaitingSA != 1 {
		t.Fatalf("before the pair: %d sent, %s", len(sent), a.Stats().Summary())
	}
	pairs, err := ca.Pairs(ctx)
	if err != nil || len(pairs) != 1 || pairs[0].Policy != "tcp" || pairs[0].Out != 0 || pairs[0].Class != "write" ||
		pairs[0].Self != netip.MustParseAddr("10.77.1.1") || pairs[0].Enc != "aes-gcm16" {
		t.Fatalf("pairs: %+v %v", pairs, err)
	}

	ab, ba := genPair(t, "10.77.1.1", "10.77.1.2", 0x1111, 0x2222)
	if err := ca.Install(ctx, "tcp", ab, ba); err != nil {
		t.Fatal(err)
	}
	if err := cb.Install(ctx, "tcp", ba, ab); err != nil {
		t.Fatal(err)
	}
	ma.Tun <- seg(1)
	settle(a, b)
	if got, _ := mb.Take(); len(got) != 1 || !bytes.Equal(got[0], seg(1)) {
		t.Fatalf("after the pair: b delivered %d; a %s; b %s", len(got), a.Stats().Summary(), b.Stats().Summary())
	}
	_, sent := ma.Take()
	for _, p := range sent {
		if bytes.Contains(p, []byte("secret")) {
			t.Fatal("protected bytes left in the clear")
		}
	}
	if sas, err := ca.SAs(ctx); err != nil || len(sas) != 0 {
		t.Fatalf("the server's own pair offered for upload: %v %v", sas, err)
	}

	// A new pair: b installs first; a, which has not yet, keeps sealing
	// on the old one, which b still opens.
	ab2, ba2 := genPair(t, "10.77.1.1", "10.77.1.2", 0x3333, 0x4444)
	for _, h := range []*Host{a, b} { // only the test's retire rounds switch; lifetimeLoop's wait
		h.genMu.Lock()
		h.switchWait = time.Hour
		h.genMu.Unlock()
	}
	if err := cb.Install(ctx, "tcp", ba2, ab2); err != nil {
		t.Fatal(err)
	}
	ma.Tun <- seg(2)
	settle(a, b)
	if got, _ := mb.Take(); len(got) != 1 {
		t.Fatalf("the old pair's inbound SA was dropped at once: b %s", b.Stats().Summary())
	}
	ma.Take()
	// a installs too. Neither seals on the new pair until the peer shows
	// it has it, or switchAfter passes: a packet either sends now is
	// sealed on the old pair, which the other, whatever it installed,
	// still opens.
	if err := ca.Install(ctx, "tcp", ab2, ba2); err != nil {
		t.Fatal(err)
	}
	back := packettest.Segment(bp, ap, header.TCPAck, 1, 1000, 65535, nil, nil)
	ma.Tun <- seg(3)
	mb.Tun <- back
	settle(a, b)
	gotA, sentB := mb.Take()
	gotB, sentA := ma.Take()
	if len(gotA) != 1 || len(gotB) != 1 || len(sentA) != 1 || spiOf(sentA[0]) != 0x1111 || len(sentB) != 1 || spiOf(sentB[0]) != 0x2222 {
		t.Fatalf("both installed, not yet switched: b delivered %d, a %d; a sent %d, b %d", len(gotA), len(gotB), len(sentA), len(sentB))
	}
	// b's wait is up: it seals on the new pair, and a opens that.
	b.retire(time.Now().Add(time.Hour))
	mb.Tun <- back
	settle(a, b)
	if got, sent := ma.Take(); len(got) != 1 || len(sent) != 0 {
		t.Fatalf("b on the new pair: a delivered %d", len(got))
	}
	if _, sent := mb.Take(); len(sent) != 1 || spiOf(sent[0]) != 0x4444 {
		t.Fatalf("b did not switch at its switchAfter: %d sent", len(sent))
	}
	// a has seen b's packet on the new inbound SA: it switches at its
	// next round, before its own switchAfter.
	a.retire(time.Now())
	ma.Tun <- seg(4)
	settle(a, b)
	_, sent = ma.Take()
	if got, _ := mb.Take(); len(got) != 1 || len(sent) != 1 || spiOf(sent[0]) != 0x3333 {
		t.Fatalf("on the new pair: b delivered %d, a sent %d", len(got), len(sent))
	}
	b.retire(time.Now().Add(retireAfter + time.Second))
	if _, ok := b.sad.Get(ab.ID()); ok {
		t.Fatal("the replaced inbound SA did not retire")
	}
	if _, ok := b.sad.Get(ab2.ID()); !ok {
		t.Fatal("retiring took the new inbound SA")
	}

	// Refusals.
	for _, bad := range []struct {
		name    string
		install func() error
	}{
		{"unknown policy", func() error { return ca.Install(ctx, "nope", ab2, ba2) }},
		{"the pair the wrong way round", func() error { return ca.Install(ctx, "tcp", ba2, ab2) }},
		{"a read SA", func() error { r := ab2; r.Class = ipsec.ClassRead; return ca.Install(ctx, "tcp", r, ba2) }},
	} {
		if err := bad.install(); err == nil {
			t.Fatalf("%s: installed", bad.name)
		}
	}
	for _, line := range []string{`{"v":2,"op":"sas"}`, `{"v":1,"op":"drop"}`, `not json`, `{"v":1,"op":"install","policy":"tcp","sas":"espep-sa 1\n"}`} {
		if rep := rawCall(t, ca.Path, line); rep == "" || !strings.Contains(rep, `"err"`) {
			t.Fatalf("%s: %s", line, rep)
		}
	}
	if st := a.Stats(); st.SealErrors != 0 || b.Stats().OpenErrors != 0 {
		t.Fatalf("a %s; b %s", st.Summary(), b.Stats().Summary())
	}
}

// TestControlSocketGuards: the socket is not opened in a directory others
// can enter, nor over a file that is not a socket; a stale socket left by
// a killed host is replaced; the socket is made 0600.
func TestControlSocketGuards(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o755)
	if _, err := listenControl(filepath.Join(open, "s")); err == nil || !strings.Contains(err.Error(), "closed to group and others") {
		t.Fatalf("a directory open to others: %v", err)
	}
	closed := filepath.Join(dir, "closed")
	os.Mkdir(closed, 0o700)
	file := filepath.Join(closed, "f")
	os.WriteFile(file, nil, 0o600)
	if _, err := listenControl(file); err == nil {
		t.Fatal("replaced a file that is not a socket")
	}
	path := filepath.Join(closed, "s")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err := listenControl(path)
	if err != nil {
		t.Fatalf("a stale socket: %v", err)
	}
	defer ln.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %#o", fi.Mode().Perm())
	}
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for range 200 {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no control socket at %s", path)
}

func rawCall(t *testing.T, path, line string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%s\n", line)
	buf := make([]byte, 4096)
	n, _ := c.Read(buf)
	return string(buf[:n])
}

// spiOf is the SPI of an ESP packet in IPv4 transport mode.
func spiOf(p []byte) uint32 {
	ihl := int(p[0]&0xf) * 4
	return uint32(p[ihl])<<24 | uint32(p[ihl+1])<<16 | uint32(p[ihl+2])<<8 | uint32(p[ihl+3])
}

// TestGeneratedPairAfterRestart: a host restarted on its state directory
// gets the same pair again from its agent (the server keeps it) and goes
// on sealing above every sequence number — and so every IV — it used
// before; the peer, which kept the pair, accepts it.
func TestGeneratedPairAfterRestart(t *testing.T) {
	dir := t.TempDir()
	ab, ba := genPair(t, "10.77.1.1", "10.77.1.2", 0x1111, 0x2222)
	cfgA := genConfig(t, filepath.Join(dir, "a"), "10.77.1.1", "10.77.1.2")
	b, mb, _ := memHost(t, genConfig(t, filepath.Join(dir, "b"), "10.77.1.2", "10.77.1.1"))
	if err := b.Install("tcp", ba, ab); err != nil {
		t.Fatal(err)
	}
	ap, bp := netip.MustParseAddrPort("10.77.1.1:40000"), netip.MustParseAddrPort("10.77.1.2:80")
	var lastSeq uint32
	for run := range 2 {
		a, ma, stop := memHost(t, cfgA)
		ma.Peer = mb
		if err := a.Install("tcp", ab, ba); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			ma.Tun <- packettest.Segment(ap, bp, header.TCPAck, uint32(1000+i), 1, 65535, nil, []byte("x"))
		}
		settle(a, b)
		_, sent := ma.Take()
		if len(sent) != 5 {
			t.Fatalf("run %d: %d sent", run, len(sent))
		}
		ihl := int(sent[0][0]&0xf) * 4
		first := uint32(sent[0][ihl+4])<<24 | uint32(sent[0][ihl+5])<<16 | uint32(sent[0][ihl+6])<<8 | uint32(sent[0][ihl+7])
		if first <= lastSeq {
			t.Fatalf("run %d sealed sequence number %d again (the last run reached %d)", run, first, lastSeq)
		}
		lastSeq = first + 4
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := mb.Take(); len(got) != 10 || b.Stats().OpenErrors != 0 {
		t.Fatalf("b delivered %d of 10; %s", len(got), b.Stats().Summary())
	}
}
