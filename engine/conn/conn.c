/*
 * conn.c - one client connection: multishot recv into provided buffers,
 * feeding the SMTP session, batched replies (at most one send in flight),
 * timers, backpressure and teardown.
 *
 * Ownership rules
 *  - A receive buffer named by a recv CQE belongs to this connection until
 *    it is handed back with bufring_put(): at once when the session consumed
 *    it, or later when it was held because the session was paused (waiting
 *    for the sink) or its output was full. Held buffers form a FIFO linked
 *    through worker->hold_next; at CONN_HOLD_MAX the recv is cancelled so
 *    TCP pushes back on the client, and buffers the kernel filled past it
 *    are packed (hold_compact); the fair-sharing rules (send_stalled) cut
 *    off a holder that does not read its replies.
 *  - The output block is taken from the worker's pool when the session may
 *    write and returned when everything has been sent. While a send is in
 *    flight, bytes [0, send_len) belong to the kernel; the session may only
 *    append after out.len.
 *  - A slot is freed (gen bumped) only when no recv or send is in the
 *    kernel, and returned to the free stack only when it is on no list.
 *
 * Input pipeline (conn.h, enum conn_stage), one switch per CQE in
 * conn_input():  ring bytes -> [PROXY] -> [TLS] -> SMTP session.
 *  - Plaintext connections (c->tls == NULL) keep the zero-copy path:
 *    held receive buffers are fed to the session as they are (pump()).
 *  - TLS connections (section "TLS stage" below): the held buffers are
 *    ciphertext that wolfSSL pulls through conn_tls_pull() (a buffer goes
 *    back to the ring once all its bytes are copied out); decrypted bytes
 *    land in the connection's window (struct conn_tls, from the worker's
 *    pool) and go through the same smtp_session_feed(). Replies the
 *    session writes to the plaintext output block are encrypted at flush
 *    time into the ciphertext block, which is what is sent. Still at most
 *    one send in flight.
 *  - STARTTLS: the 220 goes out in plaintext; bytes received until it has
 *    been sent are discarded (CVE-2011-0411), then the handshake starts.
 *  - PROXY (proxy=yes listeners): conn_stage_proxy() is the one place the
 *    header parser plugs in; see its comment for the contract.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_SMTPD
#include "conn.h"
#include "worker.h"
#include "ringmx/proxy.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

/* How long a closing connection may wait for its last send (a client that
 * stopped reading) before the send is cancelled. */
#define CONN_CLOSE_TIMEOUT_NS (10ull * 1000000000ull)

static void conn_after_io(struct worker *w, struct conn *c);
static void conn_teardown(struct worker *w, struct conn *c);
static void conn_input(struct worker *w, struct conn *c);
static void tls_begin(struct worker *w, struct conn *c);
static void tls_release(struct worker *w, struct conn *c);
static void conn_sink_verdict(struct sink_waiter *waiter, int res);
static void conn_policy_done(struct policy_waiter *pw, int res, const struct smtp_check_reply *r);
static void hold_drop(struct worker *w, struct conn *c);

/* Bytes waiting to go out: the plaintext block, plus for TLS the
 * ciphertext not yet sent. */
static size_t
pending_out(const struct conn *c)
{
	return c->out.len + (c->tls != NULL ? c->tls->io.out_len : 0);
}

static void
out_ensure(struct worker *w, struct conn *c)
{
	if (c->outbuf != NULL)
		return;
	/* The pool has one block per connection slot: it cannot run dry. */
	assert(w->nfree_out > 0);
	c->outbuf = w->free_out[--w->nfree_out];
	c->out.buf = c->outbuf;
	c->out.len = 0;
	c->out.cap = CONN_OUT_SIZE;
}

static void
out_release(struct worker *w, struct conn *c)
{
	if (c->outbuf == NULL || c->out.len != 0 || c->send_inflight)
		return;
	w->free_out[w->nfree_out++] = c->outbuf;
	c->outbuf = NULL;
	c->out.buf = NULL;
	c->out.cap = 0;
}

static void
mark_flush(struct worker *w, struct conn *c)
{
	if (c->in_flush || pending_out(c) == 0 || c->send_inflight)
		return;
	c->in_flush = true;
	c->next_flush = w->flush_head;
	w->flush_head = c;
}

static void
mark_rearm(struct worker *w, struct conn *c)
{
	if (c->in_rearm)
		return;
	c->in_rearm = true;
	c->next_rearm = w->rearm_head;
	w->rearm_head = c;
}

static void
free_slot(struct worker *w, struct conn *c)
{
	w->free_conns[w->nfree++] = c->idx;
}

static void
arm_recv(struct worker *w, struct conn *c, bool poll_first)
{
	/* After the close is queued the descriptor may name another socket. */
	assert(!c->close_queued);
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE; /* c->fd is a direct descriptor */
	/* The server speaks first, so the first receive would find nothing:
	 * POLL_FIRST skips that attempt. liburing 2.3 has no buf_group
	 * helper, so the group is set by hand. */
	if (poll_first)
		sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->br.bgid;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->gen, 0, c->idx));
	c->recv_armed = true;
	c->recv_wanted = false;
}

static void
cancel_op(struct worker *w, struct conn *c, enum op op)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_cancel64(sqe, ud_make(op, c->gen, 0, c->idx), 0);
	/* CQE_SKIP_SUCCESS (5.17): the cancelled request's own CQE says all
	 * there is to know; only a cancel that found nothing answers. */
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0, 0));
}

/* What an OP_CLOSE CQE is about: a close (always answers) or the send of
 * a refusal (answers only when it failed). */
enum close_kind { CLOSE_FILE, CLOSE_REFUSAL_SEND };

/* Direct descriptor fd leaves the ring's file table (close_direct, 5.15),
 * in the same submission as the rest of the loop's SQEs. Its CQE tells
 * the worker the table entry is free again (worker.h, files_open). */
static void
close_direct_prep(struct io_uring_sqe *sqe, int fd)
{
	io_uring_prep_close_direct(sqe, (unsigned)fd);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CLOSE, 0, CLOSE_FILE, (uint32_t)fd));
}

static void
close_prep(struct io_uring_sqe *sqe, struct conn *c)
{
	close_direct_prep(sqe, c->fd);
	c->close_queued = true;
}

/* An accepted socket that gets no connection (the worker is draining). */
void
conn_close_direct(struct worker *w, int fd)
{
	close_direct_prep(worker_sqe(w), fd);
}

/*
 * An OP_CLOSE CQE. The 421 of a refusal answers only when it failed (the
 * client left, its buffer is full): nothing to do, its close follows
 * anyway. A close frees its table entry; one that failed leaves the entry
 * in an unknown state: a bug in the bookkeeping here, not the client's
 * doing, so the entry stays counted as taken.
 */
void
conn_on_close(struct worker *w, struct io_uring_cqe *cqe)
{
	if (ud_kind(cqe->user_data) == CLOSE_REFUSAL_SEND)
		return;
	if (cqe->res < 0) {
		log_err("closing a client connection's direct descriptor %u: %s",
			(unsigned)ud_idx(cqe->user_data), strerror(-cqe->res));
		return;
	}
	worker_file_closed(w);
}

/*
 * Fair sharing (docs/defences.md): a send that does not complete means the
 * client is not reading its replies; it may wait send_timeout. Holding
 * receive buffers meanwhile (the ring's, shared by every session of the
 * worker) while other receives wait for buffers, only CONN_STALL_SHORT_NS.
 */
static uint64_t
stall_limit(const struct worker *w, const struct conn *c)
{
	if (c->nheld > 0 && (w->recv_short || c->nheld > CONN_HOLD_HARD) &&
	    CONN_STALL_SHORT_NS < w->cfg->send_timeout)
		return CONN_STALL_SHORT_NS;
	return w->cfg->send_timeout;
}

/* When to look at a send in flight again. A holder is looked at every
 * CONN_STALL_SHORT_NS: the worker may run short of buffers meanwhile. */
static uint64_t
send_deadline(const struct worker *w, const struct conn *c)
{
	uint64_t d = c->send_t0 + stall_limit(w, c);

	if (c->nheld > 0 && w->now + CONN_STALL_SHORT_NS < d)
		d = (c->send_t0 + CONN_STALL_SHORT_NS > w->now ? c->send_t0 : w->now) +
		    CONN_STALL_SHORT_NS;
	return d;
}

/* The client did not read its replies in time (stall_limit): cut it off;
 * its held buffers go back to the ring now, teardown cancels the send. */
static bool
send_stalled(struct worker *w, struct conn *c)
{
	if (!c->send_inflight || c->stage != CONN_STAGE_SMTP ||
	    w->now < c->send_t0 + stall_limit(w, c))
		return false;
	if (c->nheld > CONN_HOLD_HARD) {
		/* Its unread input needs more buffers than any client may
		 * keep (packed already, hold_compact): whatever it does. */
		w->stats.recv_hold_cutoffs++;
		log_info("[%s]:%u has %u receive buffers of input unread and does not read its "
			 "replies; closing",
			 c->peer.addr_text, c->peer.port, c->nheld);
	} else if (c->nheld > 0 && w->recv_short) {
		w->stats.recv_stall_cutoffs++;
		log_info("[%s]:%u holds %u receive buffers and does not read its replies; closing",
			 c->peer.addr_text, c->peer.port, c->nheld);
	} else {
		w->stats.send_timeouts++;
		log_info("[%s]:%u did not read its replies within send_timeout; closing",
			 c->peer.addr_text, c->peer.port);
	}
	c->logged_error = true;
	c->eof = true;
	/* No linger: the send it does not read is cancelled on the next tick. */
	c->close_deadline = w->now;
	hold_drop(w, c);
	conn_after_io(w, c);
	return true;
}

static void
update_timer(struct worker *w, struct conn *c)
{
	uint64_t d;

	if (c->state == CONN_CLOSING) {
		d = c->close_deadline;
	} else if (c->stage == CONN_STAGE_STARTTLS || c->stage == CONN_STAGE_HANDSHAKE) {
		d = c->hs_deadline; /* handshake_timeout bounds the handshake */
	} else if (c->stage == CONN_STAGE_PROXY) {
		/* From connect, not from the last byte: trickling does not
		 * extend it. Read each time, so a reload applies. */
		d = c->t_connect + w->cfg->proxy_timeout;
	} else if (c->stage == CONN_STAGE_GREET) {
		d = c->greet_deadline;
		if (policy_deadline(&c->pol) != 0 && policy_deadline(&c->pol) < d)
			d = policy_deadline(&c->pol);
	} else if (smtp_session_status(&c->session) & SMTP_ST_CLOSE) {
		/* Only the last replies are left to send. A client that stops
		 * reading must not pin the slot (or a drain) forever: linger
		 * CONN_CLOSE_TIMEOUT_NS, then give up on it. */
		if (c->close_deadline == 0)
			c->close_deadline = w->now + CONN_CLOSE_TIMEOUT_NS;
		d = c->close_deadline;
	} else {
		d = smtp_session_deadline(&c->session);
		if (c->send_inflight && send_deadline(w, c) < d)
			d = send_deadline(w, c);
		if (policy_deadline(&c->pol) != 0 && policy_deadline(&c->pol) < d)
			d = policy_deadline(&c->pol); /* a DNSBL verdict due */
	}
	if (c->mf != NULL && c->state != CONN_CLOSING && mf_deadline(c->mf) != 0 &&
	    mf_deadline(c->mf) < d)
		d = mf_deadline(c->mf); /* a milter's reply due */
	if (d == UINT64_MAX)
		timer_cancel(w->wheel, &c->timer);
	else
		timer_set(w->wheel, &c->timer, d);
}

/* The client's address, as its accept brought it (no getpeername(2)), and
 * its text for Received: and the logs (the form a PROXY header's gets). */
static void
peer_fill(struct conn *c, const struct sockaddr_storage *addr, socklen_t addrlen)
{
	memset(&c->peer, 0, sizeof(c->peer));
	if (addrlen > sizeof(c->peer.addr))
		addrlen = sizeof(c->peer.addr);
	memcpy(&c->peer.addr, addr, addrlen);
	proxy_addr_text((const struct sockaddr *)&c->peer.addr, c->peer.addr_text,
			sizeof(c->peer.addr_text), &c->peer.port);
}

static const struct mf_conn_ops conn_mf_ops;

/* The milters' conversations start with the greeting; the session's
 * messages go through their sink (milter_io.h). */
static void
milters_start(struct worker *w, struct conn *c)
{
	c->mf = mf_conn_open(w->mf, c->idx, c, &w->cfg->milters, &conn_mf_ops, &c->session,
			     &c->peer);
	c->session.sink = mf_sink(w->mf);
	smtp_session_set_waiter(&c->session, &c->mf->waiter);
}

/* The 220; the policy's 421 (limits) or 554 (client_access) instead; or
 * the first line of a multi-line 220 and the greet_wait pause (policy.h). */
static void
conn_greet(struct worker *w, struct conn *c)
{
	struct smtp_check_reply r;

	/* Implicit TLS: the greeting is inside the session the client just
	 * negotiated; holding it tests nothing postscreen would. */
	int pr = policy_connect(&w->policy, &c->pol, c->tls == NULL, &r);

	if (pr != POLICY_REFUSE && pr != POLICY_DENY && w->cfg->milters.n > 0)
		milters_start(w, c);
	switch (pr) {
	case POLICY_REFUSE:
		smtp_session_start_refused(&c->session, &r);
		break;
	case POLICY_DENY:
		smtp_session_start_denied(&c->session, &r);
		break;
	case POLICY_GREET_WAIT: {
		int n = snprintf(c->out.buf + c->out.len, c->out.cap - c->out.len,
				 "220-%s ESMTP ringmx\r\n", w->cfg->smtp.hostname);

		assert(n > 0 && (size_t)n < c->out.cap - c->out.len);
		c->out.len += (size_t)n;
		c->stage = CONN_STAGE_GREET;
		c->greet_deadline = w->now + w->cfg->screen.greet_wait;
		break;
	}
	default:
		smtp_session_start(&c->session);
		break;
	}
}

/* The greet_wait pause is over: the last line of the 220 (or the DNSBL's
 * 521), then whatever a pregreet talker sent goes to the session. */
static void
greet_end(struct worker *w, struct conn *c)
{
	struct smtp_check_reply r;

	c->stage = CONN_STAGE_SMTP;
	out_ensure(w, c);
	if (screen_greet_end(&w->policy, &c->pol, &r) != SMTP_CHECK_OK) {
		hold_drop(w, c);
		smtp_session_start_refused(&c->session, &r);
	} else {
		smtp_session_start(&c->session);
	}
	conn_input(w, c);
	conn_after_io(w, c);
}

/* Input during the pause: a pregreet talker (screen.h). Its bytes stay
 * held for the session, unless the action is to drop it. */
static void
greet_input(struct worker *w, struct conn *c)
{
	char show[SCREEN_PREGREET_SHOW];
	struct smtp_check_reply r;
	size_t len, n = 0;

	if (c->hold_head == HOLD_NONE || c->pol.screen.pregreet)
		return;
	for (uint32_t b = c->hold_head; b != HOLD_NONE; b = w->hold_next[b])
		n += w->hold_len[b] - (b == c->hold_head ? c->hold_off : 0);
	len = conn_hold_copy(w, c, show, sizeof(show));
	if (!screen_pregreet(&w->policy, &c->pol, n, show, len,
			     (double)(w->now - c->t_connect) / 1e9, &r))
		return;
	c->stage = CONN_STAGE_SMTP;
	hold_drop(w, c);
	out_ensure(w, c);
	smtp_session_start_refused(&c->session, &r);
}

/*
 * Start the connection proper, after the PROXY stage if there is one: the
 * TLS handshake on an implicit listener (the greeting follows it), else
 * the 220 greeting. False: the client is refused and closing (c->eof).
 */
static bool
conn_begin(struct worker *w, struct conn *c)
{
	/* After a PROXY stage the idle connection gave its output block back;
	 * the greeting (or the handshake's first flight) needs one again. */
	out_ensure(w, c);
	if (w->cfg->listeners[c->listener].tls == LISTENER_TLS_IMPLICIT && w->tls != NULL) {
		/* The handshake is what the TLS rate limit saves: checked
		 * before it; with no TLS session to carry a 421, just close. */
		if (policy_tls_begin(&w->policy, &c->pol) != SMTP_CHECK_OK) {
			c->eof = true;
			return false;
		}
		c->t_hs = w->now;
		c->hs_deadline = w->now + w->cfg->tls.handshake_timeout;
		tls_begin(w, c);
		return true;
	}
	c->stage = CONN_STAGE_SMTP;
	conn_greet(w, c);
	return true;
}

/* The worker's refusal line, for the current hostname. Called before any
 * accept is armed and on reload, after the loop's SQEs went out: a send
 * of the old text (MSG_DONTWAIT: copied at submission) is never left
 * pointing at a rewritten buffer. */
void
conn_refusal_text(struct worker *w)
{
	int n = snprintf(w->refuse, sizeof(w->refuse), "421 4.3.2 %s Error: too many connections\r\n",
			 w->cfg->smtp.hostname);

	assert(n > 0 && (size_t)n < sizeof(w->refuse));
	w->refuse_len = (unsigned)n;
}

/*
 * Every slot is taken: refuse politely rather than leave the client in
 * the backlog. One non-blocking send of the line into the empty socket
 * buffer (MSG_DONTWAIT: done at submission or not at all), the close
 * hardlinked after it; neither answers unless it fails.
 */
static void
conn_refuse(struct worker *w, int fd)
{
	worker_sq_reserve(w, 2);
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_send(sqe, fd, w->refuse, w->refuse_len, MSG_DONTWAIT | MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK | IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, ud_make(OP_CLOSE, 0, CLOSE_REFUSAL_SEND, (uint32_t)fd));
	close_direct_prep(worker_sqe(w), fd);
	w->stats.connections_refused++;
}

/* A client accepted on listener into direct descriptor fd, from addr. */
void
conn_open(struct worker *w, int fd, unsigned listener, const struct sockaddr_storage *addr,
	  socklen_t addrlen)
{
	w->stats.connections_accepted++;
	if (w->nfree == 0) {
		conn_refuse(w, fd);
		return;
	}
	uint32_t idx = w->free_conns[--w->nfree];
	struct conn *c = &w->conns[idx];
	uint32_t gen = (c->gen + 1) & UD_GEN_MASK;
	/* Only the head of the struct is reset; smtp_session_init() sets up
	 * the session without touching its carry, so a fresh slot's pages
	 * stay untouched until used. */
	memset(c, 0, offsetof(struct conn, session));
	c->w = w;
	c->idx = idx;
	c->gen = gen;
	c->fd = fd;
	c->state = CONN_OPEN;
	c->listener = (uint8_t)listener;
	c->hold_head = c->hold_tail = HOLD_NONE;
	c->t_connect = w->now;
	peer_fill(c, addr, addrlen);
	w->active++;
	w->open_by_listener[c->listener]++;

	out_ensure(w, c);
	smtp_session_init(&c->session, &w->cfg->smtp, &c->peer, &c->out, &w->sink, &w->hooks, c,
			  &w->stats, w->now, w->wall);
	c->waiter.verdict = conn_sink_verdict;
	c->mf = NULL;
	smtp_session_set_waiter(&c->session, &c->waiter);
	c->pol_waiter.done = conn_policy_done;
	c->pol.waiter = &c->pol_waiter;
	c->pol.peer = &c->peer;
	const struct listener_conf *l = &w->cfg->listeners[listener];
	if (w->tls != NULL)
		smtp_session_set_tls_policy(&c->session,
					    l->tls == LISTENER_TLS_STARTTLS ||
						    l->tls == LISTENER_TLS_REQUIRED,
					    l->tls == LISTENER_TLS_REQUIRED);
	if (l->proxy) {
		/* A PROXY header is believed only from the proxies we run. */
		if (!proxy_trusted(&w->cfg->proxy_trusted, (const struct sockaddr *)&c->peer.addr)) {
			w->stats.proxy_untrusted++;
			log_info("connection from [%s]:%u on %s: not in proxy_trusted; closing",
				 c->peer.addr_text, c->peer.port, l->text);
			c->logged_error = true;
			c->eof = true;
			conn_after_io(w, c);
			return;
		}
		/* The client (proxy) speaks first: no POLL_FIRST. */
		c->stage = CONN_STAGE_PROXY;
		arm_recv(w, c, false);
		conn_after_io(w, c);
		return;
	}
	if (!conn_begin(w, c)) {
		conn_after_io(w, c);
		return;
	}
	/* Plaintext: the server speaks first. Implicit TLS: the client does. */
	arm_recv(w, c, c->stage == CONN_STAGE_SMTP);
	conn_after_io(w, c);
}

static void
hold_push(struct worker *w, struct conn *c, unsigned bid)
{
	w->hold_next[bid] = HOLD_NONE;
	if (c->hold_head == HOLD_NONE) {
		c->hold_head = bid;
		c->hold_off = 0;
	} else {
		w->hold_next[c->hold_tail] = bid;
	}
	c->hold_tail = bid;
	c->nheld++;
}

static void
hold_pop(struct worker *w, struct conn *c)
{
	uint32_t bid = c->hold_head;
	assert(bid != HOLD_NONE && c->nheld > 0);
	c->hold_head = w->hold_next[bid];
	if (c->hold_head == HOLD_NONE)
		c->hold_tail = HOLD_NONE;
	c->hold_off = 0;
	c->nheld--;
	bufring_put(&w->br, bid);
}

static void
hold_drop(struct worker *w, struct conn *c)
{
	while (c->hold_head != HOLD_NONE)
		hold_pop(w, c);
}

/*
 * Pack the held bytes into as few buffers as they need, in order; the
 * buffers left empty go back to the ring. Only past CONN_HOLD_MAX (a recv
 * burst of small segments landed before the cancel): a copy of at most
 * CONN_HOLD_HARD buffers, on a path no well-behaved client takes.
 */
static void
hold_compact(struct worker *w, struct conn *c)
{
	uint32_t size = w->br.size;
	uint32_t dst = c->hold_head, dlen = 0;
	uint32_t src = c->hold_head, soff = c->hold_off;

	/* dst never passes src: it is at or before it in the byte stream. */
	while (src != HOLD_NONE) {
		uint32_t next = w->hold_next[src];
		uint32_t n = w->hold_len[src] - soff;

		while (n > 0) {
			if (dlen == size) {
				w->hold_len[dst] = size;
				dst = w->hold_next[dst];
				dlen = 0;
			}
			uint32_t k = n < size - dlen ? n : size - dlen;
			memmove(bufring_addr(&w->br, dst) + dlen, bufring_addr(&w->br, src) + soff, k);
			dlen += k;
			soff += k;
			n -= k;
		}
		src = next;
		soff = 0;
	}
	w->hold_len[dst] = dlen;
	for (uint32_t b = w->hold_next[dst], bn; b != HOLD_NONE; b = bn) {
		bn = w->hold_next[b];
		bufring_put(&w->br, b);
		c->nheld--;
	}
	w->hold_next[dst] = HOLD_NONE;
	c->hold_tail = dst;
	c->hold_off = 0;
	w->stats.recv_compactions++;
}

static void hold_backpressure(struct worker *w, struct conn *c);
static void starttls_switch(struct worker *w, struct conn *c);

/* Feed held input to the session for as long as it takes it (plaintext). */
static void
pump(struct worker *w, struct conn *c)
{
	while (c->hold_head != HOLD_NONE) {
		out_ensure(w, c); /* before the status: no block reads as "output full" */
		unsigned st = smtp_session_status(&c->session);
		if (st & SMTP_ST_CLOSE) {
			hold_drop(w, c); /* after QUIT or 421 input means nothing */
			break;
		}
		if (st & (SMTP_ST_PAUSED | SMTP_ST_OUTFULL))
			break;
		uint32_t bid = c->hold_head;
		const char *p = bufring_addr(&w->br, bid) + c->hold_off;
		size_t n = w->hold_len[bid] - c->hold_off;
		size_t used = smtp_session_feed(&c->session, p, n, w->now, w->wall);
		assert(used <= n);
		c->hold_off += (uint32_t)used;
		if (c->hold_off == w->hold_len[bid])
			hold_pop(w, c);
		else if (used == 0 &&
			 !(smtp_session_status(&c->session) &
			   (SMTP_ST_PAUSED | SMTP_ST_OUTFULL | SMTP_ST_CLOSE)))
			panic("session made no progress on %zu bytes", n);
		if (smtp_session_status(&c->session) & SMTP_ST_STARTTLS) {
			starttls_switch(w, c);
			return;
		}
	}
	hold_backpressure(w, c);
}

static void
hold_backpressure(struct worker *w, struct conn *c)
{
	if (c->nheld > CONN_HOLD_MAX)
		hold_compact(w, c);
	if (c->nheld > 0)
		w->stats.recv_held++;
	/* Backpressure: stop reading from a client whose input piles up. */
	if (c->nheld >= CONN_HOLD_MAX && c->recv_armed && !c->recv_cancel) {
		c->recv_cancel = true;
		cancel_op(w, c, OP_RECV);
	}
	if (c->nheld < CONN_HOLD_MAX && c->recv_wanted && !c->recv_armed)
		mark_rearm(w, c);
}

void
conn_on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
	int res = cqe->res;
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more) {
		c->recv_armed = false;
		c->recv_cancel = false;
	}
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		bufring_taken(&w->br);
		if (res <= 0 || c->state != CONN_OPEN || c->eof) {
			bufring_put(&w->br, bid);
		} else {
			w->stats.bytes_received += (uint64_t)res;
			w->hold_len[bid] = (uint32_t)res;
			hold_push(w, c, bid);
		}
	}
	if (res == 0) {
		c->eof = true;
	} else if (res < 0) {
		switch (res) {
		case -ENOBUFS:
			/* Flow control, not an error: the pool is empty for a
			 * moment. Re-armed once buffers come back. */
			w->stats.recv_enobufs++;
			w->recv_short = true;
			break;
		case -ECANCELED:
			break;
		default:
			if (c->state == CONN_OPEN) {
				log_info("lost connection from [%s]:%u: %s", c->peer.addr_text,
					 c->peer.port, strerror(-res));
				c->logged_error = true;
			}
			c->eof = true;
			break;
		}
	}
	if (!c->recv_armed && !c->eof && c->state == CONN_OPEN)
		c->recv_wanted = true;
	if (c->state == CONN_OPEN && !c->eof)
		conn_input(w, c);
	conn_after_io(w, c);
}

void
conn_on_send(struct worker *w, struct conn *c, int res)
{
	assert(c->send_inflight);
	c->send_inflight = false;
	if (res < 0) {
		if (res != -EPIPE && res != -ECONNRESET && res != -ECANCELED && !c->logged_error) {
			log_info("send to [%s]:%u: %s", c->peer.addr_text, c->peer.port,
				 strerror(-res));
			c->logged_error = true;
		}
		c->out.len = 0;
		if (c->tls != NULL)
			c->tls->io.out_len = 0;
		c->eof = true; /* nothing more can be said to this client */
	} else if (c->tls != NULL) {
		/* What went out was ciphertext (conn_flush_all). */
		size_t sent = (size_t)res;
		tls_io_sent(&c->tls->io, sent);
	} else {
		size_t sent = (size_t)res;
		assert(sent <= c->out.len);
		memmove(c->out.buf, c->out.buf + sent, c->out.len - sent);
		c->out.len -= sent;
	}
	/* The last send, and the close linked to it: whatever it left unsent
	 * can no longer go out (conn_after_io drops it). */
	if (c->close_queued && pending_out(c) > 0)
		c->eof = true;
	/* STARTTLS: the 220 is out, so what comes next is the ClientHello. */
	if (c->stage == CONN_STAGE_STARTTLS && c->out.len == 0 && c->state == CONN_OPEN && !c->eof)
		tls_begin(w, c);
	if (c->state == CONN_OPEN && !c->eof)
		conn_input(w, c);
	conn_after_io(w, c);
}

/* TLS: say close_notify (RFC 8446 6.1) before closing, once every reply
 * is encrypted: wolfSSL appends the alert to the ciphertext block. */
static void
tls_notify(struct conn *c)
{
	if (c->tls != NULL && c->tls->io.done && !c->tls->notify_sent && c->out.len == 0) {
		c->tls->notify_sent = true;
		wolfSSL_shutdown(c->tls->io.ssl);
	}
}

/* After anything happened to c: schedule the flush, move the timer, and
 * start or continue the close. */
static void
conn_after_io(struct worker *w, struct conn *c)
{
	if (c->state == CONN_OPEN) {
		/* A session that ended (QUIT, 421) gives back its place in the
		 * per-client count now, before its last reply goes out: a
		 * client reconnecting on reading 221 must not meet itself. */
		if (c->pol.client_pinned && (smtp_session_status(&c->session) & SMTP_ST_CLOSE))
			policy_session_end(&w->policy, &c->pol);
		if (c->eof) {
			smtp_session_eof(&c->session);
			c->state = CONN_CLOSING;
			c->out.len = c->send_inflight ? c->out.len : 0;
			if (c->tls != NULL && !c->send_inflight)
				c->tls->io.out_len = 0;
		} else if ((smtp_session_status(&c->session) & SMTP_ST_CLOSE) && pending_out(c) == 0 &&
			   !c->send_inflight) {
			tls_notify(c);
			if (pending_out(c) == 0)
				c->state = CONN_CLOSING;
		}
	}
	if (c->state == CONN_CLOSING) {
		conn_teardown(w, c);
		return;
	}
	/* Whatever stage owns the input, a receive that stopped (ENOBUFS,
	 * cancelled for backpressure, ended) is re-armed once there is room:
	 * no stage has to remember it. */
	if (c->recv_wanted && !c->recv_armed && !c->eof && c->nheld < CONN_HOLD_MAX)
		mark_rearm(w, c);
	mark_flush(w, c);
	out_release(w, c);
	update_timer(w, c);
}

static void
log_disconnect(struct worker *w, struct conn *c)
{
	if (!log_enabled(LOG_INFO))
		return;
	char line[SMTP_DISCONNECT_LINE_MAX];
	const struct conn_tls *t = c->tls != NULL && c->tls->io.done ? c->tls : NULL;
	size_t n = smtp_session_disconnect_line(&c->session, &c->peer, t ? t->version : NULL,
						t ? t->cipher : NULL, t && t->resumed,
						w->now - c->t_connect, line);
	log_line(LOG_SERVICE, LOG_INFO, line, n);
}

static void
conn_teardown(struct worker *w, struct conn *c)
{
	assert(c->state == CONN_CLOSING);
	if (c->recv_armed && !c->recv_cancel) {
		c->recv_cancel = true;
		cancel_op(w, c, OP_RECV);
	}
	if (c->recv_armed || c->send_inflight) {
		/* Wait for the kernel to let go; a last send to a client that
		 * stopped reading is cancelled at close_deadline (already past
		 * when the linger ran out: then it fires on the next tick). */
		if (c->close_deadline == 0)
			c->close_deadline = w->now + CONN_CLOSE_TIMEOUT_NS;
		update_timer(w, c);
		return;
	}
	hold_drop(w, c);
	timer_cancel(w->wheel, &c->timer);
	if (c->mf != NULL)
		mf_conn_close(c->mf);
	c->mf = NULL;
	policy_conn_close(&w->policy, &c->pol);
	if (!c->close_queued)
		close_prep(worker_sqe(w), c);
	c->fd = -1;
	c->out.len = 0;
	out_release(w, c);
	if (!c->logged_error || c->session.counts.commands)
		log_disconnect(w, c);
	tls_release(w, c);
	w->stats.connections_closed++;
	assert(w->active > 0);
	w->active--;
	w->open_by_listener[c->listener]--;
	c->state = CONN_FREE;
	c->gen = (c->gen + 1) & UD_GEN_MASK;
	if (!c->in_flush && !c->in_rearm)
		free_slot(w, c);
}

static void tls_encrypt_out(struct worker *w, struct conn *c);

/*
 * The send about to go out is the connection's last: the session is over
 * (QUIT, a 421) and this send carries everything it will ever write, TLS
 * included (the close_notify is already queued, or there is no TLS
 * session to end). conn_after_io() would tear down once it completed.
 */
static bool
last_send(const struct conn *c)
{
	if (c->eof || !(smtp_session_status(&c->session) & SMTP_ST_CLOSE))
		return false;
	if (c->tls == NULL)
		return true;
	return c->out.len == 0 && (c->tls->notify_sent || !c->tls->io.done);
}

void
conn_flush_all(struct worker *w)
{
	struct conn *c;
	while ((c = w->flush_head) != NULL) {
		w->flush_head = c->next_flush;
		c->in_flush = false;
		if (c->state == CONN_FREE) {
			if (!c->in_rearm)
				free_slot(w, c);
			continue;
		}
		if (c->send_inflight || c->close_queued)
			continue;
		const char *p = c->out.buf;
		size_t len = c->out.len;
		if (c->tls != NULL) {
			tls_encrypt_out(w, c);
			if (c->eof) {
				conn_after_io(w, c); /* the write failed: close */
				continue;
			}
			/* The session is over: the alert goes out with its last
			 * replies, in the same send and the same segment. */
			if (!c->eof && (smtp_session_status(&c->session) & SMTP_ST_CLOSE))
				tls_notify(c);
			p = c->tls->io.out;
			len = c->tls->io.out_len;
		}
		if (len == 0)
			continue;
		bool last = last_send(c);
		if (last)
			worker_sq_reserve(w, 3);
		if (last && c->recv_armed && !c->recv_cancel) {
			/* Nothing more is read: end the receive now, in the
			 * same submission, not after the send completed. */
			c->recv_cancel = true;
			cancel_op(w, c, OP_RECV);
		}
		struct io_uring_sqe *sqe = worker_sqe(w);
		/* MSG_WAITALL: the kernel retries a short send itself, so a
		 * completion normally means everything went out. */
		int flags = MSG_NOSIGNAL | MSG_WAITALL;
		/* After the client's QUIT: MSG_MORE holds the 221 back until
		 * the linked close adds the FIN to it, one segment instead of
		 * two (and one ACK less). Not when the server ends the session
		 * (421s): that client may still be sending, and a close with
		 * unread input resets the connection, which would throw the
		 * held reply away unsent. */
		if (last && c->session.counts.quit > 0)
			flags |= MSG_MORE;
		io_uring_prep_send(sqe, c->fd, p, len, flags);
		sqe->flags |= IOSQE_FIXED_FILE;
		io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, 0, c->idx));
		if (last) {
			/* The close follows the last reply in the kernel, with
			 * no loop iteration between them. HARDLINK: it runs
			 * however the send ends (an error, or the cancel of a
			 * send the client does not read, at close_deadline). */
			sqe->flags |= IOSQE_IO_HARDLINK;
			close_prep(worker_sqe(w), c);
		}
		c->send_inflight = true;
		c->send_len = len;
		c->send_t0 = w->now;
		w->stats.sends++;
		update_timer(w, c); /* send_deadline() now bounds the wait */
	}
}

void
conn_rearm_all(struct worker *w)
{
	struct conn *c, *later = NULL;
	/* Each re-armed receive takes at least one buffer as soon as data is
	 * there, so arm no more receives than there are buffers: the rest
	 * would fail at once with ENOBUFS and spin through the loop. */
	unsigned budget = w->br.available + w->br.pending;
	while ((c = w->rearm_head) != NULL) {
		w->rearm_head = c->next_rearm;
		c->in_rearm = false;
		if (c->state == CONN_FREE) {
			if (!c->in_flush)
				free_slot(w, c);
			continue;
		}
		if (c->state != CONN_OPEN || c->eof || c->recv_armed || !c->recv_wanted ||
		    c->nheld >= CONN_HOLD_MAX || c->close_queued)
			continue;
		if (budget == 0) {
			c->in_rearm = true;
			c->next_rearm = later;
			later = c;
			continue;
		}
		budget--;
		arm_recv(w, c, false);
		w->stats.recv_rearms++;
	}
	w->rearm_head = later;
	w->recv_short = later != NULL;
}

void
conn_on_timer(struct timer_node *n, void *arg)
{
	struct worker *w = arg;
	struct conn *c = (struct conn *)((char *)n - offsetof(struct conn, timer));
	if (c->state == CONN_CLOSING) {
		/* The last send did not finish in time: give up on it. Ask
		 * again a second later if the kernel still holds on (a cancel
		 * can answer -EALREADY). */
		if (c->send_inflight)
			cancel_op(w, c, OP_SEND);
		if (c->recv_armed)
			cancel_op(w, c, OP_RECV);
		c->close_deadline = w->now + 10 * TIMER_TICK_NS;
		update_timer(w, c);
		return;
	}
	if (c->state != CONN_OPEN)
		return;
	if (policy_deadline(&c->pol) != 0 && w->now >= policy_deadline(&c->pol)) {
		/* The DNSBL answers not in by dnsbl_timeout count as not
		 * listed; a check that waited for them is answered now. */
		policy_expire(&w->policy, &c->pol);
		if (c->state != CONN_OPEN)
			return;
	}
	if (c->mf != NULL && mf_deadline(c->mf) != 0 && w->now >= mf_deadline(c->mf)) {
		mf_expire(c->mf); /* milter_default_action for the silent ones */
		if (c->state != CONN_OPEN)
			return;
		if (c->stage != CONN_STAGE_GREET) {
			update_timer(w, c);
			return;
		}
	}
	if (c->stage == CONN_STAGE_GREET) {
		if (w->now < c->greet_deadline) {
			update_timer(w, c);
			return;
		}
		greet_end(w, c);
		return;
	}
	if (c->stage == CONN_STAGE_PROXY) {
		if (w->now < c->t_connect + w->cfg->proxy_timeout) {
			update_timer(w, c); /* proxy_timeout grew by a reload */
			return;
		}
		/* No complete header within proxy_timeout (Postfix:
		 * smtpd_upstream_proxy_timeout). The proxy gets no SMTP reply
		 * (on an implicit listener it would expect TLS). */
		w->stats.proxy_bad++;
		w->stats.proxy_timeout++;
		log_info("no complete PROXY header from [%s]:%u on %s within proxy_timeout (%gs); "
			 "closing",
			 c->peer.addr_text, c->peer.port, w->cfg->listeners[c->listener].text,
			 (double)w->cfg->proxy_timeout / 1e9);
		c->logged_error = true;
		c->eof = true;
		hold_drop(w, c);
		conn_after_io(w, c);
		return;
	}
	if ((smtp_session_status(&c->session) & SMTP_ST_CLOSE) && c->close_deadline != 0) {
		if (w->now < c->close_deadline) {
			update_timer(w, c);
			return;
		}
		log_info("[%s]:%u did not read its last replies within %llus; closing",
			 c->peer.addr_text, c->peer.port,
			 (unsigned long long)(CONN_CLOSE_TIMEOUT_NS / 1000000000u));
		c->logged_error = true;
		c->eof = true; /* teardown cancels the send that cannot finish */
		hold_drop(w, c);
		conn_after_io(w, c);
		return;
	}
	if (send_stalled(w, c))
		return;
	if (c->stage == CONN_STAGE_STARTTLS || c->stage == CONN_STAGE_HANDSHAKE) {
		if (w->now < c->hs_deadline) {
			update_timer(w, c);
			return;
		}
		/* No reply is possible mid-handshake: just close. */
		log_info("TLS handshake failed from [%s]:%u: timeout after %llus", c->peer.addr_text,
			 c->peer.port, (unsigned long long)(w->cfg->tls.handshake_timeout / 1000000000u));
		w->stats.tls_handshake_timeouts++;
		w->stats.tls_handshake_failures++;
		c->logged_error = true;
		c->eof = true;
		hold_drop(w, c);
		conn_after_io(w, c);
		return;
	}
	out_ensure(w, c);
	/* Name the phase before the tick moves the session to QUIT. */
	static const char *const phase[] = {
		[SMTP_S_CONNECTED] = "CONNECT", [SMTP_S_READY] = "EHLO", [SMTP_S_MAIL] = "MAIL",
		[SMTP_S_RCPT] = "RCPT",         [SMTP_S_DATA] = "DATA",  [SMTP_S_BDAT] = "BDAT",
		[SMTP_S_VERDICT] = "END-OF-MESSAGE", [SMTP_S_QUIT] = "QUIT",
	};
	enum smtp_state before = c->session.state;
	if (smtp_session_tick(&c->session, w->now)) {
		log_info("timeout after %s from [%s]:%u", phase[before], c->peer.addr_text,
			 c->peer.port);
		hold_drop(w, c);
	}
	conn_after_io(w, c);
}

void
conn_drain(struct worker *w, struct conn *c, bool force)
{
	if (c->state != CONN_OPEN)
		return;
	if (c->stage == CONN_STAGE_GREET)
		c->stage = CONN_STAGE_SMTP; /* the 421 ends the 220- reply */
	if (c->stage != CONN_STAGE_SMTP) {
		/* Before the session speaks (PROXY header, handshake) there is
		 * nobody to say 421 to: close. */
		c->eof = true;
		hold_drop(w, c);
		conn_after_io(w, c);
		return;
	}
	out_ensure(w, c);
	smtp_session_shutdown(&c->session, force);
	if (force)
		hold_drop(w, c);
	conn_after_io(w, c);
}

void
conn_set_conf(struct conn *c, const struct smtp_conf *conf)
{
	/* Closing ones too: the old configuration is freed after the reload,
	 * and nothing may keep pointing into it. */
	if (c->state != CONN_FREE)
		smtp_session_set_conf(&c->session, conf);
}

/* The sink's asynchronous verdict on a message (sink.h). */
static void
conn_sink_verdict(struct sink_waiter *waiter, int res)
{
	struct conn *c = container_of(waiter, struct conn, waiter);
	struct worker *w = c->w;
	assert(c->state == CONN_OPEN);
	out_ensure(w, c);
	smtp_session_verdict(&c->session, res, w->now);
	conn_input(w, c);
	conn_after_io(w, c);
}

int
conn_policy_check(void *owner, enum smtp_check_point what, const char *addr, size_t len,
		  struct smtp_check_reply *r)
{
	struct conn *c = owner;
	int res = policy_check(&c->w->policy, &c->pol, what, addr, len, r);

	if (res != SMTP_CHECK_OK || c->mf == NULL)
		return res;
	return mf_check(c->mf, what, addr, len, r); /* after the policy, as Postfix */
}

void
conn_policy_cancel(void *owner)
{
	struct conn *c = owner;

	policy_cancel(&c->w->policy, &c->pol);
	if (c->mf != NULL)
		mf_check_cancel(c->mf);
}

/* A pending policy check's answer (policy.h), outside the session's calls. */
static void
conn_policy_done(struct policy_waiter *pw, int res, const struct smtp_check_reply *r)
{
	struct conn *c = container_of(pw, struct conn, pol_waiter);
	struct worker *w = c->w;
	struct smtp_check_reply mr;

	assert(c->state == CONN_OPEN);
	if (res == SMTP_CHECK_OK && c->mf != NULL && c->session.check_pending) {
		/* The policy passed: now the milters (their answer may wait). */
		const struct smtp_session *s = &c->session;
		res = s->pend_mail ? mf_check(c->mf, SMTP_CHECK_MAIL, s->mail_from,
					      strlen(s->mail_from), &mr)
				   : mf_check(c->mf, SMTP_CHECK_RCPT, s->pend_rcpt, s->pend_len, &mr);
		if (res == SMTP_CHECK_PENDING)
			return;
		r = &mr;
	}
	out_ensure(w, c);
	smtp_session_check_done(&c->session, res, r, w->now);
	conn_input(w, c);
	conn_after_io(w, c);
}

/* The milters' answers (milter_io.h), from the loop. */
static void
mf_check_done(struct mf_conn *mc, int res, const struct smtp_check_reply *r)
{
	struct conn *c = mc->owner;
	struct worker *w = c->w;

	if (c->state != CONN_OPEN)
		return;
	out_ensure(w, c);
	smtp_session_check_done(&c->session, res, r, w->now);
	conn_input(w, c);
	conn_after_io(w, c);
}

static void
mf_verdict(struct mf_conn *mc, int res, const struct smtp_check_reply *r)
{
	struct conn *c = mc->owner;
	struct worker *w = c->w;

	if (c->state != CONN_OPEN)
		return;
	out_ensure(w, c);
	if (r != NULL)
		smtp_session_verdict_reply(&c->session, r, w->now);
	else
		smtp_session_verdict(&c->session, res, w->now);
	conn_input(w, c);
	conn_after_io(w, c);
}

static void
mf_timer(struct mf_conn *mc)
{
	struct conn *c = mc->owner;

	if (c->state == CONN_OPEN)
		update_timer(c->w, c);
}

static const struct mf_conn_ops conn_mf_ops = {
	.check_done = mf_check_done,
	.verdict = mf_verdict,
	.timer = mf_timer,
};

void
conn_log_hook(void *owner, enum smtp_log_role role, const char *line, size_t len)
{
	(void)owner;
	log_line(role == SMTP_LOG_QUEUE ? LOG_SVC_QMGR : LOG_SERVICE, LOG_INFO, line, len);
}

/* ---- input stages (worker.h, enum conn_stage) ---- */

static void tls_pump(struct worker *w, struct conn *c);
static void tls_handshake(struct worker *w, struct conn *c);
static void conn_stage_proxy(struct worker *w, struct conn *c);

/* Held input to whichever stage owns it. Plaintext sessions take the
 * zero-copy pump(); everything else is off that path. */
static void
conn_input(struct worker *w, struct conn *c)
{
	switch ((enum conn_stage)c->stage) {
	case CONN_STAGE_SMTP:
		if (c->tls == NULL)
			pump(w, c);
		else
			tls_pump(w, c);
		return;
	case CONN_STAGE_PROXY:
		conn_stage_proxy(w, c);
		return;
	case CONN_STAGE_STARTTLS:
		/* CVE-2011-0411: the client cannot have seen our 220 yet, so
		 * whatever arrives now is injected plaintext, not a
		 * ClientHello. Never interpreted, counted once per batch. */
		if (c->hold_head != HOLD_NONE) {
			w->stats.starttls_injection_discarded++;
			log_info("STARTTLS from [%s]:%u: discarded plaintext sent before the 220 "
				 "(CVE-2011-0411)",
				 c->peer.addr_text, c->peer.port);
			hold_drop(w, c);
		}
		hold_backpressure(w, c);
		return;
	case CONN_STAGE_HANDSHAKE:
		tls_handshake(w, c);
		return;
	case CONN_STAGE_GREET:
		greet_input(w, c);
		hold_backpressure(w, c);
		return;
	}
	panic("connection in unknown stage %u", (unsigned)c->stage);
}

/*
 * PROXY stage: the ONE place the PROXY protocol plugs in (engine/conn/proxy.c,
 * include/ringmx/proxy.h; docs/proxy.md). Called with c->stage ==
 * CONN_STAGE_PROXY whenever bytes are held (c->hold_head != HOLD_NONE),
 * before any greeting and before the TLS handshake.
 *
 * Contract for the implementation:
 *  - Peek at the held bytes with conn_hold_copy(w, c, buf, n) (copies up
 *    to n bytes across held buffers without consuming them) into a buffer
 *    of PROXY_HDR_MAX and call proxy_parse(). NEED_MORE: fold the held
 *    bytes into one buffer and return (proxy_timeout, from connect,
 *    bounds the wait; update_timer uses it).
 *  - Header complete (hdr_len bytes): conn_hold_consume(w, c, hdr_len),
 *    apply the peer to c->peer (the session and logs point at it), then
 *    conn_begin(w, c) - implicit TLS: starts the handshake; otherwise:
 *    writes the 220 - and, if bytes remain held, conn_input(w, c) so they
 *    reach the handshake or the session. They are never dropped.
 *  - Bad header, untrusted peer: count, log once, set c->logged_error and
 *    c->eof; conn_after_io() closes.
 */
static void
proxy_drop(struct worker *w, struct conn *c, const char *why)
{
	w->stats.proxy_bad++;
	/* The raw bytes are not logged: they are attacker-controlled. */
	log_info("PROXY header from [%s]:%u on %s: %s; closing", c->peer.addr_text, c->peer.port,
		 w->cfg->listeners[c->listener].text, why);
	c->logged_error = true;
	c->eof = true;
	hold_drop(w, c);
}

/*
 * Backpressure for the PROXY stage. Each receive takes a whole ring buffer,
 * so a header trickled one byte per packet would pin one buffer per byte
 * (up to PROXY_HDR_MAX of them: the pool) until proxy_timeout. While the
 * header is incomplete, its bytes (n < PROXY_HDR_MAX <= recv_buffer_size,
 * already copied to bytes) go back into the first held buffer and the
 * others return to the ring: a connection in this stage holds at most one.
 */
static void
proxy_hold_fold(struct worker *w, struct conn *c, const uint8_t *bytes, size_t n)
{
	uint32_t head = c->hold_head;

	if (c->nheld < 2)
		return;
	assert(n <= w->br.size);
	while (w->hold_next[head] != HOLD_NONE) {
		uint32_t bid = w->hold_next[head];

		w->hold_next[head] = w->hold_next[bid];
		c->nheld--;
		bufring_put(&w->br, bid);
	}
	memcpy(bufring_addr(&w->br, head), bytes, n);
	w->hold_len[head] = (uint32_t)n;
	c->hold_off = 0;
	c->hold_tail = head;
	assert(c->nheld == 1);
}

static void
conn_stage_proxy(struct worker *w, struct conn *c)
{
	/* Headers are small (<= PROXY_HDR_MAX) and arrive whole in practice,
	 * so re-parsing a copy of the held prefix on each receive is cheaper
	 * than keeping parser state (picohttpparser's approach). */
	uint8_t buf[PROXY_HDR_MAX];
	size_t n = conn_hold_copy(w, c, (char *)buf, sizeof(buf));
	struct proxy_hdr hdr;
	int len = proxy_parse(buf, n, &hdr);

	if (len == PROXY_NEED_MORE) {
		/* proxy_parse() refuses a header that announces more than
		 * PROXY_HDR_MAX, so a full buffer is never "need more": buf
		 * holds every held byte. */
		assert(n < sizeof(buf));
		proxy_hold_fold(w, c, buf, n);
		return;
	}
	if (len < 0) {
		proxy_drop(w, c, "malformed (not PROXY protocol v1/v2)");
		return;
	}
	if (hdr.version == 1)
		w->stats.proxy_headers_v1++;
	else
		w->stats.proxy_headers_v2++;
	if (hdr.command == PROXY_CMD_LOCAL)
		w->stats.proxy_local++;
	conn_hold_consume(w, c, (size_t)len);
	/* The session and the logs point at c->peer: from here on they name
	 * the client the proxy relayed (LOCAL/UNKNOWN keep the real peer). */
	proxy_peer_apply(&hdr, &c->peer);
	if (!conn_begin(w, c))
		return;
	if (c->hold_head != HOLD_NONE)
		conn_input(w, c); /* the client's first bytes after the header */
}

/* Copy up to n held bytes, from the read position, without consuming. */
size_t
conn_hold_copy(struct worker *w, struct conn *c, char *dst, size_t n)
{
	size_t got = 0;
	uint32_t off = c->hold_off;

	for (uint32_t bid = c->hold_head; bid != HOLD_NONE && got < n; bid = w->hold_next[bid]) {
		size_t k = w->hold_len[bid] - off;

		if (k > n - got)
			k = n - got;
		memcpy(dst + got, bufring_addr(&w->br, bid) + off, k);
		got += k;
		off = 0;
	}
	return got;
}

/* Consume n held bytes (n <= what is held); emptied buffers go back to
 * the ring at once. */
size_t
conn_hold_consume(struct worker *w, struct conn *c, size_t n)
{
	size_t done = 0;

	while (done < n && c->hold_head != HOLD_NONE) {
		uint32_t bid = c->hold_head;
		size_t k = w->hold_len[bid] - c->hold_off;

		if (k > n - done)
			k = n - done;
		c->hold_off += (uint32_t)k;
		done += k;
		if (c->hold_off == w->hold_len[bid])
			hold_pop(w, c);
	}
	return done;
}

/* The session wrote "220 2.0.0 Ready to start TLS" and discarded the rest
 * of its feed; drop what else is held and wait for the 220 to be sent. */
static void
starttls_switch(struct worker *w, struct conn *c)
{
	c->stage = CONN_STAGE_STARTTLS;
	c->hs_deadline = w->now + w->cfg->tls.handshake_timeout;
	c->t_hs = w->now;
	if (c->hold_head != HOLD_NONE) {
		w->stats.starttls_injection_discarded++;
		hold_drop(w, c);
	}
	hold_backpressure(w, c);
}

/* ---- TLS stage: wolfSSL over memory, driven by the ring ---- */

/*
 * Ciphertext for wolfSSL (tls_io pull mode): copied out of the held receive
 * buffers, each given back to the ring once all its bytes are copied.
 * Nothing held: 0, and the next recv CQE drives wolfSSL again.
 */
static long
conn_tls_pull(void *arg, char *dst, size_t n)
{
	struct conn *c = arg;
	size_t k = conn_hold_copy(c->w, c, dst, n);

	if (k == 0)
		return c->eof ? -1 : 0;
	conn_hold_consume(c->w, c, k);
	return (long)k;
}

/* wolfSSL appended ciphertext to cout (after any bytes a send in flight
 * owns): conn_flush_all() sends it. */
static void
conn_tls_pushed(void *arg)
{
	struct conn *c = arg;

	mark_flush(c->w, c);
}

/* A TLS state from the pool and a WOLFSSL on the worker's current
 * contexts; stage HANDSHAKE. The connection keeps a reference to those
 * contexts, so a reload never pulls them from under it. */
static void
tls_begin(struct worker *w, struct conn *c)
{
	assert(c->tls == NULL && w->tls != NULL && w->nfree_tls > 0);
	struct conn_tls *t = w->free_tls[--w->nfree_tls];
	struct WOLFSSL *ssl = tls_set_ssl(w->tls);
	memset(&t->io, 0, sizeof(t->io));
	t->io.out = t->cout;
	t->io.out_cap = CONN_TLS_OUT;
	t->set = NULL;
	t->win_off = t->win_len = 0;
	t->notify_sent = t->resumed = false;
	t->version[0] = t->cipher[0] = '\0';
	c->tls = t;
	c->stage = CONN_STAGE_HANDSHAKE;
	if (ssl != NULL) {
		tls_io_bind(&t->io, ssl);
		t->io.pull = conn_tls_pull;
		t->io.pushed = conn_tls_pushed;
		t->io.arg = c;
	}
	if (ssl == NULL) {
		log_err("TLS from [%s]:%u: cannot create a wolfSSL session (out of memory)",
			c->peer.addr_text, c->peer.port);
		w->stats.tls_handshake_failures++;
		c->logged_error = true;
		c->eof = true;
		return;
	}
	t->set = w->tls;
	tls_set_ref(t->set);
}

static void
tls_release(struct worker *w, struct conn *c)
{
	struct conn_tls *t = c->tls;

	if (t == NULL)
		return;
	struct WOLFSSL *ssl = t->io.ssl;
	tls_io_unbind(&t->io);
	if (ssl != NULL)
		wolfSSL_free(ssl);
	tls_set_unref(t->set); /* may free contexts replaced by a reload */
	t->set = NULL;
	c->tls = NULL;
	w->free_tls[w->nfree_tls++] = t;
}

static void
tls_fail(struct worker *w, struct conn *c, const char *what, int err)
{
	char why[160];

	tls_io_strerror(err, why, sizeof why);
	log_info("%s from [%s]:%u: %s", what, c->peer.addr_text, c->peer.port, why);
	c->logged_error = true;
	c->eof = true;
	hold_drop(w, c);
}

static void
tls_handshake(struct worker *w, struct conn *c)
{
	struct conn_tls *t = c->tls;
	int r, err;

	if (t == NULL || t->io.ssl == NULL || c->eof)
		return;
	err = 0;
	r = tls_io_handshake(&t->io, true, &err);
	if (r == TLS_IO_WANT) {
		hold_backpressure(w, c);
		return;
	}
	if (r == TLS_IO_ERROR) {
		w->stats.tls_handshake_failures++;
		tls_fail(w, c, "TLS handshake failed", err);
		return;
	}
	w->stats.tls_handshakes++;
	RINGMX_HIST_OBSERVE(&w->stats, tls_handshake, (w->now - c->t_hs) / 1000u);
	if (wolfSSL_session_reused(t->io.ssl)) {
		t->resumed = true;
		w->stats.tls_resumed++;
	}
	snprintf(t->version, sizeof t->version, "%s", wolfSSL_get_version(t->io.ssl));
	/* IANA/OpenSSL-style name ("TLS_AES_256_GCM_SHA384") for logs and
	 * Received:, as other MTAs write it. */
	int suite = wolfSSL_get_current_cipher_suite(t->io.ssl);
	const char *iana = wolfSSL_get_cipher_name_iana_from_suite((unsigned char)(suite >> 8),
								   (unsigned char)suite);
	snprintf(t->cipher, sizeof t->cipher, "%s",
		 iana != NULL ? iana : wolfSSL_get_cipher_name(t->io.ssl));
	c->stage = CONN_STAGE_SMTP;
	out_ensure(w, c);
	smtp_session_tls_started(&c->session, t->version, t->cipher, w->now);
	if (w->cfg->listeners[c->listener].tls == LISTENER_TLS_IMPLICIT)
		conn_greet(w, c); /* RFC 8314 3.3: greeting after TLS */
	/* The client may have sent its first command with its Finished. */
	tls_pump(w, c);
}

/* Decrypt into the window and feed the session while it takes input. */
static void
tls_pump(struct worker *w, struct conn *c)
{
	struct conn_tls *t = c->tls;

	for (;;) {
		out_ensure(w, c);
		unsigned st = smtp_session_status(&c->session);
		if (st & SMTP_ST_CLOSE) {
			hold_drop(w, c);
			t->win_off = t->win_len = 0;
			break;
		}
		if (st & (SMTP_ST_PAUSED | SMTP_ST_OUTFULL))
			break;
		if (t->win_off < t->win_len) {
			size_t n = t->win_len - t->win_off;
			size_t used = smtp_session_feed(&c->session, t->win + t->win_off, n, w->now,
							w->wall);
			assert(used <= n);
			t->win_off += (uint32_t)used;
			if (t->win_off == t->win_len)
				t->win_off = t->win_len = 0;
			else if (used == 0 &&
				 !(smtp_session_status(&c->session) &
				   (SMTP_ST_PAUSED | SMTP_ST_OUTFULL | SMTP_ST_CLOSE)))
				panic("session made no progress on %zu bytes", n);
			continue;
		}
		int err = 0;
		long r = tls_io_read(&t->io, t->win, CONN_TLS_WIN, &err);
		if (r > 0) {
			t->win_len = (uint32_t)r;
			t->win_off = 0;
			continue;
		}
		if (r == TLS_IO_WANT)
			break;
		if (r == TLS_IO_CLOSED) {
			/* close_notify: the client is done; like EOF. */
			c->eof = true;
			hold_drop(w, c);
			break;
		}
		w->stats.tls_errors++;
		tls_fail(w, c, "TLS error", err);
		break;
	}
	hold_backpressure(w, c);
}

/* Flush time: encrypt the session's plaintext replies into the ciphertext
 * block. Only with no send in flight and room for the whole block, so a
 * record never has to be split across calls. */
static void
tls_encrypt_out(struct worker *w, struct conn *c)
{
	struct conn_tls *t = c->tls;

	if (!t->io.done || c->out.len == 0 || t->io.ssl == NULL)
		return;
	if (CONN_TLS_OUT - t->io.out_len < c->out.len + CONN_TLS_RECORD_OVERHEAD)
		return; /* after the send in flight */
	int err = 0;
	if (tls_io_write(&t->io, c->out.buf, c->out.len, &err) == 0) {
		c->out.len = 0;
		return;
	}
	/* Cannot happen with the room checked above; if it does, end the
	 * connection (conn_flush_all tears it down). */
	char why[160];
	log_err("TLS write to [%s]:%u failed: %s", c->peer.addr_text, c->peer.port,
		tls_io_strerror(err, why, sizeof why));
	w->stats.tls_errors++;
	c->logged_error = true;
	c->out.len = 0;
	c->eof = true;
}
