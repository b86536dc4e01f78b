/*
 * test_rnd.h - the random values of the tests that compare a builder with
 * the printf it replaced (test_fmt.c, test_smtp_log.c, test_log.c):
 * splitmix64 from a fixed seed, so a failure repeats run after run.
 *
 * Ownership: one generator per test program (static state).
 */
#ifndef TEST_RND_H
#define TEST_RND_H

#include <stdint.h>

static uint64_t rnd_state = 0x243f6a8885a308d3u;

static inline uint64_t
rnd(void)
{
	uint64_t z = (rnd_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

/* A value of random magnitude (0 to 64 bits): every digit count turns up. */
static inline uint64_t
rnd_mag(void)
{
	unsigned bits = (unsigned)(rnd() % 65);
	return bits == 64 ? rnd() : rnd() & ((UINT64_C(1) << bits) - 1);
}

#endif
