package gateway

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/ipsec/safile"
)

// IKE key files as the source of the keys the IKE source follows with:
// each file (ikefollow's "espep-ike 1") is read when it changes, and the
// key sets not given before are handed to the follower. A key set
// removed from a file stays with the follower until its IKE SA is
// deleted (the follower forgets it then, and wipes it).

// maxIKEKeyFile bounds what is read of an IKE key file.
const maxIKEKeyFile = 4 << 20

// ikeKeyFile is one watched file: its last size and time, and the key
// sets (by a hash of SK_d) already handed over.
type ikeKeyFile struct {
	path  string
	size  int64
	mtime time.Time
	given map[[32]byte]bool
}

// LoadKeyFile reads path (which must be closed to group and others, as
// every key file) if it changed since kf last read it, and gives the
// follower the key sets it has not had. It returns how many it gave.
func (s *IKESAs) loadKeyFile(kf *ikeKeyFile) (int, error) {
	if err := safile.CheckPrivate(kf.path); err != nil {
		return 0, err
	}
	f, err := os.Open(kf.path)
	if err != nil {
		return 0, fmt.Errorf("ike key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("ike key file: %w", err)
	}
	if fi.Size() == kf.size && fi.ModTime().Equal(kf.mtime) {
		return 0, nil
	}
	keys, err := ikefollow.ParseKeyFile(io.LimitReader(f, maxIKEKeyFile), kf.path)
	if err != nil {
		return 0, err
	}
	kf.size, kf.mtime = fi.Size(), fi.ModTime()
	n := 0
	for i := range keys {
		h := sha256.Sum256(keys[i].D)
		if !kf.given[h] {
			if err := s.AddKeys(keys[i]); err != nil {
				s.log.Warn("gateway: IKE key file: key set refused", "file", kf.path, "err", err)
			} else {
				kf.given[h] = true
				n++
			}
		}
		keys[i].Wipe()
	}
	return n, nil
}

// WatchKeyFiles reads the IKE key files at once and whenever changed
// delivers (filewatch.Watch on paths) until ctx ends.
func (s *IKESAs) WatchKeyFiles(ctx context.Context, changed <-chan struct{}, paths ...string) {
	files := make([]*ikeKeyFile, len(paths))
	for i, p := range paths {
		files[i] = &ikeKeyFile{path: p, given: map[[32]byte]bool{}}
	}
	last := map[string]string{}
	for {
		for _, kf := range files {
			n, err := s.loadKeyFile(kf)
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			if msg != last[kf.path] && err != nil {
				s.log.Warn("gateway: IKE key file not read", "err", err)
			}
			last[kf.path] = msg
			if n > 0 {
				s.log.Info("gateway: IKE SA keys delegated", "file", kf.path, "new", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
