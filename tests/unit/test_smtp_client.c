/*
 * test_smtp_client.c - unit tests of the client core's API edges
 * (engine/smtp/smtp_client.c) that the golden dialogues cannot state:
 * argument checks, re-entrancy from callbacks, limits, status bits, the
 * keyword and enhanced-status readers, a transaction's lifetime, a body
 * in pieces, re-use of a struct smtpc, and zero-copy dot-stuffing of a
 * large body (whole and cut in pieces) checked against a reference.
 *
 * Ownership: each test owns one struct harness (client, output buffer,
 * transactions) on its stack or in static storage.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp_client.h"

#define H_WIRE_MAX (2u << 20)

struct harness {
	struct smtpc c;
	struct smtpc_out out;
	struct smtpc_ops ops;
	char outbuf[4096];
	size_t wlen;
	char *wire; /* everything sent: commands and body spans */
	const uint8_t *span;
	size_t span_len, span_total;
	unsigned nspans, nrcpt_ev, ntx_ev, nclose, nready, ndefer;
	int last_code;
	/* callback behaviour */
	int (*on)(struct harness *h, const struct smtpc_event *ev);
	struct smtpc_tx *extra; /* submitted from the READY callback */
	int cb_rc[6];
	bool poison; /* scribble over a transaction once it is handed back */
};

static void
on_event(void *arg, const struct smtpc_event *ev)
{
	struct harness *h = arg;
	switch (ev->type) {
	case SMTPC_EV_BODY:
		assert_null(h->span);
		h->span = ev->body;
		h->span_len = ev->body_len;
		break;
	case SMTPC_EV_RCPT:
		h->nrcpt_ev++;
		h->last_code = ev->reply.code;
		break;
	case SMTPC_EV_TX:
		h->ntx_ev++;
		if (h->poison)
			memset(ev->tx, 0xa5, sizeof(*ev->tx));
		break;
	case SMTPC_EV_READY:
		h->nready++;
		break;
	case SMTPC_EV_DEFER:
		h->ndefer++;
		break;
	case SMTPC_EV_CLOSE:
		h->nclose++;
		break;
	default:
		break;
	}
	if (h->on != NULL)
		h->on(h, ev);
}

static void
h_init(struct harness *h, enum smtpc_tls tls, bool lmtp)
{
	memset(h, 0, sizeof(*h));
	h->wire = malloc(H_WIRE_MAX);
	assert_non_null(h->wire);
	h->out.buf = h->outbuf;
	h->out.cap = sizeof(h->outbuf);
	h->ops.event = on_event;
	struct smtpc_conf conf = {.helo = "relay.example.test", .lmtp = lmtp, .tls = tls};
	assert_int_equal(smtpc_init(&h->c, &conf, &h->out, &h->ops, h), 0);
}

static void
h_fini(struct harness *h)
{
	free(h->wire);
	h->wire = NULL;
}

/* Send the output and any body span, as a caller would. */
static void
h_drain(struct harness *h, int rc)
{
	for (;;) {
		assert_true(h->wlen + h->out.len <= H_WIRE_MAX);
		memcpy(h->wire + h->wlen, h->out.buf, h->out.len);
		h->wlen += h->out.len;
		h->out.len = 0;
		if (h->span != NULL) {
			assert_true(h->wlen + h->span_len <= H_WIRE_MAX);
			memcpy(h->wire + h->wlen, h->span, h->span_len);
			h->wlen += h->span_len;
			h->span_total += h->span_len;
			h->nspans++;
			h->span = NULL;
			rc = smtpc_body_sent(&h->c);
			continue;
		}
		if (rc == -ENOBUFS) {
			rc = smtpc_pump(&h->c);
			continue;
		}
		return;
	}
}

static void
h_feed(struct harness *h, const char *s)
{
	h_drain(h, smtpc_feed(&h->c, s, strlen(s)));
}

/* The wire since the last call equals want. */
static void
h_expect(struct harness *h, const char *want)
{
	size_t n = strlen(want);
	if (h->wlen != n || memcmp(h->wire, want, n) != 0)
		fail_msg("wire: got '%.*s', want '%s'", (int)h->wlen, h->wire, want);
	h->wlen = 0;
}

static void
h_ready(struct harness *h, const char *ehlo_reply)
{
	h_feed(h, "220 mx.example.net ESMTP\r\n");
	h_expect(h, "EHLO relay.example.test\r\n");
	h_feed(h, ehlo_reply);
	assert_int_equal(smtpc_state(&h->c), SMTPC_S_READY);
}

static struct smtpc_rcpt one_rcpt[SMTPC_TX_MAX + 1][1];

static void
tx_make(struct smtpc_tx *tx, struct smtpc_rcpt *r, const char *to, const char *body)
{
	memset(tx, 0, sizeof(*tx));
	r->addr = to;
	r->len = strlen(to);
	tx->from = "a@relay.example.test";
	tx->from_len = strlen(tx->from);
	tx->rcpt = r;
	tx->nrcpt = 1;
	tx->body = (const uint8_t *)body;
	tx->body_len = strlen(body);
}

/* ---- tests ---- */

static void
test_init_checks(void **state)
{
	(void)state;
	static struct smtpc c;
	char buf[SMTPC_CMD_MAX];
	struct smtpc_out out = {buf, 0, sizeof(buf)};
	struct smtpc_ops ops = {on_event};
	char longname[SMTPC_HELO_MAX + 2];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	const char *bad[] = {NULL, "", "a b", "a\r\nMAIL FROM:<x>", longname};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct smtpc_conf conf = {.helo = bad[i]};
		assert_int_equal(smtpc_init(&c, &conf, &out, &ops, NULL), -EINVAL);
	}
	struct smtpc_conf conf = {.helo = "ok.example", .tls = (enum smtpc_tls)7};
	assert_int_equal(smtpc_init(&c, &conf, &out, &ops, NULL), -EINVAL);
	conf.tls = SMTPC_TLS_VERIFY;
	struct smtpc_out small = {buf, 0, SMTPC_CMD_MAX - 1};
	assert_int_equal(smtpc_init(&c, &conf, &small, &ops, NULL), -EINVAL);
	struct smtpc_ops none = {NULL};
	assert_int_equal(smtpc_init(&c, &conf, &out, &none, NULL), -EINVAL);
	assert_int_equal(smtpc_init(&c, &conf, &out, &ops, NULL), 0);
	longname[SMTPC_HELO_MAX] = '\0'; /* exactly the limit */
	conf.helo = longname;
	assert_int_equal(smtpc_init(&c, &conf, &out, &ops, NULL), 0);
	assert_int_equal(smtpc_status(&c), SMTPC_ST_WAIT); /* the greeting */
}

static void
test_submit_checks(void **state)
{
	(void)state;
	static struct harness h;
	static struct smtpc_tx tx[SMTPC_TX_MAX + 1];
	static char longaddr[SMTPC_ADDR_MAX + 2];
	h_init(&h, SMTPC_TLS_NONE, false);
	const char *bad[] = {"", "b@x\r\nDATA", "b@x\nRSET", "b\0@x"};
	size_t badlen[] = {0, 10, 9, 4};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		tx_make(&tx[0], one_rcpt[0], "b@x", "");
		one_rcpt[0][0].addr = bad[i];
		one_rcpt[0][0].len = badlen[i];
		assert_int_equal(smtpc_submit(&h.c, &tx[0]), -EINVAL);
	}
	memset(longaddr, 'a', SMTPC_ADDR_MAX + 1);
	tx_make(&tx[0], one_rcpt[0], longaddr, "");
	assert_int_equal(smtpc_submit(&h.c, &tx[0]), -EINVAL);
	tx_make(&tx[0], one_rcpt[0], "b@x", "");
	tx[0].from = longaddr;
	tx[0].from_len = SMTPC_ADDR_MAX + 1;
	assert_int_equal(smtpc_submit(&h.c, &tx[0]), -EINVAL);
	tx_make(&tx[0], one_rcpt[0], "b@x", "");
	tx[0].from = "a\r\nb";
	tx[0].from_len = 4;
	assert_int_equal(smtpc_submit(&h.c, &tx[0]), -EINVAL);
	tx_make(&tx[0], one_rcpt[0], "b@x", "");
	tx[0].nrcpt = 0;
	assert_int_equal(smtpc_submit(&h.c, &tx[0]), -EINVAL);
	/* Addresses are checked eight octets at a time: CR, LF and NUL are
	 * found at every offset of every length; space and octets >= 0x80 pass. */
	for (size_t len = 1; len <= 24; len++) {
		for (size_t at = 0; at < len; at++) {
			static const char bad_ch[] = {'\r', '\n', '\0'}, ok_ch[] = {' ', '!', '\x80', '\xff'};
			for (size_t c = 0; c < sizeof(bad_ch) + sizeof(ok_ch); c++) {
				bool bad_one = c < sizeof(bad_ch);
				memset(longaddr, 'a', len);
				longaddr[at] = bad_one ? bad_ch[c] : ok_ch[c - sizeof(bad_ch)];
				tx_make(&tx[0], one_rcpt[0], "b@x", "");
				one_rcpt[0][0].addr = longaddr;
				one_rcpt[0][0].len = len;
				int rc = smtpc_submit(&h.c, &tx[0]);
				assert_int_equal(rc, bad_one ? -EINVAL : 0);
				if (rc == 0) {
					/* Taken back at once: nothing was written yet. */
					smtpc_abort(&h.c, "reset");
					h_fini(&h);
					h_init(&h, SMTPC_TLS_NONE, false);
				}
			}
		}
	}
	/* The null sender is fine; SMTPC_TX_MAX unfinished at most. */
	for (unsigned i = 0; i < SMTPC_TX_MAX; i++) {
		tx_make(&tx[i], one_rcpt[i], "b@x", "");
		tx[i].from_len = 0;
		assert_int_equal(smtpc_submit(&h.c, &tx[i]), 0);
	}
	tx_make(&tx[SMTPC_TX_MAX], one_rcpt[SMTPC_TX_MAX], "b@x", "");
	assert_int_equal(smtpc_submit(&h.c, &tx[SMTPC_TX_MAX]), -EBUSY);
	h_ready(&h, "250 mx\r\n");
	assert_int_equal(smtpc_status(&h.c) & SMTPC_ST_READY, 0); /* full */
	h_expect(&h, "MAIL FROM:<>\r\n");
	assert_int_equal(smtpc_quit(&h.c), 0);
	assert_int_equal(smtpc_submit(&h.c, &tx[SMTPC_TX_MAX]), -EPIPE);
	smtpc_abort(&h.c, "gone");
	assert_int_equal(h.ntx_ev, SMTPC_TX_MAX);
	assert_int_equal(h.nrcpt_ev, SMTPC_TX_MAX);
	assert_int_equal(h.nclose, 1);
	assert_int_equal(smtpc_submit(&h.c, &tx[SMTPC_TX_MAX]), -EPIPE);
	assert_int_equal(smtpc_quit(&h.c), -EPIPE);
	assert_int_equal(smtpc_pump(&h.c), -EPIPE);
	h_fini(&h);
}

/* A body in pieces: they must add up to body_len, with body NULL. */
static void
test_piece_checks(void **state)
{
	(void)state;
	static struct harness h;
	struct smtpc_tx tx;
	struct smtpc_rcpt r;
	const uint8_t a[] = "ab", b[] = "c\r\n";
	struct smtpc_piece pc[3] = {{.p = a, .len = 2}, {.p = NULL, .len = 0}, {.p = b, .len = 3}};
	h_init(&h, SMTPC_TLS_NONE, false);
	tx_make(&tx, &r, "b@x", "");
	tx.pieces = pc;
	tx.npieces = 3;
	tx.body = NULL;
	tx.body_len = 4;
	assert_int_equal(smtpc_submit(&h.c, &tx), -EINVAL); /* 5 octets */
	tx.body_len = 5;
	tx.body = a;
	assert_int_equal(smtpc_submit(&h.c, &tx), -EINVAL); /* both */
	tx.body = NULL;
	tx.pieces = NULL;
	assert_int_equal(smtpc_submit(&h.c, &tx), -EINVAL);
	tx.pieces = pc;
	pc[1].len = 1; /* NULL with a length */
	tx.body_len = 6;
	assert_int_equal(smtpc_submit(&h.c, &tx), -EINVAL);
	pc[1].len = 0;
	tx.body_len = 5;
	assert_int_equal(smtpc_submit(&h.c, &tx), 0);
	h_ready(&h, "250-mx\r\n250 CHUNKING\r\n");
	h_expect(&h, "MAIL FROM:<a@relay.example.test>\r\n");
	h_feed(&h, "250 ok\r\n");
	h_expect(&h, "RCPT TO:<b@x>\r\n");
	h_feed(&h, "250 ok\r\n");
	h_expect(&h, "BDAT 5 LAST\r\nabc\r\n");
	assert_int_equal(h.nspans, 2); /* the empty piece is skipped */
	h_feed(&h, "250 ok\r\n");
	assert_int_equal(h.ntx_ev, 1);
	h_fini(&h);
}

/* A struct smtpc is re-used (ringmx-load reconnects a slot): whatever it
 * held, smtpc_init starts afresh. */
static void
test_reinit(void **state)
{
	(void)state;
	static struct harness h;
	struct smtpc_tx tx;
	struct smtpc_rcpt r;
	for (int round = 0; round < 2; round++) {
		h_init(&h, SMTPC_TLS_NONE, false);
		if (round == 0)
			memset(&h.c, 0xa5, sizeof(h.c));
		struct smtpc_conf conf = {.helo = "relay.example.test"};
		assert_int_equal(smtpc_init(&h.c, &conf, &h.out, &h.ops, &h), 0);
		assert_int_equal(smtpc_tls_dropped(&h.c), 0);
		assert_false(smtpc_can_start(&h.c));
		tx_make(&tx, &r, "b@x", "x\r\n");
		assert_int_equal(smtpc_submit(&h.c, &tx), 0);
		h_ready(&h, "250-mx\r\n250 PIPELINING\r\n");
		h_expect(&h, "MAIL FROM:<a@relay.example.test>\r\nRCPT TO:<b@x>\r\nDATA\r\n");
		/* Lost half way: abort leaves the struct closed, re-initable. */
		smtpc_abort(&h.c, "gone");
		assert_int_equal(h.ntx_ev, 1);
		assert_int_equal(h.nclose, 1);
		h_fini(&h);
	}
}

/* smtpc_quit_pipelined on a closed connection, and before READY. */
static void
test_quit_pipelined(void **state)
{
	(void)state;
	static struct harness h;
	h_init(&h, SMTPC_TLS_NONE, false);
	assert_int_equal(smtpc_quit_pipelined(&h.c), 0);
	h_feed(&h, "220 mx\r\n");
	h_expect(&h, "EHLO relay.example.test\r\n");
	h_feed(&h, "250-mx\r\n250 PIPELINING\r\n");
	h_expect(&h, "QUIT\r\n");
	h_feed(&h, "221 bye\r\n");
	assert_int_equal(h.nclose, 1);
	assert_int_equal(smtpc_quit_pipelined(&h.c), -EPIPE);
	h_fini(&h);
}

/* From a callback only smtpc_submit, smtpc_quit and the getters work. */
static int
reenter(struct harness *h, const struct smtpc_event *ev)
{
	if (ev->type != SMTPC_EV_READY)
		return 0;
	h->cb_rc[0] = smtpc_feed(&h->c, "250 x\r\n", 7);
	h->cb_rc[1] = smtpc_pump(&h->c);
	h->cb_rc[2] = smtpc_body_sent(&h->c);
	h->cb_rc[3] = smtpc_tls_done(&h->c, true);
	smtpc_abort(&h->c, "ignored");
	h->cb_rc[4] = smtpc_submit(&h->c, h->extra);
	h->cb_rc[5] = (int)smtpc_state(&h->c);
	return 0;
}

static void
test_reentry(void **state)
{
	(void)state;
	static struct harness h;
	struct smtpc_tx tx;
	struct smtpc_rcpt r;
	h_init(&h, SMTPC_TLS_NONE, false);
	tx_make(&tx, &r, "b@example.net", "x\r\n");
	h.on = reenter;
	h.extra = &tx;
	h_ready(&h, "250 mx\r\n");
	for (int i = 0; i < 4; i++)
		assert_int_equal(h.cb_rc[i], -EDEADLK);
	assert_int_equal(h.cb_rc[4], 0);
	assert_int_equal(h.cb_rc[5], SMTPC_S_READY);
	/* The transaction submitted in the callback went out after it. */
	h_expect(&h, "MAIL FROM:<a@relay.example.test>\r\n");
	assert_int_equal(smtpc_body_sent(&h.c), -EINVAL);
	assert_int_equal(smtpc_tls_done(&h.c, true), -EINVAL);
	h_feed(&h, "250 ok\r\n");
	h_expect(&h, "RCPT TO:<b@example.net>\r\n");
	h_feed(&h, "250 ok\r\n");
	h_expect(&h, "DATA\r\n");
	h_feed(&h, "354 go\r\n");
	h_expect(&h, "x\r\n.\r\n");
	h_feed(&h, "250 ok\r\n");
	assert_int_equal(h.ntx_ev, 1);
	assert_int_equal(h.last_code, 250);
	h_fini(&h);
}

static void
test_status_bits(void **state)
{
	(void)state;
	static struct harness h;
	struct smtpc_tx tx;
	struct smtpc_rcpt r;
	h_init(&h, SMTPC_TLS_MAY, false);
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_WAIT);
	h_feed(&h, "220 mx\r\n");
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_WAIT);
	h_expect(&h, "EHLO relay.example.test\r\n");
	h_feed(&h, "250-mx\r\n250-CHUNKING\r\n250 STARTTLS\r\n");
	h_expect(&h, "STARTTLS\r\n");
	h_feed(&h, "220 go\r\n");
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_TLS);
	assert_int_equal(smtpc_state(&h.c), SMTPC_S_TLS);
	assert_int_equal(smtpc_feed(&h.c, "250 dropped\r\n", 13), 0);
	assert_int_equal(smtpc_ext(&h.c), SMTPC_EXT_CHUNKING | SMTPC_EXT_STARTTLS);
	h_drain(&h, smtpc_tls_done(&h.c, true));
	assert_int_equal(smtpc_ext(&h.c), 0); /* forgotten until the new EHLO */
	h_expect(&h, "EHLO relay.example.test\r\n");
	h_feed(&h, "250-mx\r\n250 CHUNKING\r\n");
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_READY | SMTPC_ST_IDLE);
	tx_make(&tx, &r, "b@example.net", "body\r\n");
	assert_int_equal(smtpc_submit(&h.c, &tx), 0);
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_READY);
	assert_int_equal(smtpc_pump(&h.c), 0);
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_READY | SMTPC_ST_WAIT);
	h_drain(&h, 0);
	h_expect(&h, "MAIL FROM:<a@relay.example.test>\r\n");
	h_feed(&h, "250 ok\r\n");
	h_expect(&h, "RCPT TO:<b@example.net>\r\n");
	/* The BDAT chunk: the span is due until smtpc_body_sent. */
	assert_int_equal(smtpc_feed(&h.c, "250 ok\r\n", 8), 0);
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_READY | SMTPC_ST_WAIT | SMTPC_ST_BODY);
	assert_int_equal(smtpc_pump(&h.c), 0); /* nothing while the span is due */
	h_drain(&h, 0);
	h_expect(&h, "BDAT 6 LAST\r\nbody\r\n");
	h_feed(&h, "250 ok\r\n");
	assert_int_equal(h.ntx_ev, 1);
	assert_int_equal(smtpc_quit(&h.c), 0);
	assert_int_equal(smtpc_status(&h.c), 0); /* quitting: not READY */
	h_drain(&h, smtpc_pump(&h.c));
	h_expect(&h, "QUIT\r\n");
	h_feed(&h, "221 bye\r\n");
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_CLOSE);
	assert_int_equal(h.nclose, 1);
	assert_int_equal(h.ndefer, 0);
	h_fini(&h);
}

/* After SMTPC_EV_TX the core never reads the transaction again: it is
 * scribbled over in the callback and the session goes on. */
static void
test_tx_lifetime(void **state)
{
	(void)state;
	static struct harness h;
	static struct smtpc_tx tx[3];
	static struct smtpc_rcpt r[3][1];
	h_init(&h, SMTPC_TLS_NONE, true);
	h.poison = true;
	for (int i = 0; i < 3; i++) {
		tx_make(&tx[i], r[i], "u@example.net", "m\r\n");
		assert_int_equal(smtpc_submit(&h.c, &tx[i]), 0);
	}
	h_feed(&h, "220 lmtp\r\n");
	h_expect(&h, "LHLO relay.example.test\r\n");
	h_feed(&h, "250-lmtp\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
	h_expect(&h, "MAIL FROM:<a@relay.example.test>\r\nRCPT TO:<u@example.net>\r\n"
	             "BDAT 3 LAST\r\nm\r\n"
	             "MAIL FROM:<a@relay.example.test>\r\nRCPT TO:<u@example.net>\r\n"
	             "BDAT 3 LAST\r\nm\r\n"
	             "MAIL FROM:<a@relay.example.test>\r\nRCPT TO:<u@example.net>\r\n"
	             "BDAT 3 LAST\r\nm\r\n");
	h_feed(&h, "250 ok\r\n250 ok\r\n250 saved\r\n550 no\r\n");
	assert_int_equal(h.ntx_ev, 1);
	h_feed(&h, "250 ok\r\n503 no rcpt\r\n250 ok\r\n250 ok\r\n452 full\r\n");
	assert_int_equal(h.ntx_ev, 3);
	assert_int_equal(h.nrcpt_ev, 3);
	assert_int_equal(h.last_code, 452);
	assert_int_equal(smtpc_status(&h.c), SMTPC_ST_READY | SMTPC_ST_IDLE);
	h_fini(&h);
}

static void
test_ehlo_keywords(void **state)
{
	(void)state;
	static const struct {
		const char *line;
		unsigned kw;
		uint64_t size;
	} cases[] = {
	    {"PIPELINING", SMTPC_EXT_PIPELINING, 7},
	    {"pipelining", SMTPC_EXT_PIPELINING, 7},
	    {"PIPELININGX", 0, 7},
	    {"SIZE", SMTPC_EXT_SIZE, 0},
	    {"SIZE 10240000", SMTPC_EXT_SIZE, 10240000},
	    {"SIZE 12x", SMTPC_EXT_SIZE, 0},
	    {"SIZE 99999999999999999999999", SMTPC_EXT_SIZE, 0},
	    {"8BITMIME", SMTPC_EXT_8BITMIME, 7},
	    {"SMTPUTF8", SMTPC_EXT_SMTPUTF8, 7},
	    {"CHUNKING", SMTPC_EXT_CHUNKING, 7},
	    {"STARTTLS", SMTPC_EXT_STARTTLS, 7},
	    {"ENHANCEDSTATUSCODES", SMTPC_EXT_ENHANCEDSTATUSCODES, 7},
	    {"enhancedStatusCodes", SMTPC_EXT_ENHANCEDSTATUSCODES, 7},
	    {"ENHANCEDSTATUSCODES x", SMTPC_EXT_ENHANCEDSTATUSCODES, 7},
	    {"ENHANCEDSTATUSCODE", 0, 7},
	    {"ENHANCEDSTATUSCODESS", 0, 7},
	    {"AUTH PLAIN", 0, 7},
	    {"", 0, 7},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t size = 7;
		unsigned kw = smtpc_ehlo_keyword(cases[i].line, strlen(cases[i].line), &size);
		if (kw != cases[i].kw || size != cases[i].size)
			fail_msg("'%s': %#x size %llu", cases[i].line, kw,
			         (unsigned long long)size);
	}
}

static void
test_enh_len(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		int code;
		size_t len;
	} cases[] = {
	    {"5.1.1 no such user", 550, 5},
	    {"5.1.1", 550, 5},
	    {"2.0.0 ok", 250, 5},
	    {"5.10.100 x", 554, 8},
	    {"4.1.1 x", 550, 0},
	    {"5.1234.1 x", 550, 0},
	    {"5.1.1234 x", 550, 0},
	    {"5.1.1x", 550, 0},
	    {"5..1 x", 550, 0},
	    {"5.1. x", 550, 0},
	    {"x.1.1", 550, 0},
	    {"5.1", 550, 0},
	    {"", 550, 0},
	    {"4.7.4 TLS", 451, 5},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = smtpc_enh_len(cases[i].text, strlen(cases[i].text), cases[i].code);
		if (n != cases[i].len)
			fail_msg("'%s' %d: %zu", cases[i].text, cases[i].code, n);
	}
}

/* The reference: RFC 5321 4.5.2 transparency, a '.' after any LF. */
static size_t
stuff(char *dst, const uint8_t *p, size_t n)
{
	size_t k = 0;
	bool bol = true;
	for (size_t i = 0; i < n; i++) {
		if (bol && p[i] == '.')
			dst[k++] = '.';
		dst[k++] = (char)p[i];
		bol = p[i] == '\n';
	}
	if (!bol) {
		dst[k++] = '\r';
		dst[k++] = '\n';
	}
	memcpy(dst + k, ".\r\n", 3);
	return k + 3;
}

static void
test_big_body(void **state)
{
	(void)state;
	static struct harness h;
	static uint8_t body[300 * 1024];
	static char want[2 * sizeof(body) + 64];
	struct smtpc_tx tx;
	struct smtpc_rcpt r;
	uint32_t x = 12345;
	size_t dots = 0;
	for (size_t i = 0; i < sizeof(body); i++) {
		x = x * 1103515245u + 12345u;
		unsigned v = (x >> 16) % 64;
		body[i] = v < 3 ? '.' : v < 5 ? '\n' : v < 7 ? '\r' : (uint8_t)('a' + v % 26);
		dots += body[i] == '.' && (i == 0 || body[i - 1] == '\n');
	}
	/* Pieces cut at pseudo-random offsets, some empty, some right
	 * before a '.' or after a LF. */
	static struct smtpc_piece pc[200];
	size_t at = 0;
	for (unsigned i = 0; i < 199; i++) {
		x = x * 1103515245u + 12345u;
		size_t len = i % 17 == 0 ? 0 : (x >> 8) % 3000;
		if (at + len > sizeof(body))
			len = sizeof(body) - at;
		pc[i] = (struct smtpc_piece){.p = body + at, .len = len};
		at += len;
	}
	pc[199] = (struct smtpc_piece){.p = body + at, .len = sizeof(body) - at};
	for (int mode = 0; mode < 4; mode++) {
		int chunking = mode & 1;
		h_init(&h, SMTPC_TLS_NONE, false);
		tx_make(&tx, &r, "b@example.net", "");
		tx.body_len = sizeof(body);
		if (mode < 2) {
			tx.body = body;
		} else {
			tx.body = NULL;
			tx.pieces = pc;
			tx.npieces = 200;
		}
		assert_int_equal(smtpc_submit(&h.c, &tx), 0);
		h_ready(&h, chunking ? "250-mx\r\n250 CHUNKING\r\n" : "250 mx\r\n");
		h_expect(&h, "MAIL FROM:<a@relay.example.test>\r\n");
		h_feed(&h, "250 ok\r\n");
		h_expect(&h, "RCPT TO:<b@example.net>\r\n");
		h_feed(&h, "250 ok\r\n");
		size_t n;
		if (chunking) {
			n = (size_t)snprintf(want, sizeof(want), "BDAT %zu LAST\r\n", sizeof(body));
			memcpy(want + n, body, sizeof(body));
			n += sizeof(body);
			assert_true(h.nspans == 1 || mode >= 2);
		} else {
			h_expect(&h, "DATA\r\n");
			h_feed(&h, "354 go\r\n");
			n = stuff(want, body, sizeof(body));
			/* One span per stuffed dot (plus the first, plus one
			 * per piece), never a copy. */
			assert_true(h.nspans <= dots + 1 + (mode >= 2 ? 200 : 0));
		}
		assert_int_equal(h.span_total, sizeof(body));
		assert_int_equal(h.wlen, n);
		assert_memory_equal(h.wire, want, n);
		h.wlen = 0;
		h_feed(&h, "250 ok\r\n");
		assert_int_equal(h.ntx_ev, 1);
		assert_int_equal(h.last_code, 250);
		h_fini(&h);
	}
}

/* Output full in the middle of a pipelined group: -ENOBUFS, OUTFULL,
 * and the command that did not fit is written whole later. */
static void
test_outfull(void **state)
{
	(void)state;
	static struct harness h;
	static struct smtpc_tx tx;
	static struct smtpc_rcpt r[20];
	static char addr[20][400];
	h_init(&h, SMTPC_TLS_NONE, false);
	h.out.cap = SMTPC_CMD_MAX;
	memset(&tx, 0, sizeof(tx));
	for (int i = 0; i < 20; i++) {
		memset(addr[i], 'a' + i, 390);
		snprintf(addr[i] + 390, 10, "@x.net");
		r[i] = (struct smtpc_rcpt){addr[i], strlen(addr[i]), 0};
	}
	tx.from = "";
	tx.rcpt = r;
	tx.nrcpt = 20;
	assert_int_equal(smtpc_submit(&h.c, &tx), 0);
	assert_int_equal(smtpc_feed(&h.c, "220 mx\r\n", 8), 0);
	h.out.len = 0;
	int rc = smtpc_feed(&h.c, "250-mx\r\n250 PIPELINING\r\n", 24);
	assert_int_equal(rc, -ENOBUFS);
	assert_true(smtpc_status(&h.c) & SMTPC_ST_OUTFULL);
	size_t cmds = 0;
	while (rc == -ENOBUFS) {
		/* Only whole lines in the buffer. */
		assert_true(h.out.len >= 2 && memcmp(h.out.buf + h.out.len - 2, "\r\n", 2) == 0);
		for (size_t i = 0; i < h.out.len; i++)
			cmds += h.out.buf[i] == '\n';
		h.out.len = 0;
		rc = smtpc_pump(&h.c);
	}
	assert_int_equal(rc, 0);
	for (size_t i = 0; i < h.out.len; i++)
		cmds += h.out.buf[i] == '\n';
	assert_int_equal(cmds, 1 + 20 + 1); /* MAIL, the RCPTs, DATA */
	assert_false(smtpc_status(&h.c) & SMTPC_ST_OUTFULL);
	h_fini(&h);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_init_checks), cmocka_unit_test(test_submit_checks),
	    cmocka_unit_test(test_reentry),     cmocka_unit_test(test_status_bits),
	    cmocka_unit_test(test_tx_lifetime), cmocka_unit_test(test_ehlo_keywords),
	    cmocka_unit_test(test_enh_len),     cmocka_unit_test(test_big_body),
	    cmocka_unit_test(test_outfull),     cmocka_unit_test(test_piece_checks),
	    cmocka_unit_test(test_reinit),      cmocka_unit_test(test_quit_pipelined),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
