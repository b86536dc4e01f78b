/*
 * test_smtp_body.c - the streaming DATA/BDAT decoder (engine/smtp/smtp_body.c).
 *
 * Every case is fed whole, split into two feeds at every offset, and one
 * byte per feed; each feed ends at a PROT_NONE guard page. The bytes the
 * sink received, the flags, the end position (DATA: the input is followed
 * by a trailer that must not be consumed) and the counters must be the
 * same in every mode.
 */
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

#include "smtp_internal.h"

#define OUT_MAX 8192
#define TRAILER "MAIL FROM:<next@x>\r\n"

struct collect {
	size_t len;
	unsigned calls;
	char buf[OUT_MAX];
};

static int
collect_emit(void *ctx, const char *p, size_t n)
{
	struct collect *c = ctx;

	assert_true(n > 0);
	assert_true(c->len + n <= sizeof c->buf);
	memcpy(c->buf + c->len, p, n);
	c->len += n;
	c->calls++;
	return 0;
}

struct bcase {
	const char *in; /* DATA: up to and including the terminator */
	size_t in_len;
	const char *out; /* NULL: not checked (refused message) */
	size_t out_len;
	unsigned flags; /* SMTP_BODY_F_* expected (FAILED bits and SAW_LF) */
	bool reject_lf;
	uint64_t limit;
	unsigned long long long_lines;
};

#define S(x) x, sizeof(x) - 1
#define NOOUT NULL, 0

static const struct bcase data_cases[] = {
	{S("hello\r\n.\r\n"), S("hello\r\n"), 0, false, 0, 0},
	{S(".\r\n"), S(""), 0, false, 0, 0},
	{S("\r\n.\r\n"), S("\r\n"), 0, false, 0, 0},
	{S("..x\r\n.\r\n"), S(".x\r\n"), 0, false, 0, 0},
	{S("a\r\n..\r\n.\r\n"), S("a\r\n.\r\n"), 0, false, 0, 0},
	{S("a\r\n. \r\n.\r\n"), S("a\r\n \r\n"), 0, false, 0, 0},
	{S("a\r\n.\0\r\n.\r\n"), S("a\r\n\0\r\n"), 0, false, 0, 0},
	{S("\0\0\r\n.\r\n"), S("\0\0\r\n"), 0, false, 0, 0},
	/* bare LF normalized: stored as CRLF but never starts a line */
	{S("a\n.\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), SMTP_BODY_F_SAW_LF, false, 0, 0},
	{S("\n.\r\n.\r\n"), S("\r\n.\r\n"), SMTP_BODY_F_SAW_LF, false, 0, 0},
	{S("a\r\n.\n\r\n.\r\n"), S("a\r\n\r\n\r\n"), SMTP_BODY_F_SAW_LF, false, 0, 0},
	{S("a\n.\r\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), SMTP_BODY_F_SAW_LF, false, 0, 0},
	{S("a\r\n.\nMAIL\r\n.\r\n"), S("a\r\n\r\nMAIL\r\n"), SMTP_BODY_F_SAW_LF, false, 0, 0},
	/* bare LF refused */
	{S("a\n.\nb\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_LF, true, 0, 0},
	{S("a\r\n.\n\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_LF, true, 0, 0},
	/* bare CR is always refused */
	{S("x\r.\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_CR, false, 0, 0},
	{S("a\r\n.\r.\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_CR, false, 0, 0},
	{S("a\r\n.\r\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_CR, false, 0, 0},
	{S("\r\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_CR, false, 0, 0},
	{S("a\r.\r\r\n.\r\n"), NOOUT, SMTP_BODY_F_BARE_CR, false, 0, 0},
	/* size limit: content octets after unstuffing */
	{S("1234\r\n.\r\n"), S("1234\r\n"), 0, false, 6, 0},
	{S("..234\r\n.\r\n"), S(".234\r\n"), 0, false, 6, 0},
	{S("12345\r\n.\r\n"), NOOUT, SMTP_BODY_F_TOO_BIG, false, 6, 0},
};

struct bcase_bdat {
	const char *in;
	size_t in_len;
	const char *out;
	size_t out_len;
	unsigned flags;
	bool reject_lf;
};

static const struct bcase_bdat bdat_cases[] = {
	{S("a\r\n.\r\nb"), S("a\r\n.\r\nb\r\n"), 0, false},
	{S("a\r\n.\r\n"), S("a\r\n.\r\n"), 0, false},
	{S(""), S("\r\n"), 0, false},
	{S("a\nb"), S("a\r\nb\r\n"), SMTP_BODY_F_SAW_LF, false},
	{S("a\nb"), NOOUT, SMTP_BODY_F_BARE_LF, true},
	{S("a\r"), NOOUT, SMTP_BODY_F_BARE_CR, false},
	{S("a\rb\r\n"), NOOUT, SMTP_BODY_F_BARE_CR, false},
};

static char *guard_page;
static size_t guard_room;

/* Copy p[0..n) so that it ends right before the guard page. */
static const char *
guarded(const char *p, size_t n)
{
	assert_true(n <= guard_room);
	memcpy(guard_page - n, p, n);
	return guard_page - n;
}

/* env.hop_limit for run(); 0 except in test_hops. */
static unsigned run_hop_limit;

struct result {
	struct collect c;
	uint32_t hops;
	unsigned flags;
	size_t consumed;
	bool done;
	struct ringmx_stats st;
};

/* Feed in pieces: split == 0: whole; split == SIZE_MAX: bytewise; else two
 * feeds at split. */
static void
run(enum smtp_body_mode mode, const char *in, size_t n, bool reject_lf, uint64_t limit,
    size_t split, struct result *r)
{
	struct smtp_body b;
	struct smtp_body_env env;
	size_t off = 0;

	memset(r, 0, sizeof *r);
	memset(&env, 0, sizeof env);
	env.hop_limit = run_hop_limit;
	env.emit = collect_emit;
	env.ctx = &r->c;
	env.size_limit = limit;
	env.reject_bare_lf = reject_lf;
	env.stats = &r->st;
	smtp_body_init(&b, mode);
	while (off < n && !smtp_body_done(&b)) {
		size_t len = n - off;

		if (split == SIZE_MAX)
			len = 1;
		else if (split != 0 && off < split)
			len = split - off;
		size_t k = smtp_body_feed(&b, &env, guarded(in + off, len), len);
		assert_true(k <= len);
		if (k < len)
			assert_true(smtp_body_done(&b));
		off += k;
	}
	if (mode == SMTP_BODY_BDAT)
		smtp_body_finish(&b, &env);
	r->flags = b.flags;
	r->hops = b.hops;
	r->consumed = off;
	r->done = smtp_body_done(&b);
}

static void
check_data_case(const struct bcase *t, size_t idx)
{
	char in[4096];
	size_t n = t->in_len + sizeof TRAILER - 1;
	struct result r, first;

	assert_true(n <= sizeof in);
	memcpy(in, t->in, t->in_len);
	memcpy(in + t->in_len, TRAILER, sizeof TRAILER - 1);
	for (size_t split = 0; split <= n + 1; split++) {
		size_t sp = split == n + 1 ? SIZE_MAX : split;

		run(SMTP_BODY_DATA, in, n, t->reject_lf, t->limit, sp, &r);
		if (!r.done || r.consumed != t->in_len)
			fail_msg("data case %zu split %zu: done %d consumed %zu want %zu", idx, split,
				 r.done, r.consumed, t->in_len);
		if ((r.flags & ~0u) != t->flags)
			fail_msg("data case %zu split %zu: flags %#x want %#x", idx, split, r.flags,
				 t->flags);
		if (t->out != NULL &&
		    (r.c.len != t->out_len || memcmp(r.c.buf, t->out, t->out_len) != 0))
			fail_msg("data case %zu split %zu: wrong content (%zu octets)", idx, split,
				 r.c.len);
		if (split == 0) {
			first = r;
		} else {
			/* Counters do not depend on feed boundaries. */
			assert_int_equal(r.st.bare_lf, first.st.bare_lf);
			assert_int_equal(r.st.bare_cr, first.st.bare_cr);
			assert_int_equal(r.st.long_lines, first.st.long_lines);
		}
	}
}

static void
test_data_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof data_cases / sizeof data_cases[0]; i++)
		check_data_case(&data_cases[i], i);
}

static void
test_bdat_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bdat_cases / sizeof bdat_cases[0]; i++) {
		const struct bcase_bdat *t = &bdat_cases[i];

		for (size_t split = 0; split <= t->in_len + 1; split++) {
			size_t sp = split == t->in_len + 1 ? SIZE_MAX : split;
			struct result r;

			run(SMTP_BODY_BDAT, t->in, t->in_len, t->reject_lf, 0, sp, &r);
			assert_false(r.done);
			assert_int_equal(r.consumed, t->in_len);
			if (r.flags != t->flags)
				fail_msg("bdat case %zu split %zu: flags %#x want %#x", i, split,
					 r.flags, t->flags);
			if (t->out != NULL &&
			    (r.c.len != t->out_len || memcmp(r.c.buf, t->out, t->out_len) != 0))
				fail_msg("bdat case %zu split %zu: wrong content", i, split);
		}
	}
}

/* A message with every look-alike, in one piece: one end, exact content. */
static void
test_lookalikes_one_end(void **state)
{
	static const char in[] = "x\n.\ny\r\n.\nz\n.\r\n\r\n.\0\r\n\r\n. \r\n\r\n..\r\n"
				 "\r\n.\r\n" TRAILER;
	static const char want[] = "x\r\n.\r\ny\r\n\r\nz\r\n.\r\n\r\n\0\r\n\r\n \r\n\r\n.\r\n\r\n";
	struct result r;

	(void)state;
	for (size_t split = 0; split <= sizeof in; split++) {
		run(SMTP_BODY_DATA, in, sizeof in - 1, false, 0,
		    split == sizeof in ? SIZE_MAX : split, &r);
		assert_true(r.done);
		assert_int_equal(r.consumed, sizeof in - 1 - (sizeof TRAILER - 1));
		assert_int_equal(r.c.len, sizeof want - 1);
		assert_memory_equal(r.c.buf, want, sizeof want - 1);
		assert_int_equal(r.flags, SMTP_BODY_F_SAW_LF);
		assert_int_equal(r.st.bare_lf, 1);
	}
}

static void
test_long_lines(void **state)
{
	char in[8000];
	size_t n = 0;
	struct result r;

	(void)state;
	memset(in, 'x', 998); /* 998 + CRLF = 1000: not long */
	n = 998;
	memcpy(in + n, "\r\n", 2);
	n += 2;
	memset(in + n, 'y', 999); /* 1001: long */
	n += 999;
	memcpy(in + n, "\r\n", 2);
	n += 2;
	memset(in + n, 'z', 2500); /* long, counted once */
	n += 2500;
	memcpy(in + n, "\r\n.\r\n", 5);
	n += 5;
	for (size_t split = 0; split <= n + 1; split += 7) {
		run(SMTP_BODY_DATA, in, n, false, 0, split == n + 1 ? SIZE_MAX : split, &r);
		assert_true(r.done);
		assert_int_equal(r.st.long_lines, 2);
		assert_int_equal(r.c.len, n - 3);
	}
}

static int
fail_emit(void *ctx, const char *p, size_t n)
{
	(void)ctx;
	(void)p;
	(void)n;
	return -5;
}

static void
test_sink_error(void **state)
{
	static const char in[] = "abc\r\ndef\r\n.\r\n";
	struct smtp_body b;
	struct ringmx_stats st = {0};
	struct smtp_body_env env = {fail_emit, NULL, 0, false, &st};

	(void)state;
	smtp_body_init(&b, SMTP_BODY_DATA);
	assert_int_equal(smtp_body_feed(&b, &env, in, sizeof in - 1), sizeof in - 1);
	assert_true(smtp_body_done(&b));
	assert_true(b.flags & SMTP_BODY_F_SINK_ERR);
}

/* Received: fields in the header section, whatever the feed boundaries. */
struct hcase {
	const char *in; /* DATA, up to and including the terminator */
	size_t in_len;
	uint32_t hops;
	unsigned limit;
	unsigned flags;
};

#define HDRS "Received: from a\r\n\tby b; folded\r\nreceived :x\r\nRECEIVED:y\r\n"       \
	     "X-Received: no\r\nReceivedX: no\r\nReceived no colon\r\n Received: cont\r\n"  \
	     "Subject: s\r\n\r\n"

static const struct hcase hop_cases[] = {
	{S(HDRS "Received: in the body\r\n.\r\n"), 3, 0, 0},
	{S(HDRS "body\r\n.\r\n"), 3, 3, 0},
	{S(HDRS "body\r\n.\r\n"), 3, 2, SMTP_BODY_F_HOPS},
	{S("Received: a\r\nReceived: b\r\n.\r\n"), 2, 1, SMTP_BODY_F_HOPS}, /* no body */
	{S("\r\nReceived: a\r\n.\r\n"), 0, 1, 0},          /* no header section */
	{S("..Received: a\r\nReceived: b\r\n.\r\n"), 1, 1, 0}, /* ".Received:" */
	{S("Received: a\nReceived: b\r\n\r\n.\r\n"), 2, 0, SMTP_BODY_F_SAW_LF},
	{S("Received\t \t: a\r\nRec\r\neived: b\r\n.\r\n"), 1, 0, 0},
	/* A bare CR is scanned the same whether or not a feed ends on it. */
	{S("R\received: a\r\nReceived: b\r\n.\r\n"), 1, 1, SMTP_BODY_F_BARE_CR},
};

static void
test_hops(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof hop_cases / sizeof hop_cases[0]; i++) {
		const struct hcase *t = &hop_cases[i];

		run_hop_limit = t->limit;
		for (size_t split = 0; split <= t->in_len + 1; split++) {
			size_t sp = split == t->in_len + 1 ? SIZE_MAX : split;
			struct result r;

			run(SMTP_BODY_DATA, t->in, t->in_len, false, 0, sp, &r);
			assert_true(r.done);
			if (r.hops != t->hops || r.flags != t->flags)
				fail_msg("hop case %zu split %zu: hops %u flags %#x, want %u %#x", i,
					 split, r.hops, r.flags, t->hops, t->flags);
		}
		/* The same content as BDAT counts the same. */
		struct result r;
		run(SMTP_BODY_BDAT, t->in, t->in_len - 3, false, 0, 7, &r);
		assert_int_equal(r.hops, t->hops);
	}
	run_hop_limit = 0;
}

static int
setup(void **state)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map;

	(void)state;
	guard_room = 4 * (size_t)page;
	map = mmap(NULL, guard_room + (size_t)page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED || mprotect(map + guard_room, (size_t)page, PROT_NONE) != 0)
		return -1;
	guard_page = map + guard_room;
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_data_cases),     cmocka_unit_test(test_bdat_cases),
		cmocka_unit_test(test_lookalikes_one_end), cmocka_unit_test(test_long_lines),
		cmocka_unit_test(test_sink_error),     cmocka_unit_test(test_hops),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
