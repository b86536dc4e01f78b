/*
 * spool.h - the durable spool: per-worker append-only segments with group
 * commit. Implements the sink interface (sink.h); "250" is released only
 * when the batch holding the message is on stable storage.
 *
 * Integration with the worker (engine/runtime/worker.c):
 *  - spool_open() runs on the worker thread after its ring exists; it
 *    recovers the worker's segments (verify, truncate a torn tail, log).
 *  - All I/O goes through the worker's ring. The spool takes SQEs with
 *    get_sqe(ctx) and tags them with ud_make(ud_op, 0, kind, idx) (ud.h;
 *    the worker passes ud_op = OP_SPOOL); the worker hands
 *    every OP_SPOOL CQE to spool_on_cqe().
 *  - Once per loop iteration, before submitting, the worker calls
 *    spool_poll(now): the spool closes a batch that is big or old enough
 *    and submits its writes, or its fsync when the writes are in.
 *  - spool_wait_ns() bounds how long the loop may sleep (the batch delay).
 *  - Verdicts go out through the callback given at open (the engine routes
 *    them to smtp_session_verdict via the transaction's owner pointer).
 *  - spool_set_conf() on reload (commit_delay and commit_size follow it;
 *    the other spool keys need a restart, see config_check_reload()).
 *  - spool_close() at exit, once spool_idle(): closes the segment files.
 *
 * Ownership: one spool per worker, used only by that worker's thread. The
 * memory of a transaction's staged bytes belongs to the spool from tx_open
 * until its verdict is delivered or it is aborted.
 */
#ifndef RINGMX_SPOOL_H
#define RINGMX_SPOOL_H

#include <liburing.h>
#include <stdint.h>

#include "qid.h"
#include "ringmx/sink.h"
#include "ringmx/stats.h"

struct spool;
struct config;

struct spool_env {
	unsigned worker;
	struct io_uring *ring;
	/* An SQE from the worker's ring (submits first when the SQ is full). */
	struct io_uring_sqe *(*get_sqe)(void *ctx);
	void *ctx;
	unsigned ud_op; /* the op of spool SQEs' user_data (ud.h) */
	struct qid_gen *qid;
	struct ringmx_stats *stats;
};

/* What the relay (relay.h) hears from the spool. All optional (NULL). */
struct spool_hooks {
	void *ctx;
	/* The record at off in segment seq (of this worker) is durable: its
	 * 250 is being given. */
	void (*durable)(void *ctx, uint64_t seq, uint64_t off, uint64_t rec_len);
	/* Segment seq will never be written again and its file is closed. */
	void (*seg_closed)(void *ctx, uint64_t seq);
	/* May a client transaction start? 0 or -errno for tx_open (-ENOSPC,
	 * -EBUSY). Not asked for transactions opened while in_internal is set
	 * (bounces). */
	int (*admit)(void *ctx);
};
void spool_set_hooks(struct spool *sp, const struct spool_hooks *hooks);
/* The sequence number of the first segment this run uses: every older one
 * of this worker's directory is closed. */
uint64_t spool_first_seq(const struct spool *sp);
/* The next tx_open is the relay's own (a bounce): no admission check. */
void spool_internal_next(struct spool *sp);

/* Returns 0 or -errno; on error err holds one line for the operator.
 * Creates spool_dir (mode 0700, with parents) and spool_dir/w<N>, recovers
 * the worker's segments and opens a new one. */
int spool_open(struct spool **out, const struct config *cfg, const struct spool_env *env,
	       char *err, size_t errlen);
void spool_set_conf(struct spool *sp, const struct config *cfg);
void spool_sink(struct spool *sp, struct sink *out);
void spool_on_cqe(struct spool *sp, struct io_uring_cqe *cqe);
void spool_poll(struct spool *sp, uint64_t now_ns);
uint64_t spool_wait_ns(const struct spool *sp, uint64_t now_ns, uint64_t max_ns);
/* Nothing in flight and nothing staged (the worker may exit). Zero-filling
 * of the next segment may still be in flight: it is not waited for, and
 * spool_close() leaves what it needs in place (see there). */
int spool_idle(const struct spool *sp);
void spool_close(struct spool *sp);
/* mkdir -p, mode 0700 for what it creates. 0 or -errno. */
int spool_mkdir_p(const char *path);

#endif
