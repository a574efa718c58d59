package handoff

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"sync"

	"github.com/espep/espep/internal/pki"
)

// Neighbours is a gateway's current set of handoff neighbours — the
// gateways a mobile may come from or go to — with a connection to each:
// what Asker asks, what Offerer offers to, and whose offers the Server
// takes. The set may change while the gateway runs (the proxy management
// service pushes a new one whenever it changes; --handoff-peer names a
// fixed part): Set dials the new neighbours and closes the connections of
// those that left. Each connection admits only the certificate of the name
// it was given for.
type Neighbours struct {
	TLS *tls.Config // the gateway's client TLS (pki.Verifier.ClientTLS, admitting gateways)
	Log *slog.Logger

	mu      sync.Mutex
	clients map[string]*Client // by certificate name
	addrs   map[string]string
}

// Peer is a neighbour: its certificate's name and its handoff address.
type Peer struct{ Name, Addr string }

// MaxNeighbours bounds a neighbour set: a service or a configuration that
// names more is cut to its first MaxNeighbours.
const MaxNeighbours = 64

// Set makes peers the neighbour set (the first of a name counts). A
// neighbour whose address changed is dialled again; one that cannot be
// dialled is left out (and logged) until the next Set.
func (n *Neighbours) Set(peers []Peer) {
	want := map[string]string{}
	for _, p := range peers {
		if _, dup := want[p.Name]; !dup && len(want) < MaxNeighbours {
			want[p.Name] = p.Addr
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.clients == nil {
		n.clients, n.addrs = map[string]*Client{}, map[string]string{}
	}
	for name, c := range n.clients {
		if a, ok := want[name]; !ok || a != n.addrs[name] {
			c.Close()
			delete(n.clients, name)
			delete(n.addrs, name)
		}
	}
	for name, addr := range want {
		if _, ok := n.clients[name]; ok {
			continue
		}
		c, err := Dial(addr, pinned(n.TLS, name))
		if err != nil {
			if n.Log != nil {
				n.Log.Warn("handoff: neighbour left out", "neighbour", name, "addr", addr, "err", err)
			}
			continue
		}
		n.clients[name], n.addrs[name] = c, addr
	}
}

// pinned is cfg admitting only a peer whose certificate names it name: an
// address from a push or a multicast answer (which anyone can send) must
// not lead the gateway to hand SAs or flows to another gateway of the CA.
func pinned(cfg *tls.Config, name string) *tls.Config {
	c := cfg.Clone()
	verify := c.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if verify != nil {
			if err := verify(cs); err != nil {
				return err
			}
		}
		id, err := pki.PeerIdentity(cs)
		if err != nil {
			return err
		}
		if id.Name != name {
			return fmt.Errorf("handoff: neighbour %q presented the certificate of %q", name, id.Name)
		}
		return nil
	}
	return c
}

// Get is the connection to the neighbour called name, nil if it is not
// one.
func (n *Neighbours) Get(name string) *Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.clients[name]
}

// Has reports whether name is a neighbour (for Server.ServeOffers).
func (n *Neighbours) Has(name string) bool { return n.Get(name) != nil }

// All is the current set, by name (a copy).
func (n *Neighbours) All() map[string]*Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.clients)
}

// Peers is whom a gateway's Asker asks and its Offerer offers to: the
// neighbours by certificate name. *Neighbours is one; StaticPeers a fixed
// set of connections made elsewhere.
type Peers interface {
	Get(name string) *Client
	All() map[string]*Client
}

// StaticPeers is a fixed neighbour set.
type StaticPeers map[string]*Client

// Get is the connection to name, nil if it is not a neighbour.
func (s StaticPeers) Get(name string) *Client { return s[name] }

// All is the set (a copy).
func (s StaticPeers) All() map[string]*Client { return maps.Clone(s) }

// Close closes every connection; the set is empty after.
func (n *Neighbours) Close() {
	n.Set(nil)
}
