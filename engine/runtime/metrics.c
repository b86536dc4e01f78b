/*
 * metrics.c - the workers' published snapshots (sequence lock) and the
 * Prometheus text exposition of them. Contract: metrics.h; the series:
 * docs/operations.md, "Metrics".
 *
 * Names: every stats.h counter is ringmx_<name>_total with a worker label,
 * except spool_fsync_us, shown in seconds as ringmx_spool_fsync_seconds_total
 * (Prometheus wants base units; promtool flags "_us").
 */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void
metrics_write_begin(struct metrics_pub *p)
{
	atomic_store_explicit(&p->seq, atomic_load_explicit(&p->seq, memory_order_relaxed) + 1,
	                      memory_order_relaxed);
	/* The odd sequence is visible before any byte of the snapshot changes. */
	atomic_thread_fence(memory_order_release);
}

void
metrics_write_end(struct metrics_pub *p)
{
	atomic_store_explicit(&p->seq, atomic_load_explicit(&p->seq, memory_order_relaxed) + 1,
	                      memory_order_release);
}

bool
metrics_read(struct metrics_pub *p, struct metrics_snap *out)
{
	/* The writer holds the lock for one copy of a few KiB, so a handful
	 * of retries is plenty; a reader never waits for a stuck worker. */
	for (int tries = 0; tries < 1000; tries++) {
		uint32_t s1 = atomic_load_explicit(&p->seq, memory_order_acquire);
		if (s1 & 1)
			continue;
		memcpy(out, &p->snap, sizeof(*out));
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&p->seq, memory_order_relaxed) == s1)
			return true;
	}
	return false;
}

/* ---- the text format ---- */

struct out {
	char *p;
	size_t len, cap;
};

static void __attribute__((format(printf, 2, 3))) put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(o->len < o->cap ? o->p + o->len : NULL,
	                  o->len < o->cap ? o->cap - o->len : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n;
}

/* A label value: backslash, double quote and newline escaped. */
static void
put_label(struct out *o, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			put(o, "\\%c", *v);
		else if (*v == '\n')
			put(o, "\\n");
		else
			put(o, "%c", *v);
	}
}

static void
family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Seconds from microseconds, exactly: no float rounding of the sums. */
static void
put_us(struct out *o, uint64_t us)
{
	put(o, "%" PRIu64 ".%06" PRIu64, us / 1000000u, us % 1000000u);
}

static void
counters(struct out *o, const struct metrics_global *g, const struct metrics_snap *s)
{
#define COUNTER(name, help)                                                                        \
	if (strcmp(#name, "spool_fsync_us") == 0) {                                                \
		family(o, "ringmx_spool_fsync_seconds_total", "counter",                           \
		       "seconds spool fdatasyncs were in flight (sum)");                           \
		for (unsigned w = 0; w < g->nworkers; w++) {                                       \
			put(o, "ringmx_spool_fsync_seconds_total{worker=\"%u\"} ", w);             \
			put_us(o, s[w].stats.name);                                                \
			put(o, "\n");                                                              \
		}                                                                                  \
	} else {                                                                                   \
		family(o, "ringmx_" #name "_total", "counter", help);                              \
		for (unsigned w = 0; w < g->nworkers; w++)                                         \
			put(o, "ringmx_" #name "_total{worker=\"%u\"} %" PRIu64 "\n", w,           \
			    s[w].stats.name);                                                      \
	}
	RINGMX_STATS(COUNTER)
#undef COUNTER
}

static void
hist_one(struct out *o, const char *name, unsigned w, const struct ringmx_hist *h,
         enum ringmx_hist_kind kind)
{
	unsigned n;
	const uint64_t *b = ringmx_hist_bounds(kind, &n);
	uint64_t cum = 0;

	for (unsigned i = 0; i < n; i++) {
		cum += h->bucket[i];
		put(o, "%s_bucket{worker=\"%u\",le=\"", name, w);
		if (kind == RINGMX_HB_TIME)
			put_us(o, b[i]);
		else
			put(o, "%" PRIu64, b[i]);
		put(o, "\"} %" PRIu64 "\n", cum);
	}
	cum += h->bucket[n];
	put(o, "%s_bucket{worker=\"%u\",le=\"+Inf\"} %" PRIu64 "\n", name, w, cum);
	put(o, "%s_sum{worker=\"%u\"} ", name, w);
	if (kind == RINGMX_HB_TIME)
		put_us(o, h->sum);
	else
		put(o, "%" PRIu64, h->sum);
	put(o, "\n%s_count{worker=\"%u\"} %" PRIu64 "\n", name, w, h->count);
}

static void
histograms(struct out *o, const struct metrics_global *g, const struct metrics_snap *s)
{
	/* Time histograms end in _seconds, counts in their unit. */
#define HIST(name, kind, help)                                                                     \
	{                                                                                          \
		const char *fam = kind == RINGMX_HB_TIME ? "ringmx_" #name "_seconds"              \
		                                         : "ringmx_" #name "_messages";            \
		family(o, fam, "histogram", help);                                                 \
		for (unsigned w = 0; w < g->nworkers; w++)                                         \
			hist_one(o, fam, w, &s[w].stats.hist.name, kind);                          \
	}
	RINGMX_HISTS(HIST)
#undef HIST
}

static void
gauges(struct out *o, const struct metrics_global *g, const struct metrics_snap *s)
{
	unsigned w;

	family(o, "ringmx_open_connections", "gauge", "client connections open, per listener");
	for (w = 0; w < g->nworkers; w++)
		for (size_t l = 0; l < g->nlisteners; l++) {
			put(o, "ringmx_open_connections{worker=\"%u\",listener=\"", w);
			put_label(o, g->listener[l]);
			put(o, "\"} %u\n", s[w].open[l]);
		}
	family(o, "ringmx_connection_slots", "gauge",
	       "connection slots (max_connections per worker)");
	for (w = 0; w < g->nworkers; w++)
		put(o, "ringmx_connection_slots{worker=\"%u\"} %u\n", w, s[w].nconns);

	/* The relay's series only where a relay runs (relay_host or
	 * transport_maps with the spool). */
	bool any = false;
	for (w = 0; w < g->nworkers; w++)
		any |= s[w].relay;
	if (any) {
		family(o, "ringmx_spool_backlog_messages", "gauge",
		       "messages in the spool not yet finished by the relay");
		for (w = 0; w < g->nworkers; w++)
			if (s[w].relay)
				put(o, "ringmx_spool_backlog_messages{worker=\"%u\"} %" PRIu64 "\n",
				    w, s[w].rg.backlog_msgs);
		family(o, "ringmx_spool_backlog_bytes", "gauge",
		       "octets of the messages not yet finished by the relay");
		for (w = 0; w < g->nworkers; w++)
			if (s[w].relay)
				put(o, "ringmx_spool_backlog_bytes{worker=\"%u\"} %" PRIu64 "\n", w,
				    s[w].rg.backlog_bytes);
		family(o, "ringmx_spool_oldest_message_age_seconds", "gauge",
		       "age of the oldest message not yet finished (0: none)");
		for (w = 0; w < g->nworkers; w++) {
			if (!s[w].relay)
				continue;
			uint64_t age = 0, at = s[w].rg.oldest_us;
			if (at != 0 && g->wall_us > 0 && (uint64_t)g->wall_us > at)
				age = (uint64_t)g->wall_us - at;
			put(o, "ringmx_spool_oldest_message_age_seconds{worker=\"%u\"} ", w);
			put_us(o, age);
			put(o, "\n");
		}
		family(
		    o, "ringmx_relay_queue", "gauge",
		    "deliveries waiting for a connection, per next hop (hop=\"(other)\": past the "
		    "first 32 hops)");
		for (w = 0; w < g->nworkers; w++) {
			if (!s[w].relay)
				continue;
			for (uint32_t h = 0; h < s[w].rg.nhops; h++) {
				put(o, "ringmx_relay_queue{worker=\"%u\",hop=\"", w);
				put_label(o, s[w].rg.hop[h].name);
				put(o, "\"} %u\n", s[w].rg.hop[h].queued);
			}
			if (s[w].rg.other_queued)
				put(o,
				    "ringmx_relay_queue{worker=\"%u\",hop=\"(other)\"} %" PRIu64
				    "\n",
				    w, s[w].rg.other_queued);
		}
		family(o, "ringmx_relay_connections", "gauge",
		       "outbound connections open or opening, per next hop");
		for (w = 0; w < g->nworkers; w++) {
			if (!s[w].relay)
				continue;
			for (uint32_t h = 0; h < s[w].rg.nhops; h++) {
				put(o, "ringmx_relay_connections{worker=\"%u\",hop=\"", w);
				put_label(o, s[w].rg.hop[h].name);
				put(o, "\"} %u\n", s[w].rg.hop[h].conns);
			}
		}
	}

	family(o, "ringmx_client_table_used", "gauge",
	       "per-client table slots in use (connections or counts in the current rate window)");
	put(o, "ringmx_client_table_used %u\n", g->clients_used);
	family(o, "ringmx_client_table_slots", "gauge",
	       "per-client table slots (client_table_size)");
	put(o, "ringmx_client_table_slots %u\n", g->clients_slots);

	family(
	    o, "ringmx_worker_loop_age_seconds", "gauge",
	    "time since the worker's last event loop iteration (it runs at least once a second)");
	for (w = 0; w < g->nworkers; w++) {
		put(o, "ringmx_worker_loop_age_seconds{worker=\"%u\"} ", w);
		put_us(o, g->beat_age_ns[w] / 1000u);
		put(o, "\n");
	}
	family(o, "ringmx_worker_up", "gauge",
	       "1 while the worker makes progress (loop age under 5 s), else 0 (/healthz 503)");
	for (w = 0; w < g->nworkers; w++)
		put(o, "ringmx_worker_up{worker=\"%u\"} %d\n", w,
		    g->beat_age_ns[w] < METRICS_STALL_NS ? 1 : 0);
	family(o, "ringmx_build_info", "gauge", "the running ringmxd's version");
	put(o, "ringmx_build_info{version=\"");
	put_label(o, g->version);
	put(o, "\"} 1\n");
}

size_t
metrics_render(const struct metrics_global *g, const struct metrics_snap *snaps, char *buf,
               size_t cap)
{
	struct out o = {.p = buf, .len = 0, .cap = cap};

	counters(&o, g, snaps);
	histograms(&o, g, snaps);
	gauges(&o, g, snaps);
	return o.len;
}
