/*
 * js_internal.h - what js_sink.c (the worker's side) and js_pub.c (the
 * publisher thread and libnats' callbacks) share. Nothing else includes it.
 *
 * Threads and hand-overs (every one lock-free):
 *   worker --ring[] (single producer, single consumer)--> publisher
 *   publisher, libnats' threads --done (a push-only list)--> worker
 *   libnats' threads --retry (a push-only list)--> publisher
 * A slot is on at most one of them, and only its current owner touches
 * its fields (js_sink.h); the atomics on the lists order the hand-over.
 */
#ifndef RINGMX_JS_INTERNAL_H
#define RINGMX_JS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "js_sink.h"
#include "ringmx/config.h"

enum js_slot_state {
	JS_FREE = 0,
	JS_OPEN,     /* worker: between tx_open and tx_commit */
	JS_INFLIGHT, /* publisher / libnats */
};

struct js_slot {
	struct js_sink *js;
	struct sink_waiter *owner; /* NULL once aborted while in flight */
	enum js_slot_state state;
	uint32_t idx;
	char qid[SINK_QID_MAX];
	/* The envelope, as the headers carry it (docs/jetstream.md). */
	char from[SMTP_PATH_MAX + 3];
	char helo[256];
	char client[96];
	char tls[SMTP_TLS_INFO_MAX];
	int64_t received_at; /* wall clock at the end of data */
	bool utf8, eightbit; /* SMTPUTF8, BODY=8BITMIME: the next hop needs them too */
	/* Recipients, each NUL terminated, one after the other. */
	char *rcpt;
	size_t rcpt_len, rcpt_cap;
	uint32_t nrcpt;
	/* The message as the spool would hold it (Received: first). */
	char *body;
	size_t body_len, body_cap;
	bool failed; /* a tx_data past the staging memory: 451 at commit */

	/* Publisher side. */
	uint64_t deadline; /* monotonic ns: no new attempt after this */
	unsigned attempts;
	_Atomic(void *) nmsg; /* the natsMsg libnats holds, for the ack handler */
	/* The result, written before the push onto done. */
	int res;              /* 0 stored, or -errno */
	bool duplicate;       /* the stream had it already (Nats-Msg-Id) */
	struct js_slot *next; /* on done or retry */
	uint64_t retry_at;    /* publisher's retry list, monotonic ns */
};

struct js_sink {
	struct js_env env;
	const struct jetstream_conf *conf; /* the configuration's, restart only */
	struct js_slot *slots;
	uint32_t nslots;
	struct js_slot *free;        /* worker only: the free list (by next) */
	uint32_t inflight;           /* worker only: slots with the publisher */
	uint64_t staged, staged_max; /* worker only: bytes of staging buffers */
	uint64_t size_limit;         /* message_size_limit, for the max_payload check */

	/* worker -> publisher */
	uint32_t *ring; /* slot indices; nring a power of two >= nslots */
	uint32_t nring;
	_Atomic uint32_t ring_head; /* written by the worker */
	_Atomic uint32_t ring_tail; /* written by the publisher */
	int pub_efd;                /* the publisher sleeps on it */
	uint64_t kick_val;          /* the write SQE's buffer */
	bool kick_wanted, kick_inflight;

	/* publisher, libnats -> worker */
	_Atomic(struct js_slot *) done;
	int done_efd;
	uint64_t done_val; /* the read SQE's buffer */
	bool read_armed;

	/* libnats -> publisher */
	_Atomic(struct js_slot *) retry;

	/* Publisher thread. */
	pthread_t thread;
	bool thread_started;
	atomic_bool stop;
	void *pub; /* struct js_pub, js_pub.c */
};

/* js_pub.c: the publisher thread. */
int js_pub_start(struct js_sink *js, char *err, size_t errlen);
void js_pub_stop(struct js_sink *js);

/* js_sink.c: a result for the worker (any thread). */
void js_done_push(struct js_sink *js, struct js_slot *s);

#endif
