package secserver_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver"
	"github.com/espep/espep/internal/secserver/sectest"
	"github.com/espep/espep/ipsec"
)

// etcdCluster is a real etcd cluster (Debian's etcd-server) on loopback,
// its members' processes removed when the test ends.
type etcdCluster struct {
	clients []string
	procs   []*exec.Cmd
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// etcdTLS are the files of a cluster's client TLS: its members serve
// https with cert and key and admit only clients with a certificate of ca.
type etcdTLS struct{ cert, key, ca string }

// startEtcd starts a cluster of n members (with client TLS if tl is set).
func startEtcd(t *testing.T, n int, tl *etcdTLS) *etcdCluster {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("etcd missing (.ci/run installs etcd-server)")
		}
		t.Skip("SKIP: etcd not installed (apt-get install etcd-server)")
	}
	ports := freePorts(t, 2*n)
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &etcdCluster{}
	dir := t.TempDir()
	for i := range n {
		scheme := "http"
		if tl != nil {
			scheme = "https"
		}
		client, peer := fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]), fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		args := []string{"--name", fmt.Sprintf("m%d", i), "--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i)),
			"--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer, "--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", "espep-test", "--log-level", "error"}
		if tl != nil {
			args = append(args, "--cert-file", tl.cert, "--key-file", tl.key, "--client-cert-auth", "--trusted-ca-file", tl.ca)
		}
		cmd := exec.Command(bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("etcd m%d:\n%s", i, out.String())
			}
		})
		c.clients = append(c.clients, client)
		c.procs = append(c.procs, cmd)
	}
	return c
}

var (
	wired  = netip.MustParseAddr("192.0.2.1")
	mobile = netip.MustParseAddr("192.0.2.2")
)

func gcm(spi uint32, src, dst netip.Addr) ipsec.Config {
	return ipsec.Config{SPI: spi, Proto: ipsec.ESP, Src: src, Dst: dst, Mode: ipsec.Tunnel, Enc: ipsec.EncAESGCM16,
		EncKey: bytes.Repeat([]byte{byte(spi)}, 20), Class: ipsec.ClassWrite}
}

// TestReplicasOnEtcd: three security server replicas on a three-member
// etcd cluster. An upload to one replica is fetched from another and
// pushed to a gateway watching a third; gateway identifiers asked of all
// three at once never repeat. One etcd member is
// killed and one replica stopped: what was delegated is still served by
// the others, and new uploads still go through (the quorum stands); a
// client given the three replicas' addresses moves to a live one.
func TestReplicasOnEtcd(t *testing.T) {
	cl := startEtcd(t, 3, nil)
	w := sectest.NewWorld(t)
	key := bytes.Repeat([]byte{9}, 32)
	var addrs []string
	var stops []func()
	fctx, fcancel := context.WithCancel(context.Background())
	defer fcancel()
	for range 3 {
		st, err := secserver.OpenEtcd(cl.clients, nil, "/espep-test", key)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		addr, srv, stop := w.Serve(t, st)
		go srv.Follow(fctx, st)
		addrs, stops = append(addrs, addr), append(stops, stop)
	}
	// A gateway watching replica 2 hears of every replica's uploads.
	var pmu sync.Mutex
	pushed := map[uint32]bool{}
	go w.ClientOf(t, addrs[2], pki.Identity{Role: pki.RoleGateway, Name: "gw-w", Areas: []string{"cell-1"}}).Watch(fctx,
		func(add []ipsec.Config, _ []ipsec.ID, _ bool) {
			pmu.Lock()
			defer pmu.Unlock()
			for _, c := range add {
				pushed[c.SPI] = true
			}
		})
	seen := func(spi uint32) bool {
		pmu.Lock()
		defer pmu.Unlock()
		return pushed[spi]
	}
	agentID := pki.Identity{Role: pki.RoleAgent, Name: "mobile", Addrs: []netip.Addr{mobile}}
	gwID := pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}}
	ctx := context.Background()
	// The cluster elects its leader as the first requests come: retry the
	// first upload for a while.
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err = w.ClientOf(t, addrs[0], agentID).Upload(ctx, "cell-1", []ipsec.Config{gcm(0x1001, wired, mobile), gcm(0x2002, mobile, wired)}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload: %v", err)
		}
	}
	// etcd holds the SAs sealed: no key in the clear.
	raw, err := clientv3.New(clientv3.Config{Endpoints: cl.clients, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	all, err := raw.Get(ctx, "/espep-test/", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) < 4 {
		t.Fatalf("etcd holds %v: %v", all, err)
	}
	for _, kv := range all.Kvs {
		if bytes.Contains(kv.Value, bytes.Repeat([]byte{0x01}, 8)) || bytes.Contains(kv.Value, bytes.Repeat([]byte{0x02}, 8)) {
			t.Fatalf("a key in the clear in etcd under %s", kv.Key)
		}
	}
	// A fetch may fail while the cluster notices a member gone (the
	// server says Unavailable): the gateway asks again, as here.
	fetch := func(replica int) int {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			got, err := w.ClientOf(t, addrs[replica], gwID).Fetch(ctx, wired, mobile)
			if err == nil {
				return len(got)
			}
			if time.Now().After(deadline) {
				t.Fatalf("fetch from replica %d: %v", replica, err)
			}
			t.Logf("fetch from replica %d, again: %v", replica, err)
		}
	}
	if n := fetch(1); n != 2 {
		t.Fatalf("replica 1 serves %d SAs of an upload to replica 0", n)
	}
	waitUntil(t, func() bool { return seen(0x1001) && seen(0x2002) }, "replica 2 never pushed an upload to replica 0")
	var mu sync.Mutex
	ids := map[uint64]bool{}
	var wg sync.WaitGroup
	for r := range 3 {
		c := w.ClientOf(t, addrs[r], gwID)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				id, err := c.Register(ctx)
				mu.Lock()
				if err != nil || ids[id] {
					t.Errorf("register on replica %d: %d, %v (a repeat?)", r, id, err)
				}
				ids[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()

	// A gateway that knows all three replicas is on the first.
	multi := w.ClientOf(t, strings.Join(addrs, ","), gwID)
	if got, err := multi.Fetch(ctx, wired, mobile); err != nil || len(got) != 2 {
		t.Fatalf("fetch over the replica list: %v %v", got, err)
	}

	cl.procs[0].Process.Kill() // one etcd member gone
	stops[0]()                 // one replica gone
	// It moves to another replica.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		got, err := multi.Fetch(ctx, wired, mobile)
		if err == nil && len(got) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fetch over the replica list after replica 0 went: %v %v", got, err)
		}
		t.Logf("fetch over the replica list, again: %v", err)
	}
	if n := fetch(2); n != 2 {
		t.Fatalf("after the losses replica 2 serves %d SAs", n)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err = w.ClientOf(t, addrs[1], agentID).Upload(ctx, "cell-1", []ipsec.Config{gcm(0x3003, mobile, wired)}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an upload after the losses: %v", err)
		}
	}
	if n := fetch(2); n != 3 {
		t.Fatalf("after a new upload replica 2 serves %d SAs", n)
	}
	waitUntil(t, func() bool { return seen(0x3003) }, "after the losses, replica 2 never pushed an upload to replica 1")
	if c := strings.Count(w.Audit.String(), `"msg":"released"`); c < 7 {
		t.Fatalf("%d releases audited", c)
	}
}

func waitUntil(t *testing.T, cond func() bool, why string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
	}
}

// TestEtcdTLS: the store talks to an etcd cluster that serves TLS and
// admits only clients with a certificate of the CA (both from
// internal/pki): with its certificate a replica stores and reads; without
// one, or with one of another CA, it gets nothing.
func TestEtcdTLS(t *testing.T) {
	w := sectest.NewWorld(t)
	dir := t.TempDir()
	write := func(name string, id pki.Identity) (string, string) {
		c, k, err := w.CA.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cf, kf := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := pki.WriteFile(cf, c, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFile(kf, k, 0o600); err != nil {
			t.Fatal(err)
		}
		return cf, kf
	}
	ecert, ekey := write("etcd", pki.Identity{Role: pki.RoleServer, Name: "etcd", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	caFile := filepath.Join(dir, "ca.crt")
	if err := pki.WriteFile(caFile, pemOf(w.CA.Cert.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	cl := startEtcd(t, 1, &etcdTLS{ecert, ekey, caFile})
	ccert, ckey := write("replica", pki.Identity{Role: pki.RoleServer, Name: "replica-1"})
	key := bytes.Repeat([]byte{7}, 32)
	open := func(cert, key0 string) *secserver.EtcdStore {
		t.Helper()
		tlsCfg, err := secserver.EtcdTLS(cert, key0, caFile)
		if err != nil {
			t.Fatal(err)
		}
		st, err := secserver.OpenEtcd(cl.clients, tlsCfg, "/tls-test", key)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	st := open(ccert, ckey)
	c := gcm(0x1001, wired, mobile)
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err = st.Put(secserver.SAKey{SPI: c.SPI, Dst: c.Dst, Proto: "esp"}, [2]netip.Addr{c.Src, c.Dst}, secserver.Record{SA: []byte{1}, Area: "a"}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put over TLS: %v", err)
		}
	}
	if recs, err := st.Pair(wired, mobile); err != nil || len(recs) != 1 {
		t.Fatalf("pair over TLS: %v %v", recs, err)
	}
	other := sectest.NewWorld(t)
	oc, ok, _ := other.CA.Issue(pki.Identity{Role: pki.RoleServer, Name: "intruder"}, time.Hour)
	ocf, okf := filepath.Join(dir, "o.crt"), filepath.Join(dir, "o.key")
	pki.WriteFile(ocf, oc, 0o644)
	pki.WriteFile(okf, ok, 0o600)
	otls, err := secserver.EtcdTLS(ocf, okf, caFile)
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := clientv3.New(clientv3.Config{Endpoints: cl.clients, DialTimeout: 2 * time.Second, TLS: otls, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Close()
	ictx, icancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer icancel()
	if r, err := intruder.Get(ictx, "/tls-test/", clientv3.WithPrefix()); err == nil {
		t.Fatalf("a client of another CA read the store: %d keys", len(r.Kvs))
	}
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestSharedLeases: replicas on one etcd cluster share gateway leases. A
// gateway registers and beats on replica 0, which then dies; it beats on
// replica 1 under the same identifier (no re-registration: the lease and
// its owner are in etcd) — which another gateway cannot. When it stops,
// the agent listening on replica 2 is ordered to rekey the SA it numbered.
func TestSharedLeases(t *testing.T) {
	cl := startEtcd(t, 3, nil)
	w := sectest.NewWorld(t)
	key := bytes.Repeat([]byte{9}, 32)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var addrs []string
	var stops []func()
	for range 3 {
		st, err := secserver.OpenEtcd(cl.clients, nil, "/espep-lease-test", key)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		addr, srv, stop := w.Serve(t, st)
		srv.SetLease(2 * time.Second)
		srv.ShareLeases(st)
		go srv.FollowLeases(ctx, st)
		addrs, stops = append(addrs, addr), append(stops, stop)
	}
	agentID := pki.Identity{Role: pki.RoleAgent, Name: "mobile", Addrs: []netip.Addr{mobile}}
	gwID := pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}}
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err = w.ClientOf(t, addrs[0], agentID).Upload(ctx, "cell-1", []ipsec.Config{gcm(0x1001, wired, mobile)}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload: %v", err)
		}
	}
	orders := make(chan []ipsec.ID, 4)
	go w.ClientOf(t, addrs[2], agentID).Orders(ctx, func(ids []ipsec.ID, _ string) { orders <- ids })
	g0 := w.ClientOf(t, addrs[0], gwID)
	id, err := g0.Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	numbered := []ipsec.ID{{SPI: 0x1001, Dst: mobile, Proto: ipsec.ESP}}
	if _, err := g0.Heartbeat(ctx, id, numbered); err != nil {
		t.Fatal(err)
	}
	stops[0]() // the replica the gateway used dies
	g1 := w.ClientOf(t, addrs[1], gwID)
	var last time.Time
	for range 4 { // two seconds of beats on replica 1, same identifier
		if _, err := g1.Heartbeat(ctx, id, numbered); err != nil {
			t.Fatalf("heartbeat on another replica: %v", err)
		}
		last = time.Now()
		time.Sleep(500 * time.Millisecond)
	}
	select {
	case ids := <-orders:
		t.Fatalf("ordered %v while the lease was kept", ids)
	default:
	}
	other := w.ClientOf(t, addrs[1], pki.Identity{Role: pki.RoleGateway, Name: "gw-9", Areas: []string{"cell-9"}})
	if _, err := other.Heartbeat(ctx, id, nil); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("another gateway beat for the identifier: %v", err)
	}
	select {
	case ids := <-orders:
		t.Logf("rekey ordered by replica 2 %v after the last heartbeat on replica 1", time.Since(last).Round(time.Millisecond))
		if len(ids) != 1 || ids[0].SPI != 0x1001 {
			t.Fatalf("ordered %v", ids)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no rekey ordered after the gateway stopped")
	}
}

// TestEtcdFeedResumes: the etcd store's feed goes on from where a broken
// watch left it — changes made while nobody followed come then, none
// twice — and says so (ErrFeedGap) when etcd has compacted them away.
func TestEtcdFeedResumes(t *testing.T) {
	cl := startEtcd(t, 1, nil)
	st, err := secserver.OpenEtcd(cl.clients, nil, "/feed-test", bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	put := func(spi uint32) {
		t.Helper()
		c := gcm(spi, wired, mobile)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			err := st.Put(secserver.SAKey{SPI: spi, Dst: mobile, Proto: "esp"}, [2]netip.Addr{c.Src, c.Dst}, secserver.Record{SA: []byte{byte(spi)}, Area: "a"})
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("put: %v", err)
			}
		}
	}
	put(0x1)
	// follow runs the feed from position from until it has told want
	// changes, returning them and where to go on.
	follow := func(from int64, during func(), want int) ([]uint32, int64, error) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ready := make(chan struct{}, 1)
		got := make(chan uint32, 16)
		type result struct {
			next int64
			err  error
		}
		done := make(chan result, 1)
		go func() {
			next, err := st.Follow(ctx, from, func() { ready <- struct{}{} }, func(id secserver.SAKey, rec, _ *secserver.Record) {
				got <- id.SPI
			})
			done <- result{next, err}
		}()
		var spis []uint32
		select {
		case <-ready:
		case r := <-done:
			return nil, r.next, r.err
		case <-time.After(10 * time.Second):
			t.Fatal("the feed never got in place")
		}
		during()
		for len(spis) < want {
			select {
			case s := <-got:
				spis = append(spis, s)
			case <-time.After(10 * time.Second):
				t.Fatalf("the feed told %x, not %d changes", spis, want)
			}
		}
		cancel()
		r := <-done
		if r.err == nil {
			select { // nothing more, nothing twice
			case s := <-got:
				t.Fatalf("the feed told %x and then %#x too", spis, s)
			default:
			}
		}
		return spis, r.next, r.err
	}
	spis, next, err := follow(0, func() { put(0x2) }, 1)
	if err != nil || len(spis) != 1 || spis[0] != 0x2 || next == 0 {
		t.Fatalf("from now: %x, next %d, %v", spis, next, err)
	}
	put(0x3) // while nobody follows
	put(0x4)
	spis, next2, err := follow(next, func() {}, 2)
	if err != nil || len(spis) != 2 || spis[0] != 0x3 || spis[1] != 0x4 || next2 <= next {
		t.Fatalf("going on from %d: %x, next %d, %v", next, spis, next2, err)
	}
	raw, err := clientv3.New(clientv3.Config{Endpoints: cl.clients, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	put(0x5)
	r, err := raw.Get(ctx, "/feed-test/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
	defer gcancel()
	if _, err := st.Follow(gctx, next, func() {}, func(secserver.SAKey, *secserver.Record, *secserver.Record) {}); !errors.Is(err, secserver.ErrFeedGap) {
		t.Fatalf("from a compacted revision: %v, not a gap", err)
	}
}
