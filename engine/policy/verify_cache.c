/*
 * verify_cache.c - the recipient verification cache (verify.h): a fixed
 * table of verify_cache_size entries, allocated once, with O(1) lookup
 * (chained buckets), insert, expiry on lookup and eviction of the oldest
 * entry when full (entries are kept in insertion order; a replaced entry
 * moves to the young end). Pure: no clock, no I/O; time is passed in, so
 * the unit tests and the bench drive it directly.
 *
 * Keys: an address is not stored, its 128-bit hash is, keyed by two
 * random 64-bit seeds chosen at start (so a sender cannot construct two
 * addresses that share an entry without knowing them); two different
 * addresses share a key with probability about n^2 / 2^129. This keeps an
 * entry at 160 bytes whatever the address length (16 MB per worker at
 * the default 100000, touched only as entries are used).
 *
 * Ownership rules
 *  - The table and its buckets belong to struct verify_cache; one thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy_hash.h"
#include "verify.h"

#define NIL 0u

static inline unsigned char
lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* Seeded multiply-mix over 8-byte words; the domain (after the last '@')
 * is folded to lower case on the way. */
static uint64_t
hash(uint64_t seed, const char *p, size_t n, size_t dom)
{
	uint64_t h = policy_mix64(seed ^ (n * 0x9e3779b97f4a7c15ull));
	for (size_t i = 0; i < n;) {
		uint64_t w = 0;
		for (unsigned b = 0; b < 8 && i < n; b++, i++) {
			unsigned char c = (unsigned char)p[i];
			w |= (uint64_t)(i >= dom ? lower(c) : c) << (8 * b);
		}
		h = policy_mix64(h ^ w) + seed;
	}
	return policy_mix64(h);
}

void
vcache_key(const struct verify_cache *vc, const char *addr, size_t len, uint64_t k[2])
{
	size_t dom = len;
	for (size_t i = len; i > 0; i--)
		if (addr[i - 1] == '@') {
			dom = i;
			break;
		}
	k[0] = hash(vc->seed[0], addr, len, dom);
	k[1] = hash(vc->seed[1], addr, len, dom);
}

int
vcache_init(struct verify_cache *vc, uint32_t cap, uint64_t seed0, uint64_t seed1)
{
	memset(vc, 0, sizeof(*vc));
	if (cap == 0)
		return -EINVAL;
	uint32_t nb = 1;
	while (nb < cap && nb < (1u << 31))
		nb <<= 1;
	vc->e = calloc(cap, sizeof(*vc->e));
	vc->bucket = calloc(nb, sizeof(*vc->bucket));
	if (vc->e == NULL || vc->bucket == NULL) {
		vcache_fini(vc);
		return -ENOMEM;
	}
	vc->cap = cap;
	vc->nbuckets = nb;
	vc->seed[0] = seed0;
	vc->seed[1] = seed1;
	for (uint32_t i = 0; i < cap; i++)
		vc->e[i].next = i + 1 < cap ? i + 2 : NIL;
	vc->free_head = 1;
	return 0;
}

void
vcache_fini(struct verify_cache *vc)
{
	free(vc->e);
	free(vc->bucket);
	vc->e = NULL;
	vc->bucket = NULL;
}

static inline struct vc_entry *
at(struct verify_cache *vc, uint32_t i)
{
	return &vc->e[i - 1];
}

static uint32_t *
bucket_of(struct verify_cache *vc, const uint64_t k[2])
{
	return &vc->bucket[k[0] & (vc->nbuckets - 1)];
}

/* Take entry i out of its bucket and the age list, back to the free list. */
static void
drop(struct verify_cache *vc, uint32_t i)
{
	struct vc_entry *e = at(vc, i);
	uint32_t *pp = bucket_of(vc, (uint64_t[2]){e->k0, e->k1});
	while (*pp != i)
		pp = &at(vc, *pp)->hnext;
	*pp = e->hnext;
	if (e->prev != NIL)
		at(vc, e->prev)->next = e->next;
	else
		vc->head = e->next;
	if (e->next != NIL)
		at(vc, e->next)->prev = e->prev;
	else
		vc->tail = e->prev;
	e->used = 0;
	e->next = vc->free_head;
	vc->free_head = i;
	vc->n--;
}

static uint32_t
find(struct verify_cache *vc, const uint64_t k[2])
{
	for (uint32_t i = *bucket_of(vc, k); i != NIL; i = at(vc, i)->hnext)
		if (at(vc, i)->k0 == k[0] && at(vc, i)->k1 == k[1])
			return i;
	return NIL;
}

const struct vc_entry *
vcache_get(struct verify_cache *vc, const uint64_t k[2], uint64_t now)
{
	uint32_t i = find(vc, k);
	if (i == NIL)
		return NULL;
	if (at(vc, i)->expires <= now) {
		drop(vc, i);
		return NULL;
	}
	return at(vc, i);
}

void
vcache_put(struct verify_cache *vc, const uint64_t k[2], bool ok, int code, const char *text,
           size_t tlen, uint64_t expires)
{
	uint32_t i = find(vc, k);
	if (i != NIL)
		drop(vc, i);
	if (vc->free_head == NIL) {
		drop(vc, vc->head); /* the oldest */
		vc->evicted++;
	}
	i = vc->free_head;
	struct vc_entry *e = at(vc, i);
	vc->free_head = e->next;
	if (tlen > sizeof(e->text))
		tlen = sizeof(e->text);
	e->k0 = k[0];
	e->k1 = k[1];
	e->expires = expires;
	e->used = 1;
	e->ok = ok;
	e->code_hi = (uint8_t)(code / 100);
	e->tlen = (uint8_t)tlen;
	memcpy(e->text, text, tlen);
	uint32_t *b = bucket_of(vc, k);
	e->hnext = *b;
	*b = i;
	e->next = NIL;
	e->prev = vc->tail;
	if (vc->tail != NIL)
		at(vc, vc->tail)->next = i;
	else
		vc->head = i;
	vc->tail = i;
	vc->n++;
}
