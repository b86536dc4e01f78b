/*
 * smtp_body.c - streaming decoder for message content (DATA and BDAT).
 *
 * DATA content is dot-stuffed and ends only at <CRLF>.<CRLF> (RFC 5321
 * 4.1.1.4, 4.5.2). Everything that merely looks like an end (bare LF, bare
 * CR, "\r\n.\n", ...) is content or a policy violation, never an end: the
 * difference between this reader and the next hop's is what SMTP smuggling
 * (CVE-2023-51764) exploits. BDAT content is counted by the caller; this
 * decoder then only applies the bare CR/LF policy, size limit and line count.
 *
 * Ownership rules
 *  - The decoder owns nothing but struct smtp_body. Emitted spans are views
 *    into the fed input, or the static "\r\n" (normalized bare LF, a CRLF
 *    whose CR arrived in the previous feed); they are valid during emit only.
 *  - A CR at the end of a feed is held as state, never emitted early: only
 *    the next byte tells whether it ends a line or is a bare CR.
 *
 * Mail loops: the header section (up to the first empty line) of the
 * decoded content is scanned for Received: fields as it passes through
 * emit(), a few state bits in struct smtp_body, so the count is the same
 * whatever the feed boundaries and nothing is copied. Continuation lines
 * start with white space and never match.
 *
 * Invariants: the only bytes not emitted from content are the stuffing dot,
 * the terminator and a held CR (emitted as part of the static CRLF). Once a
 * FAILED flag is set nothing more is emitted, but the input is still scanned
 * for the real end so that exactly one reply follows it, and size still
 * counts the decoded octets.
 */
#include "smtp_internal.h"

enum body_state {
	ST_BOL = 0, /* after a real CRLF (or at start of DATA): a dot is special */
	ST_MID,     /* inside a line */
	ST_CR,      /* a CR ended the previous feed */
	ST_DOT,     /* a line-leading dot was dropped */
	ST_DOTCR,   /* "." then CR: LF next would end the message */
	ST_END,     /* <CRLF>.<CRLF> seen */
};

/* RFC 5321 4.5.3.1.6 counts the CRLF in the 1000. */
#define BODY_LINE_CONTENT_MAX (SMTP_TEXT_LINE_MAX - 2)

static const char crlf[2] = {'\r', '\n'};

void
smtp_body_init(struct smtp_body *b, enum smtp_body_mode mode)
{
	memset(b, 0, sizeof *b);
	b->mode = (uint8_t)mode;
	b->st = mode == SMTP_BODY_DATA ? ST_BOL : ST_MID;
}

bool
smtp_body_done(const struct smtp_body *b)
{
	return b->st == ST_END;
}

/* size counts decoded content whether or not it reaches the sink, so the
 * size limit and the logged size do not depend on feed boundaries. */
static void
account(struct smtp_body *b, const struct smtp_body_env *env, size_t n)
{
	b->size += n;
	if (env->size_limit != 0 && b->size > env->size_limit)
		b->flags |= SMTP_BODY_F_TOO_BIG;
}

/* Header scan states (hdr_st); HDR_BOL is 0 so smtp_body_init() starts there. */
enum hdr_state {
	HDR_BOL = 0, /* at the start of a header line */
	HDR_BOL_CR,  /* a CR at the start of a line: with LF, the header section ends */
	HDR_NAME,    /* matching "received" (hdr_idx octets so far) */
	HDR_COLON,   /* "received" matched: optional WSP (RFC 5322 obs-optional), ':' */
	HDR_SKIP,    /* the rest of the line is not a Received: field name */
	HDR_DONE,    /* in the body: no more scanning */
};

static const char received[] = "received";
#define RECEIVED_LEN (sizeof received - 1)

static void
hop_seen(struct smtp_body *b, const struct smtp_body_env *env)
{
	if (b->hops < UINT32_MAX)
		b->hops++;
	if (env->hop_limit != 0 && b->hops > env->hop_limit)
		b->flags |= SMTP_BODY_F_HOPS;
}

/* One step of the header scan for octet c (not for HDR_SKIP or HDR_DONE). */
static uint8_t
hdr_step(struct smtp_body *b, const struct smtp_body_env *env, unsigned char c)
{
	switch (b->hdr_st) {
	case HDR_BOL:
		if (c == '\r')
			return HDR_BOL_CR;
		if (c == '\n')
			return HDR_DONE;
		b->hdr_idx = 1;
		return (c | 0x20) == received[0] ? HDR_NAME : HDR_SKIP;
	case HDR_BOL_CR:
		return c == '\n' ? HDR_DONE : HDR_SKIP;
	case HDR_NAME:
		if ((c | 0x20) != received[b->hdr_idx])
			return c == '\n' ? HDR_BOL : HDR_SKIP;
		return ++b->hdr_idx == RECEIVED_LEN ? HDR_COLON : HDR_NAME;
	default: /* HDR_COLON */
		if (c == ' ' || c == '\t')
			return HDR_COLON;
		if (c == ':')
			hop_seen(b, env);
		return c == '\n' ? HDR_BOL : HDR_SKIP;
	}
}

/* Decoded content p[0..n), in order, while still in the header section. */
static void
hdr_scan(struct smtp_body *b, const struct smtp_body_env *env, const char *p, size_t n)
{
	size_t i = 0;

	while (i < n && b->hdr_st != HDR_DONE) {
		if (b->hdr_st == HDR_SKIP) {
			const char *lf = memchr(p + i, '\n', n - i);

			if (lf == NULL)
				return;
			i = (size_t)(lf - p) + 1;
			b->hdr_st = HDR_BOL;
			continue;
		}
		b->hdr_st = hdr_step(b, env, (unsigned char)p[i++]);
	}
}

static void
emit(struct smtp_body *b, const struct smtp_body_env *env, const char *p, size_t n)
{
	if (n == 0)
		return;
	account(b, env, n);
	if (b->hdr_st != HDR_DONE)
		hdr_scan(b, env, p, n);
	if (b->flags & SMTP_BODY_F_FAILED)
		return;
	if (env->emit(env->ctx, p, n) < 0)
		b->flags |= SMTP_BODY_F_SINK_ERR;
}

/* Long lines are accepted (RFC 5322 content does not change meaning with
 * length) but counted once per line so operators can see them. */
static inline void
line_add(struct smtp_body *b, const struct smtp_body_env *env, size_t k)
{
	uint64_t after = (uint64_t)b->line_len + k;

	if (b->line_len <= BODY_LINE_CONTENT_MAX && after > BODY_LINE_CONTENT_MAX)
		env->stats->long_lines++;
	b->line_len = after > UINT32_MAX ? UINT32_MAX : (uint32_t)after;
}

static void
bare_cr(struct smtp_body *b, const struct smtp_body_env *env)
{
	if (!(b->flags & SMTP_BODY_F_BARE_CR))
		env->stats->bare_cr++;
	b->flags |= SMTP_BODY_F_BARE_CR;
}

static void
bare_lf(struct smtp_body *b, const struct smtp_body_env *env)
{
	if (!(b->flags & (SMTP_BODY_F_SAW_LF | SMTP_BODY_F_BARE_LF)))
		env->stats->bare_lf++;
	if (env->reject_bare_lf) {
		b->flags |= SMTP_BODY_F_BARE_LF;
	} else {
		b->flags |= SMTP_BODY_F_SAW_LF;
		emit(b, env, crlf, sizeof crlf);
	}
	/* Stored as a line end, but it does not start a line for dot
	 * purposes: the state stays ST_MID. */
	b->line_len = 0;
}

size_t
smtp_body_feed(struct smtp_body *b, const struct smtp_body_env *env, const char *p, size_t n)
{
	const uint8_t bol = b->mode == SMTP_BODY_DATA ? ST_BOL : ST_MID;
	size_t i = 0, span = 0; /* p[span..i) is decoded content not yet emitted */

	while (i < n) {
		switch (b->st) {
		case ST_MID: {
			size_t k = smtp_scan_crlf(p + i, n - i);

			line_add(b, env, k);
			i += k;
			if (i == n)
				break;
			if (p[i] == '\r') {
				if (i + 1 == n) {
					emit(b, env, p + span, i - span);
					span = ++i;
					b->st = ST_CR;
				} else if (p[i + 1] == '\n') {
					/* Fast path: the CRLF stays inside the span. */
					i += 2;
					b->line_len = 0;
					b->st = bol;
				} else {
					bare_cr(b, env);
					line_add(b, env, 1);
					i++;
				}
			} else {
				emit(b, env, p + span, i - span);
				span = ++i;
				bare_lf(b, env);
			}
			break;
		}
		case ST_CR:
			/* Only reached at the start of a feed: span == i. */
			if (p[i] == '\n') {
				emit(b, env, crlf, sizeof crlf);
				span = ++i;
				b->line_len = 0;
				b->st = bol;
			} else {
				bare_cr(b, env);
				line_add(b, env, 1);
				account(b, env, 1); /* the held CR */
				/* Inside a feed this CR would have been part of
				 * an emitted span: the header scan sees it too. */
				if (b->hdr_st != HDR_DONE)
					hdr_scan(b, env, crlf, 1);
				b->st = ST_MID;
			}
			break;
		case ST_BOL:
			if (p[i] == '.') {
				emit(b, env, p + span, i - span);
				span = ++i;
				line_add(b, env, 1);
				b->st = ST_DOT;
			} else {
				b->st = ST_MID;
			}
			break;
		case ST_DOT:
			if (p[i] == '\r') {
				/* Held: with an LF next this is the end. */
				span = ++i;
				b->st = ST_DOTCR;
			} else {
				/* RFC 5321 4.5.2: the leading dot is dropped. */
				b->st = ST_MID;
			}
			break;
		case ST_DOTCR:
			if (p[i] == '\n') {
				b->st = ST_END;
				return i + 1;
			}
			/* ".\r" + other: the CR is bare; the message is refused,
			 * so the held CR need not be emitted. */
			bare_cr(b, env);
			line_add(b, env, 1);
			account(b, env, 1);
			b->st = ST_MID;
			break;
		default: /* ST_END: the caller must not feed past the end */
			return i;
		}
	}
	if (b->st != ST_END)
		emit(b, env, p + span, n - span);
	return n;
}

void
smtp_body_finish(struct smtp_body *b, const struct smtp_body_env *env)
{
	if (b->st == ST_CR) {
		bare_cr(b, env);
		account(b, env, 1);
		b->line_len++;
		b->st = ST_MID;
	}
	if (b->flags & SMTP_BODY_F_FAILED)
		return;
	/* line_len == 0 with content means the last thing stored was a CRLF.
	 * The added CRLF is not held to the size limit: it is ours. */
	if (b->size == 0 || b->line_len != 0) {
		if (env->emit(env->ctx, crlf, sizeof crlf) < 0)
			b->flags |= SMTP_BODY_F_SINK_ERR;
		b->size += sizeof crlf;
	}
}
