/*
 * js_pub.c - the publisher thread of one worker's jetstream sink, and the
 * libnats callbacks (js_internal.h for the hand-overs).
 *
 * The publisher owns the NATS connection and the JetStream context. It
 * sleeps in poll() on its eventfd; woken, it takes every slot the worker
 * committed, builds the NATS message (headers of docs/jetstream.md, the
 * payload as the spool would hold it) and publishes it asynchronously
 * with Nats-Msg-Id = the queue id. libnats calls ack_handler() on one of
 * its threads: a stored message (or a duplicate: stored once before) goes
 * to the worker's done list; a failure with time left goes back to the
 * publisher for another attempt with the same Nats-Msg-Id, so a message
 * whose acknowledgement was lost in a leader change is stored once; out of
 * time it goes to the worker as -ETIMEDOUT or -EIO (451 4.3.0).
 */
#include "js_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "log.h"

#define LOG_SERVICE LOG_SVC_CLEANUP /* log.h */

/* One attempt waits at most this share of jetstream_timeout for its
 * acknowledgement, so a message lost with a leader has time for another. */
#define JS_ATTEMPT_DIV    4
#define JS_ATTEMPT_MIN_MS 200
/* Pause before another attempt, and between two checks of the stream. */
#define JS_RETRY_NS        (100u * 1000000u)
#define JS_STREAM_RETRY_NS (1000u * 1000000u)
/* Stream created by ringmxd: what Nats-Msg-Id deduplicates within. */
#define JS_DUPLICATE_WINDOW_NS (120ull * 1000000000u)

struct js_pub {
	natsOptions *opts;
	natsConnection *nc;   /* the connector's, read after jsc */
	_Atomic(jsCtx *) jsc; /* NULL until connected (connect_main) */
	pthread_t connector;
	bool connector_started;
	bool stream_ok;
	uint64_t stream_next_try;
	bool stream_logged;
	bool payload_warned;
	struct js_slot *retry; /* publisher only: waiting for retry_at */
	const char *urls[CONFIG_JS_SERVERS_MAX];
	struct js_cb *cb;
};

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* libnats' status and, when it has one, its thread's detail. */
static const char *
nats_text(natsStatus st)
{
	static __thread char b[512];
	const char *le = nats_GetLastError(NULL);

	if (le != NULL && *le != '\0' && strcmp(le, natsStatus_GetText(st)) != 0)
		snprintf(b, sizeof(b), "%s: %s", natsStatus_GetText(st), le);
	else
		snprintf(b, sizeof(b), "%s", natsStatus_GetText(st));
	return b;
}

static void
finish(struct js_sink *js, struct js_slot *s, int res)
{
	s->res = res;
	js_done_push(js, s);
}

static void
retry_push(struct js_sink *js, struct js_slot *s)
{
	struct js_slot *old = atomic_load_explicit(&js->retry, memory_order_relaxed);

	do
		s->next = old;
	while (!atomic_compare_exchange_weak_explicit(&js->retry, &old, s, memory_order_release,
	                                              memory_order_relaxed));
	uint64_t one = 1;
	ssize_t w = write(js->pub_efd, &one, sizeof(one));
	(void)w;
}

/* Another attempt, or the end: called wherever an attempt failed. */
static void
failed(struct js_sink *js, struct js_slot *s, natsStatus st, bool from_nats_thread)
{
	uint64_t now = mono_ns();

	if (st != NATS_MAX_PAYLOAD && now + JS_RETRY_NS < s->deadline) {
		s->retry_at = now + JS_RETRY_NS;
		if (from_nats_thread) {
			retry_push(js, s);
		} else {
			struct js_pub *p = js->pub;
			s->next = p->retry;
			p->retry = s;
		}
		return;
	}
	finish(js, s, st == NATS_TIMEOUT || now >= s->deadline ? -ETIMEDOUT : -EIO);
}

/* libnats' thread: the outcome of one attempt. */
static void
ack_handler(jsCtx *jsc, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	struct js_sink *js = closure;
	struct js_slot *s = NULL;

	(void)jsc;
	/* nslots is small (jetstream_max_pending) and this is not the
	 * worker's thread: a scan keeps the slot out of the message. */
	for (uint32_t i = 0; i < js->nslots; i++) {
		if (atomic_load_explicit(&js->slots[i].nmsg, memory_order_acquire) == msg) {
			s = &js->slots[i];
			break;
		}
	}
	if (s != NULL) {
		atomic_store_explicit(&s->nmsg, NULL, memory_order_relaxed);
		if (pa != NULL) {
			s->duplicate = pa->Duplicate;
			finish(js, s, 0);
		} else {
			failed(js, s, pae != NULL ? pae->Err : NATS_ERR, true);
		}
	}
	natsMsg_Destroy(msg);
}

/*
 * The connection's state callbacks run on libnats' own callback thread,
 * also after natsConnection_Close() returns: their closure is not the
 * sink (freed at exit) but this, which the closed callback, libnats' last
 * one, marks; js_pub_stop() frees it only then.
 */
struct js_cb {
	unsigned worker;
	atomic_bool stopping;
	atomic_bool closed;
};

static void
on_disconnected(natsConnection *nc, void *closure)
{
	struct js_cb *cb = closure;
	(void)nc;
	if (atomic_load(&cb->stopping))
		return; /* our own close */
	log_warn("jetstream w%u: disconnected; reconnecting (mail gets 451 4.3.0 after "
	         "jetstream_timeout)",
	         cb->worker);
}

static void
on_reconnected(natsConnection *nc, void *closure)
{
	struct js_cb *cb = closure;
	char url[256] = "";
	natsConnection_GetConnectedUrl(nc, url, sizeof(url));
	log_notice("jetstream w%u: connected to %s", cb->worker, url);
}

static void
on_closed(natsConnection *nc, void *closure)
{
	struct js_cb *cb = closure;
	(void)nc;
	atomic_store(&cb->closed, true);
}

/* The stream exists (or is made). Blocking, on the publisher only. */
static bool
ensure_stream(struct js_sink *js)
{
	struct js_pub *p = js->pub;
	const struct jetstream_conf *c = js->conf;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	natsStatus st;
	uint64_t now = mono_ns();

	if (p->stream_ok)
		return true;
	if (now < p->stream_next_try)
		return false;
	p->stream_next_try = now + JS_STREAM_RETRY_NS;
	jsCtx *jsc = atomic_load_explicit(&p->jsc, memory_order_acquire);
	st = js_GetStreamInfo(&si, jsc, c->stream, NULL, &jerr);
	if (st == NATS_OK) {
		jsStreamInfo_Destroy(si);
		p->stream_ok = true;
	} else if (jerr == JSStreamNotFoundErr && c->create) {
		jsStreamConfig sc;
		const char *subjects[1] = {c->subject};

		jsStreamConfig_Init(&sc);
		sc.Name = c->stream;
		sc.Subjects = subjects;
		sc.SubjectsLen = 1;
		/* A queue: a message leaves the stream when a consumer has
		 * delivered it (docs/jetstream.md). */
		sc.Retention = js_WorkQueuePolicy;
		sc.Storage = js_FileStorage;
		sc.Replicas = c->replicas;
		sc.Duplicates = (int64_t)JS_DUPLICATE_WINDOW_NS;
		st = js_AddStream(&si, jsc, &sc, NULL, &jerr);
		if (st == NATS_OK) {
			jsStreamInfo_Destroy(si);
			log_notice("jetstream w%u: created stream %s (subject %s, %u replica%s)",
			           js->env.worker, c->stream, c->subject, c->replicas,
			           c->replicas == 1 ? "" : "s");
			p->stream_ok = true;
		}
	}
	if (!p->stream_ok && !p->stream_logged) {
		if (jerr == JSStreamNotFoundErr && !c->create)
			log_err(
			    "jetstream w%u: stream %s does not exist and jetstream_create = no: "
			    "create it (docs/jetstream.md); mail gets 451 4.3.0 until then",
			    js->env.worker, c->stream);
		else
			log_err(
			    "jetstream w%u: stream %s: %s; mail gets 451 4.3.0 until it answers",
			    js->env.worker, c->stream, nats_text(st));
		p->stream_logged = true;
	}
	if (p->stream_ok && p->stream_logged) {
		log_notice("jetstream w%u: stream %s answers", js->env.worker, c->stream);
		p->stream_logged = false;
	}
	if (p->stream_ok && !p->payload_warned) {
		int64_t maxp = natsConnection_GetMaxPayload(p->nc);

		p->payload_warned = true;
		if (maxp > 0 && (uint64_t)maxp < js->size_limit + 65536)
			log_warn(
			    "jetstream w%u: the server's max_payload (%" PRId64 " bytes) is below "
			    "message_size_limit + 64 KiB (%" PRIu64 "): larger messages get 451; "
			    "raise max_payload in nats-server.conf",
			    js->env.worker, maxp, js->size_limit + 65536);
	}
	return p->stream_ok;
}

static natsStatus
header(natsMsg *m, const char *k, const char *v, bool add)
{
	return add ? natsMsgHeader_Add(m, k, v) : natsMsgHeader_Set(m, k, v);
}

static void
publish(struct js_sink *js, struct js_slot *s)
{
	struct js_pub *p = js->pub;
	const struct jetstream_conf *c = js->conf;
	uint64_t now = mono_ns();
	natsMsg *m = NULL;
	natsStatus st;
	char when[32];
	struct tm tm;
	time_t t = (time_t)s->received_at;

	if (now >= s->deadline) {
		finish(js, s, -ETIMEDOUT);
		return;
	}
	if (!ensure_stream(js)) {
		finish(js, s, -EIO);
		return;
	}
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	st = natsMsg_Create(&m, c->subject, NULL, s->body, (int)s->body_len);
	if (st == NATS_OK)
		st = header(m, "Ringmx-Queue-Id", s->qid, false);
	if (st == NATS_OK)
		st = header(m, "Ringmx-Mail-From", s->from, false);
	for (size_t off = 0; st == NATS_OK && off < s->rcpt_len; off += strlen(s->rcpt + off) + 1)
		st = header(m, "Ringmx-Rcpt-To", s->rcpt + off, true);
	if (st == NATS_OK && s->client[0] != '\0')
		st = header(m, "Ringmx-Client", s->client, false);
	if (st == NATS_OK && s->helo[0] != '\0')
		st = header(m, "Ringmx-Helo", s->helo, false);
	if (st == NATS_OK)
		st = header(m, "Ringmx-Received-At", when, false);
	if (st == NATS_OK)
		st = header(m, "Ringmx-Tls", s->tls[0] != '\0' ? s->tls : "none", false);
	if (st == NATS_OK && s->utf8)
		st = header(m, "Ringmx-Smtputf8", "yes", false);
	if (st == NATS_OK && s->eightbit)
		st = header(m, "Ringmx-8bitmime", "yes", false);
	if (st != NATS_OK) {
		natsMsg_Destroy(m);
		failed(js, s, st, false);
		return;
	}
	jsPubOptions po;
	jsPubOptions_Init(&po);
	po.MsgId = s->qid;
	po.ExpectStream = c->stream;
	int64_t left_ms = (int64_t)((s->deadline - now) / 1000000u);
	int64_t per = (int64_t)(c->timeout / 1000000u) / JS_ATTEMPT_DIV;
	if (per < JS_ATTEMPT_MIN_MS)
		per = JS_ATTEMPT_MIN_MS;
	po.MaxWait = left_ms < per ? (left_ms > 0 ? left_ms : 1) : per;
	s->attempts++;
	/* Before the call: the acknowledgement may come before it returns. */
	atomic_store_explicit(&s->nmsg, m, memory_order_release);
	st = js_PublishMsgAsync(atomic_load_explicit(&p->jsc, memory_order_acquire), &m, &po);
	if (st != NATS_OK) {
		/* Not taken (m is still ours): no acknowledgement will come. */
		atomic_store_explicit(&s->nmsg, NULL, memory_order_relaxed);
		natsMsg_Destroy(m);
		failed(js, s, st, false);
	}
}

/*
 * The connector: natsConnection_Connect() blocks, and when a server answers
 * but the TLS handshake (or the authentication) fails it keeps retrying
 * inside the call. So it runs here, not in the publisher, which answers
 * -EIO (451) at once while there is no connection; and each attempt is one
 * pass over the servers (no retry-on-failed-connect), so a stop is seen
 * between attempts. Once connected, libnats reconnects by itself.
 */
static void *
connect_main(void *arg)
{
	struct js_sink *js = arg;
	struct js_pub *p = js->pub;
	natsConnection *nc = NULL;
	bool logged = false;
	char name[32];

	snprintf(name, sizeof(name), "ringmx-jsc%u", js->env.worker);
	pthread_setname_np(pthread_self(), name);
	while (!atomic_load(&js->stop)) {
		natsStatus st = natsConnection_Connect(&nc, p->opts);
		if (st == NATS_OK) {
			jsCtx *jsc = NULL;
			jsOptions jo;
			jsOptions_Init(&jo);
			jo.Wait = (int64_t)(js->conf->timeout / 1000000u);
			jo.PublishAsync.MaxPending = (int64_t)js->nslots;
			jo.PublishAsync.AckHandler = ack_handler;
			jo.PublishAsync.AckHandlerClosure = js;
			st = natsConnection_JetStream(&jsc, nc, &jo);
			if (st == NATS_OK) {
				p->nc = nc; /* published with jsc, below */
				on_reconnected(nc, p->cb);
				atomic_store_explicit(&p->jsc, jsc, memory_order_release);
				return NULL;
			}
			natsConnection_Destroy(nc);
			nc = NULL;
		}
		if (!logged) {
			log_err(
			    "jetstream w%u: cannot connect: %s; mail gets 451 4.3.0 until it can",
			    js->env.worker, nats_text(st));
			logged = true;
		}
		for (int i = 0; i < 25 && !atomic_load(&js->stop); i++)
			usleep(10000);
	}
	return NULL;
}

static void *
pub_main(void *arg)
{
	struct js_sink *js = arg;
	struct js_pub *p = js->pub;
	char name[32];

	snprintf(name, sizeof(name), "ringmx-js%u", js->env.worker);
	pthread_setname_np(pthread_self(), name);
	while (!atomic_load(&js->stop)) {
		uint64_t now = mono_ns(), next = UINT64_MAX;
		for (struct js_slot *s = p->retry; s != NULL; s = s->next)
			if (s->retry_at < next)
				next = s->retry_at;
		int tmo = next == UINT64_MAX ? -1
		          : next <= now      ? 0
		                             : (int)((next - now) / 1000000u) + 1;
		struct pollfd pfd = {.fd = js->pub_efd, .events = POLLIN};
		if (poll(&pfd, 1, tmo) > 0) {
			uint64_t v;
			ssize_t r = read(js->pub_efd, &v, sizeof(v));
			(void)r;
		}
		if (atomic_load(&js->stop))
			break;
		/* Failed attempts libnats gave back. */
		struct js_slot *r =
		    atomic_exchange_explicit(&js->retry, NULL, memory_order_acquire);
		while (r != NULL) {
			struct js_slot *n = r->next;
			r->next = p->retry;
			p->retry = r;
			r = n;
		}
		/* New messages, in the worker's order. */
		uint32_t tail = atomic_load_explicit(&js->ring_tail, memory_order_relaxed);
		uint32_t head = atomic_load_explicit(&js->ring_head, memory_order_acquire);
		for (; tail != head; tail++) {
			struct js_slot *s = &js->slots[js->ring[tail & (js->nring - 1)]];
			if (atomic_load_explicit(&p->jsc, memory_order_acquire) == NULL)
				finish(js, s, -EIO); /* not connected yet: 451 now */
			else
				publish(js, s);
		}
		atomic_store_explicit(&js->ring_tail, tail, memory_order_release);
		/* Attempts whose pause is over. */
		now = mono_ns();
		struct js_slot **pp = &p->retry;
		while (*pp != NULL) {
			struct js_slot *s = *pp;
			if (s->retry_at > now) {
				pp = &s->next;
				continue;
			}
			*pp = s->next;
			publish(js, s);
		}
	}
	/* Stopping: the worker waited for every result (js_idle) unless the
	 * drain ran out of time; what is left is answered by nobody. */
	for (struct js_slot *s = p->retry, *n; s != NULL; s = n) {
		n = s->next;
		finish(js, s, -EIO);
	}
	p->retry = NULL;
	return NULL;
}

int
js_pub_start(struct js_sink *js, char *err, size_t errlen)
{
	const struct jetstream_conf *c = js->conf;
	struct js_pub *p = calloc(1, sizeof(*p));
	natsStatus st;
	char name[32];

	if (p == NULL) {
		snprintf(err, errlen, "jetstream: out of memory");
		return -ENOMEM;
	}
	js->pub = p;
	p->cb = calloc(1, sizeof(*p->cb));
	if (p->cb == NULL) {
		snprintf(err, errlen, "jetstream: out of memory");
		return -ENOMEM;
	}
	p->cb->worker = js->env.worker;
	for (size_t i = 0; i < c->nservers; i++)
		p->urls[i] = c->servers[i];
	snprintf(name, sizeof(name), "ringmxd w%u", js->env.worker);
	st = natsOptions_Create(&p->opts);
	if (st == NATS_OK)
		st = natsOptions_SetServers(p->opts, p->urls, (int)c->nservers);
	if (st == NATS_OK)
		st = natsOptions_SetName(p->opts, name);
	if (st == NATS_OK)
		st = natsOptions_SetTimeout(p->opts, (int64_t)(c->timeout / 1000000u));
	if (st == NATS_OK)
		st = natsOptions_SetMaxReconnect(p->opts, -1);
	if (st == NATS_OK)
		st = natsOptions_SetReconnectWait(p->opts, 250);
	if (st == NATS_OK)
		st = natsOptions_SetDisconnectedCB(p->opts, on_disconnected, p->cb);
	if (st == NATS_OK)
		st = natsOptions_SetReconnectedCB(p->opts, on_reconnected, p->cb);
	if (st == NATS_OK)
		st = natsOptions_SetClosedCB(p->opts, on_closed, p->cb);
	if (st == NATS_OK && c->creds[0] != '\0')
		st = natsOptions_SetUserCredentialsFromFiles(p->opts, c->creds, NULL);
	if (st == NATS_OK && c->tls_ca[0] != '\0') {
		st = natsOptions_SetSecure(p->opts, true);
		if (st == NATS_OK)
			st = natsOptions_LoadCATrustedCertificates(p->opts, c->tls_ca);
	}
	if (st != NATS_OK) {
		snprintf(err, errlen, "jetstream: %s", nats_text(st));
		return -EINVAL;
	}
	int r = pthread_create(&p->connector, NULL, connect_main, js);
	if (r != 0) {
		snprintf(err, errlen, "jetstream: pthread_create: %s", strerror(r));
		return -r;
	}
	p->connector_started = true;
	r = pthread_create(&js->thread, NULL, pub_main, js);
	if (r != 0) {
		snprintf(err, errlen, "jetstream: pthread_create: %s", strerror(r));
		return -r;
	}
	js->thread_started = true;
	return 0;
}

void
js_pub_stop(struct js_sink *js)
{
	struct js_pub *p = js->pub;

	atomic_store(&js->stop, true);
	if (js->thread_started) {
		uint64_t one = 1;
		ssize_t w = write(js->pub_efd, &one, sizeof(one));
		(void)w;
		pthread_join(js->thread, NULL);
		js->thread_started = false;
	}
	if (p == NULL)
		return;
	/* At most one connection attempt (jetstream_timeout per server). */
	if (p->connector_started) {
		pthread_join(p->connector, NULL);
		p->connector_started = false;
	}
	/* Close first: no acknowledgement (none is due after a clean drain)
	 * or state callback is delivered once the closed callback ran. */
	bool closed = true;
	if (p->nc != NULL) {
		atomic_store(&p->cb->stopping, true);
		natsConnection_Close(p->nc);
		closed = false;
		for (int i = 0; i < 5000 && !closed; i++) {
			closed = atomic_load(&p->cb->closed);
			if (!closed)
				usleep(1000);
		}
	}
	jsCtx *jsc = atomic_load(&p->jsc); /* the connector has ended */
	if (jsc != NULL)
		jsCtx_Destroy(jsc);
	if (p->nc != NULL)
		natsConnection_Destroy(p->nc);
	natsOptions_Destroy(p->opts);
	/* Still not closed: libnats may call back yet, so its closure stays. */
	if (closed)
		free(p->cb);
	else
		log_warn("jetstream w%u: the connection did not report closed within 5 s",
		         js->env.worker);
	free(p);
	js->pub = NULL;
}

void
js_library_fini(void)
{
	/* libnats' own threads and caches, for a clean exit (and LSan). */
	nats_CloseAndWait(2000);
}
