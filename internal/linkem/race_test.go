//go:build race

package linkem

// raceEnabled: the race detector is on, and sync.Pool drops what it is
// given at random (allocation counts mean nothing).
const raceEnabled = true
