/*
 * dsn.c - delivery status notifications (RFC 3464 inside an RFC 6522
 * multipart/report; RFC 6533 for SMTPUTF8 originals); see
 * include/ringmx/dsn.h and docs/bounces.md.
 *
 * Owner: the relay module. Pure: writes only into the caller's buffer, no
 * allocation, no I/O, no global state; safe from any thread.
 *
 * Invariants of every report built:
 *   - lines end in CRLF, and no CR or LF appears anywhere else;
 *   - no line is longer than DSN_LINE_MAX (998) bytes;
 *   - text copied from the envelope, the remote reply or the configuration
 *     into a header field is a run of "words" separated by SP or folds:
 *     every control byte (NUL, CR, LF, TAB, ...) is whitespace, so a reply
 *     holding "\r\nBcc: x" becomes "Bcc: x" inside the same field;
 *   - the boundary occurs only in the Content-Type parameter and the four
 *     delimiter lines (checked on the finished output, see pick_boundary());
 *   - the length never exceeds dsn_size_bound(), which is computed from the
 *     same per-piece maxima the writers below obey.
 */
#include "ringmx/dsn.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define DSN_LINE_MAX 998 /* RFC 5322 2.1.1, without the CRLF */
/* Words are split (with a fold) from this column on, so that the one or
 * two closing bytes a caller appends (">", ">:") still fit in a line. A
 * UTF-8 continuation byte may run on to DSN_SPLIT_HARD, so a character is
 * not cut in two. */
#define DSN_SPLIT_COL  980
#define DSN_SPLIT_HARD 986
#define DSN_SOFT_COL   78  /* prefer folding at whitespace from here */
#define DSN_HOST_MAX   255 /* hostname, remote MTA: a DNS name fits */
#define DSN_QID_MAX    64
#define DSN_STATUS_MAX 16
#define DSN_DATE_LEN   31 /* "Sat, 28 Nov 2026 12:53:05 +0000" */
#define DSN_BOUNDARY_LEN 21 /* "=_rmx" + 16 hex digits */

/* Everything that is not copied text: the fixed words of the headers and
 * the three part headers, four hostnames, the queue id twice, three dates,
 * the boundary five times. Counted generously; dsn_build() asserts its
 * result against the bound, and the tests drive it to the extremes. */
#define DSN_FIXED_BOUND (2048 + 4 * DSN_HOST_MAX + 2 * DSN_QID_MAX + 5 * DSN_BOUNDARY_LEN)
/* Fixed words per recipient (both parts) plus two remote MTA names, a
 * status twice and one date. */
#define DSN_RCPT_FIXED_BOUND (256 + 2 * DSN_HOST_MAX + 2 * DSN_STATUS_MAX + DSN_DATE_LEN)

/* ---- output ---- */

/* A bounded writer: past cap it keeps counting but stops storing, and
 * the build then fails as a whole. col is the current line's length. */
struct out {
	char *p;
	size_t cap;
	size_t len;
	size_t col;
	bool utf8; /* keep bytes >= 0x80 in copied text (else '?') */
};

static void
out_bytes(struct out *o, const char *s, size_t n)
{
	if (o->len <= o->cap && o->cap - o->len >= n)
		memcpy(o->p + o->len, s, n);
	o->len += n;
	o->col += n;
}

static void
out_str(struct out *o, const char *s)
{
	out_bytes(o, s, strlen(s));
}

static void
out_crlf(struct out *o)
{
	assert(o->col <= DSN_LINE_MAX);
	out_bytes(o, "\r\n", 2);
	o->col = 0;
}

/* A whole fixed line. */
static void
out_line(struct out *o, const char *s)
{
	out_str(o, s);
	out_crlf(o);
}

/* A continuation: CRLF SP. Header unfolding removes the CRLF only. */
static void
out_fold(struct out *o)
{
	out_crlf(o);
	out_bytes(o, " ", 1);
}

static bool
is_space(unsigned char c)
{
	return c <= 0x20 || c == 0x7f;
}

/* One byte of a word: split the line when it is full, hide 8-bit bytes
 * unless the report is SMTPUTF8. Never emits whitespace or a control. */
static void
out_word_byte(struct out *o, unsigned char c)
{
	bool cont = c >= 0x80 && c < 0xc0;
	assert(!is_space(c));
	if (o->col >= DSN_SPLIT_HARD || (o->col >= DSN_SPLIT_COL && !cont))
		out_fold(o);
	char b = c >= 0x80 && !o->utf8 ? '?' : (char)c;
	out_bytes(o, &b, 1);
}

/* Untrusted text as the rest of a header field (or a paragraph line):
 * whitespace runs, controls included, become one SP or a fold before a
 * word that would pass DSN_SOFT_COL; words longer than a line are split.
 * Output <= fold_bound(n): each whitespace run (>= 1 byte) gives at most
 * 3 bytes, each word byte 1, and a split needs >= DSN_SPLIT_COL - 1 word
 * bytes since the last line start. */
static void
out_text(struct out *o, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	bool first = true;

	while (i < n) {
		while (i < n && is_space(p[i]))
			i++;
		size_t w = i;
		while (w < n && !is_space(p[w]))
			w++;
		if (w == i)
			break;
		if (!first) {
			if (o->col > 1 && o->col + 1 + (w - i) > DSN_SOFT_COL)
				out_fold(o);
			else
				out_bytes(o, " ", 1);
		}
		first = false;
		for (; i < w; i++)
			out_word_byte(o, p[i]);
	}
}

static size_t
fold_bound(size_t n)
{
	return 3 * n + 3 * (n / (DSN_SPLIT_COL / 2)) + 3;
}

/* A trusted short token (hostname, queue id, status): anything that is not
 * a printable ASCII byte becomes '?', and it is cut at max bytes, so it can
 * never fold nor break the line limit. */
static void
out_token(struct out *o, const char *s, size_t max)
{
	size_t n = strnlen(s, max);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char b = is_space(c) || c >= 0x80 ? '?' : (char)c;
		out_bytes(o, &b, 1);
	}
}

/* RFC 5322 3.3 date-time in UTC; clamped to years 1970..9999 so it is
 * always DSN_DATE_LEN bytes. */
static void
out_date(struct out *o, int64_t t)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	char buf[64];
	struct tm tm;

	if (t < 0)
		t = 0;
	if (t > 253402300799) /* 9999-12-31 23:59:59 */
		t = 253402300799;
	time_t tt = (time_t)t;
	if (gmtime_r(&tt, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	int n = snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d +0000",
			 days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
			 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	assert(n == DSN_DATE_LEN);
	out_bytes(o, buf, (size_t)n);
}

/* ---- inputs ---- */

static bool
has_8bit(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

/* RFC 3463 status-code "class.subject.detail", class 2, 4 or 5, subject
 * and detail 1-3 digits. A bad one is reported as 5.0.0. */
static bool
status_ok(const char *s)
{
	if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	s += 2;
	for (int part = 0; part < 2; part++) {
		int d = 0;
		while (*s >= '0' && *s <= '9' && d < 4) {
			s++;
			d++;
		}
		if (d < 1 || d > 3)
			return false;
		if (part == 0 && *s++ != '.')
			return false;
	}
	return *s == '\0';
}

static size_t
diag_len(const struct dsn_rcpt *r)
{
	return r->diag == NULL ? 0 : r->diag_len < DSN_DIAG_MAX ? r->diag_len : DSN_DIAG_MAX;
}

static bool
info_valid(const struct dsn_info *info)
{
	if (info == NULL || info->rcpts == NULL || info->nrcpt == 0 ||
	    info->nrcpt > DSN_RCPTS_MAX || info->sender == NULL || info->sender_len == 0 ||
	    info->hostname == NULL || info->hostname[0] == '\0' || info->qid == NULL ||
	    (info->msg == NULL && info->msg_len != 0))
		return false;
	for (size_t i = 0; i < info->nrcpt; i++)
		if (info->rcpts[i].addr == NULL && info->rcpts[i].addr_len != 0)
			return false;
	return true;
}

/* The part of the original that is quoted: its header section (without
 * the empty line), the whole message when there is no empty line, cut at
 * DSN_HEADERS_MAX at the last line end before it (or at the limit itself
 * when no line ends there). */
static size_t
quoted_len(const uint8_t *m, size_t n)
{
	size_t i = 0, end = n;
	while (i < n) {
		const uint8_t *lf = memchr(m + i, '\n', n - i);
		size_t line = lf == NULL ? n - i : (size_t)(lf - (m + i));
		if (line == 0 || (line == 1 && m[i] == '\r')) {
			end = i;
			break;
		}
		i += line + (lf != NULL);
	}
	if (end <= DSN_HEADERS_MAX)
		return end;
	for (size_t k = DSN_HEADERS_MAX; k > 0; k--)
		if (m[k - 1] == '\n')
			return k;
	return DSN_HEADERS_MAX;
}

/* The quoted header lines as body text: bare LF and bare CR end a line,
 * NUL becomes '?', and a line reaching DSN_SPLIT_COL is continued with
 * CRLF SP (still one header field to a reader). Ends with CRLF.
 * Output <= quoted_bound(n): each byte gives at most 2 (a bare CR or LF
 * becomes CRLF), and a split needs DSN_SPLIT_COL - 1 bytes of its line. */
static void
out_quoted(struct out *o, const uint8_t *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t c = m[i];
		if (c == '\r' && i + 1 < n && m[i + 1] == '\n')
			continue; /* the LF ends the line */
		if (c == '\r' || c == '\n') {
			out_crlf(o);
			continue;
		}
		if (o->col >= DSN_SPLIT_COL)
			out_fold(o);
		char b = c == '\0' ? '?' : (char)c;
		out_bytes(o, &b, 1);
	}
	if (o->col > 0)
		out_crlf(o);
}

static size_t
quoted_bound(size_t n)
{
	return 2 * n + 3 * (n / (DSN_SPLIT_COL / 2)) + 4;
}

/* ---- the boundary ---- */

static uint64_t
fnv1a(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

/* splitmix64's finaliser: a bijection, so distinct inputs give distinct
 * boundaries. */
static uint64_t
mix64(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static bool
contains(const void *hay, size_t n, const char *needle)
{
	return hay != NULL && memmem(hay, n, needle, DSN_BOUNDARY_LEN) != NULL;
}

/* Does candidate b occur in any text the report copies? Every run of
 * boundary characters ([=_a-z0-9]) in the output is either fixed text
 * (which never holds "=_rmx") or a verbatim run of one of these inputs,
 * because copying only replaces bytes with SP, '?' or folds, none of
 * which is a boundary character. */
static bool
boundary_used(const struct dsn_info *info, size_t qlen, const char *b)
{
	if (contains(info->msg, qlen, b) || contains(info->sender, info->sender_len, b) ||
	    contains(info->hostname, strlen(info->hostname), b) ||
	    contains(info->qid, strlen(info->qid), b))
		return true;
	for (size_t i = 0; i < info->nrcpt; i++) {
		const struct dsn_rcpt *r = &info->rcpts[i];
		if (contains(r->addr, r->addr_len, b) || contains(r->diag, diag_len(r), b) ||
		    (r->remote_mta != NULL && contains(r->remote_mta, strlen(r->remote_mta), b)) ||
		    (r->status != NULL && contains(r->status, strlen(r->status), b)))
			return true;
	}
	return false;
}

/* The seed: the queue id, the time and the copied texts, so a sender
 * cannot predict the first candidate. */
static uint64_t
boundary_seed(const struct dsn_info *info, size_t qlen)
{
	uint64_t h = 0xcbf29ce484222325ull;
	h = fnv1a(h, info->qid, strlen(info->qid));
	h = fnv1a(h, &info->now, sizeof(info->now));
	h = fnv1a(h, info->msg, qlen);
	for (size_t i = 0; i < info->nrcpt; i++)
		h = fnv1a(h, info->rcpts[i].diag, diag_len(&info->rcpts[i]));
	return h;
}

static void
make_boundary(char *b, uint64_t seed, uint64_t k)
{
	snprintf(b, DSN_BOUNDARY_LEN + 1, "=_rmx%016llx", (unsigned long long)mix64(seed + k));
}

static size_t
count_in(const char *p, size_t n, const char *needle)
{
	size_t c = 0;
	const char *q = p, *end = p + n;
	while ((q = memmem(q, (size_t)(end - q), needle, DSN_BOUNDARY_LEN)) != NULL) {
		c++;
		q += DSN_BOUNDARY_LEN;
	}
	return c;
}

/* ---- the report ---- */

static bool
rcpt_utf8(const struct dsn_info *info, const struct dsn_rcpt *r)
{
	return info->utf8 && has_8bit(r->addr, r->addr_len);
}

static void
build_headers(struct out *o, const struct dsn_info *info, const char *b, bool eightbit)
{
	out_str(o, "Date: ");
	out_date(o, info->now);
	out_crlf(o);
	out_str(o, "From: Mail Delivery System <MAILER-DAEMON@");
	out_token(o, info->hostname, DSN_HOST_MAX);
	out_line(o, ">");
	out_str(o, "To: <");
	out_text(o, info->sender, info->sender_len);
	out_line(o, ">");
	out_line(o, "Subject: Undelivered Mail Returned to Sender");
	out_str(o, "Message-ID: <");
	out_token(o, info->qid, DSN_QID_MAX);
	char now[24];
	snprintf(now, sizeof(now), ".%lld@", (long long)info->now);
	out_str(o, now);
	out_token(o, info->hostname, DSN_HOST_MAX);
	out_line(o, ">");
	/* RFC 3834 5: keeps vacation responders from answering the bounce. */
	out_line(o, "Auto-Submitted: auto-replied");
	out_line(o, "MIME-Version: 1.0");
	out_line(o, "Content-Type: multipart/report; report-type=delivery-status;");
	out_str(o, "\tboundary=\"");
	out_str(o, b);
	out_line(o, "\"");
	if (eightbit)
		out_line(o, "Content-Transfer-Encoding: 8bit");
	out_crlf(o);
	out_line(o, "This is a MIME-encapsulated message.");
	out_crlf(o);
}

static void
part_start(struct out *o, const char *b, const char *desc, const char *type, bool eightbit)
{
	out_str(o, "--");
	out_line(o, b);
	out_str(o, "Content-Description: ");
	out_line(o, desc);
	out_str(o, "Content-Type: ");
	out_line(o, type);
	if (eightbit)
		out_line(o, "Content-Transfer-Encoding: 8bit");
	out_crlf(o);
}

/* Part 1: for people. One paragraph per recipient: the address, who said
 * what (or the status alone when nobody replied). */
static void
build_text(struct out *o, const struct dsn_info *info, const char *b)
{
	part_start(o, b, "Notification",
		   info->utf8 ? "text/plain; charset=utf-8" : "text/plain; charset=us-ascii",
		   info->utf8);
	out_str(o, "This is the mail system at host ");
	out_token(o, info->hostname, DSN_HOST_MAX);
	out_line(o, ".");
	out_crlf(o);
	out_line(o, "Your message could not be delivered to the recipients below.");
	out_line(o, "This report ends with the headers of that message.");
	for (size_t i = 0; i < info->nrcpt; i++) {
		const struct dsn_rcpt *r = &info->rcpts[i];
		out_crlf(o);
		out_str(o, "<");
		out_text(o, r->addr, r->addr_len);
		out_str(o, ">: ");
		if (r->remote_mta != NULL) {
			out_str(o, "host ");
			out_token(o, r->remote_mta, DSN_HOST_MAX);
			out_str(o, " said: ");
		}
		if (diag_len(r) > 0) {
			out_text(o, r->diag, diag_len(r));
		} else {
			out_str(o, "delivery failed, status ");
			out_token(o, status_ok(r->status) ? r->status : "5.0.0", DSN_STATUS_MAX);
		}
		out_crlf(o);
	}
	out_crlf(o);
}

static void
build_rcpt_fields(struct out *o, const struct dsn_info *info, const struct dsn_rcpt *r)
{
	out_crlf(o); /* a blank line starts each per-recipient group */
	out_str(o, rcpt_utf8(info, r) ? "Final-Recipient: utf-8; " : "Final-Recipient: rfc822; ");
	out_text(o, r->addr, r->addr_len);
	out_crlf(o);
	out_line(o, "Action: failed");
	out_str(o, "Status: ");
	out_token(o, status_ok(r->status) ? r->status : "5.0.0", DSN_STATUS_MAX);
	out_crlf(o);
	if (r->remote_mta != NULL) {
		out_str(o, "Remote-MTA: dns; ");
		out_token(o, r->remote_mta, DSN_HOST_MAX);
		out_crlf(o);
	}
	if (diag_len(r) > 0) {
		out_str(o, "Diagnostic-Code: smtp; ");
		out_text(o, r->diag, diag_len(r));
		out_crlf(o);
	}
	if (r->last_attempt != 0) {
		out_str(o, "Last-Attempt-Date: ");
		out_date(o, r->last_attempt);
		out_crlf(o);
	}
}

/* Part 2: RFC 3464 fields. With SMTPUTF8 the part may hold raw UTF-8
 * (utf-8-addr-unitext), which RFC 6533 allows only in
 * message/global-delivery-status. */
static void
build_status(struct out *o, const struct dsn_info *info, const char *b)
{
	part_start(o, b, "Delivery report",
		   info->utf8 ? "message/global-delivery-status" : "message/delivery-status",
		   info->utf8);
	out_str(o, "Reporting-MTA: dns; ");
	out_token(o, info->hostname, DSN_HOST_MAX);
	out_crlf(o);
	out_str(o, "X-Ringmx-Queue-ID: ");
	out_token(o, info->qid, DSN_QID_MAX);
	out_crlf(o);
	if (info->arrival != 0) {
		out_str(o, "Arrival-Date: ");
		out_date(o, info->arrival);
		out_crlf(o);
	}
	for (size_t i = 0; i < info->nrcpt; i++)
		build_rcpt_fields(o, info, &info->rcpts[i]);
	out_crlf(o);
}

/* Part 3, then the close delimiter. The empty line after the quoted
 * headers ends their header section for a reader. */
static void
build_quoted(struct out *o, const struct dsn_info *info, const char *b, size_t qlen)
{
	bool eightbit = has_8bit((const char *)info->msg, qlen);
	part_start(o, b, "Undelivered Message Headers",
		   info->utf8 ? "message/global-headers" : "text/rfc822-headers", eightbit);
	out_quoted(o, info->msg, qlen);
	out_crlf(o);
	out_str(o, "--");
	out_str(o, b);
	out_line(o, "--");
}

static void
build_all(struct out *o, const struct dsn_info *info, const char *b, size_t qlen)
{
	bool eightbit = info->utf8 || has_8bit((const char *)info->msg, qlen);
	build_headers(o, info, b, eightbit);
	build_text(o, info, b);
	build_status(o, info, b);
	build_quoted(o, info, b, qlen);
}

size_t
dsn_size_bound(const struct dsn_info *info)
{
	if (!info_valid(info))
		return 0;
	size_t qlen = quoted_len(info->msg, info->msg_len);
	size_t n = DSN_FIXED_BOUND + fold_bound(info->sender_len);
	n += quoted_bound(qlen);
	for (size_t i = 0; i < info->nrcpt; i++) {
		const struct dsn_rcpt *r = &info->rcpts[i];
		/* Address and reply appear in parts 1 and 2. */
		n += DSN_RCPT_FIXED_BOUND + 2 * fold_bound(r->addr_len) +
		     2 * fold_bound(diag_len(r));
	}
	return n;
}

size_t
dsn_build(char *out, size_t cap, const struct dsn_info *info)
{
	if (!info_valid(info) || out == NULL)
		return 0;
	size_t qlen = quoted_len(info->msg, info->msg_len);
	uint64_t seed = boundary_seed(info, qlen);
	/* Candidates are distinct and all DSN_BOUNDARY_LEN long, so each input
	 * position rules out at most one: within (input bytes + 1) tries one
	 * is free. The count on the output checks that argument. */
	size_t tries = info->sender_len + qlen + 2 * (DSN_HOST_MAX + DSN_QID_MAX) + 1;
	for (size_t i = 0; i < info->nrcpt; i++)
		tries += info->rcpts[i].addr_len + diag_len(&info->rcpts[i]) + DSN_HOST_MAX +
			 DSN_STATUS_MAX;
	char b[DSN_BOUNDARY_LEN + 1];
	for (uint64_t k = 0; k <= tries; k++) {
		make_boundary(b, seed, k);
		if (boundary_used(info, qlen, b))
			continue;
		struct out o = {.p = out, .cap = cap, .utf8 = info->utf8};
		build_all(&o, info, b, qlen);
		assert(o.len <= dsn_size_bound(info));
		if (o.len > cap)
			return 0;
		/* The parameter, three delimiters and the close delimiter. */
		if (count_in(out, o.len, b) == 5)
			return o.len;
	}
	return 0;
}
