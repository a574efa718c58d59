//go:build !linux

package filewatch

import (
	"context"
	"errors"
)

func watchDirs(context.Context, map[string]map[string]bool, chan struct{}) error {
	return errors.New("no inotify on this platform")
}
