/*
 * test_dsn.c - bounce reports (dsn.c): structure, the per-recipient
 * fields, CRLF-only output with lines <= 998 bytes, header and MIME
 * injection through replies, addresses and quoted headers, the boundary
 * never colliding, SMTPUTF8 reports, and dsn_size_bound() holding against
 * adversarial input; every capacity below the size needed fails cleanly.
 * Owner: the relay module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ringmx/dsn.h"

#define NOW 1795870385 /* Sat, 28 Nov 2026 12:53:05 UTC */

static const char msg_simple[] = "Received: from client.test\r\n\tby mx.ringmx.test; x\r\n"
				 "From: <sender@example.org>\r\n"
				 "Subject: hello\r\n"
				 "Message-ID: <orig.1@example.org>\r\n"
				 "\r\n"
				 "the body, never quoted\r\n";

static struct dsn_rcpt
rcpt(const char *addr, const char *status, const char *mta, const char *diag)
{
	struct dsn_rcpt r = {addr, strlen(addr), status, mta, diag, diag ? strlen(diag) : 0,
			     NOW - 60};
	return r;
}

static struct dsn_info
info_for(const struct dsn_rcpt *r, size_t n, const char *msg, size_t msg_len)
{
	struct dsn_info i = {
		.hostname = "mx.ringmx.test",
		.qid = "1K1AR1NF0VG00",
		.sender = "sender@example.org",
		.sender_len = 18,
		.arrival = NOW - 3600,
		.now = NOW,
		.rcpts = r,
		.nrcpt = n,
		.msg = (const uint8_t *)msg,
		.msg_len = msg_len,
	};
	return i;
}

/* Builds into an exact-size heap block (ASan sees any overrun) and
 * returns it NUL terminated; *len is the report's length. */
static char *
build(const struct dsn_info *info, size_t *len)
{
	size_t bound = dsn_size_bound(info);
	assert_true(bound > 0);
	char *out = malloc(bound + 1);
	assert_non_null(out);
	*len = dsn_build(out, bound, info);
	assert_true(*len > 0);
	assert_true(*len <= bound);
	out[*len] = '\0';
	return out;
}

/* The boundary from the Content-Type header. */
static void
get_boundary(const char *out, char *b, size_t cap)
{
	const char *p = strstr(out, "\tboundary=\"");
	assert_non_null(p);
	p += 11;
	const char *q = strchr(p, '"');
	assert_non_null(q);
	assert_true((size_t)(q - p) < cap && q > p);
	memcpy(b, p, (size_t)(q - p));
	b[q - p] = '\0';
}

static size_t
count(const char *hay, size_t n, const char *needle)
{
	size_t c = 0, nl = strlen(needle);
	for (const char *p = hay; (p = memmem(p, n - (size_t)(p - hay), needle, nl)) != NULL;
	     p += nl)
		c++;
	return c;
}

/* What every report must be: CRLF only, no NUL, lines <= 998, ends in
 * CRLF, the boundary only in its five places, delimiters at line starts. */
static void
check_invariants(const char *out, size_t n)
{
	size_t col = 0;
	assert_true(n >= 2 && out[n - 2] == '\r' && out[n - 1] == '\n');
	for (size_t i = 0; i < n; i++) {
		assert_int_not_equal(out[i], '\0');
		if (out[i] == '\r') {
			assert_true(i + 1 < n && out[i + 1] == '\n');
			assert_true(col <= 998);
			col = 0;
			i++;
			continue;
		}
		assert_int_not_equal(out[i], '\n');
		col++;
	}
	char b[128], line[160];
	get_boundary(out, b, sizeof(b));
	assert_int_equal(count(out, n, b), 5);
	snprintf(line, sizeof(line), "\r\n--%s\r\n", b);
	assert_int_equal(count(out, n, line), 3);
	snprintf(line, sizeof(line), "\r\n--%s--\r\n", b);
	assert_int_equal(count(out, n, line), 1);
	assert_memory_equal(out + n - strlen(line), line, strlen(line));
}

/* The unfolded value of the first field "name: " at a line start after
 * from (CRLF SP continuations joined, the SP kept). */
static char *
field(const char *from, const char *name)
{
	char key[64];
	snprintf(key, sizeof(key), "\r\n%s: ", name);
	const char *p = strstr(from, key);
	assert_non_null(p);
	p += strlen(key);
	char *v = malloc(strlen(p) + 1);
	size_t n = 0;
	assert_non_null(v);
	for (;;) {
		const char *e = strstr(p, "\r\n");
		assert_non_null(e);
		memcpy(v + n, p, (size_t)(e - p));
		n += (size_t)(e - p);
		if (e[2] != ' ')
			break;
		p = e + 2;
	}
	v[n] = '\0';
	return v;
}

/* The header section of the report (up to the first empty line). */
static size_t
head_len(const char *out)
{
	const char *e = strstr(out, "\r\n\r\n");
	assert_non_null(e);
	return (size_t)(e - out) + 2;
}

static void
test_structure(void **state)
{
	struct dsn_rcpt r[2] = {
		rcpt("rcpt1@example.net", "5.1.1", "mx.example.net",
		     "550 5.1.1 <rcpt1@example.net>: User unknown"),
		rcpt("rcpt2@example.net", "5.4.7", NULL, NULL),
	};
	struct dsn_info info = info_for(r, 2, msg_simple, sizeof(msg_simple) - 1);
	size_t n;

	(void)state;
	char *out = build(&info, &n);
	check_invariants(out, n);
	char b[128], want[256];
	get_boundary(out, b, sizeof(b));

	/* The report's own headers, in its header section. */
	char *hdr = strndup(out, head_len(out));
	assert_non_null(strstr(hdr, "Date: Sat, 28 Nov 2026 12:53:05 +0000\r\n"));
	assert_non_null(
		strstr(hdr, "From: Mail Delivery System <MAILER-DAEMON@mx.ringmx.test>\r\n"));
	assert_non_null(strstr(hdr, "To: <sender@example.org>\r\n"));
	assert_non_null(strstr(hdr, "Subject: Undelivered Mail Returned to Sender\r\n"));
	assert_non_null(strstr(hdr, "Message-ID: <1K1AR1NF0VG00.1795870385@mx.ringmx.test>\r\n"));
	assert_non_null(strstr(hdr, "Auto-Submitted: auto-replied\r\n"));
	assert_non_null(strstr(hdr, "MIME-Version: 1.0\r\n"));
	assert_non_null(strstr(hdr, "Content-Type: multipart/report; "
				    "report-type=delivery-status;\r\n\tboundary=\""));
	assert_null(strstr(hdr, "Content-Transfer-Encoding")); /* all ASCII: 7bit */
	free(hdr);

	/* Three parts, in order. */
	const char *p1 = strstr(out, "Content-Type: text/plain; charset=us-ascii\r\n");
	const char *p2 = strstr(out, "Content-Type: message/delivery-status\r\n");
	const char *p3 = strstr(out, "Content-Type: text/rfc822-headers\r\n");
	assert_true(p1 != NULL && p2 != NULL && p3 != NULL && p1 < p2 && p2 < p3);
	snprintf(want, sizeof(want), "\r\n--%s\r\nContent-Description: Delivery report\r\n", b);
	assert_non_null(strstr(out, want));

	/* Part 1 names both recipients and what happened, folded at 78. */
	assert_non_null(strstr(out, "\r\n\r\n<rcpt1@example.net>: host mx.example.net said: "
				    "550 5.1.1 <rcpt1@example.net>:\r\n User unknown\r\n"));
	assert_non_null(strstr(out, "<rcpt2@example.net>: delivery failed, status 5.4.7\r\n"));

	/* Part 2: per-message, then one group per recipient. */
	assert_non_null(strstr(p2, "\r\n\r\nReporting-MTA: dns; mx.ringmx.test\r\n"
				   "X-Ringmx-Queue-ID: 1K1AR1NF0VG00\r\n"
				   "Arrival-Date: Sat, 28 Nov 2026 11:53:05 +0000\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; rcpt1@example.net\r\n"
				   "Action: failed\r\n"
				   "Status: 5.1.1\r\n"
				   "Remote-MTA: dns; mx.example.net\r\n"
				   "Diagnostic-Code: smtp; 550 5.1.1 <rcpt1@example.net>: "
				   "User unknown\r\n"
				   "Last-Attempt-Date: Sat, 28 Nov 2026 12:52:05 +0000\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; rcpt2@example.net\r\n"
				   "Action: failed\r\n"
				   "Status: 5.4.7\r\n"
				   "Last-Attempt-Date: Sat, 28 Nov 2026 12:52:05 +0000\r\n"
				   "\r\n--"));

	/* Part 3: the header section, not the empty line nor the body. */
	assert_non_null(strstr(p3, "\r\n\r\nReceived: from client.test\r\n\tby mx.ringmx.test; "
				   "x\r\nFrom: <sender@example.org>\r\nSubject: hello\r\n"
				   "Message-ID: <orig.1@example.org>\r\n\r\n--"));
	assert_null(strstr(out, "never quoted"));
	free(out);
}

/* Every capacity below the size needed gives 0 (and writes nothing past
 * cap: the block is exactly cap bytes); the size needed itself works. */
static void
test_cap_too_small(void **state)
{
	struct dsn_rcpt r[2] = {
		rcpt("rcpt1@example.net", "5.1.1", "mx.example.net", "550 5.1.1 unknown"),
		rcpt("rcpt2@example.net", "5.2.2", "mx.example.net", "552 5.2.2 full"),
	};
	struct dsn_info info = info_for(r, 2, msg_simple, sizeof(msg_simple) - 1);
	size_t need;

	(void)state;
	char *ref = build(&info, &need);
	for (size_t cap = 0; cap <= need; cap++) {
		char *out = malloc(cap ? cap : 1);
		assert_non_null(out);
		size_t n = dsn_build(out, cap, &info);
		if (cap < need) {
			assert_int_equal(n, 0);
		} else {
			assert_int_equal(n, need);
			assert_memory_equal(out, ref, need);
		}
		free(out);
	}
	free(ref);
}

static void
test_invalid(void **state)
{
	struct dsn_rcpt r[1] = {rcpt("a@example.net", "5.1.1", NULL, NULL)};
	struct dsn_info info = info_for(r, 1, msg_simple, sizeof(msg_simple) - 1);
	char out[8192];

	(void)state;
	assert_true(dsn_build(out, sizeof(out), &info) > 0);
	info.nrcpt = 0;
	assert_int_equal(dsn_size_bound(&info), 0);
	assert_int_equal(dsn_build(out, sizeof(out), &info), 0);
	info.nrcpt = DSN_RCPTS_MAX + 1;
	assert_int_equal(dsn_size_bound(&info), 0);
	assert_int_equal(dsn_build(out, sizeof(out), &info), 0);
	info.nrcpt = 1;
	info.sender_len = 0; /* the null sender never gets a bounce */
	assert_int_equal(dsn_size_bound(&info), 0);
	assert_int_equal(dsn_build(out, sizeof(out), &info), 0);
	assert_int_equal(dsn_size_bound(NULL), 0);
}

/* A hostile reply, address or sender cannot add a header field, a MIME
 * part or a bare line end: controls are whitespace, so what follows them
 * stays inside the same field. */
static void
test_injection(void **state)
{
	static const char diag[] = "550 no\r\nBcc: victim@example.org\r\n\r\n--x\r\n"
				   "Content-Type: text/html\n\rX-Evil: 1\0Y-Evil: 2\x01\x7f end";
	static const char addr[] = "a\r\nTo: b@x\0@example.net";
	struct dsn_rcpt r[2] = {
		rcpt("rcpt1@example.net", "5.1.1", "mx.example.net\r\nX-Host: 1", NULL),
		{addr, sizeof(addr) - 1, "5.1.1\r\nX-S: 1", NULL, diag, sizeof(diag) - 1, 0},
	};
	r[0].diag = diag;
	r[0].diag_len = sizeof(diag) - 1;
	struct dsn_info info = info_for(r, 2, msg_simple, sizeof(msg_simple) - 1);
	info.sender = "s\r\nCc: x@y>";
	info.sender_len = 11;
	size_t n;

	(void)state;
	char *out = build(&info, &n);
	check_invariants(out, n);
	const char *bad[] = {"\r\nBcc:", "\r\nX-Evil", "\r\nY-Evil", "\r\nContent-Type: text/html",
			     "\r\nTo: b@x", "\r\nCc:", "\r\nX-Host", "\r\nX-S", "\r\n--x"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_null(strstr(out, bad[i]));
	char *v = field(out, "Diagnostic-Code");
	assert_string_equal(v, "smtp; 550 no Bcc: victim@example.org --x Content-Type: text/html "
			       "X-Evil: 1 Y-Evil: 2 end");
	free(v);
	assert_non_null(strstr(out, "Final-Recipient: rfc822; a To: b@x @example.net\r\n"));
	assert_non_null(strstr(out, "To: <s Cc: x@y>>\r\n"));
	assert_non_null(strstr(out, "Remote-MTA: dns; mx.example.net??X-Host:?1\r\n"));
	assert_non_null(strstr(out, "Status: 5.0.0\r\n")); /* a malformed status */
	free(out);
}

/* The boundary never occurs in what is copied: the original's headers
 * holding a previous report's delimiters, and addresses holding the
 * very candidates the builder tries first (addresses are not part of the
 * seed, so this forces the second and third candidates). */
static void
test_boundary_collision(void **state)
{
	struct dsn_rcpt r[3] = {
		rcpt("rcpt1@example.net", "5.1.1", NULL, "550 unknown"),
		rcpt("rcpt2@example.net", "5.1.1", NULL, "550 unknown"),
		rcpt("rcpt3@example.net", "5.1.1", NULL, "550 unknown"),
	};
	struct dsn_info info = info_for(r, 3, msg_simple, sizeof(msg_simple) - 1);
	char b0[128], b1[128], b2[128], a0[200], a1[200], msg[1024];
	size_t n;

	(void)state;
	char *out = build(&info, &n);
	get_boundary(out, b0, sizeof(b0));
	free(out);
	snprintf(a0, sizeof(a0), "%s@example.net", b0);
	r[0] = rcpt(a0, "5.1.1", NULL, "550 unknown");
	out = build(&info, &n);
	check_invariants(out, n);
	get_boundary(out, b1, sizeof(b1));
	assert_string_not_equal(b0, b1);
	free(out);
	snprintf(a1, sizeof(a1), "x%sx@example.net", b1);
	r[1] = rcpt(a1, "5.1.1", NULL, "550 unknown");
	out = build(&info, &n);
	check_invariants(out, n);
	get_boundary(out, b2, sizeof(b2));
	assert_string_not_equal(b2, b0);
	assert_string_not_equal(b2, b1);
	free(out);

	/* Delimiter lines of all three inside the original's headers. */
	int ml = snprintf(msg, sizeof(msg),
			  "Subject: x\r\n--%s\r\nX: --%s--\r\n--%s\r\nContent-Type: "
			  "text/html\r\n\r\nbody\r\n",
			  b0, b1, b2);
	info = info_for(r, 3, msg, (size_t)ml);
	out = build(&info, &n);
	check_invariants(out, n);
	char want[512];
	snprintf(want, sizeof(want), "\r\n\r\nSubject: x\r\n--%s\r\nX: --%s--\r\n--%s\r\n"
		 "Content-Type: text/html\r\n\r\n--", b0, b1, b2);
	assert_non_null(strstr(out, want)); /* quoted as is */
	free(out);
}

/* NULs, bare LF and bare CR in the quoted headers become legal text. */
static void
test_quoted_normalised(void **state)
{
	static const char msg[] = "A: 1\nB: 2\rC: \0003\r\nD: 4\r\n\nbody\r\n";
	struct dsn_rcpt r[1] = {rcpt("a@example.net", "5.1.1", NULL, NULL)};
	struct dsn_info info = info_for(r, 1, msg, sizeof(msg) - 1);
	size_t n;

	(void)state;
	char *out = build(&info, &n);
	check_invariants(out, n);
	assert_non_null(strstr(out, "\r\n\r\nA: 1\r\nB: 2\r\nC: ?3\r\nD: 4\r\n\r\n--"));
	assert_null(strstr(out, "body"));
	free(out);
}

/* No empty line: the whole message is quoted; more than DSN_HEADERS_MAX:
 * cut at the last line end before the limit; one enormous line: cut at
 * the limit and split into continuation lines. */
static void
test_quoted_limits(void **state)
{
	size_t big = DSN_HEADERS_MAX * 2;
	char *msg = malloc(big);
	struct dsn_rcpt r[1] = {rcpt("a@example.net", "5.1.1", NULL, NULL)};
	size_t n, len = 0;

	(void)state;
	assert_non_null(msg);
	for (int i = 0; len + 40 < big; i++)
		len += (size_t)snprintf(msg + len, big - len, "X-Line-%07d: abcdefghijklmnop\r\n", i);
	struct dsn_info info = info_for(r, 1, msg, 60);
	char *out = build(&info, &n); /* no empty line in the first 60 bytes */
	check_invariants(out, n);
	assert_non_null(strstr(out, "\r\n\r\nX-Line-0000000: abcdefghijklmnop\r\n"
				    "X-Line-0000001: abcdefghij\r\n\r\n--"));
	free(out);

	info = info_for(r, 1, msg, len);
	out = build(&info, &n);
	check_invariants(out, n);
	/* Lines are 34 bytes: the last whole line before the limit is the
	 * (DSN_HEADERS_MAX / 34)th. */
	char last[64], next[64];
	snprintf(last, sizeof(last), "X-Line-%07u: abcdefghijklmnop\r\n\r\n--",
		 DSN_HEADERS_MAX / 34 - 1);
	snprintf(next, sizeof(next), "X-Line-%07u:", DSN_HEADERS_MAX / 34);
	assert_non_null(strstr(out, last));
	assert_null(strstr(out, next));
	free(out);

	memset(msg, 'h', big);
	info = info_for(r, 1, msg, big);
	out = build(&info, &n);
	check_invariants(out, n);
	const char *p3 = strstr(out, "Content-Type: text/rfc822-headers\r\n\r\n");
	assert_non_null(p3);
	p3 += strlen("Content-Type: text/rfc822-headers\r\n\r\n");
	assert_int_equal(count(p3, n - (size_t)(p3 - out), "h"), DSN_HEADERS_MAX);
	free(out);
	free(msg);
}

/* A multi-line reply becomes one field, folded at whitespace near 78
 * columns; continuation lines start with SP; the text is cut at
 * DSN_DIAG_MAX. */
static void
test_diag_folding(void **state)
{
	char diag[4096];
	size_t dl = 0;
	for (int i = 0; dl + 40 < sizeof(diag); i++)
		dl += (size_t)snprintf(diag + dl, sizeof(diag) - dl,
				       "550-5.7.1 line %d of the remote reply\r\n", i);
	struct dsn_rcpt r[1] = {{"a@example.net", 13, "5.7.1", "mx.example.net", diag, dl, 0}};
	struct dsn_info info = info_for(r, 1, msg_simple, sizeof(msg_simple) - 1);
	size_t n;

	(void)state;
	char *out = build(&info, &n);
	check_invariants(out, n);
	const char *f = strstr(out, "\r\nDiagnostic-Code: smtp; 550-5.7.1 line 0 of the remote "
				    "reply 550-5.7.1");
	assert_non_null(f);
	/* Every physical line of the field is within 78 columns. */
	const char *p = f + 2;
	do {
		const char *e = strstr(p, "\r\n");
		assert_true(e - p <= 78);
		p = e + 2;
	} while (*p == ' ');
	/* Unfolded, it is the reply with whitespace collapsed, cut at
	 * DSN_DIAG_MAX. */
	char want[2048] = "smtp; ";
	size_t w = strlen(want);
	for (size_t i = 0; i < DSN_DIAG_MAX; i++) {
		bool sp = diag[i] == '\r' || diag[i] == '\n' || diag[i] == ' ';
		if (sp && want[w - 1] == ' ')
			continue;
		want[w++] = sp ? ' ' : diag[i];
	}
	while (w > 0 && want[w - 1] == ' ')
		w--;
	want[w] = '\0';
	char *unf = field(out, "Diagnostic-Code");
	assert_string_equal(unf, want);
	free(unf);
	free(out);
}

/* SMTPUTF8: utf-8 address type for non-ASCII addresses only, the global
 * media types, 8bit declared. Without SMTPUTF8, 8-bit bytes in copied
 * header text become '?'. */
static void
test_utf8(void **state)
{
	struct dsn_rcpt r[2] = {
		rcpt("δοκιμή@example.net", "5.1.1", "mx.example.net", "550 χρήστης unknown"),
		rcpt("plain@example.net", "5.1.1", NULL, NULL),
	};
	struct dsn_info info = info_for(r, 2, msg_simple, sizeof(msg_simple) - 1);
	size_t n;

	(void)state;
	info.utf8 = true;
	char *out = build(&info, &n);
	check_invariants(out, n);
	assert_non_null(strstr(out, "Final-Recipient: utf-8; δοκιμή@example.net\r\n"));
	assert_non_null(strstr(out, "Final-Recipient: rfc822; plain@example.net\r\n"));
	assert_non_null(strstr(out, "Diagnostic-Code: smtp; 550 χρήστης unknown\r\n"));
	assert_non_null(strstr(out, "Content-Type: message/global-delivery-status\r\n"));
	assert_non_null(strstr(out, "Content-Type: message/global-headers\r\n"));
	assert_non_null(strstr(out, "Content-Type: text/plain; charset=utf-8\r\n"));
	assert_non_null(strstr(out, "\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"));
	free(out);

	info.utf8 = false;
	out = build(&info, &n);
	check_invariants(out, n);
	assert_non_null(strstr(out, "Final-Recipient: rfc822; ????????????@example.net\r\n"));
	assert_non_null(strstr(out, "Diagnostic-Code: smtp; 550 ?????????????? unknown\r\n"));
	for (size_t i = 0; i < n; i++)
		assert_true((unsigned char)out[i] < 0x80);
	free(out);
}

/* The bound holds at the extremes: 1000 recipients with 998-byte
 * addresses (no spaces: split mid-word; all spaces: folds everywhere),
 * multi-line replies far over DSN_DIAG_MAX, a huge sender, a header
 * section past DSN_HEADERS_MAX made of bare LFs. */
static void
test_bound_adversarial(void **state)
{
	static struct dsn_rcpt r[DSN_RCPTS_MAX];
	size_t dl = 20000, ql = DSN_HEADERS_MAX + 4096;
	char *addr = malloc(998), *sp = malloc(998), *diag = malloc(dl), *msg = malloc(ql);
	char *sender = malloc(5000);

	(void)state;
	assert_true(addr && sp && diag && msg && sender);
	memset(addr, 'a', 998);
	for (size_t i = 0; i < 998; i++)
		sp[i] = i % 2 ? ' ' : 'b';
	for (size_t i = 0; i < dl; i++)
		diag[i] = "x\r\n \n"[i % 5];
	/* One header "line" of bare CRs: each becomes CRLF, doubling. */
	memset(msg, '\r', ql);
	msg[0] = 'm';
	memset(sender, 's', 5000);
	for (int variant = 0; variant < 4; variant++) {
		for (size_t i = 0; i < DSN_RCPTS_MAX; i++) {
			const char *a = variant & 1 ? sp : addr;
			const char *d = variant & 2 ? diag : sp;
			r[i] = (struct dsn_rcpt){a, 998, "5.1.1", "mx.example.net", d,
						 variant & 2 ? dl : 998, NOW};
		}
		struct dsn_info info = info_for(r, DSN_RCPTS_MAX, msg, ql);
		info.sender = sender;
		info.sender_len = 5000;
		info.utf8 = variant == 3;
		size_t n;
		char *out = build(&info, &n);
		check_invariants(out, n);
		free(out);
	}
	free(addr);
	free(sp);
	free(diag);
	free(msg);
	free(sender);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_structure),
		cmocka_unit_test(test_cap_too_small),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_injection),
		cmocka_unit_test(test_boundary_collision),
		cmocka_unit_test(test_quoted_normalised),
		cmocka_unit_test(test_quoted_limits),
		cmocka_unit_test(test_diag_folding),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_bound_adversarial),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
