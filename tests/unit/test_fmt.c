/*
 * test_fmt.c - include/ringmx/fmt.h against snprintf: every append gives
 * the bytes of its printf conversion, on edge values and on random ones
 * (a fixed seed, so a failure repeats), and a cut at any cap keeps what
 * snprintf keeps. fmt_secs3 is checked hardest: "%.3f" of a double rounds
 * the double's exact value, ties included.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "test_rnd.h"

#include "ringmx/fmt.h"

enum piece { P_U64, P_DIGITS, P_SECS3 };

/* The piece through fmt, into a cursor of capacity cap that already holds
 * pre bytes; returns what it wrote. */
static size_t
via_fmt(char *dst, size_t cap, size_t pre, enum piece k, uint64_t v, unsigned width)
{
	struct fmt f = fmt_init(dst, cap);
	f.len = pre;
	switch (k) {
	case P_U64:
		fmt_u64(&f, v);
		break;
	case P_DIGITS:
		fmt_digits(&f, v, width);
		break;
	case P_SECS3:
		fmt_secs3(&f, v);
		break;
	}
	assert_true(f.len <= (pre > cap ? pre : cap));
	return f.len - pre;
}

/* The same through snprintf; returns the untruncated length. */
static size_t
via_printf(char *dst, size_t size, enum piece k, uint64_t v, unsigned width)
{
	int n = 0;
	switch (k) {
	case P_U64:
		n = snprintf(dst, size, "%" PRIu64, v);
		break;
	case P_DIGITS:
		n = snprintf(dst, size, "%0*" PRIu64, (int)width, v);
		break;
	case P_SECS3:
		n = snprintf(dst, size, "%.3f", (double)v / 1e9);
		break;
	}
	assert_true(n > 0);
	return (size_t)n;
}

/* Whole, and cut at every length: the bytes snprintf keeps with a buffer
 * one larger (its NUL), behind a prefix the cursor must not touch. */
static void
check(enum piece k, uint64_t v, unsigned width)
{
	char want[64], got[80];
	size_t n = via_printf(want, sizeof want, k, v, width);
	assert_true(n < sizeof want);
	for (size_t cap = 0; cap <= n + 1; cap++) {
		memset(got, '#', sizeof got);
		size_t w = via_fmt(got, 3 + cap, 3, k, v, width);
		size_t keep = cap < n ? cap : n;
		if (w != keep || memcmp(got + 3, want, keep) != 0 || memcmp(got, "###", 3) != 0 ||
		    got[3 + keep] != '#')
			fail_msg("piece %d v=%" PRIu64
			         " width=%u cap=%zu: want \"%.*s\", got \"%.*s\"",
			         (int)k, v, width, cap, (int)keep, want, (int)w, got + 3);
	}
}

static void
test_u64(void **state)
{
	(void)state;
	uint64_t p = 1;
	for (int i = 0; i < 20; i++, p *= 10) {
		check(P_U64, p - 1, 0);
		check(P_U64, p, 0);
		check(P_U64, p + 1, 0);
	}
	check(P_U64, 0, 0);
	check(P_U64, UINT64_MAX, 0);
	check(P_U64, UINT64_MAX - 1, 0);
	check(P_U64, 65535, 0);
	for (int i = 0; i < 200000; i++) {
		uint64_t v = rnd_mag();
		char a[32], b[32];
		struct fmt f = fmt_init(a, sizeof a);
		fmt_u64(&f, v);
		int n = snprintf(b, sizeof b, "%" PRIu64, v);
		if (f.len != (size_t)n || memcmp(a, b, f.len) != 0)
			fail_msg("%" PRIu64 ": got \"%.*s\"", v, (int)f.len, a);
		if (i % 64 == 0)
			check(P_U64, v, 0);
	}
}

static void
test_digits(void **state)
{
	(void)state;
	for (unsigned w = 0; w <= 20; w++) {
		check(P_DIGITS, 0, w);
		check(P_DIGITS, 7, w);
		check(P_DIGITS, 999999, w);
		check(P_DIGITS, 1000000, w);
		check(P_DIGITS, UINT64_MAX, w);
	}
	for (int i = 0; i < 100000; i++)
		check(P_DIGITS, rnd_mag(), (unsigned)(rnd() % 21));
}

/* "%.3f" of ns / 1e9: edge values around every rounding decision. */
static void
test_secs3_edges(void **state)
{
	(void)state;
	static const uint64_t v[] = {
	    0, 1, 499999, 500000, 500001, 999999, 1000000, 1499999, 1500000, 2500000,
	    /* ties the double holds exactly: printf rounds them to even */
	    62500000, 187500000, 312500000, 1062500000, 123062500000,
	    /* carries into the seconds */
	    999499999, 999500000, 999500001, 9999500000, 9999499999, 123456789, 2000000000,
	    /* the 2^53 boundary of the fast path, and far past it */
	    (UINT64_C(1) << 53) - 1, UINT64_C(1) << 53, (UINT64_C(1) << 53) + 1,
	    (UINT64_C(1) << 53) - 500000, 9007199254240990, 9007199254740000, UINT64_MAX,
	    UINT64_MAX - 500000, UINT64_C(1) << 63};
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
		check(P_SECS3, v[i], 0);
	/* Every tie below a second and a few thousand near ties further up. */
	for (uint64_t ms = 0; ms < 1000; ms++) {
		check(P_SECS3, ms * 1000000 + 500000, 0);
		check(P_SECS3, ms * 1000000 + 499999, 0);
		check(P_SECS3, ms * 1000000 + 500001, 0);
	}
	for (int i = 0; i < 20000; i++) {
		uint64_t ms = rnd_mag() >> 20;
		for (uint64_t d = 499998; d <= 500002; d++)
			check(P_SECS3, ms * 1000000 + d, 0);
	}
}

static void
test_secs3_random(void **state)
{
	(void)state;
	for (int i = 0; i < 300000; i++) {
		uint64_t ns = rnd_mag();
		char a[48], b[48];
		struct fmt f = fmt_init(a, sizeof a);
		fmt_secs3(&f, ns);
		int n = snprintf(b, sizeof b, "%.3f", (double)ns / 1e9);
		if (f.len != (size_t)n || memcmp(a, b, f.len) != 0)
			fail_msg("%" PRIu64 " ns: want \"%s\", got \"%.*s\"", ns, b, (int)f.len, a);
	}
	/* Durations of real connections: up to an hour, every millisecond
	 * boundary region. */
	for (int i = 0; i < 200000; i++)
		check(P_SECS3, rnd() % (UINT64_C(3600) * 1000000000u), 0);
}

/* Bytes, strings and characters: cut at cap; nothing once len >= cap, not
 * even when a caller took len past cap itself. */
static void
test_text(void **state)
{
	(void)state;
	char b[16];
	memset(b, '#', sizeof b);
	struct fmt f = fmt_init(b, 8);
	fmt_str(&f, "abc");
	fmt_char(&f, '-');
	fmt_bytes(&f, "xyz\0q", 5);
	assert_int_equal(f.len, 8);
	assert_memory_equal(b, "abc-xyz\0#", 9);
	fmt_char(&f, '!');
	fmt_str(&f, "more");
	fmt_u64(&f, 1);
	fmt_secs3(&f, 1);
	assert_int_equal(f.len, 8);
	assert_int_equal(b[8], '#');
	f.len = 9; /* past cap */
	fmt_str(&f, "x");
	fmt_char(&f, 'y');
	fmt_digits(&f, 5, 3);
	assert_int_equal(f.len, 9);
	assert_int_equal(b[9], '#');
	assert_int_equal(fmt_room(&f), 0);
	f = fmt_init(b, 0);
	fmt_str(&f, "a");
	fmt_char(&f, 'a');
	assert_int_equal(f.len, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_u64),         cmocka_unit_test(test_digits),
	    cmocka_unit_test(test_secs3_edges), cmocka_unit_test(test_secs3_random),
	    cmocka_unit_test(test_text),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
