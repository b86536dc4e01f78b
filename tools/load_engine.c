/*
 * tools/load_engine.c - one worker of ringmx-load: an io_uring ring driving many SMTP
 * client connections.
 *
 * Ownership: ringmx-load (issue 4). Each worker thread owns one ring, one provided
 * buffer ring and a fixed array of connections, all allocated in load_thread_main()
 * before the first connect; the hot path never allocates.
 *
 * Loop (liburing examples/proxy.c __event_loop): housekeeping (timeouts, reconnect
 * back-off, --rate dispatch) -> flush every dirty connection (at most ONE send per
 * connection per loop, built from whatever replies arrived in the last batch) -> re-arm
 * stopped receives -> io_uring_submit_and_wait_timeout -> handle the CQE batch ->
 * return provided buffers with one advance.
 *
 * Receive: multishot recv with a provided buffer ring, registered by hand because
 * liburing 2.3 has no io_uring_setup_buf_ring (pattern of examples/io_uring-udp.c at
 * tag liburing-2.3). Why not a plain recv per connection: a client with N connections
 * would prepare and submit one recv SQE per reply batch per connection, and keep N
 * receive buffers pinned; multishot arms once per connection lifetime, and since every
 * buffer is parsed and handed back within the CQE that delivered it, the pool only has
 * to cover the replies of one batch (2 buffers per connection is generous). ENOBUFS is
 * flow control: the connection goes on a re-arm list (liburing#1275).
 *
 * Reply parsing: replies are tiny, so a reply line split across two receives is copied
 * into a per-connection carry buffer (iouring-notes.md section 5); complete lines are
 * parsed in place. Multi-line replies ("250-...") are folded into one reply; pipelined
 * replies are matched in order against a per-connection FIFO of expected replies, one
 * entry pushed per command written, so counting stays correct however the server
 * groups its responses.
 *
 * Send: sendmsg with up to four iovecs: [commands before the body][unique headers, per
 * connection][body: a prefix of the shared template][tail + ".\r\n" + the pipelined
 * next MAIL/RCPT/DATA or QUIT]. MSG_WAITALL lets the kernel retry short sends (proxy.c
 * submit_send); a short completion is still handled by advancing the iovecs.
 *
 * TLS (--tls, --starttls; issue 5) sits at the two ends and nowhere else: conn_feed()
 * is the single entry for received plaintext and conn_submit_send() the single exit
 * for output. On a TLS connection (c->tls.io.ssl set) tls_on_data() hands the provided
 * buffer to wolfSSL as a view (load_tls.c), decrypts into a per-thread plaintext
 * buffer and calls conn_feed(); conn_submit_send() encrypts the same iovecs the
 * plaintext path would sendmsg() into the connection's ciphertext buffer, at most
 * TLS_OUT_TARGET bytes ahead of the socket (a 64 KiB body streams through in pieces,
 * so the buffer stays small), and tls_kick() sends that buffer. The plaintext path is
 * unchanged: one pointer test per CQE and per reply line, no copies.
 */
#include "load.h"

#include <errno.h>
#include <liburing.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

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

uint64_t load_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void die_oom(void)
{
	fprintf(stderr, "ringmx-load: out of memory\n");
	abort();
}

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

/* ---- SQEs ---- */

/* When the SQ is full, submit what is queued and retry (TigerBeetle enqueue). */
static struct io_uring_sqe *eng_sqe(struct eng *e)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
	if (!sqe) {
		io_uring_submit(&e->ring);
		sqe = io_uring_get_sqe(&e->ring);
		if (!sqe) {
			fprintf(stderr, "ringmx-load: no SQE after submit\n");
			abort();
		}
	}
	return sqe;
}

/* ---- lists: fixed arrays of n pointers, a flag on the conn prevents duplicates ---- */

static void dirty_push(struct eng *e, struct conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		e->dirty[e->ndirty++] = c;
	}
}

static void rearm_push(struct eng *e, struct conn *c)
{
	if (!c->rearm) {
		c->rearm = true;
		e->rearm[e->nrearm++] = c;
	}
}

/* c->waiting: the connection waits for a --rate slot; c->idle: it is in the list. A
 * connection closed while waiting leaves a stale entry that is skipped on pop, and the
 * membership flag keeps the list within n entries. */
static void idle_push(struct eng *e, struct conn *c)
{
	c->waiting = true;
	if (!c->idle) {
		c->idle = true;
		e->idle[e->nidle++] = c;
	}
}

/* ---- budget ---- */

static bool budget_take(struct eng *e)
{
	if (e->stopping)
		return false;
	if (e->budget == UINT64_MAX)
		return true;
	if (e->budget == 0)
		return false;
	e->budget--;
	return true;
}

static void budget_return(struct eng *e, struct conn *c)
{
	if (c->reserved && e->budget != UINT64_MAX)
		e->budget++;
	c->reserved = false;
}

/* ---- expectations ---- */

static void exp_push(struct eng *e, struct conn *c, unsigned v)
{
	if (c->exp_tail - c->exp_head > c->exp_mask) {
		fprintf(stderr, "ringmx-load: expectation queue overflow (bug)\n");
		abort();
	}
	if (c->exp_tail == c->exp_head)
		c->deadline = e->now + (uint64_t)(e->o->timeout * (double)NS);
	c->exp[c->exp_tail++ & c->exp_mask] = (uint8_t)v;
}

static bool exp_empty(const struct conn *c)
{
	return c->exp_head == c->exp_tail;
}

static unsigned exp_head(const struct conn *c)
{
	return c->exp[c->exp_head & c->exp_mask];
}

/* ---- connections ---- */

static void conn_connect(struct eng *e, struct conn *c);
static void conn_close(struct eng *e, struct conn *c, enum why why);
static void tls_begin(struct eng *e, struct conn *c);
static void put_proxy(struct eng *e, struct conn *c, struct wbuf *w);

/* The first TLS failure reason of the thread, for the summary; later ones are counted
 * only. */
static void tls_note(struct eng *e, const char *what, const char *detail)
{
	struct load_stats *st = &e->t->st;
	if (!st->tls_error[0])
		snprintf(st->tls_error, sizeof(st->tls_error), "%s%s", what, detail);
}

static void conn_retire(struct eng *e, struct conn *c)
{
	budget_return(e, c);
	c->phase = P_RETIRED;
	e->live--;
}

/* All of the connection's requests have completed: close the fd through the ring and
 * decide whether this slot connects again (churn, --per-connection) or retires. */
static void conn_finalize(struct eng *e, struct conn *c)
{
	if (c->phase != P_CLOSING || c->connecting || c->recv_armed || c->send_inflight)
		return;
	if (c->fd >= 0) {
		struct io_uring_sqe *sqe = eng_sqe(e);
		io_uring_prep_close(sqe, c->fd);
		io_uring_sqe_set_data64(sqe, ud_make(OP_CLOSE, 0, c->idx));
		c->fd = -1;
	}
	c->phase = P_FREE;
	if (e->stopping || c->consec_fail >= MAX_CONSEC_FAIL) {
		conn_retire(e, c);
		return;
	}
	if (!c->reserved) {
		if (!budget_take(e)) {
			conn_retire(e, c);
			return;
		}
		c->reserved = true;
	}
	if (c->consec_fail)
		c->backoff_until = e->now + BACKOFF_NS;
	else
		conn_connect(e, c);
}

static void msg_fail_all(struct eng *e, struct conn *c)
{
	for (unsigned s = 0; s < 2; s++) {
		struct msg *m = &c->msg[s];
		if (!m->live)
			continue;
		m->live = false;
		e->t->st.failed++;
		e->inflight--;
	}
}

static void conn_close(struct eng *e, struct conn *c, enum why why)
{
	if (c->phase != P_OPEN && c->phase != P_CONNECTING)
		return;
	struct load_stats *st = &e->t->st;
	switch (why) {
	case WHY_OK: break;
	case WHY_CONNECT: st->connect_errors++; c->consec_fail++; break;
	case WHY_SESSION: break; /* counted where the refusal was seen */
	case WHY_TIMEOUT: st->timeouts++; break;
	case WHY_DISCONNECT: st->disconnects++; break;
	case WHY_PROTOCOL: st->protocol_errors++; break;
	case WHY_TLS: c->consec_fail++; break; /* counted as tls_failures below */
	}
	/* A session that dies before EHLO succeeded consumed no message budget; count it
	 * toward retiring the slot, or a mute or black-holed target is retried forever. */
	if ((why == WHY_TIMEOUT || why == WHY_DISCONNECT || why == WHY_PROTOCOL) && !c->ehlo_ok)
		c->consec_fail++;
	if (c->tls.io.ssl) {
		if (!c->tls.io.done) {
			/* Whatever ended it (alert, EOF, timeout), the handshake did not finish. */
			st->tls_failures++;
			if (why == WHY_TIMEOUT)
				tls_note(e, "handshake timed out", "");
			else if (why == WHY_DISCONNECT)
				tls_note(e, "connection closed during the handshake", "");
		}
		/* Nothing below reads from wolfSSL again; an in-flight send uses c->tls.io.out,
		 * which is ours and lives as long as the slot. */
		load_tls_end(&c->tls, e->o->tls_resume);
	}
	msg_fail_all(e, c);
	c->phase = P_CLOSING;
	c->deadline = 0;
	c->exp_head = c->exp_tail = 0;
	c->out_flags = 0;
	c->waiting = false;
	if (c->connecting || c->recv_armed || c->send_inflight) {
		/* One cancel for everything on the fd (5.19+); each op then posts its
		 * final CQE and conn_finalize runs when the last one is in. */
		struct io_uring_sqe *sqe = eng_sqe(e);
		io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, c->idx));
	}
	conn_finalize(e, c);
}

static void conn_connect(struct eng *e, struct conn *c)
{
	const struct load_opts *o = e->o;
	const struct load_addr *ta = &o->targets[c->target];
	c->gen++;
	c->phase = P_CONNECTING;
	c->ehlo_ok = false;
	c->fd = socket(ta->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		e->t->st.connect_errors++;
		c->consec_fail++;
		c->phase = P_CLOSING;
		conn_finalize(e, c);
		return;
	}
	int one = 1;
	/* Our writes are whole pipelined groups; Nagle would hold a short group (QUIT,
	 * the next MAIL) behind an unacknowledged body. */
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (o->source_set) {
		struct sockaddr_in sin = { .sin_family = AF_INET };
		unsigned k = (c->idx + c->src_next++ * e->n) % o->src_count;
		sin.sin_addr.s_addr = htonl(o->src_base + k);
		/* Pick the port at connect time, per (src, dst) pair, so thousands of
		 * connections do not exhaust the ephemeral range at bind(). */
		setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(c->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
			e->t->st.connect_errors++;
			c->consec_fail++;
			c->phase = P_CLOSING;
			conn_finalize(e, c);
			return;
		}
	}
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&ta->ss, ta->len);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CONNECT, c->gen, c->idx));
	c->connecting = true;
	c->deadline = e->now + (uint64_t)(o->timeout * (double)NS);
}

static void conn_arm_recv(struct eng *e, struct conn *c)
{
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	/* prep clears flags: set them afterwards (liburing#1125). 2.3 has no
	 * io_uring_sqe_set_buf_group. */
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->gen, c->idx));
	c->recv_armed = true;
}

static void conn_on_connect(struct eng *e, struct conn *c, int res)
{
	if (c->phase != P_CONNECTING)
		return; /* closed (timeout) while connecting */
	if (res < 0) {
		conn_close(e, c, WHY_CONNECT);
		return;
	}
	e->t->st.connections++;
	c->phase = P_OPEN;
	c->exp_head = c->exp_tail = 0;
	c->line_len = 0;
	c->in_reply = false;
	c->cap_pipe = c->cap_chunk = false;
	c->pipe = false;
	c->quit_sent = false;
	c->msgs_started = 0;
	c->out_flags = 0;
	c->deadline = 0;
	c->cap_starttls = c->starttls_go = false;
	c->out_total = c->out_done = 0;
	c->tls.io.out_len = c->tls.out_busy = c->tls.out_sent = 0;
	conn_arm_recv(e, c);
	exp_push(e, c, EXP_GREETING); /* under implicit TLS it arrives after the handshake */
	if (e->o->tls == LOAD_TLS_IMPLICIT) {
		/* The PROXY header goes first and in the clear, then the ClientHello; both
		 * leave in one send. */
		if (e->o->proxy != LOAD_PROXY_NONE) {
			struct wbuf w = { c->tls.io.out, 0, c->tls.io.out_cap };
			put_proxy(e, c, &w);
			c->tls.io.out_len = w.len;
		}
		tls_begin(e, c);
		return;
	}
	if (e->o->proxy != LOAD_PROXY_NONE) {
		c->out_flags |= OUT_PROXY;
		dirty_push(e, c);
	}
}

/* ---- messages ---- */

static uint64_t rng_next(struct eng *e)
{
	uint64_t x = e->rng; /* xorshift64 */
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return e->rng = x;
}

static void manifest_flush(struct eng *e)
{
	if (e->man_len == 0)
		return;
	pthread_mutex_lock(&load_run.manifest_lock);
	size_t off = 0;
	while (off < e->man_len) {
		ssize_t w = write(load_run.manifest_fd, e->man + off, e->man_len - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			perror("ringmx-load: manifest write");
			break;
		}
		off += (size_t)w;
	}
	pthread_mutex_unlock(&load_run.manifest_lock);
	e->man_len = 0;
}

/* The queue id is whatever follows "queued as " in the final reply line ("250 2.0.0
 * Ok: queued as 4Xyz"); "-" when the server does not say (smtp-sink). */
static void manifest_add(struct eng *e, const struct msg *m, const char *text, size_t n)
{
	if (load_run.manifest_fd < 0)
		return;
	if (e->man_len + 512 > MAN_CAP)
		manifest_flush(e);
	struct wbuf w = { e->man, e->man_len, MAN_CAP };
	wb_put(&w, e->idpfx, e->idpfx_len);
	wb_u64(&w, m->seq);
	WB_LIT(&w, " ");
	const char *q = memmem(text, n, "queued as ", 10);
	size_t ql = 0;
	if (q) {
		q += 10;
		while (q + ql < text + n && ql < 200 && q[ql] > ' ')
			ql++;
	}
	if (ql)
		wb_put(&w, q, ql);
	else
		WB_LIT(&w, "-");
	WB_LIT(&w, " ");
	const struct load_variant *v = &e->body->v[m->variant];
	wb_u64(&w, v->size);
	WB_LIT(&w, " ");
	wb_put(&w, v->sum_hex, 16);
	WB_LIT(&w, "\n");
	e->man_len = w.len;
}

static void msg_finish(struct eng *e, struct conn *c, unsigned slot, bool ok, int code,
                       const char *text, size_t n)
{
	struct msg *m = &c->msg[slot];
	struct load_stats *st = &e->t->st;
	if (!m->live)
		return;
	m->live = false;
	e->inflight--;
	if (code >= 0 && code < LOAD_CODES)
		st->codes[code]++;
	if (ok) {
		st->accepted++;
		st->msg_bytes += m->wire;
		uint64_t lat = e->now > m->t_start ? e->now - m->t_start : 0;
		hist_record(&st->hist, lat);
		manifest_add(e, m, text, n);
	} else {
		st->rejected++;
	}
}

enum next { NEXT_START, NEXT_QUIT, NEXT_IDLE };

/* Decides what a connection that may start a transaction does now. Under --rate the
 * intended start time is taken from the schedule, not from the clock, so a message that
 * waited for a free connection carries that wait in its latency (no coordinated
 * omission). */
static enum next conn_next(struct eng *e, struct conn *c, uint64_t *t_start)
{
	const struct load_opts *o = e->o;
	if (e->stopping || (o->per_conn && c->msgs_started >= o->per_conn))
		return NEXT_QUIT;
	if (!c->reserved && e->budget == 0)
		return NEXT_QUIT;
	if (e->rate_step && e->rate_next > e->now)
		return NEXT_IDLE;
	if (c->reserved)
		c->reserved = false;
	else if (!budget_take(e))
		return NEXT_QUIT;
	if (e->rate_step) {
		*t_start = e->rate_next;
		e->rate_next += e->rate_step;
	} else {
		*t_start = e->now;
	}
	return NEXT_START;
}

static void date_refresh(struct eng *e)
{
	time_t now = time(NULL);
	if (now == e->date_sec)
		return;
	e->date_sec = now;
	struct tm tm;
	gmtime_r(&now, &tm);
	e->date_len = strftime(e->date, sizeof(e->date), "Date: %a, %d %b %Y %H:%M:%S +0000\r\n", &tm);
}

/* Per-message unique header block, rebuilt in c->hdr for each body. Safe to overwrite:
 * a body is only placed when no send of this connection is in flight. */
static void hdr_build(struct eng *e, struct conn *c, const struct msg *m)
{
	const struct load_opts *o = e->o;
	const struct load_variant *v = &e->body->v[m->variant];
	uint64_t gseq = m->seq * o->threads + e->t->id;
	char addr[2 * LOAD_PATTERN_MAX + 24];
	struct wbuf w = { c->hdr, 0, HDR_CAP };
	WB_LIT(&w, "Message-ID: <");
	wb_put(&w, e->idpfx, e->idpfx_len);
	wb_u64(&w, m->seq);
	WB_LIT(&w, "@ringmx>\r\nX-Ringmx-Load-Id: ");
	wb_put(&w, e->idpfx, e->idpfx_len);
	wb_u64(&w, m->seq);
	WB_LIT(&w, "\r\nX-Ringmx-Load-Sum: ");
	wb_put(&w, v->sum_hex, 16);
	WB_LIT(&w, "\r\nFrom: <");
	wb_put(&w, addr, load_pattern_fmt(addr, &o->from, gseq));
	WB_LIT(&w, ">\r\nTo: <");
	wb_put(&w, addr, load_pattern_fmt(addr, &o->to, gseq * o->rcpts));
	WB_LIT(&w, ">\r\nSubject: ringmx-load ");
	wb_u64(&w, m->seq);
	WB_LIT(&w, "\r\n");
	date_refresh(e);
	wb_put(&w, e->date, e->date_len);
	WB_LIT(&w, "\r\n");
	c->hdr_len = w.len;
}

static void put_mail(struct eng *e, struct wbuf *w, const struct msg *m)
{
	char addr[2 * LOAD_PATTERN_MAX + 24];
	uint64_t gseq = m->seq * e->o->threads + e->t->id;
	WB_LIT(w, "MAIL FROM:<");
	wb_put(w, addr, load_pattern_fmt(addr, &e->o->from, gseq));
	WB_LIT(w, ">\r\n");
}

static void put_rcpt(struct eng *e, struct wbuf *w, const struct msg *m, unsigned i)
{
	char addr[2 * LOAD_PATTERN_MAX + 24];
	uint64_t gseq = m->seq * e->o->threads + e->t->id;
	WB_LIT(w, "RCPT TO:<");
	wb_put(w, addr, load_pattern_fmt(addr, &e->o->to, gseq * e->o->rcpts + i));
	WB_LIT(w, ">\r\n");
}

static void put_proxy(struct eng *e, struct conn *c, struct wbuf *w)
{
	struct sockaddr_storage src, dst;
	socklen_t sl = sizeof(src), dl = sizeof(dst);
	if (getsockname(c->fd, (struct sockaddr *)&src, &sl) < 0 ||
	    getpeername(c->fd, (struct sockaddr *)&dst, &dl) < 0) {
		WB_LIT(w, "PROXY UNKNOWN\r\n");
		return;
	}
	bool v6 = src.ss_family == AF_INET6;
	const void *sa = v6 ? (void *)&((struct sockaddr_in6 *)&src)->sin6_addr
	                    : (void *)&((struct sockaddr_in *)&src)->sin_addr;
	const void *da = v6 ? (void *)&((struct sockaddr_in6 *)&dst)->sin6_addr
	                    : (void *)&((struct sockaddr_in *)&dst)->sin_addr;
	uint16_t sp = v6 ? ((struct sockaddr_in6 *)&src)->sin6_port : ((struct sockaddr_in *)&src)->sin_port;
	uint16_t dp = v6 ? ((struct sockaddr_in6 *)&dst)->sin6_port : ((struct sockaddr_in *)&dst)->sin_port;
	if (e->o->proxy == LOAD_PROXY_V1) {
		char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN], line[160];
		inet_ntop(src.ss_family, sa, s, sizeof(s));
		inet_ntop(src.ss_family, da, d, sizeof(d));
		int k = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n", v6 ? "TCP6" : "TCP4",
		                 s, d, ntohs(sp), ntohs(dp));
		wb_put(w, line, (size_t)k);
		return;
	}
	/* v2: signature, ver 2 | cmd PROXY, AF_INET|STREAM or AF_INET6|STREAM, length,
	 * then src addr, dst addr, src port, dst port (HAProxy proxy-protocol.txt 2.2). */
	static const char sig[12] = "\r\n\r\n\0\r\nQUIT\n";
	unsigned alen = v6 ? 16 : 4;
	unsigned char h[4] = { 0x21, v6 ? 0x21 : 0x11, 0, (unsigned char)(alen * 2 + 4) };
	wb_put(w, sig, sizeof(sig));
	wb_put(w, h, sizeof(h));
	wb_put(w, sa, alen);
	wb_put(w, da, alen);
	wb_put(w, &sp, 2); /* already network order */
	wb_put(w, &dp, 2);
}

/* Drops the first n bytes of the pending iovecs (after a short send, or once they are
 * encrypted). */
static void iov_skip(struct conn *c, size_t skip)
{
	while (skip && c->mh.msg_iovlen) {
		struct iovec *v = c->mh.msg_iov;
		if (skip >= v->iov_len) {
			skip -= v->iov_len;
			c->mh.msg_iov++;
			c->mh.msg_iovlen--;
		} else {
			v->iov_base = (char *)v->iov_base + skip;
			v->iov_len -= skip;
			skip = 0;
		}
	}
}

/* ---- TLS output: plaintext iovecs -> wolfSSL -> c->tls.io.out -> one send ---- */

static void tls_send_sqe(struct eng *e, struct conn *c)
{
	struct load_tls *t = &c->tls;
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_send(sqe, c->fd, t->io.out + t->out_sent, t->out_busy - t->out_sent,
	                   MSG_NOSIGNAL | MSG_WAITALL);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, c->idx));
	c->send_inflight = true;
	c->tls_sending = true;
}

/* Sends whatever ciphertext is queued, unless a send is already in flight (its
 * completion calls this again). */
static void tls_kick(struct eng *e, struct conn *c)
{
	struct load_tls *t = &c->tls;
	if (c->send_inflight || t->io.out_len == 0 || c->phase != P_OPEN)
		return;
	t->out_busy = t->io.out_len;
	t->out_sent = 0;
	tls_send_sqe(e, c);
}

/* Encrypts pending plaintext while the ciphertext buffer is below its target. Small
 * iovecs (commands, headers, the tail) are gathered into one record; a long run of the
 * body template is encrypted straight from the template. Returns false if the
 * connection was closed. */
static bool tls_pump(struct eng *e, struct conn *c)
{
	struct load_tls *t = &c->tls;
	while (c->out_done < c->out_total && t->io.out_len < TLS_OUT_TARGET) {
		const struct iovec *v = c->mh.msg_iov;
		const char *p;
		size_t n;
		if (v->iov_len >= TLS_REC || c->mh.msg_iovlen == 1) {
			n = v->iov_len < TLS_REC ? v->iov_len : TLS_REC;
			p = v->iov_base;
			iov_skip(c, n);
		} else {
			n = 0;
			while (n < TLS_REC && c->mh.msg_iovlen) {
				v = c->mh.msg_iov;
				size_t take = v->iov_len < TLS_REC - n ? v->iov_len : TLS_REC - n;
				memcpy(e->tls_wr + n, v->iov_base, take);
				iov_skip(c, take);
				n += take;
			}
			p = e->tls_wr;
		}
		char err[128];
		if (load_tls_write(t, p, n, err, sizeof(err)) < 0) {
			tls_note(e, "wolfSSL_write: ", err);
			conn_close(e, c, WHY_PROTOCOL);
			return false;
		}
		c->out_done += n;
	}
	return true;
}

static void plain_send(struct eng *e, struct conn *c)
{
	struct io_uring_sqe *sqe = eng_sqe(e);
	io_uring_prep_sendmsg(sqe, c->fd, &c->mh, MSG_NOSIGNAL | MSG_WAITALL);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, c->idx));
	c->send_inflight = true;
}

/* The single exit for output (see the TLS note at the top). */
static void conn_submit_send(struct eng *e, struct conn *c)
{
	if (c->tls.io.ssl) {
		if (tls_pump(e, c))
			tls_kick(e, c);
		return;
	}
	plain_send(e, c);
}

/* Output is still being produced: the plaintext send is in flight, or under TLS not
 * all plaintext is encrypted yet (the iovecs and c->hdr are still referenced). */
static bool conn_out_busy(const struct conn *c)
{
	return c->tls.io.ssl ? c->out_done < c->out_total : c->send_inflight;
}

/* Starts the client handshake: after connect (--tls) or after 220 to STARTTLS. The
 * ClientHello is queued behind anything already in c->tls.io.out (a PROXY header). */
static void tls_begin(struct eng *e, struct conn *c)
{
	if (load_tls_start(e->tls_ctx, &c->tls, e->o) < 0)
		die_oom();
	c->tls.hs_start = e->now;
	if (exp_empty(c)) /* STARTTLS: no reply is awaited, bound the handshake itself */
		c->deadline = e->now + (uint64_t)(e->o->timeout * (double)NS);
	char err[128];
	if (load_tls_handshake(&c->tls, err, sizeof(err)) < 0) {
		tls_note(e, "handshake: ", err);
		conn_close(e, c, WHY_TLS);
		return;
	}
	tls_kick(e, c);
}

/* Body placement: iov[1] = unique headers, iov[2] = template prefix, and the variant's
 * tail starts the post buffer. Everything written after it goes to post. */
static struct wbuf *place_body(struct eng *e, struct conn *c, struct msg *m, struct wbuf *post,
                               bool *placed)
{
	const struct load_variant *v = &e->body->v[m->variant];
	if (*placed) {
		fprintf(stderr, "ringmx-load: two bodies in one write (bug)\n");
		abort();
	}
	*placed = true;
	c->iov[1] = (struct iovec){ c->hdr, c->hdr_len };
	c->iov[2] = (struct iovec){ e->body->tmpl, v->prefix };
	wb_put(post, v->tail, v->tail_len);
	return post;
}

static struct wbuf *put_bdat(struct eng *e, struct conn *c, struct msg *m, struct wbuf *w,
                             struct wbuf *post, bool *placed)
{
	hdr_build(e, c, m);
	m->wire = c->hdr_len + e->body->v[m->variant].size;
	WB_LIT(w, "BDAT ");
	wb_u64(w, m->wire);
	WB_LIT(w, " LAST\r\n");
	w = place_body(e, c, m, post, placed);
	exp_push(e, c, EXP_BDAT | (c->tx_slot ? EXP_SLOT : 0));
	return w;
}

static unsigned msg_start(struct eng *e, struct conn *c, uint64_t t_start)
{
	unsigned slot = c->msgs_started & 1u;
	struct msg *m = &c->msg[slot];
	if (m->live) {
		fprintf(stderr, "ringmx-load: message slot busy (bug)\n");
		abort();
	}
	memset(m, 0, sizeof(*m));
	m->live = true;
	m->seq = e->seq++;
	m->t_start = t_start;
	m->variant = e->body->nv > 1 ? (uint8_t)(rng_next(e) % e->body->nv) : 0;
	c->msgs_started++;
	c->tx_slot = slot;
	e->inflight++;
	e->t->st.attempted++;
	return slot;
}

/* Builds one write from c->out_flags and submits it: the only place that produces
 * output, called once per loop for each dirty connection without a send in flight. */
static void conn_flush(struct eng *e, struct conn *c)
{
	const struct load_opts *o = e->o;
	c->dirty = false;
	if (c->phase != P_OPEN || conn_out_busy(c) || !c->out_flags)
		return;
	unsigned f = c->out_flags;
	c->out_flags = 0;
	struct wbuf pre = { c->pre, 0, c->cmd_cap }, post = { c->post, 0, c->cmd_cap };
	struct wbuf *w = &pre;
	bool placed = false;
	c->iov[1].iov_len = c->iov[2].iov_len = 0;

	if (f & OUT_PROXY)
		put_proxy(e, c, w);
	if (f & OUT_EHLO) {
		WB_LIT(w, "EHLO ");
		wb_put(w, o->ehlo, strlen(o->ehlo));
		WB_LIT(w, "\r\n");
		exp_push(e, c, EXP_EHLO);
	}
	if (f & OUT_HELO) {
		WB_LIT(w, "HELO ");
		wb_put(w, o->ehlo, strlen(o->ehlo));
		WB_LIT(w, "\r\n");
		exp_push(e, c, EXP_HELO);
	}
	if (f & OUT_STARTTLS) {
		WB_LIT(w, "STARTTLS\r\n"); /* last of its group (RFC 3207, RFC 2920) */
		exp_push(e, c, EXP_STARTTLS);
	}
	if (f & OUT_BODY) {
		struct msg *m = &c->msg[c->body_slot];
		hdr_build(e, c, m);
		m->wire = c->hdr_len + e->body->v[m->variant].size;
		w = place_body(e, c, m, &post, &placed);
		WB_LIT(w, ".\r\n");
		exp_push(e, c, EXP_DOT | (c->body_slot ? EXP_SLOT : 0));
	}
	if (f & OUT_RSET) {
		WB_LIT(w, "RSET\r\n");
		exp_push(e, c, EXP_RSET);
	}
	if (f & OUT_NEXT) {
		uint64_t t_start = 0;
		switch (conn_next(e, c, &t_start)) {
		case NEXT_START: {
			unsigned slot = msg_start(e, c, t_start);
			struct msg *m = &c->msg[slot];
			unsigned es = slot ? EXP_SLOT : 0;
			put_mail(e, w, m);
			exp_push(e, c, EXP_MAIL | es);
			if (c->pipe) {
				for (unsigned i = 0; i < o->rcpts; i++) {
					put_rcpt(e, w, m, i);
					exp_push(e, c, EXP_RCPT | es);
				}
				m->rcpt_sent = (uint16_t)o->rcpts;
				if (o->bdat) {
					w = put_bdat(e, c, m, w, &post, &placed);
				} else {
					WB_LIT(w, "DATA\r\n");
					exp_push(e, c, EXP_DATA | es);
				}
			}
			break;
		}
		case NEXT_QUIT:
			f |= OUT_QUIT;
			break;
		case NEXT_IDLE:
			idle_push(e, c);
			break;
		}
	}
	if (f & OUT_RCPT) {
		struct msg *m = &c->msg[c->tx_slot];
		put_rcpt(e, w, m, m->rcpt_sent++);
		exp_push(e, c, EXP_RCPT | (c->tx_slot ? EXP_SLOT : 0));
	}
	if (f & OUT_DATA) {
		struct msg *m = &c->msg[c->tx_slot];
		if (o->bdat) {
			w = put_bdat(e, c, m, w, &post, &placed);
		} else {
			WB_LIT(w, "DATA\r\n");
			exp_push(e, c, EXP_DATA | (c->tx_slot ? EXP_SLOT : 0));
		}
	}
	if ((f & OUT_QUIT) && !c->quit_sent) {
		WB_LIT(w, "QUIT\r\n");
		exp_push(e, c, EXP_QUIT);
		c->quit_sent = true;
	}

	/* Assemble [pre][hdr][template][post], dropping empty pieces. */
	struct iovec v[4] = {
		{ c->pre, pre.len }, c->iov[1], c->iov[2], { c->post, post.len },
	};
	unsigned k = 0;
	size_t total = 0;
	for (unsigned i = 0; i < 4; i++) {
		if (v[i].iov_len) {
			c->iov[k++] = v[i];
			total += v[i].iov_len;
		}
	}
	if (!total)
		return; /* e.g. went idle under --rate */
	memset(&c->mh, 0, sizeof(c->mh));
	c->mh.msg_iov = c->iov;
	c->mh.msg_iovlen = k;
	c->out_total = total;
	c->out_done = 0;
	conn_submit_send(e, c);
}

/* ---- replies ---- */

static void fatal_capability(struct eng *e, struct conn *c, const char *msg)
{
	struct load_thread *t = e->t;
	if (!t->fatal) {
		t->fatal = 2;
		snprintf(t->fatal_msg, sizeof(t->fatal_msg), "%s (%s)", msg,
		         e->o->targets[c->target].text);
	}
	__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
}

static uint16_t first_fail(const struct msg *m, int code)
{
	if ((!m->mail_ok || m->rcpt_ok == 0) && m->fail_code)
		return m->fail_code;
	return (uint16_t)code;
}

/* One complete reply (the final line of a possibly multi-line reply). */
static void conn_reply(struct eng *e, struct conn *c, int code, const char *text, size_t n)
{
	if (exp_empty(c)) {
		conn_close(e, c, WHY_PROTOCOL); /* a reply nobody asked for */
		return;
	}
	unsigned x = exp_head(c);
	c->exp_head++;
	c->deadline = exp_empty(c) ? 0 : e->now + (uint64_t)(e->o->timeout * (double)NS);
	unsigned slot = (x & EXP_SLOT) ? 1 : 0;
	struct msg *m = &c->msg[slot];
	bool ok = code >= 200 && code < 300;
	struct load_stats *st = &e->t->st;

	switch (x & ~EXP_SLOT) {
	case EXP_GREETING:
		if (ok) {
			c->out_flags |= OUT_EHLO;
		} else {
			st->session_errors++;
			c->consec_fail++;
			c->out_flags |= OUT_QUIT;
		}
		break;
	case EXP_EHLO:
	case EXP_HELO:
		if (!ok && (x & ~EXP_SLOT) == EXP_EHLO && code >= 500) {
			c->cap_pipe = c->cap_chunk = false;
			c->out_flags |= OUT_HELO; /* RFC 5321 4.1.4: fall back to HELO */
			break;
		}
		if (!ok) {
			st->session_errors++;
			c->consec_fail++;
			c->out_flags |= OUT_QUIT;
			break;
		}
		if (e->o->tls == LOAD_TLS_STARTTLS && !c->tls.io.ssl) {
			/* Like --bdat: measuring plaintext when TLS was asked for would be a
			 * silent lie, so a server without STARTTLS ends the run (exit 2). */
			if (!c->cap_starttls) {
				fatal_capability(e, c, "server does not advertise STARTTLS (RFC 3207); --starttls needs it");
				c->out_flags |= OUT_QUIT;
			} else {
				c->out_flags |= OUT_STARTTLS;
			}
			break;
		}
		c->consec_fail = 0;
		c->ehlo_ok = true;
		c->pipe = e->o->pipelining && c->cap_pipe;
		if (e->o->pipelining && !c->cap_pipe)
			st->lockstep_sessions++;
		if (e->o->bdat && !c->cap_chunk) {
			fatal_capability(e, c, "server does not advertise CHUNKING (RFC 3030); --bdat needs it");
			c->out_flags |= OUT_QUIT;
			break;
		}
		c->out_flags |= OUT_NEXT;
		break;
	case EXP_RSET:
		break;
	case EXP_MAIL:
		m->mail_ok = ok;
		if (!ok && !m->fail_code)
			m->fail_code = (uint16_t)code;
		if (!c->pipe) {
			if (ok) {
				c->out_flags |= OUT_RCPT;
			} else {
				msg_finish(e, c, slot, false, code, text, n);
				c->out_flags |= OUT_NEXT;
			}
		}
		break;
	case EXP_RCPT:
		if (ok) {
			m->rcpt_ok++;
		} else {
			st->rcpt_rejected++;
			if (!m->fail_code)
				m->fail_code = (uint16_t)code;
		}
		if (!c->pipe) {
			if (m->rcpt_sent < e->o->rcpts) {
				c->out_flags |= OUT_RCPT;
			} else if (m->rcpt_ok) {
				c->out_flags |= OUT_DATA;
			} else {
				msg_finish(e, c, slot, false, first_fail(m, code), text, n);
				c->out_flags |= OUT_RSET | OUT_NEXT;
			}
		}
		break;
	case EXP_DATA:
		if (code == 354) {
			c->body_slot = slot;
			c->out_flags |= OUT_BODY;
			/* RFC 2920: the next MAIL may follow "." in the same group. */
			if (c->pipe)
				c->out_flags |= OUT_NEXT;
		} else {
			msg_finish(e, c, slot, false, first_fail(m, code), text, n);
			c->out_flags |= OUT_RSET | OUT_NEXT;
		}
		break;
	case EXP_DOT:
		msg_finish(e, c, slot, ok, code, text, n);
		if (!c->pipe)
			c->out_flags |= OUT_NEXT;
		break;
	case EXP_BDAT:
		msg_finish(e, c, slot, ok, ok ? code : first_fail(m, code), text, n);
		if (!ok && (!m->mail_ok || !m->rcpt_ok))
			c->out_flags |= OUT_RSET;
		c->out_flags |= OUT_NEXT;
		break;
	case EXP_QUIT:
		conn_close(e, c, c->consec_fail ? WHY_SESSION : WHY_OK);
		return;
	case EXP_STARTTLS:
		if (code == 220) {
			c->starttls_go = true; /* conn_feed starts the handshake after this line */
		} else {
			char why[80];
			snprintf(why, sizeof(why), "%d %.60s", code, text);
			for (char *q = why; *q; q++)
				if ((unsigned char)*q < ' ')
					*q = ' ';
			tls_note(e, "STARTTLS refused: ", why);
			st->session_errors++;
			c->consec_fail++;
			c->out_flags |= OUT_QUIT;
		}
		break;
	}
	if (c->out_flags)
		dirty_push(e, c);
}

/* EHLO keywords are looked for on every line of the EHLO reply. */
static void ehlo_keyword(struct conn *c, const char *s, size_t n)
{
	size_t k = 0;
	while (k < n && s[k] != ' ')
		k++;
	if (k == 10 && strncasecmp(s, "PIPELINING", 10) == 0)
		c->cap_pipe = true;
	else if (k == 8 && strncasecmp(s, "CHUNKING", 8) == 0)
		c->cap_chunk = true;
	else if (k == 8 && strncasecmp(s, "STARTTLS", 8) == 0)
		c->cap_starttls = true;
}

static void conn_line(struct eng *e, struct conn *c, const char *l, size_t n)
{
	if (n && l[n - 1] == '\n')
		n--;
	if (n && l[n - 1] == '\r')
		n--;
	if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' ||
	    l[2] > '9' || (n > 3 && l[3] != ' ' && l[3] != '-')) {
		conn_close(e, c, WHY_PROTOCOL);
		return;
	}
	int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
	const char *text = n > 4 ? l + 4 : l + n;
	size_t tn = n > 4 ? n - 4 : 0;
	if (!exp_empty(c) && (exp_head(c) & ~EXP_SLOT) == EXP_EHLO && c->in_reply)
		ehlo_keyword(c, text, tn); /* first line is the greeting, not a keyword */
	if (n > 3 && l[3] == '-') {
		c->in_reply = true;
		return;
	}
	c->in_reply = false;
	conn_reply(e, c, code, text, tn);
}

/* Entry point for received plaintext (see TLS note at the top). */
static void conn_feed(struct eng *e, struct conn *c, const char *p, size_t n)
{
	while (n && c->phase == P_OPEN) {
		const char *nl = memchr(p, '\n', n);
		size_t len = nl ? (size_t)(nl - p) + 1 : n;
		if (!nl || c->line_len) {
			/* Carry: keep at most LINE_CAP bytes of an overlong line; the code and
			 * the start of the text are all we look at. */
			size_t room = LINE_CAP - c->line_len;
			size_t take = len < room ? len : room;
			memcpy(c->line + c->line_len, p, take);
			c->line_len += (unsigned)take;
			if (nl) {
				conn_line(e, c, c->line, c->line_len);
				c->line_len = 0;
			}
		} else {
			conn_line(e, c, p, len);
		}
		p += len;
		n -= len;
		if (c->starttls_go) {
			c->starttls_go = false;
			/* The server must wait for our ClientHello. Bytes after its 220 were
			 * written before TLS, and reading them as the first TLS bytes would
			 * be the client side of response injection (CVE-2011-0411). */
			if (n || c->line_len) {
				tls_note(e, "server sent data after its 220 reply to STARTTLS", "");
				conn_close(e, c, WHY_PROTOCOL);
				return;
			}
			tls_begin(e, c);
			return;
		}
	}
}

/* ---- TLS input ---- */

static void tls_seen(struct load_stats *st, const char *name)
{
	for (unsigned i = 0; i < st->tls_nseen; i++) {
		if (!strcmp(st->tls_seen[i].name, name)) {
			st->tls_seen[i].n++;
			return;
		}
	}
	if (st->tls_nseen < LOAD_TLS_SEEN) {
		snprintf(st->tls_seen[st->tls_nseen].name, sizeof(st->tls_seen[0].name), "%s", name);
		st->tls_seen[st->tls_nseen++].n = 1;
	}
}

static void tls_handshake_done(struct eng *e, struct conn *c)
{
	struct load_stats *st = &e->t->st;
	char name[sizeof(st->tls_seen[0].name)];
	bool resumed;
	st->tls_handshakes++;
	hist_record(&st->tls_hist, e->now > c->tls.hs_start ? e->now - c->tls.hs_start : 0);
	load_tls_describe(&c->tls, name, sizeof(name), &resumed);
	if (resumed)
		st->tls_resumed++;
	tls_seen(st, name);
	if (e->o->tls == LOAD_TLS_STARTTLS) {
		/* RFC 3207 4.2: forget everything learnt before TLS and ask again. */
		c->cap_pipe = c->cap_chunk = c->cap_starttls = false;
		c->out_flags |= OUT_EHLO;
		dirty_push(e, c);
	}
}

static void conn_eof(struct eng *e, struct conn *c)
{
	bool quitting = exp_empty(c) || (exp_head(c) & ~EXP_SLOT) == EXP_QUIT;
	conn_close(e, c, quitting && !c->msg[0].live && !c->msg[1].live ? WHY_OK : WHY_DISCONNECT);
}

/* Ciphertext from the ring: wolfSSL reads it through the view (load_tls.c io_recv)
 * until it wants more, which leaves the view empty, so the caller can return the
 * provided buffer right after. */
static void tls_on_data(struct eng *e, struct conn *c, const char *p, size_t n)
{
	struct load_tls *t = &c->tls;
	char err[128];
	t->io.in = p;
	t->io.in_len = n;
	if (!t->io.done) {
		int r = load_tls_handshake(t, err, sizeof(err));
		if (r < 0) {
			tls_note(e, "handshake: ", err);
			conn_close(e, c, WHY_TLS);
			return;
		}
		if (r == 0) {
			tls_kick(e, c);
			t->io.in = NULL;
			t->io.in_len = 0;
			return;
		}
		tls_handshake_done(e, c);
	}
	for (;;) {
		long k = load_tls_read(t, e->tls_rd, TLS_REC, err, sizeof(err));
		if (k > 0) {
			conn_feed(e, c, e->tls_rd, (size_t)k);
			if (c->phase != P_OPEN || !c->tls.io.ssl)
				return; /* closed (and the WOLFSSL freed) while parsing */
			continue;
		}
		if (k == 0)
			break;
		if (k == -2) { /* close_notify: the same as a TCP FIN */
			conn_eof(e, c);
			return;
		}
		tls_note(e, "wolfSSL_read: ", err);
		conn_close(e, c, WHY_PROTOCOL);
		return;
	}
	if (t->io.in_len) { /* wolfSSL stopped early: those bytes would be lost */
		tls_note(e, "wolfSSL left received bytes unread", "");
		conn_close(e, c, WHY_PROTOCOL);
		return;
	}
	t->io.in = NULL;
	tls_kick(e, c); /* alerts or key updates wolfSSL wrote while reading */
}

/* ---- CQE handlers ---- */

static void buf_recycle(struct eng *e, unsigned bid)
{
	io_uring_buf_ring_add(e->br, e->bufs + (size_t)bid * RECV_BUF_SIZE, RECV_BUF_SIZE,
	                      (unsigned short)bid, io_uring_buf_ring_mask(e->br_entries),
	                      (int)e->br_pending++);
}

static void conn_on_recv(struct eng *e, struct conn *c, struct io_uring_cqe *cqe)
{
	int res = cqe->res;
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more)
		c->recv_armed = false;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		if (res > 0 && c->phase == P_OPEN) {
			const char *p = e->bufs + (size_t)bid * RECV_BUF_SIZE;
			if (c->tls.io.ssl)
				tls_on_data(e, c, p, (size_t)res);
			else
				conn_feed(e, c, p, (size_t)res);
		}
		buf_recycle(e, bid); /* parsed, carried or pulled by wolfSSL: back to the ring */
	}
	if (c->phase != P_OPEN)
		return;
	if (res > 0) {
		if (!more)
			rearm_push(e, c);
		return;
	}
	if (res == -ENOBUFS) {
		e->t->st.enobufs++;
		rearm_push(e, c);
		return;
	}
	if (res == 0) {
		conn_eof(e, c);
		return;
	}
	conn_close(e, c, WHY_DISCONNECT);
}

/* A ciphertext send completed: drop what went out, encrypt more of the pending
 * plaintext, send again. */
static void tls_on_send(struct eng *e, struct conn *c, int res)
{
	struct load_tls *t = &c->tls;
	e->t->st.bytes_out += (uint64_t)res;
	t->out_sent += (size_t)res;
	if (t->out_sent < t->out_busy) {
		e->t->st.short_sends++;
		tls_send_sqe(e, c);
		return;
	}
	/* Ciphertext queued while the send was in flight moves to the front. */
	memmove(t->io.out, t->io.out + t->out_busy, t->io.out_len - t->out_busy);
	t->io.out_len -= t->out_busy;
	t->out_busy = t->out_sent = 0;
	if (!tls_pump(e, c))
		return;
	tls_kick(e, c);
	if (!conn_out_busy(c) && c->out_flags)
		dirty_push(e, c);
}

static void conn_on_send(struct eng *e, struct conn *c, int res)
{
	bool tls = c->tls_sending;
	c->send_inflight = false;
	c->tls_sending = false;
	if (c->phase != P_OPEN)
		return;
	if (res < 0) {
		conn_close(e, c, WHY_DISCONNECT);
		return;
	}
	if (tls) {
		tls_on_send(e, c, res);
		return;
	}
	e->t->st.bytes_out += (uint64_t)res;
	c->out_done += (size_t)res;
	if (c->out_done < c->out_total) {
		/* Short send despite MSG_WAITALL (e.g. a signal): skip what went out. */
		e->t->st.short_sends++;
		iov_skip(c, (size_t)res);
		plain_send(e, c);
		return;
	}
	if (c->tls.io.ssl) /* the STARTTLS line went out after the 220 came in: send the hello */
		tls_kick(e, c);
	if (c->out_flags)
		dirty_push(e, c);
}

static void eng_cqe(struct eng *e, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	enum op op = (enum op)(ud >> 56);
	uint32_t gen = (uint32_t)(ud >> 32) & 0xffffffu;
	uint32_t idx = (uint32_t)ud;
	if (op == OP_CANCEL || op == OP_CLOSE)
		return; /* nothing waits on these; close errors on a dead socket are moot */
	struct conn *c = &e->conns[idx];
	if ((c->gen & 0xffffffu) != gen) {
		e->t->st.stale_cqes++;
		if (cqe->flags & IORING_CQE_F_BUFFER)
			buf_recycle(e, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		return;
	}
	switch (op) {
	case OP_CONNECT:
		c->connecting = false;
		conn_on_connect(e, c, cqe->res);
		break;
	case OP_RECV:
		conn_on_recv(e, c, cqe);
		break;
	case OP_SEND:
		conn_on_send(e, c, cqe->res);
		break;
	default:
		break;
	}
	conn_finalize(e, c);
}

/* ---- housekeeping ---- */

static void eng_housekeeping(struct eng *e)
{
	const struct load_opts *o = e->o;
	if (!e->stopping && (__atomic_load_n(&load_run.stop, __ATOMIC_RELAXED) ||
	                     (load_run.deadline_ns && e->now >= load_run.deadline_ns))) {
		e->stopping = true;
		e->stop_ns = e->now;
	}
	bool drain_over = e->stopping && e->now > e->stop_ns + (uint64_t)(o->timeout * (double)NS);
	if (e->now >= e->next_tick || drain_over) {
		e->next_tick = e->now + TICK_NS;
		for (unsigned i = 0; i < e->n; i++) {
			struct conn *c = &e->conns[i];
			if ((c->phase == P_OPEN || c->phase == P_CONNECTING) && c->deadline &&
			    e->now >= c->deadline)
				conn_close(e, c, WHY_TIMEOUT);
			else if (drain_over && (c->phase == P_OPEN || c->phase == P_CONNECTING))
				conn_close(e, c, exp_empty(c) ? WHY_OK : WHY_TIMEOUT);
			else if (c->phase == P_FREE && e->now >= c->backoff_until) {
				if (e->stopping)
					conn_retire(e, c);
				else
					conn_connect(e, c);
			}
		}
	}
	/* Idle connections: start due messages under --rate; QUIT once stopping. */
	while (e->nidle) {
		struct conn *c = e->idle[e->nidle - 1];
		if (!c->waiting || c->phase != P_OPEN) {
			e->nidle--;
			c->idle = false;
			c->waiting = false;
			continue;
		}
		bool budget_left = c->reserved || e->budget > 0;
		if (!e->stopping && budget_left && e->rate_next > e->now)
			break; /* nothing due yet */
		e->nidle--;
		c->idle = false;
		c->waiting = false;
		c->out_flags |= OUT_NEXT; /* conn_next decides: start, or QUIT */
		dirty_push(e, c);
	}
}

static void eng_publish(struct eng *e)
{
	struct load_thread *t = e->t;
	__atomic_store_n(&t->pub_accepted, t->st.accepted, __ATOMIC_RELAXED);
	__atomic_store_n(&t->pub_done, t->st.accepted + t->st.rejected + t->st.failed, __ATOMIC_RELAXED);
	__atomic_store_n(&t->pub_inflight, e->inflight, __ATOMIC_RELAXED);
	__atomic_store_n(&t->pub_errors, t->st.rejected + t->st.failed + t->st.connect_errors +
	                 t->st.timeouts + t->st.session_errors, __ATOMIC_RELAXED);
}

static uint64_t eng_wait_ns(struct eng *e)
{
	uint64_t until = e->next_tick;
	if (e->rate_step && e->nidle && e->rate_next < until)
		until = e->rate_next;
	return until > e->now ? until - e->now : 0;
}

/* ---- setup ---- */

static unsigned pow2_at_least(unsigned v)
{
	unsigned p = 1;
	while (p < v)
		p <<= 1;
	return p;
}

static int eng_ring_init(struct eng *e)
{
	unsigned n = e->n ? e->n : 1;
	unsigned sq = pow2_at_least(n * 2 < 256 ? 256 : (n * 2 > 4096 ? 4096 : n * 2));
	unsigned cq = pow2_at_least(n * 8 < 4096 ? 4096 : n * 8);
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	/* SINGLE_ISSUER (6.0) + DEFER_TASKRUN (6.1): completions run only when this thread
	 * waits, in one batch; CQSIZE: multishot recv must never overflow the CQ; CLAMP
	 * caps our sizes at the kernel limits. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
	          IORING_SETUP_CLAMP;
	p.cq_entries = cq;
	int ret = io_uring_queue_init_params(sq, &e->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
		p.cq_entries = cq;
		ret = io_uring_queue_init_params(sq, &e->ring, &p);
	}
	if (ret < 0)
		return ret;
	io_uring_register_ring_fd(&e->ring); /* 5.18; an optimisation only */

	/* Provided buffer ring by hand (liburing 2.3): one mmap holding the ring entries
	 * followed by the buffers, init, register, then add every buffer. */
	e->br_entries = pow2_at_least(n * 2 < 256 ? 256 : n * 2);
	if (e->br_entries > 32768)
		e->br_entries = 32768;
	size_t ring_bytes = (size_t)e->br_entries * sizeof(struct io_uring_buf);
	e->br_map_len = ring_bytes + (size_t)e->br_entries * RECV_BUF_SIZE;
	void *mem = mmap(NULL, e->br_map_len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	e->br = mem;
	e->bufs = (char *)mem + ring_bytes;
	io_uring_buf_ring_init(e->br);
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)e->br;
	reg.ring_entries = e->br_entries;
	reg.bgid = BGID;
	ret = io_uring_register_buf_ring(&e->ring, &reg, 0);
	if (ret < 0)
		return ret;
	for (unsigned i = 0; i < e->br_entries; i++)
		io_uring_buf_ring_add(e->br, e->bufs + (size_t)i * RECV_BUF_SIZE, RECV_BUF_SIZE,
		                      (unsigned short)i, io_uring_buf_ring_mask(e->br_entries), (int)i);
	io_uring_buf_ring_advance(e->br, (int)e->br_entries);
	return 0;
}

static void eng_conns_init(struct eng *e)
{
	const struct load_opts *o = e->o;
	e->conns = calloc(e->n ? e->n : 1, sizeof(*e->conns));
	e->dirty = calloc(e->n ? e->n : 1, sizeof(*e->dirty));
	e->rearm = calloc(e->n ? e->n : 1, sizeof(*e->rearm));
	e->idle = calloc(e->n ? e->n : 1, sizeof(*e->idle));
	if (!e->conns || !e->dirty || !e->rearm || !e->idle)
		die_oom();
	/* Pipelined write: RSET + MAIL + rcpts x RCPT + DATA/BDAT + QUIT, each address at
	 * most 2 patterns + a 20-digit number; PROXY/EHLO lines are shorter than that. */
	size_t cmd_cap = 512 + LOAD_EHLO_MAX + (size_t)(o->rcpts + 1) * (2 * LOAD_PATTERN_MAX + 64);
	unsigned exp_cap = pow2_at_least(2 * (o->rcpts + 6));
	for (unsigned i = 0; i < e->n; i++) {
		struct conn *c = &e->conns[i];
		c->fd = -1;
		c->idx = i;
		c->phase = P_FREE;
		c->target = (e->t->first_conn + i) % o->ntargets;
		c->cmd_cap = cmd_cap;
		c->pre = malloc(2 * cmd_cap + exp_cap);
		if (!c->pre)
			die_oom();
		c->post = c->pre + cmd_cap;
		c->exp = (uint8_t *)c->post + cmd_cap;
		c->exp_mask = exp_cap - 1;
		if (o->tls != LOAD_TLS_NONE) {
			/* ~52 KiB per TLS connection, on top of wolfSSL's own buffers. */
			c->tls.io.out = malloc(TLS_OUT_CAP);
			if (!c->tls.io.out)
				die_oom();
			c->tls.io.out_cap = TLS_OUT_CAP;
		}
	}
}

static void eng_fini(struct eng *e)
{
	if (e->br) {
		io_uring_unregister_buf_ring(&e->ring, BGID);
		munmap(e->br, e->br_map_len);
	}
	io_uring_queue_exit(&e->ring);
	for (unsigned i = 0; e->conns && i < e->n; i++) {
		if (e->conns[i].fd >= 0)
			close(e->conns[i].fd);
		free(e->conns[i].pre);
		load_tls_forget(&e->conns[i].tls);
		free(e->conns[i].tls.io.out);
	}
	load_tls_ctx_free(e->tls_ctx);
	free(e->tls_rd);
	free(e->conns);
	free(e->dirty);
	free(e->rearm);
	free(e->idle);
	free(e->man);
}

static void eng_pin(struct load_thread *t)
{
	if (t->cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(t->cpu, &set);
	int ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (ret)
		fprintf(stderr, "ringmx-load: thread %u: cannot pin to CPU %d: %s\n", t->id, t->cpu,
		        strerror(ret));
}

static void eng_loop(struct eng *e)
{
	while (e->live) {
		eng_housekeeping(e);
		/* Flush: at most one send per dirty connection, all submitted together. */
		for (unsigned i = 0; i < e->ndirty; i++)
			conn_flush(e, e->dirty[i]);
		e->ndirty = 0;
		for (unsigned i = 0; i < e->nrearm; i++) {
			struct conn *c = e->rearm[i];
			c->rearm = false;
			if (c->phase == P_OPEN && !c->recv_armed)
				conn_arm_recv(e, c);
		}
		e->nrearm = 0;
		if (!e->live)
			break;
		uint64_t wait = eng_wait_ns(e);
		struct __kernel_timespec ts = { .tv_sec = (long long)(wait / NS), .tv_nsec = (long long)(wait % NS) };
		struct io_uring_cqe *cqe;
		int ret = io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, &ts, NULL);
		e->now = load_now_ns();
		if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN) {
			fprintf(stderr, "ringmx-load: io_uring_submit_and_wait_timeout: %s\n", strerror(-ret));
			__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
			if (!e->t->fatal) {
				e->t->fatal = 2;
				snprintf(e->t->fatal_msg, sizeof(e->t->fatal_msg), "io_uring wait: %s",
				         strerror(-ret));
			}
			break;
		}
		unsigned head, count = 0;
		io_uring_for_each_cqe(&e->ring, head, cqe) {
			eng_cqe(e, cqe);
			count++;
		}
		/* Recycled buffers become visible and the CQ advances once per batch. */
		if (e->br_pending)
			io_uring_buf_ring_advance(e->br, (int)e->br_pending);
		io_uring_cq_advance(&e->ring, count);
		e->br_pending = 0;
		eng_publish(e);
	}
}

void *load_thread_main(void *arg)
{
	struct load_thread *t = arg;
	struct eng *e = calloc(1, sizeof(*e));
	if (!e)
		die_oom();
	e->t = t;
	e->o = t->o;
	e->body = t->body;
	e->n = t->nconns;
	e->budget = t->budget;
	e->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)t->id << 32 | (uint64_t)load_run.pid);
	e->idpfx_len = (size_t)snprintf(e->idpfx, sizeof(e->idpfx), "ringmx-load.%d.%u.",
	                                (int)load_run.pid, t->id);
	hist_init(&t->st.hist);
	hist_init(&t->st.tls_hist);
	if (load_run.manifest_fd >= 0 && !(e->man = malloc(MAN_CAP)))
		die_oom();
	eng_pin(t);
	int ret = eng_ring_init(e);
	if (ret < 0) {
		t->fatal = 2;
		snprintf(t->fatal_msg, sizeof(t->fatal_msg),
		         "io_uring setup failed: %s%s", strerror(-ret),
		         ret == -EPERM || ret == -ENOSYS
		             ? " (io_uring disabled: seccomp or kernel.io_uring_disabled?)" : "");
		__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
		eng_fini(e);
		free(e);
		return NULL;
	}
	if (e->o->tls != LOAD_TLS_NONE) {
		/* Per thread: no CTX state is shared, so nothing on the hot path locks. */
		e->tls_ctx = load_tls_ctx_new(e->o, t->fatal_msg, sizeof(t->fatal_msg));
		e->tls_rd = malloc(2 * TLS_REC);
		if (!e->tls_rd)
			die_oom();
		e->tls_wr = e->tls_rd + TLS_REC;
		if (!e->tls_ctx) {
			t->fatal = 2;
			__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
			eng_fini(e);
			free(e);
			return NULL;
		}
	}
	eng_conns_init(e);
	e->now = load_now_ns();
	if (e->o->rate > 0) {
		/* Thread t starts message k at t0 + (k * threads + t) / rate. */
		e->rate_step = (uint64_t)((double)NS * e->o->threads / e->o->rate);
		e->rate_next = load_run.t0_ns + (uint64_t)((double)NS * t->id / e->o->rate);
	}
	e->live = e->n;
	for (unsigned i = 0; i < e->n; i++) {
		struct conn *c = &e->conns[i];
		if (!budget_take(e)) {
			conn_retire(e, c);
			continue;
		}
		c->reserved = true;
		conn_connect(e, c);
	}
	eng_loop(e);
	io_uring_submit(&e->ring); /* the last closes queued by conn_finalize */
	if (e->inflight) {
		t->st.failed += e->inflight; /* only after a fatal ring error */
		e->inflight = 0;
	}
	eng_publish(e);
	if (load_run.manifest_fd >= 0)
		manifest_flush(e);
	eng_fini(e);
	free(e);
	return NULL;
}
