package secserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// lockedBuffer is the audit log of a test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// world is a CA, a security server on loopback with its store, and
// certificates for the parties.
type world struct {
	t        *testing.T
	ca       *pki.CA
	verifier *pki.Verifier
	srv      *Server
	addr     string
	audit    *lockedBuffer
	dbPath   string
	storeKey []byte
	grpc     *grpc.Server
	store    *BoltStore
	// wrap, when set, is the store the server is given over the bbolt
	// one (a Feed in TestFollowFeed).
	wrap func(*BoltStore) Store
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return newWorldOn(t, nil)
}

// newWorldOn is newWorld with the server's store wrapped by wrap.
func newWorldOn(t *testing.T, wrap func(*BoltStore) Store) *world {
	t.Helper()
	w := &world{t: t, audit: &lockedBuffer{}, wrap: wrap}
	dir := t.TempDir()
	var err error
	if w.ca, err = pki.Init(filepath.Join(dir, "ca"), "test CA", time.Hour*24); err != nil {
		t.Fatal(err)
	}
	if w.verifier, err = pki.LoadVerifier(filepath.Join(dir, "ca", "ca.crt"), filepath.Join(dir, "ca", "ca.crl")); err != nil {
		t.Fatal(err)
	}
	w.dbPath, w.storeKey = filepath.Join(dir, "sa.db"), bytes.Repeat([]byte{0x5c}, 32)
	w.start()
	return w
}

// start runs the server on a fresh listener over the store file.
func (w *world) start() {
	t := w.t
	var err error
	if w.store, err = OpenBolt(w.dbPath, w.storeKey); err != nil {
		t.Fatal(err)
	}
	var st Store = w.store
	if w.wrap != nil {
		st = w.wrap(w.store)
	}
	w.srv = New(st, w.verifier, slog.New(slog.NewJSONHandler(w.audit, nil)))
	srvCert := w.cert(pki.Identity{Role: pki.RoleServer, Name: "secserver-1", Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	w.grpc = grpc.NewServer(grpc.Creds(credentials.NewTLS(w.verifier.ServerTLS(srvCert, pki.RoleAgent, pki.RoleGateway))))
	w.srv.Attach(w.grpc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	go w.grpc.Serve(ln)
	t.Cleanup(w.stop)
}

func (w *world) stop() {
	w.grpc.Stop()
	w.store.Close()
}

func (w *world) cert(id pki.Identity) tls.Certificate {
	w.t.Helper()
	c, k, err := w.ca.Issue(id, time.Hour)
	if err != nil {
		w.t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		w.t.Fatal(err)
	}
	return pair
}

// client dials the server as the holder of cert.
func (w *world) client(cert tls.Certificate) pb.SecurityServerClient {
	w.t.Helper()
	cfg := w.verifier.ClientTLS(cert, pki.RoleServer)
	if cert.Certificate == nil {
		cfg.Certificates = nil
	}
	cc, err := grpc.NewClient(w.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { cc.Close() })
	return pb.NewSecurityServerClient(cc)
}

var (
	mobile   = netip.MustParseAddr("192.0.2.2")
	wired    = netip.MustParseAddr("192.0.2.1")
	gcmKey   = bytes.Repeat([]byte{0xa1}, 20)
	cbcKey   = bytes.Repeat([]byte{0xb2}, 16)
	integKey = bytes.Repeat([]byte{0xc3}, 32)
)

func gcmSA(spi uint32, src, dst netip.Addr) *pb.SA {
	return &pb.SA{Spi: spi, Proto: "esp", Src: src.AsSlice(), Dst: dst.AsSlice(), Mode: "tunnel", Enc: "aes-gcm16",
		EncKey: gcmKey, ReplayWindow: 64, Class: pb.Class_CLASS_WRITE}
}

func cbcSA(spi uint32, src, dst netip.Addr, class pb.Class) *pb.SA {
	return &pb.SA{Spi: spi, Proto: "esp", Src: src.AsSlice(), Dst: dst.AsSlice(), Mode: "tunnel", Enc: "aes-cbc",
		EncKey: cbcKey, Integ: "hmac-sha256-128", IntegKey: integKey, ReplayWindow: 64, Class: class}
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

// TestDelegation: a mobile's agent uploads its SA pair from area
// cell-17; a gateway of that area fetches it with the keys; a read grant
// of a CBC SA carries no integrity key, whatever the gateway asks; every
// release is audited without a key; a gateway identifier is never given
// twice, across a restart of the server on the same store.
func TestDelegation(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	agent := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	gw := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}}))
	up, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{
		gcmSA(0x1001, wired, mobile), gcmSA(0x2002, mobile, wired), cbcSA(0x3003, mobile, wired, pb.Class_CLASS_READ)}})
	if err != nil || up.GetStored() != 3 {
		t.Fatalf("upload: %v %v", up, err)
	}
	got, err := gw.Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice(), Class: pb.Class_CLASS_WRITE})
	if err != nil || len(got.GetSas()) != 3 {
		t.Fatalf("fetch: %v %v", got, err)
	}
	for _, sa := range got.GetSas() {
		switch sa.GetSpi() {
		case 0x1001, 0x2002:
			if sa.GetClass() != pb.Class_CLASS_WRITE || !bytes.Equal(sa.GetEncKey(), gcmKey) {
				t.Fatalf("AES-GCM SA: %v", sa)
			}
		case 0x3003:
			if sa.GetClass() != pb.Class_CLASS_READ || len(sa.GetIntegKey()) != 0 || !bytes.Equal(sa.GetEncKey(), cbcKey) {
				t.Fatalf("a read grant carried more than the decryption key: %v", sa)
			}
			if _, err := toConfig(sa); err != nil {
				t.Fatalf("the read grant is not a usable SA: %v", err)
			}
		}
	}
	// The pair the other way round is the same pair.
	if again, err := gw.Fetch(ctx, &pb.FetchRequest{A: wired.AsSlice(), B: mobile.AsSlice()}); err != nil || len(again.GetSas()) != 3 {
		t.Fatalf("fetch b, a: %v %v", again, err)
	}
	log := w.audit.String()
	if strings.Count(log, `"msg":"released"`) != 6 || !strings.Contains(log, `"who":"gw-17/`) {
		t.Fatalf("audit log:\n%s", log)
	}
	for _, k := range [][]byte{gcmKey, cbcKey, integKey} {
		if strings.Contains(strings.ToLower(log), hex.EncodeToString(k)) || bytes.Contains([]byte(log), k) {
			t.Fatal("a key in the audit log")
		}
	}
	ids := map[uint64]bool{}
	for i := 0; i < 3; i++ {
		r, err := gw.Register(ctx, &pb.RegisterRequest{})
		if err != nil || ids[r.GetGatewayId()] || r.GetGatewayId() == 0 {
			t.Fatalf("register: %v %v (had %v)", r, err, ids)
		}
		ids[r.GetGatewayId()] = true
	}
	w.stop()
	w.start()
	gw = w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}}))
	if r, err := gw.Register(ctx, &pb.RegisterRequest{}); err != nil || ids[r.GetGatewayId()] {
		t.Fatalf("register after a restart: %v %v (had %v)", r, err, ids)
	}
	if again, err := gw.Fetch(ctx, &pb.FetchRequest{A: wired.AsSlice(), B: mobile.AsSlice()}); err != nil || len(again.GetSas()) != 3 {
		t.Fatalf("fetch after a restart: %v %v", again, err)
	}
	if r, err := agent.Withdraw(ctx, &pb.WithdrawRequest{Ids: []*pb.SAID{{Spi: 0x1001, Dst: mobile.AsSlice(), Proto: "esp"}}}); err == nil {
		t.Fatalf("a client of the stopped server withdrew: %v", r)
	}
	agent = w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	if r, err := agent.Withdraw(ctx, &pb.WithdrawRequest{Ids: []*pb.SAID{{Spi: 0x1001, Dst: mobile.AsSlice(), Proto: "esp"}}}); err != nil || r.GetRemoved() != 1 {
		t.Fatalf("withdraw: %v %v", r, err)
	}
	if again, err := gw.Fetch(ctx, &pb.FetchRequest{A: wired.AsSlice(), B: mobile.AsSlice()}); err != nil || len(again.GetSas()) != 2 {
		t.Fatalf("fetch after a withdrawal: %v %v", again, err)
	}
}

// TestRefusals: each party that may not have what it asks is refused,
// with a clear error, and audited.
func TestRefusals(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	agentID := pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}
	agent := w.client(w.cert(agentID))
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x1001, wired, mobile), gcmSA(0x2002, mobile, wired),
		cbcSA(0x3003, mobile, wired, pb.Class_CLASS_WRITE)}}); err != nil {
		t.Fatal(err)
	}
	pair := &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice()}

	_, err := w.client(tls.Certificate{}).Fetch(ctx, pair)
	wantCode(t, "no client certificate", err, codes.Unavailable) // the handshake fails
	other, _ := pki.Init(filepath.Join(t.TempDir(), "other"), "other CA", time.Hour)
	c, k, _ := other.Issue(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}}, time.Hour)
	foreign, _ := tls.X509KeyPair(c, k)
	_, err = w.client(foreign).Fetch(ctx, pair)
	wantCode(t, "a certificate of another CA", err, codes.Unavailable)

	_, err = agent.Fetch(ctx, pair)
	wantCode(t, "an agent fetching", err, codes.PermissionDenied)
	gwCert := w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	gw := w.client(gwCert)
	_, err = gw.Upload(ctx, &pb.UploadRequest{Sas: []*pb.SA{gcmSA(0x4004, wired, mobile)}})
	wantCode(t, "a gateway uploading", err, codes.PermissionDenied)

	stranger := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "laptop-3", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.7")}}))
	_, err = stranger.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x5005, wired, mobile)}})
	wantCode(t, "an agent uploading for addresses it does not own", err, codes.PermissionDenied)
	_, err = stranger.Withdraw(ctx, &pb.WithdrawRequest{Ids: []*pb.SAID{{Spi: 0x1001, Dst: mobile.AsSlice(), Proto: "esp"}}})
	wantCode(t, "an agent withdrawing another's SA", err, codes.PermissionDenied)
	// The peer's agent owns the other address of the pair: it may upload
	// the same SA again (no change), not other keys under its SPI, and its
	// withdrawal leaves the first agent's upload in place.
	peer := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "wired-1", Addrs: []netip.Addr{wired}}))
	if _, err := peer.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x1001, wired, mobile)}}); err != nil {
		t.Fatalf("the peer uploading the same SA: %v", err)
	}
	spoiled := gcmSA(0x1001, wired, mobile)
	spoiled.EncKey = bytes.Repeat([]byte{0xee}, 20)
	_, err = peer.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{spoiled}})
	wantCode(t, "the peer replacing an SA's keys", err, codes.PermissionDenied)
	if r, err := peer.Withdraw(ctx, &pb.WithdrawRequest{Ids: []*pb.SAID{{Spi: 0x1001, Dst: mobile.AsSlice(), Proto: "esp"}}}); err != nil || r.GetRemoved() != 0 {
		t.Fatalf("the peer withdrawing the agent's upload: %v %v", r, err)
	}
	_, err = agent.Upload(ctx, &pb.UploadRequest{Sas: []*pb.SA{{Spi: 0x6006, Proto: "esp", Src: mobile.AsSlice(), Dst: wired.AsSlice(),
		Mode: "tunnel", Enc: "aes-gcm16", EncKey: gcmKey, Class: pb.Class_CLASS_READ}}})
	wantCode(t, "uploading an AEAD SA as read", err, codes.InvalidArgument)
	_, err = agent.Upload(ctx, &pb.UploadRequest{Sas: []*pb.SA{{Spi: 0x6006, Proto: "esp", Src: mobile.AsSlice(), Dst: wired.AsSlice(),
		Mode: "tunnel", Enc: "aes-gcm16", EncKey: gcmKey[:7], Class: pb.Class_CLASS_WRITE}}})
	wantCode(t, "a key of the wrong length", err, codes.InvalidArgument)

	elsewhere := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-99", Areas: []string{"cell-99"}}))
	_, err = elsewhere.Fetch(ctx, pair)
	wantCode(t, "a gateway of another area", err, codes.PermissionDenied)
	_, err = gw.Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice(), Class: pb.Class_CLASS_READ})
	wantCode(t, "read of an AEAD SA", err, codes.PermissionDenied)

	// Revoked between two calls on one connection: the next call is refused.
	if _, err := gw.Fetch(ctx, pair); err != nil {
		t.Fatal(err)
	}
	if err := w.ca.Revoke(gwCert.Leaf.SerialNumber); err != nil {
		t.Fatal(err)
	}
	crl, err := pki.LoadCRL(filepath.Join(filepath.Dir(w.dbPath), "ca", "ca.crl"), w.ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.verifier.SetCRL(crl); err != nil {
		t.Fatal(err)
	}
	_, err = gw.Fetch(ctx, pair)
	wantCode(t, "a revoked gateway on its open connection", err, codes.Unauthenticated)

	// An SA past its hard lifetime is not handed out.
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{func() *pb.SA {
		s := gcmSA(0x7007, mobile, netip.MustParseAddr("192.0.2.9"))
		s.HardSeconds = 60
		return s
	}()}}); err != nil {
		t.Fatal(err)
	}
	gw2 := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17b", Areas: []string{"cell-17"}}))
	w.srv.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if r, err := gw2.Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: netip.MustParseAddr("192.0.2.9").AsSlice()}); err != nil || len(r.GetSas()) != 0 {
		t.Fatalf("an expired SA: %v %v", r, err)
	}
	w.srv.now = time.Now

	log := w.audit.String()
	for _, want := range []string{"does not serve", "cannot be read", "belongs to", "revoked", "wrong role", "with other keys"} {
		if !strings.Contains(log, want) {
			t.Errorf("no audit entry for %q:\n%s", want, log)
		}
	}
}

// TestStoreSealed: no key byte of a stored SA is in the store's file; the
// records do not open under another key; a store key open to others is
// refused.
func TestStoreSealed(t *testing.T) {
	w := newWorld(t)
	agent := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	if _, err := agent.Upload(context.Background(), &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{cbcSA(0x3003, mobile, wired, pb.Class_CLASS_WRITE)}}); err != nil {
		t.Fatal(err)
	}
	w.stop()
	raw, err := os.ReadFile(w.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range [][]byte{cbcKey[:8], integKey[:8]} {
		if bytes.Contains(raw, k) {
			t.Fatal("a key in the clear in the store file")
		}
	}
	s, err := OpenBolt(w.dbPath, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Get(SAKey{SPI: 0x3003, Dst: wired, Proto: "esp"}); err == nil {
		t.Fatal("a record opened under the wrong key")
	}
	kf := filepath.Join(t.TempDir(), "store.key")
	os.WriteFile(kf, []byte(strings.Repeat("ab", 32)+"\n"), 0o644)
	if _, err := LoadKey(kf); err == nil {
		t.Fatal("a store key open to others was used")
	}
	os.Chmod(kf, 0o600)
	if k, err := LoadKey(kf); err != nil || len(k) != 32 {
		t.Fatalf("store key: %v", err)
	}
}

// TestWatch: a gateway's stream carries first the SAs stored for its
// area, then each upload to it and each withdrawal as they happen — never
// another area's — and ends once its certificate is revoked.
func TestWatch(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x1001, wired, mobile)}}); err != nil {
		t.Fatal(err)
	}
	gwCert := w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	st, err := w.client(gwCert).Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *pb.WatchEvent {
		t.Helper()
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	if ev := next(); len(ev.GetSas()) != 1 || ev.GetSas()[0].GetSpi() != 0x1001 || !bytes.Equal(ev.GetSas()[0].GetEncKey(), gcmKey) {
		t.Fatalf("the stored state: %v", ev)
	}
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-99", Sas: []*pb.SA{gcmSA(0x5005, wired, mobile)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x2002, mobile, wired)}}); err != nil {
		t.Fatal(err)
	}
	if ev := next(); len(ev.GetSas()) != 1 || ev.GetSas()[0].GetSpi() != 0x2002 {
		t.Fatalf("an upload to the area (and not one to another): %v", ev)
	}
	if _, err := agent.Withdraw(ctx, &pb.WithdrawRequest{Ids: []*pb.SAID{{Spi: 0x1001, Dst: mobile.AsSlice(), Proto: "esp"}}}); err != nil {
		t.Fatal(err)
	}
	if ev := next(); len(ev.GetRemoved()) != 1 || ev.GetRemoved()[0].GetSpi() != 0x1001 {
		t.Fatalf("a withdrawal: %v", ev)
	}
	if err := w.ca.Revoke(gwCert.Leaf.SerialNumber); err != nil {
		t.Fatal(err)
	}
	crl, err := pki.LoadCRL(filepath.Join(filepath.Dir(w.dbPath), "ca", "ca.crl"), w.ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	w.verifier.SetCRL(crl)
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x3003, mobile, wired)}}); err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a revoked gateway's stream: %v %v", ev, err)
	}
	if !strings.Contains(w.audit.String(), `"call":"watch"`) {
		t.Fatal("the watch was not audited")
	}
}

// TestLeaseLapse: a gateway that numbers an SA keeps a lease by
// heartbeats; while it beats, no order goes out; once it stops (a crash)
// the agent of the SA is ordered to rekey within the lease and a quarter.
// A gateway cannot beat for an identifier another one registered.
func TestLeaseLapse(t *testing.T) {
	w := newWorld(t)
	const ttl = time.Second // heartbeats every 200 ms: a busy machine does not miss five
	w.srv.SetLease(ttl)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.srv.Run(ctx)
	agentCert := w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}})
	agent := w.client(agentCert)
	if _, err := agent.Upload(ctx, &pb.UploadRequest{Area: "cell-17", Sas: []*pb.SA{gcmSA(0x1001, wired, mobile)}}); err != nil {
		t.Fatal(err)
	}
	cfg := w.verifier.ClientTLS(agentCert, pki.RoleServer)
	ac, err := Dial(w.addr, cfg, ipsec.ClassWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	orders := make(chan time.Time, 4)
	var ordered []ipsec.ID
	var omu sync.Mutex
	go ac.Orders(ctx, func(ids []ipsec.ID, why string) {
		omu.Lock()
		ordered = append(ordered, ids...)
		omu.Unlock()
		orders <- time.Now()
	})
	gwCert := w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	gc, err := Dial(w.addr, w.verifier.ClientTLS(gwCert, pki.RoleServer), ipsec.ClassWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	id, err := gc.Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	numbered := []ipsec.ID{{SPI: 0x1001, Dst: mobile, Proto: ipsec.ESP}}
	var last time.Time
	for range 10 { // two seconds of heartbeats every 200 ms
		if _, err := gc.Heartbeat(ctx, id, numbered); err != nil {
			t.Fatal(err)
		}
		last = time.Now()
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case <-orders:
		t.Fatal("a rekey ordered while the gateway's lease was kept")
	default:
	}
	other, err := Dial(w.addr, w.verifier.ClientTLS(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-99", Areas: []string{"cell-99"}}), pki.RoleServer), ipsec.ClassWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Heartbeat(ctx, id, nil); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("a heartbeat for another gateway's identifier: %v", err)
	}
	select {
	case at := <-orders:
		bound := at.Sub(last)
		t.Logf("rekey ordered %v after the last heartbeat (lease %v)", bound, ttl)
		if bound > ttl+ttl/4+time.Second { // loose: the machine may be busy; an SA's lifetime is hours

			t.Fatalf("ordered %v after the last heartbeat: past the lease", bound)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no rekey ordered after the gateway stopped")
	}
	omu.Lock()
	defer omu.Unlock()
	if len(ordered) != 1 || ordered[0].SPI != 0x1001 {
		t.Fatalf("ordered %v", ordered)
	}
	if !strings.Contains(w.audit.String(), "lease lapsed") {
		t.Fatal("the lapse was not audited")
	}
}
