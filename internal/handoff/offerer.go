package handoff

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"sync"
	"time"

	"github.com/espep/espep/internal/gateway"
	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/ipsec"
)

// Offerer pre-provisions a gateway's neighbours (DESIGN.md, handoff): it
// offers every neighbour the SAs the gateway obtained (files, the
// security server) and, once the mobile's traffic appears here, those a
// neighbour provisioned (gateway.Offerable) — never back to the
// neighbour an SA came from. An SA is offered again before the neighbour
// would let it expire (at half of TTL), and at once when its keys change
// (a rekey gives new keys under a new SPI, or the same SPI again).
type Offerer struct {
	G     *gateway.Gateway
	Peers Peers // the neighbours, by certificate name
	// IKE, if set, is the gateway's IKE following (scheme 2): the keys of
	// the IKE SAs it follows are offered too, bound to their SPIs, so a
	// neighbour follows their CHILD_SA rekeys once the mobile is there.
	IKE IKEKeyed
	// TTL is how long a neighbour keeps what it is offered (default 10
	// minutes; at most gateway.MaxProvisionTTL); Every how often the
	// gateway's SAs are looked at (default 1 s).
	TTL, Every time.Duration
	Log        *slog.Logger

	mu      sync.Mutex
	offered map[offerKey]time.Time // when each SA (with its keys) was last offered to each neighbour
}

type offerKey struct {
	peer  string
	id    ipsec.ID
	ike   [2]uint64 // an IKE SA's SPIs (id zero)
	keyID [16]byte
}

// IKEKeyed lists the keys of the IKE SAs a gateway follows (copies, wiped
// by the caller); *gateway.IKESAs is one.
type IKEKeyed interface {
	Keyed() []ikefollow.KeyedSA
}

func (o *Offerer) ttl() time.Duration {
	if o.TTL <= 0 {
		return 10 * time.Minute
	}
	return min(o.TTL, gateway.MaxProvisionTTL)
}

// Run offers until ctx ends.
func (o *Offerer) Run(ctx context.Context) {
	every := o.Every
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		o.Once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once offers each neighbour what it lacks now and returns how many SAs
// it offered (a neighbour that refuses or does not answer is tried again
// next time).
func (o *Offerer) Once(ctx context.Context) int {
	sas := o.G.Offerable()
	var ike []ikefollow.KeyedSA
	if o.IKE != nil {
		ike = o.IKE.Keyed()
	}
	defer func() {
		for i := range sas {
			sas[i].Config.WipeKeys()
		}
		for i := range ike {
			ike[i].Keys.Wipe()
		}
	}()
	now := time.Now()
	o.mu.Lock()
	if o.offered == nil {
		o.offered = map[offerKey]time.Time{}
	}
	// Forget what the gateway no longer holds (bounds the table by the
	// SAD times the neighbours).
	peers := o.Peers.All()
	held := map[offerKey]bool{}
	for peer := range peers {
		for i := range sas {
			held[keyOf(peer, &sas[i].Config)] = true
		}
		for i := range ike {
			held[ikeKeyOf(peer, &ike[i].Keys)] = true
		}
	}
	for k := range o.offered {
		if !held[k] {
			delete(o.offered, k)
		}
	}
	o.mu.Unlock()
	total := 0
	for peer, c := range peers {
		var batch []ipsec.Config
		var ikeBatch []ikefollow.KeyedSA
		var keys, ikeKeys []offerKey
		o.mu.Lock()
		for i := range sas {
			k := keyOf(peer, &sas[i].Config)
			if sas[i].From == peer || now.Sub(o.offered[k]) < o.ttl()/2 {
				continue
			}
			batch, keys = append(batch, sas[i].Config), append(keys, k)
		}
		for i := range ike {
			if k := ikeKeyOf(peer, &ike[i].Keys); now.Sub(o.offered[k]) >= o.ttl()/2 {
				ikeBatch, ikeKeys = append(ikeBatch, ike[i]), append(ikeKeys, k)
			}
		}
		o.mu.Unlock()
		for len(batch) > 0 || len(ikeBatch) > 0 {
			n, m := min(len(batch), MaxOffer), min(len(ikeBatch), MaxOffer)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.Offer(cctx, batch[:n], ikeBatch[:m], o.ttl())
			cancel()
			if err != nil {
				if o.Log != nil {
					o.Log.Warn("handoff: offer", "neighbour", peer, "sas", n, "ike-sas", m, "err", err)
				}
				break
			}
			o.mu.Lock()
			for _, k := range append(keys[:n:n], ikeKeys[:m]...) {
				o.offered[k] = now
			}
			o.mu.Unlock()
			total += n + m
			batch, keys, ikeBatch, ikeKeys = batch[n:], keys[n:], ikeBatch[m:], ikeKeys[m:]
		}
	}
	return total
}

// ikeKeyOf names an IKE SA's keys offered to peer: its SPIs and a digest
// of SK_d (new keys for the same SPIs are offered again).
func ikeKeyOf(peer string, k *ikev2.Keys) offerKey {
	d := sha256.Sum256(k.D)
	return offerKey{peer: peer, ike: [2]uint64{k.SPIi, k.SPIr}, keyID: [16]byte(d[:16])}
}

func keyOf(peer string, c *ipsec.Config) offerKey {
	return offerKey{peer: peer, id: c.ID(), keyID: ipsec.KeyIDOf(c)}
}
