/*
 * dns.h - one worker's DNS resolver: c-ares driven from the worker's ring,
 * with a bounded answer cache in front of it (engine/dns/dns.c).
 *
 * c-ares is the protocol core (it builds queries, parses answers and keeps
 * the retry timers); this module is its glue to the event loop. c-ares says
 * which of its sockets want reading or writing (ARES_OPT_SOCK_STATE_CB);
 * each becomes a poll SQE on the ring, and its CQE runs ares_process_fd()
 * for that socket only. The loop's wait is bounded by ares_timeout(), and
 * dns_poll() lets c-ares retry or give up. No thread, no blocking call: c-ares
 * reads and writes its non-blocking sockets only when the ring said they are
 * ready.
 *
 * Ownership rules
 *  - struct dns belongs to one worker thread; nothing in it is shared.
 *  - A struct dns_req belongs to its caller (embedded in a connection's
 *    state). While a lookup is pending it is linked on a cache entry; the
 *    caller gets it back either through done() (once) or by dns_cancel().
 *  - A pending cache entry is never evicted, so the c-ares callback always
 *    finds its entry; the cache is bounded by dns_cache_size entries.
 */
#ifndef RINGMX_DNS_H
#define RINGMX_DNS_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ringmx_stats;

#define DNS_ADDR_MAX  8    /* A records kept per answer */
#define DNS_NAME_MAX  254  /* a query name, with its terminating NUL */
#define DNS_TTL_MAX_S 3600 /* positive answers are cached at most this long */
#define DNS_NEG_TTL_S 60   /* NXDOMAIN and no-data answers */
#define DNS_SOCK_MAX  64   /* sockets c-ares may have open at once */

enum dns_status {
	DNS_OK = 0,       /* naddr A records */
	DNS_NXDOMAIN = 1, /* the name does not exist */
	DNS_NODATA = 2,   /* the name exists, no A record */
	DNS_FAIL = 3,     /* SERVFAIL, REFUSED, no server answered in time */
};

struct dns_result {
	uint8_t status; /* enum dns_status */
	uint8_t naddr;
	uint32_t addr[DNS_ADDR_MAX]; /* network byte order */
};

struct dns_req {
	/* The answer; called once, from the loop (never inside
	 * dns_lookup_a()). The request is unlinked before the call. */
	void (*done)(struct dns_req *r, const struct dns_result *res);
	struct dns_req *next, **pprev; /* on the entry's waiters while pending */
};

/* What the worker gives the resolver: its ring and how to get an SQE. */
struct dns_env {
	struct io_uring *ring;
	struct io_uring_sqe *(*get_sqe)(void *ctx);
	void *ctx;
	unsigned ud_op; /* the op its CQEs carry (ud.h) */
	struct ringmx_stats *stats;
	const uint64_t *now; /* the worker's monotonic clock, ns */
};

struct dns;

/* c-ares' process-wide set-up: the main thread, before any dns_open(). */
int dns_library_init(void);
void dns_library_cleanup(void);

/* servers: "127.0.0.1:5353,[::1]:53" (c-ares' CSV form), or "" for
 * /etc/resolv.conf. cache_size: answer cache entries. 0 or -errno with a
 * message in err. */
int dns_open(struct dns **out, const struct dns_env *env, const char *servers,
	     unsigned cache_size, uint64_t timeout_ns, char *err, size_t errlen);
void dns_close(struct dns *d);
/* A reload: new servers (the cache is kept; answers do not depend on who
 * gave them). 0 or -errno with err set; the old servers stay on error. */
int dns_set_servers(struct dns *d, const char *servers, char *err, size_t errlen);

enum { DNS_HIT = 0, DNS_PENDING = 1 };
/*
 * Look up the A records of name (len bytes, no trailing dot). DNS_HIT:
 * *res is the cached answer. DNS_PENDING: r->done() brings it later.
 * -EBUSY: every cache entry that name could use is waiting for an answer
 * (counted dns_overload); -ENAMETOOLONG.
 */
int dns_lookup_a(struct dns *d, const char *name, size_t len, struct dns_req *r,
		 struct dns_result *res);
/* Forget a pending request: done() will not be called. Idempotent. */
void dns_cancel(struct dns *d, struct dns_req *r);

void dns_on_cqe(struct dns *d, const struct io_uring_cqe *cqe);
/* Each loop iteration: c-ares' retries and time-outs that are due. */
void dns_poll(struct dns *d);
/* How long the loop may sleep for the resolver's sake (ns, <= max). */
uint64_t dns_wait_ns(struct dns *d, uint64_t max);
/* Lookups waiting for c-ares (for drains and tests). */
unsigned dns_pending(const struct dns *d);

#endif
