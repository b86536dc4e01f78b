/*
 * tools/load_conn.c - the connections of one ringmx-load worker: connect, receive,
 * send, TLS, and the SMTP replies that decide what is written next.
 *
 * Ownership: ringmx-load (issue 4; TLS from issue 5). Every function runs on the
 * worker thread that owns the connection (struct eng, load_engine.c); messages are
 * built and counted by load_tx.c.
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
#include "load_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ---- expectations ---- */

void exp_push(struct eng *e, struct conn *c, unsigned v)
{
	if (c->exp_tail - c->exp_head > c->exp_mask) {
		fprintf(stderr, "ringmx-load: expectation queue overflow (bug)\n");
		abort();
	}
	if (c->exp_tail == c->exp_head)
		c->deadline = e->now + (uint64_t)(e->o->timeout * (double)NS);
	c->exp[c->exp_tail++ & c->exp_mask] = (uint8_t)v;
}

bool exp_empty(const struct conn *c)
{
	return c->exp_head == c->exp_tail;
}

static unsigned exp_head(const struct conn *c)
{
	return c->exp[c->exp_head & c->exp_mask];
}

/* ---- connections ---- */

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

void conn_retire(struct eng *e, struct conn *c)
{
	budget_return(e, c);
	c->phase = P_RETIRED;
	e->live--;
}

/* All of the connection's requests have completed: close the fd through the ring and
 * decide whether this slot connects again (churn, --per-connection) or retires. */
void conn_finalize(struct eng *e, struct conn *c)
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

void conn_close(struct eng *e, struct conn *c, enum why why)
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

void conn_connect(struct eng *e, struct conn *c)
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

void conn_arm_recv(struct eng *e, struct conn *c)
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

void conn_on_connect(struct eng *e, struct conn *c, int res)
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

/* Builds one write from c->out_flags and submits it: the only place that produces
 * output, called once per loop for each dirty connection without a send in flight. */
void conn_flush(struct eng *e, struct conn *c)
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

void conn_on_recv(struct eng *e, struct conn *c, struct io_uring_cqe *cqe)
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

void conn_on_send(struct eng *e, struct conn *c, int res)
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
