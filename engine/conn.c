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
 *    through worker->hold_next; at most CONN_HOLD_MAX before the recv is
 *    cancelled so TCP pushes back on the client.
 *  - The output block is taken from the worker's pool when the session may
 *    write and returned when everything has been sent. While a send is in
 *    flight, bytes [0, send_len) belong to the kernel; the session may only
 *    append after out.len.
 *  - A slot is freed (gen bumped) only when no recv or send is in the
 *    kernel, and returned to the free stack only when it is on no list.
 */
#include "worker.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long a closing connection may wait for its last send (a client that
 * stopped reading) before the send is cancelled. */
#define CONN_CLOSE_TIMEOUT_NS (10ull * 1000000000ull)

static void conn_after_io(struct worker *w, struct conn *c);
static void conn_teardown(struct worker *w, struct conn *c);

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
	if (c->in_flush || c->out.len == 0 || c->send_inflight)
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
	w->accept_wanted = true;
}

static void
arm_recv(struct worker *w, struct conn *c, bool poll_first)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	/* The server speaks first, so the first receive would find nothing:
	 * POLL_FIRST skips that attempt. liburing 2.3 has no buf_group
	 * helper, so the group is set by hand. */
	if (poll_first)
		sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->br.bgid;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->gen, c->idx));
	c->recv_armed = true;
	c->recv_wanted = false;
}

static void
cancel_op(struct worker *w, struct conn *c, enum op op)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_cancel64(sqe, ud_make(op, c->gen, c->idx), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0));
}

static void
update_timer(struct worker *w, struct conn *c)
{
	uint64_t d = c->state == CONN_CLOSING ? c->close_deadline : smtp_session_deadline(&c->session);
	if (d == UINT64_MAX)
		timer_cancel(w->wheel, &c->timer);
	else
		timer_set(w->wheel, &c->timer, d);
}

static void
peer_fill(struct conn *c)
{
	socklen_t len = sizeof(c->peer.addr);
	memset(&c->peer, 0, sizeof(c->peer));
	if (getpeername(c->fd, (struct sockaddr *)&c->peer.addr, &len) < 0) {
		snprintf(c->peer.addr_text, sizeof(c->peer.addr_text), "unknown");
		return;
	}
	if (c->peer.addr.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&c->peer.addr;
		inet_ntop(AF_INET, &a->sin_addr, c->peer.addr_text, sizeof(c->peer.addr_text));
		c->peer.port = ntohs(a->sin_port);
	} else if (c->peer.addr.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&c->peer.addr;
		/* RFC 5321 4.1.3 IPv6 address literal form, as Received: wants. */
		memcpy(c->peer.addr_text, "IPv6:", 5);
		inet_ntop(AF_INET6, &a->sin6_addr, c->peer.addr_text + 5, sizeof(c->peer.addr_text) - 5);
		c->peer.port = ntohs(a->sin6_port);
	}
}

void
conn_open(struct worker *w, int fd, unsigned listener)
{
	w->stats.connections_accepted++;
	if (w->nfree == 0) {
		/* Refuse politely rather than leave the client in the backlog:
		 * a non-blocking send of one line into an empty socket buffer. */
		char msg[SMTP_HOSTNAME_MAX + 64];
		int n = snprintf(msg, sizeof(msg), "421 4.3.2 %s Error: too many connections\r\n",
				 w->cfg->smtp.hostname);
		ssize_t r = send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)r;
		close(fd);
		w->stats.connections_refused++;
		return;
	}
	uint32_t idx = w->free_conns[--w->nfree];
	struct conn *c = &w->conns[idx];
	uint32_t gen = (c->gen + 1) & 0xffffff;
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
	peer_fill(c);
	w->active++;

	out_ensure(w, c);
	smtp_session_init(&c->session, &w->cfg->smtp, &c->peer, &c->out, &w->sink, &w->hooks, c,
			  &w->stats, w->now, w->wall);
	smtp_session_start(&c->session);
	arm_recv(w, c, true);
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

/* Feed held input to the session for as long as it takes it. */
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
	}
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
		pump(w, c);
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
		c->eof = true; /* nothing more can be said to this client */
	} else {
		size_t sent = (size_t)res;
		assert(sent <= c->out.len);
		memmove(c->out.buf, c->out.buf + sent, c->out.len - sent);
		c->out.len -= sent;
	}
	if (c->state == CONN_OPEN && !c->eof)
		pump(w, c);
	conn_after_io(w, c);
}

/* After anything happened to c: schedule the flush, move the timer, and
 * start or continue the close. */
static void
conn_after_io(struct worker *w, struct conn *c)
{
	if (c->state == CONN_OPEN) {
		if (c->eof) {
			smtp_session_eof(&c->session);
			c->state = CONN_CLOSING;
			c->out.len = c->send_inflight ? c->out.len : 0;
		} else if ((smtp_session_status(&c->session) & SMTP_ST_CLOSE) && c->out.len == 0 &&
			   !c->send_inflight) {
			c->state = CONN_CLOSING;
		}
	}
	if (c->state == CONN_CLOSING) {
		conn_teardown(w, c);
		return;
	}
	mark_flush(w, c);
	out_release(w, c);
	update_timer(w, c);
}

static void
log_disconnect(struct worker *w, struct conn *c)
{
	const struct smtp_counts *k = &c->session.counts;
	char line[512];
	size_t off = (size_t)snprintf(line, sizeof(line), "disconnect from [%s]:%u", c->peer.addr_text,
				      c->peer.port);
	if (c->session.helo[0])
		off += (size_t)snprintf(line + off, sizeof(line) - off, " helo=<%s>", c->session.helo);
#define COUNT(name)                                                                                \
	if (k->name && off < sizeof(line))                                                         \
		off += (size_t)snprintf(line + off, sizeof(line) - off, " " #name "=%u", k->name);
	COUNT(ehlo)
	COUNT(helo)
	COUNT(mail)
	COUNT(rcpt)
	COUNT(data)
	COUNT(bdat)
	COUNT(rset)
	COUNT(noop)
	COUNT(vrfy)
	COUNT(quit)
	COUNT(unknown)
	COUNT(messages)
	COUNT(errors)
#undef COUNT
	if (off < sizeof(line))
		off += (size_t)snprintf(line + off, sizeof(line) - off, " commands=%u duration=%.3fs",
					k->commands, (double)(w->now - c->t_connect) / 1e9);
	log_line(LOG_INFO, line, off < sizeof(line) ? off : sizeof(line) - 1);
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
		 * stopped reading is cancelled after CONN_CLOSE_TIMEOUT_NS. */
		if (c->close_deadline == 0) {
			c->close_deadline = w->now + CONN_CLOSE_TIMEOUT_NS;
			update_timer(w, c);
		}
		return;
	}
	hold_drop(w, c);
	timer_cancel(w->wheel, &c->timer);
	close(c->fd);
	c->fd = -1;
	c->out.len = 0;
	out_release(w, c);
	if (!c->logged_error || c->session.counts.commands)
		log_disconnect(w, c);
	w->stats.connections_closed++;
	assert(w->active > 0);
	w->active--;
	c->state = CONN_FREE;
	c->gen = (c->gen + 1) & 0xffffff;
	if (!c->in_flush && !c->in_rearm)
		free_slot(w, c);
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
		if (c->send_inflight || c->out.len == 0)
			continue;
		struct io_uring_sqe *sqe = worker_sqe(w);
		/* MSG_WAITALL: the kernel retries a short send itself, so a
		 * completion normally means everything went out. */
		io_uring_prep_send(sqe, c->fd, c->out.buf, c->out.len, MSG_NOSIGNAL | MSG_WAITALL);
		io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, c->idx));
		c->send_inflight = true;
		c->send_len = c->out.len;
		w->stats.sends++;
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
		    c->nheld >= CONN_HOLD_MAX)
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
}

void
conn_on_timer(struct timer_node *n, void *arg)
{
	struct worker *w = arg;
	struct conn *c = (struct conn *)((char *)n - offsetof(struct conn, timer));
	if (c->state == CONN_CLOSING) {
		/* The last send did not finish in time: give up on it. */
		if (c->send_inflight)
			cancel_op(w, c, OP_SEND);
		if (c->recv_armed)
			cancel_op(w, c, OP_RECV);
		return;
	}
	if (c->state != CONN_OPEN)
		return;
	out_ensure(w, c);
	if (smtp_session_tick(&c->session, w->now)) {
		log_info("timeout after %s from [%s]:%u", c->session.state >= SMTP_S_DATA ? "DATA" : "command",
			 c->peer.addr_text, c->peer.port);
		hold_drop(w, c);
	}
	conn_after_io(w, c);
}

void
conn_drain(struct worker *w, struct conn *c, bool force)
{
	if (c->state != CONN_OPEN)
		return;
	out_ensure(w, c);
	smtp_session_shutdown(&c->session, force);
	if (force)
		hold_drop(w, c);
	conn_after_io(w, c);
}

void
conn_set_conf(struct conn *c, const struct smtp_conf *conf)
{
	if (c->state == CONN_OPEN)
		smtp_session_set_conf(&c->session, conf);
}

/* The sink's asynchronous verdict on a message (sink.h). */
void
conn_sink_verdict(void *owner, int res)
{
	struct conn *c = owner;
	struct worker *w = c->w;
	assert(c->state == CONN_OPEN);
	out_ensure(w, c);
	smtp_session_verdict(&c->session, res, w->now);
	pump(w, c);
	conn_after_io(w, c);
}

void
conn_log_hook(void *owner, const char *line, size_t len)
{
	(void)owner;
	log_line(LOG_INFO, line, len);
}
