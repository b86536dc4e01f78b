/*
 * rcpt_map.h - recipient_maps: the valid recipients of the accepted
 * domains, read from Postfix table source files (relay_recipient_maps
 * style: one key per line, `user@domain` or `@domain`, the rest of the
 * line ignored) into one immutable hash table. The policy layer asks it at
 * RCPT (policy.c); documented in docs/defences.md ("Recipient validation:
 * recipient maps").
 *
 * Ownership rules
 *  - A map is built by rcpt_map_build() on the main thread (start-up, -t,
 *    SIGHUP) from texts the caller read, and belongs to the struct config
 *    it is part of (config_free() calls rcpt_map_free()). It is never
 *    written after rcpt_map_build() returns, so every worker thread reads
 *    it without locks; it is freed only once every worker has switched to
 *    the next configuration (main.c's reload waits for each cfg_ack).
 *  - Pure: no I/O, no clock; the caller hands in the files' texts.
 */
#ifndef RINGMX_RCPT_MAP_H
#define RINGMX_RCPT_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ringmx/smtp.h"

/* Limits. A file is read whole (transiently) before the table is built. */
#define RCPT_MAP_FILES_MAX   16                /* files in recipient_maps */
#define RCPT_MAP_FILE_MAX    (1ull << 30)      /* bytes per file */
#define RCPT_MAP_ENTRIES_MAX (8u * 1024 * 1024) /* keys, all files together */
#define RCPT_MAP_ERR_MAX     512

/* One source file's text (len bytes, need not be NUL terminated); name is
 * used in error messages. */
struct rcpt_map_src {
	const char *name;
	const char *text;
	size_t len;
};

struct rcpt_map;

/* What a built map holds, for the load log line and the bench. */
struct rcpt_map_info {
	size_t entries;    /* distinct keys */
	size_t catchall;   /* of which @domain keys */
	size_t duplicates; /* keys seen again (ignored, as postmap does) */
	size_t slots;      /* hash table slots (entries * 1.5 + 1) */
	size_t bytes;      /* the one allocation: header, slots, key arena */
};

/*
 * Build one map from n sources. Returns the map, or NULL with one line in
 * err, "FILE:LINE: problem", for the first malformed line (a key that is
 * neither user@domain nor @domain, a bad domain, a NUL byte, a too long
 * key, an indented line before any entry) or "FILE: problem" (too many
 * entries, out of memory). Zero entries is a valid, empty map.
 */
struct rcpt_map *rcpt_map_build(const struct rcpt_map_src *src, size_t n,
				char err[RCPT_MAP_ERR_MAX]);

/* NULL is allowed. */
void rcpt_map_free(struct rcpt_map *m);

void rcpt_map_get_info(const struct rcpt_map *m, struct rcpt_map_info *info);

/*
 * Does the map know local@domain, either the address itself or the
 * domain's @domain catch-all? ASCII case-insensitive in both parts (keys
 * are folded to lower case, as postmap folds them by default); a quoted
 * local part ("quoted", with its quotes) is looked up in its unquoted
 * form, as Postfix looks it up. No recipient_delimiter: user+ext is only
 * the key user+ext.
 */
bool rcpt_map_known(const struct rcpt_map *m, const char *local, size_t local_len, bool quoted,
		    const char *domain, size_t domain_len);

/*
 * The policy's question at RCPT (policy.c): addr is the forward-path
 * without <> of an accepted domain, as the session asks it. SMTP_CHECK_OK
 * when the map knows it or it has no domain (<Postmaster>, RFC 5321
 * 4.5.1); else SMTP_CHECK_REJECT with "550 5.1.1 <addr>: Recipient
 * address rejected: User unknown" in *r, the address as given.
 */
int rcpt_map_check(const struct rcpt_map *m, const char *addr, size_t len,
		   struct smtp_check_reply *r);

#endif
