/*
 * test_spool_share.c - fair sharing of spool_memory (engine/spool/spool_share.c,
 * include/ringmx/spool_share.h): small transactions stay out of the large
 * share, a transaction crossing SPOOL_SMALL_MAX moves all its chunks into it,
 * the share refuses past half of spool_memory, a large SIZE= reserves at
 * MAIL (or is refused), and releasing gives back exactly what was taken.
 * The share's accounting alone: no pool, no ring.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "spool_internal.h"
#include "ringmx/spool_share.h"
#include "ringmx/stats.h"

#define SMALL (SPOOL_SMALL_MAX / SPOOL_CHUNK_SIZE)

static struct ringmx_stats stats;
static struct spool sp;

static void
setup_spool(uint64_t memory)
{
	memset(&sp, 0, sizeof(sp));
	memset(&stats, 0, sizeof(stats));
	sp.env.stats = &stats;
	sp.memory_cap = memory;
	sp_share_init(&sp);
}

static struct sink_tx
new_tx(void)
{
	struct sink_tx tx;
	memset(&tx, 0, sizeof(tx));
	strcpy(tx.qid, "TESTQID");
	return tx;
}

/* Take n chunks for tx; the number taken before a refusal. */
static uint64_t
grow(struct sink_tx *tx, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (sp_share_chunk(&sp, tx) < 0)
			return i;
	return n;
}

static void
test_small_stays_out(void **state)
{
	(void)state;
	setup_spool(4u << 20); /* 1024 chunks, 512 for large messages */
	assert_int_equal(sp.large_cap, 512);
	struct sink_tx tx[20];
	for (int i = 0; i < 20; i++) {
		tx[i] = new_tx();
		assert_int_equal(grow(&tx[i], SMALL), SMALL);
		assert_int_equal(tx[i].large, 0);
	}
	assert_int_equal(sp.large_used, 0);
	for (int i = 0; i < 20; i++)
		sp_share_release(&sp, &tx[i]);
	assert_int_equal(stats.spool_share_full, 0);
}

static void
test_crossing_counts_all(void **state)
{
	(void)state;
	setup_spool(4u << 20);
	struct sink_tx a = new_tx(), b = new_tx(), c = new_tx();
	/* The chunk past 256 KiB moves every chunk of a into the share. */
	assert_int_equal(grow(&a, SMALL + 1), SMALL + 1);
	assert_int_equal(a.large, SMALL + 1);
	assert_int_equal(sp.large_used, SMALL + 1);
	assert_int_equal(grow(&a, 200), 200);
	assert_int_equal(sp.large_used, SMALL + 201);
	/* b fits in what is left (512 - 265 = 247 chunks)... */
	assert_int_equal(grow(&b, 247), 247);
	assert_int_equal(sp.large_used, 512);
	/* ...and nothing more: the next chunk is refused and counted. */
	assert_int_equal(grow(&b, 1), 0);
	assert_int_equal(stats.spool_share_full, 1);
	/* c crossing now is refused at its crossing, its small part untouched. */
	assert_int_equal(grow(&c, SMALL + 1), SMALL);
	assert_int_equal(c.large, 0);
	assert_int_equal(stats.spool_share_full, 2);
	/* Releasing gives back exactly what each held. */
	sp_share_release(&sp, &a);
	assert_int_equal(sp.large_used, 247);
	assert_int_equal(grow(&c, 1), 1);
	assert_int_equal(c.large, SMALL + 1);
	sp_share_release(&sp, &b);
	sp_share_release(&sp, &c);
	assert_int_equal(sp.large_used, 0);
	assert_int_equal(a.large + b.large + c.large + a.nchunks + b.nchunks + c.nchunks, 0);
}

static void
test_reserve_at_mail(void **state)
{
	(void)state;
	setup_spool(4u << 20);
	struct sink_tx s = new_tx(), big = new_tx(), big2 = new_tx();
	/* A small SIZE= (or none) reserves nothing. */
	assert_int_equal(sp_share_reserve(&sp, &s, 10000), 0);
	assert_int_equal(sp_share_reserve(&sp, &s, 0), 0);
	assert_int_equal(s.large, 0);
	/* 1 MB: its need, in chunks, rounded up. */
	uint64_t need = (spool_stage_need(1000000, 0) + SPOOL_CHUNK_SIZE - 1) / SPOOL_CHUNK_SIZE;
	assert_int_equal(sp_share_reserve(&sp, &big, 1000000), 0);
	assert_int_equal(big.large, need);
	assert_int_equal(sp.large_used, need);
	/* Staging within the reservation takes nothing more. */
	assert_int_equal(grow(&big, need), need);
	assert_int_equal(sp.large_used, need);
	/* A second 1 MB does not fit the rest of the share: -ENOSPC (452). */
	assert_int_equal(sp_share_reserve(&sp, &big2, 1000000), -ENOSPC);
	assert_int_equal(big2.large, 0);
	assert_int_equal(stats.spool_share_refused, 1);
	/* Past its SIZE= it grows from the share like any large message. */
	assert_int_equal(grow(&big, 10), 10);
	assert_int_equal(sp.large_used, need + 10);
	sp_share_release(&sp, &big);
	assert_int_equal(sp.large_used, 0);
	assert_int_equal(sp_share_reserve(&sp, &big2, 1000000), 0);
	sp_share_release(&sp, &big2);
	sp_share_release(&sp, &s);
	assert_int_equal(sp.large_used, 0);
}

static void
test_need_formula(void **state)
{
	(void)state;
	/* message + fixed envelope + recipients x (path + TLV header) + slack */
	assert_int_equal(spool_stage_need(10240000, 1000),
			 10240000 + 2048 + 1000 * 260 + (64 << 10));
	/* The envelope never counts for more than the record can hold. */
	assert_int_equal(spool_stage_need(1, 1000000), 1 + SPOOL_ENV_MAX + (64 << 10));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_small_stays_out),
		cmocka_unit_test(test_crossing_counts_all),
		cmocka_unit_test(test_reserve_at_mail),
		cmocka_unit_test(test_need_formula),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
