/*
 * spool_share.h - how a worker's staging memory (spool_memory) is shared
 * among its open transactions, and the start-up check built on it
 * (engine/spool/spool.c stages; engine/config/config.c checks; operator
 * view in docs/spool.md, "Fair sharing of staging memory").
 *
 * A transaction is small while it stages at most SPOOL_SMALL_MAX bytes
 * (record header, envelope and message). Past that it is large, and all
 * its chunks count against the large messages' share: 1/SPOOL_LARGE_DIV of
 * spool_memory. However many slow large uploads are open, they never hold
 * more than that share, so the rest stays for small messages. A large
 * message that declared SIZE= reserves its whole need at MAIL, and is
 * refused there (452 4.3.1) when the share cannot give it, instead of
 * failing after its upload; one that did not declare grows chunk by chunk
 * and fails (451 4.3.0 at its end) only when the share is exhausted.
 *
 * Ownership: constants and a pure function; no state.
 */
#ifndef RINGMX_SPOOL_SHARE_H
#define RINGMX_SPOOL_SHARE_H

#include <stdint.h>

#include "ringmx/smtp.h"
#include "ringmx/spool_format.h"

#define SPOOL_SMALL_MAX (256u << 10)
#define SPOOL_LARGE_DIV 2u
/* What staging a message costs beyond its own bytes and its recipients:
 * the record header, the Received: header, padding and the last partly
 * used chunk, rounded up generously. */
#define SPOOL_STAGE_SLACK (64u << 10)

/* The staging one message of message_size_limit may need with
 * recipient_limit recipients (each at most a path and its TLV header; the
 * whole envelope at most SPOOL_ENV_MAX, which the session enforces); it
 * must fit the large share: spool_memory / SPOOL_LARGE_DIV >= this. */
static inline uint64_t
spool_stage_need(uint64_t message_size_limit, unsigned recipient_limit)
{
	uint64_t env = SMTP_ENV_FIXED_MAX +
		       (uint64_t)recipient_limit * (SMTP_PATH_MAX + SMTP_ENV_RCPT_COST);

	if (env > SPOOL_ENV_MAX)
		env = SPOOL_ENV_MAX;
	return message_size_limit + env + SPOOL_STAGE_SLACK;
}

#endif
