/*
 * dnsbl.c - dnsbl_sites (dnsbl.h): the postscreen-style site list parser,
 * query names, scoring and the canonical text form.
 *
 * Ownership rules
 *  - Pure functions over caller-owned values: no I/O, no clock, no
 *    allocation. The parser writes only *out and err.
 *
 * A filter is kept as four 256-bit sets, one per answer octet, so matching
 * an answer is four bit tests whatever the pattern was; an entry without
 * a filter has every bit set (and `any`, so the text form can tell it
 * from an explicit [0..255] filter). Distinct domains are found by a
 * linear search: there are at most DNSBL_QUERIES_MAX of them and this runs
 * once per configuration load.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config_syntax.h"
#include "dnsbl.h"

_Static_assert(DNSBL_DOMAIN_MAX < sizeof(((struct dnsbl_site *)0)->domain), "domain field");
_Static_assert(64 + DNSBL_DOMAIN_MAX <= DNSBL_NAME_MAX - 1, "an IPv6 query name fits");
_Static_assert(DNSBL_QUERIES_MAX <= 256 && DNSBL_SITES_MAX <= 256, "uint8_t indexes");

static bool
list_sep(char c)
{
	return c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
	       c == '\f';
}

static char
lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool
label_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

static void
bit_set(uint8_t set[32], unsigned v)
{
	set[v >> 3] = (uint8_t)(set[v >> 3] | (1u << (v & 7)));
}

static bool
bit_test(const uint8_t set[32], unsigned v)
{
	return (set[v >> 3] >> (v & 7)) & 1u;
}

/* ---- parsing ---- */

/* The entry being parsed, for error messages. */
struct entry {
	const char *tok;
	size_t len;
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int
fail(const struct entry *e, const char *fmt, ...)
{
	char q[280], why[128];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	syn_quote_n(q, sizeof(q), e->tok, e->len);
	if (e->errlen > 0)
		snprintf(e->err, e->errlen, "dnsbl_sites: entry \"%s\": %s", q, why);
	return -EINVAL;
}

/* The domain d[0..n) into dst, folded to lower case. */
static int
parse_domain(const struct entry *e, const char *d, size_t n, char *dst)
{
	size_t label = 0;

	if (n == 0)
		return fail(e, "empty domain");
	if (n > DNSBL_DOMAIN_MAX)
		return fail(e, "domain longer than %d characters", DNSBL_DOMAIN_MAX);
	for (size_t i = 0; i < n; i++) {
		if (d[i] == '.') {
			if (label == 0)
				return fail(e, "empty label in domain");
			label = 0;
		} else if (!label_char(d[i])) {
			return fail(e, "invalid character in domain");
		} else if (++label > 63) {
			return fail(e, "domain label longer than 63 characters");
		}
		dst[i] = lower(d[i]);
	}
	if (label == 0)
		return fail(e, "empty label in domain");
	dst[n] = '\0';
	return 0;
}

/* A number 0..255 of at most 3 digits at *p (before end); advances *p. */
static int
parse_num(const char **p, const char *end, unsigned *v)
{
	const char *s = *p;
	unsigned x = 0;

	while (*p < end && **p >= '0' && **p <= '9' && *p - s < 3)
		x = x * 10 + (unsigned)(*(*p)++ - '0');
	if (*p == s || x > 255 || (*p < end && **p >= '0' && **p <= '9'))
		return -1;
	*v = x;
	return 0;
}

/* One octet pattern at *p: a number, or [elem;elem...] with elem a number
 * or a..b. Adds its values to set; advances *p. */
static int
parse_octet(const char **p, const char *end, uint8_t set[32])
{
	unsigned a, b;

	if (*p < end && **p != '[') {
		if (parse_num(p, end, &a) < 0)
			return -1;
		bit_set(set, a);
		return 0;
	}
	(*p)++;
	for (;;) {
		if (parse_num(p, end, &a) < 0)
			return -1;
		b = a;
		if (end - *p >= 2 && (*p)[0] == '.' && (*p)[1] == '.') {
			*p += 2;
			if (parse_num(p, end, &b) < 0 || b < a)
				return -1;
		}
		for (unsigned v = a; v <= b; v++)
			bit_set(set, v);
		if (*p >= end)
			return -1;
		if (*(*p)++ == ']')
			return 0;
		if ((*p)[-1] != ';')
			return -1;
	}
}

static int
parse_filter(const struct entry *e, const char *f, size_t n, struct dnsbl_site *site)
{
	const char *p = f, *end = f + n;

	for (int i = 0; i < 4; i++) {
		if (i > 0 && (p >= end || *p++ != '.'))
			return fail(e, "bad filter: want four octet patterns d.d.d.d");
		if (parse_octet(&p, end, site->octet[i]) < 0)
			return fail(e,
			            "bad filter: octet %d is not a number 0..255, [a..b] or "
			            "[x;y;z]",
			            i + 1);
	}
	if (p != end)
		return fail(e, "bad filter: want four octet patterns d.d.d.d");
	return 0;
}

static int
parse_weight(const struct entry *e, const char *w, size_t n, int *out)
{
	size_t i = 0;
	bool neg = false;
	long v = 0;

	if (i < n && (w[i] == '-' || w[i] == '+'))
		neg = w[i++] == '-';
	if (i == n)
		return fail(e, "bad weight: not an integer");
	for (; i < n; i++) {
		if (w[i] < '0' || w[i] > '9')
			return fail(e, "bad weight: not an integer");
		if (v <= DNSBL_WEIGHT_MAX) /* stop growing: out of range already */
			v = v * 10 + (w[i] - '0');
	}
	if (neg)
		v = -v;
	if (v < DNSBL_WEIGHT_MIN || v > DNSBL_WEIGHT_MAX)
		return fail(e, "weight out of range %d..%d", DNSBL_WEIGHT_MIN, DNSBL_WEIGHT_MAX);
	*out = (int)v;
	return 0;
}

/* The query of site's domain: an earlier entry's, or a new one. */
static int
assign_query(const struct entry *e, struct dnsbl_sites *s, struct dnsbl_site *site)
{
	for (unsigned q = 0; q < s->nqueries; q++)
		if (strcmp(s->site[s->query_site[q]].domain, site->domain) == 0) {
			site->query = (uint8_t)q;
			return 0;
		}
	if (s->nqueries == DNSBL_QUERIES_MAX)
		return fail(e, "more than %d distinct domains", DNSBL_QUERIES_MAX);
	site->query = (uint8_t)s->nqueries;
	s->query_site[s->nqueries++] = (uint8_t)s->nsites;
	return 0;
}

static int
parse_entry(const struct entry *e, struct dnsbl_sites *s)
{
	const char *t = e->tok, *end = t + e->len;
	const char *eq = memchr(t, '=', e->len), *star = memchr(t, '*', e->len);
	const char *dend = end;
	struct dnsbl_site *site;
	int rc;

	if (s->nsites == DNSBL_SITES_MAX)
		return fail(e, "more than %d entries", DNSBL_SITES_MAX);
	site = &s->site[s->nsites];
	memset(site, 0, sizeof(*site));
	site->weight = 1;
	if (star != NULL && eq > star)
		eq = NULL; /* an '=' after the '*' is junk in the weight */
	if (eq != NULL)
		dend = eq;
	else if (star != NULL)
		dend = star;
	if ((rc = parse_domain(e, t, (size_t)(dend - t), site->domain)) < 0)
		return rc;
	if (eq != NULL) {
		const char *fend = star != NULL ? star : end;

		if ((rc = parse_filter(e, eq + 1, (size_t)(fend - eq - 1), site)) < 0)
			return rc;
	} else {
		site->any = true;
		memset(site->octet, 0xff, sizeof(site->octet));
	}
	if (star != NULL &&
	    (rc = parse_weight(e, star + 1, (size_t)(end - star - 1), &site->weight)) < 0)
		return rc;
	if ((rc = assign_query(e, s, site)) < 0)
		return rc;
	s->nsites++;
	return 0;
}

int
dnsbl_sites_parse(const char *text, struct dnsbl_sites *out, char *err, size_t errlen)
{
	const char *p = text;

	memset(out, 0, sizeof(*out));
	if (errlen > 0)
		err[0] = '\0';
	for (;;) {
		struct entry e = {.err = err, .errlen = errlen};
		int rc;

		while (list_sep(*p))
			p++;
		if (*p == '\0')
			return 0;
		e.tok = p;
		while (*p != '\0' && !list_sep(*p))
			p++;
		e.len = (size_t)(p - e.tok);
		if ((rc = parse_entry(&e, out)) < 0) {
			memset(out, 0, sizeof(*out));
			return rc;
		}
	}
}

/* ---- query names ---- */

int
dnsbl_query_name(const struct sockaddr *sa, const char *domain, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	char name[64 + DNSBL_NAME_MAX + 1];
	size_t dlen = strlen(domain), o = 0;
	uint8_t b[16];

	if (dlen == 0)
		return -EINVAL;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in in;

		memcpy(&in, sa, sizeof(in));
		memcpy(b, &in.sin_addr, 4);
		o = (size_t)snprintf(name, sizeof(name), "%u.%u.%u.%u.", b[3], b[2], b[1], b[0]);
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 in6;

		memcpy(&in6, sa, sizeof(in6));
		memcpy(b, &in6.sin6_addr, 16);
		if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
			o = (size_t)snprintf(name, sizeof(name), "%u.%u.%u.%u.", b[15], b[14],
			                     b[13], b[12]);
		} else {
			for (int i = 15; i >= 0; i--) {
				name[o++] = hex[b[i] & 15];
				name[o++] = '.';
				name[o++] = hex[b[i] >> 4];
				name[o++] = '.';
			}
		}
	} else {
		return -EAFNOSUPPORT;
	}
	if (o + dlen > DNSBL_NAME_MAX - 1 || o + dlen >= outlen)
		return -ENAMETOOLONG;
	memcpy(out, name, o);
	memcpy(out + o, domain, dlen + 1);
	return (int)(o + dlen);
}

/* ---- scoring ---- */

static bool
site_matches(const struct dnsbl_site *site, const struct dnsbl_answer *a)
{
	unsigned n = a->n < DNSBL_ADDR_MAX ? a->n : DNSBL_ADDR_MAX;

	for (unsigned i = 0; i < n; i++) {
		uint8_t b[4];

		memcpy(b, &a->addr[i], 4); /* network order: b[0] is the first octet */
		if (bit_test(site->octet[0], b[0]) && bit_test(site->octet[1], b[1]) &&
		    bit_test(site->octet[2], b[2]) && bit_test(site->octet[3], b[3]))
			return true;
	}
	return false;
}

int
dnsbl_score(const struct dnsbl_sites *s, const struct dnsbl_answer *ans, const char **blame)
{
	const char *who = NULL;
	int score = 0, best = 0;

	for (unsigned i = 0; i < s->nsites; i++) {
		const struct dnsbl_site *site = &s->site[i];

		if (!site_matches(site, &ans[site->query]))
			continue;
		score += site->weight;
		if (site->weight > best) {
			best = site->weight;
			who = site->domain;
		}
	}
	if (blame != NULL)
		*blame = who;
	return score;
}

/* ---- text form ---- */

struct out {
	char *p;
	size_t cap, len;
};

static void
put(struct out *o, const char *s, size_t n)
{
	if (o->len < o->cap) {
		size_t room = o->cap - 1 - o->len;

		memcpy(o->p + o->len, s, n < room ? n : room);
	}
	o->len += n;
}

__attribute__((format(printf, 2, 3))) static void
putf(struct out *o, const char *fmt, ...)
{
	char b[32];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	put(o, b, (size_t)n);
}

/* An octet set as a number, or as a bracket list of runs: a run of one
 * is "a", of two "a;b", longer "a..b". */
static void
put_octet(struct out *o, const uint8_t set[32])
{
	unsigned count = 0, v = 0;
	bool first = true;

	for (unsigned i = 0; i < 256; i++)
		if (bit_test(set, i)) {
			count++;
			v = i;
		}
	if (count == 1) {
		putf(o, "%u", v);
		return;
	}
	put(o, "[", 1);
	for (unsigned a = 0; a < 256; a++) {
		unsigned b = a;

		if (!bit_test(set, a))
			continue;
		while (b + 1 < 256 && bit_test(set, b + 1))
			b++;
		putf(o, first ? "%u" : ";%u", a);
		if (b == a + 1)
			putf(o, ";%u", b);
		else if (b > a + 1)
			putf(o, "..%u", b);
		first = false;
		a = b;
	}
	put(o, "]", 1);
}

size_t
dnsbl_sites_format(const struct dnsbl_sites *s, char *out, size_t outlen)
{
	struct out o = {.p = out, .cap = outlen};

	for (unsigned i = 0; i < s->nsites; i++) {
		const struct dnsbl_site *site = &s->site[i];

		if (i > 0)
			put(&o, ", ", 2);
		put(&o, site->domain, strlen(site->domain));
		if (!site->any)
			for (int k = 0; k < 4; k++) {
				put(&o, k == 0 ? "=" : ".", 1);
				put_octet(&o, site->octet[k]);
			}
		if (site->weight != 1)
			putf(&o, "*%d", site->weight);
	}
	if (outlen > 0)
		out[o.len < outlen ? o.len : outlen - 1] = '\0';
	return o.len;
}
