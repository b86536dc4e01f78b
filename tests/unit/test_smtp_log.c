/*
 * test_smtp_log.c - the session's log lines (smtp_session.c: the message
 * line and qmgr's, the MAIL/RCPT refusal, the disconnect line) have the
 * bytes the vsnprintf/snprintf builders they replaced wrote. Those
 * builders are kept here, as they were, as the reference: random sessions
 * (control bytes, valid and invalid UTF-8, IPv6 peers, ports 0 and 65535,
 * 64-bit sizes, every counter, TLS, durations around each rounding tie,
 * text long enough to be cut anywhere) go through both, and a few golden
 * lines spell out what the comparison means.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "test_rnd.h"

#include "ringmx/smtp.h"
#include "smtp_internal.h"

/* ---- the reference: the builders as they were (smtp_session.c and
 * conn.c's log_disconnect before fmt.h) ---- */

#define REF_LOG_LINE_MAX 1536

struct ref_logbuf {
	size_t n;
	char b[REF_LOG_LINE_MAX];
};

static void
ref_put(struct ref_logbuf *l, const char *p, size_t n)
{
	bool utf8 = smtp_utf8_valid(p, n);

	for (size_t i = 0; i < n && l->n < sizeof l->b; i++) {
		unsigned char c = (unsigned char)p[i];

		l->b[l->n++] = (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) ? '?' : (char)c;
	}
}

static void ref_fmt(struct ref_logbuf *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
ref_fmt(struct ref_logbuf *l, const char *fmt, ...)
{
	va_list ap;
	int len;

	if (l->n >= sizeof l->b)
		return;
	va_start(ap, fmt);
	len = vsnprintf(l->b + l->n, sizeof l->b - l->n, fmt, ap);
	va_end(ap);
	if (len > 0)
		l->n += (size_t)len < sizeof l->b - l->n ? (size_t)len : sizeof l->b - l->n - 1;
}

static void
ref_client(struct ref_logbuf *l, const struct smtp_session *s)
{
	if (s->peer != NULL)
		ref_fmt(l, "[%s]:%u", s->peer->addr_text, (unsigned)s->peer->port);
	else
		ref_fmt(l, "[unknown]");
}

static void
ref_reject(const struct smtp_session *s, const char *verb, const char *text, size_t len,
           const char *addr, size_t addr_len, struct ref_logbuf *l)
{
	l->n = 0;
	ref_fmt(l, "NOQUEUE: reject: %s from ", verb);
	ref_client(l, s);
	ref_fmt(l, ": ");
	ref_put(l, text, len - 2);
	ref_fmt(l, "; from=<");
	if (verb[0] == 'M') {
		ref_put(l, addr, addr_len);
	} else {
		ref_put(l, s->mail_from, strlen(s->mail_from));
		ref_fmt(l, "> to=<");
		ref_put(l, addr, addr_len);
	}
	ref_fmt(l, "> proto=%s helo=<", s->esmtp ? "ESMTP" : "SMTP");
	ref_put(l, s->helo, strlen(s->helo));
	ref_fmt(l, ">");
}

static void
ref_message(const struct smtp_session *s, const char *text, size_t len, bool sent,
            struct ref_logbuf *l, struct ref_logbuf *q)
{
	l->n = 0;
	ref_fmt(l, "%s: client=", s->qid);
	ref_client(l, s);
	ref_fmt(l, ", helo=<");
	ref_put(l, s->helo, strlen(s->helo));
	ref_fmt(l, ">, from=<");
	ref_put(l, s->mail_from, strlen(s->mail_from));
	ref_fmt(l, ">, nrcpt=%" PRIu32 ", size=%" PRIu64 ", status=%s (", s->tx_nrcpt, s->body.size,
	        sent ? "queued" : "rejected");
	ref_put(l, text, len - 2);
	ref_fmt(l, ")");
	q->n = 0;
	if (!sent)
		return;
	ref_fmt(q, "%s: from=<", s->qid);
	ref_put(q, s->mail_from, strlen(s->mail_from));
	ref_fmt(q, ">, size=%" PRIu64 ", nrcpt=%" PRIu32 " (queued)", s->body.size, s->tx_nrcpt);
}

struct ref_tls {
	bool done, resumed;
	char version[16];
	char cipher[64];
};

static size_t
ref_disconnect(const struct smtp_session *sess, const struct smtp_peer *peer,
               const struct ref_tls *tls, uint64_t now, uint64_t t_connect, char *line)
{
	enum { LINE = 512 };
	const struct smtp_counts *k = &sess->counts;
	size_t off =
	    (size_t)snprintf(line, LINE, "disconnect from [%s]:%u", peer->addr_text, peer->port);
	if (sess->helo[0])
		off += (size_t)snprintf(line + off, LINE - off, " helo=<%s>", sess->helo);
#define COUNT(name)                                                                                \
	if (k->name && off < LINE)                                                                 \
		off += (size_t)snprintf(line + off, LINE - off, " " #name "=%u", k->name);
	COUNT(ehlo)
	COUNT(helo)
	COUNT(mail)
	COUNT(rcpt)
	COUNT(data)
	COUNT(bdat)
	COUNT(rset)
	COUNT(noop)
	COUNT(vrfy)
	COUNT(quit)
	COUNT(unknown)
	COUNT(messages)
	COUNT(errors)
#undef COUNT
	if (tls != NULL && tls->done && off < LINE)
		off += (size_t)snprintf(line + off, LINE - off, " tls=%s/%s%s", tls->version,
		                        tls->cipher, tls->resumed ? "/resumed" : "");
	if (off < LINE)
		off += (size_t)snprintf(line + off, LINE - off, " commands=%u duration=%.3fs",
		                        k->commands, (double)(now - t_connect) / 1e9);
	return off < LINE ? off : LINE - 1;
}

/* ---- the lines as the session gives them to its log hook ---- */

struct capture {
	int n;
	enum smtp_log_role role[2];
	size_t len[2];
	char line[2][REF_LOG_LINE_MAX + 1];
};

static void
capture_hook(void *owner, enum smtp_log_role role, const char *line, size_t len)
{
	struct capture *c = owner;
	assert_true(c->n < 2);
	assert_true(len <= REF_LOG_LINE_MAX);
	c->role[c->n] = role;
	c->len[c->n] = len;
	memcpy(c->line[c->n], line, len);
	c->n++;
}

static const struct smtp_hooks hooks = {.log = capture_hook};

static void
expect_same(const char *what, const char *want, size_t wlen, const char *got, size_t glen)
{
	if (wlen != glen || memcmp(want, got, wlen) != 0)
		fail_msg("%s: want %zu bytes \"%.*s\"\n got %zu bytes \"%.*s\"", what, wlen,
		         (int)wlen, want, glen, (int)glen, got);
}

/* ---- random sessions ---- */

/* n bytes of text of one flavour: plain ASCII, valid UTF-8, or anything
 * (control bytes, DEL, lone continuations, cut sequences). nul: NUL may
 * occur (a view with a length, not a C string). */
static void
rnd_text(char *p, size_t n, bool nul)
{
	static const char *const utf8[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x93\xa7", "a"};
	unsigned flavour = (unsigned)(rnd() % 3);
	size_t i = 0;
	while (i < n) {
		if (flavour == 0) {
			p[i++] = (char)(' ' + rnd() % 95);
		} else if (flavour == 1) {
			const char *u = utf8[rnd() % 4];
			size_t k = strlen(u);
			if (i + k > n) {
				p[i++] = 'x';
				continue;
			}
			memcpy(p + i, u, k);
			i += k;
		} else {
			unsigned c = (unsigned)(rnd() % 256);
			if (c == 0 && !nul)
				c = 0x7f;
			p[i++] = (char)c;
		}
	}
}

static size_t
rnd_len(size_t max)
{
	/* Short most of the time, now and then anything up to max. */
	return rnd() % 4 == 0 ? (size_t)(rnd() % (max + 1))
	                      : (size_t)(rnd() % (max < 40 ? max + 1 : 40));
}

static const char *const addrs[] = {
    "127.0.0.1",
    "255.255.255.255",
    "unknown",
    "IPv6:::1",
    "IPv6:2001:db8::1",
    "IPv6:ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
    "IPv6:fe80::1234:5678:9abc:def0",
};

static void
rnd_session(struct smtp_session *s, struct smtp_peer *peer, struct capture *cap)
{
	memset(s, 0, sizeof *s);
	memset(peer, 0, sizeof *peer);
	snprintf(peer->addr_text, sizeof peer->addr_text, "%s", addrs[rnd() % 7]);
	static const uint16_t ports[] = {0, 1, 25, 65535, 65534, 4242};
	peer->port = rnd() % 2 ? ports[rnd() % 6] : (uint16_t)rnd();
	s->peer = rnd() % 16 == 0 ? NULL : peer;
	s->hooks = &hooks;
	s->owner = cap;
	s->esmtp = rnd() % 2;
	size_t n = rnd_len(SINK_QID_MAX - 1);
	rnd_text(s->qid, n, false);
	s->qid[n] = '\0';
	n = rnd_len(SMTP_DOMAIN_MAX);
	rnd_text(s->helo, n, false);
	s->helo[n] = '\0';
	n = rnd_len(SMTP_PATH_MAX);
	rnd_text(s->mail_from, n, false);
	s->mail_from[n] = '\0';
	static const uint32_t rcpts[] = {0, 1, 2, 100, UINT32_MAX};
	s->tx_nrcpt = rnd() % 2 ? rcpts[rnd() % 5] : (uint32_t)rnd_mag();
	static const uint64_t sizes[] = {
	    0, 1, 1023, 1024, UINT64_MAX, UINT64_C(1) << 63, UINT64_C(10000000000000000000)};
	s->body.size = rnd() % 2 ? sizes[rnd() % 7] : rnd_mag();
	uint32_t *k = &s->counts.helo;
	for (size_t i = 0; i < sizeof s->counts / sizeof *k; i++)
		k[i] = rnd() % 3 == 0 ? 0 : rnd() % 3 == 0 ? UINT32_MAX : (uint32_t)rnd_mag();
}

/* A reply as the session passes it: text and CRLF. Up to 1600 bytes, past
 * the line's cap, so that every piece after it gets cut somewhere. */
static size_t
rnd_reply(char *p)
{
	size_t n = rnd() % 3 == 0 ? (size_t)(rnd() % 1600) : (size_t)(rnd() % 80);
	rnd_text(p, n, true);
	memcpy(p + n, "\r\n", 2);
	return n + 2;
}

static void
test_message_random(void **state)
{
	(void)state;
	char text[1700];
	unsigned cut = 0;
	for (int i = 0; i < 100000; i++) {
		struct smtp_session s;
		struct smtp_peer peer;
		struct capture cap = {0};
		struct ref_logbuf l, q;
		rnd_session(&s, &peer, &cap);
		size_t len = rnd_reply(text);
		bool sent = rnd() % 2;
		ref_message(&s, text, len, sent, &l, &q);
		smtp_log_message(&s, text, len, sent);
		assert_int_equal(cap.n, sent ? 2 : 1);
		assert_int_equal(cap.role[0], SMTP_LOG_SESSION);
		expect_same("message line", l.b, l.n, cap.line[0], cap.len[0]);
		if (sent) {
			assert_int_equal(cap.role[1], SMTP_LOG_QUEUE);
			expect_same("qmgr line", q.b, q.n, cap.line[1], cap.len[1]);
		}
		cut += l.n >= REF_LOG_LINE_MAX - 1;
	}
	/* The comparison saw cut lines, not only whole ones. */
	assert_true(cut > 1000);
}

static void
test_reject_random(void **state)
{
	(void)state;
	char text[1700], addr[1700];
	unsigned cut[2] = {0, 0};
	for (int i = 0; i < 100000; i++) {
		struct smtp_session s;
		struct smtp_peer peer;
		struct capture cap = {0};
		struct ref_logbuf l;
		rnd_session(&s, &peer, &cap);
		size_t len = rnd_reply(text);
		size_t alen = rnd_len(rnd() % 8 == 0 ? sizeof addr : SMTP_PARAM_LINE_MAX);
		rnd_text(addr, alen, true);
		const char *verb = rnd() % 2 ? "MAIL" : "RCPT";
		ref_reject(&s, verb, text, len, addr, alen, &l);
		smtp_log_reject(&s, verb, text, len, addr, alen);
		assert_int_equal(cap.n, 1);
		assert_int_equal(cap.role[0], SMTP_LOG_SESSION);
		expect_same("reject line", l.b, l.n, cap.line[0], cap.len[0]);
		/* Both ways a line ends at the cap: after a formatted piece
		 * (one short of it) and in client text (at it). */
		if (l.n >= REF_LOG_LINE_MAX - 1)
			cut[l.n - (REF_LOG_LINE_MAX - 1)]++;
	}
	assert_true(cut[0] > 20 && cut[1] > 1000);
}

static void
test_disconnect_random(void **state)
{
	(void)state;
	unsigned cut = 0;
	for (int i = 0; i < 200000; i++) {
		struct smtp_session s;
		struct smtp_peer peer;
		struct capture cap = {0};
		rnd_session(&s, &peer, &cap);
		struct ref_tls tls = {.done = rnd() % 2, .resumed = rnd() % 2};
		size_t n = rnd_len(sizeof tls.version - 1);
		rnd_text(tls.version, n, false);
		tls.version[n] = '\0';
		n = rnd_len(sizeof tls.cipher - 1);
		rnd_text(tls.cipher, n, false);
		tls.cipher[n] = '\0';
		uint64_t t_connect = rnd_mag(), dur;
		switch (rnd() % 4) {
		case 0: /* near a tie of the third decimal */
			dur = (rnd_mag() >> 24) * 1000000 + 499998 + rnd() % 5;
			break;
		case 1: /* a real connection: under an hour */
			dur = rnd() % (UINT64_C(3600) * 1000000000u);
			break;
		default:
			dur = rnd_mag();
		}
		bool with_tls = rnd() % 4 != 0;
		char want[512], got[SMTP_DISCONNECT_LINE_MAX];
		size_t wlen = ref_disconnect(&s, &peer, with_tls ? &tls : NULL, t_connect + dur,
		                             t_connect, want);
		bool t = with_tls && tls.done;
		size_t glen =
		    smtp_session_disconnect_line(&s, &peer, t ? tls.version : NULL,
		                                 t ? tls.cipher : NULL, t && tls.resumed, dur, got);
		expect_same("disconnect line", want, wlen, got, glen);
		cut += wlen == sizeof want - 1;
		assert_int_equal(cap.n, 0); /* the disconnect line is the caller's to log */
	}
	assert_true(cut > 1000);
}

/* ---- golden lines ---- */

static void
session(struct smtp_session *s, struct smtp_peer *peer, struct capture *cap, const char *addr,
        uint16_t port)
{
	memset(s, 0, sizeof *s);
	memset(peer, 0, sizeof *peer);
	snprintf(peer->addr_text, sizeof peer->addr_text, "%s", addr);
	peer->port = port;
	s->peer = peer;
	s->hooks = &hooks;
	s->owner = cap;
	s->esmtp = true;
	strcpy(s->qid, "1K1RJB3K1CX01");
}

#define S(lit) lit, sizeof(lit) - 1

static void
test_golden(void **state)
{
	(void)state;
	struct smtp_session s;
	struct smtp_peer peer;
	struct capture cap = {0};

	/* Odd HELO and sender: control bytes become '?', valid UTF-8 stays,
	 * and a field that is not valid UTF-8 loses its non-ASCII bytes. */
	session(&s, &peer, &cap, "IPv6:2001:db8::1", 65535);
	strcpy(s.helo, "a\tb\x7f\xc3\xa9");
	strcpy(s.mail_from, "\xff@x");
	s.tx_nrcpt = UINT32_MAX;
	s.body.size = UINT64_MAX;
	smtp_log_message(&s, S("250 2.0.0 Ok: queued as 1K1RJB3K1CX01\r\n"), true);
	assert_int_equal(cap.n, 2);
	cap.line[0][cap.len[0]] = cap.line[1][cap.len[1]] = '\0';
	assert_string_equal(cap.line[0],
	                    "1K1RJB3K1CX01: client=[IPv6:2001:db8::1]:65535, helo=<a?b?\xc3\xa9>, "
	                    "from=<?@x>, nrcpt=4294967295, size=18446744073709551615, "
	                    "status=queued (250 2.0.0 Ok: queued as 1K1RJB3K1CX01)");
	assert_string_equal(cap.line[1], "1K1RJB3K1CX01: from=<?@x>, size=18446744073709551615, "
	                                 "nrcpt=4294967295 (queued)");

	cap.n = 0;
	session(&s, &peer, &cap, "127.0.0.1", 0);
	s.esmtp = false;
	strcpy(s.helo, "c");
	strcpy(s.mail_from, "a@b");
	smtp_log_reject(&s, "RCPT", S("550 5.1.1 no\r\n"), S("u\r@d"));
	assert_int_equal(cap.n, 1);
	cap.line[0][cap.len[0]] = '\0';
	assert_string_equal(cap.line[0], "NOQUEUE: reject: RCPT from [127.0.0.1]:0: 550 5.1.1 no; "
	                                 "from=<a@b> to=<u?@d> proto=SMTP helo=<c>");

	/* A cut inside a formatted piece stops one byte short of the cap
	 * (vsnprintf's NUL), and the client text after it takes that byte. */
	char text[1490];
	memset(text, 'x', 1487);
	memcpy(text + 1487, "\r\n", 2);
	cap.n = 0;
	session(&s, &peer, &cap, "127.0.0.1", 25);
	smtp_log_reject(&s, "MAIL", text, 1489, S("Zed"));
	assert_int_equal(cap.n, 1);
	assert_int_equal(cap.len[0], 1536);
	assert_memory_equal(cap.line[0] + 1536 - 12, "xxxxxx; froZ", 12);

	/* Every counter, TLS resumed, a duration that is a tie the double
	 * holds exactly (0.0625 s: printf rounds it to even, 0.062). */
	session(&s, &peer, &cap, "IPv6:::1", 25);
	strcpy(s.helo, "h.example");
	uint32_t *k = &s.counts.helo;
	for (size_t i = 0; i < sizeof s.counts / sizeof *k; i++)
		k[i] = (uint32_t)i + 1;
	char b[SMTP_DISCONNECT_LINE_MAX + 1];
	size_t n = smtp_session_disconnect_line(&s, &peer, "TLSv1.3", "TLS_AES_128_GCM_SHA256",
	                                        true, 62500000, b);
	b[n] = '\0';
	assert_string_equal(b,
	                    "disconnect from [IPv6:::1]:25 helo=<h.example> ehlo=2 helo=1 mail=3 "
	                    "rcpt=4 data=5 bdat=6 rset=7 noop=8 vrfy=9 quit=10 unknown=11 "
	                    "messages=13 errors=14 tls=TLSv1.3/TLS_AES_128_GCM_SHA256/resumed "
	                    "commands=12 duration=0.062s");
	/* Nothing counted, no HELO, no TLS; 0.0625 s and a nanosecond. */
	memset(&s.counts, 0, sizeof s.counts);
	s.helo[0] = '\0';
	n = smtp_session_disconnect_line(&s, &peer, NULL, NULL, false, 62500001, b);
	b[n] = '\0';
	assert_string_equal(b, "disconnect from [IPv6:::1]:25 commands=0 duration=0.063s");
	n = smtp_session_disconnect_line(&s, &peer, NULL, NULL, false, 1999500001, b);
	b[n] = '\0';
	assert_string_equal(b, "disconnect from [IPv6:::1]:25 commands=0 duration=2.000s");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_golden),
	    cmocka_unit_test(test_message_random),
	    cmocka_unit_test(test_reject_random),
	    cmocka_unit_test(test_disconnect_random),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
