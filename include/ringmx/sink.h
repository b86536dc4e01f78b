/*
 * sink.h - where accepted messages go: the boundary between the SMTP core
 * and storage (discard now, the durable spool next, relay after that).
 *
 * The session drives one transaction at a time through these calls:
 *   tx_open (at MAIL) -> tx_rcpt* -> tx_data* -> tx_commit | tx_abort
 * and the sink answers tx_commit either at once or later, through the
 * verdict callback it was created with (the engine routes it back into
 * smtp_session_verdict()).
 *
 * Ownership rules
 *  - Every pointer passed into a sink call (addresses, data spans, the open
 *    info) is valid only during that call: the sink copies what it keeps.
 *  - struct sink_tx belongs to the sink from tx_open until tx_commit's
 *    verdict has been delivered or tx_abort returns. After tx_abort the sink
 *    must never deliver a verdict for that transaction.
 *  - A sink instance belongs to one worker and is only called from its thread.
 */
#ifndef RINGMX_SINK_H
#define RINGMX_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Queue ids are short printable strings, NUL terminated, < SINK_QID_MAX. */
#define SINK_QID_MAX 24

struct sink_tx;
struct smtp_peer;

/* What is known when MAIL is accepted. */
struct sink_open_info {
	const struct smtp_peer *peer;
	const char *helo; /* NUL terminated */
	const char *from; /* reverse-path without <>, "" for the null sender */
	size_t from_len;
	uint64_t size_declared; /* SIZE= or 0 */
	bool utf8;              /* SMTPUTF8 */
	bool eightbit;          /* BODY=8BITMIME */
	bool esmtp;
	int64_t wall;    /* time(NULL) of MAIL */
	const char *tls; /* "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"; "" without TLS */
};

enum sink_commit {
	SINK_DONE = 0,    /* durable now: reply 250 at once */
	SINK_PENDING = 1, /* the verdict comes later through the callback */
};

/*
 * Who waits for a transaction's verdict: embedded in the waiter's own
 * struct (a connection, a bounce being spooled), which finds itself again
 * with container_of(). The sink calls verdict() on the thread that opened
 * the transaction, once, unless the transaction was aborted first. So a
 * verdict reaches the transaction that asked, with no router in between.
 */
struct sink_waiter {
	void (*verdict)(struct sink_waiter *w, int res);
};

#ifndef container_of
/* The struct that embeds member at p. */
#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))
#endif

struct sink_ops {
	/* Open a transaction. Writes the queue id into qid. Returns 0 or a
	 * negative errno (-ENOSPC: 452 4.3.1; -EBUSY: 451 4.3.0 "next hop
	 * unavailable", the relay's backpressure; others: 451 4.3.0). */
	int (*tx_open)(void *self, struct sink_waiter *waiter, const struct sink_open_info *info,
		       struct sink_tx **tx, char qid[SINK_QID_MAX]);
	/* One accepted recipient, forward-path without <>. 0 or -errno. */
	int (*tx_rcpt)(struct sink_tx *tx, const char *rcpt, size_t len);
	/* Message bytes in order: the Received: header first, then the content
	 * with CRLF line ends, dot-unstuffed. 0 or -errno (the message then
	 * fails with 451 4.3.0 at its end). */
	int (*tx_data)(struct sink_tx *tx, const char *p, size_t n);
	/* End of message. Returns SINK_DONE, SINK_PENDING or -errno. */
	int (*tx_commit)(struct sink_tx *tx);
	/* Forget the transaction (RSET, error, disconnect, timeout). */
	void (*tx_abort)(struct sink_tx *tx);
	/* Optional (NULL: the sink keeps nothing to hold). A content filter
	 * quarantined the message: keep it, on hold until an operator
	 * releases it. After the recipients, before the first tx_data.
	 * 0 or -errno. */
	int (*tx_hold)(struct sink_tx *tx, const char *reason, size_t len);
};

struct sink {
	const struct sink_ops *ops;
	void *self;
};

#endif
