/*
 * policy.h - what ringmxd decides about a client, a sender and a recipient
 * beyond the SMTP core's own rules: the access list and screening
 * (screen.c), per-client limits, recipient maps and recipient
 * verification, each in its own file under engine/policy/.
 *
 * The layer sits below the connection: the SMTP core asks through struct
 * smtp_hooks.check (smtp.h), the connection passes that on to
 * policy_check() with its struct policy_conn, and an answer that comes
 * later (screening's DNS verdict, verification) returns through the
 * connection's struct policy_waiter, as the sink's verdicts do through
 * struct sink_waiter. At connect: client_access, the per-client limits,
 * then screening. At MAIL and RCPT the checks run in this order and the
 * first refusal wins: screening, the client's rates, (RCPT) the recipient
 * maps, verification.
 *
 * Ownership rules
 *  - struct policy belongs to one worker and is used on its thread only;
 *    what it shares with other workers (the per-client table) is shared
 *    through atomics, as that module documents.
 *  - struct policy_conn lives inside struct conn; only that connection's
 *    worker touches it. policy_conn_close() releases what it holds (a
 *    concurrency slot, a pending verification) exactly once, at teardown.
 */
#ifndef RINGMX_POLICY_H
#define RINGMX_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "ringmx/smtp.h"
#include "screen.h"
#include "verify.h"

struct client_table;
struct client_limits_conf;
struct ringmx_stats;

/* Who hears a pending check's answer: embedded in the connection. */
struct policy_waiter {
	void (*done)(struct policy_waiter *w, int res, const struct smtp_check_reply *r);
};

/* Per-connection policy state (inside struct conn). */
struct policy_conn {
	struct policy_waiter *waiter;
	const struct smtp_peer *peer; /* the client (after PROXY) */
	bool pending;                 /* an answer is owed through waiter */
	struct verify_wait vwait;     /* verify.c: on a probe's list while pending */
	/* client_limits.c: the count this connection holds on the shared
	 * client table (client_slot valid while client_pinned). */
	bool client_pinned;
	bool client_tried; /* pinning was tried (exempt or untracked: not again) */
	uint32_t client_slot;
	uint32_t client_conns; /* the client's connections when pinned */
	struct screen_conn screen; /* screen.h */
};

/* The client's address as replies and postscreen-shaped log lines give
 * it: "192.0.2.1", "2001:db8::1" (no "IPv6:" tag). */
static inline const char *
policy_client_addr(const struct policy_conn *pc)
{
	const char *a = pc->peer->addr_text;
	return strncmp(a, "IPv6:", 5) == 0 ? a + 5 : a;
}

struct rcpt_map;
struct ringmx_stats;
struct screen_conf;
struct dns;
struct pass_cache;
struct screen_pool;

/* One worker's policy: set up with the worker, replaced parts on reload. */
struct policy {
	const char *hostname; /* for 421 replies */
	struct verify *verify; /* verify_recipients = yes; NULL otherwise */
	/* recipient_maps: the running configuration's map (shared, read
	 * only; NULL = not set), replaced when the worker switches config. */
	const struct rcpt_map *rcpt_map;
	/* Per-client limits: the process's one table (main.c), this
	 * worker's view of the configuration, counters and clock. */
	struct client_table *clients;
	const struct client_limits_conf *limits;
	struct ringmx_stats *stats; /* the worker's counters */
	const uint64_t *now;        /* monotonic ns */
	/* Screening: the running configuration's part, the worker's
	 * resolver and job pool, the process's one pass cache (main.c). */
	const struct screen_conf *screen;
	struct dns *dns;
	struct screen_pool *screen_pool;
	struct pass_cache *passes;
};

/* What policy_connect() tells the connection to do. */
enum policy_connect_res {
	POLICY_GREET = 0,  /* the 220 */
	POLICY_REFUSE,     /* *r (421) instead of the 220, then close */
	POLICY_DENY,       /* *r (554) instead of the 220, then 503 but to QUIT */
	POLICY_GREET_WAIT, /* the 220- pause (greet_wait), then screen_greet_end() */
};

/* The client is known (after any PROXY header), before the greeting.
 * can_pause: the greeting may be held (not on implicit TLS). Returns an
 * enum policy_connect_res. */
int policy_connect(struct policy *p, struct policy_conn *pc, bool can_pause,
		   struct smtp_check_reply *r);
/* When the connection's timer must call policy_expire() (ns; 0: never). */
static inline uint64_t
policy_deadline(const struct policy_conn *pc)
{
	return pc->screen.dns_deadline;
}
void policy_expire(struct policy *p, struct policy_conn *pc);
/* Teardown: release what pc holds. Once per connection, whether or not
 * policy_connect() was called. */
void policy_conn_close(struct policy *p, struct policy_conn *pc);
/* The session ended (its last replies are queued): the connection no
 * longer counts toward the client's concurrency. Idempotent. */
void policy_session_end(struct policy *p, struct policy_conn *pc);

int policy_check(struct policy *p, struct policy_conn *pc, enum smtp_check_point what,
		 const char *addr, size_t len, struct smtp_check_reply *r);
/* The session no longer waits for pc's pending answer. */
void policy_cancel(struct policy *p, struct policy_conn *pc);
/* Implicit TLS, before the handshake: may this client start one more
 * (client_tls_handshake_rate_limit)? SMTP_CHECK_REJECT: close without a
 * reply (there is no TLS session to carry one). */
int policy_tls_begin(struct policy *p, struct policy_conn *pc);

#endif
