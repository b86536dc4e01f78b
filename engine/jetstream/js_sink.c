/*
 * js_sink.c - the worker's side of sink = jetstream (js_sink.h): slots and
 * their staging buffers, the hand-over to the publisher, the results back
 * through the worker's ring, and the verdicts.
 */
#include "js_internal.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ud.h"

#define LOG_SERVICE LOG_SVC_CLEANUP /* log.h */

enum { JS_KIND_DONE = 1, JS_KIND_KICK = 2 };

/* Staging buffers start here and double; one past JS_KEEP_MAX is given
 * back when its slot is freed, so a burst of large messages does not pin
 * memory for good. */
#define JS_BUF_MIN  (16u << 10)
#define JS_KEEP_MAX (1u << 20)

static struct js_slot *
slot_of(struct sink_tx *tx)
{
	return (struct js_slot *)(void *)tx;
}

static void
buf_trim(struct js_sink *js, char **buf, size_t *cap)
{
	if (*cap > JS_KEEP_MAX) {
		free(*buf);
		js->staged -= *cap;
		*buf = NULL;
		*cap = 0;
	}
}

static void
slot_free(struct js_sink *js, struct js_slot *s)
{
	buf_trim(js, &s->body, &s->body_cap);
	buf_trim(js, &s->rcpt, &s->rcpt_cap);
	s->state = JS_FREE;
	s->owner = NULL;
	s->next = js->free;
	js->free = s;
}

/* Room for n more bytes in a staging buffer, within staged_max. */
static int
buf_reserve(struct js_sink *js, char **buf, size_t len, size_t *cap, size_t n)
{
	if (*cap - len >= n)
		return 0;
	size_t want = *cap ? *cap : JS_BUF_MIN;
	while (want - len < n)
		want *= 2;
	if (js->staged - *cap + want > js->staged_max) {
		js->env.stats->spool_memory_full++;
		return -ENOMEM;
	}
	char *p = realloc(*buf, want);
	if (p == NULL)
		return -ENOMEM;
	js->staged = js->staged - *cap + want;
	*buf = p;
	*cap = want;
	return 0;
}

/* ---- the sink ---- */

static int
j_open(void *self, struct sink_waiter *waiter, const struct sink_open_info *info,
       struct sink_tx **tx, char qid[SINK_QID_MAX])
{
	struct js_sink *js = self;
	struct js_slot *s = js->free;
	struct timespec ts;

	/* Every slot is waiting for the stream: the relay's answer when it
	 * cannot keep up (451 4.3.0, try again later). */
	if (s == NULL) {
		js->env.stats->jetstream_busy++;
		return -EBUSY;
	}
	js->free = s->next;
	s->next = NULL;
	s->state = JS_OPEN;
	s->owner = waiter;
	s->rcpt_len = 0;
	s->nrcpt = 0;
	s->body_len = 0;
	s->failed = false;
	s->attempts = 0;
	s->duplicate = false;
	s->res = 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	qid_next(js->env.qid, (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u,
	         s->qid);
	snprintf(qid, SINK_QID_MAX, "%s", s->qid);
	snprintf(s->from, sizeof(s->from), "<%.*s>", (int)info->from_len, info->from);
	snprintf(s->helo, sizeof(s->helo), "%s", info->helo != NULL ? info->helo : "");
	if (info->peer != NULL)
		snprintf(s->client, sizeof(s->client), "[%s]:%u", info->peer->addr_text,
		         (unsigned)info->peer->port);
	else
		s->client[0] = '\0';
	snprintf(s->tls, sizeof(s->tls), "%s", info->tls != NULL ? info->tls : "");
	s->utf8 = info->utf8;
	s->eightbit = info->eightbit;
	*tx = (struct sink_tx *)(void *)s;
	return 0;
}

static int
j_rcpt(struct sink_tx *tx, const char *rcpt, size_t len)
{
	struct js_slot *s = slot_of(tx);
	int r;

	assert(s->state == JS_OPEN);
	r = buf_reserve(s->js, &s->rcpt, s->rcpt_len, &s->rcpt_cap, len + 3);
	if (r < 0)
		return r;
	/* As the header carries it: <address>. */
	s->rcpt[s->rcpt_len++] = '<';
	memcpy(s->rcpt + s->rcpt_len, rcpt, len);
	s->rcpt_len += len;
	s->rcpt[s->rcpt_len++] = '>';
	s->rcpt[s->rcpt_len++] = '\0';
	s->nrcpt++;
	return 0;
}

static int
j_data(struct sink_tx *tx, const char *p, size_t n)
{
	struct js_slot *s = slot_of(tx);

	assert(s->state == JS_OPEN);
	if (s->failed)
		return -ENOMEM;
	if (buf_reserve(s->js, &s->body, s->body_len, &s->body_cap, n) < 0) {
		s->failed = true;
		return -ENOMEM;
	}
	memcpy(s->body + s->body_len, p, n);
	s->body_len += n;
	return 0;
}

static int
j_commit(struct sink_tx *tx)
{
	struct js_slot *s = slot_of(tx);
	struct js_sink *js = s->js;

	assert(s->state == JS_OPEN);
	if (s->failed || s->nrcpt == 0) {
		/* Not published: the caller answers 451 and aborts nothing. */
		slot_free(js, s);
		return -ENOMEM;
	}
	s->received_at = *js->env.wall;
	s->deadline = *js->env.now + js->conf->timeout;
	s->state = JS_INFLIGHT;
	js->inflight++;
	uint32_t head = atomic_load_explicit(&js->ring_head, memory_order_relaxed);
	/* nring >= nslots: a slot in flight has a place. */
	assert(head - atomic_load_explicit(&js->ring_tail, memory_order_acquire) < js->nring);
	js->ring[head & (js->nring - 1)] = s->idx;
	atomic_store_explicit(&js->ring_head, head + 1, memory_order_release);
	js->kick_wanted = true; /* js_poll() wakes the publisher once per iteration */
	return SINK_PENDING;
}

static void
j_abort(struct sink_tx *tx)
{
	struct js_slot *s = slot_of(tx);

	if (s->state == JS_FREE)
		return; /* a failed commit ended it already (as the spool's does) */
	if (s->state == JS_OPEN) {
		slot_free(s->js, s);
		return;
	}
	/* With the publisher: freed when its result comes, with no verdict. */
	assert(s->state == JS_INFLIGHT);
	s->owner = NULL;
}

static const struct sink_ops js_ops = {
    .tx_open = j_open,
    .tx_rcpt = j_rcpt,
    .tx_data = j_data,
    .tx_commit = j_commit,
    .tx_abort = j_abort,
};

void
js_sink(struct js_sink *js, struct sink *out)
{
	out->ops = &js_ops;
	out->self = js;
}

/* ---- results ---- */

void
js_done_push(struct js_sink *js, struct js_slot *s)
{
	struct js_slot *old = atomic_load_explicit(&js->done, memory_order_relaxed);

	do
		s->next = old;
	while (!atomic_compare_exchange_weak_explicit(&js->done, &old, s, memory_order_release,
	                                              memory_order_relaxed));
	/* The list was empty: the worker may be asleep on it. A push onto a
	 * list that is not empty is taken with the ones before it. */
	if (old == NULL) {
		uint64_t one = 1;
		ssize_t w = write(js->done_efd, &one, sizeof(one));
		(void)w; /* an eventfd write fails only on overflow: already awake */
	}
}

static void
arm_read(struct js_sink *js)
{
	struct io_uring_sqe *sqe = js->env.get_sqe(js->env.ctx);

	io_uring_prep_read(sqe, js->done_efd, &js->done_val, sizeof(js->done_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(js->env.ud_op, 0, JS_KIND_DONE, 0));
	js->read_armed = true;
}

static void
deliver(struct js_sink *js, struct js_slot *s)
{
	struct sink_waiter *owner = s->owner;
	struct ringmx_stats *st = js->env.stats;
	int res = s->res;

	assert(s->state == JS_INFLIGHT);
	js->inflight--;
	if (res == 0) {
		st->jetstream_published++;
		if (s->duplicate)
			st->jetstream_duplicates++;
	} else if (res == -ETIMEDOUT) {
		st->jetstream_timeouts++;
	} else {
		st->jetstream_errors++;
	}
	if (s->attempts > 1)
		st->jetstream_retries += s->attempts - 1;
	/* Free first: the owner may open its next transaction at once. */
	slot_free(js, s);
	if (owner != NULL)
		owner->verdict(owner, res == 0 ? 0 : -EAGAIN);
}

static void
take_done(struct js_sink *js)
{
	struct js_slot *s = atomic_exchange_explicit(&js->done, NULL, memory_order_acquire);
	struct js_slot *rev = NULL;

	/* Pushed last first: in order of arrival, for fairness. */
	while (s != NULL) {
		struct js_slot *n = s->next;
		s->next = rev;
		rev = s;
		s = n;
	}
	while (rev != NULL) {
		struct js_slot *n = rev->next;
		deliver(js, rev);
		rev = n;
	}
}

void
js_on_cqe(struct js_sink *js, struct io_uring_cqe *cqe)
{
	switch (ud_kind(cqe->user_data)) {
	case JS_KIND_DONE:
		js->read_armed = false;
		if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -ECANCELED)
			panic("jetstream: eventfd read: %s", strerror(-cqe->res));
		take_done(js);
		arm_read(js);
		return;
	case JS_KIND_KICK:
		js->kick_inflight = false;
		if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -ECANCELED)
			panic("jetstream: eventfd write: %s", strerror(-cqe->res));
		return;
	default:
		panic("jetstream: CQE of unknown kind %u", ud_kind(cqe->user_data));
	}
}

void
js_poll(struct js_sink *js)
{
	/* One wake-up per loop iteration, however many messages it hands over;
	 * the publisher drains the ring before it sleeps again. */
	if (!js->kick_wanted || js->kick_inflight)
		return;
	struct io_uring_sqe *sqe = js->env.get_sqe(js->env.ctx);
	js->kick_val = 1;
	io_uring_prep_write(sqe, js->pub_efd, &js->kick_val, sizeof(js->kick_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(js->env.ud_op, 0, JS_KIND_KICK, 0));
	js->kick_wanted = false;
	js->kick_inflight = true;
}

bool
js_idle(const struct js_sink *js)
{
	return js->inflight == 0 && !js->kick_inflight;
}

/* ---- life cycle ---- */

int
js_open(struct js_sink **out, const struct config *cfg, const struct js_env *env, char *err,
        size_t errlen)
{
	struct js_sink *js = calloc(1, sizeof(*js));
	uint32_t n = cfg->jetstream.max_pending;

	if (js == NULL)
		goto nomem;
	js->env = *env;
	js->conf = &cfg->jetstream;
	js->staged_max = cfg->spool_memory;
	js->size_limit = cfg->smtp.message_size_limit;
	js->pub_efd = js->done_efd = -1;
	js->nslots = n;
	js->slots = calloc(n, sizeof(*js->slots));
	for (js->nring = 1; js->nring < n; js->nring *= 2)
		;
	js->ring = calloc(js->nring, sizeof(*js->ring));
	if (js->slots == NULL || js->ring == NULL)
		goto nomem;
	for (uint32_t i = n; i-- > 0;) {
		js->slots[i].js = js;
		js->slots[i].idx = i;
		js->slots[i].next = js->free;
		js->free = &js->slots[i];
	}
	js->pub_efd = eventfd(0, EFD_CLOEXEC);
	js->done_efd = eventfd(0, EFD_CLOEXEC);
	if (js->pub_efd < 0 || js->done_efd < 0) {
		int e = errno;
		snprintf(err, errlen, "jetstream: eventfd: %s", strerror(e));
		js_close(js);
		return -e;
	}
	int r = js_pub_start(js, err, errlen);
	if (r < 0) {
		js_close(js);
		return r;
	}
	arm_read(js);
	*out = js;
	return 0;
nomem:
	snprintf(err, errlen, "jetstream: out of memory for %u slots", n);
	js_close(js);
	return -ENOMEM;
}

void
js_close(struct js_sink *js)
{
	if (js == NULL)
		return;
	/* Results that came after the last loop iteration are dropped with
	 * the slots: their owners are gone (the drain closed every connection). */
	js_pub_stop(js);
	for (uint32_t i = 0; js->slots != NULL && i < js->nslots; i++) {
		free(js->slots[i].body);
		free(js->slots[i].rcpt);
	}
	free(js->slots);
	free(js->ring);
	if (js->pub_efd >= 0)
		close(js->pub_efd);
	if (js->done_efd >= 0)
		close(js->done_efd);
	free(js);
}
