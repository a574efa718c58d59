//go:build !linux

package lab

import "os/exec"

// hog is a process that spins at a priority above the test's.
func hog() *exec.Cmd {
	return exec.Command("nice", "-n", "-15", "sh", "-c", "while :; do :; done")
}
