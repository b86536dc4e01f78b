/*
 * http_req.h - the request head of the metrics endpoint's HTTP/1.x: the
 * request line and the end of the header block, nothing else (no bodies,
 * no keep-alive: every answer closes). Pure: bytes in, a verdict out.
 *
 * Ownership: the caller's buffer; the result points into it.
 */
#ifndef RINGMX_HTTP_REQ_H
#define RINGMX_HTTP_REQ_H

#include <stddef.h>

#define HTTP_REQ_MAX 8192 /* a head longer than this is refused (431) */

enum http_method { HTTP_OTHER = 0, HTTP_GET, HTTP_HEAD };

struct http_req {
	enum http_method method;
	const char *path; /* without the query string */
	size_t path_len;
};

/*
 * 0: the head is not complete yet (read more); > 0: its length, with *r
 * filled; -400: malformed (request line, bare CR or LF, a control byte,
 * HTTP/2 preface, no version 1.x); -431: no end within HTTP_REQ_MAX.
 * Lines end with CRLF; a bare LF is refused like in SMTP (RFC 9112 allows
 * tolerating it; nothing here needs to).
 */
int http_req_parse(const char *buf, size_t len, struct http_req *r);

#endif
