// Package testbed builds throwaway network topologies in Linux network
// namespaces for tests and measurement harnesses, starts processes in
// them, and removes everything it made on Close, on test failure (through
// t.Cleanup) and on SIGINT/SIGTERM. Names carry the owning process ID, so
// parallel runs never collide and a later run can sweep what a killed run
// left behind.
//
// It drives iproute2 (`ip`) and ethtool; it needs root. ForTest skips a
// test that cannot run here, except under CI=true, where it fails it.
package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Prefix starts the name of every namespace the testbed makes.
const Prefix = "espep-"

// Bed is one topology's worth of namespaces and processes.
type Bed struct {
	id string

	mu     sync.Mutex
	nss    []string
	procs  []*Proc
	cpus   map[string]string // namespace → CPU list its commands run on (Box)
	closed bool
}

var (
	seqMu   sync.Mutex
	seq     int
	live    = map[*Bed]bool{}
	sigOnce sync.Once
)

// Available reports why namespaces cannot be made here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("testbed needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "ethtool", "nc", "ss", "sysctl", "tcpdump", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("testbed needs %s: %w", tool, err)
		}
	}
	return nil
}

// New starts an empty bed.
func New() (*Bed, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	sweep()
	seqMu.Lock()
	seq++
	b := &Bed{id: fmt.Sprintf("%d-%d", os.Getpid(), seq)}
	live[b] = true
	seqMu.Unlock()
	sigOnce.Do(func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		go func() {
			s := <-c
			seqMu.Lock()
			beds := make([]*Bed, 0, len(live))
			for b := range live {
				beds = append(beds, b)
			}
			seqMu.Unlock()
			for _, b := range beds {
				b.Close()
			}
			signal.Reset()
			p, _ := os.FindProcess(os.Getpid())
			p.Signal(s)
		}()
	})
	return b, nil
}

// ForTest returns a bed that is closed when the test ends. A test that
// cannot have one is skipped, or failed under CI=true.
func ForTest(t testing.TB) *Bed {
	t.Helper()
	b, err := New()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("testbed: %v (CI must run this test)", err)
		}
		t.Skipf("testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("testbed cleanup: %v", err)
		}
	})
	return b
}

// sweep removes namespaces left by testbed processes that no longer exist.
func sweep() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], Prefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			exec.Command("ip", "netns", "del", f[0]).Run()
		}
	}
}

func ipcmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NS makes a namespace and returns its full name; lo is brought up.
func (b *Bed) NS(name string) (string, error) {
	full := Prefix + b.id + "-" + name
	if err := ipcmd("netns", "add", full); err != nil {
		return "", err
	}
	b.mu.Lock()
	b.nss = append(b.nss, full)
	b.mu.Unlock()
	return full, ipcmd("-n", full, "link", "set", "lo", "up")
}

// Veth links interface if1 in ns1 with if2 in ns2 and brings both up,
// with the offloads a veth has by default (checksum offload, TSO, GSO):
// what a packet socket sees then is what a real NIC hands it —
// unfinished checksums and super-frames — and espep must cope.
func (b *Bed) Veth(ns1, if1, ns2, if2 string) error {
	if err := ipcmd("link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2); err != nil {
		return err
	}
	for _, x := range [][2]string{{ns1, if1}, {ns2, if2}} {
		if err := ipcmd("-n", x[0], "link", "set", x[1], "up"); err != nil {
			return err
		}
	}
	return nil
}

// Addr adds an address (CIDR) to an interface.
func (b *Bed) Addr(ns, ifname, cidr string) error {
	return ipcmd("-n", ns, "addr", "add", cidr, "dev", ifname)
}

// IP runs `ip -n NS ARGS…`.
func (b *Bed) IP(ns string, args ...string) error {
	return ipcmd(append([]string{"-n", ns}, args...)...)
}

// Run runs a command in a namespace and returns its combined output.
func (b *Bed) Run(ns string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", b.execArgs(ns, args)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, bytes.TrimSpace(lastLines(out, 5)))
	}
	return out, nil
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// Proc is a process started in a namespace.
type Proc struct {
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs a command in a namespace in the background; Close stops it.
func (b *Bed) Start(ns string, args ...string) (*Proc, error) {
	p := &Proc{done: make(chan struct{})}
	p.cmd = exec.Command("ip", b.execArgs(ns, args)...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", strings.Join(args, " "), ns, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

// CPU returns the processor time the process has used so far: the sum of
// its threads' run time in nanoseconds (/proc/PID/task/*/schedstat; the
// kernel's softirq work done in its system calls included, as in its
// user and system time), or, where the kernel keeps no such figure, its
// user and system time in 10 ms ticks (/proc/PID/stat) — too coarse for
// a few seconds at a radio's rate.
func (p *Proc) CPU() (time.Duration, error) {
	if d, err := p.runTime(); err == nil {
		return d, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", p.cmd.Process.Pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	sy, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+sy) * 10 * time.Millisecond, nil // USER_HZ is 100 on Linux
}

// runTime sums the run time of the process's threads (the first field of
// each thread's schedstat).
func (p *Proc) runTime() (time.Duration, error) {
	ns, err := p.schedstat(0)
	return time.Duration(ns), err
}

// Slices returns how many times the process's threads were put on a CPU
// so far (the third field of each thread's schedstat): its wake-ups and
// preemptions.
func (p *Proc) Slices() (int64, error) { return p.schedstat(2) }

// schedstat sums field i of the schedstat of the process's threads.
func (p *Proc) schedstat(i int) (int64, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", p.cmd.Process.Pid))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no schedstat for pid %d", p.cmd.Process.Pid)
	}
	var sum int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that ended meanwhile
		}
		fields := strings.Fields(string(b))
		if len(fields) <= i {
			return 0, fmt.Errorf("%s: %d fields", f, len(fields))
		}
		v, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", f, err)
		}
		sum += v
	}
	return sum, nil
}

// Pid is the process's ID: the command's own, since ip netns exec
// executes it in place after entering the namespace.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Output returns what the process wrote so far (stdout and stderr).
func (p *Proc) Output() string { return p.out.String() }

// Signal sends a signal to the process group.
func (p *Proc) Signal(s syscall.Signal) error { return syscall.Kill(-p.cmd.Process.Pid, s) }

// Stop ends the process: SIGTERM, then SIGKILL after a grace period.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		p.Signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			// Killed, but something still holds its output pipe (a
			// process that left the group): do not hang the suite.
			return fmt.Errorf("%s: not reaped 10 s after SIGKILL", p.cmd.Path)
		}
	}
	return p.err
}

// Running reports whether the process has not ended.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Wait waits for the process to end by itself, up to d.
func (p *Proc) Wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("process %v still running after %v", p.cmd.Args, d)
	}
}

// Close stops every process and deletes every namespace, in reverse order.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	procs, nss := b.procs, b.nss
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
	var first error
	for i := len(nss) - 1; i >= 0; i-- {
		if err := ipcmd("netns", "del", nss[i]); err != nil && first == nil {
			first = err
		}
	}
	seqMu.Lock()
	delete(live, b)
	seqMu.Unlock()
	return first
}

// WaitListen waits until something in ns listens on the port (proto "tcp"
// or "udp"), as `ss` sees it.
func (b *Bed) WaitListen(ns, proto string, port int, d time.Duration) error {
	flag := "-ltnH"
	if proto == "udp" {
		flag = "-lunH"
	}
	want := ":" + strconv.Itoa(port)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		out, _ := b.Run(ns, "ss", flag)
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 && strings.HasSuffix(f[3], want) {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s port %d in %s after %v", proto, port, ns, d)
}

// WaitFile waits until a file exists (a capture tcpdump has opened).
func (b *Bed) WaitFile(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			time.Sleep(100 * time.Millisecond) // the capture has started
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not appear after %v", path, d)
}

// engineFlags are the espep linkem flags of an engine named as the test
// tables name them: none, snoop, split, or a mode and a setting
// (snoop-forward, snoop-swallow, split-reno).
func engineFlags(name string) []string {
	switch name {
	case "none", "":
		return nil
	case "snoop-forward", "snoop-swallow":
		return []string{"--mode", "snoop", "--dupacks", name[len("snoop-"):]}
	case "split-reno":
		return []string{"--mode", "split", "--cc", "reno"}
	}
	return []string{"--mode", name}
}
