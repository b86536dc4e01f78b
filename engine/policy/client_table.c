/*
 * client_table.c - the lock-free per-client table (client_table.h).
 *
 * Ownership rules
 *  - The table is shared by every worker; each slot is changed only by
 *    atomic operations on its own words. The slot array is mapped once by
 *    client_table_new() and never grows.
 *
 * Why this is safe without locks (the argument the header promises):
 *  - Claiming: a slot with no connections whose counters all belong to past
 *    windows is claimed by a CAS of st from {gen, 0} to {gen + 1, 0} (odd:
 *    busy). Only the winner writes the key and clears the counters, then
 *    publishes {gen + 2, 1} with release order: it holds the first
 *    connection. A slot with connections is never claimed (the CAS expects
 *    0 connections), so a connection's slot keeps its key.
 *  - Joining: a reader loads st (acquire), skips odd or unused slots, reads
 *    the key and then CASes st from what it loaded to connections + 1. Any
 *    claim in between changed gen, so the CAS fails and the reader looks
 *    again: it can never count itself on a slot recycled under it.
 *  - Two workers meeting the same new client at once may each claim a slot
 *    for it (each saw the other's claim still odd, or chose another free
 *    slot). The limits then sum over every slot of the key in the probe
 *    window, so a duplicate splits the counts but never loses them; it
 *    expires like any other slot.
 *  - Counters are window << 32 | count, changed by CAS: the first event of
 *    a new window restarts the count at 1, so no one has to reset them and
 *    no event is lost to a reset race. Windows are fixed (aligned to the
 *    clock, as anvil's per-client window is fixed): one word per counter,
 *    exact under concurrency; a burst that straddles a boundary may see up
 *    to twice the limit in one window length, as with anvil.
 */
#include "client_table.h"
#include "policy_hash.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define ST_GEN(s) ((uint32_t)((s) >> 32))
#define ST_CONNS(s) ((uint32_t)(s))
#define EV_WIN(e) ((uint32_t)((e) >> 32))
#define EV_COUNT(e) ((uint32_t)(e))

int
client_table_new(struct client_table **out, uint32_t nslots, const uint64_t seed[2])
{
	struct client_table *t;

	if (nslots < CLIENT_TABLE_MIN || nslots > CLIENT_TABLE_MAX || (nslots & (nslots - 1)) != 0)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	/* Anonymous pages are zero: every slot starts unused (gen 0), and
	 * untouched ones cost no memory until a client lands there. */
	void *m = mmap(NULL, (size_t)nslots * sizeof(struct client_slot), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		free(t);
		return -ENOMEM;
	}
	t->slots = m;
	t->mask = nslots - 1;
	t->seed[0] = seed[0];
	t->seed[1] = seed[1];
	*out = t;
	return 0;
}

void
client_table_free(struct client_table *t)
{
	if (t == NULL)
		return;
	munmap(t->slots, ((size_t)t->mask + 1) * sizeof(struct client_slot));
	free(t);
}

static uint64_t
load_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

bool
client_key_make(const struct sockaddr *sa, unsigned v6prefix, struct client_key *k)
{
	uint8_t a[16];

	memset(a, 0, sizeof(a));
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
		a[10] = a[11] = 0xff;
		memcpy(a + 12, &s4->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
		memcpy(a, &s6->sin6_addr, 16);
		/* A v4-mapped peer (dual-stack listener) is that IPv4 client. */
		if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			if (v6prefix > 128)
				v6prefix = 128;
			for (unsigned i = v6prefix; i < 128; i++)
				a[i / 8] &= (uint8_t)~(0x80u >> (i % 8));
		}
	} else {
		return false;
	}
	k->w[0] = load_be64(a);
	k->w[1] = load_be64(a + 8);
	return true;
}

uint32_t
client_window(uint64_t now_ns, uint64_t window_ns)
{
	uint32_t w = (uint32_t)(now_ns / (window_ns ? window_ns : 1)) + 1;
	return w ? w : 1;
}

/* A keyed mix (the seed is random per process): an outsider cannot aim
 * many addresses at one probe window. Not a MAC; a window that does fill
 * up only leaves those clients untracked, counted. */
static uint32_t
key_home(const struct client_table *t, const struct client_key *k)
{
	uint64_t h = policy_mix64(policy_mix64(k->w[0] ^ t->seed[0]) ^ k->w[1] ^ t->seed[1]);

	return (uint32_t)(h & t->mask);
}

static bool
slot_is(struct client_slot *s, const struct client_key *k)
{
	return atomic_load_explicit(&s->key[0], memory_order_relaxed) == k->w[0] &&
	       atomic_load_explicit(&s->key[1], memory_order_relaxed) == k->w[1];
}

/* No connections and nothing counted in window win (or never used). */
static bool
slot_free(struct client_slot *s, uint64_t st, uint32_t win)
{
	if (ST_CONNS(st) != 0 || (ST_GEN(st) & 1))
		return false;
	for (int e = 0; e < CLIENT_EV_N; e++)
		if (EV_WIN(atomic_load_explicit(&s->ev[e], memory_order_relaxed)) == win)
			return false;
	return true;
}

/* Join slot s (st as loaded) if it is k's: 1 joined, 0 not k's, -1 the
 * slot changed hands meanwhile (look again). */
static int
slot_join(struct client_slot *s, uint64_t st, const struct client_key *k)
{
	for (;;) {
		uint32_t gen = ST_GEN(st);
		if (gen == 0 || (gen & 1) || !slot_is(s, k))
			return 0;
		/* seq_cst with key_sum()'s loads: of two clients' connections
		 * racing to the limit, the later one sees the earlier. */
		if (atomic_compare_exchange_weak_explicit(&s->st, &st, st + 1, memory_order_seq_cst,
							  memory_order_acquire))
			return 1;
		if (ST_GEN(st) != gen)
			return -1;
	}
}

static bool
slot_claim(struct client_slot *s, uint64_t st, const struct client_key *k)
{
	uint32_t gen = ST_GEN(st);
	uint64_t busy = (uint64_t)(uint32_t)(gen + 1) << 32;

	assert(ST_CONNS(st) == 0 && !(gen & 1));
	if (!atomic_compare_exchange_strong_explicit(&s->st, &st, busy, memory_order_acq_rel,
						     memory_order_relaxed))
		return false;
	atomic_store_explicit(&s->key[0], k->w[0], memory_order_relaxed);
	atomic_store_explicit(&s->key[1], k->w[1], memory_order_relaxed);
	for (int e = 0; e < CLIENT_EV_N; e++)
		atomic_store_explicit(&s->ev[e], 0, memory_order_relaxed);
	atomic_store_explicit(&s->logged, 0, memory_order_relaxed);
	uint32_t next = gen + 2;
	if (next == 0)
		next = 2; /* 0 means never used */
	atomic_store_explicit(&s->st, (uint64_t)next << 32 | 1, memory_order_seq_cst);
	return true;
}

/* Connections (ev < 0) or window win's count of ev, summed over the
 * slots of k in its probe window (duplicates included). */
static uint32_t
key_sum(struct client_table *t, const struct client_key *k, int ev, uint32_t win)
{
	uint32_t home = key_home(t, k), sum = 0;

	for (uint32_t i = 0; i < CLIENT_PROBE; i++) {
		struct client_slot *s = &t->slots[(home + i) & t->mask];
		uint64_t st = atomic_load_explicit(&s->st, memory_order_seq_cst);
		if (ST_GEN(st) == 0 || (ST_GEN(st) & 1) || !slot_is(s, k))
			continue;
		if (ev < 0) {
			sum += ST_CONNS(st);
		} else {
			uint64_t e = atomic_load_explicit(&s->ev[ev], memory_order_relaxed);
			if (EV_WIN(e) == win)
				sum += EV_COUNT(e);
		}
	}
	return sum;
}

int
client_table_pin(struct client_table *t, const struct client_key *k, uint32_t win,
		 uint32_t *conns)
{
	uint32_t home = key_home(t, k);

	for (int round = 0; round < CLIENT_RETRY_MAX; round++) {
		int cand = -1, slot = -1;
		uint64_t cand_st = 0;
		bool again = false;

		for (uint32_t i = 0; i < CLIENT_PROBE && slot < 0; i++) {
			uint32_t idx = (home + i) & t->mask;
			struct client_slot *s = &t->slots[idx];
			uint64_t st = atomic_load_explicit(&s->st, memory_order_acquire);
			int j = slot_join(s, st, k);
			if (j > 0)
				slot = (int)idx;
			else if (j < 0)
				again = true;
			else if (cand < 0 && slot_free(s, st, win)) {
				cand = (int)idx;
				cand_st = st;
			}
		}
		if (slot < 0 && again)
			continue;
		if (slot < 0 && cand >= 0 && slot_claim(&t->slots[cand], cand_st, k))
			slot = cand;
		if (slot >= 0) {
			*conns = key_sum(t, k, -1, win);
			return slot;
		}
		if (cand < 0)
			return -ENOSPC;
	}
	return -ENOSPC;
}

void
client_table_unpin(struct client_table *t, int slot)
{
	assert(slot >= 0 && (uint32_t)slot <= t->mask);
	uint64_t was = atomic_fetch_sub_explicit(&t->slots[slot].st, 1, memory_order_acq_rel);
	assert(ST_CONNS(was) > 0 && !(ST_GEN(was) & 1));
	(void)was;
}

uint32_t
client_table_count(struct client_table *t, int slot, enum client_event ev, uint32_t win)
{
	struct client_slot *s = &t->slots[slot];
	uint64_t e = atomic_load_explicit(&s->ev[ev], memory_order_relaxed), n;
	struct client_key k;

	assert(ST_CONNS(atomic_load_explicit(&s->st, memory_order_relaxed)) > 0);
	do {
		n = EV_WIN(e) == win ? e + 1 : (uint64_t)win << 32 | 1;
		if (EV_COUNT(n) == 0)
			return UINT32_MAX; /* saturated */
	} while (!atomic_compare_exchange_weak_explicit(&s->ev[ev], &e, n, memory_order_relaxed,
							 memory_order_relaxed));
	k.w[0] = atomic_load_explicit(&s->key[0], memory_order_relaxed);
	k.w[1] = atomic_load_explicit(&s->key[1], memory_order_relaxed);
	return key_sum(t, &k, (int)ev, win);
}

bool
client_table_first(struct client_table *t, int slot, unsigned bit, uint32_t win)
{
	struct client_slot *s = &t->slots[slot];
	uint64_t l = atomic_load_explicit(&s->logged, memory_order_relaxed), n;
	uint64_t b = 1ull << bit;

	assert(bit < 32);
	do {
		if (EV_WIN(l) == win && (l & b))
			return false;
		n = EV_WIN(l) == win ? l | b : (uint64_t)win << 32 | b;
	} while (!atomic_compare_exchange_weak_explicit(&s->logged, &l, n, memory_order_relaxed,
							 memory_order_relaxed));
	return true;
}

uint32_t
client_table_conns(struct client_table *t, const struct client_key *k)
{
	return key_sum(t, k, -1, 0);
}

uint32_t
client_table_used(struct client_table *t, uint32_t win, uint32_t *nslots)
{
	uint32_t used = 0;

	for (uint32_t i = 0; i <= t->mask; i++) {
		struct client_slot *s = &t->slots[i];
		uint64_t st = atomic_load_explicit(&s->st, memory_order_relaxed);
		if (ST_GEN(st) != 0 && !slot_free(s, st, win))
			used++;
	}
	*nslots = t->mask + 1;
	return used;
}
