//go:build !linux

package lab

import "time"

// runQueueWait is not known here (see cpu_linux.go).
func runQueueWait() (time.Duration, bool) { return 0, false }
