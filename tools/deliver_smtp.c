/*
 * deliver_smtp.c - one message to one next hop (deliver.h): connect to the
 * hop's addresses in order, then drive the relay's SMTP/LMTP client core
 * (engine/smtp/smtp_client.c) over a blocking socket, each wait bounded by
 * poll() with the relay's timeouts. The core writes every command and reads
 * every reply; this file only moves bytes and records the results. STARTTLS
 * (relay_tls) goes through the relay's own wolfSSL glue over memory I/O
 * (engine/tls/relay_tls.c): one TLS code path for the relay and for this.
 *
 * Ownership: everything lives on the caller's stack for one session.
 */
#include "deliver.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include "relay_tls.h"
#include "smtp_client.h"

struct sess {
	struct smtpc c;
	struct smtpc_out out;
	char outbuf[64 << 10];
	int fd;
	struct dmsg *m;
	const uint32_t *idx;
	struct smtpc_tx tx;
	struct smtpc_rcpt r[DLV_RCPT_MAX];
	const uint8_t *span; /* SMTPC_EV_BODY: due after the output */
	size_t span_len;
	bool done, closed;
	bool tls_wanted, tls_verify; /* SMTPC_EV_TLS */
	bool tls_on;
	struct relay_tls_conn tls;
};

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
set_result(struct dlv_rcpt *r, const struct smtpc_reply *rep)
{
	int code = rep->code;

	r->code = code;
	r->st = code >= 200 && code < 300   ? DLV_SENT
	        : code >= 500 && code < 600 ? DLV_BOUNCED
	                                    : DLV_DEFERRED;
	snprintf(r->enh, sizeof(r->enh), "%.*s", (int)(rep->enh_len < 15 ? rep->enh_len : 15),
	         rep->enh);
	snprintf(r->text, sizeof(r->text), "%.*s", (int)rep->text_len, rep->text);
}

static void
on_event(void *arg, const struct smtpc_event *ev)
{
	struct sess *s = arg;

	switch (ev->type) {
	case SMTPC_EV_BODY:
		s->span = ev->body;
		s->span_len = ev->body_len;
		return;
	case SMTPC_EV_RCPT:
		set_result(&s->m->rcpt[s->idx[ev->rcpt]], &ev->reply);
		return;
	case SMTPC_EV_TLS:
		s->tls_wanted = true;
		s->tls_verify = ev->verify;
		return;
	case SMTPC_EV_TX:
		s->done = true;
		smtpc_quit(&s->c);
		return;
	case SMTPC_EV_DEFER:
		/* Before READY: the recipients' results come as RCPT events
		 * too (451 4.4.2 ...) when the transaction was submitted. */
		return;
	case SMTPC_EV_CLOSE:
		s->closed = true;
		return;
	default:
		return;
	}
}

static const struct smtpc_ops ops = {.event = on_event};

/* Write all of p with a deadline; false on error or timeout. */
static bool
send_all(int fd, const void *p, size_t n, uint64_t tmo_ns)
{
	const char *b = p;
	uint64_t end = mono_ns() + tmo_ns;

	while (n > 0) {
		ssize_t w = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			b += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			return false;
		uint64_t now = mono_ns();
		if (now >= end)
			return false;
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		poll(&pfd, 1, (int)((end - now) / 1000000u) + 1);
	}
	return true;
}

/* The TLS records wolfSSL wrote, out to the socket. */
static bool
flush_tls(struct sess *s, uint64_t tmo_ns)
{
	size_t n = s->tls.io.out_len;
	if (n == 0)
		return true;
	if (!send_all(s->fd, s->tls.cout, n, tmo_ns))
		return false;
	tls_io_sent(&s->tls.io, n);
	return true;
}

/* Plaintext to the next hop: as it is, or through TLS. */
static bool
send_plain(struct sess *s, const void *p, size_t n, uint64_t tmo_ns)
{
	const char *b = p;
	char err[160];

	if (!s->tls_on)
		return send_all(s->fd, p, n, tmo_ns);
	while (n > 0) {
		size_t k = tls_io_room(&s->tls.io);
		if (k == 0) {
			if (!flush_tls(s, tmo_ns))
				return false;
			continue;
		}
		if (k > n)
			k = n;
		if (relay_tls_write(&s->tls, b, k, err, sizeof(err)) < 0)
			return false;
		b += k;
		n -= k;
	}
	return flush_tls(s, tmo_ns);
}

/* Ciphertext until the handshake ends; 1 done, -1 failed (why set). */
static int
handshake(struct sess *s, uint64_t tmo_ns, char *why, size_t cap)
{
	for (;;) {
		int r = relay_tls_handshake(&s->tls, why, cap);
		if (!flush_tls(s, tmo_ns)) {
			snprintf(why, cap, "send failed or timed out during the TLS handshake");
			return -1;
		}
		if (r != 0)
			return r;
		struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
		if (poll(&pfd, 1, (int)(tmo_ns / 1000000u)) <= 0) {
			snprintf(why, cap, "timeout during the TLS handshake");
			return -1;
		}
		ssize_t k = recv(s->fd, s->tls.cin + s->tls.cin_len, RELAY_TLS_CIN - s->tls.cin_len,
		                 MSG_DONTWAIT);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
			snprintf(why, cap, "connection closed during the TLS handshake");
			return -1;
		}
		if (k > 0)
			s->tls.cin_len += (uint32_t)k;
	}
}

static int
connect_one(const struct relay_hop_addr *a, uint64_t tmo_ns)
{
	int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)&a->sa, a->len) == 0)
		return fd;
	if (errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		return -e;
	}
	struct pollfd pfd = {.fd = fd, .events = POLLOUT};
	int r = poll(&pfd, 1, (int)(tmo_ns / 1000000u));
	int err = 0;
	socklen_t l = sizeof(err);
	if (r <= 0) {
		close(fd);
		return r == 0 ? -ETIMEDOUT : -errno;
	}
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
	if (err != 0) {
		close(fd);
		return -err;
	}
	return fd;
}

static void
defer_all(struct dmsg *m, const uint32_t *idx, uint32_t n, const char *why)
{
	for (uint32_t i = 0; i < n; i++) {
		struct dlv_rcpt *r = &m->rcpt[idx[i]];
		r->st = DLV_DEFERRED;
		r->code = 451;
		snprintf(r->enh, sizeof(r->enh), "4.4.1");
		snprintf(r->text, sizeof(r->text), "%s", why);
	}
}

static enum smtpc_tls
tls_policy(const struct relay_conf *rc, bool lmtp_unix)
{
	if (lmtp_unix)
		return SMTPC_TLS_NONE; /* as the relay: never over a unix socket */
	switch (rc->tls) {
	case RELAY_TLS_MAY:
		return SMTPC_TLS_MAY;
	case RELAY_TLS_ENCRYPT:
		return SMTPC_TLS_ENCRYPT;
	case RELAY_TLS_VERIFY:
		return SMTPC_TLS_VERIFY;
	default:
		return SMTPC_TLS_NONE;
	}
}

static __thread struct relay_tls_ctx *tctx;
static __thread bool tctx_tried;

void
dlv_thread_end(void)
{
	relay_tls_ctx_free(tctx);
	tctx = NULL;
#if defined(HAVE_ECC) && defined(FP_ECC)
	/* Debian's wolfSSL caches ECC tables per thread (as tls_thread_fini). */
	wc_ecc_fp_free();
#endif
}

void
dlv_hop(const struct relay_conf *rc, const struct relay_hop_conf *hop, const char *helo,
        struct dmsg *m, const uint32_t *idx, uint32_t n, const struct dlv_timeouts *t,
        char *relay_text, size_t relay_cap)
{
	static __thread struct sess s; /* 300 KiB: not on a thread's stack */
	char why[RELAY_REPLY_TEXT_MAX] = "no address";
	int fd = -1;
	unsigned member = 0;

	relay_text[0] = '\0';
	for (unsigned i = 0; i < hop->na && fd < 0; i++) {
		fd = connect_one(&hop->a[i], t->connect_ns);
		if (fd < 0)
			snprintf(why, sizeof(why), "connect to %.300s: %.100s",
			         hop->m[hop->a[i].member].text, strerror(-fd));
		else
			member = hop->a[i].member;
	}
	if (fd < 0) {
		defer_all(m, idx, n, why);
		return;
	}
	snprintf(relay_text, relay_cap, "%s", hop->m[member].text);
	memset(&s.tx, 0, sizeof(s.tx));
	s.fd = fd;
	s.m = m;
	s.idx = idx;
	s.span = NULL;
	s.done = s.closed = false;
	s.tls_wanted = s.tls_on = false;
	s.out.buf = s.outbuf;
	s.out.len = 0;
	s.out.cap = sizeof(s.outbuf);
	bool is_unix = hop->a[0].sa.ss_family == AF_UNIX;
	struct smtpc_conf conf = {
	    .helo = helo,
	    .lmtp = hop->m[member].proto == RELAY_PROTO_LMTP,
	    .tls = tls_policy(rc, is_unix),
	};
	if (conf.tls != SMTPC_TLS_NONE && !tctx_tried) {
		char e[256];
		tctx_tried = true;
		tctx = relay_tls_ctx_new(rc, e, sizeof(e)); /* one per thread, as per worker */
		if (tctx == NULL)
			fprintf(stderr, "ringmx-deliver: %s\n", e);
	}
	if (conf.tls != SMTPC_TLS_NONE && tctx == NULL)
		conf.tls = conf.tls == SMTPC_TLS_MAY ? SMTPC_TLS_NONE : conf.tls;
	if (smtpc_init(&s.c, &conf, &s.out, &ops, &s) < 0) {
		close(fd);
		defer_all(m, idx, n, "bad HELO name");
		return;
	}
	for (uint32_t i = 0; i < n; i++) {
		s.r[i].addr = m->rcpt[idx[i]].addr;
		s.r[i].len = m->rcpt[idx[i]].len;
		m->rcpt[idx[i]].st = DLV_PENDING;
	}
	s.tx.from = m->from;
	s.tx.from_len = m->from_len;
	s.tx.rcpt = s.r;
	s.tx.nrcpt = n;
	s.tx.body = m->body;
	s.tx.body_len = m->body_len;
	s.tx.flags = (m->utf8 ? SMTPC_TX_SMTPUTF8 : 0) | (m->eightbit ? SMTPC_TX_8BITMIME : 0);
	if (smtpc_submit(&s.c, &s.tx) < 0) {
		close(fd);
		defer_all(m, idx, n, "the client core refused the transaction");
		return;
	}
	char in[16384];
	while (!s.closed) {
		/* Output first, then a body span the core handed out. */
		if (s.out.len > 0) {
			if (!send_plain(&s, s.out.buf, s.out.len, t->reply_ns)) {
				smtpc_abort(&s.c, "send failed or timed out");
				break;
			}
			s.out.len = 0;
		}
		if (s.tls_wanted) {
			char w[200];
			s.tls_wanted = false;
			if (tctx == NULL ||
			    relay_tls_start(tctx, &s.tls, hop->m[member].host, s.tls_verify) < 0) {
				smtpc_tls_failed(&s.c, "cannot start TLS");
				continue;
			}
			if (handshake(&s, t->reply_ns, w, sizeof(w)) < 0) {
				relay_tls_end(&s.tls);
				smtpc_tls_failed(&s.c, w);
				continue;
			}
			s.tls_on = true;
			smtpc_tls_done(&s.c, true);
			continue;
		}
		if (s.span != NULL) {
			const uint8_t *p = s.span;
			s.span = NULL;
			if (!send_plain(&s, p, s.span_len, t->reply_ns)) {
				smtpc_abort(&s.c, "send failed or timed out");
				break;
			}
			smtpc_body_sent(&s.c);
			continue;
		}
		unsigned st = smtpc_status(&s.c);
		if (st & SMTPC_ST_CLOSE)
			break;
		if (st & SMTPC_ST_OUTFULL) {
			smtpc_pump(&s.c);
			continue;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int r = poll(&pfd, 1, (int)(t->reply_ns / 1000000u));
		if (r == 0) {
			char w[128];
			snprintf(w, sizeof(w), "timeout waiting for %s", smtpc_waiting_for(&s.c));
			smtpc_abort(&s.c, w);
			continue;
		}
		if (!s.tls_on) {
			ssize_t k = recv(fd, in, sizeof(in), MSG_DONTWAIT);
			if (k > 0)
				smtpc_feed(&s.c, in, (size_t)k);
			else if (k == 0 || (errno != EAGAIN && errno != EINTR))
				smtpc_abort(&s.c, k == 0 ? "connection closed by the next hop"
				                         : "connection error");
			continue;
		}
		ssize_t k = recv(fd, s.tls.cin + s.tls.cin_len, RELAY_TLS_CIN - s.tls.cin_len,
		                 MSG_DONTWAIT);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
			smtpc_abort(&s.c, k == 0 ? "connection closed by the next hop"
			                         : "connection error");
			continue;
		}
		if (k > 0)
			s.tls.cin_len += (uint32_t)k;
		long got;
		char e[160];
		while ((got = relay_tls_read(&s.tls, in, sizeof(in), e, sizeof(e))) > 0)
			smtpc_feed(&s.c, in, (size_t)got);
		if (!flush_tls(&s, t->reply_ns) || got < 0)
			smtpc_abort(&s.c, got < 0 ? e : "send failed or timed out");
	}
	if (s.out.len > 0)
		(void)send_plain(&s, s.out.buf, s.out.len, t->reply_ns);
	if (s.tls_on)
		relay_tls_end(&s.tls);
	close(fd);
	/* A session that ended before its transaction did: what has no
	 * result yet is deferred. */
	for (uint32_t i = 0; i < n; i++)
		if (m->rcpt[idx[i]].st == DLV_PENDING)
			defer_all(m, &idx[i], 1, "the session ended without a result");
}
