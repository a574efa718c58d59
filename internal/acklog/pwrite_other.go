//go:build !linux

package acklog

import "os"

// pwrite writes b at off in f (pwrite_linux.go says why Linux does it
// differently).
func pwrite(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) }
