/*
 * milter_io.h - content filtering through milters (docs/milter.md) on the
 * worker's ring: the conversations (sockets, sends, receives, timeouts)
 * around the pure protocol core (milter.h), the MAIL/RCPT checks, and a
 * sink in front of the worker's sink that holds each message until every
 * milter has seen it, applies their changes and only then hands it on.
 *
 * The connection drives it: mf_conn_open() at connect starts one
 * conversation per configured milter (connect, option negotiation, the
 * connect stage run while the session greets); mf_check() is asked after
 * the policy at MAIL and RCPT (HELO goes out before MAIL); the session's
 * transactions go through mf_sink(); mf_conn_close() at teardown.
 *
 * Ownership rules
 *  - struct mf_pool belongs to one worker. Its conversations (struct
 *    mf_slot) are sized at start-up (milter_conversation_limit) and mapped
 *    once; a slot belongs to one connection from mf_conn_open() until
 *    mf_conn_close(), and then to the kernel until its last CQE.
 *  - struct mf_conn is the pool's, one per connection slot, lent to the
 *    connection from mf_conn_open() to mf_conn_close(). A message being filtered (the
 *    sink's transaction, struct mf_msg) is the connection's from tx_open
 *    until its verdict is delivered or it is aborted; its staging buffers
 *    come from the pool and go back to it.
 */
#ifndef RINGMX_MILTER_IO_H
#define RINGMX_MILTER_IO_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "ringmx/config.h"
#include "ringmx/sink.h"
#include "ringmx/smtp.h"

struct ringmx_stats;
struct mf_pool;
struct mf_slot;
struct mf_msg;
struct mf_conn;

struct mf_env {
	struct io_uring *ring;
	struct io_uring_sqe *(*get_sqe)(void *ctx);
	void *ctx;
	unsigned ud_op;
	struct ringmx_stats *stats;
	const uint64_t *now;      /* the worker's monotonic clock, ns */
	const struct sink *inner; /* where filtered messages go */
	uint64_t memory_cap;      /* staged bytes per worker (spool_memory) */
};

/* What a connection tells its milters, and how it hears back. */
struct mf_conn_ops {
	/* A pending mf_check() is answered (as smtp_session_check_done). */
	void (*check_done)(struct mf_conn *mc, int res, const struct smtp_check_reply *r);
	/* The message's verdict: res as for sink_waiter, or r (not NULL) for
	 * a reply of the milters' own. */
	void (*verdict)(struct mf_conn *mc, int res, const struct smtp_check_reply *r);
	/* Something changed the connection's deadline (mf_deadline()). */
	void (*timer)(struct mf_conn *mc);
};

struct mf_conn {
	struct mf_pool *pool;
	void *owner; /* the connection */
	const struct mf_conn_ops *ops;
	const struct smtp_session *session; /* read: helo, qid, tls */
	const struct smtp_peer *peer;
	struct mf_slot *slot[CONFIG_MILTERS_MAX];
	uint8_t n;
	uint8_t default_action;
	uint64_t t_connect, t_command, t_content; /* timeouts, ns (from the config at connect) */
	/* Every later MAIL gets this (a connect verdict, or a milter that
	 * failed with milter_default_action = tempfail | reject). */
	bool denied;
	struct smtp_check_reply deny;
	/* The check in flight (mf_check) */
	bool check_pending;
	uint8_t check_what; /* enum smtp_check_point */
	uint32_t check_seq;
	char check_addr[SMTP_PATH_MAX + 3];
	bool check_sync; /* inside mf_check(): the answer is returned, not called back */
	int check_res;
	struct smtp_check_reply check_reply;
	bool tx_discard;           /* a MAIL/RCPT verdict said discard */
	struct sink_waiter waiter; /* what the session's sink calls use */
	struct mf_msg *msg;
};

/* slots: conversations; conns: the worker's connection slots (one
 * struct mf_conn each, mapped, touched only by connections with milters). */
int mf_pool_new(struct mf_pool **out, const struct mf_env *env, unsigned slots, unsigned conns,
                char *err, size_t errlen);
void mf_pool_free(struct mf_pool *p);
/* The sink a session with milters uses (wraps env->inner). */
const struct sink *mf_sink(struct mf_pool *p);
void mf_on_cqe(struct mf_pool *p, const struct io_uring_cqe *cqe);

/* Connect time: connection slot idx (owner: passed back in mc->owner)
 * gets one conversation per milter of cfg. */
struct mf_conn *mf_conn_open(struct mf_pool *p, uint32_t idx, void *owner,
                             const struct milters_conf *cfg, const struct mf_conn_ops *ops,
                             const struct smtp_session *s, const struct smtp_peer *peer);
/* MAIL or RCPT, after the policy said OK: SMTP_CHECK_OK, REJECT (*r) or
 * PENDING (ops->check_done answers). */
int mf_check(struct mf_conn *mc, enum smtp_check_point what, const char *addr, size_t len,
             struct smtp_check_reply *r);
/* The pending check will not be answered (session closing). */
void mf_check_cancel(struct mf_conn *mc);
/* Monotonic ns of the next milter timeout, 0 when none is due. */
uint64_t mf_deadline(const struct mf_conn *mc);
/* The connection's timer fired at or after mf_deadline(). */
void mf_expire(struct mf_conn *mc);
void mf_conn_close(struct mf_conn *mc);

#endif
