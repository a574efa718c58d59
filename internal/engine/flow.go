package engine

import (
	"encoding/binary"
	"net/netip"

	"github.com/espep/espep/internal/netem"
	"time"

	"github.com/espep/espep/internal/seqnum"
)

// Side is where a packet came from, or goes to.
type Side uint8

const (
	Wire Side = iota
	Radio
)

func (s Side) other() Side { return 1 - s }

func (s Side) String() string {
	if s == Wire {
		return "wire"
	}
	return "radio"
}

// flowKey names a flow by its wire-side and radio-side endpoints.
type flowKey struct {
	wire, radio netip.AddrPort
}

// hash mixes the key's addresses and ports into 32 bits (a multiply-xor
// of the addresses' halves and the ports, finalised): enough to spread
// flows over shards; not a defence against someone choosing ports to load
// one shard, which only costs them their own flows' parallelism.
func (k flowKey) hash() uint32 {
	w, r := k.wire.Addr().As16(), k.radio.Addr().As16()
	h := binary.LittleEndian.Uint64(w[8:])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(w[:8])
	h = (h^binary.LittleEndian.Uint64(r[8:]))*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(r[:8])
	h = (h ^ uint64(k.wire.Port())<<16 ^ uint64(k.radio.Port())) * 0x9e3779b97f4a7c15
	return fmix(uint32(h>>32) ^ uint32(h))
}

// fmix is MurmurHash3's finaliser: FNV's low bits depend on the inputs'
// low bits only (two flows differing in one octet of both addresses
// would land in one shard), this spreads every input bit over all.
func fmix(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	return h ^ h>>16
}

// seg is a cached segment: the whole IP packet as forwarded.
type seg struct {
	seq     seqnum.Value
	end     seqnum.Value // seq + payload length (+1 for FIN)
	sentAt  time.Time
	rexmits int
	pkt     []byte
	held    int // the memory pkt holds (its pooled buffer), for the cache bounds
	// imported from another engine: sentAt is the import, the real send
	// time unknown, so its ACK gives no RTT sample
	imported bool
}

// half is what the engine knows of one direction's sender.
type half struct {
	isn    seqnum.Value
	synned bool
	mss    uint16
	ws     uint8
	sackOK bool
	ts     bool
	wsOK   bool // sent a window scale option
	finned bool
}

// half returns what is known of the sender on side s.
func (f *flow) half(s Side) *half {
	if s == Wire {
		return &f.down
	}
	return &f.up
}

// flowKind is how a flow's packets are protected: verified by the caller
// (or not needing it), plain (nobody verified them), or opaque (read
// only, from a read-class SA).
type flowKind uint8

const (
	kindVerified flowKind = iota
	kindPlain
	kindOpaque
)

// flow is the per-connection state: plain data.
type flow struct {
	key         flowKey
	kind        flowKind
	down, up    half // down: wire → radio sender; up: radio → wire sender
	established bool
	split       bool // split mode (else snoop)
	opaque      bool // snoop on packets it may not change (read class): resend them exactly
	initiator   Side // who sent the first SYN
	tpl         [2]ipTemplate
	tsv         [2]uint32 // latest TSval seen in the handshake, by side
	hsWin       [2]int    // last window each side sent in the handshake, bytes
	sp          *splitFlow

	// snoop state for the wire → radio direction
	cache        []seg // unacknowledged segments toward the radio, by seq
	cacheBytes   int
	sndMax       seqnum.Value // highest end forwarded toward the radio
	lastAck      seqnum.Value // highest ACK from the radio side
	ackValid     bool
	wireAck      seqnum.Value // the latest ACK from the wire side (its RCV.NXT for the radio's bytes)
	wireAckValid bool
	rstAt        time.Time // an RST that did not match was seen; cleared by the next packet
	challenge    time.Time // the last challenge ACK sent (split)
	dupacks      int
	expectDup    int // dupacks to swallow after a local retransmission
	// recovery: a local repair is under way until the radio side ACKs
	// recover (sndMax when it started); ACKs below it are partial and
	// point at the next hole (RFC 6582, applied to the local cache).
	inRecovery bool
	recover    seqnum.Value
	lastWindow uint16

	// radio-leg RTT estimator (RFC 6298) from the engine's own timing
	srtt, rttvar time.Duration
	rto          time.Duration
	timerArmed   bool
	timerAt      time.Time   // when the armed local timer is due
	stimer       netem.Timer // created once, re-armed with Reset
	cacheBuf     []seg       // the array cache lives in, from its start
	lastSeen     time.Time

	// counters
	localRexmits, timeoutRexmits, suppressed uint64
	ackDeferred                              bool // in its shard's deferred list (Input.More)
}
