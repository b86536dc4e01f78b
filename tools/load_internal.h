/*
 * tools/load_internal.h - what the files of one ringmx-load worker share: the
 * connection, message and worker structures, the user_data encoding, the
 * limits, and the functions each file offers the others.
 *
 * Ownership: ringmx-load (issue 4). Included only by tools/load_engine.c (the
 * ring and the loop), tools/load_conn.c (connections: connect, receive, send,
 * TLS, replies) and tools/load_tx.c (messages: headers, commands, results,
 * manifest); tools/ringmx-load.c sees only load.h. Everything here belongs to
 * one worker thread (struct eng) and is touched by that thread only.
 */
#ifndef RINGMX_TOOLS_LOAD_INTERNAL_H
#define RINGMX_TOOLS_LOAD_INTERNAL_H

#include "load.h"

#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#define BGID 1
#define RECV_BUF_SIZE 2048u   /* replies are short; a pipelined batch of ~40 fits */
#define LINE_CAP 1024u        /* RFC 5321 reply lines are <= 512; keep slack */
#define HDR_CAP 1024u         /* Message-ID, X-Ringmx-Load-*, From, To, Subject, Date */
#define MAX_CONSEC_FAIL 3u    /* connect/greeting failures before a slot retires */
#define BACKOFF_NS 200000000ull
#define TICK_NS 20000000ull   /* housekeeping period: timeouts are checked this often */
#define NS 1000000000ull
#define TLS_REC 16384u        /* max TLS plaintext record: full records, fewest AEAD calls */
#define TLS_OUT_TARGET 32768u /* encrypt ahead of the socket at most this much */
/* The target, plus one record that may start just below it, plus handshake and alert
 * slack: wolfSSL's send callback then never sees a full buffer. */
#define TLS_OUT_CAP (TLS_OUT_TARGET + TLS_REC + 4096u)

enum op { OP_CONNECT = 1, OP_RECV, OP_SEND, OP_CANCEL, OP_CLOSE };

/* user_data = op:8 | gen:24 | conn index:32 (proxy.h __encode_userdata idea). gen
 * changes on every connect of a slot, so a CQE from an older incarnation is dropped. */
static inline uint64_t ud_make(enum op op, uint32_t gen, uint32_t idx)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & 0xffffffu) << 32) | idx;
}

enum exp {
	EXP_GREETING = 1, EXP_EHLO, EXP_HELO, EXP_RSET, EXP_MAIL, EXP_RCPT,
	EXP_DATA, EXP_DOT, EXP_BDAT, EXP_QUIT, EXP_STARTTLS,
};
#define EXP_SLOT 0x80u /* message slot (0/1) of MAIL..DOT/BDAT expectations */

/* What the next flush writes, in this order (the order of the bytes on the wire, which
 * is also the order replies are expected in). */
enum {
	OUT_PROXY = 1 << 0, OUT_EHLO = 1 << 1, OUT_HELO = 1 << 2, OUT_BODY = 1 << 3,
	OUT_RSET = 1 << 4, OUT_NEXT = 1 << 5, OUT_RCPT = 1 << 6, OUT_DATA = 1 << 7,
	OUT_QUIT = 1 << 8, OUT_STARTTLS = 1 << 9,
};

enum phase { P_FREE, P_CONNECTING, P_OPEN, P_CLOSING, P_RETIRED };
enum why { WHY_OK, WHY_CONNECT, WHY_SESSION, WHY_TIMEOUT, WHY_DISCONNECT, WHY_PROTOCOL, WHY_TLS };

struct msg {
	uint64_t seq;      /* thread-local; id is ringmx-load.PID.THREAD.SEQ */
	uint64_t t_start;  /* ns: MAIL written, or the intended start under --rate */
	size_t wire;       /* header + body bytes */
	uint16_t fail_code;/* first refused MAIL/RCPT */
	uint16_t rcpt_ok, rcpt_sent;
	uint8_t variant;
	bool live, mail_ok;
};

struct conn {
	int fd;
	uint32_t gen, idx;
	enum phase phase;
	bool connecting, recv_armed, send_inflight;
	bool dirty, idle, waiting, rearm, reserved, quit_sent, ehlo_ok, pipe, cap_pipe, cap_chunk, in_reply;
	bool cap_starttls, starttls_go, tls_sending;
	unsigned out_flags;
	unsigned target, src_next;
	unsigned consec_fail;
	unsigned msgs_started; /* on this connection */
	unsigned tx_slot, body_slot;
	uint64_t deadline;     /* ns; 0 = nothing awaited */
	uint64_t backoff_until;
	/* expected replies, FIFO */
	uint8_t *exp;
	unsigned exp_head, exp_tail, exp_mask;
	struct msg msg[2];
	/* reply line carry */
	unsigned line_len;
	char line[LINE_CAP];
	/* output */
	char *pre, *post;
	size_t cmd_cap;
	size_t hdr_len;
	char hdr[HDR_CAP];
	struct iovec iov[4];
	struct msghdr mh;
	size_t out_total, out_done; /* under TLS: plaintext bytes encrypted so far */
	struct load_tls tls;
};

struct eng {
	struct load_thread *t;
	const struct load_opts *o;
	const struct load_body *body;
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	char *bufs;
	size_t br_map_len;
	unsigned br_entries, br_pending;
	struct conn *conns;
	unsigned n, live;
	struct conn **dirty, **rearm, **idle;
	unsigned ndirty, nrearm, nidle;
	uint64_t now, next_tick;
	uint64_t budget;
	bool stopping;
	uint64_t stop_ns;
	uint64_t seq;
	uint64_t inflight;
	uint64_t rate_next, rate_step; /* --rate: intended start of the next message */
	uint64_t rng;
	char idpfx[64];
	size_t idpfx_len;
	char date[64];
	size_t date_len;
	time_t date_sec;
	char *man;        /* --verify manifest lines, flushed in batches */
	size_t man_len;
	void *tls_ctx;    /* WOLFSSL_CTX of this thread (--tls/--starttls) */
	char *tls_rd;     /* decrypted replies, parsed before the next read */
	char *tls_wr;     /* small iovecs gathered into one record */
};

#define MAN_CAP 65536u

/* ---- small output helpers; capacities are sized at startup, overflow is a bug ---- */

struct wbuf {
	char *p;
	size_t len, cap;
};

static inline void wb_put(struct wbuf *w, const void *s, size_t n)
{
	if (w->len + n > w->cap) {
		fprintf(stderr, "ringmx-load: command buffer overflow (bug)\n");
		abort();
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
}
#define WB_LIT(w, s) wb_put((w), (s), sizeof(s) - 1)

static inline size_t utoa(char *dst, uint64_t v)
{
	char tmp[20];
	size_t k = 0;
	do {
		tmp[k++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < k; i++)
		dst[i] = tmp[k - 1 - i];
	return k;
}

static inline void wb_u64(struct wbuf *w, uint64_t v)
{
	char tmp[20];
	wb_put(w, tmp, utoa(tmp, v));
}

/* load_engine.c: the ring, the lists, the budget */
void die_oom(void) __attribute__((noreturn));
struct io_uring_sqe *eng_sqe(struct eng *e);
void dirty_push(struct eng *e, struct conn *c);
void rearm_push(struct eng *e, struct conn *c);
void idle_push(struct eng *e, struct conn *c);
bool budget_take(struct eng *e);
void budget_return(struct eng *e, struct conn *c);
void buf_recycle(struct eng *e, unsigned bid);

/* load_conn.c: connections */
void conn_connect(struct eng *e, struct conn *c);
void conn_close(struct eng *e, struct conn *c, enum why why);
void conn_finalize(struct eng *e, struct conn *c);
void conn_retire(struct eng *e, struct conn *c);
void conn_arm_recv(struct eng *e, struct conn *c);
void conn_on_connect(struct eng *e, struct conn *c, int res);
void conn_on_recv(struct eng *e, struct conn *c, struct io_uring_cqe *cqe);
void conn_on_send(struct eng *e, struct conn *c, int res);
void conn_flush(struct eng *e, struct conn *c);
void exp_push(struct eng *e, struct conn *c, unsigned v);
bool exp_empty(const struct conn *c);

/* load_tx.c: messages */
enum next { NEXT_START, NEXT_QUIT, NEXT_IDLE };
uint64_t rng_next(struct eng *e);
void manifest_flush(struct eng *e);
void msg_finish(struct eng *e, struct conn *c, unsigned slot, bool ok, int code,
                const char *text, size_t n);
void msg_fail_all(struct eng *e, struct conn *c);
uint16_t first_fail(const struct msg *m, int code);
enum next conn_next(struct eng *e, struct conn *c, uint64_t *t_start);
void hdr_build(struct eng *e, struct conn *c, const struct msg *m);
void put_mail(struct eng *e, struct wbuf *w, const struct msg *m);
void put_rcpt(struct eng *e, struct wbuf *w, const struct msg *m, unsigned i);
struct wbuf *place_body(struct eng *e, struct conn *c, struct msg *m, struct wbuf *post,
                        bool *placed);
struct wbuf *put_bdat(struct eng *e, struct conn *c, struct msg *m, struct wbuf *w,
                      struct wbuf *post, bool *placed);
unsigned msg_start(struct eng *e, struct conn *c, uint64_t t_start);

#endif
