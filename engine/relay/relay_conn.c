/*
 * relay_conn.c - the relay's outbound connections: connect, recv and send
 * through the worker's ring for the pure SMTP/LMTP client core
 * (engine/smtp/smtp_client.c), and the core's events turned into the jobs'
 * results. Objects and ownership: relay.c; shared declarations:
 * relay_internal.h.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_SMTP
#include "relay_internal.h"

/* ---- outbound connections ---- */

/*
 * An outbound connection is the ring's side of one struct smtpc, the pure
 * SMTP/LMTP client (engine/smtp/smtp_client.c): replies received are fed to it,
 * the commands it writes into `out` are sent, and the body spans it names
 * are sent straight from the spool mapping after them. Its events decide
 * the jobs' results (conn_event). Nothing here knows the protocol.
 */

static void conn_starttls(struct oconn *c);
static void conn_after(struct oconn *c);

/* Read when a transaction starts and ends (relay_delivery histogram): r->now
 * is the loop's, taken before the wait, so it would count the sleep. */
static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* "host[ip]:port" of the address this connection uses, for logs. */
static const char *
conn_name(const struct oconn *c)
{
	return c->ep < c->hop->conf.na ? c->hop->epname[c->ep] : c->hop->name;
}

static uint64_t
conn_ud(const struct oconn *c, enum subop op)
{
	return ud_make(c->r->env.ud_op, c->gen, op, c->idx);
}

static void core_unreadable(struct oconn *c);

/* Every call into the client core that may read a body from the mapping:
 * true if it hit a bad page (the connection is failing; return at once). */
#define CORE_CALL(c, call)                                                                         \
	({                                                                                         \
		int core_err_;                                                                     \
		MAP_GUARD(core_err_, (void)(call));                                                \
		if (core_err_ < 0)                                                                 \
			core_unreadable(c);                                                        \
		core_err_ < 0;                                                                     \
	})

/* Replies due, or a send in flight: relay_reply_timeout; an idle usable
 * connection: relay_idle_timeout. The deadline moves only when called,
 * which the callers do when something was written or read. */
void
oconn_timer_update(struct oconn *c)
{
	struct relay *r = c->r;
	const struct relay_conf *rc = &r->cfg->relay;
	if (c->st == C_CONNECTING || c->st == C_CLOSING) {
		if (timer_armed(&c->t.n))
			timer_cancel(r->wheel, &c->t.n);
		return;
	}
	unsigned st = smtpc_status(&c->sc);
	uint64_t d = (st & SMTPC_ST_IDLE) && !c->send_inflight && c->st == C_READY
	                 ? rc->idle_timeout
	                 : rc->reply_timeout;
	timer_set(r->wheel, &c->t.n, r->now + d);
}

static void
active_remove(struct oconn *c, struct rjob *j)
{
	for (uint32_t i = 0; i < c->nactive; i++)
		if (c->active[i] == j) {
			c->active[i] = c->active[--c->nactive];
			return;
		}
	assert(!"job not active on this connection");
}

/* The connection failed before the next hop was usable: this address is
 * skipped for retry_min; while another one is left, the next connection
 * goes there at once and the next hop as a whole is not failing. */
static void
conn_down(struct relay *r, struct rhop *h, unsigned ep, const char *reason)
{
	if (ep < h->conf.na)
		h->ep_down[ep] = r->now + r->cfg->relay.retry_min;
	if (rhop_first_up(r, h) < h->conf.na) {
		log_info("relay: %s failed; trying the next address of %s",
		         ep < h->conf.na ? h->epname[ep] : "?", h->name);
		return;
	}
	if (h->fail_since == 0)
		h->fail_since = r->now;
	h->retry_at = r->now + r->cfg->relay.retry_min;
	if (h->nready == 0)
		rhop_defer_all(r, h, reason);
}

/* The connection fails (lost, timed out, refused to connect): the client
 * core gives every open recipient a temporary result with why, then closes.
 * why starts with its enhanced status ("4.4.2 timeout waiting for ..."). */
void
oconn_fail(struct oconn *c, const char *fmt, ...)
{
	if (c->st == C_CLOSING)
		return;
	char reason[RELAY_TEXT_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	log_info("relay: %s", reason + (strncmp(reason, "4.", 2) == 0 ? 6 : 0));
	c->r->env.stats->relay_conn_failed++;
	if (c->st == C_CONNECTING) {
		/* No client core yet. */
		struct relay *r = c->r;
		struct rhop *h = c->hop;
		unsigned ep = c->ep;
		oconn_close(c); /* may free c */
		conn_down(r, h, ep, reason);
		return;
	}
	c->failed = true;
	/* The core prefixes its own 4.4.2. */
	smtpc_abort(&c->sc, strncmp(reason, "4.", 2) == 0 ? reason + 6 : reason);
	conn_after(c);
}

static void
conn_release(struct oconn *c)
{
	struct relay *r = c->r;
	struct rhop *h = c->hop;
	if (c->connect_inflight || c->lt_inflight || c->recv_inflight || c->send_inflight)
		return; /* the last CQE releases it */
	if (c->fd >= 0)
		close(c->fd);
	if (c->tls != NULL)
		relay_tls_end(c->tls);
	c->tls = NULL;
	for (struct oconn **pp = &h->conns; *pp != NULL; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	h->nconns--;
	r->slots[c->idx] = NULL;
	r->slot_gen[c->idx]++;
	r->free_slots[r->nfree++] = c->idx;
	/* Kept for the next connection: no allocation per connection once
	 * the relay has had as many open as it needs. */
	c->next = r->free_conns;
	r->free_conns = c;
}

void
oconn_close(struct oconn *c)
{
	struct relay *r = c->r;
	if (c->st == C_CLOSING)
		return;
	if (c->st == C_READY || c->st == C_QUIT)
		c->hop->nready--;
	c->st = C_CLOSING;
	if (timer_armed(&c->t.n))
		timer_cancel(r->wheel, &c->t.n);
	/* Wakes the recv (0) and fails a send; a connect in flight ends by
	 * itself or by its linked timeout. */
	if (!c->shut && c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
	c->shut = true;
	conn_release(c);
}

void
oconn_open(struct relay *r, struct rhop *h)
{
	if (r->nfree == 0) {
		if (r->nslots == RELAY_SLOTS_MAX)
			return;
		if (r->nslots == r->slots_cap) {
			uint32_t cap = r->slots_cap ? r->slots_cap * 2 : 64;
			r->slots = realloc(r->slots, cap * sizeof(*r->slots));
			r->slot_gen = realloc(r->slot_gen, cap * sizeof(*r->slot_gen));
			r->free_slots = realloc(r->free_slots, cap * sizeof(*r->free_slots));
			if (r->slots == NULL || r->slot_gen == NULL || r->free_slots == NULL)
				panic("relay: out of memory");
			r->slots_cap = cap;
		}
		r->slot_gen[r->nslots] = 0;
		r->free_slots[r->nfree++] = r->nslots++;
	}
	const struct relay_hop_conf *hc = &h->conf;
	/* In order: the first address that has not failed lately, so a
	 * list is primary then backups and a name's addresses are tried as
	 * the resolver sorted them (RFC 6724). */
	unsigned ep = rhop_first_up(r, h);
	if (ep == hc->na)
		return;
	const struct relay_hop_addr *a = &hc->a[ep];
	int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_err("relay: socket for %s: %s", h->epname[ep], strerror(errno));
		h->retry_at = r->now + r->cfg->relay.retry_min;
		return;
	}
	if (a->sa.ss_family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	struct oconn *c = r->free_conns;
	struct relay_tls_conn *tls_mem = NULL;
	if (c != NULL) {
		r->free_conns = c->next;
		tls_mem = c->tls_mem;
	} else {
		c = malloc(sizeof(*c));
		if (c == NULL)
			panic("relay: out of memory");
	}
	memset(c, 0, offsetof(struct oconn, in));
	c->tls_mem = tls_mem;
	c->r = r;
	c->hop = h;
	c->idx = r->free_slots[--r->nfree];
	c->gen = r->slot_gen[c->idx];
	r->slots[c->idx] = c;
	c->fd = fd;
	c->st = C_CONNECTING;
	c->ep = (uint8_t)ep;
	c->member = a->member;
	c->lmtp = hc->m[a->member].proto == RELAY_PROTO_LMTP;
	c->local = a->sa.ss_family == AF_UNIX;
	c->t.kind = T_CONN;
	c->next = h->conns;
	h->conns = c;
	h->nconns++;
	r->env.stats->relay_connections++;

	uint64_t to = r->cfg->relay.connect_timeout;
	c->cts.tv_sec = (long long)(to / 1000000000u);
	c->cts.tv_nsec = (long long)(to % 1000000000u);
	/* The connect and its linked timeout must go in the same submit: a
	 * submit between them (SQ full) would split the link. */
	if (io_uring_sq_space_left(r->env.ring) < 2)
		io_uring_submit(r->env.ring);
	struct io_uring_sqe *sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&a->sa, a->len);
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_CONNECT));
	sqe->flags |= IOSQE_IO_LINK;
	sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_link_timeout(sqe, &c->cts, 0);
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_LTIMEOUT));
	c->connect_inflight = c->lt_inflight = true;
}

static void
conn_recv(struct oconn *c)
{
	if (c->recv_inflight || c->st == C_CLOSING)
		return;
	struct io_uring_sqe *sqe = c->r->env.get_sqe(c->r->env.ctx);
	if (c->tls != NULL) {
		/* Ciphertext; conn_tls_input() drains it all before the next. */
		assert(c->tls->cin_len < RELAY_TLS_CIN);
		io_uring_prep_recv(sqe, c->fd, c->tls->cin + c->tls->cin_len,
		                   RELAY_TLS_CIN - c->tls->cin_len, 0);
	} else {
		io_uring_prep_recv(sqe, c->fd, c->in, RELAY_IN_SIZE, 0);
	}
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_RECV));
	c->recv_inflight = true;
}

/* relay_tls_write() of mapped bytes under the guard (a function of its
 * own: no caller local lives across the sigsetjmp). 0 or -EIO. */
static int __attribute__((noinline)) tls_write_guarded(struct relay_tls_conn *t, const char *p,
                                                       size_t n, char *err, size_t errlen, int *wr)
{
	int gerr;
	MAP_GUARD(gerr, *wr = relay_tls_write(t, p, n, err, errlen));
	return gerr;
}

/* TLS: move the commands, then the pending body span, into ciphertext
 * (copied by wolfSSL, so the span is done once encrypted). false: failed. */
static bool
conn_encrypt(struct oconn *c)
{
	struct relay_tls_conn *t = c->tls;
	char err[160];
	if (!t->io.done)
		return true;
	for (;;) {
		const char *p;
		size_t n;
		bool span = c->so.len == 0;
		if (!span) {
			p = c->out;
			n = c->so.len;
		} else if (c->span != NULL && c->span_off < c->span_len) {
			p = (const char *)c->span + c->span_off;
			n = c->span_len - c->span_off;
		} else {
			return true;
		}
		size_t room = tls_io_room(&t->io);
		if (room == 0)
			return true; /* after the send in flight */
		if (n > room)
			n = room;
		int wr = 0, gerr = 0;
		if (span) /* mapped bytes: wolfSSL reads them (see MAP_GUARD) */
			gerr = tls_write_guarded(t, p, n, err, sizeof(err), &wr);
		else
			wr = relay_tls_write(t, p, n, err, sizeof(err));
		if (gerr < 0) {
			c->span_bad = true;
			return false;
		}
		if (wr < 0) {
			log_err("relay: TLS write to %s: %s", conn_name(c), err);
			return false;
		}
		if (!span) {
			memmove(c->out, c->out + n, c->so.len - n);
			c->so.len -= n;
		} else {
			c->span_off += n;
		}
	}
}

/* One send in flight at most: the commands in out, then the body span the
 * core asked for (plaintext: one sendmsg of both, the span read from the
 * spool mapping; TLS: the ciphertext they became). */
void
oconn_send(struct oconn *c)
{
	if (c->send_inflight || c->st == C_CLOSING || c->st == C_CONNECTING)
		return;
	struct io_uring_sqe *sqe;
	if (c->tls != NULL) {
		if (!conn_encrypt(c)) {
			/* Not from here (callers still use c): the recv ends
			 * with 0 and the usual failure path runs. */
			shutdown(c->fd, SHUT_RDWR);
			return;
		}
		if (c->tls->io.out_len == 0)
			return;
		sqe = c->r->env.get_sqe(c->r->env.ctx);
		io_uring_prep_send(sqe, c->fd, c->tls->io.out, c->tls->io.out_len, MSG_NOSIGNAL);
		c->send_tls = true;
	} else {
		unsigned n = 0;
		c->send_out = (uint32_t)c->so.len;
		if (c->so.len > 0)
			c->iov[n++] = (struct iovec){c->out, c->so.len};
		c->span_in_send = false;
		if (c->span != NULL && c->span_off < c->span_len) {
			c->iov[n++] = (struct iovec){(void *)(c->span + c->span_off),
			                             c->span_len - c->span_off};
			c->span_in_send = true;
		}
		if (n == 0)
			return;
		memset(&c->msg, 0, sizeof(c->msg));
		c->msg.msg_iov = c->iov;
		c->msg.msg_iovlen = n;
		sqe = c->r->env.get_sqe(c->r->env.ctx);
		io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
		c->send_tls = false;
	}
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_SEND));
	c->send_inflight = true;
	c->r->env.stats->relay_sends++;
}

/* A span is out (sent, or encrypted): the core goes on writing. */
static void
conn_span_done(struct oconn *c)
{
	if (c->span == NULL || c->span_off < c->span_len || (c->tls == NULL && c->so.len > 0))
		return;
	c->span = NULL;
	c->span_len = c->span_off = 0;
	(void)CORE_CALL(c, smtpc_body_sent(&c->sc));
}

/* The 220 to STARTTLS: from now on every byte goes through TLS. */
static void
conn_starttls(struct oconn *c)
{
	struct relay *r = c->r;
	char err[160];
	if (r->tlsctx == NULL) {
		/* relay_tls was turned off by a reload while STARTTLS was on
		 * its way: this connection is retried under the new setting. */
		smtpc_tls_failed(&c->sc, "relay_tls changed while starting TLS");
		return;
	}
	if (c->tls_mem == NULL)
		c->tls_mem = malloc(sizeof(*c->tls_mem));
	c->tls = c->tls_mem;
	if (c->tls == NULL || relay_tls_start(r->tlsctx, c->tls, c->hop->conf.m[c->member].host,
	                                      r->cfg->relay.tls == RELAY_TLS_VERIFY) < 0) {
		c->tls = NULL;
		smtpc_tls_failed(&c->sc, "cannot start TLS (out of memory, or a host name wolfSSL "
		                         "cannot check)");
		return;
	}
	if (relay_tls_handshake(c->tls, err, sizeof(err)) < 0) {
		char why[RELAY_TEXT_MAX];
		snprintf(why, sizeof(why), "TLS handshake with %.200s failed: %s", conn_name(c),
		         err);
		r->env.stats->relay_tls_failures++;
		smtpc_tls_failed(&c->sc, why);
	}
}

static void
conn_ready(struct oconn *c)
{
	struct rhop *h = c->hop;
	c->st = C_READY;
	c->ever_ready = true;
	h->nready++;
	if (c->ep < h->conf.na)
		h->ep_down[c->ep] = 0;
	if (h->fail_since != 0)
		log_info("relay: %s is reachable again", h->name);
	h->fail_since = 0;
	h->retry_at = 0;
}

/* Transactions one connection takes from its hop's queue at once: with
 * CHUNKING whole transactions stream (RELAY_WINDOW); with DATA each waits a
 * round trip for its 354, so two (one being written, one awaiting its final
 * reply) keep it busy and leave the rest of the queue to other
 * connections; without PIPELINING, one. */
static uint32_t
conn_window(const struct oconn *c)
{
	unsigned ext = smtpc_ext(&c->sc);
	if (!(ext & SMTPC_EXT_PIPELINING))
		return 1;
	return (ext & SMTPC_EXT_CHUNKING) ? RELAY_WINDOW : 2;
}

static void
body_touch(const struct rmsg *m)
{
	volatile uint8_t x = 0;
	for (uint64_t o = 0; o < m->body_len; o += 4096)
		x ^= m->body[o];
	if (m->body_len > 0)
		x ^= m->body[m->body_len - 1];
	(void)x;
}

/* Every page of the body can be read (one byte per page: the stride is the
 * page size). 0 or -EIO. */
static int
body_check(const struct rmsg *m)
{
	int err;
	MAP_GUARD(err, body_touch(m));
	return err;
}

static void
log_unreadable(const struct rmsg *m)
{
	m->seg->keep = true;
	log_err("relay: %s: message UNREADABLE in w%u/%016" PRIx64 ".seg (record at offset %" PRIu64
	        "): I/O error reading the spool; deferred, the segment is kept",
	        m->qid, m->seg->wdir, m->seg->seq, m->off);
}

/* A job whose body cannot be read, before anything was sent for it. */
static void
job_unreadable(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	char t[160];
	log_unreadable(m);
	int n = snprintf(t, sizeof(t),
	                 "4.3.0 message unreadable in the spool (I/O error at offset %" PRIu64
	                 " of w%u/%016" PRIx64 ".seg)",
	                 m->off, m->seg->wdir, m->seg->seq);
	j->attempts++;
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] == RS_PENDING)
			rjob_rcpt_temp(j, k, 451, t,
			               (size_t)n < sizeof(t) ? (size_t)n : sizeof(t) - 1);
	rjob_end_attempt(r, j);
}

/* The body went bad while it was being sent: the connection ends, its
 * jobs are deferred (this one with the reason), the segment is kept. */
static void
body_unreadable(struct oconn *c, struct rjob *j)
{
	struct rmsg *m = j->m;
	log_unreadable(m);
	oconn_fail(c,
	           "4.3.0 message unreadable in the spool (I/O error at offset %" PRIu64
	           " of w%u/%016" PRIx64 ".seg)",
	           m->off, m->seg->wdir, m->seg->seq);
}

/* A page of the body went bad after body_check() and the client core hit
 * it (DATA: the core reads the body to stuff dots). The core was left in
 * the middle of a call, with nothing written for the span it was reading:
 * the connection ends without the final dot, like a failed send. */
static void
core_unreadable(struct oconn *c)
{
	struct smtpc_tx *tx = c->sc.emit;
	if (tx != NULL && tx->user != NULL && !(tx->flags & SMTPC_TX_PROBE))
		body_unreadable(c, tx->user);
	else
		oconn_fail(c, "4.3.0 message unreadable in the spool (I/O error)");
}


/* Hand the next jobs of the hop's queue to the client core. */
void
oconn_fill(struct oconn *c)
{
	struct relay *r = c->r;
	struct rhop *h = c->hop;
	probe_fill(c); /* first: a client's session waits for each */
	while (c->st == C_READY && !r->draining && h->qhead != NULL &&
	       c->nactive < conn_window(c) && (smtpc_status(&c->sc) & SMTPC_ST_READY)) {
		struct rjob *j = h->qhead;
		rhop_dequeue(j);
		struct rmsg *m = j->m;
		if (body_check(m) < 0) {
			job_unreadable(r, j);
			continue;
		}
#ifdef RINGMX_FAULTS
		char cut[CONFIG_PATH_MAX + 64];
		rseg_path(r, m->seg, "seg", cut, sizeof(cut));
		fault_cut_file(cut);
#endif
		uint32_t n = 0;
		for (uint32_t k = 0; k < j->n; k++) {
			if (j->rs[k] == RS_DONE)
				continue; /* finished in an earlier attempt */
			const struct raddr *a = &m->rcpt[j->ri[k]];
			j->trc[n] = (struct smtpc_rcpt){.addr = a->p, .len = a->len};
			j->tk[n++] = k;
		}
		j->state = J_ACTIVE;
		j->conn = c;
		j->ep = c->ep;
		j->attempts++;
		j->t_attempt = mono_ns();
		c->active[c->nactive++] = j;
		r->env.stats->relay_attempts++;
		j->tx = (struct smtpc_tx){
		    .from = m->from,
		    .from_len = m->from_len,
		    .rcpt = j->trc,
		    .nrcpt = n,
		    .body = m->body,
		    .body_len = m->body_len,
		    .flags = ((m->flags & SPOOL_MAIL_SMTPUTF8) ? SMTPC_TX_SMTPUTF8 : 0u) |
		             ((m->flags & SPOOL_MAIL_8BITMIME) ? SMTPC_TX_8BITMIME : 0u),
		    .user = j,
		};
		int rc = n > 0 ? smtpc_submit(&c->sc, &j->tx) : -EINVAL;
		if (rc < 0) {
			/* An envelope the core refuses (an address too long, or
			 * with CR/LF): never sendable. */
			static const char t[] = "5.1.3 the envelope cannot be sent (bad address)";
			for (uint32_t k = 0; k < j->n; k++)
				if (j->rs[k] == RS_PENDING)
					rjob_rcpt_perm(r, j, k, 553, t, sizeof(t) - 1);
			active_remove(c, j);
			rjob_end_attempt(r, j);
		}
	}
	/* Submitting only queues: this writes the commands. */
	if (c->st == C_READY)
		(void)CORE_CALL(c, smtpc_pump(&c->sc));
}

/* "enh text" of a reply the core reports. */
size_t
oconn_reply_text(const struct smtpc_reply *rp, char *buf, size_t cap)
{
	int n = rp->enh_len > 0 ? snprintf(buf, cap, "%.*s %.*s", (int)rp->enh_len, rp->enh,
	                                   (int)rp->text_len, rp->text)
	                        : snprintf(buf, cap, "%.*s", (int)rp->text_len, rp->text);
	return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* What the client core reports (docs/smtp-client.md, "Events"). */
static void
conn_event(void *arg, const struct smtpc_event *ev)
{
	struct oconn *c = arg;
	struct relay *r = c->r;
	char t[RELAY_TEXT_MAX + 16];
	size_t tl;
	switch (ev->type) {
	case SMTPC_EV_READY:
		conn_ready(c);
		return;
	case SMTPC_EV_TLS:
		c->want_tls = true; /* after the callback: the core must not be re-entered */
		return;
	case SMTPC_EV_BODY:
		c->span_job = ev->tx->user;
		c->span = ev->body;
		c->span_len = ev->body_len;
		c->span_off = 0;
		return;
	case SMTPC_EV_RCPT: {
		if (ev->tx->flags & SMTPC_TX_PROBE) {
			probe_event(c, ev);
			return;
		}
		struct rjob *j = ev->tx->user;
		tl = oconn_reply_text(&ev->reply, t, sizeof(t));
		rjob_rcpt_result(r, j, j->tk[ev->rcpt], ev->reply.code, t, tl);
		return;
	}
	case SMTPC_EV_TX: {
		if (ev->tx->flags & SMTPC_TX_PROBE) {
			probe_event(c, ev);
			return;
		}
		struct rjob *j = ev->tx->user;
		RINGMX_HIST_OBSERVE(r->env.stats, relay_delivery, (mono_ns() - j->t_attempt) / 1000u);
		active_remove(c, j);
		rjob_end_attempt(r, j);
		return;
	}
	case SMTPC_EV_DEFER:
		c->defer = true;
		tl = oconn_reply_text(&ev->reply, t, sizeof(t));
		snprintf(c->why, sizeof(c->why), "%.*s",
		         (int)(tl < sizeof(c->why) ? tl : sizeof(c->why) - 1), t);
		if (!c->failed) {
			log_info("relay: %s: %s", conn_name(c), c->why + (tl > 6 ? 6 : 0));
			r->env.stats->relay_conn_failed++;
		}
		return;
	case SMTPC_EV_CLOSE:
		c->core_closed = true;
		return;
	}
}

static void conn_after(struct oconn *c);

/* Copy small body spans into the output (RELAY_INLINE_MAX) and let the core
 * go on writing after each. false: the connection ended (c may be gone). */
static bool
conn_inline_spans(struct oconn *c)
{
	while (c->span != NULL && !c->span_in_send && c->span_off == 0 &&
	       c->span_len <= RELAY_INLINE_MAX && c->so.cap - c->so.len >= c->span_len) {
		if (relay_map_read(c->out + c->so.len, c->span, c->span_len) < 0) {
			body_unreadable(c, c->span_job);
			return false;
		}
		c->so.len += c->span_len;
		c->span = NULL;
		c->span_len = 0;
		if (CORE_CALL(c, smtpc_body_sent(&c->sc))) /* may name the next span, or close */
			return false;
		if (c->core_closed) {
			conn_after(c);
			return false;
		}
	}
	return true;
}

/* After anything the core did: start TLS if it asked, send what it wrote,
 * close when it closed (failing over if it never became usable). */
static void
conn_after(struct oconn *c)
{
	if (c->st == C_CLOSING)
		return;
	if (c->core_closed) {
		struct relay *r = c->r;
		struct rhop *h = c->hop;
		unsigned ep = c->ep;
		bool defer = c->defer;
		char why[sizeof(c->why)];
		memcpy(why, c->why, sizeof(why));
		oconn_close(c); /* may free c */
		if (defer)
			conn_down(r, h, ep, why);
		return;
	}
	if (c->want_tls) {
		c->want_tls = false;
		conn_starttls(c);
		if (c->core_closed) {
			conn_after(c);
			return;
		}
	}
	oconn_fill(c);
	if (!conn_inline_spans(c))
		return;
	oconn_send(c);
	conn_span_done(c); /* TLS: the span may be encrypted already */
	if (c->core_closed) {
		conn_after(c);
		return;
	}
	oconn_send(c);
}

/* Ciphertext arrived: finish the handshake (the core then says EHLO
 * again, RFC 3207 4.2), decrypt the replies and feed them. */
static void
conn_tls_input(struct oconn *c)
{
	struct relay *r = c->r;
	struct relay_tls_conn *t = c->tls;
	char err[160];
	if (!t->io.done) {
		int h = relay_tls_handshake(t, err, sizeof(err));
		if (h < 0) {
			char why[RELAY_TEXT_MAX];
			snprintf(why, sizeof(why), "TLS handshake with %.200s failed: %s",
			         conn_name(c), err);
			r->env.stats->relay_tls_failures++;
			smtpc_tls_failed(&c->sc, why);
			return;
		}
		if (h == 0)
			return;
		r->env.stats->relay_tls_handshakes++;
		log_info("relay: TLS connection established to %s: %s with cipher %s%s",
		         conn_name(c), t->version, t->cipher,
		         r->cfg->relay.tls == RELAY_TLS_VERIFY ? " (certificate verified)"
		                                               : " (certificate not verified)");
		if (CORE_CALL(c, smtpc_tls_done(&c->sc, true)))
			return;
		if (c->core_closed)
			return;
	}
	for (;;) {
		long n = relay_tls_read(t, c->in, RELAY_IN_SIZE, err, sizeof(err));
		if (n == 0)
			return;
		if (n < 0) {
			smtpc_abort(&c->sc, "TLS error from the next hop");
			log_info("relay: TLS error from %s: %s", conn_name(c), err);
			return;
		}
		if (CORE_CALL(c, smtpc_feed(&c->sc, c->in, (size_t)n)))
			return;
		if (c->core_closed)
			return;
	}
}

/* ---- completions ---- */

void
relay_on_cqe(struct relay *r, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint32_t idx = ud_idx(ud);
	enum subop op = (enum subop)ud_kind(ud);
	uint32_t gen = ud_gen(ud);
	if (op >= S_JWRITE) {
		relay_journal_cqe(r, op, idx, gen, cqe->res);
		return;
	}
	if (idx >= r->nslots || r->slots[idx] == NULL || (r->slot_gen[idx] & UD_GEN_MASK) != gen)
		return; /* a slot's previous occupant: nothing of it is left */
	struct oconn *c = r->slots[idx];
	int res = cqe->res;
	switch (op) {
	case S_LTIMEOUT:
		c->lt_inflight = false;
		break;
	case S_CONNECT: {
		c->connect_inflight = false;
		if (c->st == C_CLOSING)
			break;
		if (res < 0) {
			oconn_fail(c, "4.4.1 connect to %s: %s", conn_name(c),
			           res == -ECANCELED ? "Connection timed out" : strerror(-res));
			return;
		}
		enum smtpc_tls pol = SMTPC_TLS_NONE;
		if (!c->local && r->cfg->relay.tls == RELAY_TLS_MAY)
			pol = SMTPC_TLS_MAY;
		else if (!c->local && r->cfg->relay.tls == RELAY_TLS_ENCRYPT)
			pol = SMTPC_TLS_ENCRYPT;
		else if (!c->local && r->cfg->relay.tls == RELAY_TLS_VERIFY)
			pol = SMTPC_TLS_VERIFY;
		struct smtpc_conf sconf = {
		    .helo = r->cfg->smtp.hostname, .lmtp = c->lmtp, .tls = pol};
		static const struct smtpc_ops ops = {.event = conn_event};
		c->so = (struct smtpc_out){.buf = c->out, .len = 0, .cap = RELAY_OUT_SIZE};
		if (smtpc_init(&c->sc, &sconf, &c->so, &ops, c) < 0) {
			/* Only a hostname the client core cannot say. */
			oconn_fail(c, "4.3.5 cannot speak to %s: bad smtp hostname for EHLO",
			           conn_name(c));
			return;
		}
		c->st = C_GREETING;
		conn_recv(c);
		oconn_timer_update(c);
		return;
	}
	case S_RECV:
		c->recv_inflight = false;
		if (c->st == C_CLOSING)
			break;
		if (res <= 0) {
			if (c->span_bad && c->span_job != NULL) {
				body_unreadable(c, c->span_job);
				return;
			}
			if (res == 0 && c->nactive == 0 &&
			    (c->st == C_QUIT || (smtpc_status(&c->sc) & SMTPC_ST_IDLE))) {
				smtpc_abort(&c->sc,
				            NULL); /* an idle connection the next hop closed */
				conn_after(c);
				return;
			}
			oconn_fail(c, "4.4.2 lost connection with %s while waiting for %s%s%s",
			           conn_name(c), smtpc_waiting_for(&c->sc), res < 0 ? ": " : "",
			           res < 0 ? strerror(-res) : "");
			return;
		}
		if (c->tls != NULL) {
			c->tls->cin_len += (uint32_t)res;
			conn_tls_input(c);
		} else if (CORE_CALL(c, smtpc_feed(&c->sc, c->in, (size_t)res))) {
			return;
		}
		conn_after(c);
		if (r->slots[idx] != c || r->slot_gen[idx] != gen || c->st == C_CLOSING)
			return;
		conn_recv(c);
		oconn_timer_update(c);
		return;
	case S_SEND:
		c->send_inflight = false;
		if (c->st == C_CLOSING)
			break;
		if (res == -EFAULT && !c->send_tls && c->span != NULL && c->span_job != NULL) {
			/* The kernel could not read the span from the mapping. */
			body_unreadable(c, c->span_job);
			return;
		}
		if (res < 0) {
			oconn_fail(c, "4.4.2 lost connection with %s while sending: %s",
			           conn_name(c), strerror(-res));
			return;
		}
		c->span_in_send = false;
		if (c->send_tls) {
			tls_io_sent(&c->tls->io, (size_t)res);
		} else {
			size_t sent = (size_t)res;
			size_t o = sent < c->send_out ? sent : c->send_out;
			memmove(c->out, c->out + o, c->so.len - o);
			c->so.len -= o;
			c->span_off += sent - o;
		}
		conn_span_done(c);
		conn_after(c);
		if (r->slots[idx] != c || r->slot_gen[idx] != gen || c->st == C_CLOSING)
			return;
		oconn_timer_update(c);
		return;
	default: /* the journal's kinds: handed over above */
		panic("relay: CQE kind %u for a connection", (unsigned)op);
	}
	if (c->st == C_CLOSING)
		conn_release(c);
}

/* The connection's timer (relay_timer hands it over): an idle connection
 * says QUIT, one waiting for a reply fails. */
void
oconn_timer(struct oconn *c)
{
	struct relay *r = c->r;
	if (c->st == C_READY && (smtpc_status(&c->sc) & SMTPC_ST_IDLE) && !c->send_inflight &&
	    c->nactive == 0) {
		/* Idle for relay_idle_timeout. */
		c->st = C_QUIT; /* still counted in nready until closed */
		smtpc_quit(&c->sc);
		if (CORE_CALL(c, smtpc_pump(&c->sc)))
			return;
		conn_after(c);
		if (c->st == C_QUIT)
			timer_set(r->wheel, &c->t.n, r->now + 2000000000ull);
		return;
	}
	if (c->st == C_QUIT) {
		oconn_close(c);
		return;
	}
	oconn_fail(c, "4.4.2 timeout waiting for %s from %s", smtpc_waiting_for(&c->sc),
	           conn_name(c));
}
