/*
 * fuzz_body.c - differential libFuzzer target for the DATA/BDAT decoder.
 * Byte 0: mode, bare LF policy, size limit; byte 1: feed size. The input
 * is decoded whole and in pieces (each piece in its own exact-size heap
 * block); content, flags, size, end position and counters must agree.
 * DATA: the end is found at most once and only right after "\r\n.\r\n"
 * (or ".\r\n" at the very start).
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct col {
	size_t len, cap;
	char *buf;
};

static int
col_emit(void *ctx, const char *p, size_t n)
{
	struct col *c = ctx;

	assert(n > 0);
	assert(c->len + n <= c->cap);
	memcpy(c->buf + c->len, p, n);
	c->len += n;
	return 0;
}

struct res {
	struct col c;
	struct ringmx_stats st;
	size_t consumed;
	unsigned flags;
	uint64_t size;
	uint32_t hops;
	bool done;
};

static void
decode(const uint8_t *in, size_t n, size_t piece, uint8_t cfg, struct res *r)
{
	struct smtp_body b;
	struct smtp_body_env env;
	enum smtp_body_mode mode = (cfg & 1) ? SMTP_BODY_BDAT : SMTP_BODY_DATA;
	size_t off = 0;

	memset(&r->st, 0, sizeof r->st);
	r->c.len = 0;
	r->c.cap = 2 * n + 2; /* every octet may become CRLF, plus the final one */
	r->c.buf = malloc(r->c.cap);
	env.emit = col_emit;
	env.ctx = &r->c;
	env.size_limit = (cfg & 4) ? (uint64_t)(cfg >> 3) : 0;
	env.reject_bare_lf = cfg & 2;
	env.stats = &r->st;
	/* Shares a bit with the size limit; either way the count must not
	 * depend on the pieces. */
	env.hop_limit = (cfg & 8) ? 1 : 0;
	smtp_body_init(&b, mode);
	while (off < n && !smtp_body_done(&b)) {
		size_t len = n - off < piece ? n - off : piece;
		char *p = malloc(len);
		memcpy(p, in + off, len);
		size_t k = smtp_body_feed(&b, &env, p, len);
		free(p);
		assert(k <= len);
		assert(k == len || smtp_body_done(&b));
		off += k;
	}
	if (mode == SMTP_BODY_BDAT) {
		assert(!smtp_body_done(&b));
		smtp_body_finish(&b, &env);
	}
	if (smtp_body_done(&b)) {
		assert(off >= 3 && memcmp(in + off - 3, ".\r\n", 3) == 0);
		assert(off == 3 || (off >= 5 && in[off - 5] == '\r' && in[off - 4] == '\n'));
	}
	if (env.size_limit && !(b.flags & SMTP_BODY_F_FAILED))
		assert(r->c.len <= env.size_limit + (mode == SMTP_BODY_BDAT ? 2 : 0));
	r->consumed = off;
	r->flags = b.flags;
	r->size = b.size;
	r->hops = b.hops;
	r->done = smtp_body_done(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct res whole, split;

	if (size < 2)
		return 0;
	uint8_t cfg = data[0];
	size_t piece = (size_t)data[1] + 1;
	data += 2;
	size -= 2;
	decode(data, size, size ? size : 1, cfg, &whole);
	decode(data, size, piece, cfg, &split);
	assert(whole.done == split.done);
	assert(whole.consumed == split.consumed);
	assert(whole.flags == split.flags);
	assert(whole.size == split.size);
	assert(whole.hops == split.hops);
	assert(whole.st.long_lines == split.st.long_lines);
	assert(whole.st.bare_lf == split.st.bare_lf);
	assert(whole.st.bare_cr == split.st.bare_cr);
	if (!(whole.flags & SMTP_BODY_F_FAILED)) {
		assert(whole.c.len == split.c.len);
		assert(memcmp(whole.c.buf, split.c.buf, whole.c.len) == 0);
		assert(whole.size == whole.c.len);
	}
	free(whole.c.buf);
	free(split.c.buf);
	return 0;
}
