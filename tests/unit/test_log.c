/*
 * test_log.c - log_format_line() (engine/runtime/log.c): the postfix line
 * shape pflogsumm parses, the JSON object with its escapes (quotes,
 * backslashes, control bytes, invalid UTF-8 as U+FFFD, valid UTF-8 kept),
 * the queue id taken out of the text only when it has the id's shape, and
 * over-long text cut inside the line's bounds, never leaving half an escape.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "log.h"

/* 2026-12-04T01:02:03.123456Z */
static const struct timespec when = {1796346123, 123456789};

static struct log_origin
origin(enum log_service svc, enum log_level lvl, const char *worker)
{
	return (struct log_origin){.host = "mx1",
	                           .prog = "ringmxd",
	                           .pid = 4242,
	                           .worker = worker,
	                           .svc = svc,
	                           .lvl = lvl,
	                           .ts = when};
}

/* The line as a NUL-terminated string; checks it is exactly one line. */
static const char *
fmt(char *buf, size_t cap, enum log_format f, const struct log_origin *o, const char *body,
    size_t blen)
{
	size_t n = log_format_line(buf, cap, f, o, body, blen);
	assert_true(n > 0 && n < cap);
	assert_int_equal(buf[n - 1], '\n');
	assert_null(memchr(buf, '\n', n - 1));
	buf[n] = '\0';
	return buf;
}

#define S(lit) lit, sizeof(lit) - 1

static void
test_postfix(void **state)
{
	(void)state;
	static const struct {
		enum log_service svc;
		enum log_level lvl;
		const char *worker, *body, *want;
	} cases[] = {
	    {LOG_SVC_SMTPD, LOG_INFO, "w0", "1K1RJB3K1CX01: client=[127.0.0.1]:5555, helo=<x>",
	     "ringmxd/smtpd[4242]: 1K1RJB3K1CX01: client=[127.0.0.1]:5555, helo=<x> worker=w0\n"},
	    /* Main thread: no worker; warning and error say so like Postfix. */
	    {LOG_SVC_MASTER, LOG_WARN, NULL, "low", "ringmxd/master[4242]: warning: low\n"},
	    {LOG_SVC_QMGR, LOG_ERR, "w1", "x", "ringmxd/qmgr[4242]: error: x worker=w1\n"},
	    {LOG_SVC_SMTP, LOG_NOTICE, NULL, "n", "ringmxd/smtp[4242]: n\n"},
	    {LOG_SVC_CLEANUP, LOG_DEBUG, "w2", "d", "ringmxd/cleanup[4242]: debug: d worker=w2\n"},
	    /* A line stays one line; other bytes pass. */
	    {LOG_SVC_SMTPD, LOG_INFO, NULL, "a\nb\rc\td\x7f\xc3\xa9\xff",
	     "ringmxd/smtpd[4242]: a?b?c?d?\xc3\xa9\xff\n"},
	};
	static const char head[] = "2026-12-04T01:02:03.123456Z mx1 ";
	char b[LOG_LINE_CAP + 1];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct log_origin o = origin(cases[i].svc, cases[i].lvl, cases[i].worker);
		const char *line =
		    fmt(b, sizeof(b), LOG_FORMAT_POSTFIX, &o, cases[i].body, strlen(cases[i].body));
		assert_memory_equal(line, head, sizeof(head) - 1);
		assert_string_equal(line + sizeof(head) - 1, cases[i].want);
	}
}

static void
test_postfix_cut(void **state)
{
	(void)state;
	char body[8000], b[LOG_LINE_CAP + 1];
	memset(body, 'x', sizeof(body));
	struct log_origin o = origin(LOG_SVC_SMTPD, LOG_INFO, "w12");
	size_t n = log_format_line(b, LOG_LINE_CAP, LOG_FORMAT_POSTFIX, &o, body, sizeof(body));
	assert_int_equal(n, LOG_LINE_CAP);
	b[n] = '\0';
	/* Cut text, but the worker and the newline are kept. */
	assert_string_equal(b + n - 13, "x worker=w12\n");
}

static void
test_json(void **state)
{
	(void)state;
	char b[LOG_LINE_CAP + 1];
	struct log_origin o = origin(LOG_SVC_SMTP, LOG_INFO, "w0");
	assert_string_equal(
	    fmt(b, sizeof(b), LOG_FORMAT_JSON, &o,
	        S("1K1RJB3K1CX01: to=<a@b>, status=bounced (550 \"no\" a\\b)")),
	    "{\"timestamp\":\"2026-12-04T01:02:03.123456Z\",\"host\":\"mx1\",\"program\":"
	    "\"ringmxd\","
	    "\"service\":\"smtp\",\"pid\":4242,\"level\":\"info\",\"worker\":\"w0\","
	    "\"queue_id\":\"1K1RJB3K1CX01\",\"text\":\"to=<a@b>, status=bounced (550 \\\"no\\\" "
	    "a\\\\b)\"}\n");
	/* No worker, no queue id: NOQUEUE is not one, nor a lower-case or short word. */
	o = origin(LOG_SVC_MASTER, LOG_NOTICE, NULL);
	assert_string_equal(fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("NOQUEUE: reject: x")),
	                    "{\"timestamp\":\"2026-12-04T01:02:03.123456Z\",\"host\":\"mx1\","
	                    "\"program\":\"ringmxd\",\"service\":\"master\",\"pid\":4242,"
	                    "\"level\":\"notice\",\"text\":\"NOQUEUE: reject: x\"}\n");
	assert_non_null(strstr(fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("1k1rjb3k1cx01: x")),
	                       "\"text\":\"1k1rjb3k1cx01: x\""));
	assert_non_null(strstr(fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("1K1RJB3K1CX0I: x")),
	                       "\"text\":\"1K1RJB3K1CX0I: x\"")); /* I is not in the alphabet */
	assert_non_null(strstr(fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("1K1RJB3K1CX01:x")),
	                       "\"text\":\"1K1RJB3K1CX01:x\""));
	o.lvl = LOG_WARN;
	assert_non_null(
	    strstr(fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("w")), "\"level\":\"warning\""));
	o.lvl = LOG_ERR;
	assert_non_null(
	    strstr(fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("e")), "\"level\":\"error\""));
}

static void
test_json_escapes(void **state)
{
	(void)state;
	char b[LOG_LINE_CAP + 1];
	struct log_origin o = origin(LOG_SVC_SMTPD, LOG_DEBUG, NULL);
	const char *line;
	/* Controls: the short escapes where JSON has them, \u00XX otherwise. */
	line = fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("\n\r\t\x01\x1f\x7f"));
	assert_non_null(strstr(line, "\"text\":\"\\n\\r\\t\\u0001\\u001f\\u007f\"}"));
	/* A NUL inside the text is a byte like any other. */
	line = fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, "a\0b", 3);
	assert_non_null(strstr(line, "\"text\":\"a\\u0000b\"}"));
	/* Valid UTF-8 (2, 3 and 4 bytes) passes as it is. */
	line = fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("\xc3\xa9\xe2\x82\xac\xf0\x9f\x93\xa7"));
	assert_non_null(strstr(line, "\"text\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x93\xa7\"}"));
	/* Each byte that is not valid UTF-8 becomes U+FFFD: a lone continuation
	 * byte, a truncated sequence, an overlong form, a surrogate, past
	 * U+10FFFF, 0xff. */
	line = fmt(b, sizeof(b), LOG_FORMAT_JSON, &o,
	           S("\x80|\xc3|\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80|\xff"));
	assert_non_null(strstr(line,
	                       "\"text\":\"\\ufffd|\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|"
	                       "\\ufffd\\ufffd\\ufffd\\ufffd|\\ufffd\"}"));
	/* A sequence cut by the end of the text. */
	line = fmt(b, sizeof(b), LOG_FORMAT_JSON, &o, S("ab\xe2\x82"));
	assert_non_null(strstr(line, "\"text\":\"ab\\ufffd\\ufffd\"}"));
}

/* Text longer than the line: cut at an escape's or a character's boundary,
 * and the object still closes. */
static void
test_json_cut(void **state)
{
	(void)state;
	char body[6000], b[LOG_LINE_CAP + 1];
	struct log_origin o = origin(LOG_SVC_SMTPD, LOG_INFO, "w0");
	for (size_t pad = 0; pad < 8; pad++) {
		for (size_t i = 0; i < sizeof(body); i++)
			body[i] = i < pad ? 'x' : "\"\x01\xe2\x82\xac"[(i - pad) % 5];
		size_t n =
		    log_format_line(b, LOG_LINE_CAP, LOG_FORMAT_JSON, &o, body, sizeof(body));
		assert_true(n <= LOG_LINE_CAP && n > LOG_LINE_CAP - 8);
		b[n] = '\0';
		assert_string_equal(b + n - 3, "\"}\n");
		/* Whatever was cut, no escape is left open: the text ends in a
		 * whole unit ("\"", "\u0001" or the 3-byte euro sign). */
		const char *t = strstr(b, "\"text\":\"") + 8;
		const char *end = b + n - 3;
		const char *p = t;
		while (p < end) {
			if (*p == '\\')
				p += p[1] == 'u' ? 6 : 2;
			else if ((unsigned char)*p == 0xe2)
				p += 3;
			else
				p++;
		}
		assert_ptr_equal(p, end);
	}
}

static void
test_names(void **state)
{
	(void)state;
	assert_string_equal(log_level_name(LOG_ERR), "error");
	assert_string_equal(log_level_name(LOG_DEBUG), "debug");
	assert_null(log_level_name((enum log_level)(LOG_DEBUG + 1)));
	assert_string_equal(log_format_name(LOG_FORMAT_JSON), "json");
	assert_null(log_format_name((enum log_format)2));
	assert_string_equal(log_service_name(LOG_SVC_POSTSCREEN), "postscreen");
	assert_string_equal(log_service_name(LOG_SVC_LMTP), "lmtp");
	assert_null(log_service_name(LOG_SVC_COUNT));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_postfix),  cmocka_unit_test(test_postfix_cut),
	    cmocka_unit_test(test_json),     cmocka_unit_test(test_json_escapes),
	    cmocka_unit_test(test_json_cut), cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
