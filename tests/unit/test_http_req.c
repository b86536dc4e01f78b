/*
 * test_http_req.c - http_req_parse() (engine/http/http_req.c), the metrics
 * endpoint's request head parser, and metrics_render()
 * (engine/runtime/metrics.c): cumulative buckets, the buffer-too-small
 * contract, label escaping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http_req.h"
#include "metrics.h"

static int
parse(const char *s, struct http_req *r)
{
	return http_req_parse(s, strlen(s), r);
}

static void
test_get(void **state)
{
	(void)state;
	const char *req = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nextra";
	struct http_req r;
	size_t head = strlen(req) - strlen("extra");

	assert_int_equal(parse(req, &r), (int)head);
	assert_int_equal(r.method, HTTP_GET);
	assert_int_equal(r.path_len, 8);
	assert_memory_equal(r.path, "/metrics", 8);
	/* Every split of the head is incomplete, never an error. */
	for (size_t k = 0; k < head; k++)
		assert_int_equal(http_req_parse(req, k, &r), 0);
	assert_int_equal(parse("HEAD /healthz HTTP/1.0\r\n\r\n", &r), 26);
	assert_int_equal(r.method, HTTP_HEAD);
	assert_int_equal(parse("POST /metrics HTTP/1.1\r\n\r\n", &r), 26);
	assert_int_equal(r.method, HTTP_OTHER);
}

static void
test_bad(void **state)
{
	(void)state;
	struct http_req r;
	static const char *const bad[] = {
	    "GET /metrics\r\n\r\n",                     /* HTTP/0.9 */
	    "GET /metrics HTTP/1.1\n\n",                /* bare LF */
	    "GET /metrics HTTP/1.1\r\nA: b\rc\r\n\r\n", /* bare CR */
	    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",         /* HTTP/2 preface */
	    "get /metrics HTTP/1.1\r\n\r\n",            /* methods are upper case */
	    "GET  /metrics HTTP/1.1\r\n\r\n",           /* empty target */
	    "\r\n",                                     /* empty request line */
	    "GET /m\x01 HTTP/1.1\r\n\r\n",              /* control byte */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(parse(bad[i], &r), -400);
	char big[HTTP_REQ_MAX + 16];
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
	assert_int_equal(http_req_parse(big, sizeof(big), &r), -431);
}

static void
test_render(void **state)
{
	(void)state;
	static struct metrics_snap s[1];
	uint64_t age = 0;
	struct metrics_global g = {.nworkers = 1,
	                           .nlisteners = 1,
	                           .beat_age_ns = &age,
	                           .version = "1.0",
	                           .clients_slots = 16};
	g.listener[0] = "[::1]:25";
	s[0].stats.messages_accepted = 7;
	RINGMX_HIST_OBSERVE(&s[0].stats, eod_reply, 40);            /* first bucket */
	RINGMX_HIST_OBSERVE(&s[0].stats, eod_reply, 700);           /* le=0.001 */
	RINGMX_HIST_OBSERVE(&s[0].stats, eod_reply, 9000000000ull); /* +Inf */
	RINGMX_HIST_OBSERVE(&s[0].stats, spool_batch, 3);
	s[0].open[0] = 2;

	char small[100];
	size_t need = metrics_render(&g, s, small, sizeof(small));
	assert_true(need >= sizeof(small));
	static char buf[1 << 20];
	assert_int_equal(metrics_render(&g, s, buf, sizeof(buf)), need);
	assert_non_null(strstr(buf, "ringmx_messages_accepted_total{worker=\"0\"} 7\n"));
	assert_non_null(
	    strstr(buf, "ringmx_eod_reply_seconds_bucket{worker=\"0\",le=\"0.000050\"} 1\n"));
	assert_non_null(
	    strstr(buf, "ringmx_eod_reply_seconds_bucket{worker=\"0\",le=\"0.000500\"} 1\n"));
	assert_non_null(
	    strstr(buf, "ringmx_eod_reply_seconds_bucket{worker=\"0\",le=\"0.001000\"} 2\n"));
	assert_non_null(
	    strstr(buf, "ringmx_eod_reply_seconds_bucket{worker=\"0\",le=\"60.000000\"} 2\n"));
	assert_non_null(
	    strstr(buf, "ringmx_eod_reply_seconds_bucket{worker=\"0\",le=\"+Inf\"} 3\n"));
	assert_non_null(strstr(buf, "ringmx_eod_reply_seconds_sum{worker=\"0\"} 9000.000740\n"));
	assert_non_null(strstr(buf, "ringmx_eod_reply_seconds_count{worker=\"0\"} 3\n"));
	assert_non_null(
	    strstr(buf, "ringmx_spool_batch_messages_bucket{worker=\"0\",le=\"2\"} 0\n"));
	assert_non_null(
	    strstr(buf, "ringmx_spool_batch_messages_bucket{worker=\"0\",le=\"4\"} 1\n"));
	assert_non_null(
	    strstr(buf, "ringmx_open_connections{worker=\"0\",listener=\"[::1]:25\"} 2\n"));
	/* No relay: no relay series. */
	assert_null(strstr(buf, "ringmx_relay_queue"));
	s[0].relay = true;
	s[0].rg.nhops = 1;
	strcpy(s[0].rg.hop[0].name, "a\"b\\c");
	s[0].rg.hop[0].queued = 4;
	metrics_render(&g, s, buf, sizeof(buf));
	assert_non_null(strstr(buf, "ringmx_relay_queue{worker=\"0\",hop=\"a\\\"b\\\\c\"} 4\n"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_get),
	    cmocka_unit_test(test_bad),
	    cmocka_unit_test(test_render),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
