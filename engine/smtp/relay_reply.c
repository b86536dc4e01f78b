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
	if (n < 3 || p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' ||
	    p[2] > '9' || (n > 3 && p[3] != ' ' && p[3] != '-'))
		return -1;
	out->code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
	out->more = n > 3 && p[3] == '-';
	out->text = n > 4 ? p + 4 : "";
	out->len = n > 4 ? n - 4 : 0;
	return 0;
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
	if (r->len > 0 && r->len < RELAY_REPLY_TEXT_MAX - 1)
		r->text[r->len++] = ' ';
	size_t k = RELAY_REPLY_TEXT_MAX - 1 - r->len;
	if (l.len < k)
		k = l.len;
	for (size_t i = 0; i < k; i++) {
		/* No control characters into logs, journals and bounces. */
		unsigned char ch = (unsigned char)l.text[i];
		r->text[r->len + i] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
	}
	r->len = (uint16_t)(r->len + k);
	r->text[r->len] = '\0';
	if (l.more)
		return RELAY_REPLY_MORE;
	r->open = false;
	return RELAY_REPLY_DONE;
}
