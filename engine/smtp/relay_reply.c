/*
 * relay_reply.c - reply lines, multi-line replies and EHLO keywords from
 * the next hop (relay_reply.h). Lenient only where RFC 5321 4.2 allows
 * ("250" alone is a complete line); strict on the code and separator, so
 * a confused next hop ends the connection instead of being misread.
 *
 * Owner: the relay module.
 */
#include "relay_reply.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

int
relay_reply_line(const char *p, size_t n, struct relay_reply_line *out)
{
	if (n < 3)
		return -1;
	/* Unsigned differences: one compare per digit ("2".."5", then two). */
	unsigned d0 = (unsigned)(unsigned char)p[0] - '2', d1 = (unsigned)(unsigned char)p[1] - '0',
	         d2 = (unsigned)(unsigned char)p[2] - '0';
	if (d0 > 3 || d1 > 9 || d2 > 9 || (n > 3 && p[3] != ' ' && p[3] != '-'))
		return -1;
	out->code = (int)(200 + d0 * 100 + d1 * 10 + d2);
	out->more = n > 3 && p[3] == '-';
	out->text = n > 4 ? p + 4 : "";
	out->len = n > 4 ? n - 4 : 0;
	return 0;
}

/* dst[0, n) = src[0, n) with every control character (< 0x20, 0x7f) a space.
 * Eight octets at a time while none is one (the usual reply text): a word
 * holds a byte below 0x20 when ((x - 0x20..) & ~x & 0x80..) is not 0, a
 * 0x7f when the same holds for x ^ 0x7f.. below 1. */
static void
copy_clean(char *dst, const char *src, size_t n)
{
	const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t x;
		memcpy(&x, src + i, 8);
		uint64_t y = x ^ (0x7f * ones);
		if ((((x - 0x20 * ones) & ~x) | ((y - ones) & ~y)) & high)
			break;
		memcpy(dst + i, &x, 8);
	}
	for (; i < n; i++) {
		unsigned char ch = (unsigned char)src[i];
		dst[i] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
	}
}

int
relay_reply_add(struct relay_reply *r, const char *p, size_t n, struct relay_reply_line *line)
{
	struct relay_reply_line l;
	if (relay_reply_line(p, n, &l) < 0)
		return RELAY_REPLY_BAD;
	if (line != NULL)
		*line = l;
	if (!r->open) {
		r->open = true;
		r->code = l.code;
		r->len = 0;
	} else if (l.code != r->code) {
		return RELAY_REPLY_BAD;
	}
	size_t len = r->len;
	if (len > 0 && len < RELAY_REPLY_TEXT_MAX - 1)
		r->text[len++] = ' ';
	size_t k = RELAY_REPLY_TEXT_MAX - 1 - len;
	if (l.len < k)
		k = l.len;
	/* No control characters into logs, journals and bounces. */
	copy_clean(r->text + len, l.text, k);
	len += k;
	r->text[len] = '\0';
	r->len = (uint16_t)len;
	if (l.more)
		return RELAY_REPLY_MORE;
	r->open = false;
	return RELAY_REPLY_DONE;
}
