package safile

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"

	"github.com/espep/espep/ipsec"
)

// WriteNative writes SAs in the native format; ParseNative reads it back
// to the same configurations (keys included: protect the file).
func WriteNative(w io.Writer, sas []ipsec.Config) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "%s %d\n", NativeMagic, NativeVersion)
	for i := range sas {
		c := &sas[i]
		fmt.Fprintf(bw, "\n[sa]\nspi = %#08x\nproto = %v\n", c.SPI, c.Proto)
		fmt.Fprintf(bw, "src = %s\ndst = %s\nmode = %v\n", addr(c.Src), addr(c.Dst), c.Mode)
		if c.UDPEncap() {
			fmt.Fprintf(bw, "encap = udp %d %d\n", c.EncapSrcPort, c.EncapDstPort)
		}
		if c.Proto == ipsec.ESP {
			fmt.Fprintf(bw, "enc = %v\nenc-key = 0x%s\n", c.Enc, hex.EncodeToString(c.EncKey))
		}
		fmt.Fprintf(bw, "integ = %v\n", c.Integ)
		if len(c.IntegKey) > 0 {
			fmt.Fprintf(bw, "integ-key = 0x%s\n", hex.EncodeToString(c.IntegKey))
		}
		fmt.Fprintf(bw, "esn = %s\n", map[bool]string{false: "no", true: "yes"}[c.ESN])
		switch c.ReplayWindow {
		case -1:
			fmt.Fprintf(bw, "replay-window = off\n")
		case 0:
		default:
			fmt.Fprintf(bw, "replay-window = %d\n", c.ReplayWindow)
		}
		fmt.Fprintf(bw, "class = %v\n", c.Class)
		if l := c.Lifetime; l != (ipsec.Lifetime{}) {
			fmt.Fprintf(bw, "lifetime = soft-bytes=%d hard-bytes=%d soft-time=%v hard-time=%v\n", l.SoftBytes, l.HardBytes, l.SoftTime, l.HardTime)
		}
		if c.PMTU != 0 {
			fmt.Fprintf(bw, "pmtu = %d\n", c.PMTU)
		}
		writeTS(bw, &c.TS)
	}
	return bw.Flush()
}

func writeTS(w io.Writer, s *ipsec.Selector) {
	if !s.Local.Any() {
		fmt.Fprintf(w, "ts-local = %v\n", s.Local)
	}
	if !s.Remote.Any() {
		fmt.Fprintf(w, "ts-remote = %v\n", s.Remote)
	}
	if s.Proto != ipsec.ProtoAny {
		fmt.Fprintf(w, "ts-proto = %d\n", s.Proto)
	}
	if !s.LocalPorts.Any() {
		fmt.Fprintf(w, "ts-local-ports = %v\n", s.LocalPorts)
	}
	if !s.RemotePorts.Any() {
		fmt.Fprintf(w, "ts-remote-ports = %v\n", s.RemotePorts)
	}
	if s.UserID != "" {
		fmt.Fprintf(w, "ts-user = %s\n", s.UserID)
	}
	if s.Sensitivity != 0 {
		fmt.Fprintf(w, "ts-level = %d\n", s.Sensitivity)
	}
}

func addr(a netip.Addr) string {
	if !a.IsValid() {
		return "*"
	}
	return a.String()
}
