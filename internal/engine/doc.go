// Package engine is espep's TCP performance-enhancing engine: it works on
// cleartext IP packets between a wire side and a radio side, one packet in,
// packets out, in the endpoints' own sequence space (it never translates
// sequence numbers). The gateway hands it what it decrypted and seals what
// it emits; the engine knows nothing of IPsec.
//
// This version implements snoop mode (Balakrishnan et al., "Improving
// reliable transport and handoff performance in cellular wireless
// networks", 1995): no early ACKs; the engine caches the segments it
// forwards toward the radio, resends them itself on duplicate ACKs from the
// radio side or on a local timeout, and — on flows without SACK — suppresses
// the duplicate ACKs it has answered, so that the wired sender does not
// mistake radio loss for congestion. On SACK flows the duplicates go on by
// default (the sender learns of the loss from the SACK blocks anyway, and
// needs its ACK clock); Config.DupAcks changes that. Split mode (early ACKs,
// its own sender) is not here yet.
//
// Flows are tracked from their SYN; a flow first seen mid-stream is relayed
// untouched. Per-flow state is plain data so that it can later be exported
// to another gateway.
package engine
