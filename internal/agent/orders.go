package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/espep/espep/ipsec"
)

// OrderSource is the security server as the agent's orders come from it
// (secserver.Client).
type OrderSource interface {
	Orders(ctx context.Context, do func(rekey []ipsec.ID, why string)) error
}

// FollowOrders does the server's orders until ctx ends, listening again
// (after a second) when the stream breaks. An SA of a pair the agent
// installed (scheme 4) is replaced at once by Run; for any other, do is
// called (the CLI runs the endpoint's rekey command, e.g. swanctl
// --rekey); nil do ignores them.
func (a *Agent) FollowOrders(ctx context.Context, src OrderSource, do func(id ipsec.ID, why string)) {
	log := a.cfg.Log
	for ctx.Err() == nil {
		err := src.Orders(ctx, func(ids []ipsec.ID, why string) {
			for _, id := range ids {
				mine := a.pairs.order(id)
				log.Warn("agent: rekey ordered", "spi", fmt.Sprintf("%#08x", id.SPI), "dst", id.Dst, "why", why, "generated", mine)
				if !mine && do != nil {
					do(id, why)
				}
			}
		})
		if ctx.Err() != nil {
			return
		}
		log.Warn("agent: orders: listening again", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
