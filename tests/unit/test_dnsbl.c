/*
 * test_dnsbl.c - unit tests for engine/policy/dnsbl.c: the dnsbl_sites
 * parser (the issue's example, every filter form, weights, separators,
 * shared queries, every error), query names (IPv4, IPv6 by hand,
 * v4-mapped, other families, length limits), scoring and blame, and the
 * canonical text form (round trip, truncation).
 *
 * Owner: the DNSBL module. Each test owns its lists, on the stack or in
 * statics (a struct dnsbl_sites is about 11 KB).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "dnsbl.h"

static struct dnsbl_sites S, T;

/* ---- helpers ---- */

static void
ok(const char *text, struct dnsbl_sites *s)
{
	char err[256] = "x";

	if (dnsbl_sites_parse(text, s, err, sizeof(err)) != 0)
		fail_msg("\"%s\": %s", text, err);
	assert_string_equal(err, "");
}

/* text fails, with a message naming the entry (starting with want_entry)
 * and saying want_why. */
static void
bad(const char *text, const char *want_entry, const char *want_why)
{
	char err[512], entry[300];

	assert_int_equal(dnsbl_sites_parse(text, &S, err, sizeof(err)), -EINVAL);
	snprintf(entry, sizeof(entry), "entry \"%s", want_entry);
	if (strstr(err, entry) == NULL || strstr(err, want_why) == NULL)
		fail_msg("\"%s\": got \"%s\", want %s and \"%s\"", text, err, entry, want_why);
	assert_null(strchr(err, '\n'));
	assert_int_equal(S.nsites, 0);
	assert_int_equal(S.nqueries, 0);
}

static bool
has(const struct dnsbl_site *s, int octet, unsigned v)
{
	return (s->octet[octet][v >> 3] >> (v & 7)) & 1;
}

/* The values of one octet set as "a,b,c". */
static const char *
values(const struct dnsbl_site *s, int octet)
{
	static char b[1200];
	size_t o = 0;

	b[0] = '\0';
	for (unsigned v = 0; v < 256; v++)
		if (has(s, octet, v))
			o += (size_t)snprintf(b + o, sizeof(b) - o, o ? ",%u" : "%u", v);
	return b;
}

static const char *
fmt(const struct dnsbl_sites *s)
{
	static char b[8192];
	size_t n = dnsbl_sites_format(s, b, sizeof(b));

	assert_true(n < sizeof(b));
	assert_int_equal(strlen(b), n);
	return b;
}

static void
same(const struct dnsbl_sites *a, const struct dnsbl_sites *b)
{
	assert_int_equal(a->nsites, b->nsites);
	assert_int_equal(a->nqueries, b->nqueries);
	assert_memory_equal(a->query_site, b->query_site, a->nqueries);
	for (unsigned i = 0; i < a->nsites; i++) {
		assert_string_equal(a->site[i].domain, b->site[i].domain);
		assert_int_equal(a->site[i].any, b->site[i].any);
		assert_memory_equal(a->site[i].octet, b->site[i].octet, sizeof(a->site[i].octet));
		assert_int_equal(a->site[i].weight, b->site[i].weight);
		assert_int_equal(a->site[i].query, b->site[i].query);
	}
}

static struct dnsbl_answer
ans(unsigned n, const char *a0, const char *a1)
{
	struct dnsbl_answer a = {.n = (uint8_t)n};
	struct in_addr x;

	if (a0 != NULL && inet_pton(AF_INET, a0, &x) == 1)
		a.addr[0] = x.s_addr;
	if (a1 != NULL && inet_pton(AF_INET, a1, &x) == 1)
		a.addr[1] = x.s_addr;
	return a;
}

/* ---- parsing ---- */

static void
test_issue_example(void **st)
{
	(void)st;
	const char *t = "zen.spamhaus.org*3, bl.example=127.0.0.[2..11]*2, "
	                "list.dnswl.org=127.0.[0..255].[1..3]*-2";

	ok(t, &S);
	assert_int_equal(S.nsites, 3);
	assert_int_equal(S.nqueries, 3);
	assert_string_equal(S.site[0].domain, "zen.spamhaus.org");
	assert_true(S.site[0].any);
	assert_int_equal(S.site[0].weight, 3);
	assert_string_equal(S.site[1].domain, "bl.example");
	assert_false(S.site[1].any);
	assert_string_equal(values(&S.site[1], 0), "127");
	assert_string_equal(values(&S.site[1], 1), "0");
	assert_string_equal(values(&S.site[1], 2), "0");
	assert_string_equal(values(&S.site[1], 3), "2,3,4,5,6,7,8,9,10,11");
	assert_int_equal(S.site[1].weight, 2);
	assert_string_equal(S.site[2].domain, "list.dnswl.org");
	for (unsigned v = 0; v < 256; v++)
		assert_true(has(&S.site[2], 2, v));
	assert_string_equal(values(&S.site[2], 3), "1,2,3");
	assert_int_equal(S.site[2].weight, -2);
	for (unsigned i = 0; i < 3; i++) {
		assert_int_equal(S.site[i].query, i);
		assert_int_equal(S.query_site[i], i);
	}
	/* Canonical already: the text form gives it back. */
	assert_string_equal(fmt(&S), t);
}

static void
test_filter_forms(void **st)
{
	(void)st;
	ok("a.example=127.0.0.2 b.example=[0..3].[7].[1;3..5;9].[254;255;0] "
	   "c.example=255.[10..10].[0;0;1].[200..255]",
	   &S);
	assert_int_equal(S.nsites, 3);
	assert_string_equal(values(&S.site[0], 0), "127");
	assert_string_equal(values(&S.site[0], 3), "2");
	assert_string_equal(values(&S.site[1], 0), "0,1,2,3");
	assert_string_equal(values(&S.site[1], 1), "7");
	assert_string_equal(values(&S.site[1], 2), "1,3,4,5,9");
	assert_string_equal(values(&S.site[1], 3), "0,254,255");
	assert_string_equal(values(&S.site[2], 0), "255");
	assert_string_equal(values(&S.site[2], 1), "10");
	assert_string_equal(values(&S.site[2], 2), "0,1");
	unsigned count = 0;
	for (unsigned v = 0; v < 256; v++)
		count += has(&S.site[2], 3, v);
	assert_int_equal(count, 56);
	assert_true(has(&S.site[2], 3, 200) && has(&S.site[2], 3, 255));
	assert_false(has(&S.site[2], 3, 199));
	/* No filter: every bit set, and `any`. Leading zeros are numbers. */
	ok("x.example y.example=007.0.00.1", &S);
	assert_true(S.site[0].any);
	for (int k = 0; k < 4; k++)
		for (unsigned v = 0; v < 256; v++)
			assert_true(has(&S.site[0], k, v));
	assert_false(S.site[1].any);
	assert_string_equal(values(&S.site[1], 0), "7");
	assert_string_equal(values(&S.site[1], 2), "0");
}

static void
test_weights(void **st)
{
	(void)st;
	ok("a.example b.example*-3 c.example*+5 d.example*0 e.example*-1000 f.example*1000 "
	   "g.example=127.0.0.2*0007",
	   &S);
	assert_int_equal(S.nsites, 7);
	assert_int_equal(S.site[0].weight, 1);
	assert_int_equal(S.site[1].weight, -3);
	assert_int_equal(S.site[2].weight, 5);
	assert_int_equal(S.site[3].weight, 0);
	assert_int_equal(S.site[4].weight, -1000);
	assert_int_equal(S.site[5].weight, 1000);
	assert_int_equal(S.site[6].weight, 7);
	assert_false(S.site[6].any);
}

static void
test_separators_and_case(void **st)
{
	(void)st;
	ok("", &S);
	assert_int_equal(S.nsites, 0);
	ok(" ,\t,\n ", &S);
	assert_int_equal(S.nsites, 0);
	ok(",,A.Example ,\tb_x.example-1\n\r\vc.EXAMPLE*2,", &S);
	assert_int_equal(S.nsites, 3);
	assert_string_equal(S.site[0].domain, "a.example");
	assert_string_equal(S.site[1].domain, "b_x.example-1");
	assert_string_equal(S.site[2].domain, "c.example");
	/* Single labels, digits, and the longest domain. */
	char big[DNSBL_DOMAIN_MAX + 1];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (size_t i = 63; i < sizeof(big) - 1; i += 64)
		big[i] = '.';
	ok(big, &S);
	assert_string_equal(S.site[0].domain, big);
	ok("localhost 0.1-2", &S);
	assert_int_equal(S.nsites, 2);
}

static void
test_shared_queries(void **st)
{
	(void)st;
	ok("a.example=127.0.0.2*2 b.example a.example=127.0.0.3*-1, B.EXAMPLE*4 c.example "
	   "A.example",
	   &S);
	assert_int_equal(S.nsites, 6);
	assert_int_equal(S.nqueries, 3);
	assert_int_equal(S.site[0].query, 0);
	assert_int_equal(S.site[1].query, 1);
	assert_int_equal(S.site[2].query, 0);
	assert_int_equal(S.site[3].query, 1);
	assert_int_equal(S.site[4].query, 2);
	assert_int_equal(S.site[5].query, 0);
	assert_int_equal(S.query_site[0], 0);
	assert_int_equal(S.query_site[1], 1);
	assert_int_equal(S.query_site[2], 4);
	/* 32 entries on 16 domains is the most. */
	char t[2048];
	size_t o = 0;
	for (int i = 0; i < DNSBL_SITES_MAX; i++)
		o += (size_t)snprintf(t + o, sizeof(t) - o, "d%d.example*%d ",
		                      i % DNSBL_QUERIES_MAX, i);
	ok(t, &S);
	assert_int_equal(S.nsites, DNSBL_SITES_MAX);
	assert_int_equal(S.nqueries, DNSBL_QUERIES_MAX);
	assert_int_equal(S.site[31].query, 15);
	assert_int_equal(S.query_site[15], 15);
}

static void
test_errors(void **st)
{
	(void)st;
	char t[2048], big[300];
	size_t o = 0;

	bad("ok.example =127.0.0.2", "=127.0.0.2", "empty domain");
	bad("*3", "*3", "empty domain");
	bad("a!b.example", "a!b.example", "invalid character");
	bad("a:b", "a:b", "invalid character");
	bad("a..example", "a..example", "empty label");
	bad(".a.example", ".a.example", "empty label");
	bad("a.example.", "a.example.", "empty label");
	bad("a.example.*2", "a.example.*2", "empty label");
	memset(big, 'a', 64);
	strcpy(big + 64, ".example");
	bad(big, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...",
	    "label longer than 63");
	memset(big, 'a', sizeof(big));
	for (size_t i = 50; i < DNSBL_DOMAIN_MAX + 1; i += 51)
		big[i] = '.';
	big[DNSBL_DOMAIN_MAX + 1] = '\0';
	bad(big, "aaaaaaaaaa", "domain longer than 189");
	/* Filters. */
	const char *filters[] = {
	    "",
	    "127.0.0",
	    "127.0.0.1.2",
	    "127.0.0.256",
	    "127.0.0.[1..]",
	    "1.2.3.[3..1]",
	    "1.2.3.[]",
	    "1.2.3.[1;]",
	    "1.2.3.[1",
	    "1.2.3.[;1]",
	    "127.0.0.x",
	    "1.2.3.4x",
	    "1.2.3.0001",
	    "1.2.3.1..3",
	    "1.2.3.[1..2..3]",
	    "1.2.3.-1",
	    "1..2.3",
	    "1.2.3.",
	    ".1.2.3",
	    "1.2.3.[[1]]",
	    "1.2.3.[1]]",
	    "1.2.3.[0..256]",
	    "1.2.3.[1.2]",
	    "1.2.3.4=5",
	};
	for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
		char e[64];
		snprintf(e, sizeof(e), "bl.example=%s*2", filters[i]);
		bad(e, e, "bad filter");
	}
	/* A comma inside brackets ends the entry, as in postscreen. */
	bad("bl.example=1.2.3.[1,2]", "bl.example=1.2.3.[1\"", "bad filter");
	/* Weights. */
	bad("a.example*", "a.example*", "bad weight");
	bad("a.example*x", "a.example*x", "bad weight");
	bad("a.example*-", "a.example*-", "bad weight");
	bad("a.example*1.5", "a.example*1.5", "bad weight");
	bad("a.example*2*3", "a.example*2*3", "bad weight");
	bad("a.example*2=127.0.0.1", "a.example*2=127.0.0.1", "bad weight");
	bad("a.example*--1", "a.example*--1", "bad weight");
	bad("a.example*1001", "a.example*1001", "out of range -1000..1000");
	bad("a.example*-1001", "a.example*-1001", "out of range");
	bad("a.example*99999999999999999999999", "a.example*99999999999999999999999",
	    "out of range");
	/* Counts: the first entry over the limit is named. */
	for (int i = 0; i <= DNSBL_SITES_MAX; i++)
		o += (size_t)snprintf(t + o, sizeof(t) - o, "d%d.example=127.0.0.%d, ", i % 4, i);
	bad(t, "d0.example=127.0.0.32", "more than 32 entries");
	o = 0;
	for (int i = 0; i <= DNSBL_QUERIES_MAX; i++)
		o += (size_t)snprintf(t + o, sizeof(t) - o, "d%d.example ", i);
	bad(t, "d16.example", "more than 16 distinct domains");
	/* The entry is quoted printable; an earlier good list is cleared. */
	ok("good.example", &S);
	bad("good.example b\x01x", "b\\x01x", "invalid character");
	/* err may be 0 bytes. */
	assert_int_equal(dnsbl_sites_parse("*", &S, NULL, 0), -EINVAL);
}

/* ---- query names ---- */

static int
qname4(const char *ip, const char *d, char *out, size_t len)
{
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(25)};

	assert_int_equal(inet_pton(AF_INET, ip, &in.sin_addr), 1);
	return dnsbl_query_name((struct sockaddr *)&in, d, out, len);
}

static int
qname6(const char *ip, const char *d, char *out, size_t len)
{
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(25)};

	assert_int_equal(inet_pton(AF_INET6, ip, &in6.sin6_addr), 1);
	return dnsbl_query_name((struct sockaddr *)&in6, d, out, len);
}

static void
test_query_names(void **st)
{
	(void)st;
	char n[DNSBL_NAME_MAX];

	assert_int_equal(qname4("127.0.0.2", "zen.example", n, sizeof(n)), 21);
	assert_string_equal(n, "2.0.0.127.zen.example");
	assert_int_equal(qname4("192.0.2.254", "b", n, sizeof(n)), 13);
	assert_string_equal(n, "254.2.0.192.b");
	/* Worked out by hand: 2001:0db8:1234:5678:9abc:def0:fedc:ba98, nibbles last first. */
	assert_int_equal(
	    qname6("2001:db8:1234:5678:9abc:def0:fedc:ba98", "bl.example", n, sizeof(n)), 64 + 10);
	assert_string_equal(n, "8.9.a.b.c.d.e.f.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.8.b.d.0.1.0.0.2."
	                       "bl.example");
	assert_int_equal(qname6("2001:db8::1", "x", n, sizeof(n)), 65);
	assert_string_equal(n, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.x");
	assert_int_equal(qname6("::1", "x", n, sizeof(n)), 65);
	assert_string_equal(n, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.x");
	/* v4-mapped counts as IPv4; v4-compatible and NAT64 do not. */
	assert_int_equal(qname6("::ffff:192.0.2.1", "zen.example", n, sizeof(n)), 21);
	assert_string_equal(n, "1.2.0.192.zen.example");
	assert_int_equal(qname6("64:ff9b::192.0.2.1", "x", n, sizeof(n)), 65);
	assert_int_equal(qname6("::192.0.2.1", "x", n, sizeof(n)), 65);
	/* Other families, empty domains. */
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&un, "x", n, sizeof(n)),
	                 -EAFNOSUPPORT);
	assert_int_equal(qname4("127.0.0.2", "", n, sizeof(n)), -EINVAL);
	/* Lengths: the buffer (the NUL counts), and 253 for DNS. */
	assert_int_equal(qname4("127.0.0.2", "zen.example", n, 22), 21);
	assert_int_equal(qname4("127.0.0.2", "zen.example", n, 21), -ENAMETOOLONG);
	assert_int_equal(qname4("127.0.0.2", "zen.example", n, 0), -ENAMETOOLONG);
	char d[260];
	memset(d, 'a', sizeof(d));
	for (size_t i = 60; i < sizeof(d); i += 61)
		d[i] = '.';
	d[DNSBL_DOMAIN_MAX] = '\0';
	ok(d, &S); /* the longest domain parse accepts fits every client */
	assert_int_equal(qname6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", d, n, sizeof(n)), 253);
	assert_int_equal(strlen(n), 253);
	d[DNSBL_DOMAIN_MAX] = 'a';
	d[DNSBL_DOMAIN_MAX + 1] = '\0';
	char n2[400];
	assert_int_equal(qname6("2001:db8::1", d, n2, sizeof(n2)), -ENAMETOOLONG);
	d[DNSBL_DOMAIN_MAX + 1] = 'a';
	d[253 - 16] = '\0';
	assert_int_equal(qname4("255.255.255.255", d, n2, sizeof(n2)), 253);
	d[253 - 16] = 'a';
	d[253 - 15] = '\0';
	assert_int_equal(qname4("255.255.255.255", d, n2, sizeof(n2)), -ENAMETOOLONG);
}

/* ---- scoring ---- */

static void
test_score_and_blame(void **st)
{
	(void)st;
	struct dnsbl_answer a[DNSBL_QUERIES_MAX];
	const char *who = "unset";

	ok("zen.example*3, bl.example=127.0.0.[2..11]*2, bl.example=127.0.0.[10..20]*5, "
	   "wl.example=127.0.[0..255].[1..3]*-2, any.example",
	   &S);
	assert_int_equal(S.nqueries, 4);
	/* Nothing listed. */
	memset(a, 0, sizeof(a));
	assert_int_equal(dnsbl_score(&S, a, &who), 0);
	assert_null(who);
	/* No filter: any address matches, whatever it is. */
	a[0] = ans(1, "10.1.2.3", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), 3);
	assert_string_equal(who, "zen.example");
	/* One query, two entries: 127.0.0.10 matches both, 127.0.0.2 the first. */
	a[1] = ans(1, "127.0.0.10", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), 3 + 2 + 5);
	assert_string_equal(who, "bl.example");
	assert_ptr_equal(who, S.site[2].domain); /* the *5 entry, not the *2 one */
	a[1] = ans(1, "127.0.0.2", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), 3 + 2);
	assert_ptr_equal(who, S.site[0].domain);
	/* An entry counts once however many addresses match; ANY address may match. */
	a[0] = ans(0, NULL, NULL);
	a[1] = ans(2, "127.0.0.3", "127.0.0.4");
	assert_int_equal(dnsbl_score(&S, a, &who), 2);
	a[1] = ans(2, "127.0.1.3", "127.0.0.15");
	assert_int_equal(dnsbl_score(&S, a, &who), 5);
	a[1] = ans(2, "127.0.1.3", "126.0.0.15");
	assert_int_equal(dnsbl_score(&S, a, &who), 0);
	assert_null(who);
	/* Allow list: negative only, no blame; with a listing, it subtracts. */
	a[1] = ans(0, NULL, NULL);
	a[2] = ans(1, "127.0.9.2", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), -2);
	assert_null(who);
	a[2] = ans(1, "127.0.9.4", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), 0);
	a[2] = ans(1, "127.0.9.2", NULL);
	a[3] = ans(1, "127.0.0.2", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), -1);
	assert_string_equal(who, "any.example");
	/* Byte order: addr is network order, the filter reads 127 first. */
	a[2] = ans(1, "2.9.0.127", NULL);
	assert_int_equal(dnsbl_score(&S, a, NULL), 1);
	/* n beyond DNSBL_ADDR_MAX counts as DNSBL_ADDR_MAX. */
	memset(a, 0, sizeof(a));
	a[1].n = 200;
	a[1].addr[DNSBL_ADDR_MAX - 1] = htonl(0x7f00000b);
	assert_int_equal(dnsbl_score(&S, a, &who), 7);
	/* Ties: the first in the list. */
	ok("b.example*4 a.example*4 c.example*1", &S);
	for (int i = 0; i < 3; i++)
		a[i] = ans(1, "127.0.0.2", NULL);
	assert_int_equal(dnsbl_score(&S, a, &who), 9);
	assert_ptr_equal(who, S.site[0].domain);
	/* Weight 0 counts nothing and is never blamed. */
	ok("z.example*0", &S);
	assert_int_equal(dnsbl_score(&S, a, &who), 0);
	assert_null(who);
	/* Empty list: ans may be NULL. */
	ok("", &S);
	assert_int_equal(dnsbl_score(&S, NULL, &who), 0);
	assert_null(who);
}

/* ---- text form ---- */

static void
test_format(void **st)
{
	(void)st;
	char b[64];

	ok("  A.Example*1 ,b.example=127.0.[0;1].[5..5]*-0, c.example=[0..255].[1;2;3;5;7..9;"
	   "255].[254;0;255].[0..2;4]*+7\tb.example=127.0.0.1",
	   &S);
	assert_string_equal(fmt(&S), "a.example, b.example=127.0.[0;1].5*0, "
	                             "c.example=[0..255].[1..3;5;7..9;255].[0;254;255].[0..2;4]*7, "
	                             "b.example=127.0.0.1");
	ok(fmt(&S), &T);
	same(&S, &T);
	/* An explicit all-values filter stays a filter. */
	ok("a.example=[0..255].[0..255].[0..255].[0..255]", &S);
	assert_false(S.site[0].any);
	assert_string_equal(fmt(&S), "a.example=[0..255].[0..255].[0..255].[0..255]");
	/* Every other value: the longest octet form. */
	char t[4096];
	size_t o = (size_t)snprintf(t, sizeof(t), "x.example=[");
	for (unsigned v = 0; v < 256; v += 2)
		o += (size_t)snprintf(t + o, sizeof(t) - o, v ? ";%u" : "%u", v);
	snprintf(t + o, sizeof(t) - o, "].1.2.[3..5]*-1000");
	ok(t, &S);
	assert_string_equal(fmt(&S), t);
	ok(fmt(&S), &T);
	same(&S, &T);
	/* The empty list is the empty text. */
	ok("", &S);
	assert_string_equal(fmt(&S), "");
	/* snprintf-like: cut, NUL terminated, returns the whole length. */
	ok("zen.example*3, bl.example=127.0.0.[2..11]*2", &S);
	assert_int_equal(dnsbl_sites_format(&S, NULL, 0), 43);
	memset(b, 'x', sizeof(b));
	assert_int_equal(dnsbl_sites_format(&S, b, 10), 43);
	assert_string_equal(b, "zen.examp");
	assert_int_equal(b[10], 'x');
	assert_int_equal(dnsbl_sites_format(&S, b, 1), 43);
	assert_string_equal(b, "");
	assert_int_equal(dnsbl_sites_format(&S, b, 44), 43);
	assert_string_equal(b, "zen.example*3, bl.example=127.0.0.[2..11]*2");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_issue_example),  cmocka_unit_test(test_filter_forms),
	    cmocka_unit_test(test_weights),        cmocka_unit_test(test_separators_and_case),
	    cmocka_unit_test(test_shared_queries), cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_query_names),    cmocka_unit_test(test_score_and_blame),
	    cmocka_unit_test(test_format),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
