/*
 * cidr_map.c - client_access tables (cidr_map.h): a Postfix cidr_table(5)
 * source read into one array of rules, scanned in file order at connect.
 *
 * Ownership rules
 *  - A map is one allocation: the header, the rule array and the text
 *    arena, sized by a first pass over the text that checks every line, so
 *    the second pass that fills it cannot fail and nothing is allocated
 *    per rule. Read-only once built (cidr_map.h says who frees it, when).
 *  - Lookups read the map only: no allocation, no lock, no I/O.
 *
 * Layout. A rule is 24 bytes: the network as two 64-bit words (the address
 * read big-endian, so a prefix is a mask of leading bits; an IPv4 network
 * sits in the top 32 bits of hi), the prefix length, the action and the
 * address family, and its REJECT text as offset and length into the arena.
 * The arena starts with CIDR_DEFAULT_TEXT, so a rule without text points
 * at offset 0 and the lookup has no special case. Every text is NUL
 * terminated in the arena as well.
 *
 * Syntax, as Postfix's cidr_table(5) with these differences, each of them
 * refused loudly rather than read another way: the action is one of OK,
 * DUNNO, REJECT (any case); an indented line is a rule of its own (Postfix
 * would continue the previous line); no `!` negation, no if/endif blocks.
 * An IPv6 rule inside ::ffff:0:0/96 is stored as the IPv4 rule it names,
 * because a v4-mapped client is looked up as IPv4 (cidr_map.h): Postfix
 * would keep it as a rule that never matches. Text after OK or DUNNO is
 * ignored, as Postfix ignores it, but is checked like REJECT text.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cidr_map.h"

#define RULE_V6 0x80u /* in rule.flags, above the action */

struct cidr_rule {
	uint64_t hi, lo;   /* the network, host bits zero */
	uint32_t text_off; /* into the arena; 0: CIDR_DEFAULT_TEXT */
	uint16_t text_len;
	uint8_t prefix; /* 0..32 or 0..128 */
	uint8_t flags;  /* enum cidr_action | RULE_V6 */
};

_Static_assert(sizeof(struct cidr_rule) == 24, "24 bytes a rule: 24 MB for CIDR_MAP_MAX");
_Static_assert(CIDR_TEXT_MAX <= UINT16_MAX, "text_len is 16 bits");
_Static_assert((uint64_t)CIDR_MAP_MAX *(CIDR_TEXT_MAX + 1) + sizeof(CIDR_DEFAULT_TEXT) < UINT32_MAX,
               "arena offsets are 32 bits");

struct cidr_map {
	size_t n;
	struct cidr_rule *rule; /* inside this allocation */
	char *arena;            /* inside this allocation, after the rules */
};

/* ---- errors ---- */

static void __attribute__((format(printf, 3, 4)))
msg(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* A printable copy of the untrusted token t[0..n) for a message: other
 * bytes become '?', and a long one is cut after 64 with "...". */
static const char *
quote(char b[72], const char *t, size_t n)
{
	size_t i, k = n > 64 ? 64 : n;

	for (i = 0; i < k; i++)
		b[i] = (t[i] >= 0x20 && t[i] < 0x7f) ? t[i] : '?';
	if (k < n) {
		memcpy(b + i, "...", 3);
		i += 3;
	}
	b[i] = '\0';
	return b;
}

/* ---- one line ---- */

struct cursor {
	const char *buf, *name;
	size_t len, pos;
	unsigned long line; /* of the line returned last */
	char *err;
	size_t errlen;
};

static int __attribute__((format(printf, 2, 3))) fail(const struct cursor *c, const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	msg(c->err, c->errlen, "%s:%lu: %s", c->name, c->line, why);
	return -EINVAL;
}

static bool
blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

static uint64_t
mask_of(unsigned bits)
{
	assert(bits <= 64);
	return bits == 0 ? 0 : ~0ull << (64 - bits);
}

/* The address bytes as a number, so a prefix is a mask of leading bits. */
static uint64_t
load_be64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return be64toh(v);
}

static void
store_be64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, sizeof(v));
}

/* The rule's network as text, for the host-bits message. */
static void
net_text(const struct cidr_rule *r, char *b, size_t cap)
{
	uint8_t a[16];
	char t[INET6_ADDRSTRLEN];

	store_be64(a, r->hi);
	store_be64(a + 8, r->lo);
	if (r->flags & RULE_V6) {
		inet_ntop(AF_INET6, a, t, sizeof(t));
		snprintf(b, cap, "%s/%u", t, r->prefix);
	} else {
		inet_ntop(AF_INET, a, t, sizeof(t));
		snprintf(b, cap, "%s/%u", t, r->prefix);
	}
}

/* NETWORK[/PREFIX] or ADDRESS, IPv6 optionally as [ADDRESS] or
 * [ADDRESS]/PREFIX: r's network and prefix. */
static int
parse_net(const struct cursor *c, const char *tok, size_t n, struct cidr_rule *r)
{
	char a[INET6_ADDRSTRLEN + 1], qb[72];
	const char *host = tok, *slash = memchr(tok, '/', n), *pl = NULL;
	size_t hl = slash != NULL ? (size_t)(slash - tok) : n, pn = 0;
	uint8_t bin[16] = {0};
	unsigned max, prefix = 0;
	bool v6, bracket = false;
	uint64_t hm, lm;

	if (slash != NULL) {
		pl = slash + 1;
		pn = n - hl - 1;
	}
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		host++;
		hl -= 2;
		bracket = true;
	}
	if (hl == 0 || hl >= sizeof(a))
		return fail(c, "bad address '%s'", quote(qb, tok, n));
	memcpy(a, host, hl);
	a[hl] = '\0';
	v6 = memchr(a, ':', hl) != NULL;
	if (bracket && !v6)
		return fail(c, "bad address '%s' (only IPv6 goes in brackets)", quote(qb, tok, n));
	if (inet_pton(v6 ? AF_INET6 : AF_INET, a, bin) != 1)
		return fail(c, "bad address '%s'", quote(qb, tok, n));
	max = v6 ? 128 : 32;
	if (pl != NULL) {
		if (pn == 0 || pn > 3)
			return fail(c, "bad prefix length in '%s'", quote(qb, tok, n));
		for (size_t i = 0; i < pn; i++) {
			if (pl[i] < '0' || pl[i] > '9')
				return fail(c, "bad prefix length in '%s'", quote(qb, tok, n));
			prefix = prefix * 10 + (unsigned)(pl[i] - '0');
		}
		if (prefix > max)
			return fail(c, "prefix length out of range (0..%u) in '%s'", max,
			            quote(qb, tok, n));
	} else {
		prefix = max;
	}
	if (v6 && prefix >= 96 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(void *)bin)) {
		/* Clients in ::ffff:0:0/96 are looked up as IPv4. */
		memmove(bin, bin + 12, 4);
		memset(bin + 4, 0, 12);
		prefix -= 96;
		v6 = false;
	}
	r->hi = load_be64(bin);
	r->lo = load_be64(bin + 8);
	r->prefix = (uint8_t)prefix;
	r->flags = v6 ? RULE_V6 : 0;
	hm = mask_of(prefix > 64 ? 64 : prefix);
	lm = mask_of(prefix > 64 ? prefix - 64 : 0);
	if ((r->hi & ~hm) != 0 || (r->lo & ~lm) != 0) {
		char nb[INET6_ADDRSTRLEN + 8];

		r->hi &= hm;
		r->lo &= lm;
		net_text(r, nb, sizeof(nb));
		/* Postfix's wording: 10.0.0.1/8 is more likely a typo than an
		 * intent, so it is refused, not masked. */
		return fail(
		    c, "non-null host address bits in '%s', perhaps you should use '%s' instead",
		    quote(qb, tok, n), nb);
	}
	return 0;
}

static int
parse_action(const struct cursor *c, const char *tok, size_t n, struct cidr_rule *r)
{
	static const struct {
		const char *name;
		size_t len;
		enum cidr_action act;
	} names[] = {{"OK", 2, CIDR_OK}, {"DUNNO", 5, CIDR_DUNNO}, {"REJECT", 6, CIDR_REJECT}};
	char qb[72];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (n == names[i].len && strncasecmp(tok, names[i].name, n) == 0) {
			r->flags |= (uint8_t)names[i].act;
			return 0;
		}
	}
	return fail(c, "unknown action '%s' (OK, DUNNO or REJECT)", quote(qb, tok, n));
}

/* The optional text: printable ASCII and tabs (RFC 5321 textstring), it
 * ends up in a reply line and a log line. */
static int
check_text(const struct cursor *c, const char *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)t[i];

		if ((ch < 0x20 && ch != '\t') || ch >= 0x7f)
			return fail(c, "control or non-ASCII character (0x%02x) in text", ch);
	}
	if (n > CIDR_TEXT_MAX)
		return fail(c, "text too long (%zu bytes, max %u)", n, CIDR_TEXT_MAX);
	return 0;
}

/*
 * The next rule of c's text: 1 with *r and its text t[0..*tn) set (*tn 0:
 * none, or the action is not REJECT); 0 at the end; -EINVAL with the
 * message for a bad line.
 */
static int
next_rule(struct cursor *c, struct cidr_rule *r, const char **t, size_t *tn)
{
	while (c->pos < c->len) {
		const char *p = c->buf + c->pos, *nl, *e, *s, *tok;
		size_t left = c->len - c->pos, tn_net;

		nl = memchr(p, '\n', left);
		e = nl != NULL ? nl : p + left;
		c->pos += (size_t)(e - p) + (nl != NULL);
		c->line++;
		if (e > p && e[-1] == '\r')
			e--; /* CR LF */
		if ((size_t)(e - p) > CIDR_LINE_MAX)
			return fail(c, "line too long (%zu bytes, max %u)", (size_t)(e - p),
			            CIDR_LINE_MAX);
		if (memchr(p, '\0', (size_t)(e - p)) != NULL)
			return fail(c, "NUL byte in line");
		for (s = p; s < e && blank(*s); s++)
			;
		if (s == e || *s == '#')
			continue; /* blank or comment */
		memset(r, 0, sizeof(*r));
		for (tok = s; s < e && !blank(*s); s++)
			;
		tn_net = (size_t)(s - tok);
		if (parse_net(c, tok, tn_net, r) < 0)
			return -EINVAL;
		while (s < e && blank(*s))
			s++;
		if (s == e) {
			char qb[72];

			return fail(c, "missing action after '%s'", quote(qb, tok, tn_net));
		}
		for (tok = s; s < e && !blank(*s); s++)
			;
		if (parse_action(c, tok, (size_t)(s - tok), r) < 0)
			return -EINVAL;
		while (s < e && blank(*s))
			s++;
		while (e > s && blank(e[-1]))
			e--;
		if (check_text(c, s, (size_t)(e - s)) < 0)
			return -EINVAL;
		*t = s;
		*tn = (r->flags & ~RULE_V6) == CIDR_REJECT ? (size_t)(e - s) : 0;
		return 1;
	}
	return 0;
}

/* ---- building ---- */

int
cidr_map_parse(const char *buf, size_t len, const char *name, struct cidr_map **out, char *err,
               size_t errlen)
{
	struct cursor c = {.buf = buf, .name = name, .len = len, .err = err, .errlen = errlen};
	size_t n = 0, bytes = sizeof(CIDR_DEFAULT_TEXT), tn, total;
	struct cidr_rule r;
	struct cidr_map *m;
	const char *t;
	int rc;

	assert(out != NULL && name != NULL && (buf != NULL || len == 0));
	*out = NULL;
	msg(err, errlen, "%s", "");
	/* Pass 1: every line checked, rules and text bytes counted. */
	while ((rc = next_rule(&c, &r, &t, &tn)) == 1) {
		if (n == CIDR_MAP_MAX)
			return fail(&c, "too many entries (max %u)", CIDR_MAP_MAX);
		n++;
		if (tn > 0)
			bytes += tn + 1;
	}
	if (rc < 0)
		return rc;
	total = sizeof(*m) + n * sizeof(struct cidr_rule) + bytes;
	m = malloc(total);
	if (m == NULL) {
		msg(err, errlen, "%s: out of memory (%zu bytes for %zu entries)", name, total, n);
		return -ENOMEM;
	}
	m->n = 0;
	m->rule = (struct cidr_rule *)(void *)(m + 1);
	m->arena = (char *)(m->rule + n);
	memcpy(m->arena, CIDR_DEFAULT_TEXT, sizeof(CIDR_DEFAULT_TEXT));
	bytes = sizeof(CIDR_DEFAULT_TEXT);
	/* Pass 2: the same lines again, stored. */
	c.pos = 0;
	c.line = 0;
	while ((rc = next_rule(&c, &r, &t, &tn)) == 1) {
		if (tn > 0) {
			r.text_off = (uint32_t)bytes;
			r.text_len = (uint16_t)tn;
			memcpy(m->arena + bytes, t, tn);
			m->arena[bytes + tn] = '\0';
			bytes += tn + 1;
		} else if ((r.flags & ~RULE_V6) == CIDR_REJECT) {
			r.text_len = sizeof(CIDR_DEFAULT_TEXT) - 1; /* offset 0 */
		}
		m->rule[m->n++] = r;
	}
	assert(rc == 0 && m->n == n); /* pass 1 checked every line */
	*out = m;
	return 0;
}

int
cidr_map_load(const char *path, struct cidr_map **out, char *err, size_t errlen)
{
	size_t cap, len = 0;
	struct stat st;
	char *buf;
	int fd, rc;

	assert(path != NULL && out != NULL);
	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		msg(err, errlen, "%s: %s", path, strerror(-rc));
		return rc;
	}
	/* The size is a hint only: the file may change while it is read. */
	cap = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size < CIDR_FILE_MAX
	          ? (size_t)st.st_size + 1
	          : 65536;
	buf = malloc(cap);
	if (buf == NULL) {
		close(fd);
		msg(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	for (;;) {
		ssize_t k;

		if (len == cap) {
			size_t ncap = cap * 2 > CIDR_FILE_MAX + 1 ? CIDR_FILE_MAX + 1 : cap * 2;
			char *nb;

			/* One byte past the limit proves the file is over it. */
			if (len > CIDR_FILE_MAX)
				break;
			nb = realloc(buf, ncap);
			if (nb == NULL) {
				rc = -ENOMEM;
				msg(err, errlen, "%s: out of memory", path);
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		k = read(fd, buf + len, cap - len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = -errno;
			msg(err, errlen, "%s: %s", path, strerror(-rc));
			goto out;
		}
		if (k == 0)
			break;
		len += (size_t)k;
	}
	if (len > CIDR_FILE_MAX) {
		rc = -EFBIG;
		msg(err, errlen, "%s: larger than %llu bytes", path,
		    (unsigned long long)CIDR_FILE_MAX);
		goto out;
	}
	rc = cidr_map_parse(buf, len, path, out, err, errlen);
out:
	free(buf);
	close(fd);
	return rc;
}

/* ---- lookups ---- */

enum cidr_action
cidr_map_lookup(const struct cidr_map *m, const struct sockaddr *sa, const char **text,
                size_t *text_len)
{
	uint64_t hi, lo = 0;
	uint8_t fam;

	if (text != NULL)
		*text = NULL;
	if (text_len != NULL)
		*text_len = 0;
	if (m == NULL || sa == NULL)
		return CIDR_NONE;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;

		hi = (uint64_t)ntohl(s4->sin_addr.s_addr) << 32;
		fam = 0;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *x =
		    &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(x)) {
			/* A dual-stack [::] listener shows IPv4 clients as
			 * ::ffff:a.b.c.d; the table says 192.0.2.0/24. */
			hi = (uint64_t)x->s6_addr[12] << 56 | (uint64_t)x->s6_addr[13] << 48 |
			     (uint64_t)x->s6_addr[14] << 40 | (uint64_t)x->s6_addr[15] << 32;
			fam = 0;
		} else {
			hi = load_be64(x->s6_addr);
			lo = load_be64(x->s6_addr + 8);
			fam = RULE_V6;
		}
	} else {
		return CIDR_NONE;
	}
	for (size_t i = 0; i < m->n; i++) {
		const struct cidr_rule *r = &m->rule[i];
		unsigned p = r->prefix;
		enum cidr_action a;

		if ((r->flags & RULE_V6) != fam)
			continue;
		if (((hi ^ r->hi) & mask_of(p > 64 ? 64 : p)) != 0 ||
		    ((lo ^ r->lo) & mask_of(p > 64 ? p - 64 : 0)) != 0)
			continue;
		a = (enum cidr_action)(r->flags & ~RULE_V6);
		if (a == CIDR_REJECT) {
			if (text != NULL)
				*text = m->arena + r->text_off;
			if (text_len != NULL)
				*text_len = r->text_len;
		}
		return a;
	}
	return CIDR_NONE;
}

size_t
cidr_map_count(const struct cidr_map *m)
{
	return m != NULL ? m->n : 0;
}

void
cidr_map_free(struct cidr_map *m)
{
	free(m);
}
