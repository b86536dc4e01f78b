/* sink_discard.c - see sink_discard.h. */
#include "sink_discard.h"

#include <assert.h>
#include <string.h>
#include <time.h>

/* The discard sink has no per-message state: the transaction handle is the
 * sink itself. */
static struct sink_discard *
from_tx(struct sink_tx *tx)
{
	return (struct sink_discard *)tx;
}

static int
d_open(void *self, struct sink_waiter *waiter, const struct sink_open_info *info, struct sink_tx **tx,
       char qid[SINK_QID_MAX])
{
	struct sink_discard *d = self;
	struct timespec ts;
	(void)waiter;
	(void)info;
	clock_gettime(CLOCK_REALTIME, &ts);
	qid_next(d->qid, (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u, qid);
	d->open++;
	*tx = (struct sink_tx *)d;
	return 0;
}

static int
d_rcpt(struct sink_tx *tx, const char *rcpt, size_t len)
{
	(void)tx;
	(void)rcpt;
	(void)len;
	return 0;
}

static int
d_data(struct sink_tx *tx, const char *p, size_t n)
{
	(void)p;
	from_tx(tx)->bytes += n;
	return 0;
}

static int
d_commit(struct sink_tx *tx)
{
	struct sink_discard *d = from_tx(tx);
	assert(d->open > 0);
	d->open--;
	d->messages++;
	return SINK_DONE;
}

static void
d_abort(struct sink_tx *tx)
{
	struct sink_discard *d = from_tx(tx);
	assert(d->open > 0);
	d->open--;
}

static const struct sink_ops discard_ops = {
	.tx_open = d_open,
	.tx_rcpt = d_rcpt,
	.tx_data = d_data,
	.tx_commit = d_commit,
	.tx_abort = d_abort,
};

void
sink_discard_init(struct sink_discard *d, struct qid_gen *qid, struct sink *out)
{
	memset(d, 0, sizeof(*d));
	d->qid = qid;
	out->ops = &discard_ops;
	out->self = d;
}
