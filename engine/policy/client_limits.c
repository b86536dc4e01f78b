/*
 * client_limits.c - the per-client limits (client_limits.h) on top of the
 * shared client_table: what is counted when, the refusal texts (Postfix
 * smtpd's, with the codes of issue 12), one log line per client, limit and
 * window, and the counters (stats.h client_*).
 *
 * Ownership rules
 *  - Runs on the connection's worker; keeps nothing of its own but what
 *    struct policy_conn holds for the connection (its slot).
 *  - Fail open: a client the table cannot track (no free slot in its probe
 *    window, stats client_table_full) is not limited. Refusing it instead
 *    would let a flood of distinct sources lock out every new client, the
 *    very thing the limits are for; the table stays bounded either way.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_SMTPD
#include "client_limits.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "ringmx/config.h"
#include "ringmx/proxy.h"
#include "ringmx/stats.h"

/* Bits of client_table_first(): one per limit. */
enum {
	LIM_CONN = 0,
	LIM_CONN_RATE,
	LIM_MSG_RATE,
	LIM_RCPT_RATE,
	LIM_TLS_RATE,
};

static const char *const lim_key[] = {
	"client_connection_limit",   "client_connection_rate_limit",
	"client_message_rate_limit", "client_recipient_rate_limit",
	"client_tls_handshake_rate_limit",
};

static bool
limits_on(const struct client_limits_conf *cf)
{
	return cf->connection_limit | cf->connection_rate_limit | cf->message_rate_limit |
	       cf->recipient_rate_limit | cf->tls_handshake_rate_limit;
}


/* Take the connection's count on the table once; false: not tracked
 * (exempt, another family, or no room: fail open). */
static bool
client_pin(struct policy *p, struct policy_conn *pc)
{
	const struct client_limits_conf *cf = p->limits;
	const struct sockaddr *sa = (const struct sockaddr *)&pc->peer->addr;
	struct client_key k;

	if (pc->client_pinned)
		return true;
	if (pc->client_tried)
		return false;
	pc->client_tried = true;
	if (proxy_trusted(&cf->exceptions, sa) || !client_key_make(sa, cf->ipv6_prefix, &k))
		return false;
	int slot = client_table_pin(p->clients, &k, client_window(*p->now, cf->rate_window),
				    &pc->client_conns);
	if (slot < 0) {
		p->stats->client_table_full++;
		return false;
	}
	pc->client_slot = (uint32_t)slot;
	pc->client_pinned = true;
	return true;
}

static void
client_unpin(struct policy *p, struct policy_conn *pc)
{
	if (!pc->client_pinned)
		return;
	client_table_unpin(p->clients, (int)pc->client_slot);
	pc->client_pinned = false;
}

/* Over a limit: the counter, and the log line if this client has not had
 * one for this limit in this window. */
static void
limited(struct policy *p, struct policy_conn *pc, unsigned lim, uint32_t count, unsigned max,
	uint32_t win)
{
	static const size_t stat_off[] = {
		offsetof(struct ringmx_stats, client_conn_limited),
		offsetof(struct ringmx_stats, client_conn_rate_limited),
		offsetof(struct ringmx_stats, client_msg_rate_limited),
		offsetof(struct ringmx_stats, client_rcpt_rate_limited),
		offsetof(struct ringmx_stats, client_tls_rate_limited),
	};

	(*(uint64_t *)(void *)((char *)p->stats + stat_off[lim]))++;
	if (!client_table_first(p->clients, (int)pc->client_slot, lim, win))
		return;
	const struct client_limits_conf *cf = p->limits;
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)&pc->peer->addr;
	bool v6 = s6->sin6_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr);
	char grp[16] = "";
	if (v6 && cf->ipv6_prefix < 128)
		snprintf(grp, sizeof(grp), " prefix=/%u", cf->ipv6_prefix);
	if (lim == LIM_CONN)
		log_info("limit: client=[%s]%s limit=%s count=%u max=%u", pc->peer->addr_text, grp,
			 lim_key[lim], count, max);
	else
		log_info("limit: client=[%s]%s limit=%s count=%u max=%u window=%llus",
			 pc->peer->addr_text, grp, lim_key[lim], count, max,
			 (unsigned long long)(cf->rate_window / 1000000000u));
}

static int
refuse(struct smtp_check_reply *r, int n)
{
	r->len = n > 0 && (size_t)n < sizeof(r->text) ? (size_t)n : 0;
	return SMTP_CHECK_REJECT;
}

int
client_limits_connect(struct policy *p, struct policy_conn *pc, struct smtp_check_reply *r)
{
	const struct client_limits_conf *cf = p->limits;

	if (!limits_on(cf) || !client_pin(p, pc))
		return SMTP_CHECK_OK;
	uint32_t win = client_window(*p->now, cf->rate_window);
	uint32_t rate = 0;
	unsigned lim;

	/* Every attempt counts toward the rate, refused ones too (anvil). */
	if (cf->connection_rate_limit)
		rate = client_table_count(p->clients, (int)pc->client_slot, CLIENT_EV_CONN, win);
	if (cf->connection_limit && pc->client_conns > cf->connection_limit) {
		lim = LIM_CONN;
		limited(p, pc, lim, pc->client_conns, cf->connection_limit, win);
	} else if (cf->connection_rate_limit && rate > cf->connection_rate_limit) {
		lim = LIM_CONN_RATE;
		limited(p, pc, lim, rate, cf->connection_rate_limit, win);
	} else {
		return SMTP_CHECK_OK;
	}
	/* A refused connection does not hold a place while its 421 drains. */
	client_unpin(p, pc);
	return refuse(r, snprintf(r->text, sizeof(r->text),
				  "421 4.7.0 %s Error: too many connections from %s\r\n", p->hostname,
				  policy_client_addr(pc)));
}

int
client_limits_event(struct policy *p, struct policy_conn *pc, enum client_event ev,
		    struct smtp_check_reply *r)
{
	const struct client_limits_conf *cf = p->limits;
	unsigned max = ev == CLIENT_EV_MSG    ? cf->message_rate_limit
		       : ev == CLIENT_EV_RCPT ? cf->recipient_rate_limit
					      : cf->tls_handshake_rate_limit;

	if (max == 0 || !client_pin(p, pc))
		return SMTP_CHECK_OK;
	uint32_t win = client_window(*p->now, cf->rate_window);
	uint32_t n = client_table_count(p->clients, (int)pc->client_slot, ev, win);
	if (n <= max)
		return SMTP_CHECK_OK;
	switch (ev) {
	case CLIENT_EV_MSG:
		limited(p, pc, LIM_MSG_RATE, n, max, win);
		return refuse(r, snprintf(r->text, sizeof(r->text),
					  "452 4.7.1 Error: too much mail from %s\r\n", policy_client_addr(pc)));
	case CLIENT_EV_RCPT:
		limited(p, pc, LIM_RCPT_RATE, n, max, win);
		return refuse(r, snprintf(r->text, sizeof(r->text),
					  "452 4.7.1 Error: too many recipients from %s\r\n",
					  policy_client_addr(pc)));
	default:
		limited(p, pc, LIM_TLS_RATE, n, max, win);
		return refuse(r, snprintf(r->text, sizeof(r->text),
					  "421 4.7.0 %s Error: too many new TLS sessions from %s\r\n",
					  p->hostname, policy_client_addr(pc)));
	}
}

void
client_limits_close(struct policy *p, struct policy_conn *pc)
{
	client_unpin(p, pc);
}
