/*
 * test_log.c - log_format_line() (engine/runtime/log.c): the postfix line
 * shape pflogsumm parses, the JSON object with its escapes (quotes,
 * backslashes, control bytes, invalid UTF-8 as U+FFFD, valid UTF-8 kept),
 * the queue id taken out of the text only when it has the id's shape, and
 * over-long text cut inside the line's bounds, never leaving half an escape.
 *
 * And that none of it changed with fmt.h: log_ref.h is the formatter as it
 * was (snprintf), and random lines (hosts, pids, workers, time stamps from
 * year 1 to 10000, bodies with control bytes, UTF-8 and queue ids, cut at
 * any cap) must come out byte for byte the same in both formats. log_line()
 * itself, with a fake clock: the time stamp it keeps per second is right
 * across second boundaries and when the clock steps back, lines go in place
 * into the thread's buffer (flushed first when less than a line's room is
 * left), and the main thread's go straight to stderr.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "log_ref.h"
#include "test_rnd.h"

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

/* ---- the same bytes as log_ref.h ---- */

/* n bytes of one flavour: ASCII, valid UTF-8, or any byte but NUL. */
static void
rnd_text(char *p, size_t n)
{
	static const char *const utf8[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x93\xa7", "\"",
	                                   "\\"};
	unsigned flavour = (unsigned)(rnd() % 3);
	for (size_t i = 0; i < n;) {
		if (flavour == 0) {
			p[i++] = (char)(' ' + rnd() % 95);
		} else if (flavour == 1) {
			const char *u = utf8[rnd() % 5];
			size_t k = strlen(u);
			if (i + k > n)
				k = n - i;
			memcpy(p + i, u, k);
			i += k;
		} else {
			p[i++] = (char)(1 + rnd() % 255);
		}
	}
}

static size_t
rnd_len(size_t max)
{
	return rnd() % 8 == 0 ? (size_t)(rnd() % (max + 1))
	                      : (size_t)(rnd() % (max < 24 ? max + 1 : 24));
}

/* Seconds from year 1 to 10000 and beyond: every field width of the stamp. */
static time_t
rnd_sec(void)
{
	switch (rnd() % 4) {
	case 0:
		return (time_t)(rnd() % 253402300800u); /* 1970 to 9999 */
	case 1:
		return 1796346123 + (time_t)(rnd() % 7) - 3;
	case 2:
		return -(time_t)(rnd() % 62135596800u); /* back to year 1 */
	default:
		return 253402300800 + (time_t)(rnd() % 1000000000000u); /* 10000 on */
	}
}

static void
test_same_bytes(void **state)
{
	(void)state;
	static const int pids[] = {0, 1, 4242, INT_MAX, -1, INT_MIN};
	char host[300], prog[64], worker[16], body[8200];
	char want[LOG_LINE_CAP + 1], got[LOG_LINE_CAP + 1];
	for (int i = 0; i < 100000; i++) {
		size_t n = 1 + rnd_len(sizeof(host) - 2);
		rnd_text(host, n);
		host[n] = '\0';
		n = rnd() % 2 ? 0 : rnd_len(sizeof(prog) - 1);
		rnd_text(prog, n);
		prog[n] = '\0';
		n = rnd_len(sizeof(worker) - 1);
		rnd_text(worker, n);
		worker[n] = '\0';
		struct log_origin o = {.host = host,
		                       .prog = prog[0] ? prog : "ringmxd",
		                       .pid = rnd() % 2 ? pids[rnd() % 6] : (int)rnd(),
		                       .worker = rnd() % 4 ? worker : NULL,
		                       .svc = (enum log_service)(rnd() % LOG_SVC_COUNT),
		                       .lvl = (enum log_level)(rnd() % (LOG_DEBUG + 1)),
		                       .ts = {rnd_sec(), (long)(rnd() % 1000000000u)}};
		size_t blen =
		    rnd() % 8 == 0 ? (size_t)(rnd() % sizeof(body)) : (size_t)(rnd() % 300);
		rnd_text(body, blen);
		if (blen > 15 && rnd() % 2)
			memcpy(body, "1K1RJB3K1CX01: ", 15); /* a queue id for JSON to take out */
		size_t cap =
		    rnd() % 4 ? LOG_LINE_CAP : 256 + (size_t)(rnd() % (LOG_LINE_CAP - 255 + 1));
		enum log_format f = rnd() % 2 ? LOG_FORMAT_JSON : LOG_FORMAT_POSTFIX;
		size_t wn = ref_format_line(want, cap, f, &o, body, blen);
		size_t gn = log_format_line(got, cap, f, &o, body, blen);
		if (wn != gn || memcmp(want, got, wn) != 0)
			fail_msg(
			    "line %d (format %d, cap %zu):\nwant %zu \"%.*s\"\n got %zu \"%.*s\"",
			    i, (int)f, cap, wn, (int)wn, want, gn, (int)gn, got);
	}
}

/* ---- log_line() ---- */

static struct timespec fake_now;

static void
fake_clock(struct timespec *ts)
{
	*ts = fake_now;
}

static struct log_buf lb;

/* The host log_init() takes: gethostname up to the first blank. */
static void
init_host(char *h, size_t cap)
{
	snprintf(h, cap, "localhost");
	char b[256];
	if (gethostname(b, sizeof(b)) == 0) {
		b[sizeof(b) - 1] = '\0';
		size_t n = strcspn(b, " \t\r\n");
		if (n > 0)
			snprintf(h, cap, "%.*s", (int)n, b);
	}
}

/* One log_line() at time t, checked against log_ref.h: it must add exactly
 * the reference line at the end of lb. */
static void
line_at(const char *host, int pid, enum log_format f, time_t sec, long nsec, enum log_service svc,
        enum log_level lvl, const char *body)
{
	char want[LOG_LINE_CAP];
	struct log_origin o = {.host = host,
	                       .prog = "ringmxd",
	                       .pid = pid,
	                       .worker = lb.tag,
	                       .svc = svc,
	                       .lvl = lvl,
	                       .ts = {sec, nsec}};
	size_t wn = ref_format_line(want, sizeof(want), f, &o, body, strlen(body));
	size_t before = lb.len;
	fake_now = o.ts;
	log_configure(LOG_DEBUG, f);
	log_line(svc, lvl, body, strlen(body));
	if (lb.len - before != wn || memcmp(lb.buf + before, want, wn) != 0)
		fail_msg("at %lld.%09ld: want \"%.*s\"\n got \"%.*s\"", (long long)sec, nsec,
		         (int)wn, want, (int)(lb.len - before), lb.buf + before);
}

/* Before log_init(): localhost, ringmxd, pid 0, as before. Runs first. */
static void
test_line_defaults(void **state)
{
	(void)state;
	lb.len = 0;
	snprintf(lb.tag, sizeof(lb.tag), "w0");
	log_set_thread_buf(&lb);
	log_set_clock(fake_clock);
	line_at("localhost", 0, LOG_FORMAT_POSTFIX, 1796346123, 123456789, LOG_SVC_SMTPD, LOG_INFO,
	        "x");
	line_at("localhost", 0, LOG_FORMAT_JSON, 1796346123, 123456789, LOG_SVC_SMTPD, LOG_INFO,
	        "x");
	assert_memory_equal(
	    lb.buf, "2026-12-04T01:02:03.123456Z localhost ringmxd/smtpd[0]: x worker=w0\n", 68);
	log_set_thread_buf(NULL);
	log_set_clock(NULL);
	log_configure(LOG_INFO, LOG_FORMAT_POSTFIX);
}

static void
test_line_stamps(void **state)
{
	(void)state;
	char host[256];
	init_host(host, sizeof(host));
	log_init("ringmxd");
	int pid = (int)getpid();
	static const struct timespec times[] = {
	    {0, 0},
	    {0, 999999999},
	    {1, 0}, /* the next second */
	    {1796346123, 999999999},
	    {1796346124, 0},
	    {1796346124, 1000},
	    {1796346123, 500000000}, /* the clock stepped back */
	    {1796346124, 999},
	    {1796346184, 0},           /* a minute on, same second of the minute */
	    {1796346124 + 86400, 0},   /* a day on */
	    {253402300799, 999999999}, /* 9999-12-31T23:59:59 */
	    {253402300800, 0},         /* 10000-01-01 */
	    {-1, 0},                   /* 1969-12-31T23:59:59 */
	    {-62135596800, 0},         /* 0001-01-01 */
	    {0, 0},
	};
	lb.len = 0;
	snprintf(lb.tag, sizeof(lb.tag), "w3");
	log_set_thread_buf(&lb);
	log_set_clock(fake_clock);
	for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
		line_at(host, pid, LOG_FORMAT_POSTFIX, times[i].tv_sec, times[i].tv_nsec,
		        LOG_SVC_SMTPD, LOG_INFO, "1K1RJB3K1CX01: client=[127.0.0.1]:1");
		line_at(host, pid, LOG_FORMAT_JSON, times[i].tv_sec, times[i].tv_nsec, LOG_SVC_QMGR,
		        LOG_WARN, "1K1RJB3K1CX01: from=<a\tb>");
		line_at(host, pid, LOG_FORMAT_POSTFIX, times[i].tv_sec, times[i].tv_nsec,
		        LOG_SVC_MASTER, LOG_DEBUG, "d");
	}
	/* What the comparison stands for, once spelt out. */
	lb.len = 0;
	line_at(host, pid, LOG_FORMAT_POSTFIX, 0, 999999999, LOG_SVC_SMTPD, LOG_INFO, "a");
	line_at(host, pid, LOG_FORMAT_POSTFIX, 1, 0, LOG_SVC_SMTPD, LOG_INFO, "b");
	assert_memory_equal(lb.buf, "1970-01-01T00:00:00.999999Z ", 28);
	const char *second = (const char *)memchr(lb.buf, '\n', lb.len) + 1;
	assert_memory_equal(second, "1970-01-01T00:00:01.000000Z ", 28);
	log_set_thread_buf(NULL);
	log_set_clock(NULL);
	log_configure(LOG_INFO, LOG_FORMAT_POSTFIX);
}

/* What log_line() writes to stderr goes to a temporary file while
 * stderr_begin() is in force; stderr_end() puts stderr back (before any
 * check, so that cmocka's messages are seen) and returns the file's bytes. */
static int stderr_file = -1, stderr_saved = -1;

static void
stderr_begin(void)
{
	char path[] = "/tmp/test_log_XXXXXX";
	stderr_file = mkstemp(path);
	assert_true(stderr_file >= 0);
	unlink(path);
	stderr_saved = dup(STDERR_FILENO);
	assert_true(stderr_saved >= 0);
	assert_int_equal(dup2(stderr_file, STDERR_FILENO), STDERR_FILENO);
}

static size_t
stderr_end(char *buf, size_t cap)
{
	assert_int_equal(dup2(stderr_saved, STDERR_FILENO), STDERR_FILENO);
	close(stderr_saved);
	ssize_t n = pread(stderr_file, buf, cap, 0);
	close(stderr_file);
	assert_true(n >= 0);
	return (size_t)n;
}

static void
test_line_in_place(void **state)
{
	(void)state;
	char host[256];
	init_host(host, sizeof(host));
	int pid = (int)getpid();
	static char filed[LOG_BUF_SIZE];
	char body[8000];
	memset(body, 'x', sizeof(body) - 1);
	body[sizeof(body) - 1] = '\0';
	snprintf(lb.tag, sizeof(lb.tag), "w1");
	log_set_thread_buf(&lb);
	log_set_clock(fake_clock);

	/* Exactly a line's room left: no flush, and the longest line ends at
	 * the buffer's last byte. */
	memset(lb.buf, 'a', LOG_BUF_SIZE);
	lb.len = LOG_BUF_SIZE - LOG_LINE_CAP;
	stderr_begin();
	line_at(host, pid, LOG_FORMAT_POSTFIX, 1796346123, 0, LOG_SVC_SMTPD, LOG_INFO, body);
	assert_int_equal(stderr_end(filed, sizeof(filed)), 0);
	assert_int_equal(lb.len, LOG_BUF_SIZE);
	assert_int_equal(lb.buf[LOG_BUF_SIZE - 1], '\n');

	/* Less than that: what was buffered is written first, even for a
	 * short line that would have fitted. */
	memset(lb.buf, 'b', LOG_BUF_SIZE);
	lb.len = LOG_BUF_SIZE - LOG_LINE_CAP + 1;
	fake_now = (struct timespec){1796346123, 0};
	stderr_begin();
	log_line(LOG_SVC_SMTPD, LOG_INFO, "short", 5);
	assert_int_equal(stderr_end(filed, sizeof(filed)), LOG_BUF_SIZE - LOG_LINE_CAP + 1);
	for (size_t i = 0; i < LOG_BUF_SIZE - LOG_LINE_CAP + 1; i++)
		assert_int_equal(filed[i], 'b');
	/* The buffer now holds the short line alone; the same again, checked. */
	line_at(host, pid, LOG_FORMAT_POSTFIX, 1796346123, 0, LOG_SVC_SMTPD, LOG_INFO, "short");
	assert_int_equal(lb.len, 2 * (lb.len / 2));
	assert_memory_equal(lb.buf, lb.buf + lb.len / 2, lb.len / 2);

	/* The main thread: straight to stderr, the same bytes. */
	log_set_thread_buf(NULL);
	char want[LOG_LINE_CAP];
	struct log_origin o = {.host = host,
	                       .prog = "ringmxd",
	                       .pid = pid,
	                       .svc = LOG_SVC_MASTER,
	                       .lvl = LOG_NOTICE,
	                       .ts = {1796346125, 5000}};
	size_t wn = ref_format_line(want, sizeof(want), LOG_FORMAT_POSTFIX, &o, S("stopped"));
	fake_now = o.ts;
	stderr_begin();
	log_line(LOG_SVC_MASTER, LOG_NOTICE, S("stopped"));
	assert_int_equal(stderr_end(filed, sizeof(filed)), wn);
	assert_memory_equal(filed, want, wn);
	log_set_clock(NULL);
	log_configure(LOG_INFO, LOG_FORMAT_POSTFIX);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_postfix),
	    cmocka_unit_test(test_postfix_cut),
	    cmocka_unit_test(test_json),
	    cmocka_unit_test(test_json_escapes),
	    cmocka_unit_test(test_json_cut),
	    cmocka_unit_test(test_names),
	    /* before test_line_stamps: log_init() not called yet */
	    cmocka_unit_test(test_line_defaults),
	    cmocka_unit_test(test_same_bytes),
	    cmocka_unit_test(test_line_stamps),
	    cmocka_unit_test(test_line_in_place),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
