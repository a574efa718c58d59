package secserver

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
)

// TestGenerate is scheme 4: the mobile's agent asks for the pair, the
// wired terminal's agent gets the same pair the other way round, the
// area's gateway is pushed it and another area's is refused it; a rekey
// (replace) makes a new pair, pushes the old one's removal, and the peer
// follows; the pair moves with the mobile's area; a caller permitting
// less lowers the class; past two-thirds of its lifetime the next request
// renews it. No key reaches the audit log.
func TestGenerate(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mob := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	wir := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "server-1", Addrs: []netip.Addr{wired}}))
	gw := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}}))
	other := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-9", Areas: []string{"cell-9"}}))
	events := watchEvents(t, ctx, gw)
	if ev := <-events; len(ev.GetSas()) != 0 {
		t.Fatalf("first event: %v", ev)
	}

	req := func(local, remote netip.Addr, area string) *pb.GenerateRequest {
		return &pb.GenerateRequest{Local: local.AsSlice(), Remote: remote.AsSlice(), Mode: "transport", Class: pb.Class_CLASS_WRITE, Area: area}
	}
	a, err := mob.Generate(ctx, req(mobile, wired, "cell-17"))
	if err != nil {
		t.Fatal(err)
	}
	checkPair(t, a, mobile, wired)
	b, err := wir.Generate(ctx, req(wired, mobile, ""))
	if err != nil {
		t.Fatal(err)
	}
	if b.GetOut().GetSpi() != a.GetIn().GetSpi() || b.GetIn().GetSpi() != a.GetOut().GetSpi() ||
		!bytes.Equal(b.GetOut().GetEncKey(), a.GetIn().GetEncKey()) || !bytes.Equal(b.GetIn().GetEncKey(), a.GetOut().GetEncKey()) {
		t.Fatalf("the peer got another pair: %v / %v", a, b)
	}
	if ev := <-events; len(ev.GetSas()) != 2 || !bytes.Equal(ev.GetSas()[0].GetEncKey(), pick(a, ev.GetSas()[0].GetSpi()).GetEncKey()) {
		t.Fatalf("push to the area's gateway: %v", ev)
	}
	if _, err := other.Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice()}); err == nil {
		t.Fatal("a gateway of another area was given the generated pair")
	}

	// Refusals.
	_, err = mob.Generate(ctx, req(wired, mobile, "cell-17"))
	wantCode(t, "generate for another's address", err, codes.PermissionDenied)
	bad := req(mobile, wired, "cell-17")
	bad.Class = pb.Class_CLASS_READ
	_, err = mob.Generate(ctx, bad)
	wantCode(t, "read for AES-GCM", err, codes.InvalidArgument)
	_, err = gw.Generate(ctx, req(mobile, wired, "cell-17"))
	wantCode(t, "a gateway generating", err, codes.PermissionDenied)

	// Rekey: the wired agent replaces the pair (ordered after a gateway's lease lapsed).
	r := req(wired, mobile, "")
	r.Replace = []*pb.SAID{{Spi: b.GetOut().GetSpi(), Dst: mobile.AsSlice(), Proto: "esp"}}
	b2, err := wir.Generate(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if b2.GetOut().GetSpi() == b.GetOut().GetSpi() || bytes.Equal(b2.GetOut().GetEncKey(), b.GetOut().GetEncKey()) {
		t.Fatal("replace gave the old pair")
	}
	ev1, ev2 := <-events, <-events // the new pair, then the old one's removal
	if len(ev1.GetSas()) != 2 || len(ev2.GetRemoved()) != 2 {
		t.Fatalf("rekey pushed %v then %v", ev1, ev2)
	}
	a2, err := mob.Generate(ctx, req(mobile, wired, "cell-17"))
	if err != nil || a2.GetOut().GetSpi() != b2.GetIn().GetSpi() {
		t.Fatalf("the peer did not follow the rekey: %v %v", a2, err)
	}

	// The mobile moves to cell-9: gw-17 loses the pair, gw-9 may fetch it.
	if _, err := mob.Generate(ctx, req(mobile, wired, "cell-9")); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; len(ev.GetRemoved()) != 2 {
		t.Fatalf("move: %v", ev)
	}
	if got, err := other.Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice()}); err != nil || len(got.GetSas()) != 2 {
		t.Fatalf("the new area's gateway: %v %v", got, err)
	}

	// Renewal past two-thirds of the lifetime.
	w.srv.now = func() time.Time { return time.Now().Add(41 * time.Minute) }
	a3, err := mob.Generate(ctx, req(mobile, wired, ""))
	if err != nil || a3.GetOut().GetSpi() == a2.GetOut().GetSpi() {
		t.Fatalf("no renewal after 41 of 60 minutes: %v %v", a3, err)
	}
	w.srv.now = time.Now

	log := w.audit.String()
	if strings.Count(log, `"msg":"generated"`) != 6 || !strings.Contains(log, `"msg":"replaced"`) {
		t.Fatalf("audit log:\n%s", log)
	}
	for _, p := range []*pb.GenerateReply{a, a2, a3} {
		for _, sa := range []*pb.SA{p.GetOut(), p.GetIn()} {
			if strings.Contains(log, hex.EncodeToString(sa.GetEncKey())) {
				t.Fatal("a generated key in the audit log")
			}
		}
	}
}

// TestGenerateClass: a CBC pair asked for in write by one endpoint and
// in read by the other ends up read, which gateways then get without the
// integrity key.
func TestGenerateClass(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	mob := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}))
	wir := w.client(w.cert(pki.Identity{Role: pki.RoleAgent, Name: "server-1", Addrs: []netip.Addr{wired}}))
	gw := w.client(w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}}))
	cbc := func(local, remote netip.Addr, class pb.Class) *pb.GenerateRequest {
		return &pb.GenerateRequest{Local: local.AsSlice(), Remote: remote.AsSlice(), Mode: "tunnel", Enc: "aes-cbc",
			Integ: "hmac-sha256-128", Class: class, Area: "cell-17"}
	}
	if _, err := mob.Generate(ctx, cbc(mobile, wired, pb.Class_CLASS_WRITE)); err != nil {
		t.Fatal(err)
	}
	p, err := wir.Generate(ctx, cbc(wired, mobile, pb.Class_CLASS_READ))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.GetOut().GetIntegKey()) != 32 || p.GetOut().GetMode() != "tunnel" {
		t.Fatalf("the endpoint needs every key: %v", p.GetOut())
	}
	got, err := gw.Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice(), Class: pb.Class_CLASS_WRITE})
	if err != nil || len(got.GetSas()) != 2 {
		t.Fatalf("fetch: %v %v", got, err)
	}
	for _, sa := range got.GetSas() {
		if sa.GetClass() != pb.Class_CLASS_READ || len(sa.GetIntegKey()) != 0 {
			t.Fatalf("one endpoint permitted read only, the gateway got %v", sa)
		}
	}
}

func checkPair(t *testing.T, p *pb.GenerateReply, local, remote netip.Addr) {
	t.Helper()
	out, err := toConfig(p.GetOut())
	if err != nil {
		t.Fatal(err)
	}
	in, err := toConfig(p.GetIn())
	if err != nil {
		t.Fatal(err)
	}
	if out.Src != local || out.Dst != remote || in.Src != remote || in.Dst != local || !out.ESN ||
		len(out.EncKey) != 20 || bytes.Equal(out.EncKey, in.EncKey) || out.SPI == in.SPI || out.Lifetime.HardTime != time.Hour {
		t.Fatalf("pair: %+v / %+v", out, in)
	}
}

func pick(p *pb.GenerateReply, spi uint32) *pb.SA {
	if p.GetOut().GetSpi() == spi {
		return p.GetOut()
	}
	return p.GetIn()
}

// watchEvents streams a gateway's watch events.
func watchEvents(t *testing.T, ctx context.Context, gw pb.SecurityServerClient) <-chan *pb.WatchEvent {
	t.Helper()
	st, err := gw.Watch(ctx, &pb.WatchRequest{Class: pb.Class_CLASS_WRITE})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *pb.WatchEvent, 16)
	go func() {
		for {
			ev, err := st.Recv()
			if err != nil {
				close(ch)
				return
			}
			ch <- ev
		}
	}()
	return ch
}
