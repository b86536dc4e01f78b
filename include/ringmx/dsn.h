/*
 * dsn.h - delivery status notifications (bounces): RFC 3464
 * multipart/report messages built from a spooled message's envelope and
 * the failed recipients. Pure: no I/O, no allocation; the caller gives the
 * output buffer. Used by engine/relay/relay.c, which spools the result as a new
 * message from <> to the original envelope sender.
 *
 * Owner: the relay module (engine/relay/dsn.c, tests/unit/test_dsn.c).
 *
 * The report (RFC 3462/6522 multipart/report; report-type=delivery-status):
 *   1. text/plain: a human explanation, one paragraph per failed recipient
 *      with the remote reply or the reason;
 *   2. message/delivery-status (RFC 3464): per-message fields
 *      (Reporting-MTA: dns; <hostname>, Arrival-Date, X-Ringmx-Queue-ID),
 *      then per recipient: Final-Recipient: rfc822; <addr> (utf-8; when
 *      SMTPUTF8, RFC 6533), Action: failed, Status: 5.x.y,
 *      Remote-MTA: dns; <host> (when there was one), Diagnostic-Code:
 *      smtp; <reply> (when there was one), Last-Attempt-Date;
 *   3. text/rfc822-headers: the original message's header section (up to
 *      the first empty line, at most DSN_HEADERS_MAX bytes; cut at a line
 *      boundary when longer).
 * When info->utf8, parts 2 and 3 are message/global-delivery-status and
 * message/global-headers (RFC 6533 6: raw UTF-8 addresses are allowed
 * only there), and the report is 8bit: relay it with SMTPUTF8.
 * Headers of the report: Date, From: MAILER-DAEMON@<hostname> (display name
 * "Mail Delivery System"), To: <sender>, Subject: Undelivered Mail Returned
 * to Sender, Message-ID: <qid.timestamp@hostname>, Auto-Submitted:
 * auto-replied (RFC 3834), MIME-Version: 1.0, Content-Type with a boundary
 * that does not occur in the message. Lines end in CRLF and are at most 998
 * bytes (long texts are folded or cut).
 */
#ifndef RINGMX_DSN_H
#define RINGMX_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DSN_HEADERS_MAX (64u << 10) /* original header bytes quoted */
#define DSN_DIAG_MAX    512         /* bytes of one Diagnostic-Code kept */
/* Output big enough for any report built from at most DSN_RCPTS_MAX
 * recipients: callers size their buffer with dsn_size_bound(). */
#define DSN_RCPTS_MAX   1000

struct dsn_rcpt {
	const char *addr; /* forward-path without <>, not NUL terminated */
	size_t addr_len;
	const char *status; /* enhanced status "5.1.1" (NUL terminated) */
	const char *remote_mta; /* next hop host, NUL terminated; NULL if none */
	const char *diag;  /* the remote reply or the reason, may be multi-line
			    * (CRLF or LF separated); not NUL terminated */
	size_t diag_len;
	int64_t last_attempt; /* wall clock seconds; 0: none */
};

struct dsn_info {
	const char *hostname;  /* reporting MTA, NUL terminated */
	const char *qid;       /* original queue id, NUL terminated */
	const char *sender;    /* original envelope sender (not empty), not NUL terminated */
	size_t sender_len;
	int64_t arrival;       /* wall clock seconds the original was received */
	int64_t now;           /* wall clock seconds: Date: and the Message-ID */
	bool utf8;             /* the original used SMTPUTF8 */
	const struct dsn_rcpt *rcpts;
	size_t nrcpt;          /* 1..DSN_RCPTS_MAX */
	const uint8_t *msg;    /* the original message (its headers are quoted) */
	size_t msg_len;
};

/* Upper bound of dsn_build()'s output for this info; 0 when the info is
 * invalid (see dsn_build()). */
size_t dsn_size_bound(const struct dsn_info *info);

/* Build the report into out (cap bytes). Returns its length, or 0 if cap is
 * smaller than needed or the info is invalid (no recipients, too many, empty
 * sender). The result is a complete message with CRLF line ends and no
 * final "." line, as the spool stores messages. */
size_t dsn_build(char *out, size_t cap, const struct dsn_info *info);

#endif
