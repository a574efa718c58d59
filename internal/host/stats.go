package host

import (
	"sync/atomic"

	"github.com/espep/espep/internal/ctable"
)

// Stats are the host's counters: one field per row of counterTable,
// which gives each its meaning, its word in the CLI's summary and its
// label in espep_host_packets_total.
type Stats struct {
	TunIn, Sealed, Bypassed, Discarded, SealErrors  uint64
	AwaitingSA                                      uint64
	NetIn, Opened, OpenErrors, PolicyDrops, NotOurs uint64
	IKE, Keepalives, TunWriteErrors, SendErrors     uint64
	SoftExpired, HardExpired                        uint64
	NetReads, NetSends, TunWrites                   uint64
}

type counter uint8

const (
	cTunIn counter = iota
	cSealed
	cBypassed
	cDiscarded
	cSealErrors
	cAwaitingSA
	cNetIn
	cOpened
	cOpenErrors
	cPolicyDrops
	cNotOurs
	cIKE
	cKeepalives
	cTunWriteErrors
	cSendErrors
	cSoftExpired
	cHardExpired
	cNetReads
	cNetSends
	cTunWrites
	numCounters
)

const packetsHelp = "Packets and events by what espep host did with them."

func event(field, name, label string) ctable.Def {
	return ctable.Def{Field: field, Name: name, Family: "packets_total", LabelName: "event", Label: label, Help: packetsHelp}
}

// counterTable is the host's counters, in the summary's order.
var counterTable = [numCounters]ctable.Def{
	cTunIn:          event("TunIn", "tun-in", "tun_in"),
	cSealed:         event("Sealed", "sealed", "sealed"),
	cBypassed:       event("Bypassed", "bypassed", "bypassed"),
	cDiscarded:      event("Discarded", "discarded", "discarded"),
	cSealErrors:     event("SealErrors", "seal-errors", "seal_error"),
	cAwaitingSA:     event("AwaitingSA", "awaiting-sa", "awaiting_sa"),
	cNetIn:          event("NetIn", "net-in", "net_in"),
	cOpened:         event("Opened", "opened", "opened"),
	cOpenErrors:     event("OpenErrors", "open-errors", "open_error"),
	cPolicyDrops:    event("PolicyDrops", "policy-drops", "policy_drop"),
	cNotOurs:        event("NotOurs", "not-ours", "not_ours"),
	cIKE:            event("IKE", "ike", "ike"),
	cKeepalives:     event("Keepalives", "keepalives", "keepalive"),
	cTunWriteErrors: event("TunWriteErrors", "tun-write-errors", "tun_write_error"),
	cSendErrors:     event("SendErrors", "send-errors", "send_error"),
	cSoftExpired:    event("SoftExpired", "soft-expired", "sa_soft_expired"),
	cHardExpired:    event("HardExpired", "hard-expired", "sa_hard_expired"),
	// The system calls that moved packets: packets over calls is how
	// well the link batches (Linux: a run of ESP in UDP is one send, the
	// packets one round of reads opened are one TUN write).
	cNetReads:  call("NetReads", "net-reads", "net_read"),
	cNetSends:  call("NetSends", "net-sends", "net_send"),
	cTunWrites: call("TunWrites", "tun-writes", "tun_write"),
}

func call(field, name, label string) ctable.Def {
	return ctable.Def{Field: field, Name: name, Family: "syscalls_total", LabelName: "call", Label: label,
		Help: "System calls espep host made to move packets: reads from and sends to the network, writes into the TUN."}
}

// CounterTable returns the host's counter table.
func CounterTable() []ctable.Def { return counterTable[:] }

// counters are the values (the host is not sharded: one set).
type counters [numCounters]atomic.Uint64

func (c *counters) add(k counter) { c[k].Add(1) }

// snapshot fills Stats through the table.
func (c *counters) snapshot() Stats {
	var st Stats
	ctable.Fill(counterTable[:], &st, func(i int) uint64 { return c[i].Load() })
	return st
}

// Summary is the CLI's one-line summary of the counters.
func (s Stats) Summary() string { return ctable.Line(CounterTable(), s) }
