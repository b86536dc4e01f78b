/*
 * fuzz_client.c - libFuzzer target for the SMTP/LMTP client core
 * (engine/smtp/smtp_client.c). Byte 0 picks the protocol, the TLS policy,
 * the transactions and the EHLO keywords to ignore; byte 1 the output
 * buffer size. The rest is a script of actions, each one control byte:
 * feed the next (ctl & 31) + 1 bytes as server replies (each feed in its
 * own exact-size heap block, so ASan flags an over-read), finish the TLS
 * handshake (ok or failed), QUIT (after the results, or pipelined),
 * submit one more transaction, or abort. A body is lent as one buffer or
 * cut in pieces, each piece in a heap block of its own. At the end the
 * connection is aborted.
 *
 * Owner: the client core's module (engine/smtp/smtp_client.c).
 *
 * Invariants checked: every recipient gets exactly one result and then
 * its transaction exactly one TX event; CLOSE comes once and last; DEFER
 * only before READY; under ENCRYPT/VERIFY nothing but EHLO/LHLO and
 * STARTTLS is written before a successful handshake; commands in the
 * output end in CRLF and never hold a bare LF; body spans lie inside
 * their transaction's body; event text holds no control characters; the
 * output never exceeds its capacity; a span lies inside one piece; a
 * recipient accepted (2xx) was decided by the end of data; nothing is
 * written after QUIT; a transaction submitted when smtpc_can_start() says
 * so gets its MAIL (or the RSET before it) written at once; every
 * plaintext byte fed between the 220 to STARTTLS and the handshake's end
 * is counted by smtpc_tls_dropped().
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define F_TX    6
#define F_RCPT  3
#define F_PIECE 16

struct fz {
	struct smtpc c;
	struct smtpc_out out;
	struct smtpc_ops ops;
	struct smtpc_tx tx[F_TX];
	struct smtpc_rcpt rcpt[F_TX][F_RCPT];
	struct smtpc_piece pieces[F_TX][F_PIECE];
	uint8_t got[F_TX][F_RCPT];
	bool quit_written;
	bool done[F_TX];
	unsigned nsub, nclose, nready;
	bool tls_ok, required, defer_seen;
	const uint8_t *span;
	size_t span_len;
	char buf[65536];
};

static const char *const bodies[] = {
    "", "x\r\n", ".\r\n..\r\n.x", "line\r\n.\r\n", "\n.\n.\r\n", "no end",
};
static const char *const addrs[] = {"a@example.net", "b@example.net", "c@example.net"};

static void
text_check(const struct smtpc_reply *r)
{
	for (size_t i = 0; i < r->enh_len; i++)
		assert(r->enh[i] == '.' || (r->enh[i] >= '0' && r->enh[i] <= '9'));
	for (size_t i = 0; i < r->text_len; i++)
		assert((unsigned char)r->text[i] >= 0x20 && r->text[i] != 0x7f);
}

/* In one piece of tx's body (or in its one buffer). */
static bool
span_in_body(const struct smtpc_tx *tx, const uint8_t *p, size_t n)
{
	if (tx->npieces == 0)
		return p >= tx->body && p + n <= tx->body + tx->body_len;
	for (uint32_t i = 0; i < tx->npieces; i++)
		if (tx->pieces[i].len > 0 && p >= tx->pieces[i].p &&
		    p + n <= tx->pieces[i].p + tx->pieces[i].len)
			return true;
	return false;
}

static void
on_event(void *arg, const struct smtpc_event *ev)
{
	struct fz *f = arg;
	assert(f->nclose == 0);
	uint32_t t = 0;
	if (ev->tx != NULL) {
		assert(ev->tx >= f->tx && ev->tx < f->tx + f->nsub);
		t = (uint32_t)(ev->tx - f->tx);
		assert(!f->done[t]);
	}
	switch (ev->type) {
	case SMTPC_EV_READY:
		assert(f->nready++ == 0);
		assert(f->tls_ok || !f->required);
		break;
	case SMTPC_EV_TLS:
		assert(smtpc_state(&f->c) == SMTPC_S_TLS);
		break;
	case SMTPC_EV_BODY:
		assert(f->span == NULL && ev->body_len > 0 && !f->quit_written);
		assert(span_in_body(ev->tx, ev->body, ev->body_len));
		f->span = ev->body;
		f->span_len = ev->body_len;
		break;
	case SMTPC_EV_RCPT:
		assert(ev->rcpt < ev->tx->nrcpt && f->got[t][ev->rcpt]++ == 0);
		assert(ev->reply.code >= 200 && ev->reply.code <= 599);
		assert(ev->cmd < SMTPC_CMD_COUNT);
		assert(ev->reply.code >= 300 || ev->cmd == SMTPC_CMD_DOT ||
		       ev->cmd == SMTPC_CMD_BDAT);
		text_check(&ev->reply);
		break;
	case SMTPC_EV_TX:
		for (uint32_t k = 0; k < ev->tx->nrcpt; k++)
			assert(f->got[t][k] == 1);
		f->done[t] = true;
		break;
	case SMTPC_EV_DEFER:
		assert(f->nready == 0 && !f->defer_seen && ev->cmd < SMTPC_CMD_COUNT);
		f->defer_seen = true;
		text_check(&ev->reply);
		break;
	case SMTPC_EV_CLOSE:
		f->nclose++;
		for (uint32_t i = 0; i < f->nsub; i++)
			assert(f->done[i]);
		text_check(&ev->reply);
		break;
	}
}

/* What a caller does with the output: check it, send it. */
static void
drain(struct fz *f, int rc)
{
	for (int guard = 0; guard < 100000; guard++) {
		assert(f->out.len <= f->out.cap);
		const char *p = f->out.buf;
		size_t n = f->out.len;
		for (size_t i = 0; i < n; i++)
			if (p[i] == '\n')
				assert(i > 0 && p[i - 1] == '\r');
		/* QUIT is the last thing written, pipelined or not. */
		assert(n == 0 || !f->quit_written);
		if (n >= 6 && memcmp(p + n - 6, "QUIT\r\n", 6) == 0)
			f->quit_written = true;
		if (f->required && !f->tls_ok)
			for (size_t i = 0; i < n;) {
				const char *nl = memchr(p + i, '\n', n - i);
				assert(nl != NULL);
				assert(strncmp(p + i, "EHLO ", 5) == 0 ||
				       strncmp(p + i, "LHLO ", 5) == 0 ||
				       strncmp(p + i, "STARTTLS\r\n", 10) == 0);
				i = (size_t)(nl - p) + 1;
			}
		f->out.len = 0;
		if (f->span != NULL) {
			assert(smtpc_status(&f->c) & SMTPC_ST_BODY);
			f->span = NULL;
			rc = smtpc_body_sent(&f->c);
			continue;
		}
		if (rc == -ENOBUFS) {
			rc = smtpc_pump(&f->c);
			assert(rc != -ENOBUFS || f->out.len > 0);
			continue;
		}
		assert(rc == 0 || rc == -EPIPE || rc == -EINVAL);
		return;
	}
	assert(!"no end to the output");
}

/* The body b lent as one buffer, or cut (after each octet whose bit is set
 * in cuts, plus an empty piece first when bit 15 is set), every piece in
 * a heap block of exactly its size. */
static void
lend_body(struct fz *f, struct smtpc_tx *tx, const char *b, unsigned cuts)
{
	size_t n = strlen(b);
	tx->body_len = n;
	if (cuts == 0) {
		tx->body = (const uint8_t *)b;
		return;
	}
	struct smtpc_piece *pc = f->pieces[f->nsub];
	uint32_t np = 0;
	size_t at = 0;
	if (cuts & 0x8000u)
		pc[np++] = (struct smtpc_piece){NULL, 0, false};
	for (size_t i = 0; i <= n; i++) {
		if (i < n && !(cuts & (1u << (i % 15))))
			continue;
		size_t len = i < n ? i + 1 - at : n - at;
		if (i == n && len == 0 && np > 0)
			break;
		assert(np < F_PIECE); /* bodies are shorter */
		uint8_t *copy = malloc(len ? len : 1);
		assert(copy != NULL);
		memcpy(copy, b + at, len);
		/* A piece with no line in it that starts with '.' (its first
		 * octet counted) may be lent as such (nostuff). */
		bool nostuff = (cuts & 0x4000u) && (len == 0 || b[at] != '.');
		for (size_t j = 1; j < len; j++)
			if (b[at + j] == '.' && b[at + j - 1] == '\n')
				nostuff = false;
		pc[np++] = (struct smtpc_piece){copy, len, nostuff};
		at += len;
	}
	tx->pieces = pc;
	tx->npieces = np;
}

static void
pieces_free(struct fz *f, unsigned t)
{
	for (unsigned i = 0; i < F_PIECE; i++)
		free((void *)f->pieces[t][i].p);
	memset(f->pieces[t], 0, sizeof(f->pieces[t]));
}

static void
submit(struct fz *f, uint8_t sel)
{
	if (f->nsub == F_TX)
		return;
	struct smtpc_tx *tx = &f->tx[f->nsub];
	memset(tx, 0, sizeof(*tx));
	uint32_t n = 1u + sel % F_RCPT;
	for (uint32_t k = 0; k < n; k++)
		f->rcpt[f->nsub][k] = (struct smtpc_rcpt){addrs[k], strlen(addrs[k]), 0};
	const char *b = bodies[(sel >> 2) % (sizeof(bodies) / sizeof(bodies[0]))];
	tx->from = sel & 0x80 ? "" : "s@example.org";
	tx->from_len = strlen(tx->from);
	tx->rcpt = f->rcpt[f->nsub];
	tx->nrcpt = n;
	/* The cut from sel and the slot: the same body is lent both ways. */
	unsigned cuts = ((sel * 0x9e37u) ^ (f->nsub * 0x79b9u)) & 0xffffu;
	lend_body(f, tx, b, (sel ^ f->nsub) & 1 ? cuts : 0);
	tx->flags = (sel & 0x20 ? SMTPC_TX_SMTPUTF8 : 0) | (sel & 0x40 ? SMTPC_TX_8BITMIME : 0);
	bool can = smtpc_can_start(&f->c);
	int rc = smtpc_submit(&f->c, tx);
	assert(rc == 0 || rc == -EPIPE || rc == -EBUSY);
	assert(!can || rc == 0);
	if (rc != 0) {
		pieces_free(f, f->nsub);
		return;
	}
	uint32_t t = f->nsub++;
	rc = smtpc_pump(&f->c);
	if (can && rc == 0 && !f->done[t]) {
		/* Started at once: its MAIL (or the RSET in front) is out. */
		assert(memmem(f->out.buf, f->out.len, "MAIL FROM:", 10) != NULL ||
		       memmem(f->out.buf, f->out.len, "RSET\r\n", 6) != NULL);
	}
	drain(f, rc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fz f;
	if (size < 2)
		return 0;
	memset(&f, 0, offsetof(struct fz, buf));
	uint8_t conf = data[0];
	f.out.buf = f.buf;
	f.out.cap = SMTPC_CMD_MAX + (size_t)data[1] * 64;
	f.ops.event = on_event;
	static const unsigned ignore[8] = {
	    0, 0, 0, 0, SMTPC_EXT_PIPELINING, SMTPC_EXT_CHUNKING,
	    SMTPC_EXT_PIPELINING | SMTPC_EXT_CHUNKING | SMTPC_EXT_SIZE, SMTPC_EXT_STARTTLS};
	struct smtpc_conf cc = {.helo = "relay.example.test",
	                        .lmtp = conf & 1,
	                        .tls = (enum smtpc_tls)((conf >> 1) & 3),
	                        .ext_ignore = ignore[conf >> 5]};
	f.required = cc.tls == SMTPC_TLS_ENCRYPT || cc.tls == SMTPC_TLS_VERIFY;
	assert(smtpc_init(&f.c, &cc, &f.out, &f.ops, &f) == 0);
	for (unsigned i = 0; i < ((conf >> 3) & 3); i++)
		submit(&f, (uint8_t)(conf * (i + 7)));
	size_t off = 2;
	while (off < size) {
		uint8_t ctl = data[off++];
		switch (ctl >> 5) {
		case 5: {
			bool in_tls = smtpc_state(&f.c) == SMTPC_S_TLS;
			f.tls_ok |= in_tls && (ctl & 1);
			drain(&f, smtpc_tls_done(&f.c, ctl & 1));
			break;
		}
		case 6:
			if (ctl & 1) {
				if (ctl & 2)
					smtpc_quit_pipelined(&f.c);
				else
					smtpc_quit(&f.c);
				drain(&f, smtpc_pump(&f.c));
			} else {
				submit(&f, ctl);
			}
			break;
		case 7:
			if (ctl == 0xff)
				smtpc_abort(&f.c, "fuzz");
			else
				drain(&f, smtpc_pump(&f.c));
			break;
		default: {
			size_t n = (size_t)(ctl & 31) + 1;
			if (n > size - off)
				n = size - off;
			char *p = malloc(n ? n : 1);
			assert(p != NULL);
			memcpy(p, data + off, n);
			off += n;
			bool in_tls = smtpc_state(&f.c) == SMTPC_S_TLS;
			uint64_t dropped = smtpc_tls_dropped(&f.c);
			int rc = smtpc_feed(&f.c, p, n);
			free(p);
			assert(!in_tls || smtpc_tls_dropped(&f.c) == dropped + n);
			assert(in_tls || smtpc_tls_dropped(&f.c) <= dropped + n);
			drain(&f, rc);
			break;
		}
		}
	}
	smtpc_abort(&f.c, "end");
	assert(f.nclose == 1);
	assert(smtpc_status(&f.c) == SMTPC_ST_CLOSE);
	for (unsigned t = 0; t < F_TX; t++)
		pieces_free(&f, t);
	return 0;
}
