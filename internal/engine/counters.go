package engine

import "github.com/espep/espep/internal/ctable"

// CounterTable is the engine's counters and gauges: every numeric field
// of Stats, with its word in the CLI's summary and its Prometheus family
// (to be prefixed by the component that exports them, "…_engine_"). The
// RTT summaries are exported by hand (they are not counters).
// TestCounterTable fails if a field has no row.
var CounterTable = []ctable.Def{
	{Field: "Packets", Name: "packets", Family: "packets_total", Help: "Packets the engine received."},
	{Field: "Relayed", Name: "relayed", Family: "relayed_total", Help: "Packets of flows the engine does not track, passed on untouched."},
	{Field: "Flows", Name: "flows", Family: "flows", Help: "TCP flows the engine tracks.", Gauge: true},
	{Field: "FlowsMax", Name: "flows-max", Family: "flows_max", Help: "The most flows one shard of the engine has tracked at once.", Gauge: true},
	{Field: "Cached", Name: "cached", Family: "cached_total", Help: "Segments snoop cached for local resends."},
	{Field: "CacheFull", Name: "cache-full", Family: "cache_full_total", Help: "Segments forwarded uncached: the cache bounds were reached."},
	{Field: "CachedBytes", Name: "cached-bytes", Family: "cached_bytes", Help: "Bytes of segments snoop holds for local resends.", Gauge: true},
	{Field: "LocalRexmits", Name: "local-rexmits", Family: "rexmits_total", LabelName: "kind", Label: "dupack", Help: "Segments the engine resent: snoop on duplicate ACKs, snoop on its timer, split's sender."},
	{Field: "TimeoutRexmits", Name: "timeout-rexmits", Family: "rexmits_total", LabelName: "kind", Label: "timeout"},
	{Field: "SplitRexmits", Name: "split-rexmits", Family: "rexmits_total", LabelName: "kind", Label: "split"},
	{Field: "SuppressedDupAcks", Name: "suppressed-dupacks", Family: "dupacks_total", LabelName: "what", Label: "suppressed", Help: "Duplicate ACKs snoop answered itself, suppressed or forwarded."},
	{Field: "ForwardedDupAcks", Name: "forwarded-dupacks", Family: "dupacks_total", LabelName: "what", Label: "forwarded"},
	{Field: "Expired", Name: "expired", Family: "expired_total", Help: "Flows the engine forgot: idle, never established, or reset."},
	{Field: "PlainRefused", Name: "plain-refused", Family: "ignored_total", LabelName: "what", Label: "plain", Help: "Segments the engine did not accept: RSTs not at the next byte, ACKs for bytes never sent, plain packets for protected flows, packets of another kind than their flow."},
	{Field: "RSTIgnored", Name: "rst-ignored", Family: "ignored_total", LabelName: "what", Label: "rst"},
	{Field: "AckIgnored", Name: "ack-ignored", Family: "ignored_total", LabelName: "what", Label: "ack"},
	{Field: "KindRelayed", Name: "kind-relayed", Family: "ignored_total", LabelName: "what", Label: "kind"},
	{Field: "ChallengeAcks", Name: "challenge-acks", Family: "challenge_acks_total", Help: "ACKs the engine sent for RSTs and ACKs it did not accept (RFC 5961)."},
	{Field: "TSRefreshed", Name: "ts-refreshed", Family: "ts_refreshed_total", Help: "Snoop resends given the sender's latest TSval (PAWS)."},
	{Field: "EarlyAcked", Name: "early-acked", Family: "early_acked_bytes_total", Help: "Bytes acknowledged early on the receivers' behalf (split)."},
	{Field: "Emitted", Name: "emitted", Family: "emitted_total", Help: "Segments split built."},
	{Field: "SplitTimeouts", Name: "split-timeouts", Family: "timeouts_total", Help: "Retransmission timeouts of the engine's sender (split)."},
	{Field: "TailProbes", Name: "tail-probes", Family: "tail_probes_total", Help: "Tail loss probes of the engine's sender (split, RFC 8985)."},
	{Field: "Probes", Name: "probes", Family: "zero_window_probes_total", Help: "Zero-window probes of the engine's sender (split)."},
	{Field: "Resets", Name: "resets", Family: "resets_total", Help: "RSTs split passed on."},
	{Field: "GaveUp", Name: "gave-up", Family: "gave_up_total", Help: "Split flows reset because their receiver stopped answering."},
	{Field: "OutOfWindow", Name: "out-of-window", Family: "out_of_window_total", Help: "Segments beyond the advertised window or the out-of-order bound (split)."},
	{Field: "TimerFires", Name: "timer-fires", Family: "timer_fires_total", Help: "Split-mode timer callbacks: the engine's own wake-ups (RTO, RACK, tail probes, pacing, delayed ACKs)."},
	{Field: "TimersLate", Name: "timers-late", Family: "timers_late_total", Help: "Split-mode timer callbacks that ran 5 ms or more after their deadline: the process did not get a CPU in time (the pacer makes up for up to 20 ms; more and a leg's rate falls)."},
	{Field: "JournalFailed", Name: "journal-failed", Family: "journal_failed_total", Help: "Journal writes that failed (split with a journal): a segment or flow refused is not taken; a failed commit makes the shard write its flows again."},
	{Field: "JournalHeld", Name: "journal-held", Family: "journal_held_total", Help: "Packets dropped because the bytes they could acknowledge were not yet in the journal (its writes failing)."},
	{Field: "JournalCheckpoints", Name: "journal-checkpoints", Family: "journal_checkpoints_total", Help: "Times an engine shard wrote its flows to a fresh journal file."},
	{Field: "CwndLimited", Name: "cwnd-limited", Family: "send_stops_total", LabelName: "why", Label: "cwnd", Help: "Times split's sender stopped with data or resends waiting: its congestion window full, the receiver's window full, or the pacer holding it."},
	{Field: "WindowLimited", Name: "window-limited", Family: "send_stops_total", LabelName: "why", Label: "window"},
	{Field: "PaceLimited", Name: "pace-limited", Family: "send_stops_total", LabelName: "why", Label: "pacing"},
	{Field: "BufferedBytes", Name: "buffered-bytes", Family: "buffered_bytes", Help: "Bytes split holds: acknowledged early, not yet by the receiver (whole chunks).", Gauge: true},
	{Field: "Requests", Name: "requests", Family: "requests_total", LabelName: "what", Label: "served", Help: "Packets asked of the engine (keep-alives, fresh ACKs): served, or refused with the queue full."},
	{Field: "RequestsRefused", Name: "requests-refused", Family: "requests_total", LabelName: "what", Label: "refused"},
}

// Summary is the CLI's one-line summary of s.
func (s Stats) Summary() string { return ctable.Line(CounterTable, s) }
