package statedir

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func openTemp(t *testing.T) *Dir {
	t.Helper()
	d, err := Open(filepath.Join(t.TempDir(), "s"), Partition{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func saveBody(t *testing.T, d *Dir, at time.Time, body []byte) {
	t.Helper()
	err := d.SaveFlows(at, func(w io.Writer) error {
		// in pieces, as an encoder writes
		for i := 0; i < len(body); i += 1000 {
			if _, err := w.Write(body[i:min(i+1000, len(body))]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFlowsOnce: what SaveFlows wrote TakeFlows gives back, once, and the
// file is private while it exists.
func TestFlowsOnce(t *testing.T) {
	d := openTemp(t)
	now := time.Now()
	if _, _, err := d.TakeFlows(now, time.Minute); !errors.Is(err, ErrNoFlows) {
		t.Fatalf("no file: %v", err)
	}
	body := bytes.Repeat([]byte("early-acknowledged bytes "), 100_000)
	saveBody(t, d, now, []byte("an earlier stop's"))
	saveBody(t, d, now, body) // replaces it
	fi, err := os.Stat(filepath.Join(d.Path(), flowsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("flows file: %v, %v", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(d.Path(), flowsFile+".new")); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	got, at, err := d.TakeFlows(now.Add(time.Second), time.Minute)
	if err != nil || !bytes.Equal(got, body) || !at.Equal(now.Round(0)) {
		t.Fatalf("took %d bytes written at %v: %v", len(got), at, err)
	}
	if _, _, err := d.TakeFlows(now, time.Minute); !errors.Is(err, ErrNoFlows) {
		t.Fatalf("taken twice: %v", err)
	}
}

// TestFlowsRefused: a file too old, from the future, torn or altered
// anywhere is refused and removed; a failed encoder leaves nothing.
func TestFlowsRefused(t *testing.T) {
	d := openTemp(t)
	now := time.Now()
	path := filepath.Join(d.Path(), flowsFile)
	refused := func(what string, at time.Time) {
		t.Helper()
		if _, _, err := d.TakeFlows(at, time.Minute); err == nil || errors.Is(err, ErrNoFlows) {
			t.Fatalf("%s: %v", what, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("%s: file kept: %v", what, err)
		}
	}
	saveBody(t, d, now, []byte("old"))
	refused("too old", now.Add(2*time.Minute))
	saveBody(t, d, now.Add(time.Hour), []byte("future"))
	refused("from the future", now)

	saveBody(t, d, now, []byte("twenty bytes of body"))
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range good {
		b := bytes.Clone(good)
		b[i] ^= 0x10
		os.WriteFile(path, b, 0o600)
		refused("byte altered", now)
	}
	for _, n := range []int{0, 5, flowsHead, flowsHead + 3, len(good) - 1} {
		os.WriteFile(path, good[:n], 0o600)
		refused("torn", now)
	}
	os.WriteFile(path, append(bytes.Clone(good), 0), 0o600)
	refused("grown", now)

	err = d.SaveFlows(now, func(w io.Writer) error {
		w.Write([]byte("half"))
		return errors.New("encoder failed")
	})
	if err == nil {
		t.Fatal("a failed encoder saved")
	}
	if _, _, err := d.TakeFlows(now, time.Minute); !errors.Is(err, ErrNoFlows) {
		t.Fatalf("after a failed save: %v", err)
	}
}

// TestFlowsMemory: a Memory Dir keeps no flows.
func TestFlowsMemory(t *testing.T) {
	d := Memory()
	if err := d.SaveFlows(time.Now(), func(w io.Writer) error { _, err := w.Write([]byte("x")); return err }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.TakeFlows(time.Now(), time.Minute); !errors.Is(err, ErrNoFlows) {
		t.Fatal(err)
	}
}

// FuzzParseFlows: any file is refused with an error or gives a body
// inside it.
func FuzzParseFlows(f *testing.F) {
	good := append(flowsHeader(time.Unix(1, 2), 3), "abc"...)
	good = binary.BigEndian.AppendUint32(good, crc32.Checksum([]byte("abc"), castagnoli))
	if _, _, err := parseFlows(good); err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:flowsHead])
	f.Add(append(flowsHeader(time.Unix(0, 0), 0), 0, 0, 0, 0))
	f.Add(append(flowsHeader(time.Unix(0, 0), 1<<62), 1, 2, 3, 4, 5))
	f.Add([]byte(flowsMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		body, _, err := parseFlows(b)
		if err != nil {
			return
		}
		if len(body) != len(b)-flowsHead-4 || !bytes.Equal(body, b[flowsHead:flowsHead+len(body)]) {
			t.Fatalf("body of %d bytes from a file of %d", len(body), len(b))
		}
	})
}
