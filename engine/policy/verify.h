/*
 * verify.h - recipient verification against the next hop
 * (verify_recipients, docs/defences.md), as Postfix's
 * reject_unverified_recipient: the RCPT is answered from a bounded cache
 * of earlier results, or paused while a probe (MAIL FROM:<>, RCPT TO,
 * then RSET or QUIT, never DATA) asks the address's own next hop through
 * the relay's pooled connections (relay.h, struct relay_probe).
 *
 * Ownership rules
 *  - struct verify belongs to one worker and is used on its thread only;
 *    the cache is per worker (a client spread over two workers may cause
 *    two probes for one address: no locks on the RCPT path).
 *  - Every table is sized at start: the cache (verify_cache_size entries,
 *    one allocation) and the probes (VERIFY_PROBES_MAX); nothing is
 *    allocated per RCPT or per probe.
 *  - A struct verify_wait lives in the connection's struct policy_conn;
 *    it is on one probe's list while that connection waits, and
 *    verify_cancel() takes it off (so no answer reaches a freed slot).
 */
#ifndef RINGMX_VERIFY_H
#define RINGMX_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ringmx/smtp.h"

/* Probes in flight per worker; an RCPT over it gets 450 4.1.1 (counted:
 * verify_busy). */
#define VERIFY_PROBES_MAX 1024
/* The next hop's reply text kept with a negative entry (printable ASCII). */
#define VERIFY_TEXT_MAX 120

struct policy_conn;
struct relay;
struct config;
struct ringmx_stats;
struct vprobe;

/* A connection waiting for a probe (inside struct policy_conn). */
struct verify_wait {
	struct verify_wait *prev, *next;
	struct vprobe *probe; /* NULL: not waiting */
};

/* ---- the cache (verify_cache.c): pure, time passed in ---- */

struct vc_entry {
	uint64_t k0, k1;  /* the address's 128-bit keyed hash */
	uint64_t expires; /* monotonic ns */
	uint32_t hnext;   /* bucket chain: index + 1, 0 ends it */
	uint32_t prev, next; /* age order (index + 1): the oldest is evicted first */
	uint8_t used;
	uint8_t ok;       /* 1: verified; 0: refused with text */
	uint8_t code_hi;  /* refused: the reply code / 100 (5) */
	uint8_t tlen;
	char text[VERIFY_TEXT_MAX];
};

struct verify_cache {
	struct vc_entry *e;
	uint32_t *bucket; /* index + 1 */
	uint32_t cap, nbuckets, n;
	uint32_t head, tail; /* age order, index + 1: head oldest */
	uint32_t free_head;  /* unused entries, chained through next */
	uint64_t seed[2];
	uint64_t evicted;
};

/* 0 or -ENOMEM. seed: the hash keys (random in the daemon). */
int vcache_init(struct verify_cache *vc, uint32_t cap, uint64_t seed0, uint64_t seed1);
void vcache_fini(struct verify_cache *vc);
/* The address's key (the domain is compared without case). */
void vcache_key(const struct verify_cache *vc, const char *addr, size_t len, uint64_t k[2]);
/* The live entry for k, or NULL (an expired one is dropped). */
const struct vc_entry *vcache_get(struct verify_cache *vc, const uint64_t k[2], uint64_t now);
/* Insert or replace; the oldest entry makes room when full. */
void vcache_put(struct verify_cache *vc, const uint64_t k[2], bool ok, int code,
                const char *text, size_t tlen, uint64_t expires);

/* ---- the policy side (verify.c) ---- */

struct verify;

int verify_open(struct verify **out, const struct config *cfg, struct relay *relay,
                struct ringmx_stats *stats);
void verify_close(struct verify *v); /* NULL allowed */
void verify_set_conf(struct verify *v, const struct config *cfg);
/* SMTP_CHECK_OK, SMTP_CHECK_REJECT (*r set), or SMTP_CHECK_PENDING: the
 * answer comes through pc->waiter (pc->pending is set). */
int verify_rcpt(struct verify *v, struct policy_conn *pc, const char *addr, size_t len,
                struct smtp_check_reply *r);
/* pc no longer waits (cancel, close): no answer will reach it. */
void verify_cancel(struct verify *v, struct policy_conn *pc);
/* Timeouts (verify_timeout); now is the loop's clock. */
void verify_poll(struct verify *v, uint64_t now);
uint64_t verify_wait_ns(const struct verify *v, uint64_t max);

#endif
