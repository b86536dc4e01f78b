/*
 * tools/load_tx.c - the messages of one ringmx-load worker: when a connection starts
 * its next message (or says QUIT), the message as a transaction for the client core
 * (engine/smtp/smtp_client.h: envelope, header block, body pieces), and what its
 * results count (codes, latency, manifest).
 *
 * Ownership: ringmx-load (issue 4). Runs on the worker thread that owns the
 * connection (load_engine.c). A message slot (struct msg) is the connection's, lent
 * to the core from smtpc_submit() to SMTPC_EV_TX; its formatted addresses (and its
 * recipients beyond MSG_RCPT_INLINE) live in the connection's block, allocated at
 * start-up (msg_block_init). The body template and its variants are load_msg.c's,
 * shared read-only by every thread: a body is three pieces, the slot's header block,
 * a prefix of the template and the variant's tail, and the core writes it without
 * copying or reading any of them (nostuff; load_conn.c copies the 2-3 octet tail into
 * its output, the other two go as iovecs).
 *
 * Invariant: a message is counted exactly once, when the core hands its transaction
 * back (SMTPC_EV_TX): accepted, rejected (with the code that decided it) or failed
 * (the connection ended before a reply decided it).
 */
#include "load_internal.h"

#include <errno.h>
#include <unistd.h>

enum next { NEXT_START, NEXT_QUIT, NEXT_IDLE };

uint64_t rng_next(struct eng *e)
{
	uint64_t x = e->rng; /* xorshift64 */
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return e->rng = x;
}

void manifest_flush(struct eng *e)
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

/* The message's own header block, m->hdr, after its envelope (msg_build): built when
 * the message starts, which is only when no send of the connection is in flight
 * (msg_start_due), so no iovec of an earlier message in this slot still points at it. */
static void hdr_build(struct eng *e, struct msg *m)
{
	const struct load_variant *v = &e->body->v[m->variant];
	struct wbuf w = { m->hdr, 0, HDR_CAP };
	WB_LIT(&w, "Message-ID: <");
	wb_put(&w, e->idpfx, e->idpfx_len);
	wb_u64(&w, m->seq);
	WB_LIT(&w, "@ringmx>\r\nX-Ringmx-Load-Id: ");
	wb_put(&w, e->idpfx, e->idpfx_len);
	wb_u64(&w, m->seq);
	WB_LIT(&w, "\r\nX-Ringmx-Load-Sum: ");
	wb_put(&w, v->sum_hex, 16);
	/* From: and To: are the envelope's sender and first recipient, formatted
	 * already (msg_build). */
	WB_LIT(&w, "\r\nFrom: <");
	wb_put(&w, m->tx.from, m->tx.from_len);
	WB_LIT(&w, ">\r\nTo: <");
	wb_put(&w, m->rcpt[0].addr, m->rcpt[0].len);
	WB_LIT(&w, ">\r\nSubject: ringmx-load ");
	wb_u64(&w, m->seq);
	WB_LIT(&w, "\r\n");
	date_refresh(e);
	wb_put(&w, e->date, e->date_len);
	WB_LIT(&w, "\r\n");
	m->hdr_len = w.len;
}

/* Longest formatted address of pattern p ("%d" of a uint64_t: 20 digits). */
static size_t addr_max(const struct load_pattern *p)
{
	return p->pre_len + 20 + p->post_len;
}

/* What a slot keeps in the connection's block: its recipients when there are more
 * than fit in the slot, and the formatted addresses (from, then every recipient). */
static size_t rcpt_block(const struct load_opts *o)
{
	return o->rcpts > MSG_RCPT_INLINE ? (size_t)o->rcpts * sizeof(struct smtpc_rcpt) : 0;
}

size_t msg_block_size(const struct load_opts *o)
{
	return rcpt_block(o) + addr_max(&o->from) + (size_t)o->rcpts * addr_max(&o->to);
}

void msg_block_init(struct msg *m, const struct load_opts *o, char *block)
{
	memset(m, 0, sizeof(*m));
	/* block is 16-aligned (load_conn.c) */
	m->rcpt = rcpt_block(o) ? (struct smtpc_rcpt *)(void *)block : m->rcpt_in;
	m->addr = block + rcpt_block(o);
}

/* The message in slot m as a transaction: the envelope formatted into the slot, the
 * body as its three pieces. */
static void msg_build(struct eng *e, struct msg *m)
{
	const struct load_opts *o = e->o;
	const struct load_variant *v = &e->body->v[m->variant];
	uint64_t gseq = m->seq * o->threads + e->t->id;
	struct smtpc_tx *tx = &m->tx;
	memset(tx, 0, sizeof(*tx));
	char *a = m->addr;
	tx->from = a;
	tx->from_len = load_pattern_fmt(a, &o->from, gseq);
	a += tx->from_len;
	for (unsigned i = 0; i < o->rcpts; i++) {
		size_t n = load_pattern_fmt(a, &o->to, gseq * o->rcpts + i);
		m->rcpt[i] = (struct smtpc_rcpt){ a, n, 0 };
		a += n;
	}
	tx->rcpt = m->rcpt;
	tx->nrcpt = o->rcpts;
	hdr_build(e, m);
	/* No line of the three starts with '.' (header names; the template's 'L';
	 * "\r\n" or "Z\r\n"), so the core need not read them to stuff lines: only
	 * the kernel reads the template, as before ringmx-load ran on the core. */
	m->piece[0] = (struct smtpc_piece){ (const uint8_t *)m->hdr, m->hdr_len, true };
	m->piece[1] = (struct smtpc_piece){ (const uint8_t *)e->body->tmpl, v->prefix, true };
	m->piece[2] = (struct smtpc_piece){ (const uint8_t *)v->tail, v->tail_len, true };
	tx->pieces = m->piece;
	tx->npieces = 3;
	tx->body_len = m->hdr_len + v->size;
	tx->user = m;
	tx->id = (uint32_t)m->seq;
	m->wire = tx->body_len;
}

static struct msg *slot_free(struct conn *c)
{
	for (unsigned s = 0; s < MSG_SLOTS; s++)
		if (!c->msg[s].live)
			return &c->msg[s];
	fprintf(stderr, "ringmx-load: no free message slot (bug)\n");
	abort();
}

static void msg_start(struct eng *e, struct conn *c, uint64_t t_start)
{
	struct msg *m = slot_free(c);
	m->live = true;
	m->lost = m->final = false;
	m->fail_code = m->final_code = m->ok_code = 0;
	m->seq = e->seq++;
	m->t_start = t_start;
	m->variant = e->body->nv > 1 ? (uint8_t)(rng_next(e) % e->body->nv) : 0;
	msg_build(e, m);
	if (smtpc_submit(&c->sc, &m->tx) < 0) {
		/* smtpc_can_start() said yes and the envelope is ours: a bug. */
		fprintf(stderr, "ringmx-load: the client core refused a message (bug)\n");
		abort();
	}
	c->msgs_started++;
	c->inflight++;
	e->inflight++;
	e->t->st.attempted++;
}

/*
 * Start what is due on a connection whose writes are done (load_conn.c calls this
 * from conn_flush, never with a send in flight): messages while the core would write
 * their MAIL at once and fewer than the connection's depth are in flight, so a
 * message's clock starts with its MAIL and the pipelining depth is what it always was
 * (2 with pipelined DATA: the next MAIL right behind the end of data; 1 otherwise);
 * then QUIT, pipelined behind the last message (--per-connection, the end of the run),
 * or a wait for the next --rate slot.
 */
void msg_start_due(struct eng *e, struct conn *c)
{
	while (c->core_open && !c->waiting && c->inflight < c->depth &&
	       smtpc_can_start(&c->sc)) {
		uint64_t t_start = 0;
		switch (conn_next(e, c, &t_start)) {
		case NEXT_START:
			msg_start(e, c, t_start);
			smtpc_pump(&c->sc); /* the MAIL..DATA (or BDAT and its body) */
			conn_after(e, c);
			break;
		case NEXT_QUIT:
			smtpc_quit_pipelined(&c->sc);
			smtpc_pump(&c->sc);
			conn_after(e, c);
			return;
		case NEXT_IDLE:
			idle_push(e, c);
			return;
		}
	}
}

/*
 * One recipient's result (SMTPC_EV_RCPT, from the core's callback: only counts).
 * What decides a message, as before the client core: its end of data when some
 * recipient got that far (final), else the first refusal (MAIL's, or a RCPT's).
 * Results the core made up because the connection ended (cmd NONE while the core is
 * closed) make the message failed, not refused.
 */
void msg_on_rcpt(struct eng *e, struct conn *c, const struct smtpc_event *ev)
{
	struct msg *m = ev->tx->user;
	int code = ev->reply.code;
	if (code >= 200 && code < 300) {
		if (!m->ok_code) /* one manifest line per message, from its first */
			manifest_add(e, m, ev->reply.text, ev->reply.text_len);
		m->ok_code = (uint16_t)code;
		return;
	}
	switch (ev->cmd) {
	case SMTPC_CMD_RCPT:
		e->t->st.rcpt_rejected++;
		/* fall through */
	case SMTPC_CMD_MAIL:
		if (!m->fail_code)
			m->fail_code = (uint16_t)code;
		return;
	case SMTPC_CMD_DATA:
	case SMTPC_CMD_DOT:
	case SMTPC_CMD_BDAT:
		m->final = true;
		m->final_code = (uint16_t)code;
		return;
	default:
		if (smtpc_state(&c->sc) == SMTPC_S_CLOSED)
			m->lost = true;
		else if (!m->fail_code) /* decided by the core before a reply (SIZE) */
			m->fail_code = (uint16_t)code;
		return;
	}
}

/* The core hands the message back (SMTPC_EV_TX): count it once, free the slot. */
void msg_on_tx(struct eng *e, struct conn *c, struct msg *m)
{
	struct load_stats *st = &e->t->st;
	m->live = false;
	c->inflight--;
	e->inflight--;
	if (!m->ok_code && m->lost) {
		st->failed++;
		return;
	}
	int code = m->ok_code ? m->ok_code : m->final ? m->final_code : m->fail_code;
	if (code > 0 && code < LOAD_CODES)
		st->codes[code]++;
	if (m->ok_code) {
		st->accepted++;
		st->msg_bytes += m->wire;
		hist_record(&st->hist, e->now > m->t_start ? e->now - m->t_start : 0);
	} else {
		st->rejected++;
	}
}
