/*
 * relay.c - deliver spooled mail to the next hop. Contract: relay.h;
 * operator view: docs/relay.md; journal: include/ringmx/journal_format.h.
 *
 * Owner: the relay module. One struct relay per worker, touched only by
 * that worker's thread.
 *
 * Objects
 *  rseg   a spool segment the relay reads (mapped read-only) and its
 *         journal (appended through a small buffer, flushed once per loop
 *         iteration). Deleted, with its journal, once the spool has closed
 *         it and every message in it is finished.
 *  rmsg   one spooled message: a copy of its envelope, its body in the
 *         mapping (read only under relay_map_guard: see "reading the
 *         mappings"), a done mark per recipient. Freed when finished.
 *  rjob   the part of a message that goes to one next hop (its recipients
 *         routed there). A job waits (retry timer), is queued on its hop,
 *         is active on one outbound connection, or waits for its bounce to
 *         be spooled.
 *  rhop   a next hop: its queue of jobs and its connections.
 *  oconn  an outbound connection: connect (with a linked timeout), one
 *         recv and at most one send in flight, and the pure SMTP/LMTP
 *         client core (engine/smtp/smtp_client.c) that decides every command and
 *         reads every reply; this file only moves its bytes and acts on its
 *         events. With PIPELINING and CHUNKING whole transactions follow each
 *         other without waiting (BDAT n LAST); with DATA a transaction waits
 *         for 354 before its body.
 *
 * Durability and duplicates
 *  A recipient is finished when a DELIVERED or FAILED journal record names
 *  it. DELIVERED is appended when the final 2xx is read and written to the
 *  file at the end of that loop iteration: a crash in between (or a power
 *  loss before the page cache reaches the disk: the journal is not fsynced
 *  per record) delivers the message again after restart - at least once,
 *  never lost. FAILED is appended only after the bounce is durable in the
 *  spool (a crash before that retries the recipient, and may bounce twice).
 *
 * Buffers
 *  Each connection owns an input buffer (what one recv reads; the core
 *  carries a split reply line) and an output buffer the core writes whole
 *  commands into; the bytes of it in a send in flight belong to the kernel.
 *  The core names spans of the message in the segment mapping: up to
 *  RELAY_INLINE_MAX they are copied into the output after their commands
 *  (one send for many small transactions); larger ones are sent from the
 *  mapping with the commands before them in one sendmsg. With TLS, wolfSSL
 *  encrypts both into the ciphertext buffer.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_QMGR
#include "relay_internal.h"

/* ---- small helpers ---- */

uint64_t
relay_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void *
relay_xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n, sz);
	if (p == NULL)
		panic("relay: out of memory (%zu x %zu)", n, sz);
	return p;
}

static char *
xstrndup(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p == NULL)
		panic("relay: out of memory");
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static uint64_t
backoff_ns(const struct relay *r, uint32_t attempts)
{
	uint64_t d = r->cfg->relay.retry_min;
	for (uint32_t i = 1; i < attempts && d < r->cfg->relay.retry_max; i++)
		d *= 2;
	return d < r->cfg->relay.retry_max ? d : r->cfg->relay.retry_max;
}

/* The enhanced status code at the start of a reply's text ("2.1.5 Ok"),
 * or one derived from the basic code. */
static void
dsn_of(int code, const char *text, size_t len, char out[16])
{
	size_t i = 0;
	if (len >= 5 && text[0] >= '2' && text[0] <= '5' && text[1] == '.') {
		i = 2;
		size_t d1 = i;
		while (i < len && i - d1 < 3 && text[i] >= '0' && text[i] <= '9')
			i++;
		if (i > d1 && i < len && text[i] == '.') {
			size_t d2 = ++i;
			while (i < len && i - d2 < 3 && text[i] >= '0' && text[i] <= '9')
				i++;
			if (i > d2 && (i == len || text[i] == ' ') && text[0] - '0' == code / 100) {
				memcpy(out, text, i);
				out[i] = '\0';
				return;
			}
		}
	}
	snprintf(out, 16, "%d.0.0", code / 100 >= 2 && code / 100 <= 5 ? code / 100 : 4);
}

/* ---- messages and jobs ---- */

static void msg_log(enum log_service svc, const struct rmsg *m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void
msg_log(enum log_service svc, const struct rmsg *m, const char *fmt, ...)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "%s: ", m->qid);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	logmsg(svc, LOG_INFO, "%s", line);
}

static void
msg_free(struct relay *r, struct rmsg *m)
{
	struct rseg *s = m->seg;
	for (uint32_t i = 0; i < m->njobs; i++) {
		struct rjob *j = &m->jobs[i];
		assert(j->state != J_ACTIVE && j->state != J_BOUNCING);
		if (j->state == J_QUEUED)
			rhop_dequeue(j);
		if (timer_armed(&j->t.n))
			timer_cancel(r->wheel, &j->t.n);
	}
	if (m->prev != NULL)
		m->prev->next = m->next;
	else
		s->msgs = m->next;
	if (m->next != NULL)
		m->next->prev = m->prev;
	else
		s->msgs_tail = m->prev;
	assert(s->pending > 0);
	s->pending--;
	r->backlog_msgs--;
	r->backlog_bytes -= m->rec_len;
	msg_destroy(r, m);
	rseg_maybe_delete(r, s);
}

/* A job is over for good. The message goes when its last job does. */
static void
job_done(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	j->state = J_DONE;
	if (timer_armed(&j->t.n))
		timer_cancel(r->wheel, &j->t.n);
	assert(m->jobs_left > 0);
	if (--m->jobs_left == 0) {
		if (!m->deleted)
			msg_log(LOG_SERVICE, m, "removed");
		r->env.stats->relay_messages_done++;
		msg_free(r, m);
	}
}

static void
job_schedule(struct relay *r, struct rjob *j, uint64_t at_ns)
{
	j->state = J_WAIT;
	if (j->m->held)
		return; /* RELEASE queues it */
	if (at_ns <= r->now) {
		rhop_enqueue(r, j);
		return;
	}
	timer_set(r->wheel, &j->t.n, at_ns);
}

/* ---- results of an attempt ---- */

static double
delay_s(const struct rmsg *m)
{
	uint64_t now = relay_wall_us();
	return now > m->received_us ? (double)(now - m->received_us) / 1e6 : 0.0;
}

static const char *
hop_name(const struct rjob *j)
{
	if (j->hop == NULL)
		return "none";
	return j->ep < j->hop->conf.na ? j->hop->epname[j->ep] : j->hop->name;
}

/* A delivery line is smtp's or lmtp's, as in Postfix: pflogsumm groups
 * deferrals by it. Before an address was picked, the hop's first decides. */
static enum log_service
job_service(const struct rjob *j)
{
	if (j->hop == NULL || j->hop->conf.na == 0)
		return LOG_SVC_SMTP;
	const struct relay_hop_conf *c = &j->hop->conf;
	const struct relay_hop_addr *a = &c->a[j->ep < c->na ? j->ep : 0];
	return c->m[a->member].proto == RELAY_PROTO_LMTP ? LOG_SVC_LMTP : LOG_SVC_SMTP;
}

/* One line per recipient and attempt, in the shape Postfix's tools parse. */
static void
rcpt_log(const struct rjob *j, uint32_t k, int code, const char *text, size_t len,
         const char *status)
{
	const struct rmsg *m = j->m;
	const struct raddr *a = &m->rcpt[j->ri[k]];
	char dsn[16];
	dsn_of(code, text, len, dsn);
	int tl = (int)(len > 400 ? 400 : len);
	msg_log(job_service(j), m, "to=<%.*s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%d %.*s)",
	        (int)a->len, a->p, hop_name(j), delay_s(m), dsn, status, code, tl, text);
}

/* Reply text as kept per recipient: "550 5.1.1 text". */
static char *
reply_dup(int code, const char *text, size_t len)
{
	char buf[RELAY_TEXT_MAX + 8];
	int n = snprintf(buf, sizeof(buf), "%d %.*s", code,
	                 (int)(len > RELAY_TEXT_MAX ? RELAY_TEXT_MAX : len), text);
	return xstrndup(buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void
rcpt_sent(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	struct rmsg *m = j->m;
	uint32_t ri = j->ri[k];
	j->rs[k] = RS_SENT;
	rcpt_log(j, k, code, text, len, "sent");
	if (!m->done[ri]) {
		char buf[RELAY_TEXT_MAX + 8];
		int n = snprintf(buf, sizeof(buf), "%d %.*s", code,
		                 (int)(len > RELAY_TEXT_MAX ? RELAY_TEXT_MAX : len), text);
		rj_rec(r, m, JOURNAL_DELIVERED, ri, 1, j->attempts, 0, buf,
		       (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
		m->done[ri] = JOURNAL_DELIVERED;
	}
	r->env.stats->relay_rcpt_sent++;
}

void
rjob_rcpt_perm(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	j->rs[k] = RS_PERM;
	free(j->rtext[k]);
	j->rtext[k] = reply_dup(code, text, len);
	rcpt_log(j, k, code, text, len, "bounced");
	r->env.stats->relay_rcpt_bounced++;
}

void
rjob_rcpt_temp(struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	j->rs[k] = RS_TEMP;
	int n = snprintf(j->last_temp, sizeof(j->last_temp), "%d %.*s", code, (int)len, text);
	j->last_temp_len =
	    (uint16_t)((size_t)n < sizeof(j->last_temp) ? (size_t)n : sizeof(j->last_temp) - 1);
}

/* Apply one reply to recipient k: 2xx delivered, 5xx (but 503, a
 * sequencing error that is ours, not the message's) permanent, else
 * temporary. */
void
rjob_rcpt_result(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text,
                 size_t len)
{
	if (code >= 200 && code < 300)
		rcpt_sent(r, j, k, code, text, len);
	else if (code >= 500 && code != 503)
		rjob_rcpt_perm(r, j, k, code, text, len);
	else
		rjob_rcpt_temp(j, k, code, text, len);
}

/* Every recipient still open in this attempt fails temporarily. */
static void
job_fail_open(struct rjob *j, const char *reason)
{
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] == RS_PENDING || j->rs[k] == RS_RCPT_OK)
			rjob_rcpt_temp(j, k, 451, reason, strlen(reason));
}

static bool bounce_start(struct relay *r, struct rjob *j);
static void bounce_verdict(struct sink_waiter *waiter, int res);

/* Permanent failures are journaled (FAILED) once their bounce is durable,
 * or at once for the null sender; then temporary ones are scheduled. */
static void
job_settle(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	uint32_t ntemp = 0;
	for (uint32_t k = 0; k < j->n; k++) {
		if (j->rs[k] == RS_PERM) {
			uint32_t ri = j->ri[k];
			const char *t = j->rtext[k] != NULL ? j->rtext[k] : "";
			rj_rec(r, m, JOURNAL_FAILED, ri, 1, j->attempts, 0, t, strlen(t));
			m->done[ri] = JOURNAL_FAILED;
			j->rs[k] = RS_DONE;
		} else if (j->rs[k] == RS_SENT) {
			j->rs[k] = RS_DONE;
		} else if (j->rs[k] == RS_TEMP) {
			ntemp++;
		}
	}
	if (ntemp == 0) {
		job_done(r, j);
		return;
	}
	uint64_t delay = backoff_ns(r, j->attempts);
	uint64_t next_us = relay_wall_us() + delay / 1000u;
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] == RS_TEMP) {
			const struct raddr *a = &m->rcpt[j->ri[k]];
			int code = atoi(j->last_temp);
			const char *t = j->last_temp_len > 4 ? j->last_temp + 4 : "";
			char dsn[16];
			dsn_of(code, t, strlen(t), dsn);
			msg_log(job_service(j), m,
			        "to=<%.*s>, relay=%s, delay=%.2f, dsn=%s, status=deferred (%s)",
			        (int)a->len, a->p, hop_name(j), delay_s(m), dsn, j->last_temp);
			r->env.stats->relay_rcpt_deferred++;
		}
	rj_rec(r, m, JOURNAL_DEFERRED, 0, JOURNAL_ALL_RCPTS, j->attempts, next_us, j->last_temp,
	       j->last_temp_len);
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] != RS_DONE)
			j->rs[k] = RS_PENDING;
	job_schedule(r, j, r->now + delay);
}

/* The attempt is over (final reply, failure, or no route). */
void
rjob_end_attempt(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	j->conn = NULL;
	j->state = J_WAIT;
	if (m->deleted) {
		job_done(r, j);
		return;
	}
	/* A wall clock stepped back must not make a message look old. */
	uint64_t now_us = relay_wall_us();
	bool expired = now_us > m->received_us &&
	               now_us - m->received_us >= r->cfg->relay.queue_lifetime / 1000u;
	uint32_t nperm = 0;
	for (uint32_t k = 0; k < j->n; k++) {
		if (j->rs[k] == RS_PENDING || j->rs[k] == RS_RCPT_OK)
			rjob_rcpt_temp(j, k, 451, "4.4.0 no final reply", 22);
		if (j->rs[k] == RS_TEMP && expired) {
			char t[RELAY_TEXT_MAX + 64];
			int n =
			    snprintf(t, sizeof(t), "4.4.7 delivery time expired; last error: %s",
			             j->last_temp);
			rjob_rcpt_perm(r, j, k, 450, t,
			               (size_t)n < sizeof(t) ? (size_t)n : sizeof(t) - 1);
		}
		if (j->rs[k] == RS_PERM)
			nperm++;
	}
	if (nperm > 0 && m->from_len > 0) {
		if (bounce_start(r, j))
			return; /* job_settle when the bounce is durable */
		/* Not now (spool refused, too many in flight): the failures
		 * stay RS_PERM and the bounce is tried again from the timer. */
		j->state = J_WAIT;
		timer_set(r->wheel, &j->t.n, r->now + RELAY_BOUNCE_RETRY_NS);
		return;
	}
	job_settle(r, j);
}

/* ---- bounces ---- */

/* dsn_build() reads the original's header from the mapping: under the
 * guard, in a function of its own so no local of the caller lives across
 * the sigsetjmp. 0 or -EIO. */
static int __attribute__((noinline))
dsn_build_guarded(char *buf, size_t cap, const struct dsn_info *info, size_t *len)
{
	int err;
	MAP_GUARD(err, *len = dsn_build(buf, cap, info));
	return err;
}

static bool
bounce_start(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	struct rbounce *b = NULL;
	for (unsigned i = 0; i < RELAY_BOUNCES_MAX && b == NULL; i++)
		if (!r->bounces[i].used)
			b = &r->bounces[i];
	if (b == NULL)
		return false;
	struct dsn_rcpt dr[DSN_RCPTS_MAX];
	char status[DSN_RCPTS_MAX][16];
	size_t n = 0;
	int64_t now = time(NULL);
	for (uint32_t k = 0; k < j->n && n < DSN_RCPTS_MAX; k++) {
		if (j->rs[k] != RS_PERM)
			continue;
		const char *t = j->rtext[k] != NULL ? j->rtext[k] : "550 failed";
		size_t tl = strlen(t);
		int code = atoi(t);
		const char *txt = tl > 4 ? t + 4 : "";
		dsn_of(code, txt, strlen(txt), status[n]);
		dr[n] = (struct dsn_rcpt){
		    .addr = m->rcpt[j->ri[k]].p,
		    .addr_len = m->rcpt[j->ri[k]].len,
		    .status = status[n],
		    .remote_mta = j->hop != NULL && j->ep < j->hop->conf.na
		                      ? j->hop->conf.m[j->hop->conf.a[j->ep].member].host
		                      : NULL,
		    .diag = t,
		    .diag_len = tl,
		    .last_attempt = now,
		};
		if (dr[n].remote_mta != NULL && dr[n].remote_mta[0] == '\0')
			dr[n].remote_mta = NULL;
		n++;
	}
	struct dsn_info info = {
	    .hostname = r->cfg->smtp.hostname,
	    .qid = m->qid,
	    .sender = m->from,
	    .sender_len = m->from_len,
	    .arrival = (int64_t)(m->received_us / 1000000u),
	    .now = now,
	    .utf8 = (m->flags & SPOOL_MAIL_SMTPUTF8) != 0,
	    .rcpts = dr,
	    .nrcpt = n,
	    .msg = m->body,
	    .msg_len = m->body_len,
	};
	size_t cap = dsn_size_bound(&info);
	char *buf = malloc(cap);
	size_t len = 0;
	int err = 0;
	/* dsn_build copies the original's header from the mapping. If that
	 * cannot be read, the bounce goes without it. */
	if (buf != NULL)
		err = dsn_build_guarded(buf, cap, &info, &len);
	if (err < 0) {
		log_err("relay: %s: the message is unreadable (I/O error); its bounce goes "
		        "without the original's header",
		        m->qid);
		info.msg = NULL;
		info.msg_len = 0;
		len = dsn_build(buf, cap, &info);
	}
	if (len == 0) {
		/* Cannot happen with a bound from dsn_size_bound; never loop on it. */
		log_err("relay: %s: cannot build the bounce; failures recorded without one",
		        m->qid);
		free(buf);
		job_settle(r, j);
		return true;
	}
	struct sink_open_info oi = {
	    .peer = NULL,
	    .helo = r->cfg->smtp.hostname,
	    .from = "",
	    .from_len = 0,
	    .utf8 = info.utf8,
	    .eightbit = true,
	    .esmtp = true,
	    .wall = now,
	};
	const struct sink *sk = r->env.spool;
	memset(b, 0, sizeof(*b));
	b->r = r;
	b->job = j;
	b->used = true;
	b->size = len;
	spool_internal_next(r->env.sp);
	b->waiter.verdict = bounce_verdict;
	int rc = sk->ops->tx_open(sk->self, &b->waiter, &oi, &b->tx, b->qid);
	if (rc == 0) {
		rc = sk->ops->tx_rcpt(b->tx, m->from, m->from_len);
		if (rc == 0)
			rc = sk->ops->tx_data(b->tx, buf, len);
		if (rc < 0)
			sk->ops->tx_abort(b->tx);
		else
			rc = sk->ops->tx_commit(b->tx);
	}
	free(buf);
	if (rc < 0) {
		b->used = false;
		log_warn("relay: %s: cannot spool the bounce (%s); trying again in %llus", m->qid,
		         strerror(-rc), RELAY_BOUNCE_RETRY_NS / 1000000000ull);
		return false;
	}
	j->state = J_BOUNCING;
	j->bounce = b;
	r->nbounces++;
	if (rc == SINK_DONE)
		bounce_verdict(&b->waiter, 0);
	return true;
}

static void
bounce_verdict(struct sink_waiter *waiter, int res)
{
	struct rbounce *b = container_of(waiter, struct rbounce, waiter);
	struct relay *r = b->r;
	struct rjob *j = b->job;
	assert(b->used && j->state == J_BOUNCING);
	b->used = false;
	j->bounce = NULL;
	r->nbounces--;
	if (res < 0) {
		log_warn("relay: %s: the bounce was not spooled (%s); trying again in %llus",
		         j->m->qid, strerror(-res), RELAY_BOUNCE_RETRY_NS / 1000000000ull);
		j->state = J_WAIT;
		timer_set(r->wheel, &j->t.n, r->now + RELAY_BOUNCE_RETRY_NS);
		return;
	}
	msg_log(LOG_SERVICE, j->m, "sender non-delivery notification: %s", b->qid);
	/* What the session logs for a message it takes in: pflogsumm sizes
	 * the bounce's deliveries from it. */
	log_info("%s: from=<>, size=%zu, nrcpt=1 (queued)", b->qid, b->size);
	r->env.stats->relay_bounces++;
	j->state = J_WAIT;
	if (j->m->deleted) {
		job_done(r, j);
		return;
	}
	job_settle(r, j);
}

/* ---- next hops ---- */

static void
ep_make_name(const struct relay_hop_conf *c, unsigned i, char *out, size_t cap)
{
	const struct relay_hop_addr *a = &c->a[i];
	const struct relay_hop_member *m = &c->m[a->member];
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (a->sa.ss_family == AF_UNIX) {
		const struct sockaddr_un *un = (const struct sockaddr_un *)&a->sa;
		snprintf(out, cap, "%s[%s]", m->proto == RELAY_PROTO_LMTP ? "lmtp" : "smtp",
		         un->sun_path);
		return;
	}
	if (a->sa.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&a->sa;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		port = ntohs(in->sin_port);
	} else if (a->sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		port = ntohs(in6->sin6_port);
	}
	snprintf(out, cap, "%s[%s]:%u", m->host[0] != '\0' ? m->host : ip, ip, port);
}

static void
hop_make_name(struct rhop *h)
{
	const struct relay_hop_conf *c = &h->conf;
	for (unsigned i = 0; i < c->na; i++)
		ep_make_name(c, i, h->epname[i], sizeof(h->epname[i]));
	if (c->na == 1)
		snprintf(h->name, sizeof(h->name), "%s", h->epname[0]);
	else
		snprintf(h->name, sizeof(h->name), "%s", c->text);
}

/* The first address of h not marked down (hop->conf.na if none). */
unsigned
rhop_first_up(const struct relay *r, const struct rhop *h)
{
	unsigned i = 0;
	while (i < h->conf.na && h->ep_down[i] > r->now)
		i++;
	return i;
}

/* The operator asked for an attempt now: every address may be tried. */
static void
hop_clear_down(struct rhop *h)
{
	h->retry_at = 0;
	memset(h->ep_down, 0, sizeof(h->ep_down));
}

/* Match our hops to the configuration's (by their canonical text). */
void
rhop_sync(struct relay *r)
{
	const struct relay_conf *rc = &r->cfg->relay;
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		h->gone = true;
	for (size_t i = 0; i < rc->nhops; i++) {
		struct rhop *h = r->hops;
		while (h != NULL && strcmp(h->conf.text, rc->hops[i].text) != 0)
			h = h->next;
		if (h == NULL) {
			h = relay_xcalloc(1, sizeof(*h));
			h->next = r->hops;
			r->hops = h;
		}
		if (h->conf.na != rc->hops[i].na ||
		    memcmp(h->conf.a, rc->hops[i].a, sizeof(h->conf.a)) != 0)
			memset(h->ep_down, 0, sizeof(h->ep_down)); /* re-resolved */
		h->conf = rc->hops[i];
		h->gone = false;
		hop_make_name(h);
		r->hopmap[i] = h;
	}
}

struct rhop *
rhop_for(struct relay *r, const char *domain, size_t len)
{
	int i = relay_route(&r->cfg->relay, domain, len);
	return i < 0 ? NULL : r->hopmap[i];
}

void
rhop_dequeue(struct rjob *j)
{
	struct rhop *h = j->hop;
	if (j->prev != NULL)
		j->prev->next = j->next;
	else
		h->qhead = j->next;
	if (j->next != NULL)
		j->next->prev = j->prev;
	else
		h->qtail = j->prev;
	j->prev = j->next = NULL;
	h->qlen--;
	j->state = J_WAIT;
}

void
rhop_enqueue(struct relay *r, struct rjob *j)
{
	assert(j->state == J_WAIT);
	if (j->hop == NULL || j->hop->gone) {
		/* Routes changed (SIGHUP), or there never was one: route the
		 * job by its first recipient. */
		const struct raddr *a = &j->m->rcpt[j->ri[0]];
		const char *at = memrchr(a->p, '@', a->len);
		j->hop = at != NULL ? rhop_for(r, at + 1, a->len - (size_t)(at + 1 - a->p))
		                    : rhop_for(r, "", 0);
	}
	if (j->hop == NULL) {
		static const char t[] = "5.4.4 no next hop for this recipient's domain "
		                        "(relay_host, transport_maps)";
		for (uint32_t k = 0; k < j->n; k++)
			if (j->rs[k] == RS_PENDING)
				rjob_rcpt_perm(r, j, k, 550, t, sizeof(t) - 1);
		j->attempts++;
		rjob_end_attempt(r, j);
		return;
	}
	struct rhop *h = j->hop;
	j->state = J_QUEUED;
	j->next = NULL;
	j->prev = h->qtail;
	if (h->qtail != NULL)
		h->qtail->next = j;
	else
		h->qhead = j;
	h->qtail = j;
	h->qlen++;
}

/* The next hop cannot be reached: every job waiting for it is deferred
 * (one attempt each), like Postfix's dead-site handling. */
void
rhop_defer_all(struct relay *r, struct rhop *h, const char *reason)
{
	probe_defer_all(h, reason);
	while (h->qhead != NULL) {
		struct rjob *j = h->qhead;
		rhop_dequeue(j);
		j->attempts++;
		job_fail_open(j, reason);
		rjob_end_attempt(r, j);
	}
}

/* ---- the loop's side ---- */

static void
relay_timer(struct timer_node *n, void *arg)
{
	struct relay *r = arg;
	struct rtimer *t = container_of(n, struct rtimer, n);
	if (t->kind == T_JOB) {
		struct rjob *j = container_of(t, struct rjob, t);
		if (j->state != J_WAIT || j->m->held)
			return;
		bool perm = false;
		for (uint32_t k = 0; k < j->n; k++)
			perm |= j->rs[k] == RS_PERM;
		if (perm)
			rjob_end_attempt(r, j); /* the bounce is due again */
		else
			rhop_enqueue(r, j);
		return;
	}
	oconn_timer(container_of(t, struct oconn, t));
}

static void
hop_pump(struct relay *r, struct rhop *h)
{
	uint32_t busy = 0, pbusy = 0;
	for (struct oconn *c = h->conns, *cn; c != NULL; c = cn) {
		cn = c->next; /* a QUIT below may close (and free) c */
		if (c->st == C_READY) {
			/* The deadline moves only when something was queued: a
			 * next hop that stays silent must meet its timeout even
			 * though this runs every loop iteration. */
			uint32_t n0 = c->nactive;
			oconn_fill(c);
			oconn_send(c);
			if (c->nactive != n0)
				oconn_timer_update(c);
		}
		/* Busy: with CHUNKING a connection streams up to RELAY_WINDOW
		 * transactions; with DATA each one waits a round trip for its
		 * 354, so one transaction already keeps it busy. */
		bool chunking = c->st == C_READY && (smtpc_ext(&c->sc) & SMTPC_EXT_CHUNKING);
		if (c->st != C_READY || c->nactive > 0)
			pbusy++; /* no place for a probe (probe_conn_usable) */
		if (c->st != C_READY ||
		    c->nactive + c->nprobes >= (chunking ? RELAY_WINDOW / 2 : 1))
			busy++;
		else if (r->draining && c->nactive == 0 && !c->send_inflight &&
		         (smtpc_status(&c->sc) & SMTPC_ST_IDLE))
			relay_timer(&c->t.n, r); /* idle while draining: QUIT now */
	}
	/* Open one more connection per loop iteration while jobs wait and
	 * every connection is busy or opening, up to relay_connections. A
	 * failing next hop is also probed every retry_min with nothing queued,
	 * so relay_defer_after's 451 ends as soon as it is back, not only when
	 * the next retry of some message comes (up to retry_max later). */
	bool want = h->qhead != NULL || h->phead != NULL ||
	            (h->fail_since != 0 && h->nconns == 0);
	if (want && !r->draining && !h->gone && r->now >= h->retry_at &&
	    (busy == h->nconns || (h->phead != NULL && pbusy == h->nconns)) &&
	    h->nconns < r->cfg->relay.connections && h->nconns - h->nready == 0)
		oconn_open(r, h);
}

static void
backpressure_update(struct relay *r)
{
	const struct relay_conf *rc = &r->cfg->relay;
	uint64_t hw = rc->high_water / (r->env.nworkers ? r->env.nworkers : 1);
	if (rc->high_water > 0 && !r->over_high_water && r->backlog_bytes > hw) {
		r->over_high_water = true;
		log_warn("relay: backlog %" PRIu64 " bytes in %" PRIu64 " messages is over this "
		         "worker's share of spool_high_water (%" PRIu64
		         "): new mail gets 452 4.3.1",
		         r->backlog_bytes, r->backlog_msgs, hw);
	} else if (r->over_high_water && (rc->high_water == 0 || r->backlog_bytes <= hw / 10 * 9)) {
		r->over_high_water = false;
		log_info("relay: backlog %" PRIu64 " bytes is below spool_high_water again: "
		         "accepting mail",
		         r->backlog_bytes);
	}
	bool deferring = false;
	const char *name = NULL;
	if (rc->defer_after > 0)
		for (struct rhop *h = r->hops; h != NULL; h = h->next)
			if (!h->gone && h->fail_since != 0 &&
			    r->now - h->fail_since >= rc->defer_after) {
				deferring = true;
				name = h->name;
			}
	if (deferring != r->deferring) {
		if (deferring)
			log_warn(
			    "relay: %s has been failing for relay_defer_after or longer: new mail "
			    "gets 451 4.3.0",
			    name);
		else
			log_info("relay: no next hop is failing: accepting mail");
	}
	r->deferring = deferring;
}

/* Queue (or schedule) every job of a newly loaded message. A job may end
 * at once (no route): the message is freed only when its last job ends,
 * so each job pointer stays valid until its own turn. */
void
rmsg_start(struct relay *r, struct rmsg *m, uint64_t next_us)
{
	struct rjob *js[CONFIG_MAX_HOPS + 1];
	uint32_t n = m->njobs;
	bool held = m->held;
	for (uint32_t i = 0; i < n; i++)
		js[i] = &m->jobs[i];
	uint64_t wall = relay_wall_us();
	for (uint32_t i = 0; i < n; i++) {
		if (held)
			continue;
		if (next_us > wall)
			job_schedule(r, js[i], r->now + (next_us - wall) * 1000u);
		else
			rhop_enqueue(r, js[i]);
	}
}

int
relay_admit(void *arg)
{
	struct relay *r = arg;
	if (r->over_high_water) {
		r->env.stats->relay_refused_high_water++;
		return -ENOSPC;
	}
	if (r->deferring) {
		r->env.stats->relay_refused_hop_down++;
		return -EBUSY;
	}
	return 0;
}

void
relay_poll(struct relay *r, uint64_t now)
{
	r->now = now;
	timer_expire(r->wheel, now, relay_timer, r);
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		hop_pump(r, h);
	backpressure_update(r);
	rj_poll(r);
}

uint64_t
relay_wait_ns(const struct relay *r, uint64_t max)
{
	return rj_wait_ns(r, timer_wait_ns(r->wheel, max));
}

void
relay_record_durable(void *arg, uint64_t seq, uint64_t off, uint64_t rec_len)
{
	struct relay *r = arg;
	(void)rec_len;
	struct rseg *s = rseg_find(r, r->env.worker, seq);
	if (s != NULL && s->map == NULL)
		rseg_remap(r, s);
	if (s == NULL)
		s = rseg_map(r, r->env.worker, seq);
	if (s == NULL) {
		/* Could not map it (logged): remember the segment as kept so
		 * it is never deleted; the message waits for the next start. */
		s = rseg_new(r, r->env.worker, seq, NULL, 0);
		s->keep = true;
		return;
	}
	struct rmsg *m = s->map != NULL ? rmsg_load(r, s, off, NULL) : NULL;
	if (m == NULL) {
		s->keep = true; /* logged by rmsg_load or above */
		return;
	}
	r->env.stats->relay_messages_queued++;
	rmsg_start(r, m, 0);
}

/* ---- operator commands ---- */

/* The command's journal record for m; the answer waits for it to be
 * durable (rj_sync_want), or says it failed. */
static void
cmd_record(struct relay *r, struct relay_cmd *cmd, struct rmsg *m, uint8_t type)
{
	if (rj_rec(r, m, type, 0, JOURNAL_ALL_RCPTS, 0, 0, NULL, 0) < 0)
		atomic_fetch_add(&cmd->failed, 1);
	else
		rj_sync_want(r, m->seg, cmd);
}

static bool
cmd_apply(struct relay *r, struct relay_cmd *cmd, struct rmsg *m)
{
	switch (cmd->op) {
	case RELAY_CMD_HOLD:
		if (m->held)
			return true;
		m->held = true;
		cmd_record(r, cmd, m, JOURNAL_HOLD);
		for (uint32_t i = 0; i < m->njobs; i++) {
			struct rjob *j = &m->jobs[i];
			if (j->state == J_QUEUED)
				rhop_dequeue(j);
			if (j->state == J_WAIT && timer_armed(&j->t.n))
				timer_cancel(r->wheel, &j->t.n);
		}
		msg_log(LOG_SERVICE, m, "held by the operator");
		return true;
	case RELAY_CMD_RELEASE:
		if (!m->held)
			return true;
		m->held = false;
		cmd_record(r, cmd, m, JOURNAL_RELEASE);
		msg_log(LOG_SERVICE, m, "released by the operator");
		break; /* and queue it now, as a flush */
	case RELAY_CMD_DELETE: {
		m->deleted = true;
		cmd_record(r, cmd, m, JOURNAL_DELETE);
		msg_log(LOG_SERVICE, m, "deleted by the operator");
		struct rjob *js[CONFIG_MAX_HOPS + 1];
		uint32_t n = 0;
		for (uint32_t i = 0; i < m->njobs; i++)
			if (m->jobs[i].state == J_WAIT || m->jobs[i].state == J_QUEUED)
				js[n++] = &m->jobs[i];
		/* Active and bouncing jobs end when their attempt does. */
		for (uint32_t i = 0; i < n; i++) {
			if (js[i]->state == J_QUEUED)
				rhop_dequeue(js[i]);
			job_done(r, js[i]);
		}
		return true;
	}
	case RELAY_CMD_FLUSH:
		if (m->held)
			return cmd->qid[0] != '\0';
		break;
	}
	struct rjob *js[CONFIG_MAX_HOPS + 1];
	uint32_t n = 0;
	for (uint32_t i = 0; i < m->njobs; i++)
		if (m->jobs[i].state == J_WAIT)
			js[n++] = &m->jobs[i];
	for (uint32_t i = 0; i < n; i++) {
		if (timer_armed(&js[i]->t.n))
			timer_cancel(r->wheel, &js[i]->t.n);
		/* The operator asks for an attempt now: a next hop that
		 * failed recently may be connected to at once. */
		if (js[i]->hop != NULL)
			hop_clear_down(js[i]->hop);
		relay_timer(&js[i]->t.n, r);
	}
	return true;
}

void
relay_apply_cmds(struct relay *r, struct relay_cmdset *set)
{
	assert(r->cmdset == NULL);
	r->cmdset = set;
	for (unsigned i = 0; i < set->n; i++) {
		struct relay_cmd *cmd = &set->cmd[i];
		unsigned matched = 0;
		if (cmd->op == RELAY_CMD_FLUSH && cmd->qid[0] == '\0')
			for (struct rhop *h = r->hops; h != NULL; h = h->next)
				hop_clear_down(h);
		for (struct rseg *s = r->segs, *sn; s != NULL; s = sn) {
			sn = s->next; /* a delete may free the segment */
			for (struct rmsg *m = s->msgs, *mn; m != NULL; m = mn) {
				mn = m->next;
				if (cmd->qid[0] != '\0' && strcmp(cmd->qid, m->qid) != 0)
					continue;
				if (m->deleted)
					continue;
				if (cmd_apply(r, cmd, m))
					matched++;
				if (cmd->qid[0] != '\0')
					break;
			}
		}
		atomic_fetch_add(&cmd->matched, matched);
	}
	if (r->cmd_syncs == 0)
		relay_cmds_done(r);
	else
		rj_poll(r); /* start the writes and syncs now */
}

void
relay_cmds_done(struct relay *r)
{
	struct relay_cmdset *set = r->cmdset;
	assert(set != NULL && r->cmd_syncs == 0);
	r->cmdset = NULL;
	r->nhits = 0;
	atomic_fetch_add(&set->acks, 1);
}

bool
relay_cmds_busy(const struct relay *r)
{
	return r->cmdset != NULL;
}

/* ---- shutdown ---- */

void
relay_drain(struct relay *r, bool force)
{
	r->draining = true;
	/* Sessions waiting on a queued probe get their 450 now, not at
	 * verify_timeout (no probe is sent while draining). */
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		if (h->phead != NULL)
			probe_defer_all(h, "4.3.2 ringmxd is shutting down");
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		for (struct oconn *c = h->conns, *cn; c != NULL; c = cn) {
			cn = c->next;
			if (force && c->st != C_CLOSING)
				oconn_fail(c, "4.3.2 ringmxd is shutting down");
			else if (c->st == C_READY && c->nactive == 0 &&
			         (smtpc_status(&c->sc) & SMTPC_ST_IDLE))
				relay_timer(&c->t.n, r); /* idle: QUIT now */
			else if (c->st == C_CONNECTING || c->st == C_GREETING)
				oconn_close(c);
		}
}

bool
relay_idle(const struct relay *r)
{
	for (const struct rhop *h = r->hops; h != NULL; h = h->next)
		if (h->nconns > 0)
			return false;
	return r->nbounces == 0 && r->cmdset == NULL && !rj_busy(r);
}

void
relay_log_backlog(const struct relay *r)
{
	log_notice("relay: backlog %" PRIu64 " messages, %" PRIu64 " bytes", r->backlog_msgs,
	           r->backlog_bytes);
}

void
relay_gauges(const struct relay *r, struct relay_gauges *g)
{
	g->backlog_msgs = r->backlog_msgs;
	g->backlog_bytes = r->backlog_bytes;
	g->oldest_us = 0;
	/* A segment's messages are in arrival order, newest first: its
	 * oldest is its tail. */
	for (const struct rseg *s = r->segs; s != NULL; s = s->next)
		if (s->msgs_tail != NULL && (g->oldest_us == 0 || s->msgs_tail->received_us < g->oldest_us))
			g->oldest_us = s->msgs_tail->received_us;
	g->nhops = 0;
	g->other_queued = 0;
	for (const struct rhop *h = r->hops; h != NULL; h = h->next) {
		if (h->gone && h->qlen == 0 && h->nconns == 0)
			continue;
		if (g->nhops == RELAY_GAUGE_HOPS) {
			g->other_queued += h->qlen;
			continue;
		}
		size_t nl = strnlen(h->name, sizeof(g->hop[0].name) - 1);
		memcpy(g->hop[g->nhops].name, h->name, nl); /* a long list is cut */
		g->hop[g->nhops].name[nl] = '\0';
		g->hop[g->nhops].queued = h->qlen;
		g->hop[g->nhops].conns = h->nconns;
		g->nhops++;
	}
}

void
relay_close(struct relay *r)
{
	if (r == NULL)
		return;
	for (struct rhop *h = r->hops, *hn; h != NULL; h = hn) {
		hn = h->next;
		for (struct oconn *c = h->conns, *cn; c != NULL; c = cn) {
			cn = c->next;
			if (c->fd >= 0)
				close(c->fd);
			if (c->tls != NULL)
				relay_tls_end(c->tls);
			free(c->tls_mem);
			free(c);
		}
		free(h);
	}
	for (struct oconn *c = r->free_conns, *cn; c != NULL; c = cn) {
		cn = c->next;
		free(c->tls_mem);
		free(c);
	}
	for (struct rseg *s = r->segs; s != NULL; s = s->next)
		for (struct rmsg *m = s->msgs, *mn; m != NULL; m = mn) {
			mn = m->next;
			msg_destroy(r, m);
		}
	rj_close(r);
	relay_pool_fini(r);
	relay_tls_ctx_free(r->tlsctx);
	free(r->slots);
	free(r->slot_gen);
	free(r->free_slots);
	free(r->wheel);
	free(r);
}
