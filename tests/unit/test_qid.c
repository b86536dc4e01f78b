/*
 * test_qid.c - queue ids: fixed length, printable, unique and increasing
 * within a worker even when messages outrun the clock, distinct across
 * workers, and decodable.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "qid.h"

static void
test_format(void **state)
{
	(void)state;
	struct qid_gen g;
	char id[QID_LEN + 1];
	qid_init(&g, 3);
	qid_next(&g, 1795000000123456ull, id);
	assert_int_equal(strlen(id), QID_LEN);
	for (size_t i = 0; i < QID_LEN; i++)
		assert_non_null(strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", id[i]));
	uint64_t t;
	unsigned wk;
	assert_int_equal(qid_parse(id, &t, &wk), 0);
	assert_int_equal(t, 1795000000123456ull);
	assert_int_equal(wk, 3);
	assert_int_equal(qid_parse("SHORT", &t, &wk), -1);
	assert_int_equal(qid_parse("0123456789ABI", &t, &wk), -1); /* I is not in the alphabet */
}

static void
test_unique_when_clock_stands_still(void **state)
{
	(void)state;
	struct qid_gen g;
	char prev[QID_LEN + 1], id[QID_LEN + 1];
	qid_init(&g, 0);
	qid_next(&g, 1000, prev);
	for (int i = 0; i < 100000; i++) {
		qid_next(&g, 1000, id); /* same microsecond every time */
		assert_true(strcmp(id, prev) > 0);
		memcpy(prev, id, sizeof(id));
	}
	qid_next(&g, 500, id); /* clock stepped back */
	assert_true(strcmp(id, prev) > 0);
}

static void
test_workers_differ(void **state)
{
	(void)state;
	struct qid_gen a, b;
	char x[QID_LEN + 1], y[QID_LEN + 1];
	qid_init(&a, 0);
	qid_init(&b, QID_MAX_WORKER);
	qid_next(&a, 42, x);
	qid_next(&b, 42, y);
	assert_string_not_equal(x, y);
	assert_memory_equal(x, y, 11); /* same time part */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_unique_when_clock_stands_still),
		cmocka_unit_test(test_workers_differ),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
