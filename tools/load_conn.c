/*
 * tools/load_conn.c - the connections of one ringmx-load worker: connect, receive,
 * send, TLS, and the glue to the SMTP/LMTP client core (engine/smtp/smtp_client.h)
 * that speaks the protocol on each of them.
 *
 * Ownership: ringmx-load (issue 4; TLS from issue 5). Every function runs on the
 * worker thread that owns the connection (struct eng, load_engine.c); messages are
 * built and counted by load_tx.c.
 *
 * The client core writes the commands and reads the replies; nothing here parses a
 * reply or formats a command (only the PROXY header, which comes before SMTP). Bytes
 * received are fed to the core (conn_feed), what it writes goes out with the body
 * spans it names (conn_flush), and its events become counters and closes. The core's
 * callback only records (conn_event); conn_after() acts once the core has returned,
 * because the core must not be re-entered from its callback.
 *
 * Send: one sendmsg per connection and loop: [output][template span][output]...
 * in wire order. While a write is in flight the core appends behind it in the same
 * output buffer, so replies that arrive during a send are answered in the next one;
 * once the write is done the buffer starts over at its front (out_release), so a
 * connection keeps writing into the same few cache lines. A body span is copied into
 * the output when it is short (the tail: INLINE_MAX) and goes as an iovec otherwise
 * (the header block, the template, which is never copied): a pipelined DATA write is
 * [the commands before the body][header block][template prefix][tail, ".", the next
 * MAIL/RCPT/DATA or QUIT], as before ringmx-load ran on the client core. MSG_WAITALL
 * lets the kernel retry short sends (proxy.c submit_send); a short completion is still
 * handled by advancing the iovecs.
 *
 * TLS (--tls, --starttls; issue 5) sits at the two ends and nowhere else: conn_feed()
 * is the single entry for received plaintext and conn_submit_send() the single exit
 * for output. On a TLS connection (c->tls.io.ssl set) tls_on_data() hands the provided
 * buffer to wolfSSL as a view (load_tls.c), decrypts into a per-thread plaintext
 * buffer and calls conn_feed(); conn_submit_send() encrypts the same iovecs the
 * plaintext path would sendmsg() into the connection's ciphertext buffer, at most
 * TLS_OUT_TARGET bytes ahead of the socket (a 64 KiB body streams through in pieces,
 * so the buffer stays small), and tls_kick() sends that buffer. --starttls is the
 * core's policy ENCRYPT (VERIFY with --tls-verify: ringmx-load checks the certificate
 * itself): SMTPC_EV_TLS starts the handshake, smtpc_tls_done() the EHLO after it.
 * --tls handshakes before the greeting, so the core (policy NONE) sees plaintext only.
 */
#include "load_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ---- connections ---- */

static void tls_begin(struct eng *e, struct conn *c);
static void put_proxy(struct eng *e, struct conn *c, struct wbuf *w);
static void core_start(struct eng *e, struct conn *c);
static void conn_deadline(struct eng *e, struct conn *c, bool heard);

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

/* Ends the connection and counts why; every message still open fails. Never from
 * the core's callback (smtpc_abort would be a no-op there): conn_after() calls it. */
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
	/* The core gives every message still open a result that is the connection's
	 * end (load_tx.c counts them failed); its events are only counted now. */
	if (c->core_open) {
		c->aborting = true;
		smtpc_abort(&c->sc, "connection closed");
		c->aborting = false;
	}
	c->phase = P_CLOSING;
	c->deadline = 0;
	c->waiting = false;
	c->span = NULL;
	c->span_len = 0;
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
	c->pipe = false;
	c->msgs_started = 0;
	c->inflight = 0;
	c->depth = 1;
	c->deadline = 0;
	c->out_total = c->out_done = 0;
	c->tls.io.out_len = c->tls.out_busy = c->tls.out_sent = 0;
	c->so.len = 0;
	c->obase = c->seg = 0;
	c->npend = 0;
	conn_arm_recv(e, c);
	if (e->o->tls != LOAD_TLS_IMPLICIT && e->o->proxy != LOAD_PROXY_NONE) {
		/* Before anything SMTP, and before the core: its EHLO is written after. */
		struct wbuf w = { c->so.buf, 0, c->so.cap };
		put_proxy(e, c, &w);
		c->so.len = w.len;
		dirty_push(e, c);
	}
	core_start(e, c); /* the greeting is due; under implicit TLS after the handshake */
	conn_deadline(e, c, true);
	if (e->o->tls == LOAD_TLS_IMPLICIT) {
		/* The PROXY header goes first and in the clear, then the ClientHello; both
		 * leave in one send. */
		if (e->o->proxy != LOAD_PROXY_NONE) {
			struct wbuf w = { c->tls.io.out, 0, c->tls.io.out_cap };
			put_proxy(e, c, &w);
			c->tls.io.out_len = w.len;
		}
		tls_begin(e, c);
	}
}

/* ---- the client core ---- */

/* The SMTPC_EXT_* bits this run never uses, whatever the server offers: without
 * --bdat CHUNKING (DATA is what was asked for), with --pipelining off PIPELINING, and
 * SIZE always: the load's sizes are the user's, the server's limit is for the server
 * to enforce (at the end of data, as before ringmx-load ran on the core), and the
 * commands stay what they were, so old and new figures compare. */
static unsigned ext_ignore(const struct load_opts *o)
{
	unsigned ign = SMTPC_EXT_SIZE;
	if (!o->bdat)
		ign |= SMTPC_EXT_CHUNKING;
	if (!o->pipelining)
		ign |= SMTPC_EXT_PIPELINING;
	return ign;
}

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

static void conn_event(void *arg, const struct smtpc_event *ev);

static void core_start(struct eng *e, struct conn *c)
{
	static const struct smtpc_ops ops = { .event = conn_event };
	const struct load_opts *o = e->o;
	struct smtpc_conf conf = {
		.helo = o->ehlo,
		.tls = o->tls != LOAD_TLS_STARTTLS ? SMTPC_TLS_NONE
		       : o->tls_verify         ? SMTPC_TLS_VERIFY
		                               : SMTPC_TLS_ENCRYPT,
		.ext_ignore = ext_ignore(o),
	};
	if (smtpc_init(&c->sc, &conf, &c->so, &ops, c) < 0) {
		/* --ehlo is checked by the command line; the buffer is sized for it. */
		fprintf(stderr, "ringmx-load: the client core refused its setup (bug)\n");
		abort();
	}
	c->core_open = true;
	c->core_closed = c->want_tls = false;
	c->close_why = WHY_OK;
}

/* The session is usable: what the run needs from the server, and how deep this
 * connection pipelines (load_tx.c msg_start_due). From the callback. */
static void core_ready(struct eng *e, struct conn *c)
{
	const struct load_opts *o = e->o;
	unsigned ext = smtpc_ext(&c->sc);
	c->consec_fail = 0;
	c->ehlo_ok = true;
	c->pipe = o->pipelining && (ext & SMTPC_EXT_PIPELINING);
	if (o->pipelining && !c->pipe)
		e->t->st.lockstep_sessions++;
	c->depth = c->pipe && !o->bdat ? 2 : 1;
	if (o->bdat && !(ext & SMTPC_EXT_CHUNKING)) {
		fatal_capability(e, c, "server does not advertise CHUNKING (RFC 3030); --bdat needs it");
		smtpc_quit(&c->sc);
	}
}

/* The session failed before it was usable (SMTPC_EV_DEFER): which way, from the command
 * whose reply ended it. From the callback. */
static void core_defer(struct eng *e, struct conn *c, const struct smtpc_event *ev)
{
	struct load_stats *st = &e->t->st;
	bool tls_required = ev->reply.enh_len == 5 && memcmp(ev->reply.enh, "4.7.4", 5) == 0;
	switch (ev->cmd) {
	case SMTPC_CMD_EHLO:
		if (tls_required) {
			/* Like --bdat: measuring plaintext when TLS was asked for would be a
			 * silent lie, so a server without STARTTLS ends the run (exit 2). */
			fatal_capability(e, c, "server does not advertise STARTTLS (RFC 3207); --starttls needs it");
			c->close_why = WHY_SESSION;
			return;
		}
		/* EHLO refused (and HELO after it): */
		/* fall through */
	case SMTPC_CMD_GREETING:
	case SMTPC_CMD_HELO:
		st->session_errors++;
		c->consec_fail++;
		c->close_why = WHY_SESSION;
		return;
	case SMTPC_CMD_STARTTLS: {
		/* The core says "TLS is required but the server refused STARTTLS: 454
		 * ..."; the report has always said "STARTTLS refused: 454 ...". */
		const char *t = ev->reply.text;
		size_t n = ev->reply.text_len;
		const char *r = memmem(t, n, "STARTTLS: ", 10);
		if (r != NULL) {
			n -= (size_t)(r + 10 - t);
			t = r + 10;
		}
		char why[80];
		snprintf(why, sizeof(why), "%.*s", (int)n, t);
		tls_note(e, "STARTTLS refused: ", why);
		st->session_errors++;
		c->consec_fail++;
		c->close_why = WHY_SESSION;
		return;
	}
	default:
		c->close_why = WHY_PROTOCOL;
		return;
	}
}

/* The core's events (docs/smtp-client.md, "Events"): record and count only; the core
 * must not be called back into from here, except smtpc_quit. */
static void conn_event(void *arg, const struct smtpc_event *ev)
{
	struct conn *c = arg;
	struct eng *e = c->e;
	switch (ev->type) {
	case SMTPC_EV_READY:
		core_ready(e, c);
		return;
	case SMTPC_EV_TLS:
		c->want_tls = true;
		return;
	case SMTPC_EV_BODY:
		c->span = ev->body;
		c->span_len = ev->body_len;
		return;
	case SMTPC_EV_RCPT:
		msg_on_rcpt(e, c, ev);
		return;
	case SMTPC_EV_TX:
		msg_on_tx(e, c, ev->tx->user);
		return;
	case SMTPC_EV_DEFER:
		if (!c->aborting)
			core_defer(e, c, ev);
		return;
	case SMTPC_EV_CLOSE:
		c->core_open = false;
		if (c->aborting)
			return;
		c->core_closed = true;
		/* After QUIT: orderly (a session refused earlier stays so, for the
		 * slot's retirement); a 421 is the server going away with work open;
		 * a DEFER said already; else the core could not make sense of it. */
		if (ev->cmd == SMTPC_CMD_QUIT)
			c->close_why = c->consec_fail ? WHY_SESSION : WHY_OK;
		else if (ev->reply.code == 421)
			c->close_why = WHY_DISCONNECT;
		else if (c->close_why == WHY_OK)
			c->close_why = WHY_PROTOCOL;
		return;
	}
}

/* A body span of the core: a short one (the tail) is copied into the output, the
 * others (the header block, the template, which is never copied) go as iovecs between
 * the output before them and the output after them. false: no room for another iovec
 * (the span waits for the next write). */
static bool span_take(struct eng *e, struct conn *c)
{
	const char *p = (const char *)c->span;
	size_t n = c->span_len;
	bool tmpl = p >= e->body->tmpl && p < e->body->tmpl + e->body->tmpl_len;
	if (!tmpl && n <= INLINE_MAX && c->so.cap - c->so.len >= n) {
		memcpy(c->so.buf + c->so.len, p, n);
		c->so.len += n;
		return true;
	}
	if (c->npend + 2 > PEND_MAX)
		return false;
	if (c->so.len > c->seg)
		c->pend[c->npend++] = (struct iovec){ c->so.buf + c->seg, c->so.len - c->seg };
	c->pend[c->npend++] = (struct iovec){ (void *)p, n };
	c->seg = c->so.len;
	return true;
}

/*
 * After every call into the core: take the spans it named (each smtpc_body_sent()
 * may name the next), start the STARTTLS handshake it asked for, close when it closed.
 * The STARTTLS check is the client side of CVE-2011-0411: the core dropped whatever
 * came after the 220 unread; that anything came at all means someone injected it.
 */
void conn_after(struct eng *e, struct conn *c)
{
	while (c->phase == P_OPEN) {
		if (c->core_closed) {
			c->core_closed = false;
			conn_close(e, c, c->close_why);
			return;
		}
		if (c->want_tls) {
			c->want_tls = false;
			if (smtpc_tls_dropped(&c->sc) > 0) {
				tls_note(e, "server sent data after its 220 reply to STARTTLS", "");
				conn_close(e, c, WHY_PROTOCOL);
				return;
			}
			tls_begin(e, c);
			continue;
		}
		if (c->span == NULL || !span_take(e, c))
			break;
		c->span = NULL;
		c->span_len = 0;
		smtpc_body_sent(&c->sc);
	}
	if (c->phase == P_OPEN)
		dirty_push(e, c);
}

/* The cache lines a completion of c touches first: its own state, and for replies
 * the client core's (the fields every reply touches, the reply, the head of the reply
 * queue) and its messages' (load_engine.c asks one completion ahead). */
void conn_prefetch(const struct conn *c, bool replies)
{
	const char *p = (const char *)c;
	__builtin_prefetch(p);
	__builtin_prefetch(p + 64);
	p = (const char *)&c->sc;
	__builtin_prefetch(p);
	__builtin_prefetch(p + 64);
	if (!replies)
		return;
	__builtin_prefetch(&c->sc.reply);
	__builtin_prefetch((const char *)&c->sc.reply + 64);
	__builtin_prefetch(&c->sc.exp[0]); /* the core keeps the entries in use here */
	__builtin_prefetch(&c->sc.exp[4]);
	for (unsigned s = 0; s < MSG_SLOTS; s++) {
		p = (const char *)&c->msg[s]; /* transaction, pieces, recipients, results */
		for (unsigned k = 0; k < 320; k += 64)
			__builtin_prefetch(p + k);
	}
}

/* What a flush of c writes: its output, and the header block and transaction of a
 * message it may start. */
void conn_prefetch_flush(const struct conn *c)
{
	__builtin_prefetch(c->so.buf + c->so.len, 1);
	__builtin_prefetch(c->so.buf + c->so.len + 64, 1);
	for (unsigned s = 0; s < MSG_SLOTS; s++) {
		const struct msg *m = &c->msg[s];
		if (m->live)
			continue;
		__builtin_prefetch(&m->tx, 1);
		__builtin_prefetch(m->addr, 1);
		for (unsigned k = 0; k < 256; k += 64)
			__builtin_prefetch(m->hdr + k, 1);
		break;
	}
}

/* Replies are due (or the handshake is on): the reply timeout runs. It restarts when
 * the server was heard from, or when the wait begins. */
bool conn_waits(const struct conn *c)
{
	return (c->core_open && (smtpc_status(&c->sc) & SMTPC_ST_WAIT)) ||
	       (c->tls.io.ssl && !c->tls.io.done);
}

static void conn_deadline(struct eng *e, struct conn *c, bool heard)
{
	if (!conn_waits(c))
		c->deadline = 0;
	else if (heard || c->deadline == 0)
		c->deadline = e->now + (uint64_t)(e->o->timeout * (double)NS);
}

/* Plaintext from the server (see the TLS note at the top). */
static void conn_feed(struct eng *e, struct conn *c, const char *p, size_t n)
{
	if (!c->core_open)
		return;
	smtpc_feed(&c->sc, p, n);
	conn_after(e, c);
	if (c->phase == P_OPEN)
		conn_deadline(e, c, true);
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
 * all plaintext is encrypted yet (the iovecs, and the output buffer they point into,
 * are still referenced). */
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
	conn_deadline(e, c, true); /* the handshake is bounded like a reply */
	char err[128];
	if (load_tls_handshake(&c->tls, err, sizeof(err)) < 0) {
		tls_note(e, "handshake: ", err);
		conn_close(e, c, WHY_TLS);
		return;
	}
	tls_kick(e, c);
}

/* ---- writes ---- */

/* The write in flight is done with so.buf[0, obase): what the core wrote since moves
 * to the front (usually nothing: replies come after the write they answer), and the
 * pending iovecs into it with it. Only when no write is in flight (conn_out_busy). */
static void out_release(struct conn *c)
{
	size_t b = c->obase;
	if (b == 0)
		return;
	char *buf = c->so.buf;
	size_t rest = c->so.len - b;
	if (rest > 0) {
		memmove(buf, buf + b, rest);
		for (unsigned i = 0; i < c->npend; i++) {
			char *p = c->pend[i].iov_base;
			if (p >= buf + b && p < buf + c->so.len)
				c->pend[i].iov_base = p - b;
		}
	}
	c->so.len = rest;
	c->seg -= b;
	c->obase = 0;
}

/*
 * Builds one write from what the core wrote and the spans it named, and submits it:
 * the only place that sends, called once per loop for each dirty connection. Nothing
 * while a send is in flight (or, under TLS, its plaintext is not all encrypted), so the
 * other output buffer is free to swap in; before the write, the messages that are due
 * start (load_tx.c), so their MAIL joins it.
 */
static void flush(struct eng *e, struct conn *c)
{
	if (c->phase != P_OPEN || conn_out_busy(c) || (c->tls.io.ssl && !c->tls.io.done))
		return;
	out_release(c);
	if (c->span != NULL) /* an iovec did not fit in the last write */
		conn_after(e, c);
	if (c->core_open && (smtpc_status(&c->sc) & SMTPC_ST_OUTFULL)) {
		smtpc_pump(&c->sc);
		conn_after(e, c);
	}
	msg_start_due(e, c);
	if (c->phase != P_OPEN)
		return;
	unsigned k = c->npend;
	memcpy(c->iov, c->pend, k * sizeof(c->iov[0]));
	if (c->so.len > c->seg)
		c->iov[k++] = (struct iovec){ c->so.buf + c->seg, c->so.len - c->seg };
	if (k == 0)
		return; /* nothing to say, e.g. waiting for a --rate slot */
	size_t total = 0;
	for (unsigned i = 0; i < k; i++)
		total += c->iov[i].iov_len;
	/* The core goes on writing behind what is now the send's. */
	c->obase = c->seg = c->so.len;
	c->npend = 0;
	memset(&c->mh, 0, sizeof(c->mh));
	c->mh.msg_iov = c->iov;
	c->mh.msg_iovlen = k;
	c->out_total = total;
	c->out_done = 0;
	conn_submit_send(e, c);
	if (c->phase == P_OPEN)
		conn_deadline(e, c, false);
}

/* c is on the dirty list until this returns, so what the core does meanwhile
 * (conn_after asks for a flush) lands in this write, not in a second list entry. */
void conn_flush(struct eng *e, struct conn *c)
{
	flush(e, c);
	c->dirty = false;
}

/* ---- start-up ---- */

/* Per connection: an output buffer for two whole pipelined writes, the one in flight
 * and the next (each RSET, MAIL, every RCPT, DATA or BDAT, QUIT, each address at most
 * two patterns and a 20-digit number; PROXY and EHLO are shorter; plus two header
 * blocks and tails copied in), and the message slots' envelopes (load_tx.c). One
 * malloc at start-up. */
static size_t align16(size_t n)
{
	return (n + 15) & ~(size_t)15; /* the slots after the buffers hold pointers */
}

static size_t out_cap(const struct load_opts *o)
{
	return align16(512 + LOAD_EHLO_MAX + (size_t)(o->rcpts + 1) * (2 * LOAD_PATTERN_MAX + 64) +
	               MSG_SLOTS * (HDR_CAP + 8));
}

size_t conn_block_size(const struct load_opts *o)
{
	return 2 * out_cap(o) + MSG_SLOTS * align16(msg_block_size(o));
}

void conn_block_init(struct conn *c, const struct load_opts *o, char *block)
{
	size_t mb = align16(msg_block_size(o));
	c->so = (struct smtpc_out){ block, 0, 2 * out_cap(o) };
	char *m = block + 2 * out_cap(o);
	for (unsigned s = 0; s < MSG_SLOTS; s++)
		msg_block_init(&c->msg[s], o, m + s * mb);
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
	if (e->o->tls == LOAD_TLS_STARTTLS && c->core_open) {
		/* RFC 3207 4.2: the core forgets what the EHLO said and asks again. */
		smtpc_tls_done(&c->sc, true);
		conn_after(e, c);
	}
}

/* The server closed: fine when nothing was due and no message is open (after QUIT,
 * or an idle connection), else a disconnect. */
static void conn_eof(struct eng *e, struct conn *c)
{
	bool quitting = !c->core_open || smtpc_state(&c->sc) == SMTPC_S_QUIT ||
	                !(smtpc_status(&c->sc) & SMTPC_ST_WAIT);
	conn_close(e, c, quitting && c->inflight == 0 ? WHY_OK : WHY_DISCONNECT);
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
		if (c->phase != P_OPEN)
			return;
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
	if (!conn_out_busy(c))
		dirty_push(e, c); /* the next write may go */
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
	dirty_push(e, c); /* the next write may go */
}
