/*
 * test_smtp_session.c - session behaviour that golden dialogues cannot state
 * well: the exact Received: header, a 1000-command pipelined burst through a
 * small output buffer, carry bounds, writes after close, timers with
 * disabled timeouts, late verdicts. Uses the recording sink.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ringmx/smtp.h"
#include "smtp_test_sink.h"

#define NS    1000000000ull
#define WALL0 1795870385 /* Sat, 28 Nov 2026 12:53:05 +0000 */
#define OUT_CAP 4096

static const char *const domains[] = {"example.test"};

struct fx {
	struct smtp_conf conf;
	struct smtp_peer peer;
	struct smtp_out out;
	struct ringmx_stats st;
	struct sink sink;
	struct smtp_session s;
	struct tsink ts;
	char outbuf[OUT_CAP];
	size_t tlen;
	char transcript[256 * 1024];
};

static struct fx *
fx_new(void)
{
	struct fx *f = calloc(1, sizeof *f);

	snprintf(f->conf.hostname, sizeof f->conf.hostname, "mx.example.test");
	f->conf.domains = domains;
	f->conf.ndomains = 1;
	f->conf.message_size_limit = 1000000;
	f->conf.error_limit = 10;
	f->conf.command_timeout = 300 * NS;
	snprintf(f->peer.addr_text, sizeof f->peer.addr_text, "192.0.2.1");
	f->peer.port = 25;
	f->out.buf = f->outbuf;
	f->out.cap = OUT_CAP;
	f->sink.ops = &tsink_ops;
	f->sink.self = &f->ts;
	return f;
}

static void
fx_start(struct fx *f)
{
	smtp_session_init(&f->s, &f->conf, &f->peer, &f->out, &f->sink, &tsink_hooks, &f->ts,
			  &f->st, 0, WALL0);
	smtp_session_start(&f->s);
}

static void
fx_flush(struct fx *f)
{
	assert_true(f->out.len <= f->out.cap);
	assert_true(f->tlen + f->out.len <= sizeof f->transcript);
	memcpy(f->transcript + f->tlen, f->out.buf, f->out.len);
	f->tlen += f->out.len;
	f->out.len = 0;
}

/* Feed everything as the engine would; returns the number of feed calls. */
static unsigned
fx_send(struct fx *f, const char *p, size_t n)
{
	unsigned calls = 0;

	while (n > 0) {
		size_t c = smtp_session_feed(&f->s, p, n, 0, WALL0);

		calls++;
		assert_true(c <= n);
		p += c;
		n -= c;
		fx_flush(f);
		if (smtp_session_status(&f->s) & (SMTP_ST_CLOSE | SMTP_ST_PAUSED))
			break;
	}
	return calls;
}

static void
fx_sends(struct fx *f, const char *str)
{
	fx_send(f, str, strlen(str));
}

static size_t
received_of(const struct fx *f, char *buf, size_t cap)
{
	size_t r = tsink_received_len(f->ts.data, f->ts.datalen);

	assert_true(r > 0 && r < cap);
	memcpy(buf, f->ts.data, r);
	buf[r] = '\0';
	return r;
}

static void
test_received_one_rcpt(void **state)
{
	struct fx *f = fx_new();
	char rec[1024];

	(void)state;
	fx_start(f);
	fx_sends(f, "EHLO client.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@example.test>\r\n");
	fx_sends(f, "DATA\r\n");
	received_of(f, rec, sizeof rec);
	assert_string_equal(rec, "Received: from client.example ([192.0.2.1])\r\n"
				 "\tby mx.example.test (ringmx) with ESMTP id Q0001\r\n"
				 "\tfor <b@example.test>; Sat, 28 Nov 2026 12:53:05 +0000\r\n");
	free(f);
}

static void
test_received_many_rcpts_helo_v6(void **state)
{
	struct fx *f = fx_new();
	char rec[1024];

	(void)state;
	snprintf(f->peer.addr_text, sizeof f->peer.addr_text, "IPv6:2001:db8::1");
	fx_start(f);
	fx_sends(f, "HELO h\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n");
	fx_sends(f, "DATA\r\n");
	received_of(f, rec, sizeof rec);
	assert_string_equal(rec, "Received: from h ([IPv6:2001:db8::1])\r\n"
				 "\tby mx.example.test (ringmx) with SMTP id Q0001;\r\n"
				 "\tSat, 28 Nov 2026 12:53:05 +0000\r\n");
	free(f);
}

static void
test_received_utf8_bdat(void **state)
{
	struct fx *f = fx_new();
	char rec[1024];

	(void)state;
	fx_start(f);
	fx_sends(f, "EHLO h\r\nMAIL FROM:<\xc3\xa9@c.example> SMTPUTF8\r\n"
		    "RCPT TO:<\xc3\xa9@example.test>\r\nBDAT 3\r\nab");
	/* The header precedes the first chunk's octets. */
	assert_int_equal(f->ts.datalen, tsink_received_len(f->ts.data, f->ts.datalen) + 2);
	fx_sends(f, "c");
	received_of(f, rec, sizeof rec);
	assert_string_equal(rec, "Received: from h ([192.0.2.1])\r\n"
				 "\tby mx.example.test (ringmx) with UTF8SMTP id Q0001\r\n"
				 "\tfor <\xc3\xa9@example.test>; Sat, 28 Nov 2026 12:53:05 +0000\r\n");
	assert_non_null(strstr(f->transcript, "250 2.0.0 Ok: 3 octets received\r\n"));
	free(f);
}

/* 1000 pipelined RCPTs in one buffer: the session pauses for OUTFULL and
 * resumes; every command gets exactly one reply. */
static void
test_burst_1000_rcpt(void **state)
{
	static char burst[64 * 1024];
	struct fx *f = fx_new();
	size_t n = 0;
	unsigned calls;

	(void)state;
	f->conf.recipient_limit = 0;
	fx_start(f);
	fx_sends(f, "EHLO h\r\nMAIL FROM:<a@c.example>\r\n");
	f->tlen = 0;
	for (int i = 0; i < 1000; i++)
		n += (size_t)snprintf(burst + n, sizeof burst - n, "RCPT TO:<u%d@example.test>\r\n", i);
	calls = fx_send(f, burst, n);
	assert_true(calls > 1); /* OUTFULL happened */
	assert_int_equal(f->tlen, 1000 * strlen("250 2.1.5 Ok\r\n"));
	assert_int_equal(f->st.rcpt_accepted, 1000);
	assert_int_equal(f->s.tx_nrcpt, 1000);
	free(f);
}

static void
test_outfull_status(void **state)
{
	struct fx *f = fx_new();
	size_t c;

	(void)state;
	f->out.cap = SMTP_OUT_MIN + 20;
	fx_start(f);
	fx_flush(f);
	c = smtp_session_feed(&f->s, "NOOP\r\nNOOP\r\nNOOP\r\n", 18, 0, WALL0);
	assert_int_equal(c, 12); /* two replies fit before room < SMTP_OUT_MIN */
	assert_true(smtp_session_status(&f->s) & SMTP_ST_OUTFULL);
	assert_int_equal(smtp_session_feed(&f->s, "NOOP\r\n", 6, 0, WALL0), 0);
	fx_flush(f);
	assert_false(smtp_session_status(&f->s) & SMTP_ST_OUTFULL);
	assert_int_equal(smtp_session_feed(&f->s, "NOOP\r\n", 6, 0, WALL0), 6);
	free(f);
}

/* A line that never ends, fed one byte at a time, never grows the carry
 * past its bound and gets exactly one reply when the CRLF comes. */
static void
test_carry_bound(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	fx_start(f);
	fx_flush(f);
	f->tlen = 0;
	for (int i = 0; i < 5000; i++) {
		assert_int_equal(smtp_session_feed(&f->s, "x", 1, 0, WALL0), 1);
		assert_true(f->s.carry_len <= SMTP_CARRY_MAX);
	}
	assert_int_equal(f->out.len, 0);
	fx_sends(f, "\r\nNOOP\r\n");
	f->transcript[f->tlen] = '\0';
	assert_string_equal(f->transcript, "500 5.5.0 Error: line too long\r\n250 2.0.0 Ok\r\n");
	assert_int_equal(f->st.line_too_long, 1);
	free(f);
}

static void
test_closed_consumes_all(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	fx_start(f);
	fx_sends(f, "QUIT\r\n");
	fx_flush(f);
	assert_int_equal(smtp_session_status(&f->s), SMTP_ST_CLOSE);
	assert_int_equal(smtp_session_feed(&f->s, "NOOP\r\nNOOP\r\n", 12, 0, WALL0), 12);
	assert_int_equal(f->out.len, 0);
	smtp_session_shutdown(&f->s, true);
	assert_false(smtp_session_tick(&f->s, UINT64_MAX));
	assert_int_equal(f->out.len, 0);
	free(f);
}

static void
test_timers_disabled(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	f->conf.command_timeout = 0;
	fx_start(f);
	assert_int_equal(smtp_session_deadline(&f->s), UINT64_MAX);
	assert_false(smtp_session_tick(&f->s, UINT64_MAX - 1));
	f->conf.session_timeout = 10 * NS;
	assert_int_equal(smtp_session_deadline(&f->s), 10 * NS);
	free(f);
}

/* The 421 of a timeout is written only whole; without room the session
 * just closes. */
static void
test_tick_without_room(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	f->conf.greeting_timeout = 5 * NS;
	fx_start(f);
	f->out.len = f->out.cap - 10;
	assert_true(smtp_session_tick(&f->s, 5 * NS));
	assert_int_equal(f->out.len, f->out.cap - 10);
	assert_int_equal(smtp_session_status(&f->s), SMTP_ST_CLOSE);
	assert_int_equal(f->st.timeouts, 1);
	free(f);
}

static void
test_late_verdict_ignored(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	fx_start(f);
	fx_flush(f);
	smtp_session_verdict(&f->s, 0, 0);
	assert_int_equal(f->out.len, 0);
	free(f);
}

/* Replace the configuration mid-session (SIGHUP). */
static void
test_set_conf(void **state)
{
	struct fx *f = fx_new();
	struct smtp_conf c2;
	static const char *const d2[] = {"new.test"};

	(void)state;
	fx_start(f);
	c2 = f->conf;
	c2.domains = d2;
	smtp_session_set_conf(&f->s, &c2);
	f->tlen = 0;
	fx_flush(f);
	f->tlen = 0;
	fx_sends(f, "HELO h\r\nMAIL FROM:<>\r\nRCPT TO:<a@new.test>\r\nRCPT TO:<a@example.test>\r\n");
	f->transcript[f->tlen] = '\0';
	assert_string_equal(f->transcript, "250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
					   "550 5.7.1 <a@example.test>: Relay access denied\r\n");
	free(f);
}


/* After STARTTLS and the handshake, Received: says ESMTPS and names the
 * TLS version and cipher (RFC 3848; Postfix's "(using ...)" comment). */
static void
test_received_tls(void **state)
{
	struct fx *f = fx_new();
	char rec[1024];

	(void)state;
	fx_start(f);
	smtp_session_set_tls_policy(&f->s, true, false);
	fx_sends(f, "EHLO client.example\r\nSTARTTLS\r\n");
	assert_true(smtp_session_status(&f->s) & SMTP_ST_STARTTLS);
	smtp_session_tls_started(&f->s, "TLSv1.3", "TLS_AES_256_GCM_SHA384", 0);
	assert_false(smtp_session_status(&f->s) & SMTP_ST_STARTTLS);
	assert_string_equal(f->s.helo, "");
	fx_sends(f, "EHLO client.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@example.test>\r\n");
	fx_sends(f, "DATA\r\n");
	received_of(f, rec, sizeof rec);
	assert_string_equal(rec, "Received: from client.example ([192.0.2.1])\r\n"
				 "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
				 "\tby mx.example.test (ringmx) with ESMTPS id Q0001\r\n"
				 "\tfor <b@example.test>; Sat, 28 Nov 2026 12:53:05 +0000\r\n");
	free(f);
}

/* Implicit TLS with SMTPUTF8: UTF8SMTPS; HELO over TLS: SMTPS. */
static void
test_received_tls_utf8_and_helo(void **state)
{
	struct fx *f = fx_new();
	char rec[1024];

	(void)state;
	smtp_session_init(&f->s, &f->conf, &f->peer, &f->out, &f->sink, &tsink_hooks, &f->ts,
			  &f->st, 0, WALL0);
	smtp_session_tls_started(&f->s, "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 0);
	smtp_session_start(&f->s);
	fx_sends(f, "EHLO h\r\nMAIL FROM:<\xc3\xa9@c.example> SMTPUTF8\r\n"
		    "RCPT TO:<b@example.test>\r\nDATA\r\n");
	received_of(f, rec, sizeof rec);
	assert_non_null(strstr(rec, "\t(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256)\r\n"
				    "\tby mx.example.test (ringmx) with UTF8SMTPS id Q0001\r\n"));
	/* EHLO over TLS offers no STARTTLS even with the policy on. */
	smtp_session_set_tls_policy(&f->s, true, false);
	fx_sends(f, ".\r\n");
	f->tlen = 0;
	f->ts.datalen = 0; /* the second message's Received: */
	fx_sends(f, "EHLO h\r\n");
	f->transcript[f->tlen] = '\0';
	assert_non_null(strstr(f->transcript, "250 CHUNKING"));
	assert_null(strstr(f->transcript, "STARTTLS"));
	fx_sends(f, "HELO h\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@example.test>\r\n"
		    "RCPT TO:<c@example.test>\r\nDATA\r\n");
	received_of(f, rec, sizeof rec);
	assert_non_null(strstr(rec, "with SMTPS id Q0002;"));
	free(f);
}

/* CVE-2011-0411: what follows STARTTLS in the same feed is discarded and
 * counted; later feeds before the handshake are consumed and ignored. */
static void
test_starttls_injection(void **state)
{
	struct fx *f = fx_new();
	static const char burst[] = "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x@evil.example>\r\nNOOP\r\n";

	(void)state;
	fx_start(f);
	smtp_session_set_tls_policy(&f->s, true, false);
	f->tlen = 0;
	assert_int_equal(smtp_session_feed(&f->s, burst, sizeof burst - 1, 0, WALL0), sizeof burst - 1);
	fx_flush(f);
	f->transcript[f->tlen] = '\0';
	assert_non_null(strstr(f->transcript, "250 CHUNKING\r\n220 2.0.0 Ready to start TLS\r\n"));
	assert_null(strstr(f->transcript + 300, "250 2.0.0 Ok"));
	assert_int_equal(f->st.starttls_injection_discarded, 1);
	assert_int_equal(f->s.counts.mail, 0);
	assert_int_equal(f->s.counts.noop, 0);
	assert_int_equal(smtp_session_feed(&f->s, "NOOP\r\n", 6, 0, WALL0), 6);
	assert_int_equal(f->out.len, 0);
	assert_int_equal(f->s.counts.noop, 0);
	assert_int_equal(f->ts.nopen, 0);
	assert_true(smtp_session_status(&f->s) & SMTP_ST_STARTTLS);
	free(f);
}

/* ---- policy hook (struct smtp_hooks.check) ---- */

struct pol {
	int res[3];        /* answer per smtp_check_point */
	const char *text;  /* reply for SMTP_CHECK_REJECT */
	unsigned asked[3];
	unsigned cancels;
	char last[300];
};

static struct pol pol;

static int
pol_check(void *owner, enum smtp_check_point what, const char *addr, size_t len,
	  struct smtp_check_reply *r)
{
	(void)owner;
	pol.asked[what]++;
	snprintf(pol.last, sizeof pol.last, "%.*s", (int)len, addr != NULL ? addr : "");
	if (pol.res[what] == SMTP_CHECK_REJECT)
		r->len = (size_t)snprintf(r->text, sizeof r->text, "%s", pol.text);
	return pol.res[what];
}

static void
pol_cancel(void *owner)
{
	(void)owner;
	pol.cancels++;
}

static const struct smtp_hooks pol_hooks = {.check = pol_check, .check_cancel = pol_cancel};

static void
fx_start_pol(struct fx *f)
{
	memset(&pol, 0, sizeof pol);
	smtp_session_init(&f->s, &f->conf, &f->peer, &f->out, &f->sink, &pol_hooks, &f->ts,
			  &f->st, 0, WALL0);
	smtp_session_start(&f->s);
}

static bool
has(const struct fx *f, const char *needle)
{
	return memmem(f->transcript, f->tlen, needle, strlen(needle)) != NULL;
}

static void
test_policy_sync(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	fx_start_pol(f);
	pol.res[SMTP_CHECK_RCPT] = SMTP_CHECK_REJECT;
	pol.text = "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown\r\n";
	fx_sends(f, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@example.test>\r\n"
		    "RCPT TO:<x@elsewhere.test>\r\n");
	assert_true(has(f, "250 2.1.0 Ok\r\n550 5.1.1 <nobody@example.test>: Recipient address "
			   "rejected: User unknown\r\n550 5.7.1"));
	/* the foreign domain was refused before the policy was asked */
	assert_int_equal(pol.asked[SMTP_CHECK_RCPT], 1);
	assert_string_equal(pol.last, "nobody@example.test");
	assert_int_equal(f->st.rcpt_accepted, 0);
	/* a 421 from the policy ends the session */
	pol.res[SMTP_CHECK_RCPT] = SMTP_CHECK_OK;
	pol.res[SMTP_CHECK_MAIL] = SMTP_CHECK_REJECT;
	pol.text = "421 4.7.0 mx.example.test Error: too many connections from 192.0.2.1\r\n";
	fx_sends(f, "RSET\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n");
	assert_true(has(f, "250 2.0.0 Ok\r\n421 4.7.0 mx.example.test Error: too many"));
	assert_false(has(f, "2.0.0 Ok\r\n421 4.7.0 mx.example.test Error: too many connections from "
			    "192.0.2.1\r\n250"));
	assert_true(smtp_session_status(&f->s) & SMTP_ST_CLOSE);
	assert_int_equal(pol.cancels, 0);
	free(f);
}

static void
test_policy_pending(void **state)
{
	struct fx *f = fx_new();
	struct smtp_check_reply r;

	(void)state;
	fx_start_pol(f);
	pol.res[SMTP_CHECK_RCPT] = SMTP_CHECK_PENDING;
	fx_sends(f, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u1@example.test>\r\n"
		    "RCPT TO:<u2@example.test>\r\n");
	/* paused after the first RCPT: the second is not read yet */
	assert_true(smtp_session_status(&f->s) & SMTP_ST_PAUSED);
	assert_int_equal(pol.asked[SMTP_CHECK_RCPT], 1);
	smtp_session_check_done(&f->s, SMTP_CHECK_OK, NULL, NS);
	fx_flush(f);
	assert_true(has(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"));
	assert_false(smtp_session_status(&f->s) & SMTP_ST_PAUSED);
	fx_sends(f, "RCPT TO:<u2@example.test>\r\n");
	assert_string_equal(pol.last, "u2@example.test");
	r.len = (size_t)snprintf(r.text, sizeof r.text,
				 "450 4.1.1 <u2@example.test>: Recipient address rejected: "
				 "unverified address: timeout\r\n");
	smtp_session_check_done(&f->s, SMTP_CHECK_REJECT, &r, NS);
	fx_flush(f);
	assert_true(has(f, "250 2.1.5 Ok\r\n450 4.1.1 <u2@example.test>"));
	assert_int_equal(f->st.rcpt_accepted, 1);
	/* an answer nobody waits for is ignored */
	smtp_session_check_done(&f->s, SMTP_CHECK_OK, NULL, NS);
	assert_int_equal(f->out.len, 0);
	/* a pending check is cancelled when the session times out */
	fx_sends(f, "RCPT TO:<u3@example.test>\r\n");
	assert_true(smtp_session_status(&f->s) & SMTP_ST_PAUSED);
	assert_true(smtp_session_tick(&f->s, 400 * NS));
	assert_int_equal(pol.cancels, 1);
	smtp_session_check_done(&f->s, SMTP_CHECK_OK, NULL, 401 * NS);
	fx_flush(f);
	assert_false(has(f, "u3"));
	assert_int_equal(f->st.rcpt_accepted, 1);
	free(f);
}

static void
test_policy_starttls(void **state)
{
	struct fx *f = fx_new();

	(void)state;
	f->conf.starttls = true;
	fx_start_pol(f);
	pol.res[SMTP_CHECK_STARTTLS] = SMTP_CHECK_REJECT;
	pol.text = "421 4.7.0 mx.example.test Error: too many TLS handshakes from 192.0.2.1\r\n";
	fx_sends(f, "EHLO c\r\nSTARTTLS\r\n");
	assert_true(has(f, "421 4.7.0 mx.example.test Error: too many TLS handshakes"));
	assert_false(has(f, "220 2.0.0"));
	assert_true(smtp_session_status(&f->s) & SMTP_ST_CLOSE);
	free(f);
}

/* MAIL may wait too (a DNSBL verdict due, issue 13): paused with its
 * parameters kept, answered OK (250 and the transaction opens), asked
 * again (SMTP_CHECK_PENDING), or refused with 521, which ends the session. */
static void
test_policy_pending_mail(void **state)
{
	struct fx *f = fx_new();
	struct smtp_check_reply r;

	(void)state;
	fx_start_pol(f);
	pol.res[SMTP_CHECK_MAIL] = SMTP_CHECK_PENDING;
	fx_sends(f, "EHLO c\r\nMAIL FROM:<a@b.test> SIZE=100\r\nRCPT TO:<u1@example.test>\r\n");
	assert_true(smtp_session_status(&f->s) & SMTP_ST_PAUSED);
	assert_false(has(f, "250 2.1.0 Ok"));
	assert_int_equal(f->ts.nopen, 0);
	/* "ask again": still pending, then OK */
	smtp_session_check_done(&f->s, SMTP_CHECK_PENDING, NULL, NS);
	assert_int_equal(pol.asked[SMTP_CHECK_MAIL], 2);
	assert_true(smtp_session_status(&f->s) & SMTP_ST_PAUSED);
	pol.res[SMTP_CHECK_MAIL] = SMTP_CHECK_OK;
	smtp_session_check_done(&f->s, SMTP_CHECK_PENDING, NULL, NS);
	assert_int_equal(pol.asked[SMTP_CHECK_MAIL], 3);
	assert_string_equal(pol.last, "a@b.test");
	fx_flush(f);
	assert_true(has(f, "250 2.1.0 Ok\r\n"));
	assert_int_equal(f->ts.nopen, 1);
	assert_false(smtp_session_status(&f->s) & SMTP_ST_PAUSED);
	fx_sends(f, "RCPT TO:<u1@example.test>\r\nRSET\r\n");
	assert_true(has(f, "250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n"));
	/* refused later with 521: logged, the session ends */
	pol.res[SMTP_CHECK_MAIL] = SMTP_CHECK_PENDING;
	fx_sends(f, "MAIL FROM:<c@d.test>\r\n");
	r.len = (size_t)snprintf(r.text, sizeof r.text,
				 "521 5.7.1 Service unavailable; client [192.0.2.1] blocked using "
				 "bl.test\r\n");
	smtp_session_check_done(&f->s, SMTP_CHECK_REJECT, &r, NS);
	fx_flush(f);
	assert_true(has(f, "250 2.0.0 Ok\r\n521 5.7.1 Service unavailable"));
	assert_true(smtp_session_status(&f->s) & SMTP_ST_CLOSE);
	assert_int_equal(f->ts.nopen, 1);
	free(f);
}

/* client_access REJECT (issue 13): 554 instead of the 220, then 503 5.5.1
 * to everything but QUIT (RFC 5321 3.1). */
static void
test_start_denied(void **state)
{
	struct fx *f = fx_new();
	struct smtp_check_reply r;

	(void)state;
	memset(&pol, 0, sizeof pol);
	smtp_session_init(&f->s, &f->conf, &f->peer, &f->out, &f->sink, &pol_hooks, &f->ts,
			  &f->st, 0, WALL0);
	r.len = (size_t)snprintf(r.text, sizeof r.text, "554 5.7.1 Go away\r\n");
	smtp_session_start_denied(&f->s, &r);
	fx_sends(f, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\nQUIT\r\n");
	assert_true(has(f, "554 5.7.1 Go away\r\n503 5.5.1 Error: access denied\r\n"
			   "503 5.5.1 Error: access denied\r\n503 5.5.1 Error: access denied\r\n"
			   "221 2.0.0 Bye\r\n"));
	assert_false(has(f, "220 "));
	assert_int_equal(pol.asked[SMTP_CHECK_MAIL], 0);
	assert_int_equal(f->ts.nopen, 0);
	assert_true(smtp_session_status(&f->s) & SMTP_ST_CLOSE);
	free(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_received_one_rcpt),
		cmocka_unit_test(test_received_many_rcpts_helo_v6),
		cmocka_unit_test(test_received_utf8_bdat),
		cmocka_unit_test(test_burst_1000_rcpt),
		cmocka_unit_test(test_outfull_status),
		cmocka_unit_test(test_carry_bound),
		cmocka_unit_test(test_closed_consumes_all),
		cmocka_unit_test(test_timers_disabled),
		cmocka_unit_test(test_tick_without_room),
		cmocka_unit_test(test_late_verdict_ignored),
		cmocka_unit_test(test_set_conf),
		cmocka_unit_test(test_received_tls),
		cmocka_unit_test(test_received_tls_utf8_and_helo),
		cmocka_unit_test(test_starttls_injection),
		cmocka_unit_test(test_policy_sync),
		cmocka_unit_test(test_policy_pending),
		cmocka_unit_test(test_policy_starttls),
		cmocka_unit_test(test_policy_pending_mail),
		cmocka_unit_test(test_start_denied),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
