package testbed

import (
	"fmt"
	"strings"
	"time"
)

// TwoHosts is host A and host B on one subnet with, in the radio
// namespace between them, `espep linkem` forwarding every frame:
//
//	[A] a0 ──── ra [radio: espep linkem] rb ──── b0 [B]
//	10.201.0.1/24                           10.201.0.2/24
type TwoHosts struct {
	Bed          *Bed
	A, Radio, B  string // namespaces
	AAddr, BAddr string
	Linkem       *Proc
}

// NewTwoHosts builds the topology and starts `espep linkem` (the binary at
// espep) with the given impairment flags, and waits until it forwards.
func NewTwoHosts(b *Bed, espep string, linkemFlags ...string) (*TwoHosts, error) {
	t := &TwoHosts{Bed: b, AAddr: "10.201.0.1", BAddr: "10.201.0.2"}
	var err error
	for _, x := range []struct {
		dst  *string
		name string
	}{{&t.A, "a"}, {&t.Radio, "radio"}, {&t.B, "b"}} {
		if *x.dst, err = b.NS(x.name); err != nil {
			return nil, err
		}
	}
	if err := b.Veth(t.A, "a0", t.Radio, "ra"); err != nil {
		return nil, err
	}
	if err := b.Veth(t.Radio, "rb", t.B, "b0"); err != nil {
		return nil, err
	}
	if err := b.Addr(t.A, "a0", t.AAddr+"/24"); err != nil {
		return nil, err
	}
	if err := b.Addr(t.B, "b0", t.BAddr+"/24"); err != nil {
		return nil, err
	}
	args := append([]string{espep, "linkem", "--a", "ra", "--b", "rb"}, linkemFlags...)
	if t.Linkem, err = b.Start(t.Radio, args...); err != nil {
		return nil, err
	}
	if err := waitFor(t.Linkem, "linkem running", 10*time.Second); err != nil {
		return nil, err
	}
	return t, nil
}

// waitFor waits until a process has written want, or fails if it ends.
func waitFor(p *Proc, want string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), want) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%v ended before %q: %v\n%s", p.cmd.Args, want, p.err, p.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%v: no %q after %v:\n%s", p.cmd.Args, want, d, p.Output())
}
