package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/secserver"
)

// delegateIKE is scheme 2: the IKE SA keys charon's logs show (written
// with "ike = 4") uploaded once each, with the IKE SA's addresses, for
// gateways that follow IKE and derive the CHILD_SAs themselves. The
// server keeps them for their lifetime (secserver.DefaultIKELife): an
// IKE SA deleted before is not withdrawn (the log does not say so for
// every IKE SA; a gateway forgets keys with their IKE SA's Delete).
func (a *Agent) delegateIKE(ctx context.Context) error {
	if len(a.cfg.IKECharonLogs) == 0 {
		return nil
	}
	var errs []error
	var upload []secserver.IKEUpload
	seen := map[[32]byte]bool{}
	defer func() {
		for i := range upload {
			upload[i].Keys.Wipe()
		}
	}()
	for _, path := range a.cfg.IKECharonLogs {
		sas, err := readIKECharonLog(path)
		if err != nil {
			errs = append(errs, err)
			for h := range a.ikeUp {
				seen[h] = true // an unreadable log forgets nothing it gave
			}
		}
		for _, sa := range sas {
			h := sha256.Sum256(sa.Keys.D)
			seen[h] = true
			if a.ikeUp[h] || !sa.Peers[0].IsValid() || !sa.Peers[1].IsValid() {
				sa.Keys.Wipe()
				continue
			}
			upload = append(upload, secserver.IKEUpload{Keys: sa.Keys, Initiator: sa.Peers[0], Responder: sa.Peers[1]})
		}
	}
	for h := range a.ikeUp {
		if !seen[h] {
			delete(a.ikeUp, h) // left the log (rotated): nothing to keep
		}
	}
	for len(upload) > 0 {
		n := min(len(upload), 64)
		if err := a.srv.UploadIKE(ctx, a.cfg.Area, upload[:n]); err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, u := range upload[:n] {
			a.ikeUp[sha256.Sum256(u.Keys.D)] = true
			a.cfg.Log.Info("agent: IKE SA keys uploaded", "peers", u.Initiator.String()+"-"+u.Responder.String())
		}
		a.IKEUploads += n
		for i := range upload[:n] {
			upload[i].Keys.Wipe()
		}
		upload = upload[n:]
	}
	return errors.Join(errs...)
}

// readIKECharonLog reads the IKE SA keys of a charon log, which holds
// keys and so must be closed to group and others.
func readIKECharonLog(path string) ([]charonlog.IKESA, error) {
	return readPrivate(path, func(f *os.File) ([]charonlog.IKESA, error) {
		sas, err := charonlog.ParseIKESAs(f, path)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		return sas, nil
	})
}
