/*
 * test_relay_reply.c - the relay's reply reader (engine/smtp/relay_reply.c):
 * reply lines, multi-line replies, EHLO keywords. Owner: the relay module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "relay_reply.h"
#include "smtp_client.h"

static int
add(struct relay_reply *r, const char *line)
{
	return relay_reply_add(r, line, strlen(line), NULL);
}

static void
test_lines(void **state)
{
	(void)state;
	struct relay_reply_line l;
	assert_int_equal(relay_reply_line("250 Ok", 6, &l), 0);
	assert_int_equal(l.code, 250);
	assert_false(l.more);
	assert_int_equal(l.len, 2);
	assert_int_equal(relay_reply_line("250-x", 5, &l), 0);
	assert_true(l.more);
	assert_int_equal(relay_reply_line("354", 3, &l), 0);
	assert_int_equal(l.len, 0);
	/* Not reply lines: short, no digits, class 1 or 6, bad separator. */
	const char *bad[] = {"", "25", "2a0 x", "150 x", "650 x", "250x", "250_ok", "OK 250"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(relay_reply_line(bad[i], strlen(bad[i]), &l), -1);
}

static void
test_multiline(void **state)
{
	(void)state;
	struct relay_reply r;
	memset(&r, 0, sizeof(r));
	assert_int_equal(add(&r, "250-mx.example greets you"), RELAY_REPLY_MORE);
	assert_int_equal(add(&r, "250-PIPELINING"), RELAY_REPLY_MORE);
	assert_int_equal(add(&r, "250 CHUNKING"), RELAY_REPLY_DONE);
	assert_int_equal(r.code, 250);
	assert_string_equal(r.text, "mx.example greets you PIPELINING CHUNKING");
	/* The next reply starts afresh. */
	assert_int_equal(add(&r, "550 5.1.1 no"), RELAY_REPLY_DONE);
	assert_int_equal(r.code, 550);
	assert_string_equal(r.text, "5.1.1 no");
	/* A code change inside a reply is a protocol error. */
	memset(&r, 0, sizeof(r));
	assert_int_equal(add(&r, "250-a"), RELAY_REPLY_MORE);
	assert_int_equal(add(&r, "251 b"), RELAY_REPLY_BAD);
}

static void
test_text_sanitised_and_bounded(void **state)
{
	(void)state;
	struct relay_reply r;
	memset(&r, 0, sizeof(r));
	const char line[] = "451 a\tb\x01" "c\x7f" "d";
	assert_int_equal(relay_reply_add(&r, line, sizeof(line) - 1, NULL), RELAY_REPLY_DONE);
	assert_string_equal(r.text, "a b c d");
	char big[2000];
	memset(big, 'x', sizeof(big));
	memcpy(big, "250-", 4);
	memset(&r, 0, sizeof(r));
	for (int i = 0; i < 5; i++)
		assert_int_equal(relay_reply_add(&r, big, sizeof(big), NULL), RELAY_REPLY_MORE);
	assert_int_equal(add(&r, "250 end"), RELAY_REPLY_DONE);
	assert_int_equal(r.len, RELAY_REPLY_TEXT_MAX - 1);
	assert_int_equal(strlen(r.text), RELAY_REPLY_TEXT_MAX - 1);
}

/* The text is cleaned eight octets at a time: every control character is
 * found wherever it falls in a word (each offset of a 40-octet text, each
 * length), and octets 0x20..0x7e and 0x80..0xff are kept as they are. */
static void
test_text_every_offset(void **state)
{
	(void)state;
	static const unsigned char ctl[] = {0x00, 0x01, 0x09, 0x1f, 0x7f};
	static const unsigned char keep[] = {0x20, 0x21, 0x7e, 0x80, 0xa0, 0xff};
	for (size_t len = 1; len <= 40; len++) {
		for (size_t at = 0; at < len; at++) {
			for (size_t c = 0; c < sizeof(ctl) + sizeof(keep); c++) {
				bool is_ctl = c < sizeof(ctl);
				unsigned char ch = is_ctl ? ctl[c] : keep[c - sizeof(ctl)];
				char line[64], want[64];
				memcpy(line, "250 ", 4);
				memset(line + 4, 'a', len);
				line[4 + at] = (char)ch;
				memset(want, 'a', len);
				want[at] = is_ctl ? ' ' : (char)ch;
				struct relay_reply r;
				memset(&r, 0, sizeof(r));
				assert_int_equal(relay_reply_add(&r, line, 4 + len, NULL), RELAY_REPLY_DONE);
				assert_int_equal(r.len, len);
				assert_memory_equal(r.text, want, len);
				assert_int_equal(r.text[len], '\0');
			}
		}
	}
}

static void
test_ehlo_keywords(void **state)
{
	(void)state;
	uint64_t sz = 7;
	assert_int_equal(smtpc_ehlo_keyword("PIPELINING", 10, &sz), SMTPC_EXT_PIPELINING);
	assert_int_equal(smtpc_ehlo_keyword("chunking", 8, &sz), SMTPC_EXT_CHUNKING);
	assert_int_equal(smtpc_ehlo_keyword("8BITMIME", 8, &sz), SMTPC_EXT_8BITMIME);
	assert_int_equal(smtpc_ehlo_keyword("SMTPUTF8", 8, &sz), SMTPC_EXT_SMTPUTF8);
	assert_int_equal(smtpc_ehlo_keyword("STARTTLS", 8, &sz), SMTPC_EXT_STARTTLS);
	assert_int_equal(sz, 7);
	assert_int_equal(smtpc_ehlo_keyword("SIZE 10240000", 13, &sz), SMTPC_EXT_SIZE);
	assert_int_equal(sz, 10240000);
	assert_int_equal(smtpc_ehlo_keyword("SIZE", 4, &sz), SMTPC_EXT_SIZE);
	assert_int_equal(sz, 0);
	assert_int_equal(smtpc_ehlo_keyword("SIZE 99999999999999999999999", 27, &sz), SMTPC_EXT_SIZE);
	assert_int_equal(sz, 0); /* overflow: no limit known */
	assert_int_equal(smtpc_ehlo_keyword("SIZE 12x", 8, &sz), SMTPC_EXT_SIZE);
	assert_int_equal(sz, 0);
	assert_int_equal(smtpc_ehlo_keyword("PIPELININGX", 11, &sz), 0);
	assert_int_equal(smtpc_ehlo_keyword("AUTH PLAIN", 10, &sz), 0);
	assert_int_equal(smtpc_ehlo_keyword("", 0, &sz), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_multiline),
		cmocka_unit_test(test_text_sanitised_and_bounded),
		cmocka_unit_test(test_text_every_offset),
		cmocka_unit_test(test_ehlo_keywords),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
