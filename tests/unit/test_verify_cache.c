/*
 * test_verify_cache.c - the recipient verification cache
 * (engine/policy/verify_cache.c) with injected time: lookups, TTL expiry,
 * replacement, the bound and eviction of the oldest entry, case of the
 * domain. Ownership: each test owns its cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "verify.h"

static const struct vc_entry *
get(struct verify_cache *vc, const char *a, uint64_t now)
{
	uint64_t k[2];
	vcache_key(vc, a, strlen(a), k);
	return vcache_get(vc, k, now);
}

static void
put(struct verify_cache *vc, const char *a, bool ok, const char *t, uint64_t exp)
{
	uint64_t k[2];
	vcache_key(vc, a, strlen(a), k);
	vcache_put(vc, k, ok, ok ? 250 : 550, t, strlen(t), exp);
}

static void
test_hit_and_expiry(void **st)
{
	(void)st;
	struct verify_cache vc;
	assert_int_equal(vcache_init(&vc, 4, 1, 2), 0);
	assert_null(get(&vc, "a@x.test", 0));
	put(&vc, "a@x.test", true, "", 100);
	put(&vc, "b@x.test", false, "User doesn't exist", 50);
	const struct vc_entry *e = get(&vc, "a@x.test", 99);
	assert_non_null(e);
	assert_true(e->ok);
	e = get(&vc, "b@x.test", 49);
	assert_non_null(e);
	assert_false(e->ok);
	assert_int_equal(e->tlen, 18);
	assert_memory_equal(e->text, "User doesn't exist", 18);
	assert_null(get(&vc, "b@x.test", 50)); /* expired: dropped */
	assert_int_equal(vc.n, 1);
	assert_null(get(&vc, "a@x.test", 100));
	assert_int_equal(vc.n, 0);
	vcache_fini(&vc);
}

static void
test_domain_case(void **st)
{
	(void)st;
	struct verify_cache vc;
	assert_int_equal(vcache_init(&vc, 4, 7, 8), 0);
	put(&vc, "Ann@Example.TEST", true, "", 10);
	assert_non_null(get(&vc, "Ann@example.test", 0));
	assert_null(get(&vc, "ann@example.test", 0)); /* local parts keep their case */
	vcache_fini(&vc);
}

static void
test_bound_and_eviction(void **st)
{
	(void)st;
	struct verify_cache vc;
	char a[32];
	assert_int_equal(vcache_init(&vc, 3, 3, 4), 0);
	for (int i = 0; i < 3; i++) {
		snprintf(a, sizeof(a), "u%d@x.test", i);
		put(&vc, a, true, "", 1000);
	}
	put(&vc, "u0@x.test", false, "no", 1000); /* replaced: now the youngest */
	assert_int_equal(vc.n, 3);
	put(&vc, "u3@x.test", true, "", 1000); /* full: u1, the oldest, goes */
	assert_int_equal(vc.n, 3);
	assert_int_equal(vc.evicted, 1);
	assert_null(get(&vc, "u1@x.test", 0));
	assert_non_null(get(&vc, "u2@x.test", 0));
	assert_non_null(get(&vc, "u3@x.test", 0));
	const struct vc_entry *e = get(&vc, "u0@x.test", 0);
	assert_non_null(e);
	assert_false(e->ok);
	for (int i = 0; i < 1000; i++) {
		snprintf(a, sizeof(a), "v%d@x.test", i);
		put(&vc, a, true, "", 1000);
		assert_true(vc.n <= 3);
	}
	assert_int_equal(vc.n, 3);
	assert_non_null(get(&vc, "v999@x.test", 0));
	assert_null(get(&vc, "v996@x.test", 0));
	vcache_fini(&vc);
}

static void
test_text_bound(void **st)
{
	(void)st;
	struct verify_cache vc;
	char t[VERIFY_TEXT_MAX + 50];
	memset(t, 'x', sizeof(t) - 1);
	t[sizeof(t) - 1] = '\0';
	assert_int_equal(vcache_init(&vc, 2, 5, 6), 0);
	put(&vc, "a@x.test", false, t, 10);
	assert_int_equal(get(&vc, "a@x.test", 0)->tlen, VERIFY_TEXT_MAX);
	vcache_fini(&vc);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hit_and_expiry),
	    cmocka_unit_test(test_domain_case),
	    cmocka_unit_test(test_bound_and_eviction),
	    cmocka_unit_test(test_text_bound),
	};
	return cmocka_run_group_tests_name("verify_cache", tests, NULL, NULL);
}
