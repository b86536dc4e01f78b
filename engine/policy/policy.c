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

int
policy_connect(struct policy *p, struct policy_conn *pc, struct smtp_check_reply *r)
{
	(void)p;
	(void)pc;
	(void)r;
	return SMTP_CHECK_OK;
}

void
policy_conn_close(struct policy *p, struct policy_conn *pc)
{
	if (p->verify != NULL)
		verify_cancel(p->verify, pc);
	pc->pending = false;
}

int
policy_check(struct policy *p, struct policy_conn *pc, enum smtp_check_point what,
	     const char *addr, size_t len, struct smtp_check_reply *r)
{
	(void)pc;
	switch (what) {
	case SMTP_CHECK_MAIL:
		break;
	case SMTP_CHECK_RCPT:
		if (p->rcpt_map != NULL && rcpt_map_check(p->rcpt_map, addr, len, r) != SMTP_CHECK_OK) {
			p->stats->rcpt_unknown++;
			return SMTP_CHECK_REJECT;
		}
		/* Last: the cheaper checks refuse first. */
		if (p->verify != NULL)
			return verify_rcpt(p->verify, pc, addr, len, r);
		break;
	case SMTP_CHECK_STARTTLS:
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
