/*
 * relay.h - delivery of spooled mail to the next hop (SMTP or LMTP), per
 * worker, from the worker's own ring: the queue of undelivered messages,
 * pooled outbound connections per next hop, retries with backoff,
 * bounces, the delivery journal and backpressure. docs/relay.md is the
 * operator's view; the journal format is include/ringmx/journal_format.h.
 *
 * Integration with the worker (engine/runtime/worker.c) and the spool:
 *  - relay_open() runs on the worker thread after spool_open(): it reads
 *    the worker's closed segments (and those of workers that no longer
 *    exist, w<M> with M % workers == id) with their journals and queues
 *    what is not finished.
 *  - The spool tells the relay through its hooks (spool_set_hooks): a
 *    record became durable (relay_record_durable), a segment will never be
 *    written again (relay_seg_closed), may a new transaction start
 *    (relay_admit: backpressure).
 *  - The relay's SQEs carry ud.h's user_data with the op it is given
 *    (ud_op, OP_RELAY); the worker hands every OP_RELAY CQE to
 *    relay_on_cqe(). relay_poll() once per loop iteration (timers, new
 *    connections, journal flush); relay_wait_ns() bounds the sleep.
 *  - Bounces are spooled through the spool's sink like any message; their
 *    verdicts come back to the bounce itself (its struct sink_waiter).
 *
 * Ownership: one struct relay per worker, touched only by its thread. The
 * segments it maps and the journals it appends to belong to it once the
 * spool has closed them (or from start-up for recovered ones); it deletes
 * a segment and its journal when every message in it is finished.
 */
#ifndef RINGMX_RELAY_H
#define RINGMX_RELAY_H

#include <liburing.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ringmx/sink.h"
#include "ringmx/stats.h"
#include "smtp_client.h"

struct relay;
struct config;

struct relay_env {
	unsigned worker;
	unsigned nworkers;
	struct io_uring *ring; /* for the free SQ space before a linked pair */
	struct io_uring_sqe *(*get_sqe)(void *ctx);
	void *ctx;
	unsigned ud_op;           /* the op of the relay's user_data (ud.h) */
	const struct sink *spool; /* for bounces */
	struct spool *sp;         /* the same spool (spool_internal_next) */
	uint64_t first_seq;       /* the spool's first segment of this run: older ones are closed */
	struct ringmx_stats *stats;
};

/* Operator commands from ringmx-spool (hold, release, delete, flush),
 * published by the main thread to every worker (worker_ctl.cmds). */
enum relay_cmd_op { RELAY_CMD_HOLD = 1, RELAY_CMD_RELEASE, RELAY_CMD_DELETE, RELAY_CMD_FLUSH };
#define RELAY_CMDS_MAX 256
struct relay_cmd {
	enum relay_cmd_op op;
	char qid[SINK_QID_MAX]; /* "" with FLUSH: everything */
	atomic_uint matched;    /* messages found, summed over workers */
	atomic_uint failed;     /* of those, whose journal record could not be made durable */
};
struct relay_cmdset {
	unsigned n;
	struct relay_cmd cmd[RELAY_CMDS_MAX];
	atomic_uint acks; /* workers done with this set */
};

int relay_open(struct relay **out, const struct config *cfg, const struct relay_env *env, char *err,
               size_t errlen);
void relay_set_conf(struct relay *r, const struct config *cfg);

/* Spool hooks. */
void relay_record_durable(void *r, uint64_t seq, uint64_t off, uint64_t rec_len);
void relay_seg_closed(void *r, uint64_t seq);
/* 0: accept mail; -ENOSPC: over spool_high_water (452 4.3.1); -EBUSY: the
 * next hop has been failing for relay_defer_after (451 4.3.0). */
int relay_admit(void *r);

void relay_on_cqe(struct relay *r, struct io_uring_cqe *cqe);
void relay_poll(struct relay *r, uint64_t now_ns);
uint64_t relay_wait_ns(const struct relay *r, uint64_t max_ns);


/*
 * Address verification (engine/policy/verify.c): a probe is one
 * SMTPC_TX_PROBE transaction (MAIL FROM:<>, RCPT TO:<addr>, then RSET or
 * QUIT, never DATA) to the address's own next hop (relay_route: relay_host
 * or transport_maps), on the same pooled connections the hop's deliveries
 * use, ahead of them. The probe is the caller's memory; the relay holds it
 * from relay_probe_start() until done is called (or relay_probe_cancel()
 * takes it back), and never calls done from inside relay_probe_start().
 * done gets the deciding reply: code and "enh text" ("5.1.1 <a@b> User
 * unknown"), the next hop's or the relay's own (4.4.1 connect to ...:
 * Connection refused, 4.4.2 lost connection ..., 4.3.2 shutting down).
 */
#define RELAY_PROBE_TEXT_MAX 512
struct rhop;
struct relay_probe {
	/* the caller's, set before relay_probe_start() and kept until done */
	const char *addr; /* without <> */
	size_t len;
	void (*done)(struct relay_probe *p, int code, const char *text, size_t len);
	/* the relay's */
	struct relay_probe *prev, *next; /* the hop's queue */
	struct rhop *hop;
	uint8_t state; /* 0: the caller's, 1: queued, 2: lent to a connection */
	int code;
	size_t text_len;
	struct smtpc_rcpt rc;
	struct smtpc_tx tx;
	char text[RELAY_PROBE_TEXT_MAX];
};
/* 0: queued, done comes later. -ENOENT: no next hop for the domain;
 * -EHOSTDOWN: the next hop failed lately and is not retried yet (p->text,
 * p->text_len: why); -ESHUTDOWN: draining. */
int relay_probe_start(struct relay *r, struct relay_probe *p);
/* true: taken back before it was sent (done will not come); false: it is
 * on a connection and done still comes. */
bool relay_probe_cancel(struct relay *r, struct relay_probe *p);

/* Apply a set of commands. The set is acknowledged (acks) once every
 * journal record they wrote is durable, maybe in a later iteration; until
 * then relay_cmds_busy() is true and no other set may be given. */
void relay_apply_cmds(struct relay *r, struct relay_cmdset *set);
bool relay_cmds_busy(const struct relay *r);

/* SIGTERM: no new transactions; force: close every connection now. */
void relay_drain(struct relay *r, bool force);
bool relay_idle(const struct relay *r);
/* Journal or segment operations are in the kernel (or queued for it). */
bool relay_io_pending(const struct relay *r);
/* After the ring is gone. NULL is allowed. */
void relay_close(struct relay *r);
void relay_log_backlog(const struct relay *r);

/* What the metrics endpoint shows of one worker's relay (copied by the
 * worker when it publishes; engine/runtime/metrics.c). Hops past
 * RELAY_GAUGE_HOPS are summed into other_queued. */
#define RELAY_GAUGE_HOPS 32
#define RELAY_GAUGE_NAME 128
struct relay_gauges {
	uint64_t backlog_msgs, backlog_bytes;
	uint64_t oldest_us; /* wall-clock us the oldest unfinished message was received; 0: none */
	uint32_t nhops;
	uint64_t other_queued;
	struct {
		char name[RELAY_GAUGE_NAME];
		uint32_t queued; /* deliveries waiting for a connection to this hop */
		uint32_t conns;  /* connections open or opening */
	} hop[RELAY_GAUGE_HOPS];
};
void relay_gauges(const struct relay *r, struct relay_gauges *g);

#endif
