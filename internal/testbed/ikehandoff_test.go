package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGatewayHandoffFollowsIKE: scheme 2 across a handoff, between
// unmodified strongSwan peers over the two paths of
// TestGatewayHandoffStrongSwan. Gateway 1 is given only the IKE SA's keys
// (a key file, from the initiator's charon log) and derives IKE_AUTH's
// CHILD_SA; gateway 2 is given nothing — gateway 1 offers it the CHILD_SA
// and the IKE SA's keys. Halfway through a download the peers' routes
// move to the second path, gateway 2 takes the flow over, and then the
// mobile's end rekeys the CHILD_SA: only gateway 2 sees that exchange,
// and it follows it with the handed keys (the new SAs derived and
// installed) and carries the flow on the new SA. The file arrives intact
// and no charon logs a replay or an integrity failure.
func TestGatewayHandoffFollowsIKE(t *testing.T) {
	b, ns, dir := strongSwanTwoPaths(t)
	var sas, ikes [2]string
	for i := range sas {
		sas[i], ikes[i] = filepath.Join(dir, fmt.Sprintf("gw-%d.sa", i+1)), filepath.Join(dir, fmt.Sprintf("gw-%d.ike", i+1))
		must(t, os.WriteFile(sas[i], []byte("espep-sa 1\n"), 0o600))
		must(t, os.WriteFile(ikes[i], []byte("espep-ike 1\n"), 0o600))
	}
	gws := handoffGateways(t, b, ns, dir, sas, []string{"--ike-keys", ikes[0]}, []string{"--ike-keys", ikes[1]})
	s := startCharonsOnPaths(t, b, ns, dir, gws[0])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go delegateIKE(ctx, t, s.CharonLog("left"), ikes[0]) // to gateway 1 only
	must(t, waitFor(gws[0], `msg="gateway: IKE: CHILD_SA derived"`, 10*time.Second))
	giveKeys(t, s, "", false) // the tunnel carries
	must(t, waitFor(gws[1], `ike-sas=1`, 10*time.Second))
	size := max(*gatewaySize, 8) << 20
	x := newPeerTransfer(t, s, dir, size, 0, 300)
	sender, err := b.Start(s.Left, x.sender...)
	must(t, err)
	start := time.Now()
	halfway(t, filepath.Join(dir, "out"), size, gws[0])
	moveToPath2(t, b, ns, SSLeftOuter, SSRightOuter)
	must(t, waitFor(gws[1], `msg="handoff: asked for a mobile"`, 10*time.Second))
	time.Sleep(500 * time.Millisecond)
	rekeyed := time.Now()
	must(t, s.Rekey("right"))
	for strings.Count(gws[1].Output(), `msg="gateway: IKE: CHILD_SA derived"`) < 2 {
		if time.Since(rekeyed) > 10*time.Second {
			t.Fatalf("gateway 2 did not follow the rekey:\n%s", lastLines([]byte(gws[1].Output()), 12))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("gateway 2 had the rekeyed CHILD_SA %v after swanctl --rekey", time.Since(rekeyed).Round(time.Millisecond))
	if err := sender.Wait(time.Duration(size>>20)*8*time.Second + 30*time.Second); err != nil { // ≥ 1 Mbit/s
		for _, p := range gws {
			p.Signal(syscall.SIGTERM)
			p.Wait(5 * time.Second)
		}
		t.Fatalf("sender: %v\ngateway 1:\n%s\ngateway 2:\n%s", err, lastLines([]byte(gws[0].Output()), 25), lastLines([]byte(gws[1].Output()), 40))
	}
	took := time.Since(start)
	if err := x.received(); err != nil {
		t.Fatalf("%v\ngateway 1:\n%s\ngateway 2:\n%s", err, lastLines([]byte(gws[0].Output()), 10), lastLines([]byte(gws[1].Output()), 10))
	}
	t.Logf("%d MB in %v (%.1f Mbit/s) across the move and the rekey", size>>20, took.Round(time.Millisecond), float64(size*8)/took.Seconds()/1e6)
	charonClean(t, s)
	for _, p := range gws {
		p.Signal(syscall.SIGTERM)
	}
	for _, p := range gws {
		p.Wait(5 * time.Second)
	}
	ic1, ic2 := counters(gws[0].Output(), "ike:"), counters(gws[1].Output(), "ike:")
	g2 := counters(gws[1].Output(), "gateway:")
	t.Logf("gateway 1 ike %v\ngateway 2 ike %v\ngateway 2 %v", ic1, ic2, g2)
	if ic1["children"] != 1 || ic2["handed"] != 1 || ic2["children"] != 1 || ic2["installed"] != 2 || ic2["integrity"]+ic2["malformed"] != 0 {
		t.Errorf("gateway 1 derived %d CHILD_SAs, gateway 2 took %d IKE SAs' keys and derived %d (installed %d): want 1, 1, 1 (2)",
			ic1["children"], ic2["handed"], ic2["children"], ic2["installed"])
	}
	if g2["sealed"] < 500 {
		t.Errorf("gateway 2 did not carry the flow on: %v", g2)
	}
}
