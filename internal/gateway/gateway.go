// Package gateway is espep's IPsec-aware PEP: between a wire side and a
// radio side it opens the ESP/AH of flows whose SAs it holds, runs the TCP
// engine on what is inside, and seals what the engine sends so that both
// endpoints keep accepting every packet.
//
// Per packet (dispatch.go): IKE, keepalives, fragments and anything it
// cannot or may not open are relayed as they came (DESIGN.md rule 6, fail
// open); so are the packets of SAs of class none. For a read-class SA the
// gateway decrypts (it holds no integrity key), and the engine snoops on
// the cleartext while forwarding, caching and resending only the
// ciphertext as it came (rule 4). For a write-class SA every layer's ICV
// and replay window are checked before anything else (rule 3, open.go),
// and then the inner packet's selectors against the SA's (RFC 4301 §5.2);
// the inner packet goes to the engine, and every packet the engine sends
// on is sealed again (seal.go) on the SA that carries its flow
// (flows.go), in the outer form the SA states or, where it states none
// (esp_sa lines) or a NAT moved it, the form its verified packets show. A
// packet the engine passes on unchanged goes out as the original
// ciphertext until the SA's IV generator is confirmed (nonce.go), and is
// re-sealed from then on.
//
// Learning. Everything the gateway learns from packets — an SA's salt,
// its outer form and ports, a flow's SA and IP-in-IP tunnel — comes from
// packets it verified. Read-class packets verify nothing: what the
// gateway keeps of them (the last sequence number, which decides whether
// a cached copy is still inside the receiver's replay window) only ever
// stops a local resend, and the sender's next packet sets it again.
//
// Re-sequencing (rule 2): once the gateway may seal on an SA it numbers
// every packet on it — relayed or its own — from above the endpoint's
// highest number and above every number any earlier life of the gateway
// may have used on the SA (the state directory's record, package
// statedir), and then with max(its last number + 1, the endpoint's
// highest), so the receiver sees one increasing sequence. Numbers are
// reserved on disk before use, in blocks of seqBlock, so a gateway killed
// at any moment is followed by one that numbers above it. Without a state
// directory the gateway starts SeqJump above the endpoint, which covers a
// predecessor only as far as its lead was smaller.
//
// The cost of re-sequencing is the lead: once the gateway numbers an SA,
// the receiver refuses the endpoint's own numbers until they pass the
// gateway's last. Whenever the gateway stops sealing on an SA it numbers
// — it stops or dies for good, the endpoint's IVs stop following seq ⊕
// salt, its counter reaches 2^32 − 1 before the endpoint's — the
// endpoint's next Lead packets are refused (SAStats.Lead, per SA). The
// lead is the gateway's own extra packets on the SA (split's and snoop's
// resends; the engine sends no more ACKs than the endpoint it speaks for
// beyond a slack of 64 and the delayed ACKs the endpoint's next packets
// pay back), plus, after a crash, the unused part of the last reserved
// block (at most seqBlock); a restarted gateway takes over as soon as it
// has the SA and two verified packets. An SA removed from the gateway's SAD while the
// gateway numbers it is not cut: the gateway keeps opening and re-sealing
// its packets while they come, and seals its flows' on it (draining,
// sad.go), and wipes its keys once it has been idle for DrainIdle. Verified packets it cannot use (dummy,
// bad trailer, outside the selectors) are dropped, not relayed with the
// endpoint's stale numbers.
//
// Each flow is sealed on the SA its own packets last came on, so flows of
// different SAs between the same hosts never mix, and a flow first seen
// protected never goes out in the clear (flows.go).
//
// SAs end (DESIGN.md rule 5: no data lost): when the endpoints rekey, a
// flow's packets start to come on the new SA and the gateway follows them;
// the old SA's flows follow it too once the old one leaves the SAD or
// reaches its hard lifetime. The other direction of a flow that moved is
// marked stale — its endpoint has rekeyed, but may have nothing to send
// (a sender whose bytes the gateway holds, acknowledged early) — and the
// gateway asks that endpoint for a packet with a keep-alive
// (engine.Elicit) until its packets show the new SA; so too while an SA's
// IV generator is unconfirmed. What the gateway guarantees: a flow's
// early-acknowledged bytes are delivered as long as the gateway holds the
// endpoints' new SAs before they delete the old ones (save-keys and the
// security server give them at the rekey). If it never gets the new SAs,
// the bytes it holds for a flow when the endpoints delete the old SAs (at
// most Engine.BufferPerFlow per direction) can no longer be delivered, and
// nothing can seal the engine's reset either: that connection stalls until
// its application gives up. Split mode depends on the SA feed for this
// reason; snoop mode holds nothing the sender has not kept. An SA given
// again (a new entry, the same keys) keeps the gateway's numbers.
//
// Concurrency. Process may be called from any number of goroutines at
// once: packets of different flows are processed in parallel (the
// engine's flows are sharded, one shard per core by default), packets of
// one flow one at a time. Each call works in a buffer of its own (a
// pooled call); what the engine sends on is sealed in the buffers of the
// shard whose lock it holds (perShard). Locks, in the order they are
// taken: an engine shard's lock (engineOut runs under it, from Process, the engine's
// timers or its request queue) → a route table's (flows.go) or g.smu
// (the SA tables), never both → an saState's mu → its noncePlan's mu. An SA's sequence numbers and IVs are allocated
// under its saState's mu, so concurrent seals on one SA never share one.
// The SAD is read without a lock (atomic pointer).
package gateway

import (
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/statedir"
	"github.com/espep/espep/ipsec"
)

// Config tunes a gateway.
type Config struct {
	// Engine configures the TCP engine (Mode: split or snoop).
	Engine engine.Config
	// Plain accelerates TCP that is not IPsec-protected too.
	Plain bool
	// State keeps the IV blocks and sequence numbers the gateway reserves
	// (statedir.Open; statedir.Memory for a gateway that lives and dies
	// with its process, as in the lab). Nil: no state — the gateway never
	// seals on SAs with counter IVs (AES-GCM, ChaCha20-Poly1305, AES-CTR)
	// and relays them untouched.
	State *statedir.Dir
	// SeqJump is how far above the endpoint's highest sequence number
	// (and above the state directory's record) the gateway starts
	// numbering an SA it takes over. Default: 0 with State, whose record
	// covers every earlier life of the gateway; 65536 without, which
	// covers a predecessor only as far as its lead was smaller. Negative:
	// none.
	SeqJump int64
	// TakeoverJump is how far further above the endpoint the gateway
	// starts numbering an SA another gateway may have numbered — one a
	// neighbour provisioned, or any SA once the gateway has handoff
	// neighbours (SetMissing) — when no handoff brought that gateway's
	// last number (it is gone: crashed or cut off): it may have numbered
	// the SA ahead of the endpoint by its lead, which only it knew.
	// Default 65536 (many times a lead of resends); negative: none. The
	// price: should this gateway in turn stop with no successor, the
	// endpoint's next TakeoverJump packets are refused (the lead, see the
	// package doc) until a rekey; and a gateway that follows it, handed its
	// numbers, drops rather than relays the endpoint's packets it may not
	// seal yet (they would be refused as replays: counted behind).
	TakeoverJump int64
	// DrainIdle is how long an SA the gateway numbers is kept after it
	// left the SAD, counted from its last use — a packet that came on it
	// or one the gateway sealed (default 30 s).
	DrainIdle time.Duration
	Log       *slog.Logger
}

// Gateway processes packets between the wire and the radio side.
type Gateway struct {
	cfg Config
	log *slog.Logger
	out func(to engine.Side, pkt []byte)
	// outKnown, if set (SetOutKnown), takes the packets whose checksums
	// the gateway made itself; out the rest.
	outKnown func(to engine.Side, pkt []byte)
	// outPartial, if set (SetOutPartial), takes the segments the engine
	// built with their TCP checksums left partial; without it the gateway
	// completes them.
	outPartial func(to engine.Side, pkt []byte)
	eng        *engine.Engine
	sad        atomic.Pointer[ipsec.SAD]
	sources    sources // what each SA source gives (sources.go)
	// want, when set, is told of address pairs whose SAs the gateway
	// lacks (an IKE packet, an unknown SPI): the security server source
	// (fetch.go). It never blocks.
	want atomic.Pointer[func(a, b netip.Addr)]
	// ike, when set, is handed every IKE message relayed (IKE following,
	// ike.go). It never blocks.
	ike atomic.Pointer[func(pkt []byte, l ipsec.Loc)]
	// missing, when set, is told of a mobile whose flows seem to be at
	// another gateway (handoff.go). It never blocks.
	missing atomic.Pointer[func(mobile netip.Addr) bool]
	// unanswered are the mobiles no neighbour handed over when asked
	// (Unanswered): an SA of theirs taken over later — its first packet
	// came after the ask ended — jumps twice too (takeoverJump).
	unanswered recentAddrs
	held       held     // packets held while a mobile's flows are asked for (handoff.go)
	ivs        *ivSpace // nil without State

	closed atomic.Bool // Close: no Process starts; Close waits for those under way (stripe.busy)
	calls  sync.Pool   // *call
	shards []perShard  // indexed by engine.Emitted.Shard

	routes *[routeShards]routeTable // the flows (flows.go)
	prov   provisioned              // SAs neighbours offered (provision.go)
	// provEntries are the SAD entries made for provisioned SAs (a set of
	// *ipsec.Entry, read lock-free where SA states are made).
	provEntries sync.Map

	smu        sync.Mutex
	stateCache sync.Map              // *ipsec.Entry → *saState: what state answered, until the tables change
	states     map[ipsec.ID]*saState // write-class SAs seen; bounded by the SAD (and draining)
	draining   map[ipsec.ID]*saState // numbered SAs that left the SAD, kept while their packets come
	readLast   map[ipsec.ID]uint32   // the last sequence number seen on each read-class SA
	drainT     *time.Timer

	// owed are flows whose engine packets were dropped because their SA
	// was not ready; once it is, the engine sends them a fresh ACK.
	owed  map[route]via
	owedN atomic.Int32
	// unrouted are flows whose engine packets were dropped because the
	// gateway had no route for them (after a restart, the journal's
	// resumed flows until their endpoints' first packets): the side the
	// packets went toward and when. Once a verified packet shows the
	// route, the engine sends them again at once (retryUnrouted).
	unrouted      map[route]unroutedAt
	unroutedN     atomic.Int32
	unroutedSwept time.Time // when entries older than unroutedKeep were last dropped

	logged     sync.Map     // ipsec.ID → struct{}: SAs refused for want of a state directory, logged once
	sealLogged atomic.Int64 // when a seal error was last logged (unix ns)

	c          counters     // one stripe per engine shard (counters.go)
	nextStripe atomic.Int64 // the stripe of the next call made
}

// perShard is what engineOut uses under one engine shard's lock.
type perShard struct {
	seal []byte  // bundles are sealed here, innermost first
	wrap []byte  // and put in their IP-in-IP tunnel here
	ctr  *stripe // and counted here
}

// SetOutKnown gives the gateway a second way out for the packets whose
// checksums it made itself — segments the engine built, packets it sealed
// — which a link that coalesces (tunlink.Link.SendKnown) merges without
// summing them again. Call it before the first packet; like out, it must
// not keep pkt.
func (g *Gateway) SetOutKnown(f func(to engine.Side, pkt []byte)) { g.outKnown = f }

// SetOutPartial gives the gateway a third way out, for the TCP segments
// its engine built and sends in the clear, their TCP checksums left
// partial (engine.Config.PartialChecksums) for the link's device to
// complete (tunlink.Link.SendPartial): summing a segment costs about as
// much as copying it, and on the way out of a device with checksum
// offload nobody need do it. Without it, the gateway completes them
// before they leave, as it does before sealing one. Call it before the
// first packet; it must not keep pkt.
func (g *Gateway) SetOutPartial(f func(to engine.Side, pkt []byte)) { g.outPartial = f }

// New makes a gateway that sends through out (which must not keep pkt)
// and takes its SAs from sad, whose entries it then owns (replace them
// with SetSAD; it wipes the keys of those that leave).
func New(cfg Config, sad *ipsec.SAD, out func(to engine.Side, pkt []byte)) (*Gateway, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	switch {
	case cfg.SeqJump == 0 && cfg.State == nil:
		cfg.SeqJump = 1 << 16
	case cfg.SeqJump < 0:
		cfg.SeqJump = 0
	}
	switch {
	case cfg.TakeoverJump == 0:
		cfg.TakeoverJump = 1 << 16
	case cfg.TakeoverJump < 0:
		cfg.TakeoverJump = 0
	}
	if cfg.DrainIdle == 0 {
		cfg.DrainIdle = 30 * time.Second
	}
	if cfg.Engine.Shards == 0 {
		cfg.Engine.Shards = 4 * runtime.GOMAXPROCS(0)
	}
	g := &Gateway{cfg: cfg, log: cfg.Log, out: out, states: map[ipsec.ID]*saState{}, draining: map[ipsec.ID]*saState{},
		routes: newRouteTables(), readLast: map[ipsec.ID]uint32{},
		owed: map[route]via{}, unrouted: map[route]unroutedAt{}}
	g.calls.New = func() any {
		i := g.nextStripe.Add(1)
		return &call{ctr: &g.c[int(i)%len(g.c)], buf: make([]byte, 2*ipsec.MaxHeadroom+65536)}
	}
	if cfg.State != nil {
		g.ivs = &ivSpace{dir: cfg.State}
	} else {
		g.log.Warn("gateway: no state directory: never sealing on AES-GCM, ChaCha20-Poly1305 or AES-CTR SAs (their IVs must never repeat across restarts); relaying them untouched")
	}
	var err error
	g.c = make(counters, cfg.Engine.Shards)
	ecfg := cfg.Engine
	ecfg.PartialChecksums = true // completed where they must be (sendOut, send, sealFlow)
	if g.eng, err = engine.New(ecfg, g.engineOut); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.shards = make([]perShard, g.eng.Shards())
	for i := range g.shards {
		g.shards[i] = perShard{seal: make([]byte, (maxBundle+1)*ipsec.MaxHeadroom+65536+maxBundle*ipsec.MaxTailroom),
			wrap: make([]byte, 2*ipsec.MaxHeadroom+65536+ipsec.MaxTailroom), ctr: &g.c[i%len(g.c)]}
	}
	g.SetSAD(sad)
	return g, nil
}

// Engine returns the gateway's TCP engine.
func (g *Gateway) Engine() *engine.Engine { return g.eng }

// Close stops the gateway, in this order: no packet is processed after it
// returns; the engine forgets its flows and stops its timers; the
// sequence numbers used on each SA are recorded (so that a successor on
// the same state directory wastes none of its reservations); the keys of
// the SAs the gateway alone holds (draining ones) are wiped. The SAD's
// entries stay with the SAD; the state directory is the caller's to
// close, after this. Close waits for the Process calls under way, so it
// must not be called from the function the gateway sends through.
func (g *Gateway) Close() {
	if g.closed.Swap(true) {
		return
	}
	// Every Process call counts itself busy before it looks at closed:
	// once none is busy, none will start.
	for i := range g.c {
		for g.c[i].busy.Load() != 0 {
			time.Sleep(50 * time.Microsecond)
		}
	}
	g.eng.Close()
	g.wipeProvisioned()
	g.dropHeld()
	g.smu.Lock()
	defer g.smu.Unlock()
	for _, m := range []map[ipsec.ID]*saState{g.states, g.draining} {
		for _, st := range m {
			st.release()
		}
	}
	for id, st := range g.draining {
		st.e.Wipe()
		delete(g.draining, id)
	}
	g.clearStateCache()
	if g.drainT != nil {
		g.drainT.Stop()
	}
}
