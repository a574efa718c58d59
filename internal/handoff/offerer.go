package handoff

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/espep/espep/internal/gateway"
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
	keyID [16]byte
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
	defer func() {
		for i := range sas {
			sas[i].Config.WipeKeys()
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
		var keys []offerKey
		o.mu.Lock()
		for i := range sas {
			k := keyOf(peer, &sas[i].Config)
			if sas[i].From == peer || now.Sub(o.offered[k]) < o.ttl()/2 {
				continue
			}
			batch, keys = append(batch, sas[i].Config), append(keys, k)
		}
		o.mu.Unlock()
		for len(batch) > 0 {
			n := min(len(batch), MaxOffer)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.Offer(cctx, batch[:n], o.ttl())
			cancel()
			if err != nil {
				if o.Log != nil {
					o.Log.Warn("handoff: offer", "neighbour", peer, "sas", n, "err", err)
				}
				break
			}
			o.mu.Lock()
			for _, k := range keys[:n] {
				o.offered[k] = now
			}
			o.mu.Unlock()
			total += n
			batch, keys = batch[n:], keys[n:]
		}
	}
	return total
}

func keyOf(peer string, c *ipsec.Config) offerKey {
	return offerKey{peer: peer, id: c.ID(), keyID: ipsec.KeyIDOf(c)}
}
