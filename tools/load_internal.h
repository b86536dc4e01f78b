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
#include "smtp_client.h"

#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#define BGID 1
#define RECV_BUF_SIZE 2048u   /* replies are short; a pipelined batch of ~40 fits */
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

enum phase { P_FREE, P_CONNECTING, P_OPEN, P_CLOSING, P_RETIRED };
enum why { WHY_OK, WHY_CONNECT, WHY_SESSION, WHY_TIMEOUT, WHY_DISCONNECT, WHY_PROTOCOL, WHY_TLS };

/* Messages in flight on one connection at most: with pipelined DATA the next message's
 * MAIL..DATA follows the previous one's end of data (one awaiting its final reply, one
 * being written); otherwise one. */
#define MSG_SLOTS 2
/* Pending pieces of the next write (struct conn.pend): an output run, the header
 * block, the template span, an output run, ...; two messages' worth with room to spare. */
#define PEND_MAX 12
/* Body spans up to this size are copied into the output (the 2-3 octet tail); longer
 * ones (the header block, the template) go as iovecs, read once, by the kernel. */
#define INLINE_MAX 64u
/* Recipients a message slot holds in itself, next to its transaction (the core reads
 * them on every RCPT reply: one cache line, not a trip to the connection's block). */
#define MSG_RCPT_INLINE 4

/*
 * One message: the transaction lent to the client core (engine/smtp/smtp_client.h)
 * and everything it points at. The body is three pieces: hdr (this message's own
 * header block), a prefix of the shared template, the variant's tail. Owned by the
 * connection; lent to the core from smtpc_submit() until SMTPC_EV_TX.
 */
struct msg {
	/* What the core and the results touch on every reply, together (the first
	 * 320 octets: conn_prefetch). */
	struct smtpc_tx tx;
	struct smtpc_piece piece[3];
	struct smtpc_rcpt rcpt_in[MSG_RCPT_INLINE];
	uint16_t fail_code;  /* first refusal by MAIL or RCPT (or SIZE) */
	uint16_t final_code; /* a refusal at DATA or the end of data */
	uint16_t ok_code;    /* the end of data accepted: the message is */
	uint8_t variant;
	bool live;
	bool lost;  /* a recipient's result is the connection's end, not a reply */
	bool final; /* some recipient got past RCPT: the end of data decides */
	uint64_t seq;      /* thread-local; id is ringmx-load.PID.THREAD.SEQ */
	uint64_t t_start;  /* ns: MAIL written, or the intended start under --rate */
	size_t wire;       /* header + body bytes */
	struct smtpc_rcpt *rcpt; /* o->rcpts entries: rcpt_in, or in the connection's block */
	char *addr;              /* the envelope's addresses, formatted (the block) */
	size_t hdr_len;
	char hdr[HDR_CAP];
};

struct eng;

/* Ordered by use: what every completion touches first (the connection's state, its
 * output, then the client core, whose own hot fields lead), the rest after. Aligned to
 * a cache line (the array is a mapping of its own: eng_conns_map), so the lines
 * conn_prefetch asks for are the lines used. */
struct __attribute__((aligned(64))) conn {
	int fd;
	uint32_t gen, idx;
	enum phase phase;
	struct eng *e;
	bool connecting, recv_armed, send_inflight, tls_sending;
	bool dirty, idle, waiting, rearm, reserved, ehlo_ok, pipe;
	/* the client core: open from smtpc_init to SMTPC_EV_CLOSE. Its callbacks only
	 * record (want_tls, span, core_closed); conn_after() acts once it returned. */
	bool core_open, core_closed, want_tls, aborting;
	enum why close_why;    /* core_closed: how conn_close counts it */
	unsigned depth, inflight; /* messages at once (MSG_SLOTS at most), and now */
	unsigned npend;
	uint64_t deadline;     /* ns; 0 = nothing awaited */
	struct smtpc_out so;   /* the core writes here */
	size_t obase;          /* so.buf[0, obase) is the write in flight's */
	size_t seg;            /* so.buf[seg, so.len): output not yet in pend */
	const uint8_t *span;   /* SMTPC_EV_BODY not yet taken */
	size_t span_len;
	size_t out_total, out_done; /* under TLS: plaintext bytes encrypted so far */
	struct smtpc sc;
	struct iovec pend[PEND_MAX]; /* the next write so far, in wire order */
	/* the write in flight */
	struct iovec iov[PEND_MAX + 1];
	struct msghdr mh;
	struct msg msg[MSG_SLOTS];
	unsigned target, src_next;
	unsigned consec_fail;
	unsigned msgs_started; /* on this connection */
	uint64_t backoff_until;
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
	struct conn *conns;   /* and their blocks: one mapping (eng_conns_map) */
	char *blocks;
	size_t conns_map_len;
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
void conn_after(struct eng *e, struct conn *c);
bool conn_waits(const struct conn *c);
void conn_prefetch(const struct conn *c, bool replies);
void conn_prefetch_flush(const struct conn *c);
size_t conn_block_size(const struct load_opts *o);
void conn_block_init(struct conn *c, const struct load_opts *o, char *block);

/* load_tx.c: messages */
size_t msg_block_size(const struct load_opts *o);
void msg_block_init(struct msg *m, const struct load_opts *o, char *block);
uint64_t rng_next(struct eng *e);
void manifest_flush(struct eng *e);
void msg_start_due(struct eng *e, struct conn *c);
void msg_on_rcpt(struct eng *e, struct conn *c, const struct smtpc_event *ev);
void msg_on_tx(struct eng *e, struct conn *c, struct msg *m);

#endif
