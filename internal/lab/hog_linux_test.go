package lab

import (
	"os/exec"
	"syscall"
)

// hog is a process that spins at a priority above the test's: it dies
// with the test even when the test cannot clean up (a timeout's panic, a
// kill), and does not go on taking the CPU from whatever runs next.
func hog() *exec.Cmd {
	c := exec.Command("nice", "-n", "-15", "sh", "-c", "while :; do :; done")
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return c
}
