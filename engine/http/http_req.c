/*
 * http_req.c - see http_req.h. RFC 9112 section 3: request-line =
 * method SP request-target SP HTTP-version CRLF; the header fields are only
 * checked for bytes that have no business there, then skipped.
 */
#include "http_req.h"

#include <string.h>

/* A byte allowed in a header line or the request target: visible ASCII,
 * SP, HTAB, and obs-text (>= 0x80) in field values. */
static int
line_byte_ok(unsigned char c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

int
http_req_parse(const char *buf, size_t len, struct http_req *r)
{
	size_t i, line = 0, end = 0;

	/* Find the empty line; check every byte on the way. */
	for (i = 0; i < len && i < HTTP_REQ_MAX; i++) {
		unsigned char c = (unsigned char)buf[i];

		if (c == '\r') {
			if (i + 1 == len)
				return 0;
			if (buf[i + 1] != '\n')
				return -400;
			if (i == line) {
				if (line == 0)
					return -400; /* an empty request line */
				end = i + 2;
				break;
			}
			i++;
			line = i + 1;
			continue;
		}
		if (c == '\n' || !line_byte_ok(c))
			return -400;
	}
	if (end == 0)
		return i >= HTTP_REQ_MAX ? -431 : 0;

	/* The request line: buf[0 .. first CR). */
	const char *p = buf, *le = memchr(buf, '\r', end);
	const char *sp1 = memchr(p, ' ', (size_t)(le - p));
	if (sp1 == NULL || sp1 == p)
		return -400;
	const char *t = sp1 + 1;
	const char *sp2 = memchr(t, ' ', (size_t)(le - t));
	if (sp2 == NULL || sp2 == t)
		return -400;
	const char *v = sp2 + 1;
	if ((size_t)(le - v) != 8 || memcmp(v, "HTTP/1.", 7) != 0 || v[7] < '0' || v[7] > '9')
		return -400;
	size_t mlen = (size_t)(sp1 - p);
	r->method = mlen == 3 && memcmp(p, "GET", 3) == 0    ? HTTP_GET
	            : mlen == 4 && memcmp(p, "HEAD", 4) == 0 ? HTTP_HEAD
	                                                     : HTTP_OTHER;
	for (const char *m = p; m < sp1; m++)
		if (*m < 'A' || *m > 'Z')
			return -400; /* methods are tokens; ours are upper case */
	for (const char *c = t; c < sp2; c++)
		if (*c == ' ' || *c == '\t')
			return -400;
	r->path = t;
	const char *q = memchr(t, '?', (size_t)(sp2 - t));
	r->path_len = (size_t)((q != NULL ? q : sp2) - t);
	return (int)end;
}
