/*
 * smtp_client.c - the SMTP/LMTP client protocol core (smtp_client.h,
 * docs/smtp-client.md). Replies in, commands and events out. The
 * stateless text readers (EHLO keywords, enhanced status codes) are in
 * smtp_client_reply.c.
 *
 * Ownership rules
 *  - Reply lines are read in place from the fed input; only a line split
 *    across feeds is copied, into the bounded carry (SMTPC_LINE_MAX).
 *  - Commands are formatted on the stack and appended whole to the
 *    caller's output buffer. Message bytes are never copied: the body goes
 *    out as SMTPC_EV_BODY spans of tx->body, or of its pieces (a span
 *    never crosses a piece, so each is a view of one caller buffer).
 *  - A submitted transaction is linked on c->txs through its own fields
 *    (no allocation) and handed back by SMTPC_EV_TX, after which nothing
 *    here refers to it: its expected replies (nexp), its LMTP replies and
 *    the writer (c->emit) must all be done with it first (tx_try_finish).
 *
 * Invariants
 *  - The state changes only in enter(), which checks the transition table.
 *  - Every submitted recipient gets exactly one SMTPC_EV_RCPT, then its
 *    transaction exactly one SMTPC_EV_TX; SMTPC_EV_CLOSE comes once, last.
 *  - Under ENCRYPT/VERIFY nothing but EHLO/LHLO and STARTTLS is written
 *    before the handshake succeeded: READY is entered in plaintext only
 *    under NONE and MAY (asserted in enter()).
 *  - An expectation is pushed only when its command is written, so a
 *    reply that comes before its command was even written is a protocol
 *    error (a server that answers ahead of the client).
 *  - After the 220 to STARTTLS no plaintext byte is parsed (the rest of
 *    that feed and every feed until smtpc_tls_done are dropped: the
 *    client-side mirror of CVE-2011-0411).
 */
#include "smtp_client.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* What an expected reply answers: the public enum smtpc_cmd, which
 * events carry, under short names. */
enum exp_kind {
	X_GREET = SMTPC_CMD_GREETING,
	X_EHLO = SMTPC_CMD_EHLO,
	X_HELO = SMTPC_CMD_HELO,
	X_STARTTLS = SMTPC_CMD_STARTTLS,
	X_MAIL = SMTPC_CMD_MAIL,
	X_RCPT = SMTPC_CMD_RCPT,
	X_DATA = SMTPC_CMD_DATA,
	X_DOT = SMTPC_CMD_DOT,
	X_BDAT = SMTPC_CMD_BDAT,
	X_RSET = SMTPC_CMD_RSET,
	X_QUIT = SMTPC_CMD_QUIT
};

/* Where the writer is in the transaction c->emit. */
enum estage { E_MAIL = 1, E_RCPT, E_DATA, E_WAIT354, E_BODY, E_DOT, E_BDAT };

/* Per recipient (struct smtpc_rcpt.st). */
enum { R_PENDING = 0, R_ACCEPTED, R_DONE };

/* Per transaction (struct smtpc_tx.phase). */
enum { P_QUEUED = 0, P_STARTED, P_WRITTEN };

/* A reply's meaning for the command it answers. */
enum verdict { V_OK, V_FAIL, V_BAD };

#define B(st) (1u << (st))
static const unsigned legal[SMTPC_S_COUNT] __attribute__((unused)) = {
    /* read by assert() */
    [SMTPC_S_GREETING] = B(SMTPC_S_EHLO) | B(SMTPC_S_CLOSED),
    [SMTPC_S_EHLO] = B(SMTPC_S_HELO) | B(SMTPC_S_STARTTLS) | B(SMTPC_S_READY) | B(SMTPC_S_CLOSED),
    [SMTPC_S_HELO] = B(SMTPC_S_READY) | B(SMTPC_S_CLOSED),
    /* STARTTLS -> READY: refused under MAY (plaintext, as Postfix does). */
    [SMTPC_S_STARTTLS] = B(SMTPC_S_TLS) | B(SMTPC_S_READY) | B(SMTPC_S_CLOSED),
    [SMTPC_S_TLS] = B(SMTPC_S_EHLO) | B(SMTPC_S_CLOSED),
    [SMTPC_S_READY] = B(SMTPC_S_QUIT) | B(SMTPC_S_CLOSED),
    [SMTPC_S_QUIT] = B(SMTPC_S_CLOSED),
    [SMTPC_S_CLOSED] = 0,
};
#undef B

static bool
tls_required(const struct smtpc *c)
{
	return c->tls == SMTPC_TLS_ENCRYPT || c->tls == SMTPC_TLS_VERIFY;
}

static void
enter(struct smtpc *c, enum smtpc_state to)
{
	assert(legal[c->state] & (1u << to));
	/* The one rule that must hold on every path: no plaintext session
	 * when the policy demands TLS. */
	assert(to != SMTPC_S_READY || c->tls_active || !tls_required(c));
	c->state = (uint8_t)to;
	c->cmd_written = false;
}

/* ---- events ---- */

static void
emit_event(struct smtpc *c, struct smtpc_event *ev)
{
	c->in_cb++;
	c->ops->event(c->arg, ev);
	c->in_cb--;
}

static struct smtpc_reply
reply_of(int code, const char *text, size_t len)
{
	/* relay_reply joins an empty last line with a space: not text. */
	while (len > 0 && text[len - 1] == ' ')
		len--;
	size_t e = smtpc_enh_len(text, len, code);
	size_t skip = e > 0 && e < len ? e + 1 : e;
	return (struct smtpc_reply){code, text, e, text + skip, len - skip};
}

/* Recipient k's result: r, the reply to cmd (SMTPC_CMD_NONE: the core's). */
static void
rcpt_result(struct smtpc *c, struct smtpc_tx *tx, uint32_t k, const struct smtpc_reply *r,
            enum smtpc_cmd cmd)
{
	assert(k < tx->nrcpt && tx->rcpt[k].st != R_DONE && tx->nleft > 0);
	if (tx->rcpt[k].st == R_ACCEPTED)
		tx->nacc--;
	tx->rcpt[k].st = R_DONE;
	tx->nleft--;
	struct smtpc_event ev = {
	    .type = SMTPC_EV_RCPT, .tx = tx, .rcpt = k, .reply = *r, .cmd = cmd};
	emit_event(c, &ev);
}

/* Every recipient of tx still in state st gets r. */
static void
rcpt_all(struct smtpc *c, struct smtpc_tx *tx, uint8_t st, const struct smtpc_reply *r,
         enum smtpc_cmd cmd)
{
	for (uint32_t k = 0; k < tx->nrcpt; k++)
		if (tx->rcpt[k].st == st)
			rcpt_result(c, tx, k, r, cmd);
}

/* Hand tx back once nothing here refers to it any more. */
static void
tx_try_finish(struct smtpc *c, struct smtpc_tx *tx)
{
	if (tx->nleft > 0 || tx->nexp > 0 || c->emit == tx || c->lmtp_tx == tx)
		return;
	struct smtpc_tx **pp = &c->txs;
	while (*pp != tx) {
		assert(*pp != NULL);
		pp = &(*pp)->next;
	}
	*pp = tx->next;
	tx->next = NULL;
	c->ntx--;
	struct smtpc_event ev = {.type = SMTPC_EV_TX, .tx = tx};
	emit_event(c, &ev);
}

/* The writer is done with tx (written whole, or given up). */
static void
emit_end(struct smtpc *c, struct smtpc_tx *tx)
{
	assert(c->emit == tx);
	c->emit = NULL;
	c->estage = 0;
	tx->phase = P_WRITTEN;
	tx_try_finish(c, tx);
}

/*
 * The connection ends: every unfinished recipient gets r, SMTPC_EV_DEFER
 * when it never became usable, then SMTPC_EV_CLOSE, which name the reply
 * being acted on (c->cur) as the cause. failed=false is an orderly end
 * (after QUIT, or an idle connection the server closed).
 */
static void
conn_end(struct smtpc *c, const struct smtpc_reply *r, bool failed)
{
	if (c->state == SMTPC_S_CLOSED)
		return;
	enter(c, SMTPC_S_CLOSED);
	c->exp_n = 0;
	c->lmtp_tx = NULL;
	c->emit = NULL;
	c->body_pending = false;
	c->outfull = false;
	while (c->txs != NULL) {
		struct smtpc_tx *tx = c->txs;
		tx->nexp = 0;
		for (uint32_t k = 0; k < tx->nrcpt; k++)
			if (tx->rcpt[k].st != R_DONE)
				rcpt_result(c, tx, k, r, SMTPC_CMD_NONE);
		tx_try_finish(c, tx);
	}
	enum smtpc_cmd cause = (enum smtpc_cmd)c->cur;
	if (failed && !c->ever_ready) {
		struct smtpc_event ev = {.type = SMTPC_EV_DEFER, .reply = *r, .cmd = cause};
		emit_event(c, &ev);
	}
	struct smtpc_event ev = {.type = SMTPC_EV_CLOSE, .reply = *r, .cmd = cause};
	emit_event(c, &ev);
}

static void fail(struct smtpc *c, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A failure the core describes: 451 enh text (a temporary result, so a
 * confused or unfriendly server never makes a message bounce). */
static void
fail(struct smtpc *c, const char *enh, const char *fmt, ...)
{
	int n = snprintf(c->why, sizeof(c->why), "%s ", enh);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->why + n, sizeof(c->why) - (size_t)n, fmt, ap);
	va_end(ap);
	/* Server text quoted in the reason: no control characters. */
	for (char *p = c->why; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	struct smtpc_reply r = reply_of(451, c->why, strlen(c->why));
	conn_end(c, &r, true);
}

/* "%d %.*s" of a reply, shortened for reasons. */
#define REPLY_FMT     "%d %.*s"
#define REPLY_ARGS(r) (r)->code, (int)((r)->len > 200 ? 200 : (r)->len), (r)->text

/* ---- writing ---- */

static bool
exp_room(const struct smtpc *c)
{
	return c->exp_n < SMTPC_EXP_MAX && ((c->ext & SMTPC_EXT_PIPELINING) || c->exp_n == 0);
}

static void
exp_push(struct smtpc *c, enum exp_kind kind, struct smtpc_tx *tx, uint32_t k)
{
	assert(c->exp_n < SMTPC_EXP_MAX);
	struct smtpc_exp *e = &c->exp[(c->exp_head + c->exp_n) % SMTPC_EXP_MAX];
	e->kind = (uint8_t)kind;
	e->tx = tx;
	e->k = k;
	c->exp_n++;
	if (tx != NULL)
		tx->nexp++;
}

/* The replies still due move back to the front of the ring once a few
 * were read: the entries in use stay in the first cache lines, which a
 * pipelining connection touches on every reply, instead of walking all
 * SMTPC_EXP_MAX of them (a client with thousands of connections feels
 * every line: the entries in use stay in the first two). At most
 * EXP_COMPACT entries move, every EXP_COMPACT replies or so. */
#define EXP_COMPACT 4

static void
exp_compact(struct smtpc *c)
{
	if (c->exp_n == 0) {
		c->exp_head = 0;
		return;
	}
	if (c->exp_head < EXP_COMPACT || c->exp_n > EXP_COMPACT ||
	    c->exp_head + c->exp_n > SMTPC_EXP_MAX)
		return;
	memmove(c->exp, c->exp + c->exp_head, c->exp_n * sizeof(c->exp[0]));
	c->exp_head = 0;
}

/* Append one whole command; false (and OUTFULL) when it does not fit. */
static bool
put(struct smtpc *c, const char *p, size_t n)
{
	struct smtpc_out *o = c->out;
	if (o->cap - o->len < n) {
		c->outfull = true;
		return false;
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
	return true;
}

/* A command with its expected reply. */
#define CMD(c, kind, tx, k, p, n)                                                                  \
	(exp_room(c) && put((c), (p), (n)) ? (exp_push((c), (kind), (tx), (k)), true) : false)
#define CMD_LIT(c, kind, tx, k, s) CMD(c, kind, tx, k, (s), sizeof(s) - 1)

/*
 * A command written in place at the end of the output, never formatted
 * (every message writes a few, and printf into a stack buffer cost more
 * than the rest of writing them): its length is known first, line_begin()
 * checks that it fits and that its reply can be queued, line_end() makes it
 * count.
 */
struct line {
	char *p;
	size_t n, len;
};

static bool
line_begin(struct smtpc *c, struct line *l, size_t len)
{
	struct smtpc_out *o = c->out;
	if (!exp_room(c))
		return false;
	if (o->cap - o->len < len) {
		c->outfull = true;
		return false;
	}
	l->p = o->buf + o->len;
	l->n = 0;
	l->len = len;
	return true;
}

static void
line_add(struct line *l, const char *p, size_t n)
{
	if (n == 0)
		return; /* p may be NULL: the null sender */
	assert(n <= l->len - l->n);
	memcpy(l->p + l->n, p, n);
	l->n += n;
}
#define LINE_LIT(l, s) line_add((l), (s), sizeof(s) - 1)

static void
line_end(struct smtpc *c, struct line *l, enum exp_kind kind, struct smtpc_tx *tx, uint32_t k)
{
	assert(l->n == l->len);
	c->out->len += l->n;
	exp_push(c, kind, tx, k);
}

static size_t
num_len(uint64_t v)
{
	size_t k = 1;
	while (v >= 10) {
		v /= 10;
		k++;
	}
	return k;
}

static void
line_num(struct line *l, uint64_t v)
{
	char d[20];
	size_t k = sizeof(d);
	do {
		d[--k] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	line_add(l, d + k, sizeof(d) - k);
}

/* Piece i of tx's body: one of tx->pieces, or the single tx->body. */
static struct smtpc_piece
piece_of(const struct smtpc_tx *tx, uint32_t i)
{
	if (tx->npieces == 0)
		return (struct smtpc_piece){tx->body, tx->body_len, false};
	return tx->pieces[i];
}

/* The unwritten rest of the current piece, after skipping finished and
 * empty pieces; len 0 at the end of the body. */
static struct smtpc_piece
body_rest(struct smtpc *c, const struct smtpc_tx *tx)
{
	uint32_t np = tx->npieces == 0 ? 1 : tx->npieces;
	for (; c->bpiece < np; c->bpiece++, c->boff = 0) {
		struct smtpc_piece pc = piece_of(tx, c->bpiece);
		if (c->boff < pc.len)
			return (struct smtpc_piece){pc.p + c->boff, pc.len - c->boff, pc.nostuff};
	}
	return (struct smtpc_piece){NULL, 0, false};
}

static void
body_span(struct smtpc *c, struct smtpc_tx *tx, const uint8_t *p, size_t len)
{
	struct smtpc_event ev = {.type = SMTPC_EV_BODY, .tx = tx, .body = p, .body_len = len};
	c->boff += len;
	c->body_pending = true;
	emit_event(c, &ev);
}

/* DATA: the next body octet starts a line. */
static bool
at_bol(const struct smtpc *c)
{
	return c->last == NULL || *c->last == '\n';
}

/* Offset of the first line in p[1, n) that starts with '.', or n. Looked for
 * by its '.', not by every LF: lines outnumber dots at their start, and
 * base64 has no '.' at all, so one memchr often covers a piece. */
static size_t
dot_line(const uint8_t *p, size_t n)
{
	for (const uint8_t *d = n > 1 ? memchr(p + 1, '.', n - 1) : NULL; d != NULL;
	     d = memchr(d + 1, '.', n - (size_t)(d + 1 - p)))
		if (d[-1] == '\n')
			return (size_t)(d - p);
	return n;
}

/*
 * DATA content: the next span up to and including the LF before the next
 * line that starts with '.', whose extra '.' (RFC 5321 4.5.2) goes into
 * the output. A '.' after a bare LF is stuffed too, so no receiver that
 * ends data at "\n.\n" can be made to see an end early. A span ends at
 * its piece's end; c->last carries the line start into the next piece, so
 * how the body is cut never changes what goes on the wire. false:
 * stopped (a span is due, or the output is full).
 */
static bool
emit_data_body(struct smtpc *c, struct smtpc_tx *tx)
{
	struct smtpc_piece rest = body_rest(c, tx);
	if (rest.len == 0)
		return true;
	const uint8_t *p = rest.p;
	/* A nostuff piece is not read (the caller's word, checked in debug
	 * builds only: not reading it is what the hint is for). */
	assert(!rest.nostuff || (p[0] != '.' && dot_line(p, rest.len) == rest.len));
	if (!rest.nostuff && at_bol(c) && p[0] == '.' && !put(c, ".", 1))
		return false;
	size_t n = rest.nostuff ? rest.len : dot_line(p, rest.len);
	c->last = p + n - 1;
	body_span(c, tx, p, n);
	return false;
}

/* Refusals decided before anything is written (the EHLO said enough). */
static bool
tx_precheck(struct smtpc *c, struct smtpc_tx *tx)
{
	static const char too_big[] = "5.3.4 message too big for the server (its SIZE limit)";
	static const char no_utf8[] = "5.6.7 the server does not support SMTPUTF8";
	struct smtpc_reply r;
	if ((c->ext & SMTPC_EXT_SIZE) && c->size_max > 0 && tx->body_len > c->size_max)
		r = reply_of(552, too_big, sizeof(too_big) - 1);
	else if ((tx->flags & SMTPC_TX_SMTPUTF8) && !(c->ext & SMTPC_EXT_SMTPUTF8))
		r = reply_of(553, no_utf8, sizeof(no_utf8) - 1); /* RFC 6531 3.4: no downgrade */
	else
		return true;
	rcpt_all(c, tx, R_PENDING, &r, SMTPC_CMD_NONE);
	return false;
}

/* The oldest transaction not started yet, started (or refused) now. */
static bool
tx_start(struct smtpc *c)
{
	for (struct smtpc_tx *tx = c->txs; tx != NULL; tx = tx->next) {
		if (tx->phase != P_QUEUED)
			continue;
		tx->phase = P_STARTED;
		if (!tx_precheck(c, tx)) {
			tx->phase = P_WRITTEN;
			tx_try_finish(c, tx);
			return true; /* the list changed: look again */
		}
		c->emit = tx;
		c->estage = E_MAIL;
		c->ek = 0;
		return true;
	}
	return false;
}

static bool
tx_unstarted(const struct smtpc *c)
{
	for (const struct smtpc_tx *tx = c->txs; tx != NULL; tx = tx->next)
		if (tx->phase == P_QUEUED)
			return true;
	return false;
}

/* Before DATA/BDAT: known already that no recipient can take the message
 * (lock-step, or the replies came in before the writer got here). */
static bool
tx_hopeless(const struct smtpc_tx *tx)
{
	return tx->mail_failed || (tx->mail_ok && tx->rcpt_out == 0 && tx->nacc == 0);
}

static bool
emit_mail(struct smtpc *c, struct smtpc_tx *tx)
{
	bool b8 = (tx->flags & SMTPC_TX_8BITMIME) && (c->ext & SMTPC_EXT_8BITMIME);
	bool utf8 = tx->flags & SMTPC_TX_SMTPUTF8; /* tx_precheck: only when offered */
	bool size = (c->ext & SMTPC_EXT_SIZE) && !(tx->flags & SMTPC_TX_PROBE);
	struct line l;
	if (!line_begin(c, &l,
	                11 + tx->from_len + 1 + (b8 ? 14 : 0) + (utf8 ? 9 : 0) +
	                    (size ? 6 + num_len(tx->body_len) : 0) + 2))
		return false;
	LINE_LIT(&l, "MAIL FROM:<");
	line_add(&l, tx->from, tx->from_len);
	LINE_LIT(&l, ">");
	if (b8)
		LINE_LIT(&l, " BODY=8BITMIME");
	if (utf8)
		LINE_LIT(&l, " SMTPUTF8");
	if (size) {
		LINE_LIT(&l, " SIZE=");
		line_num(&l, tx->body_len);
	}
	LINE_LIT(&l, "\r\n");
	line_end(c, &l, X_MAIL, tx, 0);
	return true;
}

static bool
emit_rcpt(struct smtpc *c, struct smtpc_tx *tx)
{
	const struct smtpc_rcpt *r = &tx->rcpt[c->ek];
	struct line l;
	if (!line_begin(c, &l, 9 + r->len + 3))
		return false;
	LINE_LIT(&l, "RCPT TO:<");
	line_add(&l, r->addr, r->len);
	LINE_LIT(&l, ">\r\n");
	line_end(c, &l, X_RCPT, tx, c->ek);
	tx->rcpt_out++;
	c->ek++;
	return true;
}

static bool
emit_bdat(struct smtpc *c, struct smtpc_tx *tx)
{
	struct line l;
	if (!line_begin(c, &l, 5 + num_len(tx->body_len) + 7))
		return false;
	LINE_LIT(&l, "BDAT ");
	line_num(&l, tx->body_len);
	LINE_LIT(&l, " LAST\r\n");
	line_end(c, &l, X_BDAT, tx, 0);
	return true;
}

/* One step of the transaction being written; false: stop writing. */
static bool
emit_tx_step(struct smtpc *c, struct smtpc_tx *tx)
{
	bool chunking = (c->ext & SMTPC_EXT_CHUNKING) != 0;
	switch (c->estage) {
	case E_MAIL:
		if (!emit_mail(c, tx))
			return false;
		c->estage = E_RCPT;
		return true;
	case E_RCPT:
		if (tx->mail_failed) {
			emit_end(c, tx); /* no transaction: nothing to reset */
			return true;
		}
		if (c->ek == tx->nrcpt && (tx->flags & SMTPC_TX_PROBE)) {
			/* No data phase: the MAIL may have opened a transaction. */
			c->need_rset = true;
			emit_end(c, tx);
			return true;
		}
		if (c->ek == tx->nrcpt) {
			c->estage = chunking ? E_BDAT : E_DATA;
			return true;
		}
		return emit_rcpt(c, tx);
	case E_DATA:
	case E_BDAT:
		if (tx_hopeless(tx)) {
			c->need_rset = !tx->mail_failed;
			emit_end(c, tx);
			return true;
		}
		if (c->estage == E_DATA) {
			if (!CMD_LIT(c, X_DATA, tx, 0, "DATA\r\n"))
				return false;
			c->estage = E_WAIT354;
			return false; /* RFC 2920: DATA ends a group */
		}
		if (!emit_bdat(c, tx))
			return false;
		c->estage = E_BODY;
		c->bpiece = 0;
		c->boff = 0;
		return true;
	case E_WAIT354:
		return false;
	case E_BODY:
		if (chunking) {
			struct smtpc_piece rest = body_rest(c, tx);
			if (rest.len > 0) {
				body_span(c, tx, rest.p, rest.len);
				return false;
			}
			emit_end(c, tx);
			return true;
		}
		if (!emit_data_body(c, tx))
			return false;
		c->estage = E_DOT;
		return true;
	case E_DOT:
		/* The CRLF the body lacks, then ".": one command. */
		if (!(at_bol(c) ? CMD_LIT(c, X_DOT, tx, 0, ".\r\n")
		             : CMD_LIT(c, X_DOT, tx, 0, "\r\n.\r\n")))
			return false;
		emit_end(c, tx);
		return true;
	}
	assert(!"bad writer stage");
	return false;
}

static void
emit_ready(struct smtpc *c)
{
	for (;;) {
		if (c->body_pending || c->state != SMTPC_S_READY)
			return;
		struct smtpc_tx *tx = c->emit;
		if (tx != NULL) {
			if (!emit_tx_step(c, tx))
				return;
			continue;
		}
		if (tx_unstarted(c)) {
			/* RSET only in front of a transaction: QUIT needs none. */
			if (c->need_rset) {
				if (!CMD_LIT(c, X_RSET, NULL, 0, "RSET\r\n"))
					return;
				c->need_rset = false;
			}
			if (!exp_room(c))
				return;
			tx_start(c);
			continue;
		}
		/* Pipelined QUIT: everything is written (no writer, nothing
		 * unstarted: both were ruled out above), only replies are due. */
		if (c->quit_wanted && ((c->txs == NULL && c->lmtp_tx == NULL) ||
		                       (c->quit_early && (c->ext & SMTPC_EXT_PIPELINING) &&
		                        exp_room(c)))) {
			enter(c, SMTPC_S_QUIT);
			continue;
		}
		return;
	}
}

static void
emit_all(struct smtpc *c)
{
	c->outfull = false;
	if (c->in_cb > 0 || c->cmd_written)
		return;
	struct line l;
	size_t hl;
	switch (c->state) {
	case SMTPC_S_EHLO:
	case SMTPC_S_HELO:
		hl = c->helo_len;
		if (!line_begin(c, &l, 5 + hl + 2))
			return;
		line_add(&l, c->state == SMTPC_S_HELO ? "HELO " : c->lmtp ? "LHLO " : "EHLO ", 5);
		line_add(&l, c->helo, hl);
		LINE_LIT(&l, "\r\n");
		line_end(c, &l, c->state == SMTPC_S_HELO ? X_HELO : X_EHLO, NULL, 0);
		c->cmd_written = true;
		return;
	case SMTPC_S_STARTTLS:
		c->cmd_written = CMD_LIT(c, X_STARTTLS, NULL, 0, "STARTTLS\r\n");
		return;
	case SMTPC_S_READY:
		emit_ready(c);
		if (c->state == SMTPC_S_QUIT && !c->outfull)
			emit_all(c);
		return;
	case SMTPC_S_QUIT:
		c->cmd_written = CMD_LIT(c, X_QUIT, NULL, 0, "QUIT\r\n");
		return;
	default:
		return;
	}
}

/* ---- replies ---- */

static void
ready(struct smtpc *c)
{
	enter(c, SMTPC_S_READY);
	c->ever_ready = true;
	struct smtpc_event ev = {.type = SMTPC_EV_READY};
	emit_event(c, &ev);
}

/* The EHLO succeeded: STARTTLS, or ready, or (TLS required) give up. */
static void
on_ehlo_ok(struct smtpc *c)
{
	if (c->tls_active || c->tls == SMTPC_TLS_NONE) {
		ready(c);
		return;
	}
	if (c->ext & SMTPC_EXT_STARTTLS) {
		enter(c, SMTPC_S_STARTTLS);
		return;
	}
	if (tls_required(c)) {
		fail(c, "4.7.4", "TLS is required but the server does not offer STARTTLS");
		return;
	}
	ready(c);
}

static void
on_hello(struct smtpc *c, enum exp_kind kind, enum verdict v, const struct relay_reply *r)
{
	if (v == V_OK) {
		if (kind == X_EHLO)
			on_ehlo_ok(c);
		else
			ready(c);
		return;
	}
	if (kind == X_EHLO && tls_required(c) && !c->tls_active) {
		/* HELO cannot do STARTTLS: falling back would be plaintext. */
		fail(c, "4.7.4", "TLS is required but the server refused EHLO: " REPLY_FMT,
		     REPLY_ARGS(r));
		return;
	}
	if (kind == X_EHLO && !c->lmtp && r->code >= 500) {
		c->ext = 0; /* HELO: no extensions */
		enter(c, SMTPC_S_HELO);
		return;
	}
	fail(c, "4.4.0", "the server refused %s: " REPLY_FMT,
	     kind == X_HELO ? "HELO"
	     : c->lmtp      ? "LHLO"
	                    : "EHLO",
	     REPLY_ARGS(r));
}

static void
on_starttls(struct smtpc *c, const struct relay_reply *r)
{
	if (r->code == 220) {
		enter(c, SMTPC_S_TLS);
		struct smtpc_event ev = {.type = SMTPC_EV_TLS,
		                         .verify = c->tls == SMTPC_TLS_VERIFY};
		emit_event(c, &ev);
		return;
	}
	if (tls_required(c)) {
		fail(c, "4.7.4", "TLS is required but the server refused STARTTLS: " REPLY_FMT,
		     REPLY_ARGS(r));
		return;
	}
	ready(c); /* MAY: plaintext */
}

/* The final reply to the data (DOT or BDAT) of tx. */
static void
on_final(struct smtpc *c, struct smtpc_tx *tx, enum exp_kind kind, enum verdict v,
         const struct smtpc_reply *sr)
{
	if (kind == X_BDAT && v != V_OK)
		c->need_rset = true; /* RFC 3030 2: the transaction may be open */
	if (tx->nacc == 0) {
		tx_try_finish(c, tx); /* nobody to tell */
		return;
	}
	if (!c->lmtp) {
		rcpt_all(c, tx, R_ACCEPTED, sr, (enum smtpc_cmd)kind);
		tx_try_finish(c, tx);
		return;
	}
	/* LMTP: this is the first accepted recipient's reply; the others
	 * follow, before any other reply. */
	c->lmtp_tx = tx;
	c->lmtp_k = 0;
	c->lmtp_cmd = (uint8_t)kind;
	while (tx->rcpt[c->lmtp_k].st != R_ACCEPTED)
		c->lmtp_k++;
	rcpt_result(c, tx, c->lmtp_k++, sr, (enum smtpc_cmd)kind);
	if (tx->nacc == 0)
		c->lmtp_tx = NULL;
	tx_try_finish(c, tx);
}

static void
on_lmtp(struct smtpc *c, const struct smtpc_reply *sr)
{
	struct smtpc_tx *tx = c->lmtp_tx;
	while (tx->rcpt[c->lmtp_k].st != R_ACCEPTED)
		c->lmtp_k++;
	rcpt_result(c, tx, c->lmtp_k++, sr, (enum smtpc_cmd)c->lmtp_cmd);
	if (tx->nacc == 0) {
		c->lmtp_tx = NULL;
		tx_try_finish(c, tx);
	}
}

static void
on_tx_reply(struct smtpc *c, const struct smtpc_exp *e, enum verdict v,
            const struct smtpc_reply *sr)
{
	struct smtpc_tx *tx = e->tx;
	switch (e->kind) {
	case X_MAIL:
		if (v == V_OK) {
			tx->mail_ok = true;
		} else {
			tx->mail_failed = true;
			rcpt_all(c, tx, R_PENDING, sr, SMTPC_CMD_MAIL);
		}
		tx_try_finish(c, tx);
		return;
	case X_RCPT:
		tx->rcpt_out--;
		if (tx->rcpt[e->k].st == R_PENDING && (tx->flags & SMTPC_TX_PROBE)) {
			rcpt_result(c, tx, e->k, sr, SMTPC_CMD_RCPT); /* 2xx too */
		} else if (tx->rcpt[e->k].st == R_PENDING && v == V_OK) {
			tx->rcpt[e->k].st = R_ACCEPTED;
			tx->nacc++;
		} else if (tx->rcpt[e->k].st == R_PENDING) {
			rcpt_result(c, tx, e->k, sr, SMTPC_CMD_RCPT);
		} /* else decided by the MAIL reply */
		tx_try_finish(c, tx);
		return;
	case X_DATA:
		if (sr->code == 354) {
			assert(c->emit == tx && c->estage == E_WAIT354);
			c->estage = tx->nacc > 0 ? E_BODY : E_DOT;
			c->bpiece = 0;
			c->boff = 0;
			c->last = NULL;
			return;
		}
		/* No data phase: the accepted recipients get this reply. */
		rcpt_all(c, tx, R_ACCEPTED, sr, SMTPC_CMD_DATA);
		c->need_rset = true;
		emit_end(c, tx); /* the writer waits for the 354: it is at tx */
		return;
	default:
		on_final(c, tx, (enum exp_kind)e->kind, v, sr);
		return;
	}
}

/* What a reply code means for the command it answers. */
static enum verdict
verdict_of(enum exp_kind kind, int code)
{
	if (code >= 400)
		return V_FAIL;
	switch (kind) {
	case X_GREET:
	case X_STARTTLS:
		return code == 220 ? V_OK : V_BAD;
	case X_DATA:
		return code == 354 ? V_OK : V_BAD;
	case X_QUIT:
		return V_OK;
	default:
		return code < 300 ? V_OK : V_BAD;
	}
}

static const char *const kind_name[] = {
    [X_GREET] = "the greeting", [X_EHLO] = "EHLO", [X_HELO] = "HELO", [X_STARTTLS] = "STARTTLS",
    [X_MAIL] = "MAIL",          [X_RCPT] = "RCPT", [X_DATA] = "DATA", [X_DOT] = "end of data",
    [X_BDAT] = "BDAT",          [X_RSET] = "RSET", [X_QUIT] = "QUIT",
};

/* One complete reply. */
static void
on_reply(struct smtpc *c, const struct relay_reply *r)
{
	struct smtpc_reply sr = reply_of(r->code, r->text, r->len);
	if (c->lmtp_tx != NULL) {
		c->cur = c->lmtp_cmd;
		if (r->code == 421) {
			conn_end(c, &sr, true);
			return;
		}
		if (verdict_of(X_DOT, r->code) == V_BAD) {
			fail(c, "4.4.2", "reply to the end of data makes no sense: " REPLY_FMT,
			     REPLY_ARGS(r));
			return;
		}
		on_lmtp(c, &sr);
		return;
	}
	if (c->exp_n == 0) {
		fail(c, "4.4.2", "unexpected reply from the server: " REPLY_FMT, REPLY_ARGS(r));
		return;
	}
	struct smtpc_exp e = c->exp[c->exp_head];
	c->exp_n--;
	c->exp_head = (c->exp_head + 1) % SMTPC_EXP_MAX;
	exp_compact(c);
	enum exp_kind kind = (enum exp_kind)e.kind;
	c->cur = (uint8_t)kind;
	if (e.tx != NULL)
		e.tx->nexp--;
	enum verdict v = verdict_of(kind, r->code);
	if (kind == X_QUIT) {
		conn_end(c, &sr, false);
		return;
	}
	if (r->code == 421 && kind != X_GREET) {
		/* RFC 5321 3.8: the server is closing; every open result
		 * gets its reason. */
		conn_end(c, &sr, true);
		return;
	}
	if (v == V_BAD) {
		fail(c, "4.4.2", "reply to %s makes no sense: " REPLY_FMT, kind_name[kind],
		     REPLY_ARGS(r));
		return;
	}
	switch (kind) {
	case X_GREET:
		if (v != V_OK) {
			fail(c, "4.4.0", "the server refused to talk: " REPLY_FMT, REPLY_ARGS(r));
			return;
		}
		enter(c, SMTPC_S_EHLO);
		return;
	case X_EHLO:
	case X_HELO:
		on_hello(c, kind, v, r);
		return;
	case X_STARTTLS:
		on_starttls(c, r);
		return;
	case X_RSET:
		if (v != V_OK)
			fail(c, "4.4.2", "the server refused RSET: " REPLY_FMT, REPLY_ARGS(r));
		return;
	default:
		/* e.tx may be handed back in there: not touched after it. */
		on_tx_reply(c, &e, v, &sr);
		return;
	}
}

/* One reply line without its line end. */
static void
on_line(struct smtpc *c, const char *p, size_t n)
{
	if (n > SMTPC_LINE_MAX) {
		fail(c, "4.4.2", "reply line too long from the server");
		return;
	}
	bool first = !c->reply.open;
	struct relay_reply_line line;
	int st = relay_reply_add(&c->reply, p, n, &line);
	if (st == RELAY_REPLY_BAD) {
		fail(c, "4.4.2", "malformed reply from the server: %.*s", (int)(n > 100 ? 100 : n),
		     p);
		return;
	}
	/* EHLO keywords: one per line after the first (RFC 5321 4.1.1.1). */
	if (!first && c->exp_n > 0 && c->lmtp_tx == NULL && c->exp[c->exp_head].kind == X_EHLO) {
		uint64_t size = 0;
		unsigned kw = smtpc_ehlo_keyword(line.text, line.len, &size) & ~c->ext_ignore;
		c->ext |= kw;
		if (kw == SMTPC_EXT_SIZE)
			c->size_max = size;
	}
	if (st == RELAY_REPLY_DONE) {
		on_reply(c, &c->reply);
		c->cur = SMTPC_CMD_NONE; /* later failures name no reply */
	}
}

/* Split p[0, n) into lines (LF, an optional CR before it dropped, as the
 * relay reads replies); a partial line goes into the carry. */
static void
read_lines(struct smtpc *c, const char *p, size_t n)
{
	while (n > 0 && c->state != SMTPC_S_CLOSED && c->state != SMTPC_S_TLS) {
		const char *nl = memchr(p, '\n', n);
		size_t k = nl != NULL ? (size_t)(nl - p) : n;
		const char *line = p;
		size_t len = k;
		if (c->carry_len > 0 || nl == NULL) {
			if (k > sizeof(c->carry) - c->carry_len) {
				fail(c, "4.4.2", "reply line too long from the server");
				return;
			}
			memcpy(c->carry + c->carry_len, p, k);
			c->carry_len += (uint32_t)k;
			if (nl == NULL)
				return;
			line = c->carry;
			len = c->carry_len;
			c->carry_len = 0;
		}
		p += k + 1;
		n -= k + 1;
		if (len > 0 && line[len - 1] == '\r')
			len--;
		on_line(c, line, len);
	}
	if (c->state == SMTPC_S_TLS)
		c->tls_dropped += n; /* after the 220 to STARTTLS: unread */
}

/* ---- API ---- */

static bool
text_ok(const char *p, size_t n, size_t max, bool space_ok)
{
	if (p == NULL || n > max)
		return false;
	/* Everything refused is <= ' ': eight octets at a time while none is
	 * (a word holds a byte below 0x21 when ((x - 0x21..) & ~x & 0x80..) is
	 * not 0), each octet of a word that holds one. */
	const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t x;
		memcpy(&x, p + i, 8);
		if (((x - 0x21 * ones) & ~x & high) == 0)
			continue;
		for (size_t j = i; j < i + 8; j++)
			if (p[j] == '\r' || p[j] == '\n' || p[j] == '\0' || (!space_ok && p[j] == ' '))
				return false;
	}
	for (; i < n; i++)
		if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0' || (!space_ok && p[i] == ' '))
			return false;
	return true;
}

int
smtpc_init(struct smtpc *c, const struct smtpc_conf *conf, struct smtpc_out *out,
           const struct smtpc_ops *ops, void *arg)
{
	size_t hl = conf->helo != NULL ? strlen(conf->helo) : 0;
	if (hl == 0 || !text_ok(conf->helo, hl, SMTPC_HELO_MAX, false) ||
	    conf->tls > SMTPC_TLS_VERIFY || out == NULL || out->cap < SMTPC_CMD_MAX ||
	    out->len > out->cap || ops == NULL || ops->event == NULL)
		return -EINVAL;
	memset(c, 0, offsetof(struct smtpc, reply));
	c->reply.open = false; /* its text is written before it is read */
	c->reply.len = 0;
	memcpy(c->helo, conf->helo, hl + 1);
	c->helo_len = hl;
	c->lmtp = conf->lmtp;
	c->tls = conf->tls;
	c->ext_ignore = conf->ext_ignore;
	c->size_max = 0;
	c->tls_dropped = 0;
	c->ops = ops;
	c->arg = arg;
	c->out = out;
	c->state = SMTPC_S_GREETING;
	exp_push(c, X_GREET, NULL, 0);
	return 0;
}

static int
entry(const struct smtpc *c)
{
	if (c->in_cb > 0)
		return -EDEADLK;
	if (c->state == SMTPC_S_CLOSED)
		return -EPIPE;
	return 0;
}

int
smtpc_pump(struct smtpc *c)
{
	int rc = entry(c);
	if (rc < 0)
		return rc;
	emit_all(c);
	if (c->state == SMTPC_S_CLOSED)
		return -EPIPE;
	return c->outfull ? -ENOBUFS : 0;
}

int
smtpc_feed(struct smtpc *c, const char *p, size_t n)
{
	int rc = entry(c);
	if (rc < 0)
		return rc;
	if (c->state == SMTPC_S_TLS) {
		c->tls_dropped += n; /* plaintext after the 220 to STARTTLS */
		return 0;
	}
	read_lines(c, p, n);
	if (c->state == SMTPC_S_TLS) {
		c->carry_len = 0;
		c->reply.open = false;
	}
	return smtpc_pump(c);
}

/* The body is one buffer, or pieces that add up to body_len. */
static bool
body_ok(const struct smtpc_tx *tx)
{
	if (tx->npieces == 0)
		return tx->body != NULL || tx->body_len == 0;
	if (tx->pieces == NULL || tx->body != NULL)
		return false;
	size_t sum = 0;
	for (uint32_t i = 0; i < tx->npieces; i++) {
		const struct smtpc_piece *pc = &tx->pieces[i];
		if ((pc->p == NULL && pc->len > 0) || pc->len > SIZE_MAX - sum)
			return false;
		sum += pc->len;
	}
	return sum == tx->body_len;
}

int
smtpc_submit(struct smtpc *c, struct smtpc_tx *tx)
{
	if (c->state == SMTPC_S_CLOSED || c->state == SMTPC_S_QUIT || c->quit_wanted)
		return -EPIPE;
	if (c->ntx == SMTPC_TX_MAX)
		return -EBUSY;
	if (tx->nrcpt == 0 || tx->rcpt == NULL || !body_ok(tx) ||
	    !text_ok(tx->from_len > 0 ? tx->from : "", tx->from_len, SMTPC_ADDR_MAX, true))
		return -EINVAL;
	for (uint32_t k = 0; k < tx->nrcpt; k++)
		if (tx->rcpt[k].len == 0 ||
		    !text_ok(tx->rcpt[k].addr, tx->rcpt[k].len, SMTPC_ADDR_MAX, true))
			return -EINVAL;
	for (uint32_t k = 0; k < tx->nrcpt; k++)
		tx->rcpt[k].st = R_PENDING;
	tx->next = NULL;
	tx->nexp = tx->nacc = tx->rcpt_out = 0;
	tx->nleft = tx->nrcpt;
	tx->phase = P_QUEUED;
	tx->mail_failed = tx->mail_ok = false;
	struct smtpc_tx **pp = &c->txs;
	while (*pp != NULL)
		pp = &(*pp)->next;
	*pp = tx;
	c->ntx++;
	return 0;
}

int
smtpc_body_sent(struct smtpc *c)
{
	int rc = entry(c);
	if (rc < 0)
		return rc;
	if (!c->body_pending)
		return -EINVAL;
	c->body_pending = false;
	return smtpc_pump(c);
}

int
smtpc_tls_done(struct smtpc *c, bool ok)
{
	int rc = entry(c);
	if (rc < 0)
		return rc;
	if (c->state != SMTPC_S_TLS)
		return -EINVAL;
	if (!ok) {
		if (tls_required(c))
			fail(c, "4.7.4", "TLS is required but the TLS handshake failed");
		else
			fail(c, "4.7.5", "the TLS handshake failed");
		return -EPIPE;
	}
	c->tls_active = true;
	c->ext = 0; /* RFC 3207 4.2: forget what the plaintext EHLO said */
	c->size_max = 0;
	enter(c, SMTPC_S_EHLO);
	return smtpc_pump(c);
}

int
smtpc_tls_failed(struct smtpc *c, const char *why)
{
	int rc = entry(c);
	if (rc < 0)
		return rc;
	if (c->state != SMTPC_S_TLS)
		return -EINVAL;
	fail(c, tls_required(c) ? "4.7.4" : "4.7.5", "%s",
	     why != NULL ? why : "the TLS handshake failed");
	return -EPIPE;
}

const char *
smtpc_waiting_for(const struct smtpc *c)
{
	if (c->lmtp_tx != NULL)
		return "end of data";
	if (c->exp_n == 0)
		return c->state == SMTPC_S_TLS ? "the TLS handshake" : "a reply";
	return kind_name[c->exp[c->exp_head].kind];
}

int
smtpc_quit(struct smtpc *c)
{
	if (c->state == SMTPC_S_CLOSED)
		return -EPIPE;
	c->quit_wanted = true;
	return 0;
}

int
smtpc_quit_pipelined(struct smtpc *c)
{
	int rc = smtpc_quit(c);
	if (rc == 0)
		c->quit_early = true;
	return rc;
}

bool
smtpc_can_start(const struct smtpc *c)
{
	if (c->state != SMTPC_S_READY || c->quit_wanted || c->ntx == SMTPC_TX_MAX ||
	    c->body_pending || c->outfull || c->emit != NULL || tx_unstarted(c))
		return false;
	/* What emit_ready() needs: room for the MAIL, and for a RSET in
	 * front of it. In lock-step the RSET is written now and the MAIL
	 * after its reply: still true, or the RSET would wait forever. */
	if (c->ext & SMTPC_EXT_PIPELINING)
		return c->exp_n + (c->need_rset ? 2u : 1u) <= SMTPC_EXP_MAX;
	return c->exp_n == 0;
}

uint64_t
smtpc_tls_dropped(const struct smtpc *c)
{
	return c->tls_dropped;
}

void
smtpc_abort(struct smtpc *c, const char *why)
{
	if (c->in_cb > 0 || c->state == SMTPC_S_CLOSED)
		return;
	/* After a pipelined QUIT results may still be due: those fail. */
	if ((c->state == SMTPC_S_QUIT && c->txs == NULL && c->lmtp_tx == NULL) ||
	    (c->state == SMTPC_S_READY && c->txs == NULL && c->exp_n == 0)) {
		struct smtpc_reply r = {0, "", 0, "", 0};
		conn_end(c, &r, false);
		return;
	}
	fail(c, "4.4.2", "%s", why != NULL ? why : "connection lost");
}

unsigned
smtpc_status(const struct smtpc *c)
{
	unsigned st = 0;
	if (c->state == SMTPC_S_CLOSED)
		return SMTPC_ST_CLOSE;
	if (c->outfull)
		st |= SMTPC_ST_OUTFULL;
	if (c->body_pending)
		st |= SMTPC_ST_BODY;
	if (c->state == SMTPC_S_TLS)
		st |= SMTPC_ST_TLS;
	if (c->exp_n > 0 || c->lmtp_tx != NULL)
		st |= SMTPC_ST_WAIT;
	if (c->state == SMTPC_S_READY && !c->quit_wanted) {
		if (c->ntx < SMTPC_TX_MAX)
			st |= SMTPC_ST_READY;
		if (c->txs == NULL && c->exp_n == 0)
			st |= SMTPC_ST_IDLE;
	}
	return st;
}

enum smtpc_state
smtpc_state(const struct smtpc *c)
{
	return (enum smtpc_state)c->state;
}

unsigned
smtpc_ext(const struct smtpc *c)
{
	return c->ext;
}

uint64_t
smtpc_size_max(const struct smtpc *c)
{
	return c->size_max;
}
