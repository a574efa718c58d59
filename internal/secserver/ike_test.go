package secserver

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
)

func ikeKeysPB(initiator, responder netip.Addr) *pb.IKEKeys {
	return &pb.IKEKeys{Initiator: initiator.AsSlice(), Responder: responder.AsSlice(), Prf: "hmac-sha2-256", Encr: "aes-cbc",
		Integ: "hmac-sha2-256-128", SkD: bytes.Repeat([]byte{0xd1}, 32), SkAi: bytes.Repeat([]byte{0xa1}, 32),
		SkAr: bytes.Repeat([]byte{0xa2}, 32), SkEi: bytes.Repeat([]byte{0xe1}, 16), SkEr: bytes.Repeat([]byte{0xe2}, 16)}
}

// TestIKEDelegation: scheme 2's keys follow the rules of write SAs. An
// agent uploads the keys of an IKE SA one of whose addresses it owns (not
// another's); a write gateway of the area fetches them with the pair
// (and is pushed them on its watch); a read gateway gets none, a gateway
// of another area is refused; every release and refusal is audited, with
// no key in the log; the keys expire; they survive a restart of the
// server sealed in its store; the agent that gave them withdraws them.
func TestIKEDelegation(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agentID := pki.Identity{Role: pki.RoleAgent, Name: "mobile-7", Addrs: []netip.Addr{mobile}}
	agent := w.client(w.cert(agentID))
	gwCert := w.cert(pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}})
	st, err := w.client(gwCert).Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); err != nil || len(ev.GetIke()) != 0 {
		t.Fatalf("the empty state: %v %v", ev, err)
	}
	// Not the agent's addresses: refused.
	other := netip.MustParseAddr("198.51.100.9")
	_, err = agent.UploadIKE(ctx, &pb.UploadIKERequest{Area: "cell-17", Keys: []*pb.IKEKeys{ikeKeysPB(wired, other)}})
	wantCode(t, "someone else's IKE SA", err, 7)
	// Malformed: refused.
	bad := ikeKeysPB(wired, mobile)
	bad.SkEi = bad.SkEi[:5]
	_, err = agent.UploadIKE(ctx, &pb.UploadIKERequest{Area: "cell-17", Keys: []*pb.IKEKeys{bad}})
	wantCode(t, "a short SK_ei", err, 3)
	if _, err := agent.UploadIKE(ctx, &pb.UploadIKERequest{Area: "cell-17", Keys: []*pb.IKEKeys{ikeKeysPB(wired, mobile)}}); err != nil {
		t.Fatal(err)
	}
	ev, err := st.Recv()
	if err != nil || len(ev.GetIke()) != 1 || !bytes.Equal(ev.GetIke()[0].GetSkD(), bytes.Repeat([]byte{0xd1}, 32)) {
		t.Fatalf("pushed: %v %v", ev, err)
	}
	fetch := func(cert pki.Identity, class pb.Class) (*pb.FetchReply, error) {
		return w.client(w.cert(cert)).Fetch(ctx, &pb.FetchRequest{A: mobile.AsSlice(), B: wired.AsSlice(), Class: class})
	}
	gwID := pki.Identity{Role: pki.RoleGateway, Name: "gw-17", Areas: []string{"cell-17"}}
	if r, err := fetch(gwID, pb.Class_CLASS_WRITE); err != nil || len(r.GetIke()) != 1 {
		t.Fatalf("write fetch: %v %v", r, err)
	}
	if r, err := fetch(gwID, pb.Class_CLASS_READ); err != nil || len(r.GetIke()) != 0 {
		t.Fatalf("read fetch: %v %v", r, err)
	}
	_, err = fetch(pki.Identity{Role: pki.RoleGateway, Name: "gw-99", Areas: []string{"cell-99"}}, pb.Class_CLASS_WRITE)
	wantCode(t, "another area's gateway", err, 7)
	log := w.audit.String()
	if !strings.Contains(log, `"msg":"released","call":"fetch","who":"gw-17/`) || !strings.Contains(log, `"ike":"192.0.2.1-192.0.2.2"`) ||
		strings.Count(log, `"msg":"refused"`) < 2 {
		t.Fatalf("audit:\n%s", log)
	}
	for _, k := range [][]byte{bytes.Repeat([]byte{0xd1}, 32), bytes.Repeat([]byte{0xe1}, 16)} {
		if strings.Contains(log, hex.EncodeToString(k)) {
			t.Fatal("a key in the audit log")
		}
	}
	// Sealed in the store, kept across a restart.
	w.stop()
	w.start()
	if r, err := fetch(gwID, pb.Class_CLASS_WRITE); err != nil || len(r.GetIke()) != 1 {
		t.Fatalf("after a restart: %v %v", r, err)
	}
	// Expired: as if not there.
	agent = w.client(w.cert(agentID))
	short := ikeKeysPB(wired, mobile)
	short.SkD, short.HardSeconds = bytes.Repeat([]byte{0xd2}, 32), 60
	if _, err := agent.UploadIKE(ctx, &pb.UploadIKERequest{Area: "cell-17", Keys: []*pb.IKEKeys{short}}); err != nil {
		t.Fatal(err)
	}
	if r, err := fetch(gwID, pb.Class_CLASS_WRITE); err != nil || len(r.GetIke()) != 2 {
		t.Fatalf("two IKE SAs: %v %v", r, err)
	}
	w.srv.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if r, err := fetch(gwID, pb.Class_CLASS_WRITE); err != nil || len(r.GetIke()) != 1 {
		t.Fatalf("one expired: %v %v", r, err)
	}
	w.srv.now = time.Now
	// Withdrawn by its agent.
	k := ikeKeyOf(mobile, bytes.Repeat([]byte{0xd1}, 32))
	if r, err := agent.Withdraw(ctx, &pb.WithdrawRequest{Ids: []*pb.SAID{{Spi: 0, Dst: k.Dst.AsSlice(), Proto: k.Proto}}}); err != nil || r.GetRemoved() != 1 {
		t.Fatalf("withdraw: %v %v", r, err)
	}
	if r, err := fetch(gwID, pb.Class_CLASS_WRITE); err != nil || len(r.GetIke()) != 1 {
		t.Fatalf("withdrawn: %v %v", r, err)
	}
}
