/*
 * smtp_internal.h - declarations shared by engine/smtp_*.c (and their unit
 * tests and fuzzers), not part of the public SMTP core API in smtp.h.
 *
 * Ownership rules
 *  - Everything here works on views into caller-owned memory: nothing is
 *    allocated, copied or kept past the call unless stated (the body decoder
 *    keeps only its small state in struct smtp_body).
 */
#ifndef RINGMX_SMTP_INTERNAL_H
#define RINGMX_SMTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "ringmx/smtp.h"

/*
 * Index of the first CR or LF in p[0..n), or n. Both the command reader and
 * the body decoder spend nearly all their time here, so it looks at 16 bytes
 * per step (SSE2, baseline on x86-64) or 8 (SWAR) and never reads past n.
 */
static inline size_t
smtp_scan_crlf(const char *p, size_t n)
{
	size_t i = 0;
#ifdef __SSE2__
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	for (; i + 16 <= n; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
		unsigned m = (unsigned)_mm_movemask_epi8(
			_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
		if (m)
			return i + (size_t)__builtin_ctz(m);
	}
#endif
	const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	for (; i + 8 <= n; i += 8) {
		uint64_t v, a, b;
		memcpy(&v, p + i, sizeof v);
		a = v ^ (ones * '\r');
		b = v ^ (ones * '\n');
		/* Exact "has a zero byte" test; the byte loop below finds which. */
		if ((((a - ones) & ~a) | ((b - ones) & ~b)) & highs)
			break;
	}
	for (; i < n; i++)
		if (p[i] == '\r' || p[i] == '\n')
			break;
	return i;
}

/* ---- smtp_body.c: streaming DATA/BDAT content decoder ---- */

enum smtp_body_mode {
	SMTP_BODY_DATA = 0, /* dot-stuffed, ends at <CRLF>.<CRLF> */
	SMTP_BODY_BDAT = 1, /* counted chunks: no dot handling, no terminator */
};

/* struct smtp_body.flags. Any FAILED bit stops emitting: the message will
 * be refused at its end, so there is no point in feeding the sink. */
enum {
	SMTP_BODY_F_BARE_CR = 1u << 0,  /* refuse: 550 5.5.2 bare <CR> */
	SMTP_BODY_F_BARE_LF = 1u << 1,  /* refuse: 550 5.5.2 bare <LF> (REJECT policy) */
	SMTP_BODY_F_TOO_BIG = 1u << 2,  /* refuse: 552 5.3.4 */
	SMTP_BODY_F_SINK_ERR = 1u << 3, /* refuse: 451 4.3.0 */
	SMTP_BODY_F_SAW_LF = 1u << 4,   /* a bare LF was normalized (counted once) */
	SMTP_BODY_F_HOPS = 1u << 5,     /* refuse: 554 5.4.6 more Received: than hop_limit */
};
#define SMTP_BODY_F_FAILED                                                                         \
	(SMTP_BODY_F_BARE_CR | SMTP_BODY_F_BARE_LF | SMTP_BODY_F_TOO_BIG | SMTP_BODY_F_SINK_ERR |  \
	 SMTP_BODY_F_HOPS)

/* Where decoded content goes and the policy it is held to. */
struct smtp_body_env {
	/* Views into the fed input (or static "\r\n"); 0 or -errno. */
	int (*emit)(void *ctx, const char *p, size_t n);
	void *ctx;
	uint64_t size_limit; /* 0 = unlimited */
	bool reject_bare_lf;
	struct ringmx_stats *stats; /* long_lines, bare_lf, bare_cr */
	unsigned hop_limit;         /* Received: fields allowed; 0 = unlimited */
};

void smtp_body_init(struct smtp_body *b, enum smtp_body_mode mode);
/* Decode p[0..n). Returns bytes consumed: n, or in DATA mode up to and
 * including the LF of the terminating <CRLF>.<CRLF> (smtp_body_done()). */
size_t smtp_body_feed(struct smtp_body *b, const struct smtp_body_env *env, const char *p,
		      size_t n);
bool smtp_body_done(const struct smtp_body *b);
/* BDAT LAST: a CR still held is a bare CR; content not ending in CRLF gets
 * one. */
void smtp_body_finish(struct smtp_body *b, const struct smtp_body_env *env);

/* ---- smtp_parse.c: command lines and their arguments ---- */

enum smtp_cmd_id {
	SMTP_CMD_HELO,
	SMTP_CMD_EHLO,
	SMTP_CMD_MAIL,
	SMTP_CMD_RCPT,
	SMTP_CMD_DATA,
	SMTP_CMD_BDAT,
	SMTP_CMD_RSET,
	SMTP_CMD_NOOP,
	SMTP_CMD_QUIT,
	SMTP_CMD_VRFY,
	SMTP_CMD_EXPN,
	SMTP_CMD_HELP,
	SMTP_CMD_STARTTLS,
};

/* Per-command flags, after Postfix's smtpd_cmd_table. */
enum {
	SMTP_CMDF_LIMIT = 1u << 0, /* junk: counts toward junk_limit */
	SMTP_CMDF_LAST = 1u << 1,  /* RFC 2920: must end a pipelining group */
	SMTP_CMDF_LONG = 1u << 2,  /* may use SMTP_PARAM_LINE_MAX (MAIL, RCPT) */
	SMTP_CMDF_SYNC = 1u << 3,  /* LAST enforced: 554 5.5.0 if input follows */
};

/* One command line (without CRLF), as views into the line. */
struct smtp_cmdline {
	const char *verb;
	size_t verb_len;
	const char *arg; /* after "VERB SP", trailing spaces removed */
	size_t arg_len;
	bool more; /* further input follows this line in the same feed */
};

typedef void smtp_cmd_fn(struct smtp_session *s, const struct smtp_cmdline *c);

struct smtp_cmd_def {
	const char *name;
	uint8_t len;
	uint8_t id; /* enum smtp_cmd_id */
	uint8_t flags;
	smtp_cmd_fn *handler;
};

void smtp_cmd_split(const char *line, size_t len, struct smtp_cmdline *out);
/* NULL for an unknown verb. */
const struct smtp_cmd_def *smtp_cmd_lookup(const char *verb, size_t len);

/* "FROM:<path> params" / "TO:<path> params": 0 and views, or -1. kw is
 * matched case-insensitively; spaces after the colon are tolerated. */
int smtp_parse_path_arg(const char *a, size_t n, const char *kw, size_t kwlen, const char **path,
			size_t *path_len, const char **params, size_t *params_len);

struct smtp_param {
	const char *key;
	size_t key_len;
	const char *val; /* NULL when there is no "=value" */
	size_t val_len;
};
/* Next esmtp-param of a MAIL/RCPT tail: 1 (one in *out), 0 (end) or -1
 * (syntax). *p and *n advance. */
int smtp_param_next(const char **p, size_t *n, struct smtp_param *out);

/* 1..20 ASCII digits without overflow: 0 and *v, or -1. */
int smtp_parse_u64(const char *p, size_t n, uint64_t *v);
/* "count [LAST]": 0 or -1. */
int smtp_parse_bdat(const char *p, size_t n, uint64_t *count, bool *last);
/* ASCII case-insensitive equality of n bytes (locale-free). */
bool smtp_ieq(const char *a, const char *b, size_t n);

/* The lines the session gives hooks->log (smtp_session.c; test_smtp_log.c
 * calls them directly): a transaction's end, smtpd's line and, when it was
 * sent (queued), qmgr's; a MAIL or RCPT refusal. text is the reply, CRLF
 * included. Nothing without a log hook. */
void smtp_log_message(struct smtp_session *s, const char *text, size_t len, bool sent);
void smtp_log_reject(struct smtp_session *s, const char *verb, const char *text, size_t len,
		     const char *addr, size_t addr_len);

/* Command handlers (smtp_session.c), referenced by the verb table. */
smtp_cmd_fn smtp_cmd_helo, smtp_cmd_ehlo, smtp_cmd_mail, smtp_cmd_rcpt, smtp_cmd_data,
	smtp_cmd_bdat, smtp_cmd_rset, smtp_cmd_noop, smtp_cmd_quit, smtp_cmd_vrfy, smtp_cmd_expn,
	smtp_cmd_help, smtp_cmd_starttls;

#endif
