/*
 * screen.h - postscreen-style screening of a client before and around the
 * greeting (docs/defences.md "Screening"): the client_access list, the
 * pregreet test in a multi-line 220- pause (greet_wait), DNSBL/DNSWL
 * scoring with asynchronous lookups (engine/dns/), and the pass cache
 * shared by the workers (pass_cache.h).
 *
 * The connection drives it: policy_connect() decides access and starts the
 * tests (DNS queries go out at once), the connection holds the 220- pause
 * and reports input that arrives in it (screen_pregreet()), then ends the
 * pause (screen_greet_end()). MAIL and RCPT ask screen_check() through
 * policy_check(): while DNS answers are still due the check is pending, and
 * the verdict re-asks it through the connection's policy waiter.
 *
 * Ownership rules
 *  - struct screen_conn lives in struct policy_conn; only its worker
 *    touches it. While DNS answers are due it owns one struct screen_job of
 *    its worker's pool (its dns_reqs are linked in the resolver); the job
 *    goes back when the last answer comes, at the deadline, or at teardown
 *    (screen_close()), whichever is first.
 *  - The pool (struct screen_pool) belongs to the worker and is sized at
 *    start-up: one job per connection slot, mapped, touched when used.
 */
#ifndef RINGMX_SCREEN_H
#define RINGMX_SCREEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ringmx/smtp.h"

struct policy;
struct policy_conn;
struct screen_job;
struct screen_pool;

/* How much of a pregreet talker's input its log line shows. */
#define SCREEN_PREGREET_SHOW 100

struct screen_conn {
	bool on;          /* tests run for this client (not allowed, not cached) */
	bool allowed;     /* client_access OK */
	bool greet;       /* in the 220- pause */
	bool greet_clean; /* the pause ended with no input */
	bool pregreet;    /* input came before the whole greeting */
	bool dns;         /* DNSBL scoring runs or ran */
	bool dns_done;    /* its verdict is known */
	bool incomplete;  /* a site did not answer (in time): no pass entry */
	bool listed;      /* score >= dnsbl_threshold */
	bool waiting;     /* a MAIL or RCPT check waits for the verdict */
	bool decided;     /* PASS NEW logged, or a test failed */
	int16_t score;
	uint8_t blame; /* the site named in the reply */
	uint64_t dns_deadline; /* monotonic ns; 0 when nothing is due */
	struct screen_job *job;
};

int screen_pool_new(struct screen_pool **out, uint32_t slots);
void screen_pool_free(struct screen_pool *sp);

/* Connect time, after client_access and the per-client limits: the pass
 * cache, then the tests. True: hold the 220- pause (greet_wait; only when
 * can_pause). */
bool screen_connect(struct policy *p, struct policy_conn *pc, bool can_pause);
/* Input arrived during the pause (first call only matters): bytes held so
 * far (n), the first of them (show, len), seconds since connect. True:
 * drop the client now with the 521 written to *r. */
bool screen_pregreet(struct policy *p, struct policy_conn *pc, size_t n, const char *show,
		     size_t len, double after, struct smtp_check_reply *r);
/* The pause is over. SMTP_CHECK_REJECT: send *r (521) instead of the
 * final 220 line and close; SMTP_CHECK_OK: greet. */
int screen_greet_end(struct policy *p, struct policy_conn *pc, struct smtp_check_reply *r);
/* MAIL or RCPT: SMTP_CHECK_OK, REJECT (*r), or PENDING (the verdict is
 * due; the connection's waiter hears SMTP_CHECK_PENDING: ask again). */
int screen_check(struct policy *p, struct policy_conn *pc, enum smtp_check_point what,
		 struct smtp_check_reply *r);
/* The connection's timer: DNS answers not in by the deadline. */
void screen_expire(struct policy *p, struct policy_conn *pc);
/* The waiting check no longer waits (session closing). */
void screen_cancel(struct policy_conn *pc);
/* Teardown: give back the job. */
void screen_close(struct policy *p, struct policy_conn *pc);
/* A reload replaced the site list: every job of this worker ends as if
 * its sites had not answered (their answers are indexed by the old list). */
void screen_reconf(struct policy *p);

#endif
