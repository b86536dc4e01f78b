/*
 * metrics_http.h - the Prometheus endpoint (metrics_listen): GET /metrics
 * and GET /healthz, served by one thread with its own io_uring for every
 * scrape (no thread per request, nothing on the workers' rings). It reads
 * the workers' published snapshots (metrics.h), never their live state.
 *
 * Ownership: main creates the server after binding its socket (as root,
 * before privileges are dropped) and joins it after the workers stopped.
 * The server owns its connections and their buffers; it reads ws[] (the
 * pub blocks only) and the shared per-client table.
 */
#ifndef RINGMX_METRICS_HTTP_H
#define RINGMX_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct worker;
struct config;
struct client_table;

#define METRICS_CONNS_MAX       16             /* scrapes at once; more wait in the backlog */
#define METRICS_CONN_TIMEOUT_NS 10000000000ull /* a request head must arrive within this */

struct metrics_server;

/* Bind cfg->metrics_listen. 0, or -errno with err set. */
int metrics_bind(struct metrics_server **out, const struct config *cfg, char *err, size_t errlen);
/* Start serving: ws[0..n) must be running. 0 or -errno. */
int metrics_start(struct metrics_server *m, struct worker *ws, unsigned n,
                  struct client_table *clients);
/* Stop and free. NULL is allowed. */
void metrics_stop(struct metrics_server *m);

/* Every worker made progress within METRICS_STALL_NS: -1. Else the first
 * worker that did not (for /healthz, the watchdog and their logs). */
int metrics_stalled_worker(struct worker *ws, unsigned n, uint64_t now_ns);

#endif
