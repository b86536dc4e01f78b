/*
 * policy.c - policy_check() (policy.h): each check point asks the modules
 * in a fixed order and the first refusal wins.
 *
 * Ownership rules
 *  - Runs on the connection's worker thread only and keeps no state of its
 *    own: the modules keep theirs (per worker, or shared as they document).
 */
#include "policy.h"
#include "rcpt_map.h"
#include "ringmx/stats.h"

#include "client_limits.h"

int
policy_connect(struct policy *p, struct policy_conn *pc, struct smtp_check_reply *r)
{
	return client_limits_connect(p, pc, r);
}

void
policy_conn_close(struct policy *p, struct policy_conn *pc)
{
	if (p->verify != NULL)
		verify_cancel(p->verify, pc);
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
	if (p->verify != NULL)
		verify_cancel(p->verify, pc);
	pc->pending = false;
}
