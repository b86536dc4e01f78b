/*
 * worker.h - one pinned thread per core, each with its own io_uring, its own
 * SO_REUSEPORT listeners, provided-buffer ring, connection pool, timer wheel,
 * sink and counters. Nothing here is shared between workers except the
 * read-only configuration and the control block the main thread writes.
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

#include "bufring.h"
#include "log.h"
#include "qid.h"
#include "relay.h"
#include "ringmx/config.h"
#include "ringmx/smtp.h"
#include "ringmx/stats.h"
#include "sink_discard.h"
#include "spool.h"
#include "timer.h"
#include "tls.h"
#include "tls_io.h"
#include "ud.h"

enum op {
	OP_ACCEPT = 1, /* idx = listener */
	OP_RECV,       /* idx = conn */
	OP_SEND,       /* idx = conn */
	OP_WAKE,       /* eventfd read from the main thread */
	OP_CANCEL,     /* async cancel; result only logged */
	OP_SPOOL,      /* spool write/fsync; kind and idx: spool.c */
	OP_RELAY,      /* outbound connections, journal; gen/kind/idx: relay */
};


/* Output block per connection with something to send; from the worker's pool. */
#define CONN_OUT_SIZE 4096
/* Receive buffers one paused connection may hold before its recv is
 * cancelled (TCP then pushes back on the client). */
#define CONN_HOLD_MAX 4
#define HOLD_NONE     UINT32_MAX

enum conn_state { CONN_FREE = 0, CONN_OPEN, CONN_CLOSING };

/*
 * Where a connection's received bytes go (conn.c, conn_input()):
 *   ring bytes -> [PROXY] -> [TLS] -> SMTP session
 * PROXY:     proxy=yes listeners; the header comes before anything else
 *            (before the handshake on implicit listeners, before the 220
 *            otherwise). See conn_stage_proxy().
 * STARTTLS:  the 220 for STARTTLS is being sent in plaintext; every byte
 *            received now is discarded (CVE-2011-0411).
 * HANDSHAKE: ciphertext goes to wolfSSL_accept().
 * SMTP:      plaintext straight to the session (c->tls == NULL, zero copy)
 *            or decrypted through the TLS window first.
 */
enum conn_stage { CONN_STAGE_SMTP = 0, CONN_STAGE_PROXY, CONN_STAGE_STARTTLS, CONN_STAGE_HANDSHAKE };

/* Decrypted input window: one TLS record's plaintext (RFC 8446 5.1). */
#define CONN_TLS_WIN 16384
/* Ciphertext output: the handshake flight (certificate chain) or one
 * encrypted output block plus record overhead, with room to spare. */
#define CONN_TLS_OUT 32768
/* Room kept free in the ciphertext block for one record's overhead. */
#define CONN_TLS_RECORD_OVERHEAD 256

/* Per TLS connection, from the worker's pool (only when TLS is configured).
 * Ownership: the ciphertext bytes [0, send_len) of cout belong to the
 * kernel while a send is in flight; wolfSSL's send callback only appends.
 * The window holds decrypted bytes the session has not consumed yet. */
struct conn_tls {
	/* io.ssl, io.done (handshake complete); io.out is cout, io.out_len its
	 * ciphertext; input is pulled from the connection's held buffers. */
	struct tls_io io;
	struct tls_set *set; /* one reference, dropped at teardown */
	uint32_t win_off, win_len;
	bool notify_sent; /* close_notify queued */
	bool resumed;
	char version[16]; /* "TLSv1.3", for logs */
	char cipher[64];
	char win[CONN_TLS_WIN];
	char cout[CONN_TLS_OUT];
};

struct worker;

struct conn {
	struct worker *w;
	uint32_t idx;
	uint32_t gen;
	int fd;
	uint8_t state;
	uint8_t listener;
	bool recv_armed;    /* a multishot recv is in the kernel */
	bool recv_wanted;   /* re-arm when possible (ENOBUFS, cancelled, ended) */
	bool recv_cancel;   /* cancel requested for backpressure */
	bool eof;           /* the client closed its side */
	bool send_inflight;
	bool shut;          /* shutdown(2) issued during teardown */
	bool in_flush;      /* on the worker's flush list */
	bool in_rearm;      /* on the worker's re-arm list */
	bool logged_error;  /* the reason for an abnormal close is logged */
	uint8_t stage;      /* enum conn_stage */
	struct conn_tls *tls; /* NULL for plaintext connections */
	uint64_t hs_deadline; /* STARTTLS/HANDSHAKE stage: handshake_timeout */

	/* Held input: receive buffers the session could not consume yet
	 * (paused or output full), in order. hold_off is the read offset in
	 * the head buffer; per-buffer lengths and links live in the worker. */
	uint32_t hold_head, hold_tail;
	uint32_t hold_off;
	uint32_t nheld;

	char *outbuf;  /* NULL when nothing is pending */
	size_t send_len; /* bytes of outbuf in the send in flight */
	struct smtp_out out;

	struct conn *next_flush, *next_rearm;
	struct timer_node timer;
	uint64_t t_connect;
	uint64_t close_deadline; /* CLOSING: when a stuck last send is cancelled */

	struct smtp_peer peer;
	struct smtp_session session;
	struct sink_waiter waiter; /* the sink's verdicts on this session's messages */
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
	bool accept_armed[CONFIG_MAX_LISTENERS];
	bool accept_wanted; /* re-arm accepts when slots free up */
	uint64_t accept_retry_at; /* after an accept error, not before this */
	uint64_t accept_error_logged; /* when the last accept error was logged */
	size_t nlisteners;

	struct conn *conns;
	uint32_t *free_conns; /* LIFO stack of free slots */
	uint32_t nfree;
	uint32_t nconns;
	uint32_t active;

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
	struct relay *relay; /* relay_host/transport_maps set; NULL otherwise */
	struct sink sink;
	struct smtp_hooks hooks;
	struct ringmx_stats stats;
	struct log_buf log;
};

/* worker.c */
int listener_probe(const struct config *cfg, char *err, size_t errlen);
int worker_setup_listeners(struct worker *w, const struct config *cfg, char *err, size_t errlen);
void *worker_main(void *arg);
void worker_wake(struct worker *w);
struct io_uring_sqe *worker_sqe(struct worker *w);
uint64_t now_ns(void);

/* conn.c */
void conn_open(struct worker *w, int fd, unsigned listener);
void conn_on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe);
void conn_on_send(struct worker *w, struct conn *c, int res);
void conn_flush_all(struct worker *w);
void conn_rearm_all(struct worker *w);
void conn_on_timer(struct timer_node *n, void *arg);
void conn_drain(struct worker *w, struct conn *c, bool force);
void conn_set_conf(struct conn *c, const struct smtp_conf *conf);
void conn_log_hook(void *owner, const char *line, size_t len);
/* Held input, for input stages that parse across receive buffers (PROXY). */
size_t conn_hold_copy(struct worker *w, struct conn *c, char *dst, size_t n);
size_t conn_hold_consume(struct worker *w, struct conn *c, size_t n);

#endif
