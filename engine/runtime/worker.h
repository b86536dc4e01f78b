/*
 * worker.h - one pinned thread per core, each with its own io_uring, its own
 * SO_REUSEPORT listeners, provided-buffer ring, connection pool, timer wheel,
 * sink and counters. Nothing here is shared between workers except the
 * read-only configuration, the control block the main thread writes and the
 * per-client table (policy.clients, atomics only: client_table.h).
 *
 * Layers: worker.c (ring, loop, accept, wake-ups) -> conn.c (one client
 * connection: recv/send/close, input holding, timers) -> the SMTP core
 * (smtp_session_*, no I/O) -> the sink. Calls go down; the only upward path
 * is the sink's verdict callback, routed by conn.c into the session.
 *
 * user_data: ud.h's layout (op | gen | kind | idx), op from enum op
 * below. A connection's gen changes every time its slot is reused, so a
 * CQE that arrives for a previous occupant of the slot is dropped.
 */
#ifndef RINGMX_WORKER_H
#define RINGMX_WORKER_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "bufring.h"
#include "conn.h"
#include "dns.h"
#include "log.h"
#include "metrics.h"
#include "milter_io.h"
#include "qid.h"
#include "relay.h"
#include "ringmx/config.h"
#include "ringmx/smtp.h"
#include "ringmx/stats.h"
#include "sink_discard.h"
#include "js_sink.h"
#include "spool.h"
#include "timer.h"
#include "tls.h"
#include "tls_io.h"
#include "ud.h"

enum op {
	OP_ACCEPT = 1, /* idx = listener, kind = its accept slot */
	OP_RECV,       /* idx = conn */
	OP_SEND,       /* idx = conn */
	OP_WAKE,       /* eventfd read from the main thread */
	OP_CANCEL,     /* async cancel; its result is not needed */
	OP_SPOOL,      /* spool write/fsync; kind and idx: spool.c */
	OP_RELAY,      /* outbound connections, journal; gen/kind/idx: relay */
	OP_DNS,        /* the resolver's socket polls; gen/kind/idx: dns.c */
	OP_MILTER,     /* milter conversations; gen/kind/idx: milter_io.c */
	OP_JETSTREAM,  /* the jetstream sink's eventfds; kind: js_sink.c */
	OP_CLOSE,      /* a direct descriptor's close (idx), or a refusal's 421 (kind) */
};


/* Accepts in flight per listener. Each is a single-shot accept that brings
 * its client's address (no getpeername(2) per connection), so each needs a
 * sockaddr of its own for the kernel to fill; a multishot accept would
 * write every client's address into one. About what one loop pass
 * accepts under churn: accepts submitted together for fewer waiting
 * clients all find the listener ready, and each one too many allocates
 * and frees a socket for nothing (16: 0.12 sockets per connection). */
#define ACCEPT_DEPTH 8

struct accept_slot {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	bool armed;
};

/* Written by the main thread, read by the worker after an eventfd wake. */
struct worker_ctl {
	atomic_bool stop;      /* drain and exit */
	atomic_bool dump;      /* log counters */
	_Atomic(const struct config *) next_cfg; /* reload: switch to this */
	_Atomic(const struct config *) cfg_ack;  /* the config now in use */
	/* ringmx-spool hold/release/delete/flush (engine/runtime/control.c): taken
	 * with an exchange, acknowledged in the set. */
	_Atomic(struct relay_cmdset *) cmds;
};

struct worker {
	unsigned id;
	int cpu; /* -1: not pinned */
	pthread_t thread;
	atomic_int started; /* 0 starting, 1 running, -errno failed */

	const struct config *cfg;
	struct io_uring ring;
	struct bufring br;
	uint32_t *hold_next; /* per buffer id: next held buffer of the same conn */
	uint32_t *hold_len;  /* per buffer id: bytes the kernel put there */

	int listen_fd[CONFIG_MAX_LISTENERS];
	struct accept_slot accepts[CONFIG_MAX_LISTENERS][ACCEPT_DEPTH];
	bool accept_wanted; /* accept slots to re-arm (an error, a full file table) */
	bool accept_no_poll_first; /* the kernel refused IORING_ACCEPT_POLL_FIRST */
	uint64_t accept_retry_at; /* after an accept error, not before this */
	uint64_t accept_error_logged; /* when the last accept error was logged */
	size_t nlisteners;

	struct conn *conns;
	uint32_t *free_conns; /* LIFO stack of free slots */
	uint32_t nfree;
	uint32_t nconns;
	uint32_t active;
	uint32_t open_by_listener[CONFIG_MAX_LISTENERS]; /* of active (metrics gauge) */

	/* Accepted sockets are direct descriptors (the ring's registered
	 * file table, nfiles entries), never in the process's table.
	 * files_open: entries taken (accepted, close CQE not yet seen), and
	 * accepts_armed: accepts in flight, each of which may take one. An
	 * accept that finds the table full has already taken its client off
	 * the backlog and can only drop it, so accepts are armed only while
	 * files_open + accepts_armed < nfiles: past that, clients wait in the
	 * backlog, as with a full process descriptor table. */
	unsigned nfiles;
	unsigned files_open;
	unsigned accepts_armed;
	/* "421 4.3.2 ... too many connections", sent from here by the ring
	 * when no slot is free (conn.c: conn_refusal_text). */
	char refuse[SMTP_HOSTNAME_MAX + 64];
	unsigned refuse_len;

	char *outmem; /* nconns * CONN_OUT_SIZE, mapped, touched lazily */
	char **free_out;
	uint32_t nfree_out;

	/* TLS (only with a certificate configured): the contexts new
	 * sessions use (tls.h: refcounted, this thread only) and a pool of
	 * per-connection states, one per slot, mapped and touched lazily. */
	struct tls_set *tls;
	struct conn_tls *tlsmem;
	struct conn_tls **free_tls;
	uint32_t nfree_tls;

	struct conn *flush_head;
	struct conn *rearm_head;
	/* Receives wait for buffers (ENOBUFS, or re-arms over budget): conn.c
	 * then cuts off sooner the connections that hold buffers while their
	 * client does not read its replies. */
	bool recv_short;
	struct timer_wheel *wheel;

	uint64_t now;   /* monotonic ns, updated once per loop iteration */
	int64_t wall;   /* time(NULL), same */
	bool draining;
	uint64_t drain_deadline;

	int wake_fd;
	uint64_t wake_val;
	struct worker_ctl ctl;

	struct qid_gen qid;
	struct sink_discard discard;
	struct spool *spool; /* sink = spool; NULL otherwise */
	struct js_sink *js;  /* sink = jetstream; NULL otherwise */
	struct relay *relay; /* relay_host/transport_maps set; NULL otherwise */
	struct sink sink;
	struct mf_pool *mf; /* milter conversations (milter_io.h) */
	struct smtp_hooks hooks;
	struct policy policy;
	struct ringmx_stats stats;
	struct log_buf log;
	/* What the metrics endpoint and the watchdog read (metrics.h). */
	struct metrics_pub pub;
	uint64_t pub_at; /* next publish not before this (monotonic ns) */
};

/* worker.c */
int listener_probe(const struct config *cfg, char *err, size_t errlen);
int worker_setup_listeners(struct worker *w, const struct config *cfg, char *err, size_t errlen);
void *worker_main(void *arg);
void worker_wake(struct worker *w);
struct io_uring_sqe *worker_sqe(struct worker *w);
void worker_sq_reserve(struct worker *w, unsigned n);
void worker_file_closed(struct worker *w);
uint64_t now_ns(void);


#endif
