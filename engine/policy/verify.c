/*
 * verify.c - recipient verification (verify.h): the RCPT check, the
 * probes in flight (one per address: every session asking for an address
 * being probed waits on that probe), their timeouts, and the replies.
 *
 *   next hop 2xx          -> accepted; cached verify_positive_ttl
 *   next hop 5xx          -> 550 5.1.1 <a>: Recipient address rejected:
 *                            undeliverable address: <its text>; cached
 *                            verify_negative_ttl
 *   4xx, timeout, hop down, too many probes
 *                         -> 450 4.1.1 <a>: Recipient address rejected:
 *                            unverified address: <reason>; not cached
 *
 * Ownership rules
 *  - struct verify, its probes and its cache belong to one worker thread.
 *  - A probe slot is in use from relay_probe_start() until the relay's
 *    done (or a relay_probe_cancel() that took it back): a probe that
 *    timed out is answered at once but its slot waits for the relay
 *    (its late result still fills the cache).
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "policy.h"
#include "relay.h"
#include "ringmx/config.h"
#include "ringmx/stats.h"
#include "verify.h"

#define container_of_vp(p) ((struct vprobe *)((char *)(p) - offsetof(struct vprobe, rp)))
/* In-flight probes by address (VERIFY_PROBES_MAX is the bound on n). */
#define VERIFY_PBUCKETS 2048

struct vprobe {
	struct relay_probe rp; /* first */
	struct verify *v;
	uint64_t k[2];
	uint64_t deadline;
	struct vprobe *fprev, *fnext; /* the timeout list, oldest first */
	struct vprobe *hnext;         /* in-flight by address */
	struct verify_wait *waiters;
	bool used;
	bool answered; /* timed out: waiters answered, not findable */
	size_t len;
	char addr[SMTP_PATH_MAX + 1];
};

struct verify {
	const struct config *cfg;
	struct relay *relay;
	struct ringmx_stats *stats;
	uint64_t now;
	struct verify_cache cache;
	struct vprobe *fhead, *ftail;
	struct vprobe *pb[VERIFY_PBUCKETS];
	struct vprobe *free[VERIFY_PROBES_MAX];
	uint32_t nfree;
	struct vprobe probes[VERIFY_PROBES_MAX];
};

static void probe_done(struct relay_probe *rp, int code, const char *text, size_t len);

int
verify_open(struct verify **out, const struct config *cfg, struct relay *relay,
            struct ringmx_stats *stats)
{
	*out = NULL;
	struct verify *v = calloc(1, sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	uint64_t seed[2];
	if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
		free(v);
		return -EIO;
	}
	int rc = vcache_init(&v->cache, cfg->verify.cache_size, seed[0], seed[1]);
	if (rc < 0) {
		free(v);
		return rc;
	}
	v->cfg = cfg;
	v->relay = relay;
	v->stats = stats;
	for (uint32_t i = 0; i < VERIFY_PROBES_MAX; i++)
		v->free[v->nfree++] = &v->probes[VERIFY_PROBES_MAX - 1 - i];
	*out = v;
	return 0;
}

void
verify_close(struct verify *v)
{
	if (v == NULL)
		return;
	vcache_fini(&v->cache);
	free(v);
}

void
verify_set_conf(struct verify *v, const struct config *cfg)
{
	if (v != NULL)
		v->cfg = cfg;
}

/* "enh text" -> text: the reply code says the class already. */
static const char *
skip_enh(const char *t, size_t *len)
{
	size_t i = 0;
	if (*len >= 6 && (t[0] == '2' || t[0] == '4' || t[0] == '5') && t[1] == '.') {
		i = 2;
		while (i < *len && t[i] != ' ')
			i++;
		if (i < *len)
			i++;
	}
	*len -= i;
	return t + i;
}

/* One reply line: printable ASCII only, cut to fit with its CRLF. */
static void
reply_fmt(struct smtp_check_reply *r, const char *head, const char *addr, size_t alen,
          const char *what, const char *text, size_t tlen)
{
	int n = snprintf(r->text, sizeof(r->text), "%s <%.*s>: Recipient address rejected: %s: ",
	                 head, (int)alen, addr, what);
	size_t o = n < 0 ? 0 : (size_t)n < sizeof(r->text) - 2 ? (size_t)n : sizeof(r->text) - 3;
	for (size_t i = 0; i < tlen && o < sizeof(r->text) - 3; i++) {
		unsigned char c = (unsigned char)text[i];
		r->text[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	r->text[o++] = '\r';
	r->text[o++] = '\n';
	r->text[o] = '\0';
	r->len = o;
}

static void
reply_temp(struct smtp_check_reply *r, const char *addr, size_t alen, const char *why, size_t wl)
{
	why = skip_enh(why, &wl);
	reply_fmt(r, "450 4.1.1", addr, alen, "unverified address", why, wl);
}

static void
reply_perm(struct smtp_check_reply *r, const char *addr, size_t alen, const char *text, size_t tl)
{
	reply_fmt(r, "550 5.1.1", addr, alen, "undeliverable address", text, tl);
}

static uint32_t
pbucket(const uint64_t k[2])
{
	return (uint32_t)(k[1] & (VERIFY_PBUCKETS - 1));
}

static void
inflight_remove(struct verify *v, struct vprobe *p)
{
	struct vprobe **pp = &v->pb[pbucket(p->k)];
	while (*pp != NULL && *pp != p)
		pp = &(*pp)->hnext;
	if (*pp == p)
		*pp = p->hnext;
	p->hnext = NULL;
	if (p->fprev != NULL)
		p->fprev->fnext = p->fnext;
	else if (v->fhead == p)
		v->fhead = p->fnext;
	if (p->fnext != NULL)
		p->fnext->fprev = p->fprev;
	else if (v->ftail == p)
		v->ftail = p->fprev;
	p->fprev = p->fnext = NULL;
}

static void
wait_add(struct vprobe *p, struct policy_conn *pc)
{
	struct verify_wait *w = &pc->vwait;
	w->probe = p;
	w->prev = NULL;
	w->next = p->waiters;
	if (p->waiters != NULL)
		p->waiters->prev = w;
	p->waiters = w;
	pc->pending = true;
}

static void
wait_remove(struct verify_wait *w)
{
	struct vprobe *p = w->probe;
	if (p == NULL)
		return;
	if (w->prev != NULL)
		w->prev->next = w->next;
	else
		p->waiters = w->next;
	if (w->next != NULL)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
	w->probe = NULL;
}

/* Every waiter of p hears res (one at a time: an answer may make that
 * session ask again, or close another waiter's connection). */
static void
answer_all(struct vprobe *p, int res, const struct smtp_check_reply *r)
{
	while (p->waiters != NULL) {
		struct verify_wait *w = p->waiters;
		struct policy_conn *pc =
		    (struct policy_conn *)(void *)((char *)w - offsetof(struct policy_conn, vwait));
		wait_remove(w);
		pc->pending = false;
		pc->waiter->done(pc->waiter, res, r);
	}
}

static void
slot_free(struct verify *v, struct vprobe *p)
{
	p->used = false;
	v->free[v->nfree++] = p;
}

/* The relay's answer (relay.h). */
static void
probe_done(struct relay_probe *rp, int code, const char *text, size_t len)
{
	struct vprobe *p = container_of_vp(rp);
	struct verify *v = p->v;
	struct smtp_check_reply r;
	int res = SMTP_CHECK_REJECT;
	if (!p->answered)
		inflight_remove(v, p);
	if (code >= 200 && code < 300) {
		v->stats->verify_ok++;
		vcache_put(&v->cache, p->k, true, code, "", 0, v->now + v->cfg->verify.positive_ttl);
		res = SMTP_CHECK_OK;
		r.len = 0;
		r.text[0] = '\0';
	} else if (code >= 500 && code < 600) {
		v->stats->verify_rejected++;
		const char *t = skip_enh(text, &len);
		if (v->cfg->verify.negative_ttl > 0)
			vcache_put(&v->cache, p->k, false, code, t, len,
			           v->now + v->cfg->verify.negative_ttl);
		reply_perm(&r, p->addr, p->len, t, len);
	} else {
		if (!p->answered) /* else counted at its timeout */
			v->stats->verify_tempfail++;
		reply_temp(&r, p->addr, p->len, text, len);
	}
	if (!p->answered)
		answer_all(p, res, &r);
	slot_free(v, p);
}

static int
refuse_temp(struct verify *v, const char *addr, size_t len, const char *why,
            struct smtp_check_reply *r)
{
	v->stats->verify_tempfail++;
	reply_temp(r, addr, len, why, strlen(why));
	return SMTP_CHECK_REJECT;
}

int
verify_rcpt(struct verify *v, struct policy_conn *pc, const char *addr, size_t len,
            struct smtp_check_reply *r)
{
	if (memchr(addr, '@', len) == NULL || len > SMTP_PATH_MAX)
		return SMTP_CHECK_OK; /* <Postmaster>: always ours */
	uint64_t k[2];
	vcache_key(&v->cache, addr, len, k);
	const struct vc_entry *e = vcache_get(&v->cache, k, v->now);
	if (e != NULL) {
		v->stats->verify_cache_hits++;
		if (e->ok)
			return SMTP_CHECK_OK;
		reply_perm(r, addr, len, e->text, e->tlen);
		return SMTP_CHECK_REJECT;
	}
	for (struct vprobe *p = v->pb[pbucket(k)]; p != NULL; p = p->hnext)
		if (p->k[0] == k[0] && p->k[1] == k[1]) {
			v->stats->verify_joined++;
			wait_add(p, pc);
			return SMTP_CHECK_PENDING;
		}
	if (v->nfree == 0) {
		v->stats->verify_busy++;
		return refuse_temp(v, addr, len, "too many pending verifications", r);
	}
	struct vprobe *p = v->free[--v->nfree];
	memset(&p->rp, 0, sizeof(p->rp));
	memcpy(p->addr, addr, len);
	p->addr[len] = '\0';
	p->len = len;
	p->rp.addr = p->addr;
	p->rp.len = len;
	p->rp.done = probe_done;
	p->v = v;
	p->k[0] = k[0];
	p->k[1] = k[1];
	p->waiters = NULL;
	p->used = true;
	p->answered = false;
	int rc = relay_probe_start(v->relay, &p->rp);
	if (rc < 0) {
		slot_free(v, p);
		if (rc == -EHOSTDOWN)
			return refuse_temp(v, addr, len, p->rp.text, r);
		return refuse_temp(v, addr, len,
		                   rc == -ENOENT ? "no next hop for the domain"
		                                 : "ringmxd is shutting down",
		                   r);
	}
	v->stats->verify_probes++;
	p->deadline = v->now + v->cfg->verify.timeout;
	p->hnext = v->pb[pbucket(k)];
	v->pb[pbucket(k)] = p;
	/* In deadline order: the same timeout for all keeps this an append,
	 * but a reload may have shortened verify_timeout. */
	struct vprobe *after = v->ftail;
	while (after != NULL && after->deadline > p->deadline)
		after = after->fprev;
	p->fprev = after;
	p->fnext = after != NULL ? after->fnext : v->fhead;
	if (p->fnext != NULL)
		p->fnext->fprev = p;
	else
		v->ftail = p;
	if (after != NULL)
		after->fnext = p;
	else
		v->fhead = p;
	wait_add(p, pc);
	return SMTP_CHECK_PENDING;
}

void
verify_cancel(struct verify *v, struct policy_conn *pc)
{
	(void)v;
	wait_remove(&pc->vwait);
}

void
verify_poll(struct verify *v, uint64_t now)
{
	v->now = now;
	/* The list is in deadline order (verify_rcpt inserts so). */
	while (v->fhead != NULL && v->fhead->deadline <= now) {
		struct vprobe *p = v->fhead;
		inflight_remove(v, p);
		p->answered = true;
		v->stats->verify_tempfail++;
		struct smtp_check_reply r;
		static const char why[] = "timeout waiting for the next hop";
		reply_temp(&r, p->addr, p->len, why, sizeof(why) - 1);
		answer_all(p, SMTP_CHECK_REJECT, &r);
		if (relay_probe_cancel(v->relay, &p->rp))
			slot_free(v, p); /* never sent: the relay is done with it */
	}
}

uint64_t
verify_wait_ns(const struct verify *v, uint64_t max)
{
	if (v->fhead == NULL)
		return max;
	uint64_t d = v->fhead->deadline > v->now ? v->fhead->deadline - v->now : 0;
	return d < max ? d : max;
}
