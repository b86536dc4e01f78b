/*
 * test_cidr_map.c - unit tests for engine/policy/cidr_map.c, the
 * client_access table: every syntax form (IPv4 and IPv6 networks and
 * hosts, bracketed IPv6, comments, blank and indented lines, CR LF, action
 * case, REJECT text and its default), first match wins, /0 /32 /128,
 * v4-mapped clients and rules, every refused line with its line number, a
 * file on disk through cidr_map_load(), and a 10,000-rule table.
 *
 * Owner: the client_access module. Files are written under a mkdtemp()
 * directory created in the group setup and removed in the teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cidr_map.h"

static char tmpdir[64];

/* ---- helpers ---- */

static struct cidr_map *
ok(const char *text)
{
	char err[256] = "";
	struct cidr_map *m = NULL;
	int rc = cidr_map_parse(text, strlen(text), "t", &m, err, sizeof(err));

	if (rc != 0)
		fail_msg("unexpected error %d: %s\n--- input\n%s", rc, err, text);
	assert_non_null(m);
	return m;
}

static void
bad_n(const char *text, size_t len, const char *want)
{
	char err[256] = "";
	struct cidr_map *m = (struct cidr_map *)&err; /* must be reset to NULL */
	int rc = cidr_map_parse(text, len, "t", &m, err, sizeof(err));

	if (rc == 0) {
		cidr_map_free(m);
		fail_msg("accepted, wanted '%s'\n--- input\n%s", want, text);
	}
	assert_int_equal(rc, -EINVAL);
	assert_null(m);
	assert_string_equal(err, want);
}

static void
bad(const char *text, const char *want)
{
	bad_n(text, strlen(text), want);
}

/* Look up the text form of an address; *txt gets the REJECT text. */
static enum cidr_action
look(const struct cidr_map *m, const char *ip, const char **txt)
{
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
	struct sockaddr_in s4 = {.sin_family = AF_INET};
	const char *t = NULL;
	size_t tl = 99;
	enum cidr_action a;

	if (strchr(ip, ':') != NULL) {
		assert_int_equal(inet_pton(AF_INET6, ip, &s6.sin6_addr), 1);
		a = cidr_map_lookup(m, (struct sockaddr *)&s6, &t, &tl);
	} else {
		assert_int_equal(inet_pton(AF_INET, ip, &s4.sin_addr), 1);
		a = cidr_map_lookup(m, (struct sockaddr *)&s4, &t, &tl);
	}
	if (a == CIDR_REJECT) {
		assert_non_null(t);
		assert_int_equal(strlen(t), tl);
	} else {
		assert_null(t);
		assert_int_equal(tl, 0);
	}
	if (txt != NULL)
		*txt = t;
	return a;
}

/* ---- syntax ---- */

static void
test_forms(void **state)
{
	(void)state;
	struct cidr_map *m = ok("# client_access\n"
	                        "\n"
	                        "   \t\n"
	                        "192.0.2.0/24 REJECT\n"
	                        "198.51.100.7\tOK\n"
	                        "  2001:db8::/32 dunno\n"
	                        "[2001:db9::]/32 Reject go away  \t \n"
	                        "[2001:dba::1]   ok\n"
	                        "2001:dbb::2 REJECT\tspam\tsource\r\n"
	                        "\t# indented comment\n"
	                        "203.0.113.0/25 OK trailing words are ignored\n"
	                        "203.0.113.128/25 REJECT   \n"
	                        "10.0.0.0/8 REJECT no final newline");
	const char *t;

	assert_int_equal(cidr_map_count(m), 9);
	assert_int_equal(look(m, "192.0.2.1", &t), CIDR_REJECT);
	assert_string_equal(t, CIDR_DEFAULT_TEXT);
	assert_int_equal(look(m, "192.0.3.1", NULL), CIDR_NONE);
	assert_int_equal(look(m, "198.51.100.7", NULL), CIDR_OK);
	assert_int_equal(look(m, "198.51.100.8", NULL), CIDR_NONE);
	assert_int_equal(look(m, "2001:db8:ffff::1", NULL), CIDR_DUNNO);
	assert_int_equal(look(m, "2001:db9::42", &t), CIDR_REJECT);
	assert_string_equal(t, "go away");
	assert_int_equal(look(m, "2001:dba::1", NULL), CIDR_OK);
	assert_int_equal(look(m, "2001:dba::2", NULL), CIDR_NONE);
	assert_int_equal(look(m, "2001:dbb::2", &t), CIDR_REJECT);
	assert_string_equal(t, "spam\tsource");
	assert_int_equal(look(m, "203.0.113.5", NULL), CIDR_OK);
	assert_int_equal(look(m, "203.0.113.200", &t), CIDR_REJECT);
	assert_string_equal(t, CIDR_DEFAULT_TEXT);
	assert_int_equal(look(m, "10.200.0.1", &t), CIDR_REJECT);
	assert_string_equal(t, "no final newline");
	assert_int_equal(look(m, "2001:dbc::1", NULL), CIDR_NONE);
	cidr_map_free(m);
}

static void
test_empty(void **state)
{
	(void)state;
	struct cidr_map *m = ok("");

	assert_int_equal(cidr_map_count(m), 0);
	assert_int_equal(look(m, "192.0.2.1", NULL), CIDR_NONE);
	cidr_map_free(m);
	m = ok("# nothing\n\n  \r\n");
	assert_int_equal(cidr_map_count(m), 0);
	cidr_map_free(m);
	/* No table at all (client_access unset), and NULL frees. */
	assert_int_equal(look(NULL, "192.0.2.1", NULL), CIDR_NONE);
	assert_int_equal(cidr_map_count(NULL), 0);
	cidr_map_free(NULL);
}

static void
test_first_match(void **state)
{
	(void)state;
	struct cidr_map *m = ok("192.0.2.7 OK\n"
	                        "192.0.2.0/24 REJECT first\n"
	                        "192.0.0.0/16 REJECT second\n"
	                        "192.0.2.7 REJECT never\n"
	                        "0.0.0.0/0 DUNNO\n");
	const char *t;

	assert_int_equal(look(m, "192.0.2.7", NULL), CIDR_OK);
	assert_int_equal(look(m, "192.0.2.8", &t), CIDR_REJECT);
	assert_string_equal(t, "first");
	assert_int_equal(look(m, "192.0.3.8", &t), CIDR_REJECT);
	assert_string_equal(t, "second");
	assert_int_equal(look(m, "8.8.8.8", NULL), CIDR_DUNNO);
	cidr_map_free(m);
}

static void
test_prefix_edges(void **state)
{
	(void)state;
	struct cidr_map *m = ok("192.0.2.1/32 OK\n"
	                        "2001:db8::1/128 OK\n"
	                        "2001:db8::/127 REJECT pair\n"
	                        "192.0.2.0/31 REJECT pair4\n"
	                        "128.0.0.0/1 DUNNO\n"
	                        "0.0.0.0/0 REJECT any4\n"
	                        "8000::/1 DUNNO\n"
	                        "::/0 REJECT any6\n");
	const char *t;

	assert_int_equal(look(m, "192.0.2.1", NULL), CIDR_OK);
	assert_int_equal(look(m, "192.0.2.0", &t), CIDR_REJECT);
	assert_string_equal(t, "pair4");
	assert_int_equal(look(m, "192.0.2.2", NULL), CIDR_DUNNO);
	assert_int_equal(look(m, "10.0.0.1", &t), CIDR_REJECT);
	assert_string_equal(t, "any4");
	assert_int_equal(look(m, "255.255.255.255", NULL), CIDR_DUNNO);
	assert_int_equal(look(m, "0.0.0.0", &t), CIDR_REJECT);
	assert_string_equal(t, "any4");
	assert_int_equal(look(m, "2001:db8::1", NULL), CIDR_OK);
	assert_int_equal(look(m, "2001:db8::", &t), CIDR_REJECT);
	assert_string_equal(t, "pair");
	assert_int_equal(look(m, "2001:db8::2", &t), CIDR_REJECT);
	assert_string_equal(t, "any6");
	assert_int_equal(look(m, "ffff::1", NULL), CIDR_DUNNO);
	assert_int_equal(look(m, "::", &t), CIDR_REJECT);
	assert_string_equal(t, "any6");
	cidr_map_free(m);

	/* A 64-bit boundary inside IPv6: /64 and /65 and /63. */
	m = ok("2001:db8:0:1:8000::/65 REJECT upper\n"
	       "2001:db8:0:1::/64 OK\n"
	       "2001:db8::/63 DUNNO\n");
	assert_int_equal(look(m, "2001:db8:0:1:8000::5", &t), CIDR_REJECT);
	assert_int_equal(look(m, "2001:db8:0:1:7fff::5", NULL), CIDR_OK);
	assert_int_equal(look(m, "2001:db8::5", NULL), CIDR_DUNNO);
	assert_int_equal(look(m, "2001:db8:0:2::", NULL), CIDR_NONE);
	cidr_map_free(m);
}

static void
test_families(void **state)
{
	(void)state;
	/* ::/0 is every IPv6 client, not the IPv4 ones; a v4-mapped client
	 * is IPv4. */
	struct cidr_map *m = ok("::/0 REJECT six\n");
	struct sockaddr_un_like {
		sa_family_t fam;
		char pad[30];
	} other = {.fam = AF_UNIX};

	assert_int_equal(look(m, "192.0.2.1", NULL), CIDR_NONE);
	assert_int_equal(look(m, "::ffff:192.0.2.1", NULL), CIDR_NONE);
	assert_int_equal(look(m, "::1", NULL), CIDR_REJECT);
	assert_int_equal(cidr_map_lookup(m, (struct sockaddr *)(void *)&other, NULL, NULL),
	                 CIDR_NONE);
	cidr_map_free(m);

	m = ok("192.0.2.0/24 REJECT v4\n0.0.0.0/0 OK\n");
	assert_int_equal(look(m, "::ffff:192.0.2.9", NULL), CIDR_REJECT);
	assert_int_equal(look(m, "::ffff:10.0.0.1", NULL), CIDR_OK);
	/* Not v4-mapped: a native IPv6 address with the same low bits. */
	assert_int_equal(look(m, "::192.0.2.9", NULL), CIDR_NONE);
	assert_int_equal(look(m, "64:ff9b::192.0.2.9", NULL), CIDR_NONE);
	cidr_map_free(m);

	/* A rule written as v4-mapped IPv6 is the IPv4 rule it names. */
	m = ok("::ffff:192.0.2.0/120 REJECT mapped\n"
	       "[::ffff:0:0]/96 OK\n"
	       "::fffe:0:0/95 DUNNO\n");
	assert_int_equal(cidr_map_count(m), 3);
	assert_int_equal(look(m, "192.0.2.3", NULL), CIDR_REJECT);
	assert_int_equal(look(m, "::ffff:192.0.2.3", NULL), CIDR_REJECT);
	assert_int_equal(look(m, "10.1.2.3", NULL), CIDR_OK);
	/* /95 is wider than the mapped range: an IPv6 rule. */
	assert_int_equal(look(m, "::fffe:0:1", NULL), CIDR_DUNNO);
	cidr_map_free(m);
}

static void
test_lookup_out_args(void **state)
{
	(void)state;
	struct cidr_map *m = ok("192.0.2.0/24 REJECT some text\n");
	struct sockaddr_in s4 = {.sin_family = AF_INET};
	const char *t = NULL;
	size_t tl = 0;

	inet_pton(AF_INET, "192.0.2.5", &s4.sin_addr);
	/* Either out-pointer may be NULL. */
	assert_int_equal(cidr_map_lookup(m, (struct sockaddr *)&s4, NULL, NULL), CIDR_REJECT);
	assert_int_equal(cidr_map_lookup(m, (struct sockaddr *)&s4, &t, NULL), CIDR_REJECT);
	assert_string_equal(t, "some text");
	assert_int_equal(cidr_map_lookup(m, (struct sockaddr *)&s4, NULL, &tl), CIDR_REJECT);
	assert_int_equal(tl, 9);
	cidr_map_free(m);
}

/* ---- refused lines ---- */

static void
test_bad_address(void **state)
{
	(void)state;
	bad("# c\n192.0.2.256 OK\n", "t:2: bad address '192.0.2.256'");
	bad("\n\n192.0.2 OK\n", "t:3: bad address '192.0.2'");
	bad("192.0.02.1 OK\n", "t:1: bad address '192.0.02.1'");
	bad("example.com OK\n", "t:1: bad address 'example.com'");
	bad("2001:db8:::1 OK\n", "t:1: bad address '2001:db8:::1'");
	bad("[2001:db8::1 OK\n", "t:1: bad address '[2001:db8::1'");
	bad("[2001:db8::1/64] OK\n", "t:1: bad address '[2001:db8::1/64]'");
	bad("[192.0.2.1] OK\n", "t:1: bad address '[192.0.2.1]' (only IPv6 goes in brackets)");
	bad("[] OK\n", "t:1: bad address '[]'");
	bad("/24 OK\n", "t:1: bad address '/24'");
	bad("!192.0.2.1 OK\n", "t:1: bad address '!192.0.2.1'");
	bad("192.0.2.1\vOK\n", "t:1: bad address '192.0.2.1?OK'");
	bad("1111:2222:3333:4444:5555:6666:7777:8888:9999 OK\n",
	    "t:1: bad address '1111:2222:3333:4444:5555:6666:7777:8888:9999'");
	bad("192.0.2.0/ OK\n", "t:1: bad prefix length in '192.0.2.0/'");
	bad("192.0.2.0/+24 OK\n", "t:1: bad prefix length in '192.0.2.0/+24'");
	bad("192.0.2.0/2a OK\n", "t:1: bad prefix length in '192.0.2.0/2a'");
	bad("0.0.0.0/0000 OK\n", "t:1: bad prefix length in '0.0.0.0/0000'");
	bad("192.0.2.0/24/1 OK\n", "t:1: bad prefix length in '192.0.2.0/24/1'");
}

static void
test_bad_prefix(void **state)
{
	(void)state;
	bad("1.2.3.4 OK\n1.2.3.4/33 OK\n",
	    "t:2: prefix length out of range (0..32) in '1.2.3.4/33'");
	bad("::/129 OK\n", "t:1: prefix length out of range (0..128) in '::/129'");
	bad("[::]/999 OK\n", "t:1: prefix length out of range (0..128) in '[::]/999'");
	bad("::ffff:1.2.3.4/129 OK\n",
	    "t:1: prefix length out of range (0..128) in '::ffff:1.2.3.4/129'");
}

static void
test_bad_host_bits(void **state)
{
	(void)state;
	bad("10.0.0.0/8 OK\n10.0.0.1/8 OK\n", "t:2: non-null host address bits in '10.0.0.1/8', "
	                                      "perhaps you should use '10.0.0.0/8' instead");
	bad("192.0.2.1/0 OK\n", "t:1: non-null host address bits in '192.0.2.1/0', "
	                        "perhaps you should use '0.0.0.0/0' instead");
	bad("2001:db8::1/64 OK\n", "t:1: non-null host address bits in '2001:db8::1/64', "
	                           "perhaps you should use '2001:db8::/64' instead");
	bad("[2001:db8:0:1:8000::]/64 OK\n",
	    "t:1: non-null host address bits in '[2001:db8:0:1:8000::]/64', "
	    "perhaps you should use '2001:db8:0:1::/64' instead");
	bad("2001:db8::1/127 OK\n", "t:1: non-null host address bits in '2001:db8::1/127', "
	                            "perhaps you should use '2001:db8::/127' instead");
	bad("::ffff:192.0.2.1/120 OK\n",
	    "t:1: non-null host address bits in '::ffff:192.0.2.1/120', "
	    "perhaps you should use '192.0.2.0/24' instead");
}

static void
test_bad_action(void **state)
{
	(void)state;
	bad("192.0.2.1 OK\n192.0.2.2 PERMIT\n",
	    "t:2: unknown action 'PERMIT' (OK, DUNNO or REJECT)");
	bad("192.0.2.1 554 go away\n", "t:1: unknown action '554' (OK, DUNNO or REJECT)");
	bad("192.0.2.1 OKAY\n", "t:1: unknown action 'OKAY' (OK, DUNNO or REJECT)");
	bad("192.0.2.1 REJECT:\n", "t:1: unknown action 'REJECT:' (OK, DUNNO or REJECT)");
	bad("192.0.2.1\n", "t:1: missing action after '192.0.2.1'");
	bad("192.0.2.1 \t \r\n", "t:1: missing action after '192.0.2.1'");
}

static void
test_bad_text(void **state)
{
	(void)state;
	char big[CIDR_TEXT_MAX + 64];
	struct cidr_map *m;
	const char *t;

	bad("192.0.2.1 REJECT a\rb\n", "t:1: control or non-ASCII character (0x0d) in text");
	bad("192.0.2.1 REJECT a\x1b[31m\n", "t:1: control or non-ASCII character (0x1b) in text");
	bad("\n192.0.2.1 REJECT caf\xc3\xa9\n",
	    "t:2: control or non-ASCII character (0xc3) in text");
	bad("192.0.2.1 REJECT \x7f\n", "t:1: control or non-ASCII character (0x7f) in text");
	bad("192.0.2.1 OK ignored\x01\n", "t:1: control or non-ASCII character (0x01) in text");
	static const char nul[] = "192.0.2.1 OK\n192.0.2.2 REJECT a\0b\n";
	bad_n(nul, sizeof(nul) - 1, "t:2: NUL byte in line");

	/* The longest text fits a 554 reply line; one more byte does not. */
	snprintf(big, sizeof(big), "192.0.2.1 REJECT %0*d\n", (int)CIDR_TEXT_MAX, 0);
	m = ok(big);
	assert_int_equal(look(m, "192.0.2.1", &t), CIDR_REJECT);
	assert_int_equal(strlen(t), CIDR_TEXT_MAX);
	cidr_map_free(m);
	snprintf(big, sizeof(big), "192.0.2.1 REJECT %0*d\n", (int)CIDR_TEXT_MAX + 1, 0);
	bad(big, "t:1: text too long (481 bytes, max 480)");
}

static void
test_long_line(void **state)
{
	(void)state;
	size_t n = CIDR_LINE_MAX + 64;
	char *b = malloc(n);
	struct cidr_map *m;

	assert_non_null(b);
	/* A 4096-byte comment line (CR LF not counted) is fine. */
	memset(b, ' ', n);
	b[0] = '#';
	memcpy(b + CIDR_LINE_MAX, "\r\n192.0.2.1 OK\n", 16);
	m = ok(b);
	assert_int_equal(cidr_map_count(m), 1);
	cidr_map_free(m);
	/* 4097 bytes is refused, even as a comment, even without LF. */
	memcpy(b + CIDR_LINE_MAX, " \n", 3);
	bad(b, "t:1: line too long (4097 bytes, max 4096)");
	memset(b, ' ', n);
	memcpy(b, "192.0.2.1 OK\n#", 14);
	b[13 + CIDR_LINE_MAX + 1] = '\0';
	bad(b, "t:2: line too long (4097 bytes, max 4096)");
	free(b);
}

static void
test_too_many(void **state)
{
	(void)state;
	const char *line = "192.0.2.1 OK\n";
	size_t ll = strlen(line), n = (size_t)CIDR_MAP_MAX + 1;
	char *b = malloc(ll * n + 1), err[256];
	struct cidr_map *m;

	assert_non_null(b);
	for (size_t i = 0; i < n; i++)
		memcpy(b + i * ll, line, ll);
	b[ll * n] = '\0';
	bad(b, "t:1000001: too many entries (max 1000000)");
	/* Exactly the limit is fine. */
	assert_int_equal(cidr_map_parse(b, ll * (n - 1), "t", &m, err, sizeof(err)), 0);
	assert_int_equal(cidr_map_count(m), CIDR_MAP_MAX);
	assert_int_equal(look(m, "192.0.2.1", NULL), CIDR_OK);
	cidr_map_free(m);
	free(b);
}

static void
test_err_buffer(void **state)
{
	(void)state;
	struct cidr_map *m;
	char small[8];

	/* The message is cut to errlen, and no buffer at all is allowed. */
	assert_int_equal(cidr_map_parse("x OK", 4, "t", &m, small, sizeof(small)), -EINVAL);
	assert_string_equal(small, "t:1: ba");
	assert_int_equal(cidr_map_parse("x OK", 4, "t", &m, NULL, 0), -EINVAL);
	assert_null(m);
	assert_int_equal(cidr_map_parse(NULL, 0, "t", &m, NULL, 0), 0);
	assert_int_equal(cidr_map_count(m), 0);
	cidr_map_free(m);
}

/* ---- files ---- */

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void
test_load(void **state)
{
	(void)state;
	char path[128], err[256] = "", want[256];
	struct cidr_map *m = NULL;
	const char *t;

	snprintf(path, sizeof(path), "%s/client_access", tmpdir);
	write_file(path, "# access\n192.0.2.0/24 REJECT listed\n[2001:db8::]/32 OK\n");
	assert_int_equal(cidr_map_load(path, &m, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	assert_int_equal(cidr_map_count(m), 2);
	assert_int_equal(look(m, "192.0.2.9", &t), CIDR_REJECT);
	assert_string_equal(t, "listed");
	assert_int_equal(look(m, "2001:db8::9", NULL), CIDR_OK);
	cidr_map_free(m);

	/* Errors name the file by its path. */
	write_file(path, "192.0.2.0/24 OK\n\n192.0.2.0/33 OK\n");
	assert_int_equal(cidr_map_load(path, &m, err, sizeof(err)), -EINVAL);
	assert_null(m);
	snprintf(want, sizeof(want), "%s:3: prefix length out of range (0..32) in '192.0.2.0/33'",
	         path);
	assert_string_equal(err, want);

	/* An empty file is an empty table. */
	write_file(path, "");
	assert_int_equal(cidr_map_load(path, &m, err, sizeof(err)), 0);
	assert_int_equal(cidr_map_count(m), 0);
	cidr_map_free(m);

	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	assert_int_equal(cidr_map_load(path, &m, err, sizeof(err)), -ENOENT);
	assert_null(m);
	snprintf(want, sizeof(want), "%s: %s", path, strerror(ENOENT));
	assert_string_equal(err, want);
	assert_int_equal(cidr_map_load(tmpdir, &m, err, sizeof(err)), -EISDIR);
	assert_null(m);
}

static void
test_load_large(void **state)
{
	(void)state;
	/* A pipe has no size to read ahead: the buffer grows from its first
	 * 64 KiB as the text comes in, over many read(2) calls. */
	char path[64], err[256] = "";
	struct cidr_map *m;
	const char *t;
	int p[2], st;
	pid_t pid;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		FILE *f = fdopen(p[1], "w");

		close(p[0]);
		for (unsigned i = 0; f != NULL && i < 50000; i++)
			fprintf(f, "10.%u.%u.0/24 REJECT rule %u\n", i >> 8, i & 0xff, i);
		_exit(f != NULL && fclose(f) == 0 ? 0 : 1);
	}
	close(p[1]);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", p[0]);
	assert_int_equal(cidr_map_load(path, &m, err, sizeof(err)), 0);
	close(p[0]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(cidr_map_count(m), 50000);
	assert_int_equal(look(m, "10.195.79.1", &t), CIDR_REJECT);
	assert_string_equal(t, "rule 49999");
	assert_int_equal(look(m, "10.0.0.1", &t), CIDR_REJECT);
	assert_string_equal(t, "rule 0");
	cidr_map_free(m);
}

/* ---- size ---- */

static void
test_10k(void **state)
{
	(void)state;
	const unsigned n = 10000;
	size_t cap = (size_t)n * 48 + 64, len = 0;
	char *b = malloc(cap), err[256];
	struct cidr_map *m;
	char ip[64], want[32];
	const char *t;

	assert_non_null(b);
	/* 10,000 /24s of 10.0.0.0/8, alternating actions, IPv6 between. */
	for (unsigned i = 0; i < n; i++) {
		if (i % 2 == 0)
			len += (size_t)snprintf(b + len, cap - len, "10.%u.%u.0/24 REJECT r%u\n",
			                        i >> 8, i & 0xff, i);
		else
			len += (size_t)snprintf(b + len, cap - len, "[2001:db8:%x::]/48 OK\n", i);
	}
	len += (size_t)snprintf(b + len, cap - len, "0.0.0.0/0 DUNNO\n");
	assert_int_equal(cidr_map_parse(b, len, "big", &m, err, sizeof(err)), 0);
	assert_int_equal(cidr_map_count(m), n + 1);
	for (unsigned i = 0; i < n; i++) {
		if (i % 2 == 0) {
			snprintf(ip, sizeof(ip), "10.%u.%u.77", i >> 8, i & 0xff);
			assert_int_equal(look(m, ip, &t), CIDR_REJECT);
			snprintf(want, sizeof(want), "r%u", i);
			assert_string_equal(t, want);
			/* Odd /24s fall through to the catch-all. */
			snprintf(ip, sizeof(ip), "10.%u.%u.77", i >> 8, (i & 0xff) | 1);
			assert_int_equal(look(m, ip, NULL), CIDR_DUNNO);
		} else {
			snprintf(ip, sizeof(ip), "2001:db8:%x:ffff::1", i);
			assert_int_equal(look(m, ip, NULL), CIDR_OK);
		}
	}
	assert_int_equal(look(m, "2001:db9::1", NULL), CIDR_NONE);
	cidr_map_free(m);
	free(b);
}

/* ---- main ---- */

static int
setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_cidr_map.XXXXXX");
	return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int
teardown(void **state)
{
	char path[128];

	(void)state;
	snprintf(path, sizeof(path), "%s/client_access", tmpdir);
	unlink(path);
	return rmdir(tmpdir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_forms),         cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_first_match),   cmocka_unit_test(test_prefix_edges),
	    cmocka_unit_test(test_families),      cmocka_unit_test(test_lookup_out_args),
	    cmocka_unit_test(test_bad_address),   cmocka_unit_test(test_bad_prefix),
	    cmocka_unit_test(test_bad_host_bits), cmocka_unit_test(test_bad_action),
	    cmocka_unit_test(test_bad_text),      cmocka_unit_test(test_long_line),
	    cmocka_unit_test(test_too_many),      cmocka_unit_test(test_err_buffer),
	    cmocka_unit_test(test_load),          cmocka_unit_test(test_load_large),
	    cmocka_unit_test(test_10k),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
