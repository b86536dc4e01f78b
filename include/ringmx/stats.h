/*
 * stats.h - per-worker counters. Each worker owns one struct and is its only
 * writer (no atomics on the hot path); readers sum the workers' copies and
 * accept a slightly stale total. Every limit the engine enforces has a
 * counter here, so a refusal is never silent.
 */
#ifndef RINGMX_STATS_H
#define RINGMX_STATS_H

#include <stdint.h>

/* X(name, help) - one line per counter, used for the struct, the dump and docs. */
#define RINGMX_STATS(X)                                                                            \
	X(connections_accepted, "connections accepted")                                            \
	X(connections_refused, "connections refused at max_connections")                           \
	X(accept_errors, "accept failures (EMFILE, ENFILE, ENOMEM): clients wait in the backlog")   \
	X(connections_closed, "connections closed")                                                \
	X(commands, "SMTP commands processed")                                                     \
	X(messages_accepted, "messages answered 250")                                              \
	X(messages_rejected, "messages refused at end of data")                                    \
	X(bytes_received, "octets received from clients")                                          \
	X(message_bytes, "message octets handed to the sink")                                      \
	X(rcpt_accepted, "recipients accepted")                                                    \
	X(rcpt_relay_denied, "recipients refused: relay access denied")                            \
	X(rcpt_unknown, "recipients refused: no recipient_maps entry (550 5.1.1 User unknown)")   \
	X(rcpt_limit, "recipients refused: recipient_limit or envelope size")                                    \
	X(size_limit, "messages refused: message_size_limit")                                      \
	X(hop_limit, "messages refused: more Received: fields than hop_count_limit (mail loop)")  \
	X(line_too_long, "command lines over the limit")                                           \
	X(long_lines, "body lines over 1000 octets (accepted)")                                    \
	X(bare_lf, "bare LF seen (commands or content)")                                           \
	X(bare_cr, "bare CR seen (commands or content)")                                           \
	X(syntax_errors, "500/501/555 replies")                                                    \
	X(sequence_errors, "503 replies")                                                          \
	X(sync_errors, "pipelining synchronization errors")                                        \
	X(error_limit, "sessions closed at error_limit")                                           \
	X(junk_limit, "sessions closed at junk_limit")                                             \
	X(timeouts, "sessions closed by a timeout")                                                \
	X(sink_errors, "transactions failed by the sink")                                          \
	X(recv_enobufs, "multishot recv stopped for lack of buffers")                              \
	X(recv_rearms, "multishot recv re-armed")                                                  \
	X(recv_held, "receive buffers held while a session was paused")                            \
	X(recv_hold_cutoffs, "connections cut off: unread input past CONN_HOLD_HARD receive buffers, replies not read") \
	X(recv_compactions, "held input packed into fewer receive buffers (past CONN_HOLD_MAX)") \
	X(recv_stall_cutoffs, "connections cut off: held receive buffers others waited for, replies not read") \
	X(send_timeouts, "connections cut off: replies not read within send_timeout")              \
	X(sends, "send operations")                                                                \
	X(spool_messages, "messages made durable by the spool (or written, durability=none)")     \
	X(spool_batches, "spool batches written")                                                  \
	X(spool_writes, "spool write operations (writev SQEs)")                                    \
	X(spool_short_writes, "spool writes that completed short and were resubmitted")            \
	X(spool_fsyncs, "spool fdatasync operations")                                              \
	X(spool_fsync_us, "microseconds spool fdatasyncs were in flight (sum)")                    \
	X(spool_bytes_written, "octets written to spool segments")                                 \
	X(spool_write_errors, "spool batches failed by a write or fsync error (451)")              \
	X(spool_enospc, "spool refusals for lack of disk space (452)")                             \
	X(spool_memory_full, "messages refused at spool_memory (451)")                             \
	X(spool_share_refused, "MAIL refused: SIZE= past the large messages' share (452)")         \
	X(spool_share_full, "large messages failed at their share of spool_memory (451)")          \
	X(spool_segments, "spool segments created")                                                \
	X(spool_segments_prezeroed, "spool segments started pre-zeroed (zero-filled ahead of need)") \
	X(spool_segments_unzeroed, "spool segments started fallocated, not pre-zeroed (none ready in time, oversized record, durability=none)") \
	X(spool_prezero_errors, "spool segments whose zero-filling failed (fallocate used instead)") \
	X(proxy_headers_v1, "PROXY v1 headers accepted")                                           \
	X(proxy_headers_v2, "PROXY v2 headers accepted (LOCAL included)")                          \
	X(proxy_local, "PROXY v2 LOCAL headers (real peer kept)")                                  \
	X(proxy_bad, "connections dropped: malformed, oversized or missing PROXY header")         \
	X(proxy_timeout, "connections dropped: PROXY header not complete within proxy_timeout (also in proxy_bad)") \
	X(proxy_untrusted, "connections dropped: PROXY listener, peer not in proxy_trusted")      \
	X(tls_handshakes, "TLS handshakes completed (STARTTLS and implicit)")                      \
	X(tls_handshake_failures, "TLS handshakes failed (error, timeout or client gone)")        \
	X(tls_handshake_timeouts, "TLS handshakes cut off at handshake_timeout")                   \
	X(tls_resumed, "TLS handshakes that resumed a session (ticket)")                           \
	X(tls_errors, "TLS errors after the handshake (bad record, alert)")                        \
	X(starttls_injection_discarded, "plaintext pipelined after STARTTLS, discarded (CVE-2011-0411)") \
	X(tls_ctx_reloads, "certificate sets rebuilt by this worker after SIGHUP")                \
	X(relay_messages_queued, "messages handed to the relay (durable in the spool)")          \
	X(relay_messages_done, "messages finished by the relay (every recipient delivered, bounced or deleted)") \
	X(relay_attempts, "delivery attempts (one per message and next hop)")                      \
	X(relay_rcpt_sent, "recipients delivered to the next hop")                                \
	X(relay_rcpt_deferred, "recipient deliveries deferred (temporary failure, retried)")       \
	X(relay_rcpt_bounced, "recipients failed permanently (5xx, expired, no route)")            \
	X(relay_bounces, "bounces (delivery status notifications) spooled")                       \
	X(relay_connections, "outbound connections opened")                                      \
	X(relay_conn_failed, "outbound connections failed (refused, lost, timed out, bad reply)")  \
	X(relay_sends, "outbound send operations")                                               \
	X(relay_tls_handshakes, "STARTTLS handshakes completed with next hops")                     \
	X(relay_tls_failures, "STARTTLS handshakes with next hops that failed")                    \
	X(relay_journal_writes, "delivery journal writes")                                       \
	X(relay_msg_slabs, "relay message slabs allocated (1 MiB each; kept for reuse)")          \
	X(relay_msg_large, "relay messages too large for a pooled block (allocated alone)")        \
	X(relay_journal_dropped, "journal records dropped (buffer full or journal unopenable)")   \
	X(relay_segments_removed, "spool segments removed after every message was finished")      \
	X(relay_refused_high_water, "MAIL refused: backlog over spool_high_water (452)")           \
	X(relay_refused_hop_down, "MAIL refused: a next hop failing for relay_defer_after (451)")  \
	X(verify_cache_hits, "RCPT answered from the verification cache")                       \
	X(verify_probes, "verification probes sent to a next hop")                             \
	X(verify_joined, "RCPT waiting on a probe already in flight for its address")          \
	X(verify_ok, "verification results: the next hop accepted (2xx)")                      \
	X(verify_rejected, "verification results: the next hop refused (5xx, 550 5.1.1)")      \
	X(verify_tempfail, "verification results: 4xx, timeout or hop down (450 4.1.1)")       \
	X(verify_busy, "RCPT refused: verify_probes_max probes in flight (450 4.1.1)")         \
	X(verify_evicted, "verification cache entries evicted to make room (verify_cache_size)") \
	X(client_conn_limited, "connections refused: client_connection_limit (421)")              \
	X(client_conn_rate_limited, "connections refused: client_connection_rate_limit (421)")    \
	X(client_msg_rate_limited, "MAIL refused: client_message_rate_limit (452)")               \
	X(client_rcpt_rate_limited, "RCPT refused: client_recipient_rate_limit (452)")            \
	X(client_tls_rate_limited, "TLS handshakes refused: client_tls_handshake_rate_limit (421, or closed on implicit TLS)") \
	X(client_table_full, "clients not tracked, so not limited: no free slot among their 8 in the client table (or 4 lost races for one)") \
	X(screen_access_ok, "connections allowed by client_access OK (not screened, not rate limited)") \
	X(screen_access_reject, "connections refused by client_access REJECT (554)") \
	X(screen_greet_waits, "connections given the 220- greet pause (greet_wait)") \
	X(screen_pregreet, "pregreet talkers: input before the whole greeting") \
	X(screen_dnsbl_listed, "clients at or over dnsbl_threshold") \
	X(screen_dnsbl_timeouts, "DNSBL sites not answered by dnsbl_timeout (counted as not listed)") \
	X(screen_pass_new, "clients that passed every test, added to the pass cache") \
	X(screen_pass_old, "clients found in the pass cache (not tested again)") \
	X(screen_dropped, "connections closed with 521 (greet_action or dnsbl_action drop)") \
	X(screen_overload, "clients not DNSBL-tested: no DNS request state free (fail open)") \
	X(dns_queries, "DNS queries sent (answer cache misses)") \
	X(dns_cache_hits, "DNS lookups answered from the answer cache") \
	X(dns_nxdomain, "DNS answers: NXDOMAIN") \
	X(dns_errors, "DNS failures: SERVFAIL, REFUSED, no answer in time, no socket") \
	X(dns_overload, "DNS lookups refused: every cache entry of the name's window waiting for an answer") \
	X(milter_conversations, "milter conversations started (one per milter and connection)") \
	X(milter_no_slot, "milter conversations not started: milter_conversation_limit reached") \
	X(milter_failures, "milter conversations failed: unreachable, closed, broken protocol (default action)") \
	X(milter_timeouts, "milter replies not in by milter_*_timeout (counted in milter_failures too)") \
	X(milter_accepts, "milter verdicts accept (no more calls for that message or connection)") \
	X(milter_rejects, "milter verdicts reject or a 5xx reply code") \
	X(milter_tempfails, "milter verdicts tempfail or a 4xx reply code") \
	X(milter_discards, "messages discarded by a milter (250, not spooled)") \
	X(milter_changes, "message changes a milter made: headers, body, sender, recipients") \
	X(jetstream_published, "messages the JetStream stream acknowledged (250 sent)") \
	X(jetstream_duplicates, "of those, acknowledged as duplicates: stored once already (Nats-Msg-Id)") \
	X(jetstream_retries, "publish attempts after the first (a lost acknowledgement, a leader change)") \
	X(jetstream_timeouts, "messages not acknowledged within jetstream_timeout (451 4.3.0)") \
	X(jetstream_errors, "messages the stream refused or could not be reached for (451 4.3.0)") \
	X(jetstream_busy, "MAIL refused: jetstream_max_pending publishes in flight (451 4.3.0)") \
	X(loop_iterations, "event loop iterations")

/*
 * Histograms, for the Prometheus endpoint (engine/runtime/metrics.c). Each
 * observation is one comparison per bucket bound and two additions, by the
 * worker that owns the struct, like the counters. Bounds are fixed at build
 * time (a scrape must be comparable across restarts and workers):
 *   RINGMX_HB_TIME   microseconds, 50 us .. 60 s (exposed in seconds)
 *   RINGMX_HB_COUNT  1 .. 1024 (a count: messages per batch)
 * X(name, kind, help)
 */
#define RINGMX_HISTS(X)                                                                            \
	X(eod_reply, RINGMX_HB_TIME, "end of data to the final reply (250 or refusal), seconds")  \
	X(spool_fdatasync, RINGMX_HB_TIME, "spool fdatasync, queued to completion, seconds")     \
	X(spool_batch, RINGMX_HB_COUNT, "messages per spool group commit (batch)")               \
	X(tls_handshake, RINGMX_HB_TIME, "inbound TLS handshake, first flight to done, seconds")   \
	X(relay_delivery, RINGMX_HB_TIME,                                                          \
	  "one delivery transaction at the next hop, MAIL to its last reply, seconds")

enum ringmx_hist_kind { RINGMX_HB_TIME, RINGMX_HB_COUNT };

#define RINGMX_HIST_BUCKETS 20 /* bounds of the longest kind, plus +Inf */

static const uint64_t ringmx_hb_time[] = {50,      100,     250,     500,      1000,     2500,
					  5000,    10000,   25000,   50000,    100000,   250000,
					  500000,  1000000, 2500000, 5000000,  10000000, 30000000,
					  60000000};
static const uint64_t ringmx_hb_count[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

struct ringmx_hist {
	uint64_t bucket[RINGMX_HIST_BUCKETS]; /* not cumulative; [nbounds] is +Inf */
	uint64_t sum;                         /* microseconds, or the counted units */
	uint64_t count;
};

/* The bounds of a kind, ascending; *n is their number (< RINGMX_HIST_BUCKETS). */
static inline const uint64_t *
ringmx_hist_bounds(enum ringmx_hist_kind kind, unsigned *n)
{
	if (kind == RINGMX_HB_COUNT) {
		*n = sizeof(ringmx_hb_count) / sizeof(ringmx_hb_count[0]);
		return ringmx_hb_count;
	}
	*n = sizeof(ringmx_hb_time) / sizeof(ringmx_hb_time[0]);
	return ringmx_hb_time;
}

static inline void
ringmx_hist_observe(struct ringmx_hist *h, enum ringmx_hist_kind kind, uint64_t v)
{
	unsigned n, i = 0;
	const uint64_t *b = ringmx_hist_bounds(kind, &n);
	while (i < n && v > b[i])
		i++;
	h->bucket[i]++;
	h->sum += v;
	h->count++;
}

struct ringmx_hists {
#define RINGMX_HIST_FIELD(name, kind, help) struct ringmx_hist name;
	RINGMX_HISTS(RINGMX_HIST_FIELD)
#undef RINGMX_HIST_FIELD
};

/* Each histogram's kind by name, so a call site cannot mix them up. */
enum {
#define RINGMX_HIST_KIND(name, kind, help) RINGMX_HK_##name = kind,
	RINGMX_HISTS(RINGMX_HIST_KIND)
#undef RINGMX_HIST_KIND
};
#define RINGMX_HIST_OBSERVE(stats, name, v)                                                        \
	ringmx_hist_observe(&(stats)->hist.name, (enum ringmx_hist_kind)RINGMX_HK_##name, v)

struct ringmx_stats {
#define RINGMX_STATS_FIELD(name, help) uint64_t name;
	RINGMX_STATS(RINGMX_STATS_FIELD)
#undef RINGMX_STATS_FIELD
	struct ringmx_hists hist; /* not in RINGMX_STATS: summed and dumped apart */
} __attribute__((aligned(64)));

#endif
