/*
 * conn.h - one inbound client connection (engine/conn/conn.c): its state,
 * its input stages and its TLS state, and the calls the worker makes.
 *
 * Ownership rules
 *  - A struct conn is a slot of its worker's connection array (worker.h):
 *    the worker's thread is the only one that touches it. The slot is
 *    reused; gen tells a CQE for a previous occupant apart (ud.h).
 *  - Receive buffers a connection holds belong to it until they go back to
 *    the worker's buffer ring (conn.c's rules); the output block and the
 *    struct conn_tls come from the worker's pools and go back at teardown.
 *  - The SMTP session inside is the protocol core; the connection feeds it
 *    bytes and sends what it writes. The sink's verdicts reach the session
 *    through waiter, never through the worker.
 */
#ifndef RINGMX_CONN_H
#define RINGMX_CONN_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ringmx/sink.h"
#include "ringmx/smtp.h"
#include "milter_io.h"
#include "policy.h"
#include "timer.h"
#include "tls.h"
#include "tls_io.h"

struct worker;

/* Output block per connection with something to send; from the worker's pool. */
#define CONN_OUT_SIZE 4096
/* Receive buffers one paused connection may hold before its recv is
 * cancelled (TCP then pushes back on the client). */
#define CONN_HOLD_MAX 4
/* A multishot recv may fill more buffers than CONN_HOLD_MAX before its
 * cancel lands (one per TCP segment, however small): past CONN_HOLD_MAX the
 * held bytes are packed into as few buffers as they need (hold_compact). A
 * connection whose unread input still needs more than CONN_HOLD_HARD and
 * whose send is stuck (it does not read its replies) is cut off
 * CONN_STALL_SHORT_NS after that send started, pressure or not
 * (recv_hold_cutoffs). A client that writes a large burst and reads its
 * replies may pass it for a moment: it is being served. */
#define CONN_HOLD_HARD (4 * CONN_HOLD_MAX)
/* While other receives wait for buffers (worker.recv_short), a connection
 * that holds receive buffers and whose send is stuck (the client does not
 * read its replies) is cut off this long after that send started, so its
 * buffers go back to the ring. One timer tick: a reading client's send
 * completes in a round trip. Without that pressure the buffers harm no one
 * and the stuck send is bounded by send_timeout alone. */
#define CONN_STALL_SHORT_NS (100000000ull)
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
 * GREET:     the 220- pause of greet_wait (screen.h): the 220- line is out,
 *            the rest of the greeting is not; whatever arrives is a
 *            pregreet talker's, held (never dropped) until the pause ends.
 * SMTP:      plaintext straight to the session (c->tls == NULL, zero copy)
 *            or decrypted through the TLS window first.
 */
enum conn_stage {
	CONN_STAGE_SMTP = 0,
	CONN_STAGE_PROXY,
	CONN_STAGE_STARTTLS,
	CONN_STAGE_HANDSHAKE,
	CONN_STAGE_GREET,
};

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

struct conn {
	struct worker *w;
	uint32_t idx;
	uint32_t gen;
	int fd; /* a direct descriptor: an index into the ring's file table */
	uint8_t state;
	uint8_t listener;
	bool recv_armed;    /* a multishot recv is in the kernel */
	bool recv_wanted;   /* re-arm when possible (ENOBUFS, cancelled, ended) */
	bool recv_cancel;   /* cancel requested for backpressure */
	bool eof;           /* the client closed its side */
	bool send_inflight;
	bool close_queued;  /* the ring closes fd (linked after the last send) */
	bool in_flush;      /* on the worker's flush list */
	bool in_rearm;      /* on the worker's re-arm list */
	bool logged_error;  /* the reason for an abnormal close is logged */
	uint8_t stage;      /* enum conn_stage */
	struct conn_tls *tls; /* NULL for plaintext connections */
	uint64_t hs_deadline; /* STARTTLS/HANDSHAKE stage: handshake_timeout */
	uint64_t t_hs;        /* when the handshake stage began (tls_handshake histogram) */
	uint64_t greet_deadline; /* GREET stage: the end of the 220- pause */

	/* Held input: receive buffers the session could not consume yet
	 * (paused or output full), in order. hold_off is the read offset in
	 * the head buffer; per-buffer lengths and links live in the worker. */
	uint32_t hold_head, hold_tail;
	uint32_t hold_off;
	uint32_t nheld;

	char *outbuf;  /* NULL when nothing is pending */
	size_t send_len; /* bytes of outbuf in the send in flight */
	uint64_t send_t0; /* when the send in flight was submitted */
	struct smtp_out out;

	struct conn *next_flush, *next_rearm;
	struct timer_node timer;
	uint64_t t_connect;
	uint64_t close_deadline; /* CLOSING: when a stuck last send is cancelled */

	struct policy_conn pol;          /* policy.h */
	struct policy_waiter pol_waiter; /* a pending check's answer */
	struct smtp_peer peer;
	struct smtp_session session;
	struct sink_waiter waiter; /* the sink's verdicts on this session's messages */
	/* The milters' state (the pool's, milter_io.h), NULL without milters;
	 * set at the greeting, given back at teardown. */
	struct mf_conn *mf;
};

/* conn.c */
void conn_open(struct worker *w, int fd, unsigned listener, const struct sockaddr_storage *addr,
	       socklen_t addrlen);
void conn_close_direct(struct worker *w, int fd);
void conn_refusal_text(struct worker *w);
void conn_on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe);
void conn_on_send(struct worker *w, struct conn *c, int res);
void conn_on_close(struct worker *w, struct io_uring_cqe *cqe);
void conn_flush_all(struct worker *w);
void conn_rearm_all(struct worker *w);
void conn_on_timer(struct timer_node *n, void *arg);
void conn_drain(struct worker *w, struct conn *c, bool force);
void conn_set_conf(struct conn *c, const struct smtp_conf *conf);
void conn_log_hook(void *owner, enum smtp_log_role role, const char *line, size_t len);
/* struct smtp_hooks.check / .check_cancel: the session's policy questions
 * go to the worker's struct policy (policy.h). */
int conn_policy_check(void *owner, enum smtp_check_point what, const char *addr, size_t len,
		      struct smtp_check_reply *r);
void conn_policy_cancel(void *owner);
/* Held input, for input stages that parse across receive buffers (PROXY). */
size_t conn_hold_copy(struct worker *w, struct conn *c, char *dst, size_t n);
size_t conn_hold_consume(struct worker *w, struct conn *c, size_t n);

#endif
