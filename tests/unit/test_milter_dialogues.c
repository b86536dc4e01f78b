/*
 * test_milter_dialogues.c - golden milter dialogues
 * (tests/milter_dialogues/NAME.dlg) run against the sans-I/O milter core
 * (engine/milter/milter.c, docs/milter-core.md). '>' is what the MTA (the
 * core) must write, '<' what the milter sends (the input), '=' an event
 * the core reports, '!' a call with its expected return or a check.
 *
 * Each dialogue runs in several feed modes and must give the same result
 * in all of them: each milter flight (consecutive '<' lines) fed whole;
 * split into two feeds at every offset; one byte per feed. Every feed is
 * copied so that it ends right before a PROT_NONE guard page. With whole
 * flights every view an event carries must point into the feed (a packet
 * inside one feed is parsed in place); in the other modes into the feed
 * or the core's carry buffer. SMFIR_REPLBODY comes in as many events as
 * the feeds cut it into: consecutive repl_body events are joined into one
 * line. Output is "sent" after every call; a call that fails must leave
 * the output as it was.
 *
 * In every callback the harness checks that milter_feed() and the stage
 * calls return -EDEADLK there, that a verdict comes with no reply due,
 * and that modifications, progress and body parts come only while the
 * end of message is answered.
 *
 * Ownership: the dialogue (struct dlg) and the run (struct run, which owns
 * the core, its output buffer and the macro table) are static in the test.
 *
 * Lines:
 *   # text              comment; blank lines are ignored
 *   > CMD ITEM...       the MTA must write a packet: command octet CMD (a
 *                       character, or 'c'), data ITEM... (length computed)
 *   >~ ITEM...          the MTA must write these octets (no framing)
 *   < CMD ITEM...       the milter sends this packet
 *   <~ ITEM...          the milter sends these octets (a broken length)
 *   = EVENT             the core reports this event:
 *                         negotiated VERSION 0xACTIONS 0xPROTOCOL
 *                         verdict STAGE VERDICT [CODE STR]   (replycode: code, text)
 *                         add_header STR STR [leadspc]
 *                         ins_header INDEX STR STR [leadspc]
 *                         chg_header INDEX STR STR [leadspc]
 *                         chg_from STR STR          (address, parameters)
 *                         add_rcpt STR STR
 *                         del_rcpt STR
 *                         repl_body STR...          (consecutive parts joined)
 *                         quarantine STR
 *                         progress
 *   ! directive         see below
 * An ITEM is u32:N, u16:N or u8:N (N decimal or 0x hex, big-endian), 'c'
 * (one octet), or "text" with C escapes (\r \n \t \0 \\ \" \xHH; no NUL
 * is added), optionally followed by *N (repeated N times). In events a
 * STR is written the same way: "..." with those escapes, and every run of
 * 16 or more equal octets as its own "c"*N.
 *
 * Directives (RC: SKIPPED SENT WAIT, or ENOBUFS EBUSY EINVAL EPIPE ...):
 *   ! conf actions=N protocol=N   what the core offers (before anything)
 *   ! whole-only                  mode one only
 *   ! out N                       output capacity from here on (default 262144)
 *   ! macro NAME STR | ! macro NAME -   a macro value (ops->macro), or none
 *   ! negotiate -> RC
 *   ! connect STR FAM PORT STR -> RC    (FAM: U L 4 6)
 *   ! helo STR -> RC
 *   ! mail STR... -> RC / ! rcpt STR... -> RC   (argv)
 *   ! data -> RC / ! eoh -> RC / ! eom -> RC / ! abort -> RC / ! quit -> RC
 *   ! header STR STR -> RC         (name, value)
 *   ! body ITEM... -> RC           (one chunk: the items joined)
 *   ! fail STR                      milter_fail()
 *   ! fed RC                        the flight before returned RC (else 0)
 *   ! why STR                       milter_why() is STR
 *   ! waiting STAGE                 milter_waiting() (none, connect, ...)
 *   ! agreed VERSION ACTIONS PROTOCOL   the getters
 */
#include <dirent.h>
#include <errno.h>
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

#include "milter.h"

#define D_OPS_MAX    2048
#define D_TEXT_MAX   (4 * 1024 * 1024)
#define D_SPLIT_RUNS 1024
#define D_OUT_MAX    (512 * 1024)
#define D_NAMES_MAX  256
#define D_EVENTS_MAX (1024 * 1024)
#define D_MACROS_MAX 64
#define D_ITEM_MAX   (256 * 1024)

enum op_kind { OP_MILTER, OP_MTA, OP_EVENT, OP_DIRECTIVE };

struct op {
	enum op_kind kind;
	size_t off, len; /* into dlg.text */
	int line;
	int fed; /* OP_MILTER: what milter_feed must return */
};

struct dlg {
	char name[256];
	struct milter_conf conf;
	bool whole_only;
	size_t nops;
	struct op ops[D_OPS_MAX];
	size_t textlen;
	char text[D_TEXT_MAX];
};

/* ---- escaped text ---- */

struct esc {
	size_t len;
	char buf[D_EVENTS_MAX];
};

static void
esc_raw(struct esc *e, const char *p, size_t n)
{
	if (e->len + n + 2 > sizeof(e->buf))
		fail_msg("event log overflow");
	memcpy(e->buf + e->len, p, n);
	e->len += n;
}

static void esc_printf(struct esc *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
esc_printf(struct esc *e, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	esc_raw(e, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void
esc_octet(struct esc *e, unsigned char ch)
{
	char tmp[8];
	const char *named = ch == '\r'   ? "\\r"
	                    : ch == '\n' ? "\\n"
	                    : ch == '\t' ? "\\t"
	                    : ch == '\0' ? "\\0"
	                    : ch == '\\' ? "\\\\"
	                    : ch == '"'  ? "\\\""
	                                 : NULL;
	int k = named != NULL             ? snprintf(tmp, sizeof(tmp), "%s", named)
	        : ch < 0x20 || ch >= 0x7f ? snprintf(tmp, sizeof(tmp), "\\x%02x", ch)
	                                  : snprintf(tmp, sizeof(tmp), "%c", ch);
	esc_raw(e, tmp, (size_t)k);
}

/* " STR": "..." segments, runs of 16+ equal octets as "c"*N. */
static void
esc_str(struct esc *e, const char *p, size_t n)
{
	size_t i = 0;
	bool open = false;
	esc_raw(e, " ", 1);
	if (n == 0)
		esc_raw(e, "\"\"", 2);
	while (i < n) {
		size_t run = 1;
		while (i + run < n && p[i + run] == p[i])
			run++;
		if (run >= 16) {
			if (open)
				esc_raw(e, "\" ", 2);
			open = false;
			esc_raw(e, "\"", 1);
			esc_octet(e, (unsigned char)p[i]);
			esc_printf(e, "\"*%zu", run);
			i += run;
			if (i < n)
				esc_raw(e, " ", 1);
			continue;
		}
		if (!open)
			esc_raw(e, "\"", 1);
		open = true;
		esc_octet(e, (unsigned char)p[i++]);
	}
	if (open)
		esc_raw(e, "\"", 1);
}

/* ---- items: u32:N u16:N u8:N 'c' "text"[*N] ---- */

/* Parse one quoted string at *t (after the quote) into out; *t past the
 * closing quote. */
static size_t
unquote(const char **t, char *out, const char *what)
{
	const char *p = *t;
	size_t n = 0;
	while (*p != '"') {
		if (*p == '\0')
			fail_msg("%s: unterminated string", what);
		if (*p != '\\') {
			out[n++] = *p++;
			continue;
		}
		p++;
		switch (*p) {
		case 'r':
			out[n++] = '\r';
			break;
		case 'n':
			out[n++] = '\n';
			break;
		case 't':
			out[n++] = '\t';
			break;
		case '0':
			out[n++] = '\0';
			break;
		case 'x': {
			char hex[3] = {p[1], p[2], '\0'};
			out[n++] = (char)strtoul(hex, NULL, 16);
			p += 2;
			break;
		}
		case '\0':
			fail_msg("%s: bad escape", what);
			break;
		default:
			out[n++] = *p;
			break;
		}
		p++;
	}
	*t = p + 1;
	return n;
}

/* The items of t appended to out (at most cap octets); returns the
 * length. Stops at "->" or the end. */
static size_t
items(const char *t, char *out, size_t cap, const char *what)
{
	static char tmp[D_ITEM_MAX];
	size_t n = 0;
	for (;;) {
		t += strspn(t, " ");
		if (*t == '\0' || strncmp(t, "->", 2) == 0)
			return n;
		size_t k = 0;
		if (*t == '"') {
			t++;
			k = unquote(&t, tmp, what);
		} else if (*t == '\'' && t[1] != '\0' && t[2] == '\'') {
			tmp[k++] = t[1];
			t += 3;
		} else if (strncmp(t, "u32:", 4) == 0 || strncmp(t, "u16:", 4) == 0 ||
		           strncmp(t, "u8:", 3) == 0) {
			unsigned bytes = t[1] == '3' ? 4 : t[1] == '1' ? 2 : 1;
			char *end;
			unsigned long v = strtoul(t + (bytes == 1 ? 3 : 4), &end, 0);
			for (unsigned b = 0; b < bytes; b++)
				tmp[k++] = (char)(v >> (8 * (bytes - 1 - b)));
			t = end;
		} else {
			fail_msg("%s: bad item at '%s'", what, t);
		}
		unsigned long rep = 1;
		if (*t == '*')
			rep = strtoul(t + 1, (char **)&t, 10);
		for (unsigned long r = 0; r < rep; r++) {
			if (n + k > cap)
				fail_msg("%s: items too large", what);
			memcpy(out + n, tmp, k);
			n += k;
		}
	}
}

/* ---- loading ---- */

static void
text_add(struct dlg *d, const void *p, size_t n)
{
	if (d->textlen + n > sizeof(d->text))
		fail_msg("%s: dialogue too large", d->name);
	memcpy(d->text + d->textlen, p, n);
	d->textlen += n;
}

static void
op_add(struct dlg *d, enum op_kind k, size_t off, int line)
{
	struct op *last = d->nops ? &d->ops[d->nops - 1] : NULL;
	/* Consecutive items of one kind merge (a flight, a block). */
	if (last && last->kind == k && k != OP_DIRECTIVE && last->off + last->len == off) {
		last->len = d->textlen - last->off;
		return;
	}
	if (d->nops == D_OPS_MAX)
		fail_msg("%s: too many items", d->name);
	d->ops[d->nops++] = (struct op){k, off, d->textlen - off, line, 0};
}

/* A '>' or '<' line: a packet (CMD ITEM...) or raw octets (~ ITEM...). */
static void
load_packet(struct dlg *d, const char *t, enum op_kind k, int line)
{
	static char buf[D_ITEM_MAX];
	char what[300];
	snprintf(what, sizeof(what), "%s:%d", d->name, line);
	size_t off = d->textlen;
	t += strspn(t, " ");
	if (*t == '~') {
		size_t n = items(t + 1, buf, sizeof(buf), what);
		text_add(d, buf, n);
	} else {
		char cmd;
		if (t[0] == '\'' && t[1] != '\0' && t[2] == '\'') {
			cmd = t[1];
			t += 3;
		} else if (t[0] != '\0' && (t[1] == ' ' || t[1] == '\0')) {
			cmd = t[0];
			t += 1;
		} else {
			fail_msg("%s: bad command", what);
			return;
		}
		size_t n = items(t, buf, sizeof(buf), what);
		uint32_t len = (uint32_t)n + 1;
		char hdr[5] = {(char)(len >> 24), (char)(len >> 16), (char)(len >> 8), (char)len,
		               cmd};
		text_add(d, hdr, 5);
		text_add(d, buf, n);
	}
	op_add(d, k, off, line);
}

static int
rc_value(const char *t, const char *what)
{
	static const struct {
		const char *name;
		int rc;
	} rcs[] = {
	    {"SKIPPED", MILTER_SKIPPED}, {"SENT", MILTER_SENT},
	    {"WAIT", MILTER_WAIT},       {"ENOBUFS", -ENOBUFS},
	    {"EBUSY", -EBUSY},           {"EINVAL", -EINVAL},
	    {"EPIPE", -EPIPE},           {"EDEADLK", -EDEADLK},
	    {"EPROTO", -EPROTO},         {"0", 0},
	};
	t += strspn(t, " ");
	for (size_t i = 0; i < sizeof(rcs) / sizeof(rcs[0]); i++)
		if (strncmp(t, rcs[i].name, strlen(rcs[i].name)) == 0)
			return rcs[i].rc;
	fail_msg("%s: bad return '%s'", what, t);
	return 0;
}

static void
load_conf(struct dlg *d, char *t, int line)
{
	char *save = NULL;
	for (char *w = strtok_r(t, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		if (strncmp(w, "actions=", 8) == 0)
			d->conf.actions = (uint32_t)strtoul(w + 8, NULL, 0);
		else if (strncmp(w, "protocol=", 9) == 0)
			d->conf.protocol = (uint32_t)strtoul(w + 9, NULL, 0);
		else
			fail_msg("%s:%d: bad conf item '%s'", d->name, line, w);
	}
}

static void
dlg_load(struct dlg *d, const char *dir, const char *name)
{
	static char buf[65536];
	char path[4096];
	int line = 0;
	memset(d, 0, offsetof(struct dlg, text));
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		fail_msg("cannot open %s", path);
	while (fgets(buf, sizeof(buf), f) != NULL) {
		size_t n = strlen(buf);
		line++;
		if (n > 0 && buf[n - 1] == '\n')
			buf[--n] = '\0';
		if (n == 0 || buf[0] == '#')
			continue;
		char *t = buf + 1 + strspn(buf + 1, " ");
		size_t off = d->textlen;
		switch (buf[0]) {
		case '>':
			load_packet(d, buf + 1, OP_MTA, line);
			continue;
		case '<':
			load_packet(d, buf + 1, OP_MILTER, line);
			continue;
		case '=':
			text_add(d, t, strlen(t));
			text_add(d, "\n", 1);
			op_add(d, OP_EVENT, off, line);
			continue;
		case '!':
			break;
		default:
			fail_msg("%s:%d: bad line", d->name, line);
		}
		if (strncmp(t, "conf ", 5) == 0) {
			load_conf(d, t + 5, line);
		} else if (strcmp(t, "whole-only") == 0) {
			d->whole_only = true;
		} else if (strncmp(t, "fed ", 4) == 0) {
			struct op *o = d->nops ? &d->ops[d->nops - 1] : NULL;
			if (o == NULL || o->kind != OP_MILTER)
				fail_msg("%s:%d: ! fed without a flight before", d->name, line);
			o->fed = rc_value(t + 4, d->name);
		} else {
			text_add(d, t, strlen(t));
			op_add(d, OP_DIRECTIVE, off, line);
		}
	}
	fclose(f);
}

/* ---- running ---- */

enum mode { MODE_WHOLE, MODE_SPLIT, MODE_BYTES };

struct run {
	const struct dlg *d;
	enum mode mode;
	size_t split;
	struct milter m;
	struct milter_out out;
	struct milter_ops ops;
	bool in_call;     /* inside a stage call: macros may be asked */
	const char *feed; /* the current feed */
	size_t feed_len;
	bool body_open;  /* a repl_body line is being joined: */
	size_t body_len; /* its parts so far (in body, below) */
	char *guard;     /* PROT_NONE page; feeds end right before it */
	size_t guard_room;
	size_t nmacros;
	char mname[D_MACROS_MAX][64];
	char mvalue[D_MACROS_MAX][1024];
	/* not reset between runs: */
	char outbuf[D_OUT_MAX];
	char body[D_TEXT_MAX];
	size_t wlen; /* wire transcript: everything the core wrote */
	char wire[D_TEXT_MAX];
	size_t xwlen;
	char xwire[D_TEXT_MAX];
	struct esc ev, xev;
};

static const char *
mode_name(const struct run *r)
{
	static char buf[64];
	if (r->mode == MODE_WHOLE)
		return "whole";
	if (r->mode == MODE_BYTES)
		return "one byte per feed";
	snprintf(buf, sizeof(buf), "split at %zu", r->split);
	return buf;
}

/* A view an event carries: in the feed, or (split feeds) in the carry. */
static void
view_check(struct run *r, const char *p, size_t n, const char *what)
{
	if (n == 0)
		return;
	bool in_feed = p >= r->feed && p + n <= r->feed + r->feed_len;
	bool in_carry = p >= r->m.carry && p + n <= r->m.carry + sizeof(r->m.carry);
	if (!in_feed && (r->mode == MODE_WHOLE || !in_carry))
		fail_msg("%s (%s): %s points neither into the feed%s", r->d->name, mode_name(r),
		         what, r->mode == MODE_WHOLE ? " (whole)" : " nor the carry");
}

static void
body_close(struct run *r)
{
	if (!r->body_open)
		return;
	r->body_open = false;
	esc_printf(&r->ev, "repl_body");
	esc_str(&r->ev, r->body, r->body_len);
	esc_raw(&r->ev, "\n", 1);
	r->body_len = 0;
}

/* Only getters work from a callback. */
static void
reentry_check(struct run *r)
{
	const char *argv[] = {"<a@b>"};
	if (milter_feed(&r->m, "x", 1) != -EDEADLK || milter_helo(&r->m, "x") != -EDEADLK ||
	    milter_mail(&r->m, argv, 1) != -EDEADLK || milter_abort(&r->m) != -EDEADLK ||
	    milter_quit(&r->m) != -EDEADLK || milter_negotiate(&r->m) != -EDEADLK)
		fail_msg("%s (%s): a call from the callback did not return -EDEADLK", r->d->name,
		         mode_name(r));
}

static void
rec_header(struct run *r, const struct milter_event *ev, const char *type, bool index)
{
	esc_printf(&r->ev, "%s", type);
	if (index)
		esc_printf(&r->ev, " %u", ev->index);
	esc_str(&r->ev, ev->name, ev->name_len);
	esc_str(&r->ev, ev->value, ev->value_len);
	if (ev->leadspc)
		esc_printf(&r->ev, " leadspc");
	view_check(r, ev->name, ev->name_len, "name");
	view_check(r, ev->value, ev->value_len, "value");
}

static void
rec_addr(struct run *r, const struct milter_event *ev, const char *type, bool args)
{
	esc_printf(&r->ev, "%s", type);
	esc_str(&r->ev, ev->addr, ev->addr_len);
	if (args)
		esc_str(&r->ev, ev->args, ev->args_len);
	view_check(r, ev->addr, ev->addr_len, "addr");
	view_check(r, ev->args, ev->args_len, "args");
}

static void
on_event(void *arg, const struct milter_event *ev)
{
	struct run *r = arg;
	reentry_check(r);
	if (ev->type == MILTER_EV_REPL_BODY) {
		if (milter_waiting(&r->m) != MILTER_ST_EOM)
			fail_msg("%s: repl_body outside eom", r->d->name);
		view_check(r, ev->data, ev->data_len, "data");
		if (r->body_len + ev->data_len > sizeof(r->body))
			fail_msg("%s: replaced body too large", r->d->name);
		if (ev->data_len > 0)
			memcpy(r->body + r->body_len, ev->data, ev->data_len);
		r->body_len += ev->data_len;
		r->body_open = true;
		return;
	}
	body_close(r);
	if (ev->type >= MILTER_EV_ADD_HEADER && milter_waiting(&r->m) != MILTER_ST_EOM)
		fail_msg("%s: event %d outside eom", r->d->name, ev->type);
	switch (ev->type) {
	case MILTER_EV_NEGOTIATED:
		esc_printf(&r->ev, "negotiated %u %#x %#x", milter_version(&r->m),
		           milter_actions(&r->m), milter_protocol(&r->m));
		break;
	case MILTER_EV_VERDICT:
		if (milter_waiting(&r->m) != MILTER_ST_NONE)
			fail_msg("%s: verdict with a reply still due", r->d->name);
		esc_printf(&r->ev, "verdict %s %s", milter_stage_name(ev->stage),
		           milter_verdict_name(ev->verdict));
		if (ev->verdict == MILTER_V_REPLYCODE) {
			esc_printf(&r->ev, " %u", ev->code);
			esc_str(&r->ev, ev->text, ev->text_len);
			view_check(r, ev->text, ev->text_len, "text");
		}
		break;
	case MILTER_EV_ADD_HEADER:
		rec_header(r, ev, "add_header", false);
		break;
	case MILTER_EV_INS_HEADER:
		rec_header(r, ev, "ins_header", true);
		break;
	case MILTER_EV_CHG_HEADER:
		rec_header(r, ev, "chg_header", true);
		break;
	case MILTER_EV_CHG_FROM:
		rec_addr(r, ev, "chg_from", true);
		break;
	case MILTER_EV_ADD_RCPT:
		rec_addr(r, ev, "add_rcpt", true);
		break;
	case MILTER_EV_DEL_RCPT:
		rec_addr(r, ev, "del_rcpt", false);
		break;
	case MILTER_EV_QUARANTINE:
		esc_printf(&r->ev, "quarantine");
		esc_str(&r->ev, ev->text, ev->text_len);
		view_check(r, ev->text, ev->text_len, "text");
		break;
	case MILTER_EV_PROGRESS:
		esc_printf(&r->ev, "progress");
		break;
	default:
		fail_msg("%s: unknown event %d", r->d->name, ev->type);
	}
	esc_raw(&r->ev, "\n", 1);
}

static const char *
on_macro(void *arg, const char *name)
{
	struct run *r = arg;
	if (!r->in_call)
		fail_msg("%s: macro %s asked outside a stage call", r->d->name, name);
	for (size_t i = 0; i < r->nmacros; i++)
		if (strcmp(r->mname[i], name) == 0)
			return r->mvalue[i];
	return NULL;
}

static void
check(struct run *r, int line)
{
	bool ok = true;
	body_close(r);
	if (r->wlen != r->xwlen || memcmp(r->wire, r->xwire, r->wlen) != 0) {
		struct esc *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
		assert_non_null(a);
		assert_non_null(b);
		esc_str(a, r->xwire, r->xwlen);
		esc_str(b, r->wire, r->wlen);
		size_t at = 0;
		while (at < r->wlen && at < r->xwlen && r->wire[at] == r->xwire[at])
			at++;
		print_error("MTA output differs from octet %zu\n  expected:%.*s\n  got:     %.*s\n",
		            at, (int)a->len, a->buf, (int)b->len, b->buf);
		free(a);
		free(b);
		ok = false;
	}
	if (r->ev.len != r->xev.len || memcmp(r->ev.buf, r->xev.buf, r->ev.len) != 0) {
		print_error("events differ\n  expected:\n%.*s  got:\n%.*s", (int)r->xev.len,
		            r->xev.buf, (int)r->ev.len, r->ev.buf);
		ok = false;
	}
	if (!ok)
		fail_msg("%s:%d (%s): mismatch (why: %s)", r->d->name, line, mode_name(r),
		         milter_why(&r->m));
}

/* Feed one piece, copied to end right before the guard page. */
static int
feed_piece(struct run *r, const char *p, size_t n)
{
	assert_true(n <= r->guard_room);
	char *g = r->guard - n;
	memcpy(g, p, n);
	r->feed = g;
	r->feed_len = n;
	int rc = milter_feed(&r->m, g, n);
	r->feed = NULL;
	r->feed_len = 0;
	return rc;
}

static void
feed_flight(struct run *r, const struct op *o)
{
	const char *p = r->d->text + o->off;
	size_t n = o->len;
	size_t step = r->mode == MODE_BYTES ? 1 : n;
	int rc = 0;
	for (size_t at = 0; at < n && rc == 0;) {
		size_t k = r->mode == MODE_SPLIT && at == 0 ? (r->split < n ? r->split : n)
		                                            : (step < n - at ? step : n - at);
		rc = feed_piece(r, p + at, k);
		at += k;
	}
	if (rc != o->fed)
		fail_msg("%s:%d (%s): milter_feed returned %d (%s), want %d", r->d->name, o->line,
		         mode_name(r), rc, milter_why(&r->m), o->fed);
}

/* The words of a call: bare words and quoted strings, up to "->". */
static size_t
words(const char *t, char (*w)[4096], size_t max, size_t *len, const char *what)
{
	size_t n = 0;
	for (;;) {
		t += strspn(t, " ");
		if (*t == '\0' || strncmp(t, "->", 2) == 0)
			return n;
		if (n == max)
			fail_msg("%s: too many words", what);
		if (*t == '"') {
			t++;
			len[n] = unquote(&t, w[n], what);
		} else {
			size_t k = strcspn(t, " ");
			memcpy(w[n], t, k);
			len[n] = k;
			t += k;
		}
		w[n][len[n]] = '\0';
		n++;
	}
}

static const char *
expect_part(const char *t, const char *what)
{
	const char *a = strstr(t, "->");
	if (a == NULL)
		fail_msg("%s: a call needs '-> RC'", what);
	return a + 2;
}

/* A stage call: run it, "send" the output, compare the return. */
static void
call(struct run *r, const char *t, int line)
{
	static char w[16][4096];
	static char body[MILTER_CHUNK_MAX + 16];
	size_t len[16];
	char what[300];
	snprintf(what, sizeof(what), "%s:%d", r->d->name, line);
	const char *verb = t;
	size_t vl = strcspn(t, " ");
	const char *args = t + vl;
	int want = rc_value(expect_part(t, what), what);
	size_t n = 0;
	if (strncmp(verb, "body", vl) != 0)
		n = words(args, w, 16, len, what);
	size_t before = r->out.len;
	int rc;
	r->in_call = true;
#define IS(s) (vl == sizeof(s) - 1 && strncmp(verb, s, vl) == 0)
	if (IS("negotiate")) {
		rc = milter_negotiate(&r->m);
	} else if (IS("connect")) {
		if (n != 4)
			fail_msg("%s: connect HOST FAM PORT ADDR", what);
		rc = milter_connect(&r->m, w[0], (enum milter_family)w[1][0], (uint16_t)atoi(w[2]),
		                    w[3]);
	} else if (IS("helo")) {
		rc = milter_helo(&r->m, n > 0 ? w[0] : NULL);
	} else if (IS("mail") || IS("rcpt")) {
		const char *argv[16];
		for (size_t i = 0; i < n; i++)
			argv[i] = w[i];
		rc = IS("mail") ? milter_mail(&r->m, argv, n) : milter_rcpt(&r->m, argv, n);
	} else if (IS("data")) {
		rc = milter_data(&r->m);
	} else if (IS("header")) {
		if (n != 2)
			fail_msg("%s: header NAME VALUE", what);
		rc = milter_header(&r->m, w[0], len[0], w[1], len[1]);
	} else if (IS("eoh")) {
		rc = milter_eoh(&r->m);
	} else if (IS("body")) {
		size_t bn = items(args, body, sizeof(body), what);
		rc = milter_body(&r->m, body, bn);
	} else if (IS("eom")) {
		rc = milter_eom(&r->m);
	} else if (IS("abort")) {
		rc = milter_abort(&r->m);
	} else if (IS("quit")) {
		rc = milter_quit(&r->m);
	} else {
		fail_msg("%s: unknown directive '%s'", what, t);
		return;
	}
#undef IS
	r->in_call = false;
	if (rc != want)
		fail_msg("%s (%s): %.*s returned %d, want %d (why: %s)", what, mode_name(r),
		         (int)vl, verb, rc, want, milter_why(&r->m));
	if (rc < 0 && r->out.len != before)
		fail_msg("%s (%s): a failed call wrote %zu octets", what, mode_name(r),
		         r->out.len - before);
	assert_true(r->out.len <= r->out.cap);
	assert_true(r->wlen + r->out.len <= sizeof(r->wire));
	memcpy(r->wire + r->wlen, r->out.buf, r->out.len);
	r->wlen += r->out.len;
	r->out.len = 0;
}

static void
set_macro(struct run *r, const char *t, const char *what)
{
	static char w[2][4096];
	size_t len[2];
	if (words(t, w, 2, len, what) != 2)
		fail_msg("%s: macro NAME VALUE|-", what);
	size_t i = 0;
	while (i < r->nmacros && strcmp(r->mname[i], w[0]) != 0)
		i++;
	if (strcmp(w[1], "-") == 0) {
		if (i < r->nmacros) {
			r->nmacros--;
			memmove(r->mname[i], r->mname[r->nmacros], sizeof(r->mname[i]));
			memmove(r->mvalue[i], r->mvalue[r->nmacros], sizeof(r->mvalue[i]));
		}
		return;
	}
	if (i == r->nmacros) {
		if (i == D_MACROS_MAX)
			fail_msg("%s: too many macros", what);
		r->nmacros++;
	}
	if (len[0] >= sizeof(r->mname[i]) || len[1] >= sizeof(r->mvalue[i]))
		fail_msg("%s: macro too long", what);
	memcpy(r->mname[i], w[0], len[0] + 1);
	memcpy(r->mvalue[i], w[1], len[1] + 1);
}

static void
directive(struct run *r, const char *t, int line)
{
	static char w[3][4096];
	size_t len[3];
	char what[300];
	snprintf(what, sizeof(what), "%s:%d", r->d->name, line);
	if (strncmp(t, "out ", 4) == 0) {
		r->out.cap = strtoul(t + 4, NULL, 0);
		assert_true(r->out.cap <= D_OUT_MAX);
	} else if (strncmp(t, "macro ", 6) == 0) {
		set_macro(r, t + 6, what);
	} else if (strncmp(t, "fail", 4) == 0) {
		size_t n = words(t + 4, w, 1, len, what);
		milter_fail(&r->m, n > 0 ? w[0] : NULL);
	} else if (strncmp(t, "why ", 4) == 0) {
		words(t + 4, w, 1, len, what);
		if (strcmp(milter_why(&r->m), w[0]) != 0)
			fail_msg("%s (%s): why is \"%s\", want \"%s\"", what, mode_name(r),
			         milter_why(&r->m), w[0]);
	} else if (strncmp(t, "waiting ", 8) == 0) {
		const char *got = milter_stage_name(milter_waiting(&r->m));
		if (strcmp(got, t + 8) != 0)
			fail_msg("%s (%s): waiting for %s, want %s", what, mode_name(r), got,
			         t + 8);
	} else if (strncmp(t, "agreed ", 7) == 0) {
		char got[128];
		snprintf(got, sizeof(got), "%u %#x %#x", milter_version(&r->m),
		         milter_actions(&r->m), milter_protocol(&r->m));
		if (strcmp(got, t + 7) != 0)
			fail_msg("%s (%s): agreed %s, want %s", what, mode_name(r), got, t + 7);
	} else {
		call(r, t, line);
	}
}

static void
run_dialogue(const struct dlg *d, enum mode mode, size_t split, struct run *r)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE), maxlen = 1;
	for (size_t i = 0; i < d->nops; i++)
		if (d->ops[i].len > maxlen)
			maxlen = d->ops[i].len;
	size_t room = (maxlen + page - 1) / page * page;
	memset(r, 0, offsetof(struct run, outbuf));
	r->wlen = r->xwlen = r->ev.len = r->xev.len = 0;
	r->d = d;
	r->mode = mode;
	r->split = split;
	r->out.buf = r->outbuf;
	r->out.cap = 262144;
	r->ops.event = on_event;
	r->ops.macro = on_macro;
	char *map =
	    mmap(NULL, room + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + room, page, PROT_NONE), 0);
	r->guard = map + room;
	r->guard_room = room;
	assert_int_equal(milter_init(&r->m, &d->conf, &r->out, &r->ops, r), 0);
	for (size_t i = 0; i < d->nops; i++) {
		const struct op *o = &d->ops[i];
		const char *t = d->text + o->off;
		if (o->kind == OP_MTA) {
			memcpy(r->xwire + r->xwlen, t, o->len);
			r->xwlen += o->len;
			continue;
		}
		if (o->kind == OP_EVENT) {
			assert_true(r->xev.len + o->len <= sizeof(r->xev.buf));
			memcpy(r->xev.buf + r->xev.len, t, o->len);
			r->xev.len += o->len;
			continue;
		}
		check(r, o->line);
		if (o->kind == OP_MILTER) {
			feed_flight(r, o);
		} else {
			static char dir[D_ITEM_MAX];
			snprintf(dir, sizeof(dir), "%.*s", (int)o->len, t);
			directive(r, dir, o->line);
		}
	}
	check(r, d->nops ? d->ops[d->nops - 1].line : 0);
	/* Whatever happened, after milter_fail() everything is over. */
	milter_fail(&r->m, "end of dialogue");
	assert_true(milter_failed(&r->m));
	assert_int_equal(milter_feed(&r->m, "\0\0\0\1c", 5), -EPIPE);
	assert_int_equal(milter_quit(&r->m), -EPIPE);
	assert_int_equal(milter_abort(&r->m), -EPIPE);
	munmap(map, room + page);
}

static void
test_dialogue(void **state)
{
	const char *name = *state;
	const char *dir = getenv("RINGMX_MILTER_DIALOGUES");
	/* Static: a failing check longjmps out, and these are large. */
	static struct dlg dlg;
	static struct run run;
	assert_non_null(dir);
	dlg_load(&dlg, dir, name);
	run_dialogue(&dlg, MODE_WHOLE, 0, &run);
	if (dlg.whole_only)
		return;
	run_dialogue(&dlg, MODE_BYTES, 0, &run);
	size_t maxflight = 0;
	for (size_t i = 0; i < dlg.nops; i++)
		if (dlg.ops[i].kind == OP_MILTER && dlg.ops[i].len > maxflight)
			maxflight = dlg.ops[i].len;
	size_t step = maxflight / D_SPLIT_RUNS + 1;
	for (size_t k = 1; k < maxflight; k += step)
		run_dialogue(&dlg, MODE_SPLIT, k, &run);
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(void)
{
	const char *dir = getenv("RINGMX_MILTER_DIALOGUES");
	static char *names[D_NAMES_MAX];
	static struct CMUnitTest tests[D_NAMES_MAX];
	size_t n = 0;
	if (dir == NULL) {
		fprintf(stderr, "RINGMX_MILTER_DIALOGUES is not set\n");
		return 1;
	}
	DIR *dh = opendir(dir);
	if (dh == NULL) {
		fprintf(stderr, "cannot open %s\n", dir);
		return 1;
	}
	struct dirent *e;
	while ((e = readdir(dh)) != NULL && n < D_NAMES_MAX) {
		size_t l = strlen(e->d_name);
		if (l > 4 && strcmp(e->d_name + l - 4, ".dlg") == 0)
			names[n++] = strdup(e->d_name);
	}
	closedir(dh);
	if (n == 0) {
		fprintf(stderr, "no dialogues in %s\n", dir);
		return 1;
	}
	qsort(names, n, sizeof(names[0]), cmp_names);
	for (size_t i = 0; i < n; i++)
		tests[i] = (struct CMUnitTest){names[i], test_dialogue, NULL, NULL, names[i]};
	return _cmocka_run_group_tests("milter_dialogues", tests, n, NULL, NULL);
}
