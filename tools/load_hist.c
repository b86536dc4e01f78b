/*
 * tools/load_hist.c - latency histogram of ringmx-load (hand-written, HdrHistogram-like).
 *
 * Ownership: ringmx-load (issue 4). One histogram per worker thread, merged by main at
 * the end, so recording needs no locks or atomics.
 *
 * Layout (values in ns): bucket v for v < 2*HIST_SUB (exact), then for each shift s >= 1
 * HIST_SUB buckets covering [1024 << s, 2048 << s) in steps of 1 << s. The relative
 * width of a bucket is at most 1/1024, which gives the 3 significant digits the report
 * prints. 32768 buckets of 8 bytes is 256 KiB per thread: allocated once, never resized.
 */
#include "load.h"

#include <string.h>

void hist_init(struct load_hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

static unsigned hist_index(uint64_t v)
{
	if (v < 2 * HIST_SUB)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - 10u; /* v >> shift lands in [1024, 2048) */
	if (shift > HIST_MAX_SHIFT)
		return HIST_BUCKETS - 1; /* clamp: slower than ~37 minutes */
	return 2 * HIST_SUB + (shift - 1) * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

/* Highest value that maps to bucket i, like HdrHistogram's highestEquivalentValue:
 * percentiles are reported as "at most this", never flattering. */
static uint64_t hist_upper(unsigned i)
{
	if (i < 2 * HIST_SUB)
		return i;
	unsigned k = i - 2 * HIST_SUB;
	unsigned shift = k / HIST_SUB + 1;
	uint64_t sub = k % HIST_SUB + HIST_SUB;
	return (sub << shift) + ((uint64_t)1 << shift) - 1;
}

void hist_record(struct load_hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
	if (v < h->min)
		h->min = v;
}

void hist_merge(struct load_hist *dst, const struct load_hist *src)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->count += src->count;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
	if (src->min < dst->min)
		dst->min = src->min;
}

/* q in [0, 1]. Returns 0 for an empty histogram; the exact max for q == 1. */
uint64_t hist_percentile(const struct load_hist *h, double q)
{
	if (h->count == 0)
		return 0;
	if (q >= 1.0)
		return h->max;
	uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= rank) {
			uint64_t u = hist_upper(i);
			return u < h->max ? u : h->max;
		}
	}
	return h->max;
}
