/*
 * pass_cache.h - the screening pass cache shared by every worker: clients
 * that passed every screening test (engine/policy/screen.c) and are not
 * tested again until their entry expires (screen_cache_ttl). Pure: no I/O,
 * no clock (callers pass the monotonic time), no allocation after
 * pass_cache_new().
 *
 * Ownership rules
 *  - One cache per process, created by the main thread before the workers
 *    start and freed after they are joined; the workers read and write it
 *    at once through C11 atomics only (no lock).
 *  - An entry is a 64-bit keyed hash of the client's address and its
 *    expiry. Writers racing on one slot can at worst pair one passed
 *    client's key with another passed client's expiry: every value the
 *    slot can hold is a pass, so a race never makes an untested client
 *    pass (short of a 2^-64 hash collision under a secret key).
 *
 * Memory: 16 bytes per slot, screen_cache_size slots, mapped at start-up;
 * a full neighbourhood evicts its entry closest to expiry.
 */
#ifndef RINGMX_PASS_CACHE_H
#define RINGMX_PASS_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define PASS_PROBE 8
#define PASS_CACHE_MIN 16
#define PASS_CACHE_MAX (1u << 26)

struct pass_slot {
	_Atomic uint64_t key;   /* 0: empty */
	_Atomic uint64_t until; /* monotonic ns; 0 while being written */
};

struct pass_cache {
	uint32_t mask;
	uint64_t seed[2];
	struct pass_slot *slots;
};

/* nslots: rounded up to a power of two in PASS_CACHE_MIN..PASS_CACHE_MAX.
 * 0 or -errno. */
int pass_cache_new(struct pass_cache **out, uint32_t nslots, const uint64_t seed[2]);
void pass_cache_free(struct pass_cache *c);
/* Did the client (AF_INET or AF_INET6 address) pass, with an entry that
 * is still valid at now? */
bool pass_cache_hit(const struct pass_cache *c, const struct sockaddr *sa, uint64_t now);
/* The client passed: valid until the given time. */
void pass_cache_add(struct pass_cache *c, const struct sockaddr *sa, uint64_t now,
		    uint64_t until);

#endif
