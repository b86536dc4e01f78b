/*
 * relay_reply.h - the relay's reading of the next hop's replies (RFC 5321
 * 4.2): reply lines, multi-line replies, EHLO keywords. Pure: no I/O, no
 * allocation, so it is unit-tested and fuzzed (tests/fuzz/fuzz_reply.c)
 * like everything else that parses network input.
 *
 * Owner: the relay module (engine/relay/relay.c is the only caller).
 */
#ifndef RINGMX_RELAY_REPLY_H
#define RINGMX_RELAY_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reply text kept (for logs, the journal and bounces), NUL included. */
#define RELAY_REPLY_TEXT_MAX 512

/* One line, without its line end: "250-text", "250 text" or "250". */
struct relay_reply_line {
	int code;         /* 200..599 */
	bool more;        /* "250-": more lines follow */
	const char *text; /* after the separator; points into the line */
	size_t len;
};
/* 0, or -1 when the line is not a reply line. */
int relay_reply_line(const char *p, size_t n, struct relay_reply_line *out);

/* A reply being gathered. Zero it before the first line. */
struct relay_reply {
	int code;
	bool open; /* lines seen, final line not yet */
	uint16_t len;
	char text[RELAY_REPLY_TEXT_MAX]; /* lines joined by one space; control
	                                  * characters turned into spaces; NUL
	                                  * terminated */
};
enum { RELAY_REPLY_MORE = 0, RELAY_REPLY_DONE = 1, RELAY_REPLY_BAD = -1 };
/* Add one line (without its line end). line (may be NULL) gets the
 * line's parse. DONE: r->code/text hold the reply and r is ready for the
 * next one; BAD: not a reply line, or the code changed within a reply. */
int relay_reply_add(struct relay_reply *r, const char *p, size_t n, struct relay_reply_line *line);

#endif
