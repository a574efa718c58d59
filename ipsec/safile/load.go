package safile

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/espep/espep/ipsec"
)

// Parse reads either format, telling them apart by the first meaningful
// line: "espep-sa N" is native, a line starting with '"' is esp_sa.
func Parse(r io.Reader, name string) ([]ipsec.Config, error) {
	return strict(ParseEntries(r, name))
}

// ParseEntries reads either format as Parse does, but skips each bad
// entry (an esp_sa line, a native [sa] block) instead of refusing the
// file: it returns the good SAs, an error (file:line: field: what) for
// each bad entry, and an error that ends the file early or refuses it
// whole (a native file's first line, an unreadable line) — the entries
// before that still count.
func ParseEntries(r io.Reader, name string) (cfgs []ipsec.Config, bad []error, fatal error) {
	br := bufio.NewReader(r)
	if isNative(br) {
		return parseNative(br, name)
	}
	return parseESPSA(br, name)
}

// isNative reports whether the first meaningful line of what br holds
// starts a native file.
func isNative(br *bufio.Reader) bool {
	head, _ := br.Peek(4096)
	for _, l := range bytes.Split(head, []byte("\n")) {
		s := strings.TrimSpace(string(l))
		if s == "" || s[0] == '#' {
			continue
		}
		return strings.HasPrefix(s, NativeMagic)
	}
	return false
}

// strict turns a lenient parse into one that refuses the file at its
// first bad entry.
func strict(cfgs []ipsec.Config, bad []error, fatal error) ([]ipsec.Config, error) {
	if fatal == nil && len(bad) > 0 {
		fatal = bad[0]
	}
	if fatal != nil {
		return nil, fatal
	}
	return cfgs, nil
}

// Load reads an SA file in either format.
func Load(path string) ([]ipsec.Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sa file: %w", err)
	}
	defer f.Close()
	return Parse(f, path)
}

// LoadSAD reads SA files and builds a SAD from them.
func LoadSAD(paths ...string) (*ipsec.SAD, error) {
	var d ipsec.SAD
	for _, p := range paths {
		cfgs, err := Load(p)
		if err != nil {
			return nil, err
		}
		for _, c := range cfgs {
			e, err := ipsec.NewEntry(c)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			if err := d.Add(e); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	return &d, nil
}

// CheckPrivate refuses a key file that group or others may read or
// write: whoever reads it holds the SAs' keys, whoever writes it chooses
// them. A daemon that keeps keys (espep gateway, espep host) calls it
// before it reads a file.
func CheckPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("sa file: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("sa file %s has mode %#o: it holds keys and must be closed to group and others (chmod go-rwx)", path, m)
	}
	return nil
}
