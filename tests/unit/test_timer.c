/*
 * test_timer.c - the per-worker timing wheel: never early, at most one tick
 * late, lazy re-arming, cancel, horizon wrap-around and long stalls.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "timer.h"

#define SEC 1000000000ull

struct rec {
	struct timer_node node;
	uint64_t fired_at;
	int fired;
};

static uint64_t g_now;

static void
on_fire(struct timer_node *n, void *arg)
{
	struct rec *r = (struct rec *)n;
	(void)arg;
	r->fired++;
	r->fired_at = g_now;
}

static struct timer_wheel *
wheel(uint64_t now)
{
	struct timer_wheel *w = malloc(sizeof(*w));
	assert_non_null(w);
	timer_wheel_init(w, now);
	return w;
}

static void
advance(struct timer_wheel *w, uint64_t to)
{
	g_now = to;
	timer_expire(w, to, on_fire, NULL);
}

static void
test_fires_not_early_not_late(void **state)
{
	(void)state;
	uint64_t t0 = 1000 * SEC;
	struct timer_wheel *w = wheel(t0);
	struct rec r = {0};
	timer_set(w, &r.node, t0 + 5 * SEC);
	assert_true(timer_armed(&r.node));
	for (uint64_t t = t0; t < t0 + 5 * SEC; t += TIMER_TICK_NS / 4)
		advance(w, t);
	assert_int_equal(r.fired, 0);
	advance(w, t0 + 5 * SEC + 2 * TIMER_TICK_NS);
	assert_int_equal(r.fired, 1);
	assert_false(timer_armed(&r.node));
	assert_true(r.fired_at >= t0 + 5 * SEC && r.fired_at <= t0 + 5 * SEC + 2 * TIMER_TICK_NS);
	assert_int_equal(w->count, 0);
	free(w);
}

static void
test_rearm_moves_deadline(void **state)
{
	(void)state;
	uint64_t t0 = 10 * SEC;
	struct timer_wheel *w = wheel(t0);
	struct rec r = {0};
	timer_set(w, &r.node, t0 + 1 * SEC);
	timer_set(w, &r.node, t0 + 3 * SEC); /* activity pushed it out */
	assert_int_equal(w->count, 1);
	advance(w, t0 + 2 * SEC);
	assert_int_equal(r.fired, 0);
	advance(w, t0 + 3 * SEC + TIMER_TICK_NS);
	assert_int_equal(r.fired, 1);
	free(w);
}

static void
test_cancel(void **state)
{
	(void)state;
	struct timer_wheel *w = wheel(0);
	struct rec r = {0};
	timer_set(w, &r.node, 1 * SEC);
	timer_cancel(w, &r.node);
	timer_cancel(w, &r.node); /* twice is harmless */
	advance(w, 5 * SEC);
	assert_int_equal(r.fired, 0);
	assert_int_equal(w->count, 0);
	free(w);
}

static void
test_beyond_horizon(void **state)
{
	(void)state;
	uint64_t horizon = (uint64_t)TIMER_SLOTS * TIMER_TICK_NS;
	struct timer_wheel *w = wheel(0);
	struct rec r = {0};
	uint64_t d = 2 * horizon + 7 * TIMER_TICK_NS;
	timer_set(w, &r.node, d);
	for (uint64_t t = 0; t < d; t += 3 * TIMER_TICK_NS)
		advance(w, t);
	assert_int_equal(r.fired, 0);
	advance(w, d + TIMER_TICK_NS);
	assert_int_equal(r.fired, 1);
	free(w);
}

static void
test_long_stall_fires_everything(void **state)
{
	(void)state;
	struct timer_wheel *w = wheel(0);
	struct rec r[64] = {0};
	for (int i = 0; i < 64; i++)
		timer_set(w, &r[i].node, (uint64_t)(i + 1) * 7 * SEC);
	advance(w, 10000 * SEC); /* the loop was stuck far past every deadline */
	for (int i = 0; i < 64; i++)
		assert_int_equal(r[i].fired, 1);
	assert_int_equal(w->count, 0);
	free(w);
}

static void
test_past_deadline_fires_next_tick(void **state)
{
	(void)state;
	struct timer_wheel *w = wheel(50 * SEC);
	struct rec r = {0};
	timer_set(w, &r.node, 1 * SEC); /* already due */
	assert_int_equal(r.fired, 0);   /* never synchronously */
	advance(w, 50 * SEC + TIMER_TICK_NS);
	assert_int_equal(r.fired, 1);
	free(w);
}

/* A deadline late in the tick being expired must not be passed over until
 * the wheel comes round again (a bug that showed as timeouts firing 400 s
 * late under CPU load). */
static void
test_deadline_later_in_current_tick(void **state)
{
	(void)state;
	uint64_t t0 = 100 * SEC;
	struct timer_wheel *w = wheel(t0);
	struct rec r = {0};
	uint64_t d = t0 + 2 * SEC + TIMER_TICK_NS - 1000; /* near the end of its tick */
	timer_set(w, &r.node, d);
	advance(w, d - 5000); /* expiry runs inside the deadline's tick, before it */
	assert_int_equal(r.fired, 0);
	advance(w, d + 2 * TIMER_TICK_NS);
	assert_int_equal(r.fired, 1);
	assert_true(r.fired_at - d <= 2 * TIMER_TICK_NS);
	free(w);
}

/* Re-arming within the same slot after time moved on keeps it findable. */
static void
test_rearm_after_time_moved(void **state)
{
	(void)state;
	uint64_t t0 = 7 * SEC;
	struct timer_wheel *w = wheel(t0);
	struct rec r = {0};
	timer_set(w, &r.node, t0 + 50 * TIMER_TICK_NS);
	for (uint64_t t = t0; t < t0 + 40 * TIMER_TICK_NS; t += TIMER_TICK_NS / 3) {
		advance(w, t);
		timer_set(w, &r.node, t + 2 * SEC); /* activity keeps pushing it */
	}
	uint64_t last = r.node.deadline;
	advance(w, last + 2 * TIMER_TICK_NS);
	assert_int_equal(r.fired, 1);
	free(w);
}

static void
test_wait_hint(void **state)
{
	(void)state;
	struct timer_wheel *w = wheel(0);
	struct rec r = {0};
	assert_int_equal(timer_wait_ns(w, 5 * SEC), 5 * SEC);
	timer_set(w, &r.node, 100 * SEC);
	assert_int_equal(timer_wait_ns(w, 5 * SEC), TIMER_TICK_NS);
	free(w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fires_not_early_not_late),
		cmocka_unit_test(test_rearm_moves_deadline),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_beyond_horizon),
		cmocka_unit_test(test_long_stall_fires_everything),
		cmocka_unit_test(test_past_deadline_fires_next_tick),
		cmocka_unit_test(test_deadline_later_in_current_tick),
		cmocka_unit_test(test_rearm_after_time_moved),
		cmocka_unit_test(test_wait_hint),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
