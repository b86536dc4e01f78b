/*
 * client_limits.h - per-client limits counted across every worker
 * (docs/defences.md "Per-client limits"): concurrent connections
 * (client_connection_limit) and, per client_rate_window, connections,
 * MAIL, RCPT and TLS handshakes. The counts live in the process's one
 * client_table (client_table.h); this module turns them into refusals,
 * log lines and counters.
 *
 * Ownership rules
 *  - Called on a connection's worker thread with that worker's struct
 *    policy and the connection's struct policy_conn (policy.h); the only
 *    shared state is the table, changed through its atomics.
 *  - A connection holds at most one count on the table (policy_conn's
 *    client_pinned), taken by the first call that needs it and released by
 *    client_limits_close() at teardown, or at once when the connection is
 *    refused.
 */
#ifndef RINGMX_CLIENT_LIMITS_H
#define RINGMX_CLIENT_LIMITS_H

#include "client_table.h"
#include "policy.h"

/* At the greeting: concurrency, then connection rate. SMTP_CHECK_OK or
 * SMTP_CHECK_REJECT with the 421 in *r. */
int client_limits_connect(struct policy *p, struct policy_conn *pc, struct smtp_check_reply *r);
/* One MAIL, RCPT or TLS handshake (ev): SMTP_CHECK_OK or REJECT with the
 * 452 (MAIL, RCPT) or 421 (TLS) in *r. */
int client_limits_event(struct policy *p, struct policy_conn *pc, enum client_event ev,
			struct smtp_check_reply *r);
void client_limits_close(struct policy *p, struct policy_conn *pc);

#endif
