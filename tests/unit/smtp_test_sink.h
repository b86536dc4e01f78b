/*
 * smtp_test_sink.h - a recording sink and log hook for the SMTP core tests
 * (test_smtp_session.c, test_smtp_dialogues.c) and fuzzers.
 *
 * Ownership: everything lives in one struct tsink owned by the test; the
 * single struct sink_tx is embedded and its `live` flag catches a session
 * that uses a transaction after commit/abort or opens two at once.
 * Events are recorded as text lines ("open <from>", "rcpt <to>",
 * "data <content>", "commit <rc>", "abort") and log hook lines, both with
 * C-style escapes, so a dialogue file can state them.
 */
#ifndef SMTP_TEST_SINK_H
#define SMTP_TEST_SINK_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/sink.h"
#include "ringmx/smtp.h"

#define TSINK_LOG_MAX  (256 * 1024)
#define TSINK_DATA_MAX (4 * 1024 * 1024)

struct sink_tx {
	struct tsink *ts;
	int live;
};

struct tsink {
	int open_rc, rcpt_rc, data_rc, commit_rc; /* what the next calls return */
	unsigned nopen, ncommit, nabort, qid_seq;
	int pending; /* a commit returned SINK_PENDING, verdict not delivered */
	struct sink_tx tx;
	size_t loglen;
	char log[TSINK_LOG_MAX];
	size_t hooklen; /* log hook lines, '\n'-separated */
	char hooklog[TSINK_LOG_MAX];
	size_t datalen;
	char data[TSINK_DATA_MAX];
};

static void
tsink_fail(const char *why)
{
	fprintf(stderr, "test sink: %s\n", why);
	abort();
}

static void
tsink_escape(char *dst, size_t *dlen, size_t cap, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		char tmp[8];
		int k;

		if (c == '\r')
			k = snprintf(tmp, sizeof tmp, "\\r");
		else if (c == '\n')
			k = snprintf(tmp, sizeof tmp, "\\n");
		else if (c == '\t')
			k = snprintf(tmp, sizeof tmp, "\\t");
		else if (c == '\\')
			k = snprintf(tmp, sizeof tmp, "\\\\");
		else if (c < 0x20 || c >= 0x7f)
			k = snprintf(tmp, sizeof tmp, "\\x%02x", c);
		else
			k = snprintf(tmp, sizeof tmp, "%c", c);
		if (*dlen + (size_t)k + 2 > cap)
			tsink_fail("log overflow");
		memcpy(dst + *dlen, tmp, (size_t)k);
		*dlen += (size_t)k;
	}
}

static void tsink_logf(struct tsink *ts, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
tsink_logf(struct tsink *ts, const char *fmt, ...)
{
	va_list ap;
	int k;

	va_start(ap, fmt);
	k = vsnprintf(ts->log + ts->loglen, sizeof ts->log - ts->loglen, fmt, ap);
	va_end(ap);
	if (k < 0 || (size_t)k >= sizeof ts->log - ts->loglen)
		tsink_fail("log overflow");
	ts->loglen += (size_t)k;
}

static void
tsink_log_esc(struct tsink *ts, const char *p, size_t n)
{
	tsink_escape(ts->log, &ts->loglen, sizeof ts->log, p, n);
}

static int
tsink_open(void *self, struct sink_waiter *waiter, const struct sink_open_info *info, struct sink_tx **tx,
	   char qid[SINK_QID_MAX])
{
	struct tsink *ts = self;

	(void)waiter;
	if (ts->tx.live || ts->pending)
		tsink_fail("tx_open with a transaction open");
	tsink_logf(ts, "open <");
	tsink_log_esc(ts, info->from, info->from_len);
	tsink_logf(ts, ">%s%s", info->utf8 ? " SMTPUTF8" : "", info->eightbit ? " 8BITMIME" : "");
	if (info->size_declared)
		tsink_logf(ts, " SIZE=%llu", (unsigned long long)info->size_declared);
	tsink_logf(ts, "\n");
	if (ts->open_rc < 0) {
		tsink_logf(ts, "open failed %d\n", ts->open_rc);
		return ts->open_rc;
	}
	ts->nopen++;
	ts->tx.ts = ts;
	ts->tx.live = 1;
	ts->datalen = 0;
	snprintf(qid, SINK_QID_MAX, "Q%04u", ++ts->qid_seq);
	*tx = &ts->tx;
	return 0;
}

static int
tsink_rcpt(struct sink_tx *tx, const char *rcpt, size_t len)
{
	struct tsink *ts = tx->ts;

	if (!tx->live)
		tsink_fail("tx_rcpt on a dead transaction");
	tsink_logf(ts, "rcpt <");
	tsink_log_esc(ts, rcpt, len);
	tsink_logf(ts, ">\n");
	return ts->rcpt_rc;
}

static int
tsink_data(struct sink_tx *tx, const char *p, size_t n)
{
	struct tsink *ts = tx->ts;

	if (!tx->live)
		tsink_fail("tx_data on a dead transaction");
	if (n == 0)
		tsink_fail("tx_data with an empty span");
	if (ts->datalen + n > sizeof ts->data)
		tsink_fail("data overflow");
	memcpy(ts->data + ts->datalen, p, n);
	ts->datalen += n;
	return ts->data_rc;
}

/* Length of the leading Received: header (up to the first CRLF that is
 * not followed by a TAB), or 0 if the data does not start with one. */
static size_t
tsink_received_len(const char *d, size_t n)
{
	if (n < 10 || memcmp(d, "Received: ", 10) != 0)
		return 0;
	for (size_t i = 0; i + 1 < n; i++)
		if (d[i] == '\r' && d[i + 1] == '\n' && (i + 2 >= n || d[i + 2] != '\t'))
			return i + 2;
	return 0;
}

static void
tsink_log_data(struct tsink *ts)
{
	size_t r = tsink_received_len(ts->data, ts->datalen);

	tsink_logf(ts, r ? "data " : "data(no Received:) ");
	tsink_log_esc(ts, ts->data + r, ts->datalen - r);
	tsink_logf(ts, "\n");
}

static int
tsink_commit(struct sink_tx *tx)
{
	struct tsink *ts = tx->ts;

	if (!tx->live)
		tsink_fail("tx_commit on a dead transaction");
	tsink_log_data(ts);
	ts->ncommit++;
	tx->live = 0;
	if (ts->commit_rc == SINK_PENDING) {
		ts->pending = 1;
		tsink_logf(ts, "commit pending\n");
	} else {
		tsink_logf(ts, "commit %d\n", ts->commit_rc);
	}
	return ts->commit_rc;
}

static void
tsink_abort(struct sink_tx *tx)
{
	struct tsink *ts = tx->ts;

	if (!tx->live && !ts->pending)
		tsink_fail("tx_abort on a dead transaction");
	tx->live = 0;
	ts->pending = 0;
	ts->nabort++;
	tsink_logf(ts, "abort\n");
}

static const struct sink_ops tsink_ops = {
	.tx_open = tsink_open,
	.tx_rcpt = tsink_rcpt,
	.tx_data = tsink_data,
	.tx_commit = tsink_commit,
	.tx_abort = tsink_abort,
};

static void
tsink_hook_log(void *owner, enum smtp_log_role role, const char *line, size_t len)
{
	struct tsink *ts = owner;

	(void)role; /* the line's text says it: a queue line is "QID: from=<...>, size=" */
	if (memchr(line, '\n', len) != NULL || memchr(line, '\r', len) != NULL)
		tsink_fail("log line with a line break");
	tsink_escape(ts->hooklog, &ts->hooklen, sizeof ts->hooklog, line, len);
	ts->hooklog[ts->hooklen++] = '\n';
}

static const struct smtp_hooks tsink_hooks = {.log = tsink_hook_log};

#endif
