/*
 * fuzz_reply.c - libFuzzer target for the relay's reading of next-hop
 * replies (engine/smtp/relay_reply.c): the input is split at LF (an optional CR
 * before it dropped, as engine/relay/relay.c does) and fed line by line to
 * relay_reply_add() and, for each line's text, the client core's
 * smtpc_ehlo_keyword() (engine/smtp/smtp_client_reply.c).
 * Owner: the relay module.
 *
 * Each line is copied into an exact-size heap block so ASan flags any
 * over-read. Invariants: a line is accepted only with a code 200..599 and
 * a space, '-' or nothing after it; a completed reply's text is NUL
 * terminated, shorter than RELAY_REPLY_TEXT_MAX and free of control
 * characters; a reply never completes with a code other than its first
 * line's; a keyword result is 0 or one known flag.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay_reply.h"
#include "smtp_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_text(const struct relay_reply *r)
{
	assert(r->len < RELAY_REPLY_TEXT_MAX);
	assert(r->text[r->len] == '\0');
	for (size_t i = 0; i < r->len; i++)
		assert((unsigned char)r->text[i] >= 0x20 && r->text[i] != 0x7f);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct relay_reply r;
	memset(&r, 0, sizeof(r));
	int first_code = 0;
	size_t off = 0;
	while (off < size) {
		const uint8_t *nl = memchr(data + off, '\n', size - off);
		size_t n = (nl != NULL ? (size_t)(nl - data) : size) - off;
		size_t len = n > 0 && data[off + n - 1] == '\r' ? n - 1 : n;
		char *line = malloc(len ? len : 1);
		if (line == NULL)
			abort();
		memcpy(line, data + off, len);
		off += n + (nl != NULL);

		bool opening = !r.open;
		struct relay_reply_line l;
		int st = relay_reply_add(&r, line, len, &l);
		if (st == RELAY_REPLY_BAD) {
			struct relay_reply_line tmp;
			if (relay_reply_line(line, len, &tmp) == 0)
				assert(!opening && tmp.code != first_code);
			memset(&r, 0, sizeof(r));
			free(line);
			continue;
		}
		assert(l.code >= 200 && l.code <= 599);
		assert(len >= 3 && (len == 3 || line[3] == ' ' || line[3] == '-'));
		assert(l.len == 0 || (l.text >= line && l.text + l.len <= line + len));
		if (opening)
			first_code = l.code;
		assert(r.code == first_code);
		check_text(&r);
		uint64_t sz = 12345;
		unsigned kw = smtpc_ehlo_keyword(l.text, l.len, &sz);
		assert(kw == 0 || (kw & (kw - 1)) == 0);
		assert(kw <= SMTPC_EXT_ENHANCEDSTATUSCODES);
		if (kw != SMTPC_EXT_SIZE)
			assert(sz == 12345);
		assert(st == RELAY_REPLY_DONE ? !r.open : r.open);
		free(line);
	}
	return 0;
}
