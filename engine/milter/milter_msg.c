/*
 * milter_msg.c - the filtering sink (milter_io.h): a message on its way
 * from the session to the worker's sink (the spool) is held here until
 * every milter has seen it and said what to do.
 *
 *  tx_open:   the inner sink's transaction is opened at once (queue id,
 *             admission: a full spool still answers 452 at MAIL).
 *  tx_rcpt, tx_data: kept (the recipients and the message as the session
 *             gives it: our Received: first, CRLF line ends).
 *  tx_commit: the header fields are indexed, then each milter in turn gets
 *             DATA, the header fields, end of headers, the body in chunks
 *             of at most 64 KiB and end of message, and its changes are
 *             applied before the next one sees the message. Then the
 *             result goes to the inner transaction (recipients, header
 *             fields, body) and its commit; the 250 waits for the inner
 *             sink's verdict (the fsync), as without milters.
 *
 * Ownership rules
 *  - struct mf_msg (and its buffers) is the connection's transaction from
 *    tx_open until its verdict is delivered or tx_abort returns; freed
 *    ones wait on the pool's list with their buffers for the next message.
 *  - Every pointer a milter event carries is read during the event only:
 *    changes are copied into the message's buffers at once.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "milter_internal.h"

enum { STEP_DATA = 0, STEP_HDR, STEP_EOH, STEP_BODY, STEP_EOM, STEP_DONE };

/* ---- buffers ---- */

static int
buf_add(struct mf_pool *p, struct mf_buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 16384;
		while (cap < b->len + n)
			cap *= 2;
		if (p->mem_used - b->cap + cap > p->env.memory_cap)
			return -ENOMEM;
		char *q = realloc(b->p, cap);
		if (q == NULL)
			return -ENOMEM;
		p->mem_used = p->mem_used - b->cap + cap;
		b->p = q;
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, d, n);
	b->len += n;
	return 0;
}

/* Bytes with bare LF made CRLF (what a milter writes with LF alone). */
static int
buf_add_crlf(struct mf_pool *p, struct mf_buf *b, const char *d, size_t n)
{
	size_t i = 0;

	while (i < n) {
		const char *lf = memchr(d + i, '\n', n - i);
		size_t k = lf != NULL ? (size_t)(lf - (d + i)) : n - i;
		if (buf_add(p, b, d + i, k) < 0)
			return -ENOMEM;
		i += k;
		if (lf == NULL)
			break;
		bool cr = b->len > 0 && b->p[b->len - 1] == '\r';
		if (buf_add(p, b, cr ? "\n" : "\r\n", cr ? 1 : 2) < 0)
			return -ENOMEM;
		i++;
	}
	return 0;
}

/* ---- recipients: records [u16 len][u8 deleted][addr] in m->rcpts ---- */

static int
rcpt_add(struct mf_msg *m, const char *a, size_t n)
{
	uint8_t hd[3] = {(uint8_t)n, (uint8_t)(n >> 8), 0};

	if (buf_add(m->pool, &m->rcpts, hd, 3) < 0 || buf_add(m->pool, &m->rcpts, a, n) < 0)
		return -ENOMEM;
	m->nrcpt++;
	return 0;
}

/* The record at *o (its address at +3, *len octets), moving *o past it. */
static uint8_t *
rcpt_next(struct mf_buf *b, size_t *o, size_t *len)
{
	if (*o + 3 > b->len)
		return NULL;
	uint8_t *hd = (uint8_t *)b->p + *o;
	*len = (size_t)hd[0] | (size_t)hd[1] << 8;
	*o += 3 + *len;
	return hd;
}

/* ---- the message ---- */

static struct mf_msg *
msg_get(struct mf_pool *p)
{
	struct mf_msg *m = p->free_msgs;

	if (m != NULL) {
		p->free_msgs = m->next_free;
	} else {
		m = calloc(1, sizeof(*m));
		if (m == NULL)
			return NULL;
	}
	struct mf_buf d = m->data, md = m->mods, bd = m->body, rc = m->rcpts;
	memset(m, 0, offsetof(struct mf_msg, hdr));
	m->nhdr = 0;
	m->data = d;
	m->mods = md;
	m->body = bd;
	m->rcpts = rc;
	m->data.len = m->mods.len = m->body.len = m->rcpts.len = 0;
	m->pool = p;
	return m;
}

static void
msg_put(struct mf_msg *m)
{
	struct mf_pool *p = m->pool;

	if (m->mc != NULL && m->mc->msg == m)
		m->mc->msg = NULL;
	m->mc = NULL;
	/* Large buffers go back to the allocator; small ones are kept. */
	struct mf_buf *bufs[] = {&m->data, &m->mods, &m->body, &m->rcpts};
	for (size_t i = 0; i < 4; i++)
		if (bufs[i]->cap > (1u << 20)) {
			p->mem_used -= bufs[i]->cap;
			free(bufs[i]->p);
			bufs[i]->p = NULL;
			bufs[i]->cap = 0;
		}
	m->next_free = p->free_msgs;
	p->free_msgs = m;
}

/* The verdict reaches the session (never from inside tx_commit). */
static void
deliver(struct mf_msg *m, int res, const struct smtp_check_reply *r)
{
	struct mf_conn *mc = m->mc;

	if (m->in_commit) {
		m->sync_done = true;
		m->sync_res = res;
		if (r != NULL) {
			m->reply = *r;
			m->have_reply = true;
		}
		return;
	}
	struct smtp_check_reply copy;
	if (r != NULL)
		copy = *r;
	msg_put(m);
	if (mc != NULL)
		mc->ops->verdict(mc, res, r != NULL ? &copy : NULL);
}

static void
inner_verdict(struct sink_waiter *w, int res)
{
	struct mf_msg *m = container_of(w, struct mf_msg, iw);

	m->inner = NULL;
	deliver(m, res, NULL);
}

/* Index the header fields of the message as received (RFC 5322 2.2). */
static void
index_headers(struct mf_msg *m)
{
	const char *d = m->data.p;
	size_t n = m->data.len, i = 0;

	m->nhdr = 0;
	m->has_sep = false;
	while (i < n) {
		if (d[i] == '\r' && i + 1 < n && d[i + 1] == '\n') {
			m->hdr_end = i;
			m->body_off = i + 2;
			m->has_sep = true;
			return;
		}
		/* name ':' */
		size_t k = i;
		while (k < n && d[k] != ':' && d[k] != ' ' && d[k] != '\t' && d[k] != '\r' &&
		       d[k] != '\n')
			k++;
		if (k == i || k >= n || d[k] != ':')
			break; /* not a header field: the body starts here */
		size_t e = k;
		for (;;) {
			const char *lf = memchr(d + e, '\n', n - e);
			e = lf != NULL ? (size_t)(lf - d) + 1 : n;
			if (e >= n || (d[e] != ' ' && d[e] != '\t'))
				break;
		}
		if (m->nhdr == MF_HDR_MAX) {
			/* The rest is kept as it is, unseen by the milters. */
			m->hdr_end = i;
			const char *sep = NULL;
			for (size_t j = i; j + 3 < n; j++)
				if (memcmp(d + j, "\r\n\r\n", 4) == 0) {
					sep = d + j;
					break;
				}
			m->body_off = sep != NULL ? (size_t)(sep - d) + 4 : n;
			m->has_sep = sep != NULL;
			return;
		}
		m->hdr[m->nhdr++] = (struct mf_hdr){
		    .off = (uint32_t)i, .len = (uint32_t)(e - i), .name_len = (uint32_t)(k - i)};
		i = e;
	}
	m->hdr_end = i;
	m->body_off = i;
}

static const char *
hdr_bytes(const struct mf_msg *m, const struct mf_hdr *h)
{
	return (h->in_mods ? m->mods.p : m->data.p) + h->off;
}

/* A new field "name: value" (CRLF line ends) into mods; 0 or -ENOMEM. */
static int
field_make(struct mf_msg *m, const struct milter_event *ev, struct mf_hdr *h)
{
	struct mf_pool *p = m->pool;
	size_t off = m->mods.len;

	if (buf_add(p, &m->mods, ev->name, ev->name_len) < 0 ||
	    buf_add(p, &m->mods, ev->leadspc ? ":" : ": ", ev->leadspc ? 1 : 2) < 0 ||
	    buf_add_crlf(p, &m->mods, ev->value, ev->value_len) < 0 ||
	    buf_add(p, &m->mods, "\r\n", 2) < 0)
		return -ENOMEM;
	*h = (struct mf_hdr){.off = (uint32_t)off,
	                     .len = (uint32_t)(m->mods.len - off),
	                     .name_len = (uint32_t)ev->name_len,
	                     .in_mods = 1};
	return 0;
}

static int
hdr_insert(struct mf_msg *m, uint32_t at, const struct mf_hdr *h)
{
	if (m->nhdr == MF_HDR_MAX)
		return -E2BIG;
	if (at > m->nhdr)
		at = m->nhdr;
	memmove(&m->hdr[at + 1], &m->hdr[at], (m->nhdr - at) * sizeof(m->hdr[0]));
	m->hdr[at] = *h;
	m->nhdr++;
	return 0;
}

static void
strip_brackets(const char **a, size_t *n)
{
	while (*n > 0 && ((*a)[*n - 1] == '\0'))
		(*n)--;
	if (*n >= 2 && (*a)[0] == '<' && (*a)[*n - 1] == '>') {
		(*a)++;
		*n -= 2;
	}
}

/* A change from the milter filtering the message (during its EOM). */
void
mf_msg_event(struct mf_slot *s, const struct milter_event *ev)
{
	struct mf_conn *mc = s->owner;
	struct mf_msg *m = mc->msg;
	struct mf_hdr h;
	int r = 0;

	if (m == NULL || !m->committing)
		return;
	s->pool->env.stats->milter_changes++;
	switch (ev->type) {
	case MILTER_EV_ADD_HEADER:
		r = field_make(m, ev, &h);
		if (r == 0)
			r = hdr_insert(m, m->nhdr, &h);
		break;
	case MILTER_EV_INS_HEADER:
		r = field_make(m, ev, &h);
		if (r == 0)
			r = hdr_insert(m, ev->index, &h);
		break;
	case MILTER_EV_CHG_HEADER: {
		uint32_t want = ev->index ? ev->index : 1, seen = 0, i;
		for (i = 0; i < m->nhdr; i++) {
			struct mf_hdr *x = &m->hdr[i];
			if (x->deleted || x->name_len != ev->name_len ||
			    strncasecmp(hdr_bytes(m, x), ev->name, ev->name_len) != 0)
				continue;
			if (++seen == want)
				break;
		}
		if (i < m->nhdr) {
			if (ev->value_len == 0) {
				m->hdr[i].deleted = 1;
			} else if ((r = field_make(m, ev, &h)) == 0) {
				m->hdr[i] = h;
			}
		} else if (ev->value_len > 0) {
			r = field_make(m, ev, &h);
			if (r == 0)
				r = hdr_insert(m, m->nhdr, &h);
		}
		break;
	}
	case MILTER_EV_CHG_FROM: {
		const char *a = ev->addr;
		size_t n = ev->addr_len;
		strip_brackets(&a, &n);
		if (n > SMTP_PATH_MAX) {
			r = -E2BIG;
			break;
		}
		memcpy(m->from, a, n);
		m->from[n] = '\0';
		m->from_changed = true;
		break;
	}
	case MILTER_EV_ADD_RCPT: {
		const char *a = ev->addr;
		size_t n = ev->addr_len;
		strip_brackets(&a, &n);
		if (n == 0 || n > SMTP_PATH_MAX) {
			r = -EINVAL;
			break;
		}
		r = rcpt_add(m, a, n);
		break;
	}
	case MILTER_EV_DEL_RCPT: {
		const char *a = ev->addr;
		size_t n = ev->addr_len;
		strip_brackets(&a, &n);
		uint8_t *hd;
		size_t len;
		for (size_t o = 0; (hd = rcpt_next(&m->rcpts, &o, &len)) != NULL;)
			if (len == n && strncasecmp((char *)hd + 3, a, n) == 0)
				hd[2] = 1;
		break;
	}
	case MILTER_EV_REPL_BODY:
		if (!m->repl_started) {
			m->repl_started = true;
			m->body_new = true;
			m->body.len = 0;
		}
		r = buf_add_crlf(m->pool, &m->body, ev->data, ev->data_len);
		break;
	case MILTER_EV_QUARANTINE:
		m->quarantine = true;
		snprintf(m->qreason, sizeof(m->qreason), "%.*s", (int)ev->text_len, ev->text);
		break;
	default:
		break;
	}
	if (r < 0 && !m->failed) {
		m->failed = true;
		log_warn("milter %s: a change to message %s could not be applied (%s); the message "
		         "is refused",
		         s->ep, m->qid, strerror(-r));
	}
}

/* ---- the result into the inner sink ---- */

static int
forward(struct mf_msg *m)
{
	const struct sink *in = m->pool->env.inner;
	int r;

	if (m->from_changed) {
		/* The sender is part of what the inner sink staged at open. */
		char old[SINK_QID_MAX];
		snprintf(old, sizeof(old), "%s", m->qid);
		in->ops->tx_abort(m->inner);
		m->inner = NULL;
		m->info.from = m->from;
		m->info.from_len = strlen(m->from);
		r = in->ops->tx_open(in->self, &m->iw, &m->info, &m->inner, m->qid);
		if (r < 0)
			return r;
		log_info("%s: milter changed the sender to <%s>; queued as %s", old, m->from,
		         m->qid);
	}
	unsigned n = 0;
	uint8_t *hd;
	size_t len;
	for (size_t o = 0; (hd = rcpt_next(&m->rcpts, &o, &len)) != NULL;) {
		if (hd[2])
			continue; /* deleted by a milter */
		r = in->ops->tx_rcpt(m->inner, (const char *)hd + 3, len);
		if (r < 0)
			return r;
		n++;
	}
	if (n == 0)
		return 1; /* every recipient removed: nothing to deliver */
	if (m->quarantine) {
		if (in->ops->tx_hold == NULL) {
			log_warn(
			    "%s: quarantined by a milter (%s), but sink = discard keeps nothing",
			    m->qid, m->qreason);
		} else if ((r = in->ops->tx_hold(m->inner, m->qreason, strlen(m->qreason))) < 0) {
			return r;
		} else {
			log_info("%s: quarantine: %s", m->qid, m->qreason);
		}
	}
	for (uint32_t i = 0; i < m->nhdr; i++)
		if (!m->hdr[i].deleted &&
		    (r = in->ops->tx_data(m->inner, hdr_bytes(m, &m->hdr[i]), m->hdr[i].len)) < 0)
			return r;
	const char *d = m->data.p;
	if (!m->body_new)
		return in->ops->tx_data(m->inner, d + m->hdr_end, m->data.len - m->hdr_end);
	if ((r = in->ops->tx_data(m->inner, d + m->hdr_end, m->body_off - m->hdr_end)) < 0)
		return r;
	if (!m->has_sep && (r = in->ops->tx_data(m->inner, "\r\n", 2)) < 0)
		return r;
	if (m->body.len > 0 && (r = in->ops->tx_data(m->inner, m->body.p, m->body.len)) < 0)
		return r;
	if (m->body.len > 0 && m->body.p[m->body.len - 1] != '\n')
		r = in->ops->tx_data(m->inner, "\r\n", 2);
	return r;
}

static void
finish(struct mf_msg *m)
{
	const struct sink *in = m->pool->env.inner;
	struct ringmx_stats *st = m->pool->env.stats;
	struct smtp_check_reply r;

	m->committing = false;
	if (m->have_reply || m->failed) {
		if (m->failed && !m->have_reply) {
			static const char t[] = "451 4.3.0 Error: queue file write error\r\n";
			memcpy(r.text, t, sizeof(t) - 1);
			r.len = sizeof(t) - 1;
		} else {
			r = m->reply;
		}
		if (m->inner != NULL)
			in->ops->tx_abort(m->inner);
		m->inner = NULL;
		m->have_reply = false;
		deliver(m, 0, &r);
		return;
	}
	int rc = m->discard ? 1 : forward(m);
	if (rc == 1) {
		st->milter_discards++;
		log_info("%s: discard: milter (%s); from=<%s>", m->qid,
		         m->discard ? "discard verdict" : "every recipient removed", m->info.from);
		if (m->inner != NULL)
			in->ops->tx_abort(m->inner);
		m->inner = NULL;
		deliver(m, 0, NULL);
		return;
	}
	if (rc == 0)
		rc = in->ops->tx_commit(m->inner);
	if (rc == SINK_PENDING)
		return; /* inner_verdict */
	if (rc < 0 && m->inner != NULL)
		in->ops->tx_abort(m->inner);
	m->inner = NULL;
	deliver(m, rc == SINK_DONE ? 0 : rc, NULL);
}

/* The next milter that filters this message's content, from index i. */
static struct mf_slot *
content_slot(struct mf_msg *m, unsigned i)
{
	struct mf_conn *mc = m->mc;

	for (; i < mc->n; i++) {
		struct mf_slot *s = mc->slot[i];
		if (s != NULL && s->owner == mc && s->active && !s->msg_out && s->st == MF_S_OPEN) {
			m->cur = (uint8_t)i;
			s->cstep = STEP_DATA;
			s->chdr = 0;
			s->cbody = 0;
			m->repl_started = false;
			return s;
		}
	}
	return NULL;
}

static void
next_slot(struct mf_msg *m)
{
	struct mf_slot *s = content_slot(m, m->cur + 1u);

	if (s == NULL)
		finish(m);
	else
		mf_content_step(s);
}

/* A header field's value as the protocol shows it: after the colon, line
 * ends inside it as LF (as Postfix sends them), no final line end. */
static size_t
hdr_value(const struct mf_msg *m, const struct mf_hdr *h, char *dst, size_t cap)
{
	const char *f = hdr_bytes(m, h) + h->name_len + 1;
	size_t n = h->len - h->name_len - 1, o = 0;

	if (n >= 2 && f[n - 2] == '\r' && f[n - 1] == '\n')
		n -= 2;
	else if (n >= 1 && f[n - 1] == '\n')
		n -= 1;
	for (size_t i = 0; i < n; i++) {
		if (f[i] == '\r' && i + 1 < n && f[i + 1] == '\n')
			continue;
		if (o + 1 >= cap)
			return SIZE_MAX;
		dst[o++] = f[i];
	}
	dst[o] = '\0';
	return o;
}

/* Drive the current milter through the content; called when its reply
 * came, its send finished, or it failed. */
void
mf_content_step(struct mf_slot *s)
{
	struct mf_conn *mc = s->owner;
	struct mf_msg *m = mc != NULL ? mc->msg : NULL;

	if (m == NULL || !m->committing || mc->slot[m->cur] != s)
		return;
	if (s->st != MF_S_OPEN) {
		/* Failed: milter_default_action (mf_slot_fail set the deny
		 * reply unless it is accept). */
		if (mc->default_action == MILTER_DEFAULT_ACCEPT) {
			next_slot(m);
		} else {
			m->reply = mc->deny;
			m->have_reply = true;
			finish(m);
		}
		return;
	}
	for (;;) {
		if (s->have_verdict) {
			s->have_verdict = false;
			s->deadline = 0;
			enum milter_verdict v = s->verdict;
			switch (v) {
			case MILTER_V_CONTINUE:
				if (s->vstage == MILTER_ST_EOM) {
					next_slot(m);
					return;
				}
				break;
			case MILTER_V_SKIP:
				s->cstep = STEP_EOM;
				break;
			case MILTER_V_ACCEPT:
				next_slot(m);
				return;
			case MILTER_V_DISCARD:
				m->discard = true;
				finish(m);
				return;
			default: {
				struct smtp_check_reply r;
				mf_verdict_reply(s, &r); /* CONNFAIL, SHUTDOWN: slot_run */
				log_info("%s: milter-reject: %s from %s: %.*s", m->qid,
				         milter_stage_name(s->vstage), s->ep, (int)r.len - 2,
				         r.text);
				m->reply = r;
				m->have_reply = true;
				finish(m);
				return;
			}
			}
		}
		if (milter_waiting(&s->core) != MILTER_ST_NONE)
			return;
		int r;
		switch (s->cstep) {
		case STEP_DATA:
			r = milter_data(&s->core);
			break;
		case STEP_HDR: {
			while (s->chdr < m->nhdr && m->hdr[s->chdr].deleted)
				s->chdr++;
			if (s->chdr == m->nhdr) {
				s->cstep = STEP_EOH;
				continue;
			}
			const struct mf_hdr *h = &m->hdr[s->chdr];
			char *val = s->pool->scratch;
			size_t vl = hdr_value(m, h, val, sizeof(s->pool->scratch) - 1024);
			if (vl == SIZE_MAX) {
				s->chdr++; /* too long to show: kept, not shown */
				continue;
			}
			r = milter_header(&s->core, hdr_bytes(m, h), h->name_len, val, vl);
			break;
		}
		case STEP_EOH:
			r = milter_eoh(&s->core);
			break;
		case STEP_BODY: {
			const char *b = m->data.p + m->body_off;
			size_t bl = m->data.len - m->body_off;
			if (m->body_new) {
				b = m->body.p;
				bl = m->body.len;
			}
			if (s->cbody >= bl) {
				s->cstep = STEP_EOM;
				continue;
			}
			size_t k = bl - s->cbody;
			if (k > MILTER_CHUNK_MAX)
				k = MILTER_CHUNK_MAX;
			r = milter_body(&s->core, b + s->cbody, k);
			if (r >= 0)
				s->cbody += k;
			if (r == MILTER_SKIPPED)
				s->cstep = STEP_EOM;
			break;
		}
		case STEP_EOM:
			r = milter_eom(&s->core);
			break;
		default:
			return;
		}
		if (r == -ENOBUFS) {
			mf_slot_flush(s); /* on_send comes back here */
			if (!s->send_inflight)
				mf_slot_fail(s, "output buffer too small");
			return;
		}
		if (r < 0) {
			char why[64];
			snprintf(why, sizeof(why), "cannot send the %s stage (%s)",
			         s->cstep == STEP_HDR ? "header" : "content", strerror(-r));
			if (r == -EINVAL && s->cstep == STEP_HDR) {
				s->chdr++; /* a field the protocol cannot carry */
				continue;
			}
			mf_slot_fail(s, why);
			return;
		}
		/* Advance (a body chunk moved cbody above). */
		if (s->cstep == STEP_HDR)
			s->chdr++;
		else if (s->cstep == STEP_DATA)
			s->cstep = STEP_HDR;
		else if (s->cstep == STEP_EOH)
			s->cstep = STEP_BODY;
		else if (s->cstep == STEP_EOM && r != MILTER_WAIT) {
			next_slot(m); /* end of message skipped: no reply */
			return;
		}
		if (r == MILTER_WAIT) {
			mf_slot_wait(s, mc->t_content);
			mf_slot_flush(s);
			return;
		}
		/* No reply due: keep writing, sending when the buffer fills. */
		if (s->out.len > MF_OUT_CAP / 2) {
			mf_slot_flush(s);
			if (s->send_inflight)
				return;
		}
	}
}

/* ---- the sink ---- */

static struct mf_msg *
from_tx(struct sink_tx *tx)
{
	return (struct mf_msg *)(void *)tx;
}

static int
w_open(void *self, struct sink_waiter *waiter, const struct sink_open_info *info,
       struct sink_tx **tx, char qid[SINK_QID_MAX])
{
	struct mf_pool *p = self;
	struct mf_conn *mc = container_of(waiter, struct mf_conn, waiter);
	const struct sink *in = p->env.inner;

	struct mf_msg *m = msg_get(p);
	if (m == NULL)
		return -ENOMEM;
	m->mc = mc;
	m->qid = qid;
	m->info = *info;
	snprintf(m->from, sizeof(m->from), "%.*s", (int)info->from_len, info->from);
	m->info.from = m->from;
	m->iw.verdict = inner_verdict;
	int r = in->ops->tx_open(in->self, &m->iw, &m->info, &m->inner, qid);
	if (r < 0) {
		msg_put(m);
		return r;
	}
	mc->msg = m;
	*tx = (struct sink_tx *)(void *)m;
	return 0;
}

static int
w_rcpt(struct sink_tx *tx, const char *rcpt, size_t len)
{
	if (len > SMTP_PATH_MAX)
		return -EINVAL;
	return rcpt_add(from_tx(tx), rcpt, len);
}

static int
w_data(struct sink_tx *tx, const char *p, size_t n)
{
	struct mf_msg *m = from_tx(tx);

	if (m->failed)
		return -EIO;
	if (buf_add(m->pool, &m->data, p, n) < 0) {
		m->failed = true;
		log_warn(
		    "milter: staging memory (spool_memory, %llu bytes) full; message %s refused",
		    (unsigned long long)m->pool->env.memory_cap, m->qid);
		return -EIO;
	}
	return 0;
}

static int
w_commit(struct sink_tx *tx)
{
	struct mf_msg *m = from_tx(tx);
	struct mf_conn *mc = m->mc;

	if (m->failed)
		return -EIO;
	index_headers(m);
	m->committing = true;
	m->discard = mc->tx_discard;
	m->in_commit = true;
	if (mc->denied) {
		m->reply = mc->deny;
		m->have_reply = true;
		finish(m);
	} else if (m->discard) {
		finish(m);
	} else {
		struct mf_slot *s = content_slot(m, 0);
		if (s == NULL)
			finish(m);
		else
			mf_content_step(s);
	}
	m->in_commit = false;
	if (!m->sync_done)
		return SINK_PENDING;
	/* Done inside the call: a 250 (or the inner sink's error) is the
	 * commit's own answer; a reply of the milters' own goes out from the
	 * connection's timer, outside the session's call. */
	m->sync_done = false;
	if (m->have_reply) {
		m->deferred = true;
		mc->ops->timer(mc);
		return SINK_PENDING;
	}
	int res = m->sync_res;
	msg_put(m);
	return res == 0 ? SINK_DONE : res;
}

static void
w_abort(struct sink_tx *tx)
{
	struct mf_msg *m = from_tx(tx);
	struct mf_conn *mc = m->mc;
	const struct sink *in = m->pool->env.inner;

	if (m->inner != NULL)
		in->ops->tx_abort(m->inner);
	m->inner = NULL;
	if (mc != NULL)
		for (unsigned i = 0; i < mc->n; i++) {
			struct mf_slot *s = mc->slot[i];
			if (s == NULL || s->owner != mc || s->st != MF_S_OPEN)
				continue;
			if (milter_waiting(&s->core) != MILTER_ST_NONE) {
				/* Mid-reply: the conversation cannot go on. */
				s->active = false;
				mf_slot_fail(s, "message aborted while a reply was due");
				continue;
			}
			if (milter_abort(&s->core) > 0)
				mf_slot_flush(s);
		}
	msg_put(m);
}

static const struct sink_ops filter_ops = {
    .tx_open = w_open,
    .tx_rcpt = w_rcpt,
    .tx_data = w_data,
    .tx_commit = w_commit,
    .tx_abort = w_abort,
};

void
mf_sink_init(struct mf_pool *p)
{
	p->sink.ops = &filter_ops;
	p->sink.self = p;
}

const struct sink *
mf_sink(struct mf_pool *p)
{
	return &p->sink;
}

/* The deferred verdict of mf_msg's sync path, from the connection's timer. */
bool
mf_msg_deferred(struct mf_conn *mc)
{
	struct mf_msg *m = mc->msg;

	if (m == NULL || !m->deferred)
		return false;
	m->deferred = false;
	m->have_reply = false;
	deliver(m, 0, &m->reply);
	return true;
}

void
mf_msg_conn_closed(struct mf_conn *mc)
{
	/* The session aborts its transaction first (smtp_session_eof); a
	 * message whose verdict was pending is forgotten here. */
	if (mc->msg != NULL) {
		struct mf_msg *m = mc->msg;
		if (m->inner != NULL)
			m->pool->env.inner->ops->tx_abort(m->inner);
		m->inner = NULL;
		msg_put(m);
	}
}
