/*
 * test_client_dialogues.c - golden SMTP/LMTP client dialogues
 * (tests/client_dialogues/NAME.dlg) run against the sans-I/O client core
 * (engine/smtp/smtp_client.c). The format mirrors tests/dialogues (docs/testing.md):
 * '<' is still what the server sends (here: the input) and '>' what the
 * client sends (here: the expected output, commands and body bytes as they
 * go on the wire), '=' an event the client reports.
 *
 * Each dialogue runs in several feed modes and must give the same result in
 * all of them: each server flight fed whole; split into two feeds at every
 * offset; one byte per feed. Every feed is copied so that it ends right
 * before a PROT_NONE guard page. Output is "sent" after every call; body
 * spans are checked to point into the transaction's own body (zero copy),
 * inside one piece, and appended to the wire transcript in order.
 *
 * Bodies are lent as the dialogue gives them (one buffer, or the pieces
 * `! piece` cuts), and then, with whole flights, cut every other way: as
 * one buffer, one byte per piece, and in two pieces at every offset
 * (empty pieces included; a piece with no line in it that starts with '.',
 * its first octet included, then lent as nostuff). The
 * wire and the events must not change. Each
 * piece ends right before a PROT_NONE page (a one-byte piece is a heap
 * block of its own, for ASan), and an empty one points at the guard page.
 *
 * Ownership: the dialogue (struct dlg) and the run (struct run, which owns
 * the client, its output buffer and the submitted transactions) are static
 * in the test; the client is lent nothing else.
 *
 * Lines:
 *   # text              comment; blank lines are ignored
 *   < text / <xN text   the server sends text + CRLF (N times)
 *   <- text             the server sends text, no CRLF
 *   > text / >xN text   the client must send text + CRLF (N times)
 *   >- text             the client must send text, no CRLF
 *   = text / =xN text   the client reports this event:
 *                         ready [tls] [PIPELINING] [SIZE=n] [8BITMIME] [SMTPUTF8]
 *                               [CHUNKING] [STARTTLS] [ENHANCEDSTATUSCODES]
 *                         tls [verify]
 *                         rcpt T.K CODE ENH|- [TEXT]    (transaction T, recipient K)
 *                         tx T
 *                         defer CODE ENH|- [TEXT]
 *                         close CODE ENH|- [TEXT]
 *   + text / +- text    a body line of the last `! tx` (+ CRLF / without)
 *   ! directive         see below
 * Text in <, >, + lines takes C escapes (\r \n \t \0 \\ \xHH); '=' lines are
 * compared with the events in escaped form.
 *
 * Directives:
 *   ! conf lmtp=0|1 tls=none|may|encrypt|verify helo=NAME by=1
 *          ignore=KW[,KW...]   (before anything; by=1: events name the
 *                         command whose reply decided them, after the type:
 *                         "rcpt 0.0 by=RCPT 550 ..."; ignore: smtpc_conf
 *                         ext_ignore, keywords as in "ready")
 *   ! out N               output buffer capacity (default 8192)
 *   ! whole-only          the result depends on feed boundaries: mode one only
 *   ! tx FROM RCPT... [SMTPUTF8] [8BITMIME] [PROBE]   submit a transaction here (FROM
 *                         and RCPT without <>; "<>" is the null sender)
 *   ! piece               the last `! tx`'s body lines after it are a new
 *                         piece (smtpc_tx.pieces)
 *   ! tls ok|fail         smtpc_tls_done()
 *   ! quit                smtpc_quit()
 *   ! quit pipelined      smtpc_quit_pipelined()
 *   ! can-start 0|1       smtpc_can_start() is false|true
 *   ! dropped N           smtpc_tls_dropped() is N
 *   ! abort TEXT          smtpc_abort()
 *   ! status FLAGS        smtpc_status() is exactly FLAGS (none or
 *                         OUTFULL|BODY|TLS|CLOSE|WAIT|READY|IDLE)
 *   ! saw OUTFULL         some call so far returned -ENOBUFS
 *   ! flush               end the current flight
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

#include "smtp_client.h"

#define D_OPS_MAX    4096
#define D_TEXT_MAX   (1024 * 1024)
#define D_TX_MAX     SMTPC_TX_MAX
#define D_RCPT_MAX   600
#define D_SPLIT_RUNS 1024
#define D_OUT_MAX    65536
#define D_NAMES_MAX  256
#define D_EVENTS_MAX (256 * 1024)
#define D_PIECE_MAX  16

enum op_kind { OP_SERVER, OP_CLIENT, OP_EVENT, OP_DIRECTIVE };

struct op {
	enum op_kind kind;
	size_t off, len; /* into dlg.text */
	int line;
};

struct dtx {
	size_t from_off, from_len;
	uint32_t nrcpt;
	size_t rcpt_off[D_RCPT_MAX], rcpt_len[D_RCPT_MAX];
	unsigned flags;
	size_t body_len;
	uint8_t *body; /* malloc'd at load, kept for the test's life */
	uint32_t ncut; /* `! piece`: the body is cut at these offsets */
	size_t cut[D_PIECE_MAX];
};

struct dlg {
	char name[256];
	struct smtpc_conf conf;
	char helo[SMTPC_HELO_MAX + 1];
	size_t out_cap;
	bool whole_only;
	bool show_by; /* conf by=1 */
	bool cuts;    /* some body is cut by `! piece` */
	size_t nops;
	struct op ops[D_OPS_MAX];
	uint32_t ntx;
	struct dtx tx[D_TX_MAX];
	size_t textlen;
	char text[D_TEXT_MAX];
};

/* ---- text ---- */

static void
text_add(struct dlg *d, const void *p, size_t n)
{
	if (d->textlen + n > sizeof(d->text))
		fail_msg("%s: dialogue too large", d->name);
	memcpy(d->text + d->textlen, p, n);
	d->textlen += n;
}

/* C escapes of p (NUL terminated) into out; returns the length. */
static size_t
unescape(char *out, const char *p)
{
	static const char from[] = "rnt0", to[] = "\r\n\t";
	size_t n = 0;
	while (*p != '\0') {
		if (*p != '\\' || p[1] == '\0') {
			out[n++] = *p++;
			continue;
		}
		p++;
		const char *e = strchr(from, *p);
		if (e != NULL) {
			out[n++] = to[e - from]; /* "\0" maps to the NUL after "\r\n\t" */
			p++;
		} else if (*p == 'x' && p[1] != '\0' && p[2] != '\0') {
			char hex[3] = {p[1], p[2], '\0'};
			out[n++] = (char)strtoul(hex, NULL, 16);
			p += 3;
		} else {
			out[n++] = *p++;
		}
	}
	return n;
}

struct esc {
	size_t len;
	char buf[D_EVENTS_MAX];
};

static void
esc_add(struct esc *e, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];
		char tmp[8];
		const char *named = ch == '\r'   ? "\\r"
		                    : ch == '\n' ? "\\n"
		                    : ch == '\t' ? "\\t"
		                    : ch == '\\' ? "\\\\"
		                                 : NULL;
		int k = named != NULL             ? snprintf(tmp, sizeof(tmp), "%s", named)
		        : ch < 0x20 || ch >= 0x7f ? snprintf(tmp, sizeof(tmp), "\\x%02x", ch)
		                                  : snprintf(tmp, sizeof(tmp), "%c", ch);
		if (e->len + (size_t)k + 2 > sizeof(e->buf))
			fail_msg("event log overflow");
		memcpy(e->buf + e->len, tmp, (size_t)k);
		e->len += (size_t)k;
	}
}

static void esc_printf(struct esc *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
esc_printf(struct esc *e, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	esc_add(e, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* SMTPC_EXT_* bit b is named ext_names[b]. */
static const char *const ext_names[] = {"PIPELINING", "SIZE",     "8BITMIME",           "SMTPUTF8",
                                        "CHUNKING",   "STARTTLS", "ENHANCEDSTATUSCODES"};
#define EXT_NAMES (sizeof(ext_names) / sizeof(ext_names[0]))

static const char *const cmd_names[SMTPC_CMD_COUNT] = {
    [SMTPC_CMD_NONE] = "NONE",   [SMTPC_CMD_GREETING] = "GREETING", [SMTPC_CMD_EHLO] = "EHLO",
    [SMTPC_CMD_HELO] = "HELO",   [SMTPC_CMD_STARTTLS] = "STARTTLS", [SMTPC_CMD_MAIL] = "MAIL",
    [SMTPC_CMD_RCPT] = "RCPT",   [SMTPC_CMD_DATA] = "DATA",         [SMTPC_CMD_DOT] = "DOT",
    [SMTPC_CMD_BDAT] = "BDAT",   [SMTPC_CMD_RSET] = "RSET",         [SMTPC_CMD_QUIT] = "QUIT",
};

/* ---- loading ---- */

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
	d->ops[d->nops++] = (struct op){k, off, d->textlen - off, line};
}

/* "PIPELINING,CHUNKING" -> conf.ext_ignore */
static void
load_ignore(struct dlg *d, const char *list, int line)
{
	char buf[256];
	char *save = NULL;
	snprintf(buf, sizeof(buf), "%s", list);
	for (char *w = strtok_r(buf, ",", &save); w != NULL; w = strtok_r(NULL, ",", &save)) {
		unsigned b = 0;
		while (b < EXT_NAMES && strcmp(w, ext_names[b]) != 0)
			b++;
		if (b == EXT_NAMES)
			fail_msg("%s:%d: unknown keyword '%s'", d->name, line, w);
		d->conf.ext_ignore |= 1u << b;
	}
}

static void
load_conf(struct dlg *d, char *t, int line)
{
	char *save = NULL;
	for (char *w = strtok_r(t, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		if (strncmp(w, "lmtp=", 5) == 0)
			d->conf.lmtp = atoi(w + 5) != 0;
		else if (strcmp(w, "tls=none") == 0)
			d->conf.tls = SMTPC_TLS_NONE;
		else if (strcmp(w, "tls=may") == 0)
			d->conf.tls = SMTPC_TLS_MAY;
		else if (strcmp(w, "tls=encrypt") == 0)
			d->conf.tls = SMTPC_TLS_ENCRYPT;
		else if (strcmp(w, "tls=verify") == 0)
			d->conf.tls = SMTPC_TLS_VERIFY;
		else if (strncmp(w, "helo=", 5) == 0)
			snprintf(d->helo, sizeof(d->helo), "%s", w + 5);
		else if (strcmp(w, "by=1") == 0)
			d->show_by = true;
		else if (strncmp(w, "ignore=", 7) == 0)
			load_ignore(d, w + 7, line);
		else
			fail_msg("%s:%d: bad conf item '%s'", d->name, line, w);
	}
}

/* "! tx FROM RCPT... [SMTPUTF8] [8BITMIME] [PROBE]": addresses go into the text. */
static void
load_tx(struct dlg *d, char *t, int line)
{
	if (d->ntx == D_TX_MAX)
		fail_msg("%s:%d: too many transactions", d->name, line);
	struct dtx *x = &d->tx[d->ntx++];
	memset(x, 0, sizeof(*x));
	char *save = NULL;
	bool first = true;
	for (char *w = strtok_r(t, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		if (strcmp(w, "SMTPUTF8") == 0) {
			x->flags |= SMTPC_TX_SMTPUTF8;
			continue;
		}
		if (strcmp(w, "8BITMIME") == 0) {
			x->flags |= SMTPC_TX_8BITMIME;
			continue;
		}
		if (strcmp(w, "PROBE") == 0) {
			x->flags |= SMTPC_TX_PROBE;
			continue;
		}
		char buf[1024];
		size_t n = strcmp(w, "<>") == 0 ? 0 : unescape(buf, w);
		size_t off = d->textlen;
		text_add(d, buf, n);
		if (first) {
			x->from_off = off;
			x->from_len = n;
			first = false;
		} else if (x->nrcpt < D_RCPT_MAX) {
			x->rcpt_off[x->nrcpt] = off;
			x->rcpt_len[x->nrcpt++] = n;
		}
	}
	if (x->nrcpt == 0)
		fail_msg("%s:%d: a transaction needs a recipient", d->name, line);
}

static void
body_add(struct dlg *d, const char *t, bool crlf, int line)
{
	if (d->ntx == 0)
		fail_msg("%s:%d: body line before any ! tx", d->name, line);
	struct dtx *x = &d->tx[d->ntx - 1];
	char buf[8192];
	size_t n = unescape(buf, t);
	if (crlf) {
		buf[n++] = '\r';
		buf[n++] = '\n';
	}
	x->body = realloc(x->body, x->body_len + n + 1);
	assert_non_null(x->body);
	memcpy(x->body + x->body_len, buf, n);
	x->body_len += n;
}

static void
load_item(struct dlg *d, char *buf, int line)
{
	size_t off = d->textlen;
	enum op_kind k;
	char *t = buf + 1;
	bool raw = *t == '-';
	long rep = 1;
	switch (buf[0]) {
	case '<':
		k = OP_SERVER;
		break;
	case '>':
		k = OP_CLIENT;
		break;
	case '=':
		k = OP_EVENT;
		break;
	default:
		fail_msg("%s:%d: bad line", d->name, line);
		return;
	}
	if (raw && k != OP_EVENT)
		t++;
	else if (*t == 'x')
		rep = strtol(t + 1, &t, 10);
	if (*t == ' ')
		t++;
	for (long r = 0; r < rep; r++) {
		char tmp[8192];
		if (k == OP_EVENT) {
			text_add(d, t, strlen(t));
			text_add(d, "\n", 1);
			continue;
		}
		text_add(d, tmp, unescape(tmp, t));
		if (!raw)
			text_add(d, "\r\n", 2);
	}
	op_add(d, k, off, line);
}

static void
dlg_load(struct dlg *d, const char *dir, const char *name)
{
	char path[4096], buf[8192];
	int line = 0;
	for (uint32_t i = 0; i < d->ntx; i++)
		free(d->tx[i].body);
	memset(d, 0, offsetof(struct dlg, text));
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(d->helo, sizeof(d->helo), "relay.example.test");
	d->conf.tls = SMTPC_TLS_NONE;
	d->out_cap = 8192;
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
		if (buf[0] == '+') {
			bool raw = buf[1] == '-';
			const char *t = buf + 1 + raw;
			body_add(d, t + (*t == ' '), !raw, line);
			continue;
		}
		if (buf[0] != '!') {
			load_item(d, buf, line);
			continue;
		}
		char *t = buf + 1 + strspn(buf + 1, " ");
		if (strncmp(t, "conf ", 5) == 0) {
			load_conf(d, t + 5, line);
		} else if (strncmp(t, "out ", 4) == 0) {
			d->out_cap = strtoul(t + 4, NULL, 10);
			assert_true(d->out_cap <= D_OUT_MAX);
		} else if (strcmp(t, "whole-only") == 0) {
			d->whole_only = true;
		} else if (strcmp(t, "piece") == 0) {
			if (d->ntx == 0)
				fail_msg("%s:%d: ! piece before any ! tx", d->name, line);
			struct dtx *x = &d->tx[d->ntx - 1];
			if (x->ncut == D_PIECE_MAX - 1)
				fail_msg("%s:%d: too many pieces", d->name, line);
			x->cut[x->ncut++] = x->body_len;
			d->cuts = true;
		} else {
			size_t off = d->textlen;
			char tag[16];
			if (strncmp(t, "tx ", 3) == 0) {
				/* The op names the transaction; its text is parsed now. */
				snprintf(tag, sizeof(tag), "tx %u", d->ntx);
				load_tx(d, t + 3, line);
				t = tag;
				off = d->textlen;
			}
			text_add(d, t, strlen(t));
			op_add(d, OP_DIRECTIVE, off, line);
		}
	}
	fclose(f);
	d->conf.helo = d->helo;
}

/* ---- running ---- */

enum mode { MODE_WHOLE, MODE_SPLIT, MODE_BYTES };

/* How bodies are lent: as the dialogue cuts them (one buffer without
 * `! piece`), as one buffer, one byte per piece, in two at pcut. */
enum pmode { PM_GIVEN, PM_FLAT, PM_BYTES, PM_TWO };

/* A piece's memory, freed at the end of the run. */
struct palloc {
	void *p;
	size_t len;
	bool mapped;
};

struct run {
	const struct dlg *d;
	enum mode mode;
	size_t split;
	enum pmode pmode;
	size_t pcut;
	struct smtpc_piece *pcs[D_TX_MAX]; /* the pieces lent, per transaction */
	struct palloc *allocs;
	size_t nallocs;
	struct smtpc c;
	struct smtpc_out out;
	struct smtpc_ops ops;
	struct smtpc_tx tx[D_TX_MAX];
	uint32_t nsub;
	uint8_t got[D_TX_MAX][D_RCPT_MAX]; /* results per recipient */
	bool txdone[D_TX_MAX];
	unsigned nclose;
	unsigned nfull; /* -ENOBUFS returns */
	bool tls_ok;
	const uint8_t *span; /* the body span due */
	size_t span_len;
	char *guard; /* PROT_NONE page; feeds end right before it */
	size_t guard_room;
	/* not reset between runs: */
	char outbuf[D_OUT_MAX];
	struct smtpc_rcpt rcpt[D_TX_MAX][D_RCPT_MAX];
	size_t wlen; /* wire transcript: everything the client sent */
	char wire[D_TEXT_MAX];
	size_t xwlen;
	char xwire[D_TEXT_MAX];
	struct esc ev, xev;
};

static const char *
mode_name(const struct run *r)
{
	static char buf[128];
	char feed[32];
	if (r->mode == MODE_WHOLE)
		snprintf(feed, sizeof(feed), "whole");
	else if (r->mode == MODE_BYTES)
		snprintf(feed, sizeof(feed), "one byte per feed");
	else
		snprintf(feed, sizeof(feed), "split at %zu", r->split);
	switch (r->pmode) {
	case PM_GIVEN:
		snprintf(buf, sizeof(buf), "%s", feed);
		break;
	case PM_FLAT:
		snprintf(buf, sizeof(buf), "%s, bodies in one buffer", feed);
		break;
	case PM_BYTES:
		snprintf(buf, sizeof(buf), "%s, bodies one byte per piece", feed);
		break;
	case PM_TWO:
		snprintf(buf, sizeof(buf), "%s, bodies cut at %zu", feed, r->pcut);
		break;
	}
	return buf;
}

/* Copy of p[0, n) that ends right before a PROT_NONE page (n == 0: a
 * pointer to that page), or in a heap block of exactly n (heap=true). */
static const uint8_t *
piece_copy(struct run *r, const uint8_t *p, size_t n, bool heap)
{
	r->allocs = realloc(r->allocs, (r->nallocs + 1) * sizeof(*r->allocs));
	assert_non_null(r->allocs);
	struct palloc *a = &r->allocs[r->nallocs++];
	if (heap) {
		*a = (struct palloc){malloc(n ? n : 1), n, false};
		assert_non_null(a->p);
		memcpy(a->p, p, n);
		return a->p;
	}
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t room = (n + page - 1) / page * page;
	char *map =
	    mmap(NULL, room + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + room, page, PROT_NONE), 0);
	*a = (struct palloc){map, room + page, true};
	if (n > 0)
		memcpy(map + room - n, p, n);
	return (const uint8_t *)map + room - n;
}

static void
pieces_free(struct run *r)
{
	for (size_t i = 0; i < r->nallocs; i++) {
		if (r->allocs[i].mapped)
			munmap(r->allocs[i].p, r->allocs[i].len);
		else
			free(r->allocs[i].p);
	}
	free(r->allocs);
	r->allocs = NULL;
	r->nallocs = 0;
	for (uint32_t t = 0; t < D_TX_MAX; t++) {
		free(r->pcs[t]);
		r->pcs[t] = NULL;
	}
}

/* Some line in p[1, n) starts with '.' (a piece that must be read). */
static bool
dot_inside(const uint8_t *p, size_t n)
{
	for (size_t i = 1; i < n; i++)
		if (p[i] == '.' && p[i - 1] == '\n')
			return true;
	return false;
}

/* Lend transaction t's body the run's way. */
static void
body_lend(struct run *r, uint32_t t, struct smtpc_tx *tx)
{
	const struct dtx *x = &r->d->tx[t];
	size_t cut[D_PIECE_MAX + 1], n = 0;
	tx->body_len = x->body_len;
	if (r->pmode == PM_FLAT || (r->pmode == PM_GIVEN && x->ncut == 0)) {
		tx->body = x->body;
		return;
	}
	if (r->pmode == PM_BYTES) {
		size_t np = x->body_len ? x->body_len : 1;
		r->pcs[t] = calloc(np, sizeof(*r->pcs[t]));
		assert_non_null(r->pcs[t]);
		for (size_t i = 0; i < x->body_len; i++)
			r->pcs[t][i] = (struct smtpc_piece){piece_copy(r, x->body + i, 1, true), 1, false};
		tx->pieces = r->pcs[t];
		tx->npieces = (uint32_t)np; /* an empty body: one empty piece */
		return;
	}
	if (r->pmode == PM_GIVEN) {
		for (uint32_t i = 0; i < x->ncut; i++)
			cut[n++] = x->cut[i];
	} else {
		cut[n++] = r->pcut < x->body_len ? r->pcut : x->body_len;
	}
	cut[n++] = x->body_len;
	r->pcs[t] = calloc(n, sizeof(*r->pcs[t]));
	assert_non_null(r->pcs[t]);
	for (size_t i = 0, at = 0; i < n; at = cut[i++]) {
		size_t len = cut[i] - at;
		/* Cut in two: a piece with no line to stuff, its start counted
		 * as one, is lent as such. */
		bool nostuff = r->pmode == PM_TWO && !dot_inside(x->body + at, len) &&
		               (len == 0 || x->body[at] != '.');
		r->pcs[t][i] =
		    (struct smtpc_piece){piece_copy(r, x->body + at, len, false), len, nostuff};
	}
	tx->pieces = r->pcs[t];
	tx->npieces = (uint32_t)n;
}

/* A body span lies inside one piece of tx (or in its one buffer). */
static bool
span_in_body(const struct smtpc_tx *tx, const uint8_t *p, size_t n)
{
	if (tx->npieces == 0)
		return p >= tx->body && p + n <= tx->body + tx->body_len;
	for (uint32_t i = 0; i < tx->npieces; i++) {
		const struct smtpc_piece *pc = &tx->pieces[i];
		if (pc->len > 0 && p >= pc->p && p + n <= pc->p + pc->len)
			return true;
	}
	return false;
}

static uint32_t
tx_index(const struct run *r, const struct smtpc_tx *tx)
{
	assert_true(tx >= r->tx && tx < r->tx + r->nsub);
	return (uint32_t)(tx - r->tx);
}

static void
rec_reply(struct run *r, const struct smtpc_reply *rp)
{
	esc_printf(&r->ev, " %d %.*s", rp->code, rp->enh_len ? (int)rp->enh_len : 1,
	           rp->enh_len ? rp->enh : "-");
	if (rp->text_len > 0) {
		esc_add(&r->ev, " ", 1);
		esc_add(&r->ev, rp->text, rp->text_len);
	}
}

/* " by=CMD" under conf by=1. */
static void
rec_by(struct run *r, const struct smtpc_event *ev)
{
	if (ev->cmd >= SMTPC_CMD_COUNT)
		fail_msg("%s: bad cmd %d", r->d->name, (int)ev->cmd);
	if (r->d->show_by)
		esc_printf(&r->ev, " by=%s", cmd_names[ev->cmd]);
}

static void
on_event(void *arg, const struct smtpc_event *ev)
{
	struct run *r = arg;
	if (r->nclose > 0)
		fail_msg("%s: event %d after close", r->d->name, ev->type);
	switch (ev->type) {
	case SMTPC_EV_READY:
		esc_printf(&r->ev, "ready%s", r->tls_ok ? " tls" : "");
		for (unsigned b = 0; b < EXT_NAMES; b++) {
			if (!(smtpc_ext(&r->c) & (1u << b)))
				continue;
			esc_printf(&r->ev, " %s", ext_names[b]);
			if ((1u << b) == SMTPC_EXT_SIZE)
				esc_printf(&r->ev, "=%llu",
				           (unsigned long long)smtpc_size_max(&r->c));
		}
		break;
	case SMTPC_EV_TLS:
		esc_printf(&r->ev, "tls%s", ev->verify ? " verify" : "");
		break;
	case SMTPC_EV_BODY:
		(void)tx_index(r, ev->tx);
		/* Zero copy: a span of the transaction's own body, in one piece. */
		if (r->span != NULL || ev->body_len == 0 ||
		    !span_in_body(ev->tx, ev->body, ev->body_len))
			fail_msg("%s (%s): bad body span", r->d->name, mode_name(r));
		r->span = ev->body;
		r->span_len = ev->body_len;
		return; /* on the wire, not in the event log */
	case SMTPC_EV_RCPT: {
		uint32_t t = tx_index(r, ev->tx);
		if (r->txdone[t] || ev->rcpt >= ev->tx->nrcpt || r->got[t][ev->rcpt]++ != 0)
			fail_msg("%s: second result for %u.%u", r->d->name, t, ev->rcpt);
		esc_printf(&r->ev, "rcpt %u.%u", t, ev->rcpt);
		rec_by(r, ev);
		rec_reply(r, &ev->reply);
		break;
	}
	case SMTPC_EV_TX: {
		uint32_t t = tx_index(r, ev->tx);
		for (uint32_t k = 0; k < ev->tx->nrcpt; k++)
			if (r->got[t][k] != 1)
				fail_msg("%s: tx %u done without a result for %u", r->d->name, t,
				         k);
		if (r->txdone[t])
			fail_msg("%s: tx %u done twice", r->d->name, t);
		r->txdone[t] = true;
		esc_printf(&r->ev, "tx %u", t);
		break;
	}
	case SMTPC_EV_DEFER:
		esc_printf(&r->ev, "defer");
		rec_by(r, ev);
		rec_reply(r, &ev->reply);
		break;
	case SMTPC_EV_CLOSE:
		r->nclose++;
		for (uint32_t t = 0; t < r->nsub; t++)
			if (!r->txdone[t])
				fail_msg("%s: closed with tx %u unfinished", r->d->name, t);
		esc_printf(&r->ev, "close");
		rec_by(r, ev);
		rec_reply(r, &ev->reply);
		break;
	}
	assert_true(r->ev.len < sizeof(r->ev.buf));
	r->ev.buf[r->ev.len++] = '\n';
}

/* Under ENCRYPT/VERIFY nothing but the TLS negotiation is sent in the
 * clear, whatever the dialogue expects. */
static void
clear_check(struct run *r, const char *p, size_t n)
{
	if (r->tls_ok ||
	    (r->d->conf.tls != SMTPC_TLS_ENCRYPT && r->d->conf.tls != SMTPC_TLS_VERIFY))
		return;
	for (size_t i = 0; i < n;) {
		const char *nl = memchr(p + i, '\n', n - i);
		size_t k = nl ? (size_t)(nl - p) + 1 - i : n - i;
		if (strncmp(p + i, "EHLO ", 5) != 0 && strncmp(p + i, "LHLO ", 5) != 0 &&
		    strncmp(p + i, "STARTTLS\r\n", k < 10 ? k : 10) != 0)
			fail_msg("%s (%s): sent in the clear: %.*s", r->d->name, mode_name(r),
			         (int)k, p + i);
		i += k;
	}
}

static void
wire_add(struct run *r, const void *p, size_t n)
{
	assert_true(r->wlen + n <= sizeof(r->wire));
	clear_check(r, p, n);
	memcpy(r->wire + r->wlen, p, n);
	r->wlen += n;
}

/* Send what the client wrote (and the body spans it asked for) until it
 * has nothing more to say. */
static void
drain(struct run *r, int rc)
{
	for (;;) {
		assert_true(r->out.len <= r->out.cap);
		wire_add(r, r->out.buf, r->out.len);
		bool flushed = r->out.len > 0;
		r->out.len = 0;
		if (r->span != NULL) {
			assert_true(smtpc_status(&r->c) & SMTPC_ST_BODY);
			const uint8_t *s = r->span;
			r->span = NULL;
			wire_add(r, s, r->span_len);
			rc = smtpc_body_sent(&r->c);
			continue;
		}
		if (rc == -ENOBUFS) {
			r->nfull++;
			assert_true(smtpc_status(&r->c) & SMTPC_ST_OUTFULL);
			if (!flushed)
				fail_msg("%s (%s): output full and empty", r->d->name,
				         mode_name(r));
			rc = smtpc_pump(&r->c);
			continue;
		}
		assert_true(rc == 0 || rc == -EPIPE);
		return;
	}
}

static void
feed_piece(struct run *r, const char *p, size_t n)
{
	assert_true(n <= r->guard_room);
	char *g = r->guard - n;
	memcpy(g, p, n);
	drain(r, smtpc_feed(&r->c, g, n));
}

static void
feed_flight(struct run *r, const char *p, size_t n)
{
	if (r->mode == MODE_WHOLE) {
		feed_piece(r, p, n);
	} else if (r->mode == MODE_BYTES) {
		for (size_t i = 0; i < n; i++)
			feed_piece(r, p + i, 1);
	} else {
		size_t k = r->split < n ? r->split : n;
		feed_piece(r, p, k);
		if (k < n)
			feed_piece(r, p + k, n - k);
	}
}

static void
check(struct run *r, int line)
{
	bool ok = true;
	if (r->wlen != r->xwlen || memcmp(r->wire, r->xwire, r->wlen) != 0) {
		struct esc *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
		esc_add(a, r->xwire, r->xwlen);
		esc_add(b, r->wire, r->wlen);
		print_error("client output differs\n  expected: %.*s\n  got:      %.*s\n",
		            (int)a->len, a->buf, (int)b->len, b->buf);
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
		fail_msg("%s:%d (%s): mismatch", r->d->name, line, mode_name(r));
}

static unsigned
status_bits(const char *t)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {{"OUTFULL", SMTPC_ST_OUTFULL}, {"BODY", SMTPC_ST_BODY},
	             {"TLS", SMTPC_ST_TLS},         {"CLOSE", SMTPC_ST_CLOSE},
	             {"WAIT", SMTPC_ST_WAIT},       {"READY", SMTPC_ST_READY},
	             {"IDLE", SMTPC_ST_IDLE}};
	unsigned want = 0;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strstr(t, names[i].name) != NULL)
			want |= names[i].bit;
	return want;
}

static void
submit(struct run *r, uint32_t t)
{
	const struct dtx *x = &r->d->tx[t];
	struct smtpc_tx *tx = &r->tx[t];
	assert_int_equal(t, r->nsub);
	memset(tx, 0, sizeof(*tx));
	tx->from = r->d->text + x->from_off;
	tx->from_len = x->from_len;
	for (uint32_t k = 0; k < x->nrcpt; k++)
		r->rcpt[t][k] = (struct smtpc_rcpt){r->d->text + x->rcpt_off[k], x->rcpt_len[k], 0};
	tx->rcpt = r->rcpt[t];
	tx->nrcpt = x->nrcpt;
	body_lend(r, t, tx);
	tx->flags = x->flags;
	tx->id = t;
	r->nsub++;
	int rc = smtpc_submit(&r->c, tx);
	if (rc != 0)
		fail_msg("%s: tx %u: submit: %s", r->d->name, t, strerror(-rc));
	drain(r, smtpc_pump(&r->c));
}

static void
directive(struct run *r, const char *t, int line)
{
	const struct dlg *d = r->d;
	if (strncmp(t, "tx ", 3) == 0) {
		submit(r, (uint32_t)atoi(t + 3));
	} else if (strcmp(t, "tls ok") == 0 || strcmp(t, "tls fail") == 0) {
		bool ok = t[4] == 'o';
		r->tls_ok = ok;
		drain(r, smtpc_tls_done(&r->c, ok));
	} else if (strcmp(t, "quit") == 0) {
		assert_int_equal(smtpc_quit(&r->c), 0);
		drain(r, smtpc_pump(&r->c));
	} else if (strcmp(t, "quit pipelined") == 0) {
		assert_int_equal(smtpc_quit_pipelined(&r->c), 0);
		drain(r, smtpc_pump(&r->c));
	} else if (strncmp(t, "can-start ", 10) == 0) {
		bool want = atoi(t + 10) != 0;
		if (smtpc_can_start(&r->c) != want)
			fail_msg("%s:%d (%s): smtpc_can_start() is %d", d->name, line, mode_name(r),
			         !want);
	} else if (strncmp(t, "dropped ", 8) == 0) {
		unsigned long long want = strtoull(t + 8, NULL, 10);
		if (smtpc_tls_dropped(&r->c) != want)
			fail_msg("%s:%d (%s): %llu octets dropped, want %llu", d->name, line,
			         mode_name(r), (unsigned long long)smtpc_tls_dropped(&r->c), want);
	} else if (strncmp(t, "abort", 5) == 0) {
		smtpc_abort(&r->c, t[5] == ' ' ? t + 6 : NULL);
		drain(r, 0);
	} else if (strncmp(t, "status ", 7) == 0) {
		unsigned got = smtpc_status(&r->c), want = status_bits(t + 7);
		if (got != want)
			fail_msg("%s:%d (%s): status %#x, want %#x", d->name, line, mode_name(r),
			         got, want);
	} else if (strcmp(t, "saw OUTFULL") == 0) {
		if (r->nfull == 0)
			fail_msg("%s:%d (%s): the output was never full", d->name, line,
			         mode_name(r));
	} else if (strcmp(t, "flush") != 0) {
		fail_msg("%s:%d: unknown directive '%s'", d->name, line, t);
	}
}

static void
run_dialogue(const struct dlg *d, enum mode mode, size_t split, enum pmode pm, size_t pcut,
             struct run *r)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE), maxlen = 1;
	for (size_t i = 0; i < d->nops; i++)
		if (d->ops[i].len > maxlen)
			maxlen = d->ops[i].len;
	size_t room = (maxlen + page - 1) / page * page;
	pieces_free(r); /* what a failed run left */
	memset(r, 0, offsetof(struct run, outbuf));
	r->wlen = r->xwlen = r->ev.len = r->xev.len = 0;
	r->d = d;
	r->mode = mode;
	r->split = split;
	r->pmode = pm;
	r->pcut = pcut;
	r->out.buf = r->outbuf;
	r->out.cap = d->out_cap;
	r->ops.event = on_event;
	char *map =
	    mmap(NULL, room + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + room, page, PROT_NONE), 0);
	r->guard = map + room;
	r->guard_room = room;
	assert_int_equal(smtpc_init(&r->c, &d->conf, &r->out, &r->ops, r), 0);
	for (size_t i = 0; i < d->nops; i++) {
		const struct op *o = &d->ops[i];
		const char *t = d->text + o->off;
		if (o->kind == OP_CLIENT) {
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
		if (o->kind == OP_SERVER) {
			feed_flight(r, t, o->len);
		} else {
			char dir[256];
			snprintf(dir, sizeof(dir), "%.*s", (int)o->len, t);
			directive(r, dir, o->line);
		}
	}
	check(r, d->nops ? d->ops[d->nops - 1].line : 0);
	/* Whatever happened, every transaction ends and close comes once. */
	smtpc_abort(&r->c, "end of dialogue");
	assert_int_equal(r->nclose, 1);
	assert_int_equal(smtpc_status(&r->c), SMTPC_ST_CLOSE);
	assert_int_equal(smtpc_feed(&r->c, "250 x\r\n", 7), -EPIPE);
	munmap(map, room + page);
	pieces_free(r);
}

static void
test_dialogue(void **state)
{
	const char *name = *state;
	const char *dir = getenv("RINGMX_CLIENT_DIALOGUES");
	/* Static: a failing check longjmps out, and these are large. */
	static struct dlg dlg;
	static struct run run;
	assert_non_null(dir);
	dlg_load(&dlg, dir, name);
	run_dialogue(&dlg, MODE_WHOLE, 0, PM_GIVEN, 0, &run);
	if (!dlg.whole_only) {
		run_dialogue(&dlg, MODE_BYTES, 0, PM_GIVEN, 0, &run);
		size_t maxflight = 0;
		for (size_t i = 0; i < dlg.nops; i++)
			if (dlg.ops[i].kind == OP_SERVER && dlg.ops[i].len > maxflight)
				maxflight = dlg.ops[i].len;
		size_t step = maxflight / D_SPLIT_RUNS + 1;
		for (size_t k = 1; k < maxflight; k += step)
			run_dialogue(&dlg, MODE_SPLIT, k, PM_GIVEN, 0, &run);
	}
	if (dlg.ntx == 0)
		return;
	/* However the bodies are cut, the same wire and the same events. */
	if (dlg.cuts)
		run_dialogue(&dlg, MODE_WHOLE, 0, PM_FLAT, 0, &run);
	run_dialogue(&dlg, MODE_WHOLE, 0, PM_BYTES, 0, &run);
	size_t maxbody = 0;
	for (uint32_t t = 0; t < dlg.ntx; t++)
		if (dlg.tx[t].body_len > maxbody)
			maxbody = dlg.tx[t].body_len;
	size_t step = maxbody / D_SPLIT_RUNS + 1;
	for (size_t k = 0; k <= maxbody; k += step)
		run_dialogue(&dlg, MODE_WHOLE, 0, PM_TWO, k, &run);
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(void)
{
	const char *dir = getenv("RINGMX_CLIENT_DIALOGUES");
	static char *names[D_NAMES_MAX];
	static struct CMUnitTest tests[D_NAMES_MAX];
	size_t n = 0;
	if (dir == NULL) {
		fprintf(stderr, "RINGMX_CLIENT_DIALOGUES is not set\n");
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
	return _cmocka_run_group_tests("client_dialogues", tests, n, NULL, NULL);
}
