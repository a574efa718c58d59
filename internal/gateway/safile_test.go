package gateway

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/packettest"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestSAFiles: SAs appended to a file take effect, unchanged ones keep
// their entry, removed ones stop being used and are wiped; several files
// load together; a bad entry is reported with file and line and skipped
// while every good one loads; a file open to group or others is refused
// and a file that breaks whole leaves its SAs in force.
func TestSAFiles(t *testing.T) {
	g, err := New(Config{}, nil, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "one.sa"), filepath.Join(dir, "two.sa")
	a := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESCBC)
	b := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESCBC)
	c := tunnelConfig(0x3003, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	write := func(path string, extra string, cs ...ipsec.Config) {
		var buf bytes.Buffer
		if err := safile.WriteNative(&buf, cs); err != nil {
			t.Fatal(err)
		}
		buf.WriteString(extra)
		if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lookup := func(c ipsec.Config) *ipsec.Entry {
		e, _ := g.sad.Load().Lookup(c.SPI, c.Dst, ipsec.ESP)
		return e
	}
	f := NewSAFiles(g, p1, p2)
	write(p1, "", a)
	write(p2, "", c)
	if err := f.Load(); err != nil || lookup(a) == nil || lookup(b) != nil || lookup(c) == nil {
		t.Fatalf("first load: %v", err)
	}
	ea := lookup(a)
	write(p1, "", a, b) // appended
	if err := f.Load(); err != nil || lookup(a) != ea || lookup(b) == nil {
		t.Fatalf("append: %v (the unchanged SA must keep its entry)", err)
	}
	write(p1, "", b) // a removed: it leaves every table, and its keys are wiped
	if err := f.Load(); err != nil || lookup(a) != nil || lookup(b) == nil {
		t.Fatalf("removal: %v", err)
	}
	pkt := packettest.TCP(a.Src, a.Dst, []byte("x"))
	buf := make([]byte, ipsec.MaxHeadroom+len(pkt)+ipsec.MaxTailroom)
	copy(buf[ipsec.MaxHeadroom:], pkt)
	if _, err := ea.Write.Seal(buf, ipsec.MaxHeadroom, len(pkt)); !errors.Is(err, ipsec.ErrHardExpired) {
		t.Fatalf("a removed SA still seals: %v", err)
	}
	// A bad entry between good ones: reported with its line, skipped.
	write(p1, "[sa]\nspi = 0x4004\nenc = rot13\n", b, a)
	err = f.Load()
	if err == nil || !strings.Contains(err.Error(), "one.sa:") || !strings.Contains(err.Error(), "field enc") || lookup(a) == nil || lookup(b) == nil {
		t.Fatalf("a bad entry: %v", err)
	}
	// Readable by others: refused whole, what it gave stays.
	os.Chmod(p1, 0o644)
	if err := f.Load(); err == nil || !strings.Contains(err.Error(), "group and others") || lookup(a) == nil {
		t.Fatalf("mode 0644: %v", err)
	}
	os.Chmod(p1, 0o600)
	os.WriteFile(p1, []byte("espep-sa 9\n"), 0o600)
	if err := f.Load(); err == nil || lookup(b) == nil {
		t.Fatalf("a broken file: %v; the SAs in force must stay", err)
	}
	if f.Loads != 4 {
		t.Fatalf("%d loads", f.Loads)
	}
}
