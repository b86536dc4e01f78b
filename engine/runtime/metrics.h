/*
 * metrics.h - what the Prometheus endpoint (metrics_listen) shows, how the
 * workers publish it and how a scrape reads it. docs/operations.md lists
 * every series.
 *
 * The workers' counters (stats.h) have one writer each and no atomics; a
 * scrape must not read them while they change. So each worker copies its
 * counters, histograms and gauges into its struct metrics_pub under a
 * sequence lock, at most every METRICS_PUBLISH_NS (and within that time of
 * any change): a copy of a few KiB, never per message. A reader copies the
 * snapshot out and retries while the sequence is odd or moved.
 *
 * beat is the worker's liveness: the monotonic time of its last loop
 * iteration. Every loop waits at most a second, so a worker whose beat is
 * older than METRICS_STALL_NS is stuck (a blocking call, a spin): /healthz
 * answers 503 and the systemd watchdog is not fed.
 *
 * Ownership: a worker owns its struct metrics_pub (writer); the metrics
 * thread and the main thread only read it. metrics_render() is pure: the
 * snapshots in, text out.
 */
#ifndef RINGMX_METRICS_H
#define RINGMX_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relay.h"
#include "ringmx/config.h"
#include "ringmx/stats.h"

#define METRICS_PUBLISH_NS 250000000ull  /* snapshot age bound while a worker is busy */
#define METRICS_STALL_NS   5000000000ull /* no loop iteration for this long: stalled */

struct metrics_snap {
	struct ringmx_stats stats;
	uint32_t open[CONFIG_MAX_LISTENERS]; /* open connections per listener */
	uint32_t active, nconns;             /* all of them; the pool's size */
	bool relay;                          /* rg is valid */
	struct relay_gauges rg;
};

struct metrics_pub {
	_Atomic uint64_t beat; /* monotonic ns of the last loop iteration */
	_Atomic uint32_t seq;  /* odd while the worker writes snap */
	struct metrics_snap snap;
} __attribute__((aligned(64)));

/* Writer side: begin, fill p->snap in place, end. */
void metrics_write_begin(struct metrics_pub *p);
void metrics_write_end(struct metrics_pub *p);
/* Reader side: a consistent copy of p->snap. false if the writer kept
 * writing through every retry (then out holds the last torn copy). */
bool metrics_read(struct metrics_pub *p, struct metrics_snap *out);

/* What a scrape shows besides the workers' snapshots. */
struct metrics_global {
	unsigned nworkers;
	const char *listener[CONFIG_MAX_LISTENERS]; /* "127.0.0.1:25", as configured */
	size_t nlisteners;
	uint32_t clients_used, clients_slots; /* the per-client table */
	int64_t wall_us;                      /* now, for the oldest message's age */
	const uint64_t *beat_age_ns;          /* per worker: now - beat */
	const char *version;
};

/* Render the text exposition format (version 0.0.4) into buf. Returns the
 * length it needs: when that is >= cap, nothing usable is in buf and the
 * caller retries with a larger one. */
size_t metrics_render(const struct metrics_global *g, const struct metrics_snap *snaps, char *buf,
                      size_t cap);

#endif
