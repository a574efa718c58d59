package testbed

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/ipsec/header"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// The kernel here has no ipip module, so the Mobile IP home agents of
// TestGatewayIPIPRouters are this test binary run again as a small
// IP-in-IP router (RFC 2003): what the kernel routes into its TUN device
// goes out in an outer IPv4 header (protocol 4) to the peer router, and
// protocol-4 packets from the peer come out of the TUN without it.
const ipipEnv = "ESPEP_TESTBED_IPIP_ROUTER" // "TUN LOCAL REMOTE"

// ipipRouterMain runs the router until SIGTERM; it returns the exit code.
func ipipRouterMain(spec string) int {
	f := strings.Fields(spec)
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "ipip router: want TUN LOCAL REMOTE")
		return 2
	}
	if err := ipipRouter(f[0], netip.MustParseAddr(f[1]), netip.MustParseAddr(f[2])); err != nil {
		fmt.Fprintln(os.Stderr, "ipip router:", err)
		return 1
	}
	return 0
}

func ipipRouter(name string, local, remote netip.Addr) error {
	const mtu = 1480 // 1500 less the outer header
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return err
	}
	defer dev.Close()
	send, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) // IP_HDRINCL
	if err != nil {
		return err
	}
	defer unix.Close(send)
	recv, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_IPIP)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() { <-ctx.Done(); unix.Close(recv); dev.Close() }()
	fmt.Println("ipip router running")

	var wrapped, unwrapped int
	go func() { // the peer → the TUN
		const off = 16 // room for the TUN's virtio header
		buf := make([]byte, off+65536)
		for {
			n, err := unix.Read(recv, buf[off:])
			if err != nil {
				return
			}
			pkt := buf[off : off+n]
			ihl := int(pkt[0]&0xf) * 4
			if n < ihl+20 || netip.AddrFrom4([4]byte(pkt[12:16])) != remote {
				continue
			}
			if _, err := dev.Write([][]byte{buf[:off+n]}, off+ihl); err != nil && !errors.Is(err, os.ErrClosed) {
				fmt.Fprintln(os.Stderr, "ipip router: tun write:", err)
			}
			unwrapped++
		}
	}()
	// The TUN → the peer.
	const off = 16 + 20
	bufs := [][]byte{make([]byte, off+65536)}
	sizes := make([]int, 1)
	to := &unix.SockaddrInet4{Addr: remote.As4()}
	var id uint16
	for {
		if _, err := dev.Read(bufs, sizes, off); err != nil {
			if ctx.Err() != nil {
				fmt.Printf("ipip router: wrapped %d unwrapped %d\n", wrapped, unwrapped)
				return nil
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				continue
			}
			return err
		}
		n := sizes[0]
		pkt := bufs[0][off-20 : off+n]
		id++
		header.WriteIPv4(pkt, 0, len(pkt), id, false, 64, header.ProtoIPIP, local, remote)
		if err := unix.Sendto(send, pkt, 0, to); err != nil {
			fmt.Fprintln(os.Stderr, "ipip router: send:", err)
			continue
		}
		wrapped++
	}
}

// TestGatewayIPIPRouters: a Mobile-IP-style IP-in-IP tunnel (RFC 2003)
// between two routers — home agent and foreign agent — carries the ESP
// tunnel between two espep hosts, and espep's gateway sits on the path
// between the routers (espep linkem --sa, split, 1 % loss toward b):
//
//	[a] ─ lan0 [ra] wan0 ══ xa [gateway] xb ══ wan0 [rb] lan0 ─ [b]
//	          └ mip0: IP-in-IP 198.51.100.1 ⇄ 198.51.100.2 ┘
//
// The routers forward nothing that arrives on wan0 outside the tunnel
// (forwarding is off on wan0), so every packet the gateway sends must be
// back in IP-in-IP to reach a host. The file arrives intact, both hosts
// open every packet, and the gateway worked inside the tunnel.
func TestGatewayIPIPRouters(t *testing.T) {
	b := ForTest(t)
	dir := t.TempDir()
	ns := map[string]string{}
	for _, n := range []string{"a", "ra", "m", "rb", "b"} {
		x, err := b.NS(n)
		must(t, err)
		ns[n] = x
	}
	must(t, b.Veth(ns["a"], "a0", ns["ra"], "lan0"))
	must(t, b.Veth(ns["ra"], "wan0", ns["m"], "xa"))
	must(t, b.Veth(ns["m"], "xb", ns["rb"], "wan0"))
	must(t, b.Veth(ns["rb"], "lan0", ns["b"], "b0"))
	must(t, b.Addr(ns["a"], "a0", "10.81.1.1/24"))
	must(t, b.Addr(ns["b"], "b0", "10.81.2.1/24"))
	must(t, b.IP(ns["a"], "route", "add", "default", "via", "10.81.1.254"))
	must(t, b.IP(ns["b"], "route", "add", "default", "via", "10.81.2.254"))
	var routers []*Proc
	for _, r := range []struct{ name, lan, wan, peer, remoteLAN string }{
		{"ra", "10.81.1.254/24", "198.51.100.1", "198.51.100.2", "10.81.2.0/24"},
		{"rb", "10.81.2.254/24", "198.51.100.2", "198.51.100.1", "10.81.1.0/24"},
	} {
		n := ns[r.name]
		must(t, b.Addr(n, "lan0", r.lan))
		must(t, b.Addr(n, "wan0", r.wan+"/24"))
		_, err := b.Run(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		must(t, err)
		_, err = b.Run(n, "sysctl", "-qw", "net.ipv4.conf.wan0.forwarding=0")
		must(t, err)
		p, err := b.Start(n, "env", ipipEnv+"=mip0 "+r.wan+" "+r.peer, os.Args[0])
		must(t, err)
		must(t, waitFor(p, "ipip router running", 10*time.Second))
		must(t, b.IP(n, "link", "set", "mip0", "up"))
		must(t, b.IP(n, "route", "add", r.remoteLAN, "dev", "mip0"))
		routers = append(routers, p)
	}

	c := hostCase{name: "esp-tunnel-gcm", mode: "tunnel", proto: "esp", enc: "aes-gcm16", ekey: 36, integ: "none"}
	p := &hostPair{b: b, a: ns["a"], bn: ns["b"], dir: dir, la: "10.78.1.1", lb: "10.78.2.1"}
	p.saPath = filepath.Join(dir, "sa.conf")
	must(t, os.WriteFile(p.saPath, []byte(c.saFile("10.81.1.1", "10.81.2.1")), 0o600))
	var err error
	p.mid, err = b.Start(ns["m"], espepBin, "linkem", "--a", "xa", "--b", "xb", "--sa", p.saPath, "--state-dir", filepath.Join(p.dir, "state"), "--mode", "split",
		"--rate", "50mbit", "--delay", "5ms", "--queue", "200p", "--ab.loss", "1%", "--seed", "3")
	must(t, err)
	must(t, waitFor(p.mid, " running", 10*time.Second))
	// The IP-in-IP tunnel's MTU.
	p.startHosts(t, c, func(s string) string { return strings.Replace(s, "[host]\n", "[host]\nlink-mtu = 1480\n", 1) })

	payload := make([]byte, 1<<20)
	rand.Read(payload)
	hostTransfer(t, c, p, payload)
	for _, r := range routers {
		r.Signal(syscall.SIGTERM)
		r.Wait(5 * time.Second)
		t.Log(strings.TrimSpace(r.Output()))
	}
	gc, ec := counters(p.mid.Output(), "gateway:"), counters(p.mid.Output(), "engine:")
	t.Logf("gateway %v\nengine %v", gc, ec)
	if gc["ipip"] < 500 || gc["opened"] < 500 || gc["sealed"] < 500 || gc["icv-failures"]+gc["seal-errors"]+gc["replays"] != 0 {
		t.Fatalf("the gateway did not work inside the IP-in-IP tunnel:\n%s", lastLines([]byte(p.mid.Output()), 8))
	}
	if ec["early-acked"] < len(payload) {
		t.Fatalf("the engine did not split the flow: %v", ec)
	}
}
