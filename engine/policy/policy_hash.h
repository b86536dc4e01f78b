/*
 * policy_hash.h - the one 64-bit mixing step the policy tables hash with
 * (client_table.c, verify_cache.c): the MurmurHash3 finaliser. Callers key
 * it with their own random per-process seeds. No state, no ownership.
 */
#ifndef RINGMX_POLICY_HASH_H
#define RINGMX_POLICY_HASH_H

#include <stdint.h>

static inline uint64_t
policy_mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

#endif
