/*
 * js_sink.h - sink = jetstream: each accepted message is published to a
 * NATS JetStream stream, and its 250 goes out only once the stream has
 * acknowledged it (with replicas = 3: a quorum stored it). Implements the
 * sink interface (sink.h). Operator documentation: docs/jetstream.md.
 *
 * Integration with the worker (engine/runtime/worker.c), like the spool's:
 *  - js_open() on the worker thread after its ring exists. It starts the
 *    worker's publisher thread, which owns the NATS connection; the
 *    connection is made there, in the background, so a cluster that is
 *    down delays nothing but the 250s (they become 451 4.3.0).
 *  - The worker never calls libnats and never takes a lock: it hands a
 *    committed message to its publisher through a single-producer ring
 *    and wakes it with an eventfd write through its own io_uring; the
 *    acknowledgements come back on a lock-free list and an eventfd that
 *    the worker reads through its ring (OP_JETSTREAM CQEs, js_on_cqe()).
 *  - js_poll() once per loop iteration, before submitting (the wake-up).
 *  - js_idle() for the drain; js_close() at exit.
 *
 * Ownership: a transaction slot belongs to the worker from tx_open until
 * tx_commit, to the publisher and libnats from then until its result is on
 * the done list, and to the worker again from then on. Its staging buffers
 * are never touched by two threads at a time.
 */
#ifndef RINGMX_JS_SINK_H
#define RINGMX_JS_SINK_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "qid.h"
#include "ringmx/sink.h"
#include "ringmx/stats.h"

struct config;
struct js_sink;

struct js_env {
	unsigned worker;
	struct io_uring *ring;
	struct io_uring_sqe *(*get_sqe)(void *ctx);
	void *ctx;
	unsigned ud_op; /* the worker's OP_JETSTREAM */
	struct qid_gen *qid;
	struct ringmx_stats *stats;
	const uint64_t *now; /* the worker's monotonic clock, ns */
	const int64_t *wall; /* the worker's time(NULL) */
};

/* 0, or -errno with err set (nothing started). */
int js_open(struct js_sink **out, const struct config *cfg, const struct js_env *env, char *err,
            size_t errlen);
void js_sink(struct js_sink *js, struct sink *out);
void js_on_cqe(struct js_sink *js, struct io_uring_cqe *cqe);
void js_poll(struct js_sink *js);
/* No message is with the publisher or libnats. */
bool js_idle(const struct js_sink *js);
/* Stops the publisher and closes the connection; js_idle() first. */
void js_close(struct js_sink *js);
/* main, at exit: libnats' global threads and memory. */
void js_library_fini(void);

#endif
