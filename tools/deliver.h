/*
 * deliver.h - ringmx-deliver's parts: one message to one next hop over a
 * blocking socket with the relay's SMTP/LMTP client core (deliver_smtp.c),
 * and the consumer around it (ringmx-deliver.c).
 *
 * Ownership: a struct dmsg and its results belong to the delivery thread
 * that fetched the message; nothing here is shared between threads.
 */
#ifndef RINGMX_DELIVER_H
#define RINGMX_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relay_reply.h"
#include "ringmx/config.h"

#define DLV_RCPT_MAX 1000 /* recipients of one stream message (DSN_RCPTS_MAX) */

enum dlv_status {
	DLV_PENDING = 0,
	DLV_SENT,     /* 2xx from the next hop */
	DLV_DEFERRED, /* 4xx, or no answer: try again later */
	DLV_BOUNCED,  /* 5xx: a DSN to the sender */
};

struct dlv_rcpt {
	const char *addr; /* without <>, into the message's headers */
	size_t len;
	int hop; /* index into relay.hops; -1: no route */
	enum dlv_status st;
	int code;
	char enh[16]; /* "5.1.1", or "" */
	char text[RELAY_REPLY_TEXT_MAX];
};

struct dmsg {
	const char *qid;
	const char *from; /* without <>, "" for the null sender */
	size_t from_len;
	const uint8_t *body;
	size_t body_len;
	bool utf8, eightbit;
	struct dlv_rcpt *rcpt;
	uint32_t nrcpt;
};

struct dlv_timeouts {
	uint64_t connect_ns, reply_ns;
};

/*
 * Deliver the recipients idx[0..n) of m (all routed to hop) in one
 * session, with STARTTLS as relay_tls says: every one of them gets a status (sent, deferred,
 * bounced) and the deciding reply. relay_text names the member that answered (for the log and the
 * DSN's Remote-MTA), "" when none did.
 */
void dlv_hop(const struct relay_conf *rc, const struct relay_hop_conf *hop, const char *helo,
             struct dmsg *m, const uint32_t *idx, uint32_t n, const struct dlv_timeouts *t,
             char *relay_text, size_t relay_cap);

/* A delivery thread ends: its TLS context and wolfSSL's per-thread caches. */
void dlv_thread_end(void);

#endif
