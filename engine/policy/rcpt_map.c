/*
 * rcpt_map.c - recipient_maps (rcpt_map.h): Postfix table source files
 * parsed into one compact, immutable open-addressing hash table.
 *
 * Ownership rules
 *  - A map is one allocation: the header, the slot array and the key
 *    arena, sized from a first pass over the sources (no allocation per
 *    entry). Built on the main thread, read-only afterwards, freed with
 *    its struct config (rcpt_map.h says when that is safe).
 *  - The allocation is an anonymous mapping (zero-filled: every slot
 *    starts free) with transparent huge pages asked for: a lookup touches
 *    two random places of a table that is tens of MB for a million keys,
 *    and with 4 KiB pages each of them is a TLB miss as well. munmap() in
 *    rcpt_map_free() gives the memory back to the system at once, so the
 *    old map of a reload does not linger in the heap.
 *
 * Layout. Keys are stored once, folded to lower case and NUL terminated,
 * in the arena; offset 0 is never a key, so a slot with off == 0 is free.
 * A slot is {tag, off}: the hash's upper 32 bits, so most mismatches are
 * refused without touching the arena, and the key's arena offset. The
 * table has entries * 1.5 + 1 slots (load factor <= 2/3, at least one free
 * slot, so every probe ends); the home slot is the hash's lower 32 bits
 * scaled to the table (multiply-shift, no power of two needed) and
 * collisions probe linearly. Lookups cost one or two probes sequences:
 * user@domain, then @domain.
 *
 * Parsing follows postmap(1) on a table source: the key is the first
 * blank-delimited token of a logical line and the rest is its value
 * (ignored here); a line whose first non-blank is '#' and a blank line are
 * skipped; a line that starts with a blank continues the previous logical
 * line, so it belongs to that entry's value and is skipped too. postmap
 * warns about a duplicate key and keeps the first; here it is counted
 * (struct rcpt_map_info.duplicates) and stored once.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ringmx/smtp.h"
#include "config_syntax.h"
#include "rcpt_map.h"

struct rcpt_slot {
	uint32_t tag; /* hash >> 32 */
	uint32_t off; /* key offset in the arena; 0 = free slot */
};

struct rcpt_map {
	size_t map_len;   /* bytes mapped, for munmap() */
	size_t nslots;
	size_t arena_len; /* bytes used, offset 0 included */
	struct rcpt_map_info info;
	struct rcpt_slot *slots; /* inside this allocation */
	char *arena;             /* inside this allocation, after the slots */
};

/* A map key is an address (or @domain) as RCPT could carry it. */
#define KEY_MAX SMTP_PATH_MAX
_Static_assert(KEY_MAX == 256, "key_check()'s message names the limit");

static bool
blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static char
lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* 64-bit multiply-xorshift hash over 8-byte words; the keys are the
 * operator's, so no seed is needed against flooding: a client's lookups
 * never insert. */
static uint64_t
key_hash(const char *p, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
	uint64_t v;

	while (n >= 8) {
		memcpy(&v, p, 8);
		h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
		h ^= h >> 31;
		p += 8;
		n -= 8;
	}
	v = 0;
	memcpy(&v, p, n);
	h = (h ^ v) * 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 29;
	return h;
}

/* ---- parsing ---- */

struct cursor {
	const struct rcpt_map_src *src;
	size_t pos;
	unsigned line;   /* physical line of the key returned last */
	bool have_entry; /* a logical line started in this file */
};

/* "FILE:LINE: why" and, if tok, ": 'tok'" (quoted, cut short). */
static int
fail(char *err, const struct cursor *c, const char *why, const char *tok, size_t n)
{
	char qb[288] = "";

	if (tok != NULL)
		syn_quote_n(qb, sizeof(qb), tok, n);
	snprintf(err, RCPT_MAP_ERR_MAX, "%s:%u: %s%s%s%s", c->src->name, c->line, why,
		 tok != NULL ? ": '" : "", qb, tok != NULL ? "'" : "");
	return -1;
}

/* user@domain or @domain: a bounded token, a valid domain after the last
 * '@', no control characters (log lines). */
static int
key_check(const struct cursor *c, const char *k, size_t n, char *err)
{
	const char *at = NULL;

	if (n > KEY_MAX)
		return fail(err, c, "key too long (max 256 bytes)", k, n);
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)k[i] < 0x20 || k[i] == 0x7f)
			return fail(err, c, "control character in key", k, n);
		if (k[i] == '@')
			at = k + i;
	}
	if (at == NULL)
		return fail(err, c, "not user@domain or @domain", k, n);
	if (!syn_domain_valid(at + 1, (size_t)(k + n - at - 1), false))
		return fail(err, c, "not a domain after '@'", k, n);
	return 0;
}

/* The next key of c's source: 1 with *key, *n set; 0 at its end; -1 with
 * err set for a malformed line. */
static int
next_key(struct cursor *c, const char **key, size_t *n, char *err)
{
	const struct rcpt_map_src *s = c->src;

	while (c->pos < s->len) {
		const char *p = s->text + c->pos, *nl, *e, *t;
		size_t left = s->len - c->pos;

		nl = memchr(p, '\n', left);
		e = nl != NULL ? nl : p + left;
		c->pos += (size_t)(e - p) + (nl != NULL);
		c->line++;
		if (memchr(p, '\0', (size_t)(e - p)) != NULL)
			return fail(err, c, "NUL byte in line", NULL, 0);
		for (t = p; t < e && blank(*t); t++)
			;
		if (t == e || *t == '#')
			continue; /* blank or comment */
		if (t > p) {
			/* A continuation of the previous entry's value. */
			if (!c->have_entry)
				return fail(err, c, "continuation line without an entry", t,
					    (size_t)(e - t));
			continue;
		}
		for (t = p; t < e && !blank(*t); t++)
			;
		c->have_entry = true;
		if (key_check(c, p, (size_t)(t - p), err) < 0)
			return -1;
		*key = p;
		*n = (size_t)(t - p);
		return 1;
	}
	return 0;
}

/* ---- the table ---- */

static size_t
home(const struct rcpt_map *m, uint64_t h)
{
	return (size_t)(((h & 0xffffffffull) * m->nslots) >> 32);
}

/* The slot holding key k[0..n) (lower case), or the free slot that ends
 * its probe sequence. */
static struct rcpt_slot *
probe(const struct rcpt_map *m, const char *k, size_t n, uint64_t h)
{
	uint32_t tag = (uint32_t)(h >> 32);
	size_t i = home(m, h);

	for (;;) {
		struct rcpt_slot *sl = &m->slots[i];

		if (sl->off == 0)
			return sl;
		if (sl->tag == tag) {
			const char *a = m->arena + sl->off;

			if (memcmp(a, k, n) == 0 && a[n] == '\0')
				return sl;
		}
		if (++i == m->nslots)
			i = 0;
	}
}

static void
insert(struct rcpt_map *m, const char *key, size_t n)
{
	char *dst = m->arena + m->arena_len;
	struct rcpt_slot *sl;
	uint64_t h;

	for (size_t i = 0; i < n; i++)
		dst[i] = lower(key[i]);
	dst[n] = '\0';
	h = key_hash(dst, n);
	sl = probe(m, dst, n, h);
	if (sl->off != 0) {
		m->info.duplicates++;
		return;
	}
	assert(m->info.entries + 1 < m->nslots);
	sl->tag = (uint32_t)(h >> 32);
	sl->off = (uint32_t)m->arena_len;
	m->arena_len += n + 1;
	m->info.entries++;
	if (dst[0] == '@')
		m->info.catchall++;
}

/* Pass 1: every line checked, keys and their bytes counted. */
static int
count(const struct rcpt_map_src *src, size_t n, size_t *keys, size_t *bytes, char *err)
{
	*keys = 0;
	*bytes = 1; /* offset 0 */
	for (size_t f = 0; f < n; f++) {
		struct cursor c = {.src = &src[f]};
		const char *k;
		size_t kl;
		int rc;

		while ((rc = next_key(&c, &k, &kl, err)) == 1) {
			if (*keys == RCPT_MAP_ENTRIES_MAX) {
				snprintf(err, RCPT_MAP_ERR_MAX, "%s:%u: too many entries (max %u)",
					 src[f].name, c.line, RCPT_MAP_ENTRIES_MAX);
				return -1;
			}
			(*keys)++;
			*bytes += kl + 1;
		}
		if (rc < 0)
			return -1;
	}
	/* RCPT_MAP_ENTRIES_MAX keys of KEY_MAX bytes fit 32-bit offsets. */
	_Static_assert((uint64_t)RCPT_MAP_ENTRIES_MAX * (KEY_MAX + 1) < UINT32_MAX,
		       "arena offsets are 32 bits");
	return 0;
}

struct rcpt_map *
rcpt_map_build(const struct rcpt_map_src *src, size_t n, char err[RCPT_MAP_ERR_MAX])
{
	struct rcpt_map *m;
	size_t keys, bytes, nslots, total;

	assert(src != NULL || n == 0);
	err[0] = '\0';
	if (count(src, n, &keys, &bytes, err) < 0)
		return NULL;
	nslots = keys + keys / 2 + 1;
	total = sizeof(*m) + nslots * sizeof(struct rcpt_slot) + bytes;
	m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		snprintf(err, RCPT_MAP_ERR_MAX, "%s: out of memory (%zu bytes for %zu keys)",
			 n > 0 ? src[0].name : "recipient_maps", total, keys);
		return NULL;
	}
	/* Advice only: without THP (or in "never" mode) it is 4 KiB pages. */
	if (total >= (2u << 20))
		(void)madvise(m, total, MADV_HUGEPAGE);
	m->map_len = total;
	m->nslots = nslots;
	m->slots = (struct rcpt_slot *)(void *)(m + 1);
	m->arena = (char *)(m->slots + nslots);
	m->arena_len = 1;
	for (size_t f = 0; f < n; f++) {
		struct cursor c = {.src = &src[f]};
		const char *k;
		size_t kl;
		int rc;

		while ((rc = next_key(&c, &k, &kl, err)) == 1)
			insert(m, k, kl);
		assert(rc == 0); /* pass 1 checked every line */
	}
	assert(m->arena_len <= bytes && m->info.entries + m->info.duplicates == keys);
	m->info.slots = nslots;
	m->info.bytes = total;
	return m;
}

void
rcpt_map_free(struct rcpt_map *m)
{
	if (m != NULL)
		munmap(m, m->map_len);
}

void
rcpt_map_get_info(const struct rcpt_map *m, struct rcpt_map_info *info)
{
	*info = m->info;
}

static bool
known(const struct rcpt_map *m, const char *k, size_t n)
{
	return probe(m, k, n, key_hash(k, n))->off != 0;
}

int
rcpt_map_check(const struct rcpt_map *m, const char *addr, size_t len, struct smtp_check_reply *r)
{
	struct smtp_addr a;
	int n;

	/* The session parsed it already; UTF-8 allowed: it checked SMTPUTF8. */
	if (smtp_addr_parse(addr, len, true, &a) != SMTP_ADDR_OK || a.domain == NULL)
		return SMTP_CHECK_OK;
	if (rcpt_map_known(m, a.local, a.local_len, a.quoted, a.domain, a.domain_len))
		return SMTP_CHECK_OK;
	/* len <= SMTP_PATH_MAX: the reply fits SMTP_REPLY_MAX. */
	n = snprintf(r->text, sizeof(r->text),
		     "550 5.1.1 <%.*s>: Recipient address rejected: User unknown\r\n", (int)len,
		     addr);
	assert(n > 0 && (size_t)n < sizeof(r->text));
	r->len = (size_t)n;
	return SMTP_CHECK_REJECT;
}

bool
rcpt_map_known(const struct rcpt_map *m, const char *local, size_t local_len, bool quoted,
	       const char *domain, size_t domain_len)
{
	char k[KEY_MAX + 2];
	size_t n = 0, at;

	assert(m != NULL && domain != NULL);
	if (domain_len + 1 > KEY_MAX)
		return false; /* no key is that long */
	if (quoted && local_len >= 2 && local[0] == '"' && local[local_len - 1] == '"') {
		/* "a\"b" is looked up as a"b: Postfix's internal form. */
		for (size_t i = 1; i + 1 < local_len && n <= KEY_MAX; i++) {
			if (local[i] == '\\' && i + 2 < local_len)
				i++;
			k[n++] = lower(local[i]);
		}
	} else {
		for (size_t i = 0; i < local_len && n <= KEY_MAX; i++)
			k[n++] = lower(local[i]);
	}
	if (n + 1 + domain_len > KEY_MAX) {
		n = 0; /* too long to be a key: only @domain can know it */
	}
	at = n;
	k[n++] = '@';
	for (size_t i = 0; i < domain_len; i++)
		k[n++] = lower(domain[i]);
	if (at > 0 && known(m, k, n))
		return true;
	return known(m, k + at, n - at);
}
