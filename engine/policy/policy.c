/*
 * policy.c - policy_check() (policy.h): each check point asks the modules
 * in a fixed order and the first refusal wins.
 *
 * Ownership rules
 *  - Runs on the connection's worker thread only and keeps no state of its
 *    own: the modules keep theirs (per worker, or shared as they document).
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_POSTSCREEN
#include "policy.h"
#include "rcpt_map.h"
#include "ringmx/config.h"
#include "ringmx/stats.h"

#include <stdio.h>

#include "cidr_map.h"
#include "client_limits.h"
#include "log.h"

int
policy_connect(struct policy *p, struct policy_conn *pc, bool can_pause,
	       struct smtp_check_reply *r)
{
	const struct sockaddr *sa = (const struct sockaddr *)&pc->peer->addr;
	const char *text = NULL;
	size_t tlen = 0;
	enum cidr_action a = cidr_map_lookup(p->screen->access, sa, &text, &tlen);

	if (a == CIDR_OK) {
		/* Trusted: no screening and no per-client limits (never
		 * recipient validation or relay policy). */
		p->stats->screen_access_ok++;
		log_info("ALLOWLISTED [%s]:%u", policy_client_addr(pc), pc->peer->port);
		pc->client_tried = true;
		pc->screen.allowed = true;
		return POLICY_GREET;
	}
	/* A refused client still counts toward its limits while it waits
	 * for QUIT, so it cannot hold more connections than anyone. */
	if (client_limits_connect(p, pc, r) != SMTP_CHECK_OK)
		return POLICY_REFUSE;
	if (a == CIDR_REJECT) {
		int n = snprintf(r->text, sizeof(r->text), "554 5.7.1 %.*s\r\n", (int)tlen, text);

		r->len = n > 0 && (size_t)n < sizeof(r->text) ? (size_t)n : 0;
		p->stats->screen_access_reject++;
		log_info("DENYLISTED [%s]:%u", policy_client_addr(pc), pc->peer->port);
		log_info("NOQUEUE: reject: CONNECT from [%s]:%u: %.*s", pc->peer->addr_text,
			 pc->peer->port, (int)(r->len > 2 ? r->len - 2 : 0), r->text);
		return POLICY_DENY;
	}
	return screen_connect(p, pc, can_pause) ? POLICY_GREET_WAIT : POLICY_GREET;
}

void
policy_expire(struct policy *p, struct policy_conn *pc)
{
	screen_expire(p, pc);
}

void
policy_conn_close(struct policy *p, struct policy_conn *pc)
{
	if (p->verify != NULL)
		verify_cancel(p->verify, pc);
	screen_close(p, pc);
	client_limits_close(p, pc);
	pc->pending = false;
}

void
policy_session_end(struct policy *p, struct policy_conn *pc)
{
	client_limits_close(p, pc);
}

int
policy_tls_begin(struct policy *p, struct policy_conn *pc)
{
	struct smtp_check_reply r;

	return client_limits_event(p, pc, CLIENT_EV_TLS, &r);
}

int
policy_check(struct policy *p, struct policy_conn *pc, enum smtp_check_point what,
	     const char *addr, size_t len, struct smtp_check_reply *r)
{
	int res;

	/* First: screening (a verdict still due makes MAIL and RCPT wait). */
	res = screen_check(p, pc, what, r);
	if (res != SMTP_CHECK_OK)
		return res;
	switch (what) {
	case SMTP_CHECK_MAIL:
		res = client_limits_event(p, pc, CLIENT_EV_MSG, r);
		if (res != SMTP_CHECK_OK)
			return res;
		break;
	case SMTP_CHECK_RCPT:
		/* First at RCPT: the client's recipient rate. */
		res = client_limits_event(p, pc, CLIENT_EV_RCPT, r);
		if (res != SMTP_CHECK_OK)
			return res;
		if (p->rcpt_map != NULL && rcpt_map_check(p->rcpt_map, addr, len, r) != SMTP_CHECK_OK) {
			p->stats->rcpt_unknown++;
			return SMTP_CHECK_REJECT;
		}
		/* Last: the cheaper checks refuse first. */
		if (p->verify != NULL)
			return verify_rcpt(p->verify, pc, addr, len, r);
		break;
	case SMTP_CHECK_STARTTLS:
		res = client_limits_event(p, pc, CLIENT_EV_TLS, r);
		if (res != SMTP_CHECK_OK)
			return res;
		break;
	}
	return SMTP_CHECK_OK;
}

void
policy_cancel(struct policy *p, struct policy_conn *pc)
{
	screen_cancel(pc);
	if (p->verify != NULL)
		verify_cancel(p->verify, pc);
	pc->pending = false;
}
