package tundev

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestCreate: a device made with the MTU asked, with offloads (a batch
// size above one), and no goroutine of its own: nothing wakes the
// process while the device is idle. Closing it removes it.
func TestCreate(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; TUN devices need it")
		}
		t.Skip("needs root (TUN devices)")
	}
	name := fmt.Sprintf("tundev%d", os.Getpid()%100000)
	before := runtime.NumGoroutine()
	d, err := Create(name, 9000)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	time.Sleep(50 * time.Millisecond) // a monitor would have started by now
	if n := runtime.NumGoroutine(); n != before {
		t.Errorf("%d goroutines after Create, %d before: the device is monitored", n, before)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if ifi.MTU != 9000 {
		t.Errorf("MTU %d, want 9000", ifi.MTU)
	}
	if d.BatchSize() <= 1 {
		t.Errorf("batch size %d: no offloads (virtio header)", d.BatchSize())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(name); err == nil {
		t.Errorf("%s still there after Close", name)
	}
}
