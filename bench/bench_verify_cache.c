/*
 * bench_verify_cache.c - the recipient verification cache's hit path
 * (engine/policy/verify_cache.c: key the address, look it up) in ns per
 * lookup, over a full default-sized cache (100000 entries). Not run by
 * meson test; figures in docs/benchmarks.md. Owns everything it uses.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "verify.h"

#define N      100000u
#define ROUNDS 20u

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int
main(int argc, char **argv)
{
	uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : N;
	struct verify_cache vc;
	if (n == 0 || vcache_init(&vc, n, 0x1234, 0x5678) < 0)
		return 1;
	char (*addr)[40] = malloc((size_t)n * sizeof(*addr));
	if (addr == NULL)
		return 1;
	for (uint32_t i = 0; i < n; i++) {
		snprintf(addr[i], sizeof(addr[i]), "user.%u@example%u.test", i * 2654435761u, i % 97);
		uint64_t k[2];
		vcache_key(&vc, addr[i], strlen(addr[i]), k);
		vcache_put(&vc, k, true, 250, "", 0, ~0ull);
	}
	/* Walk in a scattered order so the table is not read sequentially. */
	uint64_t hits = 0, t0 = now_ns();
	for (uint32_t r = 0; r < ROUNDS; r++)
		for (uint32_t j = 0; j < n; j++) {
			uint32_t i = (uint32_t)(((uint64_t)j * 40503u + r) % n);
			uint64_t k[2];
			vcache_key(&vc, addr[i], strlen(addr[i]), k);
			hits += vcache_get(&vc, k, 1) != NULL;
		}
	uint64_t dt = now_ns() - t0;
	printf("verify cache: %u entries, %llu lookups, %llu hits, %.1f ns per lookup\n", n,
	       (unsigned long long)n * ROUNDS, (unsigned long long)hits,
	       (double)dt / ((double)n * ROUNDS));
	free(addr);
	vcache_fini(&vc);
	return hits == (uint64_t)n * ROUNDS ? 0 : 1;
}
