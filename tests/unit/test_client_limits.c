/*
 * test_client_limits.c - the shared per-client table (engine/policy/
 * client_table.c) and the limits on top of it (client_limits.c): keys
 * (IPv4, v4-mapped, IPv6 per prefix), window roll-over with an injected
 * clock, a full table (fail open), slot reuse, threads hammering one table
 * with exact final counts, and the refusal texts, exceptions and counters.
 * Owner: the per-client limits module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>

#include <cmocka.h>

#include "client_limits.h"
#include "client_table.h"
#include "ringmx/config.h"
#include "ringmx/stats.h"

static const uint64_t seed[2] = {0x0123456789abcdefull, 0xfedcba9876543210ull};

static struct sockaddr_storage
sa4(const char *a)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *s = (struct sockaddr_in *)&ss;

	memset(&ss, 0, sizeof(ss));
	s->sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, a, &s->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage
sa6(const char *a)
{
	struct sockaddr_storage ss;
	struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;

	memset(&ss, 0, sizeof(ss));
	s->sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, a, &s->sin6_addr), 1);
	return ss;
}

static struct client_key
key(struct sockaddr_storage ss, unsigned prefix)
{
	struct client_key k;

	assert_true(client_key_make((const struct sockaddr *)&ss, prefix, &k));
	return k;
}

static bool
same(struct client_key a, struct client_key b)
{
	return a.w[0] == b.w[0] && a.w[1] == b.w[1];
}

static void
test_keys(void **state)
{
	(void)state;
	/* v4-mapped (a dual-stack listener) is the IPv4 client. */
	assert_true(same(key(sa4("192.0.2.7"), 64), key(sa6("::ffff:192.0.2.7"), 64)));
	assert_false(same(key(sa4("192.0.2.7"), 64), key(sa4("192.0.2.8"), 64)));
	/* IPv6 per prefix. */
	assert_true(same(key(sa6("2001:db8:1:2::1"), 64), key(sa6("2001:db8:1:2:ffff::9"), 64)));
	assert_false(same(key(sa6("2001:db8:1:2::1"), 64), key(sa6("2001:db8:1:3::1"), 64)));
	assert_false(same(key(sa6("2001:db8:1:2::1"), 128), key(sa6("2001:db8:1:2::2"), 128)));
	assert_true(same(key(sa6("2001:db8:1:2::1"), 48), key(sa6("2001:db8:1:ff::1"), 48)));
	assert_true(same(key(sa6("2001:db8::1"), 0), key(sa6("fe80::1"), 0)));
	assert_true(same(key(sa6("2001:db8:1:2::1"), 63), key(sa6("2001:db8:1:3::1"), 63)));
	/* IPv4 never shares a key with IPv6, even ::/0. */
	assert_false(same(key(sa4("0.0.0.0"), 0), key(sa6("::"), 0)));
	assert_false(same(key(sa4("0.0.0.1"), 64), key(sa6("::1"), 128)));

	struct sockaddr_storage un;
	struct client_key k;
	memset(&un, 0, sizeof(un));
	un.ss_family = AF_UNIX;
	assert_false(client_key_make((const struct sockaddr *)&un, 64, &k));
	assert_int_equal(client_window(0, 60), 1);
	assert_int_equal(client_window(59, 60), 1);
	assert_int_equal(client_window(60, 60), 2);
}

static void
test_table_bad_size(void **state)
{
	struct client_table *t;

	(void)state;
	assert_int_equal(client_table_new(&t, 1000, seed), -EINVAL);
	assert_int_equal(client_table_new(&t, 8, seed), -EINVAL);
	assert_int_equal(client_table_new(&t, CLIENT_TABLE_MAX * 2u, seed), -EINVAL);
}

static void
test_pin_counts(void **state)
{
	struct client_table *t;
	struct client_key a = key(sa4("192.0.2.1"), 64), b = key(sa4("192.0.2.2"), 64);
	uint32_t n;
	int s[3];

	(void)state;
	assert_int_equal(client_table_new(&t, 1024, seed), 0);
	s[0] = client_table_pin(t, &a, 1, &n);
	assert_true(s[0] >= 0);
	assert_int_equal(n, 1);
	s[1] = client_table_pin(t, &a, 1, &n);
	assert_int_equal(s[1], s[0]); /* the client's slot */
	assert_int_equal(n, 2);
	s[2] = client_table_pin(t, &b, 1, &n);
	assert_int_not_equal(s[2], s[0]);
	assert_int_equal(n, 1);
	assert_int_equal(client_table_conns(t, &a), 2);
	client_table_unpin(t, s[0]);
	assert_int_equal(client_table_conns(t, &a), 1);
	client_table_unpin(t, s[1]);
	assert_int_equal(client_table_conns(t, &a), 0);
	client_table_unpin(t, s[2]);
	client_table_free(t);
}

/* Windows roll over on the injected clock; the count starts again. */
static void
test_window_rollover(void **state)
{
	struct client_table *t;
	struct client_key a = key(sa4("192.0.2.1"), 64);
	const uint64_t W = 60ull * 1000000000u;
	uint32_t n, win = client_window(5 * W + 1, W);
	int s;

	(void)state;
	assert_int_equal(client_table_new(&t, 1024, seed), 0);
	s = client_table_pin(t, &a, win, &n);
	assert_true(s >= 0);
	for (uint32_t i = 1; i <= 5; i++)
		assert_int_equal(client_table_count(t, s, CLIENT_EV_MSG, win), i);
	assert_int_equal(client_table_count(t, s, CLIENT_EV_RCPT, win), 1); /* separate */
	win = client_window(6 * W, W);
	assert_int_equal(client_table_count(t, s, CLIENT_EV_MSG, win), 1);
	assert_true(client_table_first(t, s, 2, win));
	assert_false(client_table_first(t, s, 2, win));
	assert_true(client_table_first(t, s, 3, win));
	assert_true(client_table_first(t, s, 2, win + 1));
	client_table_unpin(t, s);
	client_table_free(t);
}

/* Distinct sources fill the table: past the probe window they are not
 * tracked (-ENOSPC), nothing grows; expired slots are reused. */
static void
test_table_full(void **state)
{
	struct client_table *t;
	int slots[CLIENT_TABLE_MIN * 4];
	unsigned pinned = 0, full = 0;
	uint32_t n;

	(void)state;
	assert_int_equal(client_table_new(&t, CLIENT_TABLE_MIN, seed), 0);
	for (unsigned i = 0; i < CLIENT_TABLE_MIN * 4; i++) {
		char a[32];
		snprintf(a, sizeof(a), "10.0.%u.%u", i / 250, i % 250 + 1);
		struct client_key k = key(sa4(a), 64);
		slots[i] = client_table_pin(t, &k, 1, &n);
		if (slots[i] >= 0) {
			pinned++;
			assert_int_equal(n, 1);
			client_table_count(t, slots[i], CLIENT_EV_CONN, 1);
		} else {
			assert_int_equal(slots[i], -ENOSPC);
			full++;
		}
	}
	assert_true(pinned <= CLIENT_TABLE_MIN);
	assert_true(full >= CLIENT_TABLE_MIN * 3);
	for (unsigned i = 0; i < CLIENT_TABLE_MIN * 4; i++)
		if (slots[i] >= 0)
			client_table_unpin(t, slots[i]);
	/* No connections but counts in window 1: still not reusable. */
	struct client_key nk = key(sa4("198.51.100.1"), 64);
	if (pinned == CLIENT_TABLE_MIN)
		assert_int_equal(client_table_pin(t, &nk, 1, &n), -ENOSPC);
	/* Window 2: every slot has expired and can be reused. */
	int s = client_table_pin(t, &nk, 2, &n);
	assert_true(s >= 0);
	assert_int_equal(n, 1);
	client_table_unpin(t, s);
	client_table_free(t);
}

/* Two workers racing on a new client may each claim a slot for it: the
 * counts are summed over every slot of the key in its probe window. The
 * duplicate is made by hand here (the race is too rare to provoke). */
static void
test_duplicate_summed(void **state)
{
	struct client_table *t;
	struct client_key a = key(sa4("192.0.2.77"), 64);
	uint32_t n;

	(void)state;
	assert_int_equal(client_table_new(&t, 1024, seed), 0);
	int s = client_table_pin(t, &a, 3, &n);
	assert_true(s >= 0);
	client_table_count(t, s, CLIENT_EV_MSG, 3);
	int d = (int)(((unsigned)s + 1) & t->mask);
	assert_int_equal(atomic_load(&t->slots[d].st), 0); /* unused neighbour */
	atomic_store(&t->slots[d].key[0], a.w[0]);
	atomic_store(&t->slots[d].key[1], a.w[1]);
	atomic_store(&t->slots[d].ev[CLIENT_EV_MSG], (uint64_t)3 << 32 | 5);
	atomic_store(&t->slots[d].st, (uint64_t)2 << 32 | 2); /* gen 2, 2 connections */
	assert_int_equal(client_table_conns(t, &a), 3);
	int s2 = client_table_pin(t, &a, 3, &n);
	assert_int_equal(s2, s); /* the first slot of the key is joined */
	assert_int_equal(n, 4);
	assert_int_equal(client_table_count(t, s, CLIENT_EV_MSG, 3), 1 + 1 + 5);
	client_table_unpin(t, s2);
	client_table_unpin(t, s);
	client_table_unpin(t, d);
	client_table_unpin(t, d);
	assert_int_equal(client_table_conns(t, &a), 0);
	client_table_free(t);
}

/* ---- threads: exact counts across workers ---- */

#define THREADS 4
#define ROUNDS 20000
#define NKEYS_T 24

struct hammer {
	struct client_table *t;
	unsigned id;
	unsigned bad;
};

static struct client_key
hkey(unsigned i)
{
	char a[32];
	snprintf(a, sizeof(a), "203.0.113.%u", i + 1);
	return key(sa4(a), 64);
}

/* Each thread pins, holds a few, counts, checks that the slot it holds is
 * still its client's (no recycling under a pin) and unpins, over a table
 * small enough that slots are reclaimed all the time. */
static void *
hammer_run(void *arg)
{
	struct hammer *h = arg;
	int held[4];
	unsigned hk[4];
	uint32_t n, rng = h->id * 2654435761u + 1;

	for (unsigned r = 0; r < ROUNDS; r++) {
		unsigned nh = 0;
		for (unsigned j = 0; j < 4; j++) {
			rng = rng * 1103515245u + 12345u;
			hk[nh] = (rng >> 8) % NKEYS_T;
			struct client_key k = hkey(hk[nh]);
			int s = client_table_pin(h->t, &k, 1, &n);
			if (s < 0)
				continue;
			if (n == 0)
				h->bad++;
			held[nh++] = s;
		}
		for (unsigned j = 0; j < nh; j++) {
			struct client_key k = hkey(hk[j]);
			struct client_slot *sl = &h->t->slots[held[j]];
			if (atomic_load(&sl->key[0]) != k.w[0] || atomic_load(&sl->key[1]) != k.w[1])
				h->bad++;
			client_table_unpin(h->t, held[j]);
		}
	}
	return NULL;
}

static void
test_threads_churn(void **state)
{
	struct client_table *t;
	pthread_t th[THREADS];
	struct hammer h[THREADS];

	(void)state;
	assert_int_equal(client_table_new(&t, CLIENT_TABLE_MIN, seed), 0);
	for (unsigned i = 0; i < THREADS; i++) {
		h[i] = (struct hammer){t, i, 0};
		assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h[i]), 0);
	}
	for (unsigned i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(h[i].bad, 0);
	}
	for (unsigned i = 0; i < NKEYS_T; i++) {
		struct client_key k = hkey(i);
		assert_int_equal(client_table_conns(t, &k), 0);
	}
	for (unsigned i = 0; i <= t->mask; i++)
		assert_int_equal((uint32_t)atomic_load(&t->slots[i].st), 0);
	client_table_free(t);
}

#define HOLD 500
#define EVENTS 5000

static pthread_barrier_t bar;

struct holder {
	struct client_table *t;
	int slots[HOLD];
	uint32_t maxn;
	unsigned bad;
};

/* All threads pin one client HOLD times and count EVENTS messages; the
 * totals must be exact. */
static void *
holder_run(void *arg)
{
	struct holder *h = arg;
	struct client_key k = key(sa6("2001:db8:aa::1"), 64);
	uint32_t n;

	for (unsigned i = 0; i < HOLD; i++) {
		h->slots[i] = client_table_pin(h->t, &k, 7, &n);
		if (h->slots[i] < 0)
			h->slots[i] = 0, h->bad++; /* no cmocka asserts off the main thread */
		if (n > h->maxn)
			h->maxn = n;
	}
	for (unsigned i = 0; i < EVENTS; i++)
		client_table_count(h->t, h->slots[i % HOLD], CLIENT_EV_MSG, 7);
	pthread_barrier_wait(&bar);
	pthread_barrier_wait(&bar);
	for (unsigned i = 0; i < HOLD; i++)
		client_table_unpin(h->t, h->slots[i]);
	return NULL;
}

static void
test_threads_exact(void **state)
{
	struct client_table *t;
	pthread_t th[THREADS];
	static struct holder h[THREADS];
	struct client_key k = key(sa6("2001:db8:aa::ffff"), 64); /* the same /64 */

	(void)state;
	assert_int_equal(client_table_new(&t, 1024, seed), 0);
	pthread_barrier_init(&bar, NULL, THREADS + 1);
	for (unsigned i = 0; i < THREADS; i++) {
		memset(&h[i], 0, sizeof(h[i]));
		h[i].t = t;
		assert_int_equal(pthread_create(&th[i], NULL, holder_run, &h[i]), 0);
	}
	pthread_barrier_wait(&bar);
	assert_int_equal(client_table_conns(t, &k), THREADS * HOLD);
	uint32_t maxn = 0;
	for (unsigned i = 0; i < THREADS; i++) {
		assert_int_equal(h[i].bad, 0);
		maxn = h[i].maxn > maxn ? h[i].maxn : maxn;
	}
	assert_int_equal(maxn, THREADS * HOLD); /* the last pin saw them all */
	/* One more event: the window's count is every thread's, exactly. */
	int s = h[0].slots[0];
	assert_int_equal(client_table_count(t, s, CLIENT_EV_MSG, 7), THREADS * EVENTS + 1);
	pthread_barrier_wait(&bar);
	for (unsigned i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(client_table_conns(t, &k), 0);
	pthread_barrier_destroy(&bar);
	client_table_free(t);
}

/* ---- the limits (client_limits.c) ---- */

struct fixture {
	struct client_table *t;
	struct client_limits_conf cf;
	struct ringmx_stats st;
	uint64_t now;
	struct policy p;
};

static struct fixture fx;

static void
fx_init(void)
{
	memset(&fx, 0, sizeof(fx));
	assert_int_equal(client_table_new(&fx.t, 1024, seed), 0);
	fx.cf.rate_window = 60ull * 1000000000u;
	fx.cf.ipv6_prefix = 64;
	fx.now = 1000ull * 1000000000u;
	fx.p = (struct policy){.hostname = "mx.example.test", .clients = fx.t, .limits = &fx.cf,
			       .stats = &fx.st, .now = &fx.now};
}

static void
peer_set(struct smtp_peer *pe, struct sockaddr_storage ss, const char *text)
{
	memset(pe, 0, sizeof(*pe));
	pe->addr = ss;
	snprintf(pe->addr_text, sizeof(pe->addr_text), "%s", text);
}

static int
connect_one(struct policy_conn *pc, const struct smtp_peer *pe, struct smtp_check_reply *r)
{
	memset(pc, 0, sizeof(*pc));
	pc->peer = pe;
	return client_limits_connect(&fx.p, pc, r);
}

#define REPLY_IS(r, lit)                                                                           \
	do {                                                                                       \
		assert_int_equal((r).len, strlen(lit));                                            \
		assert_memory_equal((r).text, lit, (r).len);                                       \
	} while (0)

static void
test_limits_connection(void **state)
{
	struct smtp_peer pe, other;
	struct policy_conn pc[4], po;
	struct smtp_check_reply r;

	(void)state;
	fx_init();
	fx.cf.connection_limit = 2;
	peer_set(&pe, sa4("192.0.2.9"), "192.0.2.9");
	peer_set(&other, sa4("192.0.2.10"), "192.0.2.10");
	assert_int_equal(connect_one(&pc[0], &pe, &r), SMTP_CHECK_OK);
	assert_int_equal(connect_one(&pc[1], &pe, &r), SMTP_CHECK_OK);
	assert_int_equal(connect_one(&pc[2], &pe, &r), SMTP_CHECK_REJECT);
	REPLY_IS(r, "421 4.7.0 mx.example.test Error: too many connections from 192.0.2.9\r\n");
	assert_false(pc[2].client_pinned); /* refused: holds no place */
	assert_int_equal(fx.st.client_conn_limited, 1);
	assert_int_equal(connect_one(&po, &other, &r), SMTP_CHECK_OK); /* separate */
	client_limits_close(&fx.p, &pc[2]);
	client_limits_close(&fx.p, &pc[0]);
	client_limits_close(&fx.p, &pc[0]); /* once only */
	assert_int_equal(connect_one(&pc[3], &pe, &r), SMTP_CHECK_OK);
	client_limits_close(&fx.p, &pc[1]);
	client_limits_close(&fx.p, &pc[3]);
	client_limits_close(&fx.p, &po);
	struct client_key k = key(sa4("192.0.2.9"), 64);
	assert_int_equal(client_table_conns(fx.t, &k), 0);
	client_table_free(fx.t);
}

static void
test_limits_exceptions(void **state)
{
	struct smtp_peer pe;
	struct policy_conn pc[3];
	struct smtp_check_reply r;

	(void)state;
	fx_init();
	fx.cf.connection_limit = 1;
	fx.cf.exceptions.n = 1;
	fx.cf.exceptions.net[0] = (struct proxy_cidr){.family = AF_INET, .prefix = 24,
						       .addr = {192, 0, 2, 0}};
	peer_set(&pe, sa4("192.0.2.9"), "192.0.2.9");
	for (int i = 0; i < 3; i++)
		assert_int_equal(connect_one(&pc[i], &pe, &r), SMTP_CHECK_OK);
	assert_int_equal(fx.st.client_conn_limited, 0);
	for (int i = 0; i < 3; i++)
		assert_false(pc[i].client_pinned);
	client_table_free(fx.t);
}

static void
test_limits_rates(void **state)
{
	struct smtp_peer pe;
	struct policy_conn pc, p2;
	struct smtp_check_reply r;

	(void)state;
	fx_init();
	fx.cf.connection_limit = 50;
	fx.cf.connection_rate_limit = 2;
	fx.cf.message_rate_limit = 2;
	fx.cf.recipient_rate_limit = 3;
	fx.cf.tls_handshake_rate_limit = 1;
	peer_set(&pe, sa6("2001:db8:5::1"), "IPv6:2001:db8:5::1");
	assert_int_equal(connect_one(&pc, &pe, &r), SMTP_CHECK_OK);
	for (int i = 0; i < 2; i++)
		assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_MSG, &r), SMTP_CHECK_OK);
	assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_MSG, &r), SMTP_CHECK_REJECT);
	REPLY_IS(r, "452 4.7.1 Error: too much mail from 2001:db8:5::1\r\n");
	for (int i = 0; i < 3; i++)
		assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_RCPT, &r), SMTP_CHECK_OK);
	assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_RCPT, &r), SMTP_CHECK_REJECT);
	REPLY_IS(r, "452 4.7.1 Error: too many recipients from 2001:db8:5::1\r\n");
	assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_TLS, &r), SMTP_CHECK_OK);
	assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_TLS, &r), SMTP_CHECK_REJECT);
	REPLY_IS(r, "421 4.7.0 mx.example.test Error: too many new TLS sessions from "
		    "2001:db8:5::1\r\n");
	/* The same /64 is the same client: the connection rate is shared. */
	struct smtp_peer pe2;
	peer_set(&pe2, sa6("2001:db8:5::2"), "IPv6:2001:db8:5::2");
	assert_int_equal(connect_one(&p2, &pe2, &r), SMTP_CHECK_OK);
	client_limits_close(&fx.p, &p2);
	assert_int_equal(connect_one(&p2, &pe2, &r), SMTP_CHECK_REJECT);
	REPLY_IS(r, "421 4.7.0 mx.example.test Error: too many connections from 2001:db8:5::2\r\n");
	assert_int_equal(fx.st.client_conn_rate_limited, 1);
	assert_int_equal(fx.st.client_msg_rate_limited, 1);
	assert_int_equal(fx.st.client_rcpt_rate_limited, 1);
	assert_int_equal(fx.st.client_tls_rate_limited, 1);
	/* The next window: allowed again. */
	fx.now += fx.cf.rate_window;
	assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_MSG, &r), SMTP_CHECK_OK);
	assert_int_equal(connect_one(&p2, &pe2, &r), SMTP_CHECK_OK);
	client_limits_close(&fx.p, &p2);
	client_limits_close(&fx.p, &pc);
	client_table_free(fx.t);
}

/* All limits 0: nothing is tracked (the table is not touched). */
static void
test_limits_off(void **state)
{
	struct smtp_peer pe;
	struct policy_conn pc;
	struct smtp_check_reply r;

	(void)state;
	fx_init();
	peer_set(&pe, sa4("192.0.2.9"), "192.0.2.9");
	assert_int_equal(connect_one(&pc, &pe, &r), SMTP_CHECK_OK);
	assert_false(pc.client_pinned);
	assert_int_equal(client_limits_event(&fx.p, &pc, CLIENT_EV_MSG, &r), SMTP_CHECK_OK);
	assert_false(pc.client_pinned);
	client_table_free(fx.t);
}

/* A full table fails open and counts it. */
static void
test_limits_table_full(void **state)
{
	struct smtp_peer pe[CLIENT_TABLE_MIN * 2];
	struct policy_conn pc[CLIENT_TABLE_MIN * 2];
	struct smtp_check_reply r;

	(void)state;
	fx_init();
	client_table_free(fx.t);
	assert_int_equal(client_table_new(&fx.t, CLIENT_TABLE_MIN, seed), 0);
	fx.p.clients = fx.t;
	fx.cf.connection_limit = 1;
	for (unsigned i = 0; i < CLIENT_TABLE_MIN * 2; i++) {
		char a[32];
		snprintf(a, sizeof(a), "10.1.0.%u", i + 1);
		peer_set(&pe[i], sa4(a), a);
		assert_int_equal(connect_one(&pc[i], &pe[i], &r), SMTP_CHECK_OK);
	}
	assert_true(fx.st.client_table_full >= CLIENT_TABLE_MIN);
	for (unsigned i = 0; i < CLIENT_TABLE_MIN * 2; i++)
		client_limits_close(&fx.p, &pc[i]);
	client_table_free(fx.t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_table_bad_size),
		cmocka_unit_test(test_pin_counts),
		cmocka_unit_test(test_window_rollover),
		cmocka_unit_test(test_table_full),
		cmocka_unit_test(test_duplicate_summed),
		cmocka_unit_test(test_threads_churn),
		cmocka_unit_test(test_threads_exact),
		cmocka_unit_test(test_limits_connection),
		cmocka_unit_test(test_limits_exceptions),
		cmocka_unit_test(test_limits_rates),
		cmocka_unit_test(test_limits_off),
		cmocka_unit_test(test_limits_table_full),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
