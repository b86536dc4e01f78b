/*
 * cidr_map.h - client_access = FILE: a Postfix cidr_table(5) source file
 * (one rule a line, `NETWORK/PREFIX ACTION [text]` or `ADDRESS ACTION
 * [text]`, IPv4 or IPv6, IPv6 optionally in brackets) read into one
 * immutable array of rules that the policy scans at connect, first match
 * wins, in file order.
 *
 * Ownership rules
 *  - A map is built on the main thread (start-up, -t, SIGHUP) by
 *    cidr_map_parse() or cidr_map_load() and belongs to whoever holds the
 *    configuration it is part of; it is never written after it is built,
 *    so every worker reads it without locks, and it is freed only once no
 *    worker can still look at it (the configuration's reload rule).
 *  - cidr_map_parse() and cidr_map_lookup() are pure (no I/O, no clock);
 *    cidr_map_lookup() allocates nothing. cidr_map_load() is the one
 *    function that reads a file (plain read(2): config load runs on the
 *    main thread, never in the ring).
 *  - The REJECT text cidr_map_lookup() returns points into the map and
 *    lives as long as the map.
 */
#ifndef RINGMX_CIDR_MAP_H
#define RINGMX_CIDR_MAP_H

#include <stddef.h>
#include <sys/socket.h>

/* Limits, each refused with a FILE:LINE message. */
#define CIDR_MAP_MAX  1000000u /* rules in one file */
#define CIDR_LINE_MAX 4096u    /* bytes of one line, its CR LF not counted */
/* REJECT text: "554 5.7.1 " + text + CRLF must fit one SMTP reply line
 * (SMTP_REPLY_MAX, 512, with its NUL). */
#define CIDR_TEXT_MAX     480u
#define CIDR_FILE_MAX     (1ull << 30) /* bytes cidr_map_load() reads */
#define CIDR_DEFAULT_TEXT "Access denied"

enum cidr_action {
	CIDR_NONE = 0, /* no entry matched */
	CIDR_OK,
	CIDR_DUNNO,
	CIDR_REJECT,
};

struct cidr_map;

/*
 * Parse a table already in memory (len bytes, need not be NUL terminated);
 * name is used in errors. 0 with *out set (an empty table is valid), or
 * -EINVAL with one line "NAME:LINE: problem" in err (cut to errlen), or
 * -ENOMEM ("NAME: out of memory ..."). Refused: a bad address, a prefix
 * out of range, host bits set past the prefix, a missing or unknown
 * action, a line over CIDR_LINE_MAX bytes, a NUL byte, REJECT text over
 * CIDR_TEXT_MAX bytes or with a control or non-ASCII character, more than
 * CIDR_MAP_MAX rules.
 */
int cidr_map_parse(const char *buf, size_t len, const char *name, struct cidr_map **out, char *err,
                   size_t errlen);

/*
 * Read the file path (at most CIDR_FILE_MAX bytes) and parse it, its path
 * as the name. 0, -EINVAL / -ENOMEM as cidr_map_parse(), or the -errno of
 * open/read (-EFBIG past the limit) with "PATH: reason" in err.
 */
int cidr_map_load(const char *path, struct cidr_map **out, char *err, size_t errlen);

/*
 * The action of the first rule matching sa (AF_INET or AF_INET6; an
 * IPv4-mapped ::ffff:a.b.c.d is matched as the IPv4 address a.b.c.d, as a
 * dual-stack listener shows IPv4 clients); CIDR_NONE when none matches,
 * for another family, or for m == NULL (no client_access). For
 * CIDR_REJECT, *text and *text_len (either may be NULL) are the rule's text,
 * CIDR_DEFAULT_TEXT if it has none (NUL terminated as well); else NULL and 0.
 */
enum cidr_action cidr_map_lookup(const struct cidr_map *m, const struct sockaddr *sa,
                                 const char **text, size_t *text_len);

/* Rules in the map; 0 for NULL. */
size_t cidr_map_count(const struct cidr_map *m);

/* NULL is allowed. */
void cidr_map_free(struct cidr_map *m);

#endif
