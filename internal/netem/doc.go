// Package netem emulates network links in user space: the kernel on espep's
// machines has no netem qdisc, and espep's claims are about lossy, delayed,
// rate-limited radio links. A Link carries whole packets one way with any
// combination of rate, propagation delay and jitter, a drop-tail queue,
// random (Bernoulli) and bursty (Gilbert-Elliott) loss, reordering,
// duplication, corruption, an MTU and an outage schedule. A Pair is two
// Links, one each way.
//
// Links are deterministic for a given seed and clock: the Clock interface
// lets a test run them under testing/synctest or a simulated clock, so a
// simulated minute takes well under a second. Every link counts what it was
// offered, delivered and dropped (by cause), and can write what it delivers
// to a pcap file.
//
// netem moves bytes and knows nothing of IP beyond what it is told; `espep
// linkem` (package linkem) puts Links between two network interfaces.
package netem
