package handoff

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/gateway"
	hpb "github.com/espep/espep/internal/handoff/pb"
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pki"
)

// testIKEKeys is an IKE SA's keys (AES-GCM, SPIs set), distinct per i.
func testIKEKeys(i byte) ikev2.Keys {
	fill := func(n int, b byte) []byte {
		k := make([]byte, n)
		for j := range k {
			k[j] = b + byte(j)
		}
		return k
	}
	return ikev2.Keys{SPIi: 0x1000 + uint64(i), SPIr: 0x2000 + uint64(i), PRF: ikev2.PRFHMACSHA2256, Encr: ikev2.EncrAESGCM16,
		D: fill(32, i), Ei: fill(20, i+1), Er: fill(20, i+2)}
}

// TestOfferIKE: a gateway that follows IKE offers its neighbour the keys of
// the IKE SAs it follows (bound to their SPIs), with the SAs; the
// neighbour's follower takes them (ike handed 1), and they are not offered
// again within half the TTL. Offers of IKE keys without SPIs, of more IKE
// SAs than an offer may carry, or of text that is no key file are refused
// whole; a gateway that follows no IKE ignores the keys and takes the SAs.
func TestOfferIKE(t *testing.T) {
	w := newWorld(t, EngineSource{splitEngine(t)})
	g1, g2 := idleGateway(t, nil), idleGateway(t, nil)
	ike1 := gateway.NewIKESAs(g1, ikefollow.New(ikefollow.Config{}))
	ike2 := gateway.NewIKESAs(g2, ikefollow.New(ikefollow.Config{}))
	if err := ike1.AddKeys(testIKEKeys(1)); err != nil {
		t.Fatal(err)
	}
	addr2, srv2 := w.serve(g2, "gw-2")
	srv2.ServeOffers(g2, func(id pki.Identity) bool { return id.Name == "gw-1" })
	srv2.ServeIKEOffers(ike2)
	gw1 := pki.Identity{Role: pki.RoleGateway, Name: "gw-1", Areas: []string{"cell-1"}}
	o := &Offerer{G: g1, IKE: ike1, Peers: StaticPeers{"gw-2": w.clientAt(addr2, gw1)}, TTL: time.Minute}
	ctx := context.Background()
	if n := o.Once(ctx); n != 1 {
		t.Fatalf("gw-1 offered %d, want its one IKE SA", n)
	}
	if st := ike2.Stats(); st.Handed != 1 || st.Bound != 1 {
		t.Fatalf("gw-2's IKE source after the offer: %s", st.Summary())
	}
	if k := ike2.Keyed(); len(k) != 0 {
		t.Fatalf("gw-2 would offer on an IKE SA whose traffic never came to it: %d", len(k))
	}
	if n := o.Once(ctx); n != 0 {
		t.Fatalf("offered again at once: %d", n)
	}

	c := w.clientAt(addr2, gw1)
	noSPIs := testIKEKeys(2)
	noSPIs.SPIi, noSPIs.SPIr = 0, 0
	for name, req := range map[string]*hpb.OfferRequest{
		"keys without SPIs": {Ike: []*hpb.OfferedIKE{{Keys: ikefollow.AppendKeyFile(nil, noSPIs)}}},
		"no key file":       {Ike: []*hpb.OfferedIKE{{Keys: []byte("espep-ike 1\n[ike]\nsk-d = zz\n")}}},
		"two in one entry":  {Ike: []*hpb.OfferedIKE{{Keys: ikefollow.AppendKeyFile(nil, testIKEKeys(3), testIKEKeys(4))}}},
		"too many": func() *hpb.OfferRequest {
			r := &hpb.OfferRequest{}
			for range MaxOffer + 1 {
				r.Ike = append(r.Ike, &hpb.OfferedIKE{Keys: ikefollow.AppendKeyFile(nil, testIKEKeys(5))})
			}
			return r
		}(),
	} {
		if _, err := c.api.Offer(ctx, req); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if st := ike2.Stats(); st.Handed != 1 {
		t.Errorf("refused offers reached the follower: %s", st.Summary())
	}

	// A gateway that follows no IKE: the SAs are taken, the keys ignored.
	g3 := idleGateway(t, nil)
	addr3, srv3 := w.serve(g3, "gw-3")
	srv3.ServeOffers(g3, nil)
	if err := w.clientAt(addr3, gw1).Offer(ctx, nil, []ikefollow.KeyedSA{{Keys: testIKEKeys(6), Encap: true}}, time.Minute); err != nil {
		t.Fatalf("an IKE offer to a gateway that follows no IKE: %v", err)
	}
}
