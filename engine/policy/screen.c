/*
 * screen.c - the screening tests and their verdicts (screen.h): pregreet,
 * DNSBL/DNSWL scoring over the worker's resolver, the pass cache, and the
 * postscreen-shaped log lines and replies of docs/defences.md.
 *
 * Ownership rules
 *  - Runs on the connection's worker. A job (the DNS requests and answers
 *    of one client) belongs to the connection between screen_connect() and
 *    the end of its DNS test; its requests are linked in the resolver only
 *    while they wait, and every path that gives the job back (last answer,
 *    deadline, teardown, reload) unlinks them first.
 *  - Fail open: a client the resolver or the pool cannot serve is scored
 *    on what answered, and is never entered in the pass cache.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_POSTSCREEN
#include "screen.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dns.h"
#include "dnsbl.h"
#include "log.h"
#include "pass_cache.h"
#include "policy.h"
#include "ringmx/config.h"
#include "ringmx/stats.h"

struct screen_req {
	struct dns_req req; /* first: the resolver's callback gets this */
	struct screen_job *job;
	uint8_t q; /* query index in the site list */
};

struct screen_job {
	struct policy_conn *pc; /* NULL: free */
	struct policy *p;
	uint16_t left; /* answers still due */
	struct screen_req req[DNSBL_QUERIES_MAX];
	struct dnsbl_answer ans[DNSBL_QUERIES_MAX];
};

struct screen_pool {
	uint32_t n, nfree;
	struct screen_job *jobs; /* mapped */
	struct screen_job **free;
};

int
screen_pool_new(struct screen_pool **out, uint32_t slots)
{
	struct screen_pool *sp = calloc(1, sizeof(*sp));

	*out = NULL;
	if (sp == NULL)
		return -ENOMEM;
	sp->n = slots;
	sp->jobs = mmap(NULL, (size_t)slots * sizeof(*sp->jobs), PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	sp->free = calloc(slots, sizeof(*sp->free));
	if (sp->jobs == MAP_FAILED || sp->free == NULL) {
		if (sp->jobs != MAP_FAILED)
			munmap(sp->jobs, (size_t)slots * sizeof(*sp->jobs));
		free(sp->free);
		free(sp);
		return -ENOMEM;
	}
	/* LIFO: the warm jobs are reused first. */
	for (uint32_t i = 0; i < slots; i++)
		sp->free[i] = &sp->jobs[slots - 1 - i];
	sp->nfree = slots;
	*out = sp;
	return 0;
}

void
screen_pool_free(struct screen_pool *sp)
{
	if (sp == NULL)
		return;
	munmap(sp->jobs, (size_t)sp->n * sizeof(*sp->jobs));
	free(sp->free);
	free(sp);
}

static const struct screen_conf *
conf(const struct policy *p)
{
	return p->screen;
}

/* ---- the DNS test ---- */

static void job_release(struct policy *p, struct screen_conn *sc);
static void dns_verdict(struct policy *p, struct policy_conn *pc);

static void
answer_fill(struct dnsbl_answer *a, const struct dns_result *res)
{
	unsigned n = res->status == DNS_OK ? res->naddr : 0;

	if (n > DNSBL_ADDR_MAX)
		n = DNSBL_ADDR_MAX;
	a->n = (uint8_t)n;
	memcpy(a->addr, res->addr, n * sizeof(a->addr[0]));
}

static void
on_dns(struct dns_req *r, const struct dns_result *res)
{
	struct screen_req *sr = (struct screen_req *)r;
	struct screen_job *job = sr->job;
	struct policy_conn *pc = job->pc;

	answer_fill(&job->ans[sr->q], res);
	if (res->status == DNS_FAIL)
		pc->screen.incomplete = true;
	if (--job->left == 0)
		dns_verdict(job->p, pc);
}

/* Every site queried (or answered from the cache) at accept. */
static void
dns_start(struct policy *p, struct policy_conn *pc)
{
	const struct dnsbl_sites *sites = conf(p)->sites;
	struct screen_conn *sc = &pc->screen;
	struct screen_job *job;

	sc->dns = true;
	if (p->screen_pool == NULL || p->screen_pool->nfree == 0 || p->dns == NULL) {
		p->stats->screen_overload++;
		sc->incomplete = true;
		sc->dns_done = true;
		return;
	}
	job = p->screen_pool->free[--p->screen_pool->nfree];
	job->pc = pc;
	job->p = p;
	job->left = 0;
	sc->job = job;
	for (unsigned q = 0; q < sites->nqueries; q++) {
		const struct dnsbl_site *s = &sites->site[sites->query_site[q]];
		struct screen_req *sr = &job->req[q];
		struct dns_result res;
		char name[DNSBL_NAME_MAX];
		int n = dnsbl_query_name((const struct sockaddr *)&pc->peer->addr, s->domain, name,
					 sizeof(name));

		job->ans[q].n = 0;
		sr->job = job;
		sr->q = (uint8_t)q;
		sr->req.done = on_dns;
		sr->req.next = NULL;
		sr->req.pprev = NULL;
		if (n < 0) {
			sc->incomplete = true;
			continue;
		}
		switch (dns_lookup_a(p->dns, name, (size_t)n, &sr->req, &res)) {
		case DNS_HIT:
			answer_fill(&job->ans[q], &res);
			if (res.status == DNS_FAIL)
				sc->incomplete = true;
			break;
		case DNS_PENDING:
			job->left++;
			break;
		default: /* -EBUSY: counted by the resolver */
			sc->incomplete = true;
			break;
		}
	}
	if (job->left == 0) {
		dns_verdict(p, pc);
		return;
	}
	sc->dns_deadline = *p->now + conf(p)->dnsbl_timeout;
}

static void
job_release(struct policy *p, struct screen_conn *sc)
{
	struct screen_job *job = sc->job;

	if (job == NULL)
		return;
	for (unsigned q = 0; q < DNSBL_QUERIES_MAX; q++)
		if (job->req[q].req.pprev != NULL)
			dns_cancel(p->dns, &job->req[q].req);
	job->pc = NULL;
	p->screen_pool->free[p->screen_pool->nfree++] = job;
	sc->job = NULL;
}

static void maybe_pass(struct policy *p, struct policy_conn *pc);

/* Every answer is in, or the deadline passed: score, log, and answer a
 * check that waited. */
static void
dns_verdict(struct policy *p, struct policy_conn *pc)
{
	const struct dnsbl_sites *sites = conf(p)->sites;
	struct screen_conn *sc = &pc->screen;
	const char *blame = NULL;
	int score = 0;

	if (sc->job != NULL && sites != NULL) {
		score = dnsbl_score(sites, sc->job->ans, &blame);
		job_release(p, sc);
	}
	sc->dns_done = true;
	sc->dns_deadline = 0;
	sc->score = (int16_t)score;
	if (blame != NULL) {
		const struct dnsbl_site *bs =
			(const void *)(blame - offsetof(struct dnsbl_site, domain));
		sc->blame = (uint8_t)(bs - sites->site);
	}
	if (score >= (int)conf(p)->dnsbl_threshold) {
		sc->listed = true;
		p->stats->screen_dnsbl_listed++;
		log_info("DNSBL rank %d for [%s]:%u", score, policy_client_addr(pc), pc->peer->port);
	}
	maybe_pass(p, pc);
	if (sc->waiting) {
		/* Ask the session to ask again: the verdict answers it. */
		sc->waiting = false;
		pc->pending = false;
		pc->waiter->done(pc->waiter, SMTP_CHECK_PENDING, NULL);
	}
}

void
screen_expire(struct policy *p, struct policy_conn *pc)
{
	struct screen_conn *sc = &pc->screen;

	if (sc->dns_done || sc->dns_deadline == 0 || *p->now < sc->dns_deadline)
		return;
	/* dns_verdict() gives the job back, unlinking what still waits; late
	 * answers still land in the resolver's cache. */
	if (sc->job != NULL)
		p->stats->screen_dnsbl_timeouts += sc->job->left;
	sc->incomplete = true;
	dns_verdict(p, pc);
}

/* ---- verdicts ---- */

/* Every enabled test is over and none failed: PASS NEW, into the cache
 * (unless some site did not answer: then the next connection asks again). */
static void
maybe_pass(struct policy *p, struct policy_conn *pc)
{
	const struct screen_conf *cf = conf(p);
	struct screen_conn *sc = &pc->screen;

	if (sc->decided || sc->greet || (sc->dns && !sc->dns_done))
		return;
	if (sc->pregreet || sc->listed) {
		sc->decided = true;
		return;
	}
	/* A client that never had the pause (implicit TLS) has not passed
	 * the pregreet test: no entry, or it would skip the pause on port 25. */
	if (sc->incomplete || (cf->greet_wait != 0 && !sc->greet_clean))
		return;
	sc->decided = true;
	/* PASS NEW means "entered in the pass cache": not without one. */
	if (cf->cache_ttl == 0 || p->passes == NULL)
		return;
	p->stats->screen_pass_new++;
	log_info("PASS NEW [%s]:%u", policy_client_addr(pc), pc->peer->port);
	pass_cache_add(p->passes, (const struct sockaddr *)&pc->peer->addr, *p->now,
		       *p->now + cf->cache_ttl);
}

static int
reply(struct smtp_check_reply *r, int n)
{
	r->len = n > 0 && (size_t)n < sizeof(r->text) ? (size_t)n : 0;
	return SMTP_CHECK_REJECT;
}

static int
dnsbl_reply(struct policy *p, struct policy_conn *pc, unsigned code, struct smtp_check_reply *r)
{
	const struct dnsbl_sites *sites = conf(p)->sites;
	const char *site = sites != NULL && pc->screen.blame < sites->nsites
				   ? sites->site[pc->screen.blame].domain
				   : "DNSBL";

	return reply(r, snprintf(r->text, sizeof(r->text),
				 "%u 5.7.1 Service unavailable; client [%s] blocked using %s\r\n", code,
				 policy_client_addr(pc), site));
}

bool
screen_connect(struct policy *p, struct policy_conn *pc, bool can_pause)
{
	const struct screen_conf *cf = conf(p);
	struct screen_conn *sc = &pc->screen;

	memset(sc, 0, sizeof(*sc));
	if (cf->greet_wait == 0 && cf->sites == NULL)
		return false;
	if (p->passes != NULL && cf->cache_ttl != 0 &&
	    pass_cache_hit(p->passes, (const struct sockaddr *)&pc->peer->addr, *p->now)) {
		p->stats->screen_pass_old++;
		log_info("PASS OLD [%s]:%u", policy_client_addr(pc), pc->peer->port);
		return false;
	}
	sc->on = true;
	if (cf->sites != NULL)
		dns_start(p, pc);
	if (cf->greet_wait != 0 && can_pause) {
		sc->greet = true;
		p->stats->screen_greet_waits++;
	}
	maybe_pass(p, pc);
	return sc->greet;
}

bool
screen_pregreet(struct policy *p, struct policy_conn *pc, size_t n, const char *show,
		size_t len, double after, struct smtp_check_reply *r)
{
	struct screen_conn *sc = &pc->screen;
	char text[4 * SCREEN_PREGREET_SHOW + 1];
	size_t o = 0;

	if (!sc->greet || sc->pregreet)
		return false;
	sc->pregreet = true;
	sc->decided = true;
	p->stats->screen_pregreet++;
	for (size_t i = 0; i < len && i < SCREEN_PREGREET_SHOW; i++) {
		unsigned char ch = (unsigned char)show[i];
		if (ch == '\r' || ch == '\n') {
			text[o++] = '\\';
			text[o++] = ch == '\r' ? 'r' : 'n';
		} else {
			text[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
		}
	}
	text[o] = '\0';
	log_info("PREGREET %zu after %.2f from [%s]:%u: %s", n, after, policy_client_addr(pc),
		 pc->peer->port, text);
	if (conf(p)->greet_action != SCREEN_ACTION_DROP)
		return false;
	p->stats->screen_dropped++;
	reply(r, snprintf(r->text, sizeof(r->text), "521 5.5.1 Protocol error\r\n"));
	return true;
}

int
screen_greet_end(struct policy *p, struct policy_conn *pc, struct smtp_check_reply *r)
{
	struct screen_conn *sc = &pc->screen;

	sc->greet = false;
	sc->greet_clean = !sc->pregreet;
	maybe_pass(p, pc);
	if (sc->dns_done && sc->listed && conf(p)->dnsbl_action == SCREEN_ACTION_DROP) {
		p->stats->screen_dropped++;
		return dnsbl_reply(p, pc, 521, r);
	}
	return SMTP_CHECK_OK;
}

int
screen_check(struct policy *p, struct policy_conn *pc, enum smtp_check_point what,
	     struct smtp_check_reply *r)
{
	const struct screen_conf *cf = conf(p);
	struct screen_conn *sc = &pc->screen;

	if (!sc->on || what == SMTP_CHECK_STARTTLS)
		return SMTP_CHECK_OK;
	if (sc->dns && !sc->dns_done) {
		sc->waiting = true;
		pc->pending = true;
		return SMTP_CHECK_PENDING;
	}
	if (sc->pregreet && cf->greet_action == SCREEN_ACTION_ENFORCE && what == SMTP_CHECK_RCPT)
		return reply(r, snprintf(r->text, sizeof(r->text), "550 5.5.1 Protocol error\r\n"));
	if (!sc->listed)
		return SMTP_CHECK_OK;
	switch (cf->dnsbl_action) {
	case SCREEN_ACTION_DROP:
		p->stats->screen_dropped++;
		return dnsbl_reply(p, pc, 521, r);
	case SCREEN_ACTION_ENFORCE:
		if (what == SMTP_CHECK_RCPT)
			return dnsbl_reply(p, pc, 550, r);
		return SMTP_CHECK_OK;
	default:
		return SMTP_CHECK_OK;
	}
}

void
screen_cancel(struct policy_conn *pc)
{
	pc->screen.waiting = false;
}

void
screen_close(struct policy *p, struct policy_conn *pc)
{
	pc->screen.waiting = false;
	job_release(p, &pc->screen);
}

void
screen_reconf(struct policy *p)
{
	struct screen_pool *sp = p->screen_pool;

	if (sp == NULL)
		return;
	/* Stops as soon as no job is out; free jobs have no pc. */
	for (uint32_t i = 0; i < sp->n && sp->nfree < sp->n; i++) {
		struct policy_conn *pc = sp->jobs[i].pc;

		if (pc == NULL)
			continue;
		job_release(p, &pc->screen);
		pc->screen.incomplete = true;
		dns_verdict(p, pc);
	}
}
