/*
 * pass_cache.c - the shared screening pass cache (pass_cache.h): open
 * addressing over PASS_PROBE slots, lock-free.
 *
 * Ownership rules: as pass_cache.h says; this file keeps no state of its
 * own. A write clears the slot's expiry, stores the key, then publishes
 * the expiry with release order; a reader takes the key and expiry with
 * acquire order and trusts an entry only when both belong together
 * (expiry read twice around the key, unchanged and non-zero).
 */
#include "pass_cache.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "client_table.h"
#include "policy_hash.h"

int
pass_cache_new(struct pass_cache **out, uint32_t nslots, const uint64_t seed[2])
{
	struct pass_cache *c;
	uint32_t n = PASS_CACHE_MIN;

	*out = NULL;
	while (n < nslots && n < PASS_CACHE_MAX)
		n <<= 1;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->slots = mmap(NULL, (size_t)n * sizeof(*c->slots), PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c->slots == MAP_FAILED) {
		free(c);
		return -ENOMEM;
	}
	c->mask = n - 1;
	c->seed[0] = seed[0];
	c->seed[1] = seed[1];
	*out = c;
	return 0;
}

void
pass_cache_free(struct pass_cache *c)
{
	if (c == NULL)
		return;
	munmap(c->slots, ((size_t)c->mask + 1) * sizeof(*c->slots));
	free(c);
}

/* The whole address (IPv6 /128: a pass is earned per host). 0: another
 * family. */
static uint64_t
pass_key(const struct pass_cache *c, const struct sockaddr *sa)
{
	struct client_key k;

	if (!client_key_make(sa, 128, &k))
		return 0;
	return policy_mix64(policy_mix64(k.w[0] ^ c->seed[0]) ^ k.w[1] ^ c->seed[1]) | 1;
}

bool
pass_cache_hit(const struct pass_cache *c, const struct sockaddr *sa, uint64_t now)
{
	uint64_t key = pass_key(c, sa);

	if (key == 0)
		return false;
	for (unsigned i = 0; i < PASS_PROBE; i++) {
		const struct pass_slot *s = &c->slots[(key + i) & c->mask];
		uint64_t u1 = atomic_load_explicit(&s->until, memory_order_acquire);
		uint64_t k = atomic_load_explicit(&s->key, memory_order_acquire);
		uint64_t u2 = atomic_load_explicit(&s->until, memory_order_acquire);

		if (k == key && u1 == u2 && u1 > now)
			return true;
	}
	return false;
}

void
pass_cache_add(struct pass_cache *c, const struct sockaddr *sa, uint64_t now, uint64_t until)
{
	uint64_t key = pass_key(c, sa), best_until = UINT64_MAX;
	struct pass_slot *best = NULL;

	if (key == 0 || until == 0)
		return;
	for (unsigned i = 0; i < PASS_PROBE; i++) {
		struct pass_slot *s = &c->slots[(key + i) & c->mask];
		uint64_t k = atomic_load_explicit(&s->key, memory_order_relaxed);
		uint64_t u = atomic_load_explicit(&s->until, memory_order_relaxed);

		if (k == key) {
			best = s;
			break;
		}
		if (k == 0 || u <= now) {
			best = s; /* free or expired: take it */
			break;
		}
		if (u < best_until) {
			best_until = u;
			best = s;
		}
	}
	atomic_store_explicit(&best->until, 0, memory_order_relaxed);
	atomic_store_explicit(&best->key, key, memory_order_release);
	atomic_store_explicit(&best->until, until, memory_order_release);
}
