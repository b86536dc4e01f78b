/*
 * ringmx-deliver - the delivery side of sink = jetstream (docs/jetstream.md,
 * docs/scale-out.md): pull messages from the stream with a durable consumer
 * and explicit acknowledgements, deliver each to its next hop with the
 * relay's SMTP/LMTP client core and the relay's routing keys (relay_host,
 * transport_maps) read from ringmxd's own configuration file, and
 * acknowledge only after the next hop's answer, so a message is delivered
 * at least once whatever dies. Every process and thread that names the
 * same durable consumer shares one queue: a fleet drains it together.
 *
 *   ringmx-deliver -c /etc/ringmx/ringmxd.conf [-o key=value]... [--threads N]
 *                  [--durable NAME] [--batch N] [--ack-wait SECONDS]
 *
 * Per message: every recipient is routed; each next hop gets one session
 * with its recipients. Then:
 *  - every recipient sent or bounced: bounces become one RFC 3464 report,
 *    published to the stream for the fleet to deliver (from <> to the
 *    sender; none for a null sender), then the message is acknowledged;
 *  - some deferred and maximal_queue_lifetime not over: when others were
 *    sent or bounced, the deferred ones are published as a new stream
 *    message (same queue id and payload, Ringmx-Attempts and
 *    Ringmx-Not-Before headers) and the original acknowledged; otherwise
 *    the message is NAKed with the relay's backoff (retry_min doubling up
 *    to retry_max) and comes back then;
 *  - deferred past maximal_queue_lifetime: bounced.
 * A crash between a publish and the acknowledgement redelivers the
 * original: the publish carries a Nats-Msg-Id derived from what it holds,
 * so the stream keeps one copy, and a recipient already delivered may get
 * the message twice (at least once, as SMTP queues do).
 *
 * Threads: --threads delivery threads, each with its own pull
 * subscription on the shared connection, each delivering one message at a
 * time over blocking sockets (deliver_smtp.c). Not the engine's io_uring:
 * this is a queue consumer whose concurrency is the thread count.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "deliver.h"
#include "ringmx/dsn.h"
#include "smtp_client.h"

#define DLV_THREADS_MAX 256

static atomic_bool stopping;
static const struct config *cfg;
static natsConnection *nc;
static const char *durable = "ringmx-deliver";
static int batch = 16;
static unsigned nthreads = 4;
static int64_t ack_wait_ms = 60000;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void
logf_(const char *fmt, ...)
{
	char b[4096];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(b, sizeof(b),
	             "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ ringmx-deliver[%d]: ", tm.tm_year + 1900,
	             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000,
	             (int)getpid());
	va_start(ap, fmt);
	n += vsnprintf(b + n, sizeof(b) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(b) - 2)
		n = (int)sizeof(b) - 2;
	b[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, b, (size_t)n); /* one write: whole lines */
	(void)w;
}

static int64_t
wall(void)
{
	return (int64_t)time(NULL);
}

static const char *
hdr(natsMsg *m, const char *k)
{
	const char *v = NULL;
	return natsMsgHeader_Get(m, k, &v) == NATS_OK ? v : NULL;
}

/* "<a@b>" -> a@b (a view), "" for "<>". */
static bool
unbracket(const char *v, const char **p, size_t *n)
{
	size_t l = v != NULL ? strlen(v) : 0;
	if (l < 2 || v[0] != '<' || v[l - 1] != '>')
		return false;
	*p = v + 1;
	*n = l - 2;
	return true;
}

static int64_t
parse_rfc3339(const char *v)
{
	struct tm tm = {0};
	if (v == NULL || strptime(v, "%Y-%m-%dT%H:%M:%SZ", &tm) == NULL)
		return 0;
	return (int64_t)timegm(&tm);
}

/* retry_min doubling per attempt, at most retry_max (the relay's rule). */
static uint64_t
backoff_ns(uint64_t attempts)
{
	uint64_t d = cfg->relay.retry_min;
	for (uint64_t i = 1; i < attempts && d < cfg->relay.retry_max; i++)
		d *= 2;
	return d < cfg->relay.retry_max ? d : cfg->relay.retry_max;
}

static uint64_t
fnv1a(const void *p, size_t n, uint64_t h)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Publish to the stream and wait for its acknowledgement. */
static int
publish(jsCtx *js, natsMsg **m, const char *msg_id)
{
	jsPubOptions po;
	jsPubAck *pa = NULL;
	jsErrCode jerr = 0;

	jsPubOptions_Init(&po);
	po.MsgId = msg_id;
	po.ExpectStream = cfg->jetstream.stream;
	po.MaxWait = (int64_t)(cfg->jetstream.timeout / 1000000u);
	natsStatus s = js_PublishMsg(&pa, js, *m, &po, &jerr);
	jsPubAck_Destroy(pa);
	natsMsg_Destroy(*m);
	*m = NULL;
	return s == NATS_OK ? 0 : -EIO;
}

/* The deferred recipients as a new message with the same payload. */
static int
publish_rest(jsCtx *js, natsMsg *orig, const struct dmsg *d, uint64_t attempts, uint64_t not_before)
{
	natsMsg *m = NULL;
	char v[32], id[64];
	uint64_t h = 0xcbf29ce484222325ull;
	static const char *const keep[] = {"Ringmx-Mail-From",   "Ringmx-Client", "Ringmx-Helo",
	                                   "Ringmx-Received-At", "Ringmx-Tls",    "Ringmx-Smtputf8",
	                                   "Ringmx-8bitmime"};
	natsStatus s = natsMsg_Create(&m, natsMsg_GetSubject(orig), NULL, (const char *)d->body,
	                              (int)d->body_len);

	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Queue-Id", d->qid);
	for (size_t i = 0; s == NATS_OK && i < sizeof(keep) / sizeof(keep[0]); i++) {
		const char *x = hdr(orig, keep[i]);
		if (x != NULL)
			s = natsMsgHeader_Set(m, keep[i], x);
	}
	for (uint32_t i = 0; s == NATS_OK && i < d->nrcpt; i++) {
		if (d->rcpt[i].st != DLV_DEFERRED)
			continue;
		char b[SMTPC_ADDR_MAX + 3];
		snprintf(b, sizeof(b), "<%.*s>", (int)d->rcpt[i].len, d->rcpt[i].addr);
		s = natsMsgHeader_Add(m, "Ringmx-Rcpt-To", b);
		h = fnv1a(b, strlen(b), h);
	}
	snprintf(v, sizeof(v), "%" PRIu64, attempts);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Attempts", v);
	snprintf(v, sizeof(v), "%" PRIu64, not_before);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Not-Before", v);
	if (s != NATS_OK) {
		natsMsg_Destroy(m);
		return -EIO;
	}
	/* The same remainder of the same message has the same id. */
	snprintf(id, sizeof(id), "%s.r%016" PRIx64, d->qid, h);
	return publish(js, &m, id);
}

/* One report for the bounced recipients, from <> to the sender. */
static int
publish_bounce(jsCtx *js, natsMsg *orig, const struct dmsg *d, int64_t arrival,
               const char *relay_text)
{
	struct dsn_rcpt r[DLV_RCPT_MAX];
	size_t n = 0, first = SIZE_MAX;
	char statuses[DLV_RCPT_MAX][16]; /* per call: several threads bounce at once */

	for (uint32_t i = 0; i < d->nrcpt; i++) {
		const struct dlv_rcpt *x = &d->rcpt[i];
		if (x->st != DLV_BOUNCED)
			continue;
		if (first == SIZE_MAX)
			first = i;
		snprintf(statuses[n], sizeof(statuses[n]), "%s",
		         x->enh[0] == '5' ? x->enh : "5.0.0");
		r[n] = (struct dsn_rcpt){
		    .addr = x->addr,
		    .addr_len = x->len,
		    .status = statuses[n],
		    .remote_mta = relay_text[0] != '\0' ? relay_text : NULL,
		    .diag = x->text,
		    .diag_len = strlen(x->text),
		    .last_attempt = wall(),
		};
		n++;
	}
	if (n == 0)
		return 0;
	if (d->from_len == 0) {
		logf_("%s: sender is <>: no bounce for %zu recipient%s", d->qid, n,
		      n == 1 ? "" : "s");
		return 0;
	}
	struct dsn_info info = {
	    .hostname = cfg->smtp.hostname,
	    .qid = d->qid,
	    .sender = d->from,
	    .sender_len = d->from_len,
	    .arrival = arrival,
	    .now = wall(),
	    .utf8 = d->utf8,
	    .rcpts = r,
	    .nrcpt = n,
	    .msg = d->body,
	    .msg_len = d->body_len,
	};
	size_t cap = dsn_size_bound(&info);
	char *buf = cap ? malloc(cap) : NULL;
	size_t len = buf != NULL ? dsn_build(buf, cap, &info) : 0;
	if (len == 0) {
		free(buf);
		return -EIO;
	}
	char qid[64], to[SMTPC_ADDR_MAX + 3], when[32];
	struct tm tm;
	time_t now = time(NULL);
	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	/* Stable for the same bounce of the same message: a redelivered
	 * original publishes it again and the stream keeps one. */
	snprintf(qid, sizeof(qid), "%s.B%zu", d->qid, first);
	snprintf(to, sizeof(to), "<%.*s>", (int)d->from_len, d->from);
	natsMsg *m = NULL;
	natsStatus s = natsMsg_Create(&m, natsMsg_GetSubject(orig), NULL, buf, (int)len);
	free(buf);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Queue-Id", qid);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Mail-From", "<>");
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Rcpt-To", to);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Received-At", when);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Ringmx-Tls", "none");
	if (s == NATS_OK && d->utf8)
		s = natsMsgHeader_Set(m, "Ringmx-Smtputf8", "yes");
	if (s != NATS_OK) {
		natsMsg_Destroy(m);
		return -EIO;
	}
	logf_("%s: sender non-delivery notification: %s", d->qid, qid);
	return publish(js, &m, qid);
}

static void
log_result(const struct dmsg *d, const struct dlv_rcpt *r, const char *relay, int64_t arrival)
{
	static const char *const st[] = {"pending", "sent", "deferred", "bounced"};
	logf_("%s: to=<%.*s>, relay=%s, delay=%" PRId64 ", status=%s (%d %s%s%s)", d->qid,
	      (int)r->len, r->addr, relay[0] ? relay : "none", wall() - arrival, st[r->st], r->code,
	      r->enh, r->enh[0] ? " " : "", r->text);
}

/* One stream message, start to acknowledgement. */
static void
handle(jsCtx *js, natsMsg *m)
{
	static __thread struct dlv_rcpt rc[DLV_RCPT_MAX];
	static __thread uint32_t idx[DLV_RCPT_MAX];
	struct dmsg d = {.rcpt = rc};
	const char **rv = NULL;
	int nr = 0;
	jsMsgMetaData *meta = NULL;
	uint64_t delivered = 1, attempts;
	const char *v;

	natsMsg_GetMetaData(&meta, m);
	if (meta != NULL)
		delivered = meta->NumDelivered;
	jsMsgMetaData_Destroy(meta);
	d.qid = hdr(m, "Ringmx-Queue-Id");
	if (d.qid == NULL || !unbracket(hdr(m, "Ringmx-Mail-From"), &d.from, &d.from_len) ||
	    natsMsgHeader_Values(m, "Ringmx-Rcpt-To", &rv, &nr) != NATS_OK || nr < 1 ||
	    nr > DLV_RCPT_MAX) {
		/* Not ringmxd's: nothing can deliver it, and keeping it
		 * would block nothing but fill the stream. Terminated, logged. */
		logf_("stream message without Ringmx-Queue-Id, Ringmx-Mail-From or Ringmx-Rcpt-To "
		      "(or more than %d recipients): terminated, not delivered",
		      DLV_RCPT_MAX);
		free((void *)rv);
		natsMsg_Term(m, NULL);
		return;
	}
	v = hdr(m, "Ringmx-Not-Before");
	if (v != NULL) {
		int64_t nb = strtoll(v, NULL, 10), now = wall();
		if (nb > now) {
			/* A remainder published before its time: not an attempt. */
			natsMsg_NakWithDelay(m, (nb - now) * 1000, NULL);
			free((void *)rv);
			return;
		}
	}
	v = hdr(m, "Ringmx-Attempts");
	attempts = (v != NULL ? strtoull(v, NULL, 10) : 0) + delivered;
	int64_t arrival = parse_rfc3339(hdr(m, "Ringmx-Received-At"));
	if (arrival == 0)
		arrival = wall();
	d.body = (const uint8_t *)natsMsg_GetData(m);
	d.body_len = (size_t)natsMsg_GetDataLength(m);
	d.utf8 = hdr(m, "Ringmx-Smtputf8") != NULL;
	d.eightbit = hdr(m, "Ringmx-8bitmime") != NULL;
	d.nrcpt = 0;
	for (int i = 0; i < nr; i++) {
		struct dlv_rcpt *r = &rc[d.nrcpt];
		memset(r, 0, sizeof(*r));
		if (!unbracket(rv[i], &r->addr, &r->len) || r->len == 0)
			continue;
		const char *at = memrchr(r->addr, '@', r->len);
		r->hop = at != NULL
		             ? relay_route(&cfg->relay, at + 1, r->len - (size_t)(at + 1 - r->addr))
		             : cfg->relay.default_hop;
		if (r->hop < 0) {
			r->st = DLV_BOUNCED;
			r->code = 554;
			snprintf(r->enh, sizeof(r->enh), "5.4.4");
			snprintf(r->text, sizeof(r->text),
			         "no next hop for this domain "
			         "(transport_maps, relay_host)");
		}
		d.nrcpt++;
	}
	/* One session per next hop, its recipients together. */
	char relay[CONFIG_HOP_TEXT_MAX] = "", last_relay[CONFIG_HOP_TEXT_MAX] = "";
	struct dlv_timeouts t = {.connect_ns = cfg->relay.connect_timeout,
	                         .reply_ns = cfg->relay.reply_timeout};
	for (uint32_t i = 0; i < d.nrcpt; i++) {
		if (rc[i].st != DLV_PENDING)
			continue;
		uint32_t n = 0;
		for (uint32_t j = i; j < d.nrcpt; j++)
			if (rc[j].st == DLV_PENDING && rc[j].hop == rc[i].hop)
				idx[n++] = j;
		natsMsg_InProgress(m, NULL); /* a fresh --ack-wait for this session */
		dlv_hop(&cfg->relay, &cfg->relay.hops[rc[i].hop], cfg->smtp.hostname, &d, idx, n,
		        &t, relay, sizeof(relay));
		for (uint32_t k = 0; k < n; k++)
			log_result(&d, &rc[idx[k]], relay, arrival);
		if (relay[0] != '\0')
			snprintf(last_relay, sizeof(last_relay), "%s", relay);
	}
	uint32_t nsent = 0, ndef = 0, nbounce = 0;
	bool expired = (uint64_t)(wall() - arrival) * 1000000000ull >= cfg->relay.queue_lifetime;
	for (uint32_t i = 0; i < d.nrcpt; i++) {
		if (rc[i].st == DLV_DEFERRED && expired) {
			rc[i].st = DLV_BOUNCED;
			snprintf(rc[i].enh, sizeof(rc[i].enh), "5.4.7");
			char tmp[RELAY_REPLY_TEXT_MAX];
			snprintf(tmp, sizeof(tmp),
			         "delivery time expired (maximal_queue_lifetime); "
			         "last: %d %.400s",
			         rc[i].code, rc[i].text);
			snprintf(rc[i].text, sizeof(rc[i].text), "%s", tmp);
		}
		nsent += rc[i].st == DLV_SENT;
		ndef += rc[i].st == DLV_DEFERRED;
		nbounce += rc[i].st == DLV_BOUNCED;
	}
	free((void *)rv);
	if (ndef > 0 && nsent + nbounce == 0) {
		/* Nothing changed: the stream keeps it and redelivers it later. */
		natsMsg_NakWithDelay(m, (int64_t)(backoff_ns(attempts) / 1000000u), NULL);
		return;
	}
	/* Everything that must outlive this message first, then the ack. */
	if (nbounce > 0 && publish_bounce(js, m, &d, arrival, last_relay) < 0) {
		logf_("%s: cannot publish the bounce: retrying the message later", d.qid);
		natsMsg_NakWithDelay(m, (int64_t)(backoff_ns(attempts) / 1000000u), NULL);
		return;
	}
	if (ndef > 0 && publish_rest(js, m, &d, attempts,
	                             (uint64_t)wall() + backoff_ns(attempts) / 1000000000u) < 0) {
		logf_("%s: cannot publish the deferred recipients: retrying the message later",
		      d.qid);
		natsMsg_NakWithDelay(m, (int64_t)(backoff_ns(attempts) / 1000000u), NULL);
		return;
	}
	jsErrCode jerr = 0;
	if (natsMsg_AckSync(m, NULL, &jerr) != NATS_OK)
		logf_("%s: acknowledgement failed (%d): the stream will redeliver it", d.qid,
		      (int)jerr);
}

static void *
thread_main(void *arg)
{
	(void)arg;
	jsCtx *js = NULL;
	natsSubscription *sub = NULL;
	jsSubOptions so;
	jsErrCode jerr = 0;
	natsStatus s = natsConnection_JetStream(&js, nc, NULL);

	jsSubOptions_Init(&so);
	so.Stream = cfg->jetstream.stream;
	so.Config.AckPolicy = js_AckExplicit;
	/* What a consumer that died holds comes back after this; each
	 * session starts it again (natsMsg_InProgress). */
	so.Config.AckWait = ack_wait_ms * 1000000;
	so.Config.MaxDeliver = -1;
	if (s == NATS_OK)
		s = js_PullSubscribe(&sub, js, cfg->jetstream.subject, durable, NULL, &so, &jerr);
	if (s != NATS_OK) {
		logf_("fatal: consumer %s on stream %s: %s (JetStream error %d)", durable,
		      cfg->jetstream.stream, natsStatus_GetText(s), (int)jerr);
		jsCtx_Destroy(js);
		atomic_store(&stopping, true);
		return (void *)1;
	}
	while (!atomic_load(&stopping)) {
		natsMsgList list = {0};
		s = natsSubscription_Fetch(&list, sub, batch, 1000, &jerr);
		if (s == NATS_TIMEOUT)
			continue;
		if (s != NATS_OK) {
			usleep(200000); /* disconnected, no leader: libnats reconnects */
			continue;
		}
		for (int i = 0; i < list.Count; i++) {
			if (atomic_load(&stopping)) {
				/* Not started: back to the stream at once. */
				natsMsg_Nak(list.Msgs[i], NULL);
				continue;
			}
			handle(js, list.Msgs[i]);
		}
		natsMsgList_Destroy(&list);
	}
	natsSubscription_Unsubscribe(sub); /* the durable consumer stays */
	natsSubscription_Destroy(sub);
	jsCtx_Destroy(js);
	dlv_thread_end();
	return NULL;
}

static void
on_signal(int sig)
{
	(void)sig;
	atomic_store(&stopping, true);
}

static void
usage(FILE *f)
{
	fputs("usage: ringmx-deliver -c FILE [-o key=value]... [--threads N] [--durable NAME] "
	      "[--batch N]\n"
	      "  -c FILE          ringmxd's configuration: jetstream_* and the relay's keys\n"
	      "  -o key=value     override a key (repeatable)\n"
	      "  --threads N      delivery threads, one message each at a time (default 4)\n"
	      "  --durable NAME   the durable consumer the fleet shares (default ringmx-deliver)\n"
	      "  --batch N        messages fetched at once per thread (default 16)\n"
	      "  --ack-wait S     seconds before the stream redelivers what a consumer holds\n"
	      "                   without an answer (default 60; each session restarts it)\n",
	      f);
}

int
main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"threads", required_argument, NULL, 'T'}, {"durable", required_argument, NULL, 'D'},
	    {"batch", required_argument, NULL, 'B'},   {"ack-wait", required_argument, NULL, 'A'},
	    {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
	struct config_args args;
	char err[CONFIG_ERR_MAX];
	int c;

	memset(&args, 0, sizeof(args));
	while ((c = getopt_long(argc, argv, "c:o:h", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			args.config_path = optarg;
			break;
		case 'o':
			if (args.nsets == sizeof(args.sets) / sizeof(args.sets[0])) {
				fprintf(stderr, "ringmx-deliver: too many -o\n");
				return 2;
			}
			args.sets[args.nsets++] = optarg;
			break;
		case 'T':
			nthreads = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'D':
			durable = optarg;
			break;
		case 'B':
			batch = atoi(optarg);
			break;
		case 'A':
			ack_wait_ms = strtoll(optarg, NULL, 10) * 1000;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || nthreads < 1 || nthreads > DLV_THREADS_MAX || batch < 1 ||
	    ack_wait_ms < 1000 || batch > 1024 || durable[0] == '\0' ||
	    strpbrk(durable, ". *>") != NULL) {
		usage(stderr);
		return 2;
	}
	struct config *conf = config_load(&args, err);
	if (conf == NULL) {
		fprintf(stderr, "ringmx-deliver: %s\n", err);
		return 1;
	}
	cfg = conf;
	if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
		fprintf(stderr, "ringmx-deliver: wolfSSL_Init failed\n");
		config_free(conf);
		return 1;
	}
	if (!relay_enabled(&conf->relay)) {
		fprintf(stderr,
		        "ringmx-deliver: %s: no next hop: set relay_host or transport_maps\n",
		        conf->path[0] ? conf->path : "(defaults)");
		config_free(conf);
		return 1;
	}
	const struct jetstream_conf *jc = &conf->jetstream;
	const char *urls[CONFIG_JS_SERVERS_MAX];
	for (size_t i = 0; i < jc->nservers; i++)
		urls[i] = jc->servers[i];
	natsOptions *o = NULL;
	natsStatus s = natsOptions_Create(&o);
	if (s == NATS_OK)
		s = natsOptions_SetServers(o, urls, (int)jc->nservers);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(o, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(o, 250);
	if (s == NATS_OK && jc->creds[0] != '\0')
		s = natsOptions_SetUserCredentialsFromFiles(o, jc->creds, NULL);
	if (s == NATS_OK && jc->tls_ca[0] != '\0') {
		s = natsOptions_SetSecure(o, true);
		if (s == NATS_OK)
			s = natsOptions_LoadCATrustedCertificates(o, jc->tls_ca);
	}
	if (s != NATS_OK) {
		fprintf(stderr, "ringmx-deliver: NATS options: %s\n", natsStatus_GetText(s));
		natsOptions_Destroy(o);
		config_free(conf);
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	/* One pass over the servers per attempt (libnats' retry-on-failed-
	 * connect would keep retrying inside the call when a server answers
	 * but TLS or authentication fails); once connected it reconnects by
	 * itself. */
	for (bool logged = false; !atomic_load(&stopping);) {
		s = natsConnection_Connect(&nc, o);
		if (s == NATS_OK)
			break;
		if (!logged) {
			const char *le = nats_GetLastError(NULL);
			logf_("cannot connect to NATS: %s%s%s; retrying", natsStatus_GetText(s),
			      le != NULL && *le ? ": " : "", le != NULL ? le : "");
			logged = true;
		}
		sleep(1);
	}
	if (nc == NULL) {
		natsOptions_Destroy(o);
		config_free(conf);
		nats_CloseAndWait(2000);
		wolfSSL_Cleanup();
		return 0; /* stopped before it ever connected */
	}
	signal(SIGPIPE, SIG_IGN);
	pthread_t th[DLV_THREADS_MAX];
	for (unsigned i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, thread_main, NULL);
	logf_("consumer %s on stream %s (subject %s): %u thread%s, batch %d", durable, jc->stream,
	      jc->subject, nthreads, nthreads == 1 ? "" : "s", batch);
	int rc = 0;
	for (unsigned i = 0; i < nthreads; i++) {
		void *r = NULL;
		pthread_join(th[i], &r);
		if (r != NULL)
			rc = 1;
	}
	logf_("stopped");
	natsConnection_Destroy(nc);
	natsOptions_Destroy(o);
	nats_CloseAndWait(2000);
	config_free(conf);
	wolfSSL_Cleanup();
	return rc;
}
