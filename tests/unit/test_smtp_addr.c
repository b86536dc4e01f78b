/*
 * test_smtp_addr.c - RFC 5321/6531 address parsing, UTF-8 validation and
 * accepted-domain matching (engine/smtp/smtp_addr.c), as tables. Every input is
 * placed to end at a PROT_NONE guard page, so an over-read faults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "ringmx/smtp.h"

static char *guard_page;
static size_t guard_room;

static const char *
guarded(const char *p, size_t n)
{
	assert_true(n <= guard_room);
	memcpy(guard_page - n, p, n);
	return guard_page - n;
}

struct acase {
	const char *in;
	size_t len; /* 0: strlen */
	bool utf8;
	enum smtp_addr_err want;
	const char *domain; /* expected domain view, NULL: none / not checked */
};

#define OK   SMTP_ADDR_OK
#define SYN  SMTP_ADDR_SYNTAX
#define LONG SMTP_ADDR_TOO_LONG
#define U8   SMTP_ADDR_UTF8
#define BAD  SMTP_ADDR_BAD_UTF8
#define RT   SMTP_ADDR_ROUTE
#define TRK  SMTP_ADDR_RELAY_TRICK
#define LIT  SMTP_ADDR_LITERAL
#define NOD  SMTP_ADDR_NO_DOMAIN

static const struct acase cases[] = {
	/* valid */
	{"", 0, false, OK, NULL},
	{"a@example.test", 0, false, OK, "example.test"},
	{"first.last+tag@sub-1.example.test", 0, false, OK, "sub-1.example.test"},
	{"!#$&'*+-/=?^_`{|}~@x.test", 0, false, TRK, "x.test"}, /* ! is a relay trick */
	{"#$&'*+-/=?^_`{|}~@x.test", 0, false, OK, "x.test"},
	{"\"quoted local\"@x.test", 0, false, OK, "x.test"},
	{"\"q\\\"x\\\\y\"@x.test", 0, false, OK, "x.test"},
	{"\"\"@x.test", 0, false, OK, "x.test"},
	{"Postmaster", 0, false, OK, NULL},
	{"POSTMASTER", 0, false, OK, NULL},
	{"a@1x.test", 0, false, OK, "1x.test"},
	{"a@x", 0, false, OK, "x"},
	/* syntax */
	{"a", 0, false, NOD, NULL},
	{"\"Postmaster\"", 0, false, NOD, NULL},
	{"a@", 0, false, SYN, NULL},
	{"@x.test", 0, false, SYN, NULL},
	{".a@x.test", 0, false, SYN, NULL},
	{"a.@x.test", 0, false, SYN, NULL},
	{"a..b@x.test", 0, false, SYN, NULL},
	{"a b@x.test", 0, false, SYN, NULL},
	{"a(b)@x.test", 0, false, SYN, NULL},
	{"a@b@x.test", 0, false, SYN, NULL},
	{"a@x.test.", 0, false, SYN, NULL},
	{"a@.x.test", 0, false, SYN, NULL},
	{"a@x..test", 0, false, SYN, NULL},
	{"a@-x.test", 0, false, SYN, NULL},
	{"a@x-.test", 0, false, SYN, NULL},
	{"a@x_y.test", 0, false, SYN, NULL},
	{"\"unterminated@x.test", 0, false, SYN, NULL},
	{"\"a\"b@x.test", 0, false, SYN, NULL},
	{"\"a\tb\"@x.test", 0, false, SYN, NULL},
	{"\"a\\\"@x.test", 0, false, SYN, NULL},
	{"a@[1.2.3]", 0, false, SYN, NULL},
	{"a@[1.2.3.256]", 0, false, SYN, NULL},
	{"a@[1.2.3.4", 0, false, SYN, NULL},
	{"a@[]", 0, false, SYN, NULL},
	{"a@[IPv6:zz::1]", 0, false, SYN, NULL},
	{"a@[x-:y]", 0, false, SYN, NULL},
	/* NUL and UTF-8 */
	{"a\0b@x.test", 9, false, BAD, NULL},
	{"a\0b@x.test", 9, true, BAD, NULL},
	{"j\xc3\xb6rg@x.test", 0, false, U8, NULL},
	{"j\xc3\xb6rg@x.test", 0, true, OK, "x.test"},
	{"a@b\xc3\xbc" "cher.test", 0, true, OK, "b\xc3\xbc" "cher.test"},
	{"\"\xc3\xb6\"@x.test", 0, true, OK, "x.test"},
	{"\xe7\x94\xa8\xe6\x88\xb7@x.test", 0, true, OK, "x.test"},
	{"\xf0\x9f\x98\x80@x.test", 0, true, OK, "x.test"},
	{"a\xc0\xaf@x.test", 0, true, BAD, NULL},         /* overlong */
	{"a\xe0\x80\xaf@x.test", 0, true, BAD, NULL},     /* overlong */
	{"a\xed\xa0\x80@x.test", 0, true, BAD, NULL},     /* surrogate */
	{"a\xf4\x90\x80\x80@x.test", 0, true, BAD, NULL}, /* > U+10FFFF */
	{"a\xc3@x.test", 0, true, BAD, NULL},             /* truncated */
	{"a\xe7\x94@x.test", 0, false, BAD, NULL},        /* truncated, no SMTPUTF8 */
	{"a\x80@x.test", 0, true, BAD, NULL},             /* lone continuation */
	{"a@x.test\xc3", 0, true, BAD, NULL},             /* truncated at the end */
	/* relay tricks */
	{"@a.test:u@x.test", 0, false, RT, "x.test"},
	{"@a.test,@b.test:u@x.test", 0, false, RT, "x.test"},
	{"@a.test:u", 0, false, SYN, NULL},
	{"@a.test,b.test:u@x.test", 0, false, SYN, NULL},
	{"@:u@x.test", 0, false, SYN, NULL},
	{"u%y.test@x.test", 0, false, TRK, "x.test"},
	{"y.test!u@x.test", 0, false, TRK, "x.test"},
	{"\"u@y.test\"@x.test", 0, false, TRK, "x.test"},
	{"\"u%y\"@x.test", 0, false, TRK, "x.test"},
	{"\"u\\!y\"@x.test", 0, false, TRK, "x.test"},
	{"u!y", 0, false, NOD, NULL},
	{"a@[192.0.2.1]", 0, false, LIT, "192.0.2.1"},
	{"a@[IPv6:2001:db8::1]", 0, false, LIT, "IPv6:2001:db8::1"},
	{"a@[ipv6:::1]", 0, false, LIT, "ipv6:::1"},
	{"a@[IPv6:::ffff:192.0.2.1]", 0, false, LIT, NULL},
	{"a@[x-tag:stuff]", 0, false, LIT, NULL},
};

static void
test_addr_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct acase *c = &cases[i];
		size_t n = c->len ? c->len : strlen(c->in);
		struct smtp_addr a;
		enum smtp_addr_err e = smtp_addr_parse(guarded(c->in, n), n, c->utf8, &a);

		if (e != c->want)
			fail_msg("case %zu: got %d, want %d", i, e, c->want);
		if (c->domain != NULL &&
		    (a.domain == NULL || a.domain_len != strlen(c->domain) ||
		     memcmp(a.domain, c->domain, a.domain_len) != 0))
			fail_msg("case %zu: wrong domain view", i);
		if (e == OK && c->domain == NULL)
			assert_null(a.domain);
	}
}

static void
fill(char *buf, size_t n, char c)
{
	memset(buf, c, n);
}

/* Lengths at and past the limits: local 64, label 63, domain 255, path 256
 * (including the angle brackets, so 254 inside). */
static void
test_addr_lengths(void **state)
{
	char buf[600];
	struct smtp_addr a;
	size_t n;

	(void)state;
	fill(buf, 64, 'l');
	memcpy(buf + 64, "@x.test", 7);
	assert_int_equal(smtp_addr_parse(guarded(buf, 71), 71, false, &a), OK);
	fill(buf, 65, 'l');
	memcpy(buf + 65, "@x.test", 7);
	assert_int_equal(smtp_addr_parse(guarded(buf, 72), 72, false, &a), LONG);

	/* label of 63 ok, 64 too long */
	memcpy(buf, "a@", 2);
	fill(buf + 2, 63, 'd');
	memcpy(buf + 65, ".test", 5);
	assert_int_equal(smtp_addr_parse(guarded(buf, 70), 70, false, &a), OK);
	fill(buf + 2, 64, 'd');
	memcpy(buf + 66, ".test", 5);
	assert_int_equal(smtp_addr_parse(guarded(buf, 71), 71, false, &a), LONG);

	/* 254 octets inside the brackets: ok; 255: too long. "a@" + labels
	 * of 62, 62, 62, 63 and three dots = 254. */
	n = 0;
	memcpy(buf, "a@", 2);
	n = 2;
	for (int l = 0; l < 4; l++) {
		size_t k = l == 3 ? 63 : 62;
		fill(buf + n, k, 'd');
		n += k;
		if (l < 3)
			buf[n++] = '.';
	}
	assert_int_equal(n, 254);
	assert_int_equal(smtp_addr_parse(guarded(buf, n), n, false, &a), OK);
	memmove(buf + 1, buf, n);
	n++;
	assert_int_equal(smtp_addr_parse(guarded(buf, n), n, false, &a), LONG);
}

static void
test_utf8_valid(void **state)
{
	(void)state;
	assert_true(smtp_utf8_valid("", 0));
	assert_true(smtp_utf8_valid("plain", 5));
	assert_true(smtp_utf8_valid("\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf", 10));
	assert_true(smtp_utf8_valid("\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", 8));
	assert_false(smtp_utf8_valid("a\0b", 3));
	assert_false(smtp_utf8_valid("\xc1\xbf", 2));
	assert_false(smtp_utf8_valid("\xe0\x9f\xbf", 3));
	assert_false(smtp_utf8_valid("\xf0\x8f\xbf\xbf", 4));
	assert_false(smtp_utf8_valid("\xed\xbf\xbf", 3));
	assert_false(smtp_utf8_valid("\xf5\x80\x80\x80", 4));
	assert_false(smtp_utf8_valid("\xff", 1));
	assert_false(smtp_utf8_valid("\xe2\x82", 2));
	assert_false(smtp_utf8_valid("\xe2\x28\xa1", 3));
}

static void
test_domain_accepted(void **state)
{
	static const char *const doms[] = {"example.test", ".sub.example.test", "other.test"};
	struct smtp_conf c;

	(void)state;
	memset(&c, 0, sizeof c);
	c.domains = doms;
	c.ndomains = 3;
#define ACC(s) smtp_domain_accepted(&c, guarded(s, strlen(s)), strlen(s))
	assert_true(ACC("example.test"));
	assert_true(ACC("EXAMPLE.Test"));
	assert_true(ACC("other.test"));
	assert_true(ACC("a.sub.example.test"));
	assert_true(ACC("x.y.SUB.example.test"));
	assert_false(ACC("sub.example.test"));
	assert_false(ACC("a.example.test"));
	assert_false(ACC("example.tes"));
	assert_false(ACC("xexample.test"));
	assert_false(ACC("example.test.evil"));
	assert_false(ACC("asub.example.test"));
	assert_false(ACC(""));
#undef ACC
	c.ndomains = 0;
	assert_false(smtp_domain_accepted(&c, "example.test", 12));
}

static int
setup(void **state)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map;

	(void)state;
	guard_room = (size_t)page;
	map = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	if (map == MAP_FAILED || mprotect(map + page, (size_t)page, PROT_NONE) != 0)
		return -1;
	guard_page = map + page;
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addr_table),
		cmocka_unit_test(test_addr_lengths),
		cmocka_unit_test(test_utf8_valid),
		cmocka_unit_test(test_domain_accepted),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
