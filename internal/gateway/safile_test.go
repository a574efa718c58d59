package gateway

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestSAFile: SAs appended to the file take effect, unchanged ones keep
// their state, removed ones stop being used, and a broken file leaves the
// SAs in force.
func TestSAFile(t *testing.T) {
	g, err := New(Config{}, nil, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sa")
	a := tunnelConfig(0x1001, "192.0.2.1", "192.0.2.2", ipsec.EncAESGCM16)
	b := tunnelConfig(0x2002, "192.0.2.2", "192.0.2.1", ipsec.EncAESGCM16)
	write := func(cs ...ipsec.Config) {
		var buf bytes.Buffer
		if err := safile.WriteNative(&buf, cs); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lookup := func(c ipsec.Config) *ipsec.Entry {
		e, _ := g.sad.Load().Lookup(c.SPI, c.Dst, ipsec.ESP)
		return e
	}
	f := NewSAFile(g, path)
	write(a)
	if err := f.Load(); err != nil || lookup(a) == nil || lookup(b) != nil {
		t.Fatalf("first load: %v", err)
	}
	ea := lookup(a)
	write(a, b) // appended
	if err := f.Load(); err != nil || lookup(a) != ea || lookup(b) == nil {
		t.Fatalf("append: %v (the unchanged SA must keep its entry)", err)
	}
	write(b) // a removed
	if err := f.Load(); err != nil || lookup(a) != nil || lookup(b) == nil {
		t.Fatalf("removal: %v", err)
	}
	os.WriteFile(path, []byte("espep-sa 1\n[sa]\nspi = nonsense\n"), 0o600)
	if err := f.Load(); err == nil || lookup(b) == nil {
		t.Fatalf("a broken file: %v; the SAs in force must stay", err)
	}
	if f.Loads != 3 {
		t.Fatalf("%d loads", f.Loads)
	}
}
