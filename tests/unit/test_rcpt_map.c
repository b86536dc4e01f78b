/*
 * test_rcpt_map.c - unit tests for engine/policy/rcpt_map.c (the loader and
 * the lookup: comments, continuation lines, @domain, case folding,
 * duplicates, broken lines with their line numbers, empty files, the 550
 * reply) and for the recipient_maps key in engine/config/config_rcpt.c
 * (files read beside the configuration, errors naming both files).
 *
 * Owner: the recipient maps module. Files are written under a mkdtemp()
 * directory created in the group setup and removed in the teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ringmx/config.h"
#include "rcpt_map.h"

static char tmpdir[64];

/* ---- helpers ---- */

static struct rcpt_map *
build1(const char *name, const char *text, char *err)
{
	struct rcpt_map_src s = {.name = name, .text = text, .len = strlen(text)};

	return rcpt_map_build(&s, 1, err);
}

static struct rcpt_map *
ok1(const char *text)
{
	char err[RCPT_MAP_ERR_MAX] = "";
	struct rcpt_map *m = build1("m", text, err);

	if (m == NULL)
		fail_msg("unexpected error: %s\n--- input\n%s", err, text);
	return m;
}

static void
bad1(const char *text, const char *want)
{
	char err[RCPT_MAP_ERR_MAX] = "";
	struct rcpt_map *m = build1("m", text, err);

	if (m != NULL) {
		rcpt_map_free(m);
		fail_msg("accepted, wanted '%s'\n--- input\n%s", want, text);
	}
	assert_string_equal(err, want);
}

/* addr "local@domain" (the last '@' splits, unquoted). */
static bool
known(const struct rcpt_map *m, const char *addr)
{
	const char *at = strrchr(addr, '@');

	assert_non_null(at);
	return rcpt_map_known(m, addr, (size_t)(at - addr), addr[0] == '"', at + 1,
			      strlen(at + 1));
}

static size_t
entries(const struct rcpt_map *m)
{
	struct rcpt_map_info mi;

	rcpt_map_get_info(m, &mi);
	return mi.entries;
}

static void
write_file(const char *name, const char *text)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* ---- the loader and the lookup ---- */

static void
test_keys_and_catchall(void **state)
{
	(void)state;
	struct rcpt_map *m = ok1("alice@example.org OK\n"
				 "bob@example.org\n"
				 "@catchall.example\tanything at all\n");

	assert_int_equal(entries(m), 3);
	assert_true(known(m, "alice@example.org"));
	assert_true(known(m, "bob@example.org"));
	assert_false(known(m, "carol@example.org"));
	assert_false(known(m, "alice@example.net"));
	assert_false(known(m, "alice@sub.example.org")); /* no parent matching */
	assert_true(known(m, "anyone@catchall.example"));
	assert_true(known(m, "x@catchall.example"));
	assert_false(known(m, "x@sub.catchall.example"));
	/* No recipient_delimiter: user+ext is its own key. */
	assert_false(known(m, "alice+ext@example.org"));
	rcpt_map_free(m);
}

/* postmap folds keys to lower case by default, and Postfix folds the
 * lookup key: both parts compare ASCII case-insensitively. */
static void
test_case_folding(void **state)
{
	(void)state;
	struct rcpt_map *m = ok1("Alice@Example.ORG\n@Catch.Example\n");

	assert_true(known(m, "alice@example.org"));
	assert_true(known(m, "ALICE@EXAMPLE.ORG"));
	assert_true(known(m, "aLiCe@eXaMpLe.OrG"));
	assert_true(known(m, "who@CATCH.example"));
	rcpt_map_free(m);
}

static void
test_comments_blank_continuation(void **state)
{
	(void)state;
	struct rcpt_map *m = ok1("# a comment\n"
				 "   # an indented comment\n"
				 "\n"
				 "  \t \n"
				 "alice@example.org OK\n"
				 "  bob@example.org is the value of alice's entry\n"
				 "\tcarol@example.org too\n"
				 "#dave@example.org\n"
				 "erin@example.org\r\n" /* CRLF file */
				 "frank@example.org");  /* no final newline */

	assert_int_equal(entries(m), 3);
	assert_true(known(m, "alice@example.org"));
	assert_false(known(m, "bob@example.org"));
	assert_false(known(m, "carol@example.org"));
	assert_false(known(m, "dave@example.org"));
	assert_true(known(m, "erin@example.org"));
	assert_true(known(m, "frank@example.org"));
	rcpt_map_free(m);
}

static void
test_duplicates(void **state)
{
	(void)state;
	struct rcpt_map_info mi;
	struct rcpt_map *m = ok1("a@example.org 1\nA@EXAMPLE.ORG 2\n@example.net\n"
				 "@Example.Net\nb@example.org\n");

	rcpt_map_get_info(m, &mi);
	assert_int_equal(mi.entries, 3);
	assert_int_equal(mi.duplicates, 2);
	assert_int_equal(mi.catchall, 1);
	assert_int_equal(mi.slots, 5 + 5 / 2 + 1); /* sized from every key, dups too */
	assert_true(known(m, "a@example.org"));
	assert_true(known(m, "b@example.org"));
	rcpt_map_free(m);
}

static void
test_empty(void **state)
{
	(void)state;
	static const char *const texts[] = {"", "\n\n", "# only comments\n  # here\n"};

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct rcpt_map *m = ok1(texts[i]);

		assert_int_equal(entries(m), 0);
		assert_false(known(m, "alice@example.org"));
		rcpt_map_free(m);
	}
	/* No source at all: the same empty map. */
	char err[RCPT_MAP_ERR_MAX];
	struct rcpt_map *m = rcpt_map_build(NULL, 0, err);

	assert_non_null(m);
	assert_false(known(m, "alice@example.org"));
	rcpt_map_free(m);
}

static void
test_broken_lines(void **state)
{
	(void)state;
	char key[300];

	bad1("a@example.org\n\nbogus\n", "m:3: not user@domain or @domain: 'bogus'");
	bad1("example.org OK\n", "m:1: not user@domain or @domain: 'example.org'");
	bad1("a@example.org\nb@-bad.example\n", "m:2: not a domain after '@': 'b@-bad.example'");
	bad1("a@\n", "m:1: not a domain after '@': 'a@'");
	bad1("@\n", "m:1: not a domain after '@': '@'");
	bad1("a@[192.0.2.1]\n", "m:1: not a domain after '@': 'a@[192.0.2.1]'");
	bad1("a@exa_mple.org\n", "m:1: not a domain after '@': 'a@exa_mple.org'");
	bad1("  a@example.org\n", "m:1: continuation line without an entry: 'a@example.org'");
	bad1("# c\n\n\tx\n", "m:3: continuation line without an entry: 'x'");
	bad1("a\x01@example.org\n", "m:1: control character in key: 'a\\x01@example.org'");
	{
		static const char t[] = "a@example.org\nb@exa\0mple.org\n";
		struct rcpt_map_src s = {.name = "m", .text = t, .len = sizeof(t) - 1};
		char err[RCPT_MAP_ERR_MAX];

		assert_null(rcpt_map_build(&s, 1, err));
		assert_string_equal(err, "m:2: NUL byte in line");
	}
	memset(key, 'a', sizeof(key));
	memcpy(key + 257 - 12, "@example.org", 13); /* 257 bytes */
	{
		char err[RCPT_MAP_ERR_MAX];
		struct rcpt_map *m = build1("m", key, err);

		assert_null(m);
		assert_true(strncmp(err, "m:1: key too long (max 256 bytes): 'aaaa", 40) == 0);
		key[0] = '\n';
		key[1] = 'b'; /* 256 bytes on line 2: fits */
		m = build1("m", key, err);
		assert_non_null(m);
		assert_true(known(m, key + 1));
		rcpt_map_free(m);
	}
}

/* Several sources are one map; an error names its own source. */
static void
test_sources(void **state)
{
	(void)state;
	struct rcpt_map_src s[2] = {
		{.name = "one", .text = "a@example.org\n", .len = 14},
		{.name = "two", .text = "b@example.org\n@example.net\nbad line\n", .len = 36},
	};
	char err[RCPT_MAP_ERR_MAX];
	struct rcpt_map *m;

	assert_null(rcpt_map_build(s, 2, err));
	assert_string_equal(err, "two:3: not user@domain or @domain: 'bad'");
	s[1].len = 27;
	m = rcpt_map_build(s, 2, err);
	assert_non_null(m);
	assert_true(known(m, "a@example.org"));
	assert_true(known(m, "b@example.org"));
	assert_true(known(m, "c@example.net"));
	rcpt_map_free(m);
	/* A continuation line opening the second file has no entry there. */
	s[1].text = " x\n";
	s[1].len = 3;
	assert_null(rcpt_map_build(s, 2, err));
	assert_string_equal(err, "two:1: continuation line without an entry: 'x'");
}

/* "a b"@d is looked up as a b@d (which no key can be); "joe"@d as joe@d. */
static void
test_quoted_local(void **state)
{
	(void)state;
	struct rcpt_map *m = ok1("joe@example.org\na\"b@example.org\n");

	assert_true(known(m, "\"joe\"@example.org"));
	assert_true(known(m, "\"JOE\"@example.org"));
	assert_true(known(m, "\"a\\\"b\"@example.org"));
	assert_false(known(m, "\"a b\"@example.org"));
	rcpt_map_free(m);
}

/* Every key found, no other: probes that wrap around the table's end and
 * long clusters included. */
static void
test_many(void **state)
{
	(void)state;
	enum { N = 20000 };
	size_t cap = (size_t)N * 32, len = 0;
	char *text = malloc(cap), a[64], err[RCPT_MAP_ERR_MAX];
	struct rcpt_map *m;

	assert_non_null(text);
	for (unsigned i = 0; i < N; i++)
		len += (size_t)snprintf(text + len, cap - len, "user%u@d%u.example\n", i, i % 7);
	m = build1("m", text, err);
	assert_non_null(m);
	assert_int_equal(entries(m), N);
	for (unsigned i = 0; i < N; i++) {
		snprintf(a, sizeof(a), "user%u@d%u.example", i, i % 7);
		assert_true(known(m, a));
		snprintf(a, sizeof(a), "user%u@d%u.example", i, (i + 1) % 7);
		assert_false(known(m, a));
		snprintf(a, sizeof(a), "user%u@d%u.example", i + N, i % 7);
		assert_false(known(m, a));
	}
	rcpt_map_free(m);
	free(text);
}

/* rcpt_map_check(): the exact reply, the address as given. */
static void
test_check_reply(void **state)
{
	(void)state;
	struct rcpt_map *m = ok1("alice@example.org\n");
	struct smtp_check_reply r = {0};
	static const char addr[] = "Bob@Example.ORG";

	assert_int_equal(rcpt_map_check(m, "ALICE@example.org", 17, &r), SMTP_CHECK_OK);
	assert_int_equal(rcpt_map_check(m, addr, sizeof(addr) - 1, &r), SMTP_CHECK_REJECT);
	assert_int_equal(r.len, strlen(r.text));
	assert_string_equal(r.text,
			    "550 5.1.1 <Bob@Example.ORG>: Recipient address rejected: User unknown\r\n");
	/* <Postmaster> without a domain is never refused (RFC 5321 4.5.1);
	 * postmaster@domain is like any other address (as in Postfix). */
	assert_int_equal(rcpt_map_check(m, "Postmaster", 10, &r), SMTP_CHECK_OK);
	assert_int_equal(rcpt_map_check(m, "postmaster@example.org", 22, &r), SMTP_CHECK_REJECT);
	rcpt_map_free(m);
}

/* ---- the recipient_maps key ---- */

static struct config *
conf(const char *text, char *err)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/t.conf", tmpdir);
	return config_load_string(path, text, strlen(text), NULL, err);
}

static void
test_config_key(void **state)
{
	(void)state;
	char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];
	struct config *cfg;

	write_file("users", "alice@example.test\n");
	write_file("more", "@other.test\n");
	/* Relative paths are beside the configuration file; continuation
	 * lines continue the list. */
	cfg = conf("domains = example.test\nrecipient_maps = users,\n    more\n", err);
	if (cfg == NULL)
		fail_msg("%s", err);
	assert_int_equal(cfg->nrcpt_map_files, 2);
	assert_non_null(cfg->rcpt_map);
	assert_true(known(cfg->rcpt_map, "alice@example.test"));
	assert_true(known(cfg->rcpt_map, "x@other.test"));
	config_free(cfg);

	/* Unset, or set empty: no map. */
	cfg = conf("domains = example.test\n", err);
	assert_non_null(cfg);
	assert_null(cfg->rcpt_map);
	config_free(cfg);
	cfg = conf("domains = example.test\nrecipient_maps =\n", err);
	assert_non_null(cfg);
	assert_null(cfg->rcpt_map);
	config_free(cfg);

	/* A broken map names the configuration's line, the key, and the
	 * map's own file and line. */
	write_file("broken", "alice@example.test\n# ok\nnot-an-address\n");
	assert_null(conf("domains = example.test\n\nrecipient_maps = users broken\n", err));
	snprintf(want, sizeof(want),
		 "%s/t.conf:3: recipient_maps: %s/broken:3: not user@domain or @domain: "
		 "'not-an-address'", tmpdir, tmpdir);
	assert_string_equal(err, want);
	assert_null(conf("recipient_maps = missing\n", err));
	snprintf(want, sizeof(want),
		 "%s/t.conf:1: recipient_maps: %s/missing: cannot open: No such file or directory",
		 tmpdir, tmpdir);
	assert_string_equal(err, want);
	assert_null(conf("recipient_maps = users, users\n", err));
	snprintf(want, sizeof(want), "%s/t.conf:1: recipient_maps: file listed twice: 'users'",
		 tmpdir);
	assert_string_equal(err, want);
}

static int
group_setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_rcpt_map.XXXXXX");
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
group_teardown(void **state)
{
	static const char *const names[] = {"users", "more", "broken"};
	char path[128];

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
		unlink(path);
	}
	return rmdir(tmpdir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keys_and_catchall),
		cmocka_unit_test(test_case_folding),
		cmocka_unit_test(test_comments_blank_continuation),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_broken_lines),
		cmocka_unit_test(test_sources),
		cmocka_unit_test(test_quoted_local),
		cmocka_unit_test(test_many),
		cmocka_unit_test(test_check_reply),
		cmocka_unit_test(test_config_key),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
