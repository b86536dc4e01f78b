/*
 * dns.c - c-ares on the worker's ring, and the answer cache (dns.h).
 *
 * Sockets: c-ares opens, reads, writes and closes its own non-blocking
 * sockets; it tells us through sock_state_cb() which it wants watched. Each
 * watched socket has a slot here and at most one poll SQE in the kernel
 * (one-shot, re-armed after each CQE while c-ares still wants it). A slot
 * whose socket c-ares gave up is "dead": its poll is removed and the slot
 * freed when that poll's CQE arrives, even if c-ares already opened a new
 * socket under the same descriptor number (that one gets its own slot).
 *
 * Cache: open addressing over DNS_PROBE slots from the name's hash; an
 * entry is keyed by a seeded 64-bit hash of the name (a collision among a
 * few thousand names is a 2^-40 event, and costs one wrong answer). An entry
 * waiting for c-ares is never evicted; a lookup that finds only waiting
 * entries in its window fails with -EBUSY (the caller fails open).
 *
 * Ownership rules
 *  - Everything here belongs to the worker thread; c-ares' callbacks run
 *    inside ares_query() or ares_process_fd(), called from this file only.
 *  - Waiters are unlinked before done() runs; done() may start or cancel
 *    other lookups.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_DNS
#include "dns.h"

#include <ares.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "log.h"
#include "ringmx/stats.h"
#include "ud.h"

#define DNS_PROBE   8
#define NS_PER_S    1000000000ull
#define KIND_POLL   1
#define KIND_REMOVE 2

struct dns_entry {
	uint64_t key;     /* 0: empty */
	uint64_t expires; /* ns; the answer is used while now < expires */
	struct dns *d;    /* for c-ares' callback */
	struct dns_req *waiters;
	bool pending;
	struct dns_result res;
};

struct dns_sock {
	int fd;
	uint32_t gen;
	bool used, dead;
	bool want_r, want_w;
	bool armed;      /* a poll is in the kernel */
	bool cancelling; /* its removal was asked (mask changed or dead) */
	uint32_t mask;   /* the armed poll's events */
};

struct dns {
	struct dns_env env;
	ares_channel ch;
	bool closing;
	unsigned npending; /* entries waiting for c-ares */
	uint64_t due;      /* next time c-ares' timers need dns_poll() */
	uint64_t seed;
	uint32_t mask; /* cache slots - 1 */
	struct dns_entry *cache;
	size_t cache_bytes;
	struct dns_sock socks[DNS_SOCK_MAX];
	bool socks_full_logged;
};

static uint64_t
name_key(const struct dns *d, const char *name, size_t len)
{
	/* FNV-1a over the lower-cased name, then a seeded finaliser. */
	uint64_t h = 0xcbf29ce484222325ull ^ d->seed;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c + 32);
		h = (h ^ c) * 0x100000001b3ull;
	}
	h ^= h >> 31;
	h *= 0x7fb5d329728ea185ull;
	h ^= h >> 27;
	return h | 1; /* never 0 (empty) */
}

/* ---- sockets ---- */

static void
sock_arm(struct dns *d, struct dns_sock *s)
{
	struct io_uring_sqe *sqe = d->env.get_sqe(d->env.ctx);
	uint32_t idx = (uint32_t)(s - d->socks);

	s->mask = (s->want_r ? POLLIN : 0) | (s->want_w ? POLLOUT : 0);
	io_uring_prep_poll_add(sqe, s->fd, s->mask);
	io_uring_sqe_set_data64(sqe, ud_make(d->env.ud_op, s->gen, KIND_POLL, idx));
	s->armed = true;
}

static void
sock_remove(struct dns *d, struct dns_sock *s)
{
	struct io_uring_sqe *sqe;
	uint32_t idx = (uint32_t)(s - d->socks);

	if (s->cancelling)
		return;
	sqe = d->env.get_sqe(d->env.ctx);
	io_uring_prep_poll_remove(sqe, ud_make(d->env.ud_op, s->gen, KIND_POLL, idx));
	io_uring_sqe_set_data64(sqe, ud_make(d->env.ud_op, 0, KIND_REMOVE, 0));
	s->cancelling = true;
}

static void
sock_free(struct dns_sock *s)
{
	s->used = false;
	s->dead = false;
	s->armed = false;
	s->cancelling = false;
	s->gen = (s->gen + 1) & UD_GEN_MASK;
}

/* c-ares: socket fd wants (or no longer wants) reading or writing. */
static void
sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns *d = data;
	struct dns_sock *s = NULL, *spare = NULL;

	/* ares_destroy() closes its sockets: the ring may be gone already,
	 * and with it every poll. */
	if (d->closing)
		return;
	for (size_t i = 0; i < DNS_SOCK_MAX; i++) {
		struct dns_sock *x = &d->socks[i];
		if (x->used && !x->dead && x->fd == fd) {
			s = x;
			break;
		}
		if (!x->used && spare == NULL)
			spare = x;
	}
	if (s == NULL) {
		if (!readable && !writable)
			return;
		if (spare == NULL) {
			/* c-ares' queries on it time out: counted, logged once. */
			d->env.stats->dns_errors++;
			if (!d->socks_full_logged)
				log_warn("dns: more than %d resolver sockets at once; queries on the "
					 "others time out",
					 DNS_SOCK_MAX);
			d->socks_full_logged = true;
			return;
		}
		s = spare;
		s->used = true;
		s->fd = fd;
	}
	s->want_r = readable != 0;
	s->want_w = writable != 0;
	if (!readable && !writable) {
		/* c-ares closes fd after this: never poll it again. */
		s->dead = true;
		if (s->armed)
			sock_remove(d, s);
		else
			sock_free(s);
		return;
	}
	uint32_t mask = (s->want_r ? POLLIN : 0) | (s->want_w ? POLLOUT : 0);
	if (!s->armed)
		sock_arm(d, s);
	else if (mask != s->mask)
		sock_remove(d, s); /* re-armed with the new mask on its CQE */
}

void
dns_on_cqe(struct dns *d, const struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint32_t idx = ud_idx(ud);
	struct dns_sock *s;

	if (ud_kind(ud) != KIND_POLL || idx >= DNS_SOCK_MAX)
		return; /* a removal's own completion */
	s = &d->socks[idx];
	if (!s->used || s->gen != ud_gen(ud) || !s->armed)
		return;
	s->armed = false;
	s->cancelling = false;
	if (s->dead) {
		sock_free(s);
		return;
	}
	if (cqe->res > 0 || (cqe->res < 0 && cqe->res != -ECANCELED)) {
		/* An error on the socket is for c-ares to see on its read. */
		unsigned ev = cqe->res > 0 ? (unsigned)cqe->res : POLLERR;
		bool r = s->want_r && (ev & (POLLIN | POLLERR | POLLHUP));
		bool w = s->want_w && (ev & (POLLOUT | POLLERR | POLLHUP));
		int fd = s->fd;

		ares_process_fd(d->ch, r ? fd : ARES_SOCKET_BAD, w ? fd : ARES_SOCKET_BAD);
		/* The state callback may have changed the slot meanwhile. */
	}
	if (s->used && !s->dead && !s->armed && (s->want_r || s->want_w))
		sock_arm(d, s);
}

/* ---- answers ---- */

static void
on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_entry *e = arg;
	struct dns *d = e->d;
	struct dns_result res;
	uint64_t ttl = 0;

	(void)timeouts;
	if (d->closing)
		return;
	memset(&res, 0, sizeof(res));
	switch (status) {
	case ARES_SUCCESS: {
		struct ares_addrttl a[DNS_ADDR_MAX];
		int n = DNS_ADDR_MAX;

		if (ares_parse_a_reply(abuf, alen, NULL, a, &n) == ARES_SUCCESS && n > 0) {
			res.status = DNS_OK;
			res.naddr = (uint8_t)n;
			ttl = DNS_TTL_MAX_S;
			for (int i = 0; i < n; i++) {
				res.addr[i] = a[i].ipaddr.s_addr;
				if (a[i].ttl >= 0 && (uint64_t)a[i].ttl < ttl)
					ttl = (uint64_t)a[i].ttl;
			}
		} else {
			res.status = DNS_NODATA;
			ttl = DNS_NEG_TTL_S;
		}
		break;
	}
	case ARES_ENOTFOUND:
		res.status = DNS_NXDOMAIN;
		ttl = DNS_NEG_TTL_S;
		d->env.stats->dns_nxdomain++;
		break;
	case ARES_ENODATA:
		res.status = DNS_NODATA;
		ttl = DNS_NEG_TTL_S;
		break;
	default:
		/* SERVFAIL, REFUSED, time-outs: not cached, asked again. */
		res.status = DNS_FAIL;
		d->env.stats->dns_errors++;
		break;
	}
	e->res = res;
	e->pending = false;
	e->expires = *d->env.now + ttl * NS_PER_S;
	d->npending--;
	while (e->waiters != NULL) {
		struct dns_req *r = e->waiters;

		dns_cancel(d, r);
		r->done(r, &e->res);
	}
}

int
dns_lookup_a(struct dns *d, const char *name, size_t len, struct dns_req *r,
	     struct dns_result *res)
{
	char buf[DNS_NAME_MAX];
	struct dns_entry *victim = NULL, *e;
	uint64_t key, now = *d->env.now;

	if (len == 0 || len >= DNS_NAME_MAX)
		return -ENAMETOOLONG;
	key = name_key(d, name, len);
	for (unsigned i = 0; i < DNS_PROBE; i++) {
		e = &d->cache[(key + i) & d->mask];
		if (e->key == key) {
			if (e->pending)
				goto wait;
			if (now < e->expires) {
				d->env.stats->dns_cache_hits++;
				*res = e->res;
				return DNS_HIT;
			}
			victim = e; /* expired: asked again in place */
			break;
		}
		if (e->pending)
			continue;
		if (victim == NULL || e->key == 0 || (victim->key != 0 && e->expires < victim->expires))
			victim = e;
	}
	if (victim == NULL) {
		d->env.stats->dns_overload++;
		return -EBUSY;
	}
	e = victim;
	e->key = key;
	e->d = d;
	e->pending = true;
	e->waiters = NULL;
	d->npending++;
	d->due = now; /* c-ares' timer for it: dns_wait_ns() reads it */
	d->env.stats->dns_queries++;
	memcpy(buf, name, len);
	buf[len] = '\0';
	ares_query(d->ch, buf, ns_c_in, ns_t_a, on_answer, e);
	if (!e->pending) {
		/* Answered at once (c-ares refused the name): no waiter. */
		*res = e->res;
		return DNS_HIT;
	}
wait:
	r->next = e->waiters;
	r->pprev = &e->waiters;
	if (e->waiters != NULL)
		e->waiters->pprev = &r->next;
	e->waiters = r;
	return DNS_PENDING;
}

void
dns_cancel(struct dns *d, struct dns_req *r)
{
	(void)d;
	if (r->pprev == NULL)
		return;
	*r->pprev = r->next;
	if (r->next != NULL)
		r->next->pprev = r->pprev;
	r->next = NULL;
	r->pprev = NULL;
}

/* ---- timers ---- */

void
dns_poll(struct dns *d)
{
	if (d->npending == 0 || *d->env.now < d->due)
		return;
	/* No descriptor: c-ares only runs its retries and time-outs. */
	ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

uint64_t
dns_wait_ns(struct dns *d, uint64_t max)
{
	struct timeval tv, *t;
	uint64_t ns;

	if (d->npending == 0)
		return max;
	t = ares_timeout(d->ch, NULL, &tv);
	if (t == NULL)
		return max;
	ns = (uint64_t)t->tv_sec * NS_PER_S + (uint64_t)t->tv_usec * 1000u;
	d->due = *d->env.now + ns;
	return ns < max ? ns : max;
}

unsigned
dns_pending(const struct dns *d)
{
	return d->npending;
}

/* ---- set-up ---- */

int
dns_library_init(void)
{
	return ares_library_init(ARES_LIB_INIT_ALL) == ARES_SUCCESS ? 0 : -ENOMEM;
}

void
dns_library_cleanup(void)
{
	ares_library_cleanup();
}

int
dns_set_servers(struct dns *d, const char *servers, char *err, size_t errlen)
{
	int rc;

	if (servers == NULL || servers[0] == '\0')
		return 0; /* /etc/resolv.conf, read at dns_open() */
	rc = ares_set_servers_ports_csv(d->ch, servers);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "dns_servers '%s': %s", servers, ares_strerror(rc));
		return -EINVAL;
	}
	return 0;
}

int
dns_open(struct dns **out, const struct dns_env *env, const char *servers,
	 unsigned cache_size, uint64_t timeout_ns, char *err, size_t errlen)
{
	struct ares_options o;
	struct dns *d;
	uint32_t n = 16;
	int rc;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (d == NULL)
		return -ENOMEM;
	d->env = *env;
	while (n < cache_size && n < (1u << 24))
		n <<= 1;
	d->mask = n - 1;
	/* Mapped: untouched entries cost no memory. */
	d->cache_bytes = (size_t)n * sizeof(*d->cache);
	d->cache = mmap(NULL, d->cache_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	if (d->cache == MAP_FAILED) {
		free(d);
		return -ENOMEM;
	}
	if (getrandom(&d->seed, sizeof(d->seed), 0) != (ssize_t)sizeof(d->seed))
		d->seed = (uint64_t)(uintptr_t)d ^ *env->now;
	memset(&o, 0, sizeof(o));
	/* Fully qualified names only (DNSBL names, next hops): no search
	 * list, no HOSTALIASES. Half the caller's time-out per try, two
	 * tries, so c-ares gives up about when the caller stops waiting. */
	o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	o.timeout = (int)(timeout_ns / 2 / 1000000u);
	if (o.timeout < 100)
		o.timeout = 100;
	o.tries = 2;
	o.sock_state_cb = sock_state_cb;
	o.sock_state_cb_data = d;
	rc = ares_init_options(&d->ch, &o,
			       ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
				       ARES_OPT_SOCK_STATE_CB);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: c-ares: %s", ares_strerror(rc));
		munmap(d->cache, d->cache_bytes);
		free(d);
		return -EINVAL;
	}
	if (dns_set_servers(d, servers, err, errlen) < 0) {
		ares_destroy(d->ch);
		munmap(d->cache, d->cache_bytes);
		free(d);
		return -EINVAL;
	}
	*out = d;
	return 0;
}

void
dns_close(struct dns *d)
{
	if (d == NULL)
		return;
	d->closing = true;
	ares_destroy(d->ch); /* its callbacks see closing and return */
	munmap(d->cache, d->cache_bytes);
	free(d);
}
