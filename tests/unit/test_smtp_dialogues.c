/*
 * test_smtp_dialogues.c - golden SMTP dialogues (tests/dialogues/NAME.dlg) run
 * against the sans-I/O core with a recording sink.
 *
 * Each dialogue runs in several feed modes and must give the same result in
 * all of them: (a) each client flight fed whole, (b) each flight split into
 * two feeds at every offset k (k = 1..longest flight; flights longer than
 * DLG_SPLIT_RUNS get a stride), (c) one byte per feed. Every feed is copied
 * so that it ends exactly at a PROT_NONE guard page (d), so any read past
 * the input faults. Output is "sent" (moved to the transcript) after every
 * feed call, so a small `! out` buffer exercises SMTP_ST_OUTFULL.
 *
 * Dialogue file format (one item per line):
 *   # text          comment; blank lines are ignored
 *   > text          client sends text + CRLF
 *   >- text         client sends text with no CRLF added
 *   >xN text        client sends text + CRLF, N times
 *   < text          the server replies text + CRLF
 *   <xN text        ... N times
 *   = text / =xN    the sink records this event line (see smtp_test_sink.h:
 *                   open <from> [SMTPUTF8] [8BITMIME] [SIZE=n], open failed E,
 *                   rcpt <to>, data <content without Received:>,
 *                   commit 0|E|pending, abort)
 *   ~ text          the log hook receives this line
 *   ! directive     see below
 * Text in >, <, =, ~ lines takes C escapes: \r \n \t \0 \\ \xHH.
 * Consecutive > lines form one flight (what a pipelining client sends
 * before it waits); any other item ends the flight. Expected <, =, ~ items
 * are compared (as a whole transcript so far) before every flight or
 * directive and at the end, so they must be listed where they happen.
 *
 * Directives:
 *   ! conf KEY=VALUE ...  before the first flight: size, rcpt_limit,
 *                         error_limit, junk_limit, hop_count_limit,
 *                         bare_newline=reject|normalize,
 *                         starttls=0|1, greeting_timeout, command_timeout,
 *                         data_timeout, data_end_timeout, session_timeout (s),
 *                         tls_offer=0|1, tls_require=0|1 (smtp_session_set_tls_policy)
 *   ! out N               output buffer capacity (default 8192)
 *   ! whole-only          the result depends on feed boundaries (the DATA
 *                         synchronization rule): run mode (a) only
 *   ! flush               end the current flight (two flights in a row)
 *   ! sink open=E | rcpt=E | data=E | commit=done|pending|E   next sink results
 *   ! verdict E           deliver the pending verdict (0 or -errno), then
 *                         feed the input held while paused
 *   ! tick S              advance the clock S seconds, then tick if due
 *   ! deadline S          assert the deadline is S seconds from now (or "none")
 *   ! shutdown [force]    smtp_session_shutdown()
 *   ! eof                 smtp_session_eof()
 *   ! status FLAGS        assert smtp_session_status(): none or PAUSED|CLOSE|IN_TX|STARTTLS
 *   ! tls_started V C     smtp_session_tls_started(version V, cipher C)
 *   ! stat NAME=N         assert a struct ringmx_stats counter
 * The greeting is sent (smtp_session_start) before the first non-conf item.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "ringmx/smtp.h"
#include "smtp_test_sink.h"

#define DLG_MAX_OPS     4096
#define DLG_TEXT_MAX    (1024 * 1024)
#define DLG_SPLIT_RUNS  2048
#define DLG_OUT_DEFAULT 8192
#define DLG_OUT_MAX     65536
#define DLG_NAMES_MAX   256
#define NS              1000000000ull
#define T0              (1000 * NS)
/* Sat, 28 Nov 2026 12:53:05 +0000 */
#define WALL0 1795870385

enum op_kind { OP_SEND, OP_REPLY, OP_EVENT, OP_LOG, OP_DIRECTIVE };

struct op {
	enum op_kind kind;
	size_t off, len; /* into dlg.text */
	int line;
};

struct dlg {
	char name[256];
	struct smtp_conf conf;
	bool tls_offer, tls_require; /* smtp_session_set_tls_policy() */
	size_t out_cap;
	bool whole_only;
	size_t nops;
	struct op ops[DLG_MAX_OPS];
	size_t textlen;
	char text[DLG_TEXT_MAX];
};

static const char *const dlg_domains[] = {"example.test", ".sub.example.test", "xn--bcher-kva.test"};

/* ---- parsing ---- */

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static void
text_add(struct dlg *d, const char *p, size_t n)
{
	if (d->textlen + n > sizeof d->text)
		fail_msg("%s: dialogue too large", d->name);
	memcpy(d->text + d->textlen, p, n);
	d->textlen += n;
}

static void
text_unescape(struct dlg *d, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = p[i];

		if (c == '\\' && i + 1 < n) {
			char e = p[++i];
			if (e == 'r')
				c = '\r';
			else if (e == 'n')
				c = '\n';
			else if (e == 't')
				c = '\t';
			else if (e == '0')
				c = '\0';
			else if (e == 'x' && i + 2 < n && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
				c = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
				i += 2;
			} else
				c = e;
		}
		text_add(d, &c, 1);
	}
}

static void
op_add(struct dlg *d, enum op_kind k, size_t off, int line)
{
	struct op *last = d->nops ? &d->ops[d->nops - 1] : NULL;

	/* Consecutive items of one kind merge (a flight, a reply block). */
	if (last && last->kind == k && k != OP_DIRECTIVE && last->off + last->len == off) {
		last->len = d->textlen - last->off;
		return;
	}
	if (d->nops == DLG_MAX_OPS)
		fail_msg("%s: too many items", d->name);
	d->ops[d->nops++] = (struct op){k, off, d->textlen - off, line};
}

static void
conf_defaults(struct smtp_conf *c)
{
	memset(c, 0, sizeof *c);
	snprintf(c->hostname, sizeof c->hostname, "mx.example.test");
	c->domains = dlg_domains;
	c->ndomains = sizeof dlg_domains / sizeof dlg_domains[0];
	c->message_size_limit = 10485760;
	c->recipient_limit = 50;
	c->error_limit = 20;
	c->junk_limit = 100;
	c->hop_count_limit = 50;
	c->greeting_timeout = 300 * NS;
	c->command_timeout = 300 * NS;
	c->data_timeout = 300 * NS;
	c->data_end_timeout = 600 * NS;
	c->session_timeout = 3600 * NS;
}

static void
conf_set(struct dlg *d, const char *kv, int line)
{
	char key[64];
	unsigned long long v = 0;
	const char *eq = strchr(kv, '=');

	if (eq == NULL || (size_t)(eq - kv) >= sizeof key)
		fail_msg("%s:%d: bad conf item '%s'", d->name, line, kv);
	memcpy(key, kv, (size_t)(eq - kv));
	key[eq - kv] = '\0';
	if (strcmp(key, "bare_newline") == 0) {
		d->conf.bare_newline = strcmp(eq + 1, "reject") == 0 ? SMTP_BARE_NEWLINE_REJECT
								    : SMTP_BARE_NEWLINE_NORMALIZE;
		return;
	}
	v = strtoull(eq + 1, NULL, 10);
	if (strcmp(key, "size") == 0)
		d->conf.message_size_limit = v;
	else if (strcmp(key, "rcpt_limit") == 0)
		d->conf.recipient_limit = (unsigned)v;
	else if (strcmp(key, "envelope_limit") == 0)
		d->conf.envelope_limit = v;
	else if (strcmp(key, "error_limit") == 0)
		d->conf.error_limit = (unsigned)v;
	else if (strcmp(key, "junk_limit") == 0)
		d->conf.junk_limit = (unsigned)v;
	else if (strcmp(key, "hop_count_limit") == 0)
		d->conf.hop_count_limit = (unsigned)v;
	else if (strcmp(key, "starttls") == 0)
		d->conf.starttls = v != 0;
	else if (strcmp(key, "tls_offer") == 0)
		d->tls_offer = v != 0;
	else if (strcmp(key, "tls_require") == 0)
		d->tls_require = v != 0;
	else if (strcmp(key, "greeting_timeout") == 0)
		d->conf.greeting_timeout = v * NS;
	else if (strcmp(key, "command_timeout") == 0)
		d->conf.command_timeout = v * NS;
	else if (strcmp(key, "data_timeout") == 0)
		d->conf.data_timeout = v * NS;
	else if (strcmp(key, "data_end_timeout") == 0)
		d->conf.data_end_timeout = v * NS;
	else if (strcmp(key, "session_timeout") == 0)
		d->conf.session_timeout = v * NS;
	else
		fail_msg("%s:%d: unknown conf key '%s'", d->name, line, key);
}

static void
dlg_load(struct dlg *d, const char *dir, const char *name)
{
	char path[4096], buf[8192];
	FILE *f;
	int line = 0;

	memset(d, 0, offsetof(struct dlg, text));
	snprintf(d->name, sizeof d->name, "%s", name);
	conf_defaults(&d->conf);
	d->out_cap = DLG_OUT_DEFAULT;
	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "r");
	if (f == NULL)
		fail_msg("cannot open %s", path);
	while (fgets(buf, sizeof buf, f) != NULL) {
		size_t n = strlen(buf), off = d->textlen;
		long rep = 1;
		const char *t;
		enum op_kind k = OP_SEND;

		line++;
		if (n > 0 && buf[n - 1] == '\n')
			buf[--n] = '\0';
		if (n == 0 || buf[0] == '#')
			continue;
		if (buf[0] == '!') {
			t = buf + 1 + strspn(buf + 1, " ");
			if (strncmp(t, "conf ", 5) == 0) {
				char *save = NULL, *tmp = strdup(t + 5);
				for (char *w = strtok_r(tmp, " ", &save); w; w = strtok_r(NULL, " ", &save))
					conf_set(d, w, line);
				free(tmp);
				continue;
			}
			if (strncmp(t, "out ", 4) == 0) {
				d->out_cap = strtoul(t + 4, NULL, 10);
				assert_true(d->out_cap <= DLG_OUT_MAX);
				continue;
			}
			if (strcmp(t, "whole-only") == 0) {
				d->whole_only = true;
				continue;
			}
			text_add(d, t, strlen(t));
			op_add(d, OP_DIRECTIVE, off, line);
			continue;
		}
		switch (buf[0]) {
		case '>': k = OP_SEND; break;
		case '<': k = OP_REPLY; break;
		case '=': k = OP_EVENT; break;
		case '~': k = OP_LOG; break;
		default: fail_msg("%s:%d: bad line", name, line);
		}
		t = buf + 1;
		bool raw = false;
		if (k == OP_SEND && *t == '-') {
			raw = true;
			t++;
		} else if (*t == 'x') {
			rep = strtol(t + 1, (char **)&t, 10);
		}
		if (*t == ' ')
			t++;
		for (long r = 0; r < rep; r++) {
			/* Sink events and log lines are compared in their
			 * escaped form, so they are kept as written. */
			if (k == OP_SEND || k == OP_REPLY)
				text_unescape(d, t, strlen(t));
			else
				text_add(d, t, strlen(t));
			if (k == OP_SEND || k == OP_REPLY) {
				if (!raw)
					text_add(d, "\r\n", 2);
			} else {
				text_add(d, "\n", 1);
			}
		}
		op_add(d, k, off, line);
	}
	fclose(f);
}

/* ---- running ---- */

enum mode { MODE_WHOLE, MODE_SPLIT, MODE_BYTES };

struct run {
	const struct dlg *d;
	enum mode mode;
	size_t split;
	struct smtp_session s;
	struct smtp_out out;
	struct smtp_peer peer;
	struct ringmx_stats stats;
	struct sink sink;
	struct tsink *ts;
	uint64_t now;
	bool started;
	char outbuf[DLG_OUT_MAX];
	size_t tlen; /* transcript: everything the server sent */
	char transcript[DLG_TEXT_MAX];
	size_t xlen, elen, llen; /* expected so far: replies, events, log */
	char xreply[DLG_TEXT_MAX];
	char xevent[TSINK_LOG_MAX];
	char xlog[TSINK_LOG_MAX];
	size_t heldlen; /* input the session did not take while paused */
	char held[DLG_TEXT_MAX];
	char *guard;    /* PROT_NONE page; feeds end right before it */
	size_t guard_room;
};

static const char *
mode_name(const struct run *r)
{
	static char buf[64];

	if (r->mode == MODE_WHOLE)
		return "whole";
	if (r->mode == MODE_BYTES)
		return "one byte per feed";
	snprintf(buf, sizeof buf, "split at %zu", r->split);
	return buf;
}

static void
flush_out(struct run *r)
{
	assert_true(r->out.len <= r->out.cap);
	memcpy(r->transcript + r->tlen, r->out.buf, r->out.len);
	r->tlen += r->out.len;
	r->out.len = 0;
}

static void
dump_diff(const char *what, const char *exp, size_t elen, const char *got, size_t glen)
{
	size_t i = 0;

	while (i < elen && i < glen && exp[i] == got[i])
		i++;
	size_t from = i > 200 ? i - 200 : 0;
	char *e = calloc(1, 8 * (elen - from) + 16), *g = calloc(1, 8 * (glen - from) + 16);
	size_t el = 0, gl = 0;
	tsink_escape(e, &el, 8 * (elen - from) + 16, exp + from, elen - from > 600 ? 600 : elen - from);
	tsink_escape(g, &gl, 8 * (glen - from) + 16, got + from, glen - from > 600 ? 600 : glen - from);
	print_error("%s differ at byte %zu\n  expected: ...%.*s\n  got:      ...%.*s\n", what, i,
		    (int)el, e, (int)gl, g);
	free(e);
	free(g);
}

static void
check(struct run *r, int line)
{
	bool ok = true;

	if (r->tlen != r->xlen || memcmp(r->transcript, r->xreply, r->xlen) != 0) {
		dump_diff("replies", r->xreply, r->xlen, r->transcript, r->tlen);
		ok = false;
	}
	if (r->ts->loglen != r->elen || memcmp(r->ts->log, r->xevent, r->elen) != 0) {
		dump_diff("sink events", r->xevent, r->elen, r->ts->log, r->ts->loglen);
		ok = false;
	}
	if (r->ts->hooklen != r->llen || memcmp(r->ts->hooklog, r->xlog, r->llen) != 0) {
		dump_diff("log lines", r->xlog, r->llen, r->ts->hooklog, r->ts->hooklen);
		ok = false;
	}
	if (!ok)
		fail_msg("%s:%d (%s): mismatch", r->d->name, line, mode_name(r));
}

/* One feed call sequence for one piece, as the engine would do it. */
static void
feed_piece(struct run *r, const char *p, size_t n, int line)
{
	unsigned st = smtp_session_status(&r->s);

	if (st & SMTP_ST_PAUSED) {
		memcpy(r->held + r->heldlen, p, n);
		r->heldlen += n;
		return;
	}
	while (n > 0) {
		char *g = r->guard - n;
		size_t c;

		assert_true(n <= r->guard_room);
		memcpy(g, p, n);
		c = smtp_session_feed(&r->s, g, n, r->now, WALL0 + (int64_t)((r->now - T0) / NS));
		if (c > n)
			fail_msg("%s:%d: consumed %zu > %zu", r->d->name, line, c, n);
		flush_out(r);
		p += c;
		n -= c;
		st = smtp_session_status(&r->s);
		if (n == 0 || (st & SMTP_ST_CLOSE))
			break;
		if (st & SMTP_ST_PAUSED) {
			memcpy(r->held + r->heldlen, p, n);
			r->heldlen += n;
			return;
		}
		if (c == 0 && !(st & SMTP_ST_OUTFULL))
			fail_msg("%s:%d (%s): no progress", r->d->name, line, mode_name(r));
	}
}

static void
feed_flight(struct run *r, const char *p, size_t n, int line)
{
	if (r->mode == MODE_WHOLE || n == 0) {
		feed_piece(r, p, n, line);
	} else if (r->mode == MODE_BYTES) {
		for (size_t i = 0; i < n; i++)
			feed_piece(r, p + i, 1, line);
	} else {
		size_t k = r->split < n ? r->split : n;
		feed_piece(r, p, k, line);
		if (k < n)
			feed_piece(r, p + k, n - k, line);
	}
}

static void
start(struct run *r)
{
	if (r->started)
		return;
	r->started = true;
	smtp_session_start(&r->s);
	flush_out(r);
}

static unsigned long long
stat_get(const struct ringmx_stats *st, const char *name, bool *found)
{
#define STAT_GET(n, h)                                                                             \
	if (strcmp(name, #n) == 0) {                                                               \
		*found = true;                                                                     \
		return st->n;                                                                      \
	}
	RINGMX_STATS(STAT_GET)
#undef STAT_GET
	*found = false;
	return 0;
}

static int
parse_rc(const char *v)
{
	if (strcmp(v, "done") == 0)
		return SINK_DONE;
	if (strcmp(v, "pending") == 0)
		return SINK_PENDING;
	return atoi(v);
}

static void
directive(struct run *r, const char *t, int line)
{
	const struct dlg *d = r->d;

	if (strncmp(t, "sink ", 5) == 0) {
		const char *v = strchr(t, '=');
		assert_non_null(v);
		v++;
		if (strncmp(t + 5, "open=", 5) == 0)
			r->ts->open_rc = parse_rc(v);
		else if (strncmp(t + 5, "rcpt=", 5) == 0)
			r->ts->rcpt_rc = parse_rc(v);
		else if (strncmp(t + 5, "data=", 5) == 0)
			r->ts->data_rc = parse_rc(v);
		else if (strncmp(t + 5, "commit=", 7) == 0)
			r->ts->commit_rc = parse_rc(v);
		else
			fail_msg("%s:%d: bad sink directive", d->name, line);
	} else if (strncmp(t, "verdict ", 8) == 0) {
		if (!r->ts->pending)
			fail_msg("%s:%d (%s): no verdict pending", d->name, line, mode_name(r));
		r->ts->pending = 0;
		smtp_session_verdict(&r->s, atoi(t + 8), r->now);
		flush_out(r);
		size_t n = r->heldlen;
		char *tmp = malloc(n + 1);
		memcpy(tmp, r->held, n);
		r->heldlen = 0;
		feed_flight(r, tmp, n, line);
		free(tmp);
	} else if (strncmp(t, "tick ", 5) == 0) {
		r->now += strtoull(t + 5, NULL, 10) * NS;
		if (r->now >= smtp_session_deadline(&r->s))
			assert_true(smtp_session_tick(&r->s, r->now));
		else
			assert_false(smtp_session_tick(&r->s, r->now));
		flush_out(r);
	} else if (strncmp(t, "deadline ", 9) == 0) {
		uint64_t dl = smtp_session_deadline(&r->s);
		if (strcmp(t + 9, "none") == 0) {
			if (dl != UINT64_MAX)
				fail_msg("%s:%d: deadline is set", d->name, line);
		} else if (dl != r->now + strtoull(t + 9, NULL, 10) * NS) {
			fail_msg("%s:%d (%s): deadline %lld s from now", d->name, line, mode_name(r),
				 (long long)(dl - r->now) / (long long)NS);
		}
	} else if (strcmp(t, "shutdown") == 0 || strcmp(t, "shutdown force") == 0) {
		smtp_session_shutdown(&r->s, t[8] != '\0');
		flush_out(r);
	} else if (strcmp(t, "eof") == 0) {
		smtp_session_eof(&r->s);
	} else if (strncmp(t, "status ", 7) == 0) {
		unsigned want = 0, got = smtp_session_status(&r->s);
		if (strstr(t, "PAUSED"))
			want |= SMTP_ST_PAUSED;
		if (strstr(t, "CLOSE"))
			want |= SMTP_ST_CLOSE;
		if (strstr(t, "IN_TX"))
			want |= SMTP_ST_IN_TX;
		if (strstr(t, "OUTFULL"))
			want |= SMTP_ST_OUTFULL;
		if (strstr(t, "STARTTLS"))
			want |= SMTP_ST_STARTTLS;
		if (got != want)
			fail_msg("%s:%d (%s): status %#x, want %#x", d->name, line, mode_name(r), got,
				 want);
	} else if (strncmp(t, "stat ", 5) == 0) {
		char name[64];
		unsigned long long want;
		bool found;
		if (sscanf(t + 5, "%63[^=]=%llu", name, &want) != 2)
			fail_msg("%s:%d: bad stat directive", d->name, line);
		unsigned long long got = stat_get(&r->stats, name, &found);
		if (!found)
			fail_msg("%s:%d: unknown counter %s", d->name, line, name);
		if (got != want)
			fail_msg("%s:%d (%s): %s = %llu, want %llu", d->name, line, mode_name(r), name,
				 got, want);
	} else if (strncmp(t, "tls_started ", 12) == 0) {
		char ver[32], cipher[64];
		if (sscanf(t + 12, "%31s %63s", ver, cipher) != 2)
			fail_msg("%s:%d: bad tls_started directive", d->name, line);
		smtp_session_tls_started(&r->s, ver, cipher, r->now);
	} else if (strcmp(t, "flush") == 0) {
		/* only ends a flight */
	} else {
		fail_msg("%s:%d: unknown directive '%s'", d->name, line, t);
	}
}

static void
run_dialogue(const struct dlg *d, enum mode mode, size_t split, struct run *r)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t maxlen = 0;
	char *map;

	for (size_t i = 0; i < d->nops; i++)
		if (d->ops[i].len > maxlen)
			maxlen = d->ops[i].len;
	maxlen += DLG_TEXT_MAX / 2; /* held input is fed as one piece */
	size_t room = (maxlen + (size_t)page - 1) / (size_t)page * (size_t)page;

	memset(r, 0, offsetof(struct run, transcript));
	r->tlen = r->xlen = r->elen = r->llen = r->heldlen = 0;
	r->d = d;
	r->mode = mode;
	r->split = split;
	r->out.buf = r->outbuf;
	r->out.cap = d->out_cap;
	snprintf(r->peer.addr_text, sizeof r->peer.addr_text, "192.0.2.1");
	r->peer.port = 4242;
	static struct tsink ts;

	memset(&ts, 0, offsetof(struct tsink, log));
	ts.hooklen = ts.datalen = 0;
	r->ts = &ts;
	r->ts->commit_rc = SINK_DONE;
	r->sink.ops = &tsink_ops;
	r->sink.self = r->ts;
	r->now = T0;
	map = mmap(NULL, room + (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + room, (size_t)page, PROT_NONE), 0);
	r->guard = map + room;
	r->guard_room = room;

	smtp_session_init(&r->s, &d->conf, &r->peer, &r->out, &r->sink, &tsink_hooks, r->ts,
			  &r->stats, r->now, WALL0);
	smtp_session_set_tls_policy(&r->s, d->tls_offer, d->tls_require);
	for (size_t i = 0; i < d->nops; i++) {
		const struct op *o = &d->ops[i];
		const char *t = d->text + o->off;

		switch (o->kind) {
		case OP_REPLY:
			memcpy(r->xreply + r->xlen, t, o->len);
			r->xlen += o->len;
			continue;
		case OP_EVENT:
			memcpy(r->xevent + r->elen, t, o->len);
			r->elen += o->len;
			continue;
		case OP_LOG:
			memcpy(r->xlog + r->llen, t, o->len);
			r->llen += o->len;
			continue;
		default:
			break;
		}
		start(r);
		check(r, o->line);
		if (o->kind == OP_SEND) {
			feed_flight(r, t, o->len, o->line);
		} else {
			char dir[256];
			snprintf(dir, sizeof dir, "%.*s", (int)o->len, t);
			directive(r, dir, o->line);
		}
	}
	start(r);
	check(r, d->nops ? d->ops[d->nops - 1].line : 0);
	/* Whatever happened, a transaction must not be left dangling. */
	smtp_session_eof(&r->s);
	assert_false(r->ts->tx.live);
	munmap(map, room + (size_t)page);
}

static void
test_dialogue(void **state)
{
	const char *name = *state;
	const char *dir = getenv("RINGMX_DIALOGUES");
	/* Static: a failing check longjmps out, and these are large. */
	static struct dlg dlg;
	static struct run run;
	struct dlg *d = &dlg;
	struct run *r = &run;
	size_t maxflight = 0, step;

	assert_non_null(dir);
	dlg_load(d, dir, name);
	run_dialogue(d, MODE_WHOLE, 0, r);
	if (!d->whole_only) {
		run_dialogue(d, MODE_BYTES, 0, r);
		for (size_t i = 0; i < d->nops; i++)
			if (d->ops[i].kind == OP_SEND && d->ops[i].len > maxflight)
				maxflight = d->ops[i].len;
		step = maxflight / DLG_SPLIT_RUNS + 1;
		for (size_t k = 1; k < maxflight; k += step)
			run_dialogue(d, MODE_SPLIT, k, r);
	}
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(void)
{
	const char *dir = getenv("RINGMX_DIALOGUES");
	static char *names[DLG_NAMES_MAX];
	static struct CMUnitTest tests[DLG_NAMES_MAX];
	size_t n = 0;
	DIR *dh;
	struct dirent *e;

	if (dir == NULL) {
		fprintf(stderr, "RINGMX_DIALOGUES is not set\n");
		return 1;
	}
	dh = opendir(dir);
	if (dh == NULL) {
		fprintf(stderr, "cannot open %s\n", dir);
		return 1;
	}
	while ((e = readdir(dh)) != NULL && n < DLG_NAMES_MAX) {
		size_t l = strlen(e->d_name);
		if (l > 4 && strcmp(e->d_name + l - 4, ".dlg") == 0)
			names[n++] = strdup(e->d_name);
	}
	closedir(dh);
	if (n == 0) {
		fprintf(stderr, "no dialogues in %s\n", dir);
		return 1;
	}
	qsort(names, n, sizeof names[0], cmp_names);
	for (size_t i = 0; i < n; i++)
		tests[i] = (struct CMUnitTest){names[i], test_dialogue, NULL, NULL, names[i]};
	return _cmocka_run_group_tests("smtp_dialogues", tests, n, NULL, NULL);
}
