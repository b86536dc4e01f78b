/*
 * client_table.h - the per-client table shared by every worker thread of
 * ringmxd: concurrent connections and per-window event counts, keyed by the
 * client's address (IPv4 /32, IPv6 /client_ipv6_prefix). Pure: no I/O, no
 * clock (the caller passes the window number), no allocation after
 * client_table_new(). The limits themselves are client_limits.c's.
 *
 * Ownership rules
 *  - One table per process, created by the main thread before the workers
 *    start and freed after they are joined; every worker uses it at once,
 *    through C11 atomics only (no lock anywhere).
 *  - A connection that pinned a slot (client_table_pin() >= 0) owns one
 *    count on it and gives it back exactly once (client_table_unpin()); a
 *    slot with connections is never recycled, so a pinned slot's key and
 *    counters stay the client's while the connection lives.
 *
 * Memory: CLIENT_SLOT_BYTES (64, one cache line) per tracked client, times
 * client_table_size slots, mapped at start-up. A flood of distinct sources
 * cannot grow it: a client for which no slot within CLIENT_PROBE of its
 * hash is free is simply not tracked (the caller fails open and counts it).
 */
#ifndef RINGMX_CLIENT_TABLE_H
#define RINGMX_CLIENT_TABLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* Slots looked at for one client: its hash's slot and the next ones. A
 * bound on the work per connection, and what makes the table "full" for a
 * client although other parts of it have room. */
#define CLIENT_PROBE 8
/* Rescans after losing a race for a slot, before giving up (untracked). */
#define CLIENT_RETRY_MAX 4
#define CLIENT_SLOT_BYTES 64
#define CLIENT_TABLE_MIN 16
#define CLIENT_TABLE_MAX (1u << 24)

/* What is counted per window. */
enum client_event {
	CLIENT_EV_CONN = 0, /* connections (client_connection_rate_limit) */
	CLIENT_EV_MSG,      /* MAIL commands (client_message_rate_limit) */
	CLIENT_EV_RCPT,     /* RCPT commands (client_recipient_rate_limit) */
	CLIENT_EV_TLS,      /* TLS handshakes (client_tls_handshake_rate_limit) */
	CLIENT_EV_N,
};

/* 16 bytes: the IPv6 form of the address (IPv4 as ::ffff:a.b.c.d) with the
 * host bits past the prefix cleared. A masked native IPv6 address never
 * equals a v4-mapped one (masking keeps the first 80 bits or clears the
 * ffff), so IPv4 and IPv6 clients never share a key. */
struct client_key {
	uint64_t w[2];
};

struct client_slot {
	/* gen << 32 | connections. gen odd: being (re)claimed, the key is
	 * not stable; gen 0: never used. Every claim changes gen, so a CAS
	 * that succeeds on an unchanged word proves the key read before it
	 * still belongs to that generation (the seqlock argument). */
	_Atomic uint64_t st;
	_Atomic uint64_t key[2];
	_Atomic uint64_t ev[CLIENT_EV_N]; /* window << 32 | count in that window */
	_Atomic uint64_t logged;          /* window << 32 | bits already logged */
} __attribute__((aligned(CLIENT_SLOT_BYTES)));

_Static_assert(sizeof(struct client_slot) == CLIENT_SLOT_BYTES, "one cache line per client");

struct client_table {
	uint32_t mask; /* slots - 1 */
	uint64_t seed[2];
	struct client_slot *slots;
};

/* nslots: a power of two in CLIENT_TABLE_MIN..CLIENT_TABLE_MAX. seed: the
 * hash key (random in the daemon, fixed in tests). 0 or -errno. */
int client_table_new(struct client_table **out, uint32_t nslots, const uint64_t seed[2]);
void client_table_free(struct client_table *t);

/* The key of an AF_INET or AF_INET6 address; false for another family. */
bool client_key_make(const struct sockaddr *sa, unsigned v6prefix, struct client_key *k);

/* The window number of a time (ns, any clock the workers share) for
 * windows of window_ns: never 0 (0 marks an unused counter). */
uint32_t client_window(uint64_t now_ns, uint64_t window_ns);

/*
 * Count one connection of client k: on its slot if it has one, else on a
 * free or expired slot (no connections, no count in window win) within
 * CLIENT_PROBE. Returns the slot index, or -ENOSPC (no slot free there, or
 * lost CLIENT_RETRY_MAX races): the client is not tracked. *conns: the
 * client's concurrent connections, this one included.
 */
int client_table_pin(struct client_table *t, const struct client_key *k, uint32_t win,
		     uint32_t *conns);
/* Give back one connection of a slot client_table_pin() returned. */
void client_table_unpin(struct client_table *t, int slot);
/* Count one event of a pinned slot's client in window win; returns the
 * client's count in that window, this one included. */
uint32_t client_table_count(struct client_table *t, int slot, enum client_event ev, uint32_t win);
/* True for the first caller per pinned slot, bit and window: who logs. */
bool client_table_first(struct client_table *t, int slot, unsigned bit, uint32_t win);
/* Slots in use in window win (connections, or a count in that window), out
 * of mask + 1: the metrics endpoint's gauge. A scan of the whole table with
 * relaxed loads, from any thread; a slot changing meanwhile may be counted
 * either way. */
uint32_t client_table_used(struct client_table *t, uint32_t win, uint32_t *nslots);
/* The client's current connections (0 if it has no slot). For tests. */
uint32_t client_table_conns(struct client_table *t, const struct client_key *k);

#endif
