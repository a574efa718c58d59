// Package engine is espep's TCP performance-enhancing engine: it works on
// cleartext IP packets between a wire side and a radio side, one packet in,
// packets out, in the endpoints' own sequence space (it never translates
// sequence numbers). The gateway hands it what it decrypted and seals what
// it emits; the engine knows nothing of IPsec.
//
// Flows are tracked from their SYN; the handshake passes end to end and the
// engine learns MSS, window scale, SACK-permitted and timestamps from it. A
// flow first seen mid-stream is relayed untouched. Two modes:
//
// Snoop (Balakrishnan et al., "Improving reliable transport and handoff
// performance in cellular wireless networks", 1995): no early ACKs; the
// engine caches the segments it forwards toward the radio, resends them
// itself on duplicate ACKs from the radio side or on a local timeout, and —
// on flows without SACK — suppresses the duplicate ACKs it has answered, so
// that the wired sender does not mistake radio loss for congestion. On SACK
// flows the duplicates go on by default (the sender learns of the loss from
// the SACK blocks anyway, and needs its ACK clock); Config.DupAcks changes
// that. A resent segment carries the sender's latest TSval (the receiver's
// PAWS check drops the cached one once newer segments have arrived);
// Config.SnoopOriginal resends the cached bytes as they are, as a gateway
// holding only a read-class SA must.
//
// Split (TCP-GW): once the handshake is through the engine answers for both
// endpoints. Each direction is a stream: the engine acknowledges the
// sender's in-order bytes early as a receiver does — every second segment
// or after 40 ms, and no more often than the real receiver acknowledges
// (takeData) — and the sender's FIN only once the receiver has it; it
// holds out-of-order ones and SACKs them at once, and keeps
// everything in chunked buffers (Config.BufferPerFlow per direction,
// Config.BufferTotal in all) until the receiver has acknowledged it. Its own
// sender delivers the bytes, resegmented to the receiver's MSS: an RFC 6675
// scoreboard with RACK loss detection and tail loss probes (RFC 8985; three
// duplicate ACKs and NewReno partial ACKs without SACK, a duplicate being an
// ACK whose window did not grow), the RFC 6298 estimator and RTO with
// backoff (restarted on SACK flows by any ACK that reports delivery: the
// RTO is the last resort once ACKs stop; toward the radio the backoff
// stops at 100 ms, so a fade's end is found soon, and from the second
// timeout in a row each try is one segment), zero-window probes,
// token-bucket pacing, and a pluggable congestion controller (Controller):
// CCBBR, a BBR-style model that does not take random radio loss for
// congestion (the default), or CCReno. Windows
// advertised to a sender come from the buffer and never move their right
// edge left; timestamps toward each endpoint carry the other endpoint's
// latest TSval (never decreasing, so PAWS holds) and echo the receiver's
// own; an RST is passed on at the sequence number the other end
// acknowledged last. The packets the engine builds copy the IP header
// fields of the endpoint they speak for.
//
// Per-flow state is plain data: Export and Import move a live flow — in
// split mode with every byte it acknowledged early — to another engine,
// which resumes it with no byte lost. A split flow allocates nothing per
// packet once its buffers and scoreboard have grown; an idle one gives its
// buffer back.
package engine
