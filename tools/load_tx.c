/*
 * tools/load_tx.c - the messages of one ringmx-load worker: the per-message header
 * block, the envelope commands, where the body goes in a write, the results
 * (counters, latency, manifest) and when a connection starts its next message.
 *
 * Ownership: ringmx-load (issue 4). Runs on the worker thread that owns the
 * connection (load_engine.c); the body template and its variants are load_msg.c's,
 * shared read-only by every thread. A connection has two message slots: with
 * pipelined DATA the next message's MAIL follows the previous one's end of data.
 */
#include "load_internal.h"

#include <errno.h>
#include <unistd.h>

/* ---- messages ---- */

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

void msg_finish(struct eng *e, struct conn *c, unsigned slot, bool ok, int code,
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

/* Decides what a connection that may start a transaction does now. Under --rate the
 * intended start time is taken from the schedule, not from the clock, so a message that
 * waited for a free connection carries that wait in its latency (no coordinated
 * omission). */
enum next conn_next(struct eng *e, struct conn *c, uint64_t *t_start)
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
void hdr_build(struct eng *e, struct conn *c, const struct msg *m)
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

void put_mail(struct eng *e, struct wbuf *w, const struct msg *m)
{
	char addr[2 * LOAD_PATTERN_MAX + 24];
	uint64_t gseq = m->seq * e->o->threads + e->t->id;
	WB_LIT(w, "MAIL FROM:<");
	wb_put(w, addr, load_pattern_fmt(addr, &e->o->from, gseq));
	WB_LIT(w, ">\r\n");
}

void put_rcpt(struct eng *e, struct wbuf *w, const struct msg *m, unsigned i)
{
	char addr[2 * LOAD_PATTERN_MAX + 24];
	uint64_t gseq = m->seq * e->o->threads + e->t->id;
	WB_LIT(w, "RCPT TO:<");
	wb_put(w, addr, load_pattern_fmt(addr, &e->o->to, gseq * e->o->rcpts + i));
	WB_LIT(w, ">\r\n");
}

/* Body placement: iov[1] = unique headers, iov[2] = template prefix, and the variant's
 * tail starts the post buffer. Everything written after it goes to post. */
struct wbuf *place_body(struct eng *e, struct conn *c, struct msg *m, struct wbuf *post,
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

struct wbuf *put_bdat(struct eng *e, struct conn *c, struct msg *m, struct wbuf *w,
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

unsigned msg_start(struct eng *e, struct conn *c, uint64_t t_start)
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

uint16_t first_fail(const struct msg *m, int code)
{
	if ((!m->mail_ok || m->rcpt_ok == 0) && m->fail_code)
		return m->fail_code;
	return (uint16_t)code;
}

void msg_fail_all(struct eng *e, struct conn *c)
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
