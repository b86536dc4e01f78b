/*
 * spool_share.c - fair sharing of a worker's staging memory among its open
 * transactions (the rule: include/ringmx/spool_share.h; operator view:
 * docs/spool.md, "Fair sharing of staging memory").
 *
 * Ownership: struct spool's large_cap/large_used and each transaction's
 * nchunks/large belong to the worker's thread, like the rest of the spool.
 * Invariants: large_used is the sum of every live transaction's large, and
 * never exceeds large_cap; a transaction with large > 0 has all of its
 * chunks (nchunks <= large) covered, so freeing its chain gives back
 * exactly large.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include "spool_internal.h"

#include "ringmx/spool_share.h"

#define SMALL_CHUNKS (SPOOL_SMALL_MAX / SPOOL_CHUNK_SIZE)

void
sp_share_init(struct spool *sp)
{
	sp->large_cap = sp->memory_cap / SPOOL_LARGE_DIV / SPOOL_CHUNK_SIZE;
	sp->large_used = 0;
}

static int
take(struct spool *sp, struct sink_tx *tx, uint64_t want)
{
	assert(want > tx->large);
	if (sp->large_used + (want - tx->large) > sp->large_cap)
		return -EDQUOT;
	sp->large_used += want - tx->large;
	tx->large = want;
	return 0;
}

int
sp_share_reserve(struct spool *sp, struct sink_tx *tx, uint64_t size_declared)
{
	assert(tx->large == 0 && tx->nchunks == 0);
	uint64_t need = spool_stage_need(size_declared, 0);
	if (size_declared == 0 || need <= SPOOL_SMALL_MAX)
		return 0;
	if (take(sp, tx, (need + SPOOL_CHUNK_SIZE - 1) / SPOOL_CHUNK_SIZE) == 0)
		return 0;
	sp->env.stats->spool_share_refused++;
	return -ENOSPC;
}

int
sp_share_chunk(struct spool *sp, struct sink_tx *tx)
{
	uint64_t n = tx->nchunks + 1;

	if ((n > SMALL_CHUNKS || tx->large > 0) && n > tx->large && take(sp, tx, n) < 0) {
		sp->env.stats->spool_share_full++;
		log_warn("spool: message %s refused: large messages hold their share of "
			 "spool_memory (%llu of %llu bytes)",
			 tx->qid, (unsigned long long)(sp->large_used * SPOOL_CHUNK_SIZE),
			 (unsigned long long)(sp->large_cap * SPOOL_CHUNK_SIZE));
		return -EDQUOT;
	}
	tx->nchunks++;
	return 0;
}

void
sp_share_release(struct spool *sp, struct sink_tx *tx)
{
	assert(sp->large_used >= tx->large);
	sp->large_used -= tx->large;
	tx->large = 0;
	tx->nchunks = 0;
}
