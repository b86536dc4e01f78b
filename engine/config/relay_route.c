/*
 * relay_route.c - next hops for relayed mail: the next-hop syntax shared by
 * relay_host and transport_maps, the transport map parser, and
 * relay_route(), the per-recipient lookup the relay runs (engine/relay/relay.c).
 * Contract: include/ringmx/config.h (relay_route, struct relay_conf) and
 * engine/config/relay_route.h (the parser, for config.c and the fuzzer);
 * documented in docs/config.md ("Transport map").
 *
 * Owner: the configuration module. The map built here belongs to the
 * struct config it is part of: built once on the main thread at load time
 * (start-up, -t, SIGHUP), read-only afterwards, so relay_route() may run on
 * every worker without locks. relay_map_free() is its only destructor
 * (called by config_free()).
 *
 * Invariants of a parsed map: r->map is sorted by strcmp() of its domains,
 * which are lower case, unique, and either "example.org" or
 * ".example.org"; "*" is never in it (it is r->default_hop); every hop
 * index is < r->nhops.
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "config_syntax.h"
#include "dns_resolve.h"
#include "relay_route.h"

static char
lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool
blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* ---- one next hop ---- */

static int
hop_unix(const char *path, struct relay_hop_member *h, char *why, size_t whylen)
{
	struct sockaddr_un *su = (struct sockaddr_un *)&h->literal;
	size_t n = strlen(path);

	_Static_assert(sizeof(struct sockaddr_un) <= sizeof(struct sockaddr_storage),
		       "sockaddr_un must fit the hop's address");
	if (path[0] != '/') {
		snprintf(why, whylen, "unix socket path must be absolute");
		return -1;
	}
	/* The kernel needs room for the terminating NUL in sun_path. */
	if (n >= sizeof(su->sun_path)) {
		snprintf(why, whylen, "unix socket path too long (max %zu bytes)",
		    sizeof(su->sun_path) - 1);
		return -1;
	}
	su->sun_family = AF_UNIX;
	memcpy(su->sun_path, path, n + 1);
	h->literal_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	snprintf(h->text, sizeof(h->text), "lmtp:unix:%s", path);
	return 0;
}

/* One member s[0..n) of a next-hop list into *h (zeroed first). */
static int
member_parse(const char *s, size_t n, bool need_proto, struct relay_hop_member *h, char *why,
	     size_t whylen)
{
	static const char *const proto[] = {"smtp", "lmtp"};
	char b[CONFIG_HOP_TEXT_MAX], *p = b, *host, *port;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&h->literal;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&h->literal;
	uint64_t pn;
	size_t i;

	memset(h, 0, sizeof(*h));
	if (n >= sizeof(b)) {
		snprintf(why, whylen, "too long (max %zu bytes)", sizeof(b) - 1);
		return -1;
	}
	for (i = 0; i < n; i++) {
		/* Blanks would split a map line; control bytes would forge log
		 * lines; neither can be part of a host or a socket path. */
		if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f) {
			snprintf(why, whylen, "blank or control character");
			return -1;
		}
		b[i] = s[i];
	}
	b[n] = '\0';
	h->proto = RELAY_PROTO_SMTP;
	if (strncmp(p, "smtp:", 5) == 0) {
		p += 5;
	} else if (strncmp(p, "lmtp:", 5) == 0) {
		h->proto = RELAY_PROTO_LMTP;
		p += 5;
	} else if (need_proto) {
		snprintf(why, whylen, "expected smtp: or lmtp: before the host");
		return -1;
	}
	/* Any case: the text lower-cases a host name, and a host "Unix"
	 * would come out as "lmtp:unix:PORT", another hop's syntax. */
	if (strncasecmp(p, "unix:", 5) == 0) {
		if (h->proto != RELAY_PROTO_LMTP) {
			snprintf(why, whylen, "a unix socket needs lmtp:");
			return -1;
		}
		return hop_unix(p + 5, h, why, whylen);
	}

	if (*p == '[') {
		char *rb = strchr(p, ']');

		if (rb == NULL || rb[1] != ':') {
			snprintf(why, whylen, "expected HOST:PORT");
			return -1;
		}
		*rb = '\0';
		host = p + 1;
		port = rb + 2;
		/* [IPv6], and Postfix's [name] / [IPv4], which here mean the
		 * same as without brackets. */
		if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
			s6->sin6_family = AF_INET6;
			h->literal_len = sizeof(*s6);
		} else if (strchr(host, ':') != NULL) {
			snprintf(why, whylen, "not an IPv6 address");
			return -1;
		}
	} else {
		port = strrchr(p, ':');
		if (port == NULL) {
			snprintf(why, whylen, "expected HOST:PORT");
			return -1;
		}
		*port++ = '\0';
		host = p;
		if (strchr(host, ':') != NULL) {
			struct in6_addr a6;

			/* "::1:25", or an unknown prefix ("esmtp:x:25"). */
			snprintf(why, whylen, "%s", inet_pton(AF_INET6, host, &a6) == 1
						       ? "IPv6 addresses must be in brackets"
						       : "not a host name or address");
			return -1;
		}
	}
	if (h->literal_len == 0) {
		if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
			s4->sin_family = AF_INET;
			h->literal_len = sizeof(*s4);
		} else if (!syn_domain_valid(host, strlen(host), false)) {
			snprintf(why, whylen, "not a host name or address");
			return -1;
		}
	}
	if (syn_parse_uint(port, &pn) != 0 || pn < 1 || pn > 65535) {
		snprintf(why, whylen, "port not in 1..65535");
		return -1;
	}

	/* host: what TLS names and checks; text: the hop's identity, one
	 * spelling per hop, so "SMTP.example.org" and "smtp.example.org"
	 * share connections and so that literals are in inet_ntop() form. */
	if (h->literal_len == 0) {
		for (i = 0; host[i] != '\0'; i++)
			h->host[i] = lower(host[i]);
		h->host[i] = '\0';
	} else if (h->literal.ss_family == AF_INET) {
		s4->sin_port = htons((uint16_t)pn);
		inet_ntop(AF_INET, &s4->sin_addr, h->host, sizeof(h->host));
	} else {
		s6->sin6_port = htons((uint16_t)pn);
		inet_ntop(AF_INET6, &s6->sin6_addr, h->host, sizeof(h->host));
	}
	snprintf(h->text, sizeof(h->text),
		 h->literal.ss_family == AF_INET6 ? "%s:[%s]:%u" : "%s:%s:%u", proto[h->proto],
		 h->host, (unsigned)pn);
	return 0;
}

/* Append an address unless the list has it already (two names of one
 * host, or a name and its literal, must not make it tried twice). */
static bool
addr_add(struct relay_hop_conf *h, const struct sockaddr *sa, socklen_t len, unsigned member)
{
	unsigned i;

	for (i = 0; i < h->na; i++)
		if (h->a[i].len == len && memcmp(&h->a[i].sa, sa, len) == 0)
			return true;
	if (h->na == CONFIG_HOP_ADDRS)
		return false;
	memset(&h->a[h->na], 0, sizeof(h->a[h->na]));
	memcpy(&h->a[h->na].sa, sa, len);
	h->a[h->na].len = len;
	h->a[h->na].member = (uint8_t)member;
	h->na++;
	return true;
}

int
relay_hop_parse(const char *s, size_t n, bool need_proto, struct relay_hop_conf *h,
		char *why, size_t whylen)
{
	size_t i = 0, tl = 0;
	bool literal = true;

	assert(s != NULL && h != NULL && why != NULL);
	memset(h, 0, sizeof(*h));
	if (n >= CONFIG_HOP_LIST_MAX) {
		snprintf(why, whylen, "too long (max %d bytes)", CONFIG_HOP_LIST_MAX - 1);
		return -1;
	}
	for (;;) {
		size_t b, e;

		while (i < n && blank(s[i]))
			i++;
		b = i;
		while (i < n && s[i] != ',')
			i++;
		e = i;
		while (e > b && blank(s[e - 1]))
			e--;
		if (e == b) {
			snprintf(why, whylen, "%s", h->nm == 0 && i == n ? "empty"
						      : "empty member in the list");
			return -1;
		}
		if (h->nm == CONFIG_HOP_MEMBERS) {
			snprintf(why, whylen, "more than %d next hops in one list",
				 CONFIG_HOP_MEMBERS);
			return -1;
		}
		struct relay_hop_member *m = &h->m[h->nm];
		if (member_parse(s + b, e - b, need_proto, m, why, whylen) < 0)
			return -1;
		for (unsigned k = 0; k < h->nm; k++)
			if (strcmp(h->m[k].text, m->text) == 0) {
				snprintf(why, whylen, "%s is listed twice", m->text);
				return -1;
			}
		tl += (size_t)snprintf(h->text + tl, sizeof(h->text) - tl, "%s%s",
				       h->nm > 0 ? ", " : "", m->text);
		literal &= m->literal_len > 0;
		h->nm++;
		if (i == n)
			break;
		i++; /* the comma */
	}
	if (literal && relay_hop_resolve(h, "", NULL, why, whylen) < 0)
		return -1;
	return 0;
}

int
relay_hop_resolve(struct relay_hop_conf *h, const char *servers, unsigned *bad, char *why,
		  size_t whylen)
{
	/* One more than fits: a name with too many addresses is refused, not
	 * silently cut. */
	struct dns_addr found[CONFIG_HOP_ADDRS + 1];
	unsigned k, j, nf, dummy;

	if (bad == NULL)
		bad = &dummy;
	assert(h->nm > 0);
	/* Rebuilt in member order on every load: a name's addresses change. */
	h->na = 0;
	for (k = 0; k < h->nm; k++) {
		const struct relay_hop_member *m = &h->m[k];
		const char *port;
		uint64_t pn = 0;

		if (m->literal_len != 0) {
			if (!addr_add(h, (const struct sockaddr *)&m->literal, m->literal_len, k))
				goto full;
			continue;
		}
		assert(m->host[0] != '\0');
		/* The port is the text's last field: "smtp:NAME:PORT". */
		port = strrchr(m->text, ':');
		assert(port != NULL);
		if (syn_parse_uint(port + 1, &pn) != 0)
			abort(); /* member_parse() wrote it */
		/* The same resolver as screening (dns_servers), main thread
		 * only: see dns_resolve.h. */
		if (dns_resolve_host(servers, m->host, (uint16_t)pn, found, CONFIG_HOP_ADDRS + 1, &nf,
				     why, whylen) < 0) {
			*bad = k;
			return -1;
		}
		for (j = 0; j < nf; j++)
			if (!addr_add(h, (const struct sockaddr *)&found[j].sa, found[j].len, k))
				goto full;
	}
	return 0;
full:
	*bad = k;
	snprintf(why, whylen, "more than %d addresses in one next hop", CONFIG_HOP_ADDRS);
	return -1;
}

int
relay_hop_add(struct relay_conf *r, const struct relay_hop_conf *h)
{
	size_t i;

	assert(r->nhops <= CONFIG_MAX_HOPS && h->text[0] != '\0');
	/* At most CONFIG_MAX_HOPS hops: a linear scan costs less than keeping
	 * an index, even for a map of CONFIG_MAX_TRANSPORT lines. */
	for (i = 0; i < r->nhops; i++)
		if (strcmp(r->hops[i].text, h->text) == 0)
			return (int)i;
	if (r->nhops == CONFIG_MAX_HOPS)
		return -1;
	r->hops[r->nhops] = *h;
	return (int)r->nhops++;
}

/* ---- the map ---- */

/* An entry while the file is read: the line is kept for messages. */
struct pending {
	char *domain;
	uint32_t hop;
	unsigned line;
};

static int
pending_cmp(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;
	int c = strcmp(x->domain, y->domain);

	if (c != 0)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

static void
pending_free(struct pending *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i].domain);
	free(v);
}

/* Map parser state: the first error wins. */
struct mparse {
	struct relay_conf *r;
	const char *name;
	char *err;
	size_t errlen;
	unsigned line;
	struct pending *v;
	size_t n, cap;
	unsigned star_line;
	size_t hops_before;
	struct relay_hop_origin *origin;
};

static int mfail(struct mparse *m, const char *dom, size_t dl, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* "NAME:LINE: DOMAIN: problem", or "NAME:LINE: problem" without a domain. */
static int
mfail(struct mparse *m, const char *dom, size_t dl, const char *fmt, ...)
{
	char prob[CONFIG_ERR_MAX], qd[288];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prob, sizeof(prob), fmt, ap);
	va_end(ap);
	if (dom == NULL) {
		snprintf(m->err, m->errlen, "%s:%u: %s", m->name, m->line, prob);
	} else {
		syn_quote_n(qd, sizeof(qd), dom, dl);
		snprintf(m->err, m->errlen, "%s:%u: %s: %s", m->name, m->line, qd, prob);
	}
	return -1;
}

/* One "DOMAIN NEXTHOP" line, already split. */
static int
map_entry(struct mparse *m, const char *d, size_t dl, const char *hop, size_t hl)
{
	struct relay_conf *r = m->r;
	struct relay_hop_conf h;
	char why[200], qh[288];
	size_t before = r->nhops, i;
	int idx;

	if (relay_hop_parse(hop, hl, true, &h, why, sizeof(why)) < 0) {
		syn_quote_n(qh, sizeof(qh), hop, hl);
		return mfail(m, d, dl, "bad next hop '%s': %s", qh, why);
	}
	if (m->n + (m->star_line != 0) == CONFIG_MAX_TRANSPORT)
		return mfail(m, d, dl, "too many entries (max %d)", CONFIG_MAX_TRANSPORT);
	idx = relay_hop_add(r, &h);
	if (idx < 0)
		return mfail(m, d, dl, "too many next hops (max %d)", CONFIG_MAX_HOPS);
	if (r->nhops > before && m->origin != NULL) {
		struct relay_hop_origin *o = &m->origin[idx - (int)m->hops_before];

		o->line = m->line;
		syn_quote_n(o->domain, sizeof(o->domain), d, dl);
	}
	if (dl == 1 && d[0] == '*') {
		if (m->star_line != 0)
			return mfail(m, d, dl, "duplicate domain (first on line %u)", m->star_line);
		m->star_line = m->line;
		r->default_hop = idx;
		return 0;
	}
	if (m->n == m->cap) {
		size_t nc = m->cap == 0 ? 256 : m->cap * 2;
		struct pending *nv = realloc(m->v, nc * sizeof(*nv));

		if (nv == NULL)
			return mfail(m, d, dl, "out of memory");
		m->v = nv;
		m->cap = nc;
	}
	m->v[m->n].domain = malloc(dl + 1);
	if (m->v[m->n].domain == NULL)
		return mfail(m, d, dl, "out of memory");
	for (i = 0; i < dl; i++)
		m->v[m->n].domain[i] = lower(d[i]);
	m->v[m->n].domain[dl] = '\0';
	m->v[m->n].hop = (uint32_t)idx;
	m->v[m->n].line = m->line;
	m->n++;
	return 0;
}

/* One physical line, without its '\n': "DOMAIN NEXTHOP[, NEXTHOP...]". */
static int
map_line(struct mparse *m, const char *p, size_t n)
{
	size_t i = 0, d, dl, h, e, k;

	if (n > CONFIG_LINE_MAX)
		return mfail(m, NULL, 0, "line too long (max %d bytes)", CONFIG_LINE_MAX);
	if (memchr(p, '\0', n) != NULL)
		return mfail(m, NULL, 0, "NUL byte in line");
	while (i < n && blank(p[i]))
		i++;
	if (i == n || p[i] == '#')
		return 0; /* blank, or a comment (it takes the whole line) */
	d = i;
	while (i < n && !blank(p[i]))
		i++;
	dl = i - d;
	if (!(dl == 1 && p[d] == '*') && !syn_domain_valid(p + d, dl, true)) {
		char qd[288];

		syn_quote_n(qd, sizeof(qd), p + d, dl);
		return mfail(m, NULL, 0, "not a domain: '%s'", qd);
	}
	while (i < n && blank(p[i]))
		i++;
	if (i == n)
		return mfail(m, p + d, dl, "no next hop (expected 'DOMAIN NEXTHOP')");
	h = i;
	e = n;
	while (e > h && blank(p[e - 1]))
		e--;
	/* Blanks inside the next hop only around the commas of a list:
	 * anything else is a second field. */
	for (k = h; k < e; k++) {
		size_t b = k;

		if (!blank(p[k]))
			continue;
		while (k < e && blank(p[k]))
			k++;
		if (p[b - 1] != ',' && p[k] != ',')
			return mfail(m, p + d, dl, "extra text after the next hop");
	}
	return map_entry(m, p + d, dl, p + h, e - h);
}

/* Sort, refuse duplicates (the one on the earliest line is reported), and
 * hand the entries over to r->map. */
static int
map_finish(struct mparse *m)
{
	struct relay_conf *r = m->r;
	const struct pending *dup = NULL;
	size_t i;

	if (m->n == 0)
		return 0;
	qsort(m->v, m->n, sizeof(m->v[0]), pending_cmp);
	for (i = 1; i < m->n; i++)
		if (strcmp(m->v[i - 1].domain, m->v[i].domain) == 0 &&
		    (dup == NULL || m->v[i].line < dup->line))
			dup = &m->v[i];
	if (dup != NULL) {
		/* Sorted by (domain, line): the first of its run came first. */
		const struct pending *first = dup - 1;

		while (first > m->v && strcmp(first[-1].domain, dup->domain) == 0)
			first--;
		m->line = dup->line;
		return mfail(m, dup->domain, strlen(dup->domain),
			     "duplicate domain (first on line %u)", first->line);
	}
	r->map = calloc(m->n, sizeof(*r->map));
	if (r->map == NULL)
		return mfail(m, NULL, 0, "out of memory");
	for (i = 0; i < m->n; i++) {
		r->map[i].domain = m->v[i].domain;
		r->map[i].hop = m->v[i].hop;
		m->v[i].domain = NULL; /* owned by r->map now */
	}
	r->nmap = m->n;
	return 0;
}

int
relay_map_parse(struct relay_conf *r, const char *name, const char *text, size_t len,
		struct relay_hop_origin *origin, char *err, size_t errlen)
{
	struct mparse m;
	size_t pos = 0;
	int rc = 0;

	assert(r != NULL && name != NULL && (text != NULL || len == 0) && err != NULL);
	assert(r->map == NULL && r->nmap == 0);
	memset(&m, 0, sizeof(m));
	m.r = r;
	m.name = name;
	m.err = err;
	m.errlen = errlen;
	m.origin = origin;
	m.hops_before = r->nhops;
	while (rc == 0 && pos < len) {
		const char *p = text + pos, *nl = memchr(p, '\n', len - pos);
		size_t n = nl != NULL ? (size_t)(nl - p) : len - pos;

		m.line++;
		pos += n + (nl != NULL);
		rc = map_line(&m, p, n);
	}
	if (rc == 0)
		rc = map_finish(&m);
	pending_free(m.v, m.n);
	if (rc < 0)
		relay_map_free(r);
	assert(rc < 0 || r->nmap == 0 || r->map != NULL);
	return rc;
}

void
relay_map_free(struct relay_conf *r)
{
	size_t i;

	for (i = 0; i < r->nmap; i++)
		free(r->map[i].domain);
	free(r->map);
	r->map = NULL;
	r->nmap = 0;
}

/* ---- the lookup ---- */

/* strcmp() order of d[0..n) lower-cased against the stored s. */
static int
key_cmp(const char *d, size_t n, const char *s)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char a = (unsigned char)lower(d[i]), b = (unsigned char)s[i];

		if (b == '\0' || a != b)
			return b == '\0' ? 1 : (int)a - (int)b;
	}
	return s[n] == '\0' ? 0 : -1;
}

static int
map_find(const struct relay_conf *r, const char *d, size_t n)
{
	size_t lo = 0, hi = r->nmap;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = key_cmp(d, n, r->map[mid].domain);

		if (c == 0)
			return (int)r->map[mid].hop;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -1;
}

int
relay_route(const struct relay_conf *r, const char *domain, size_t len)
{
	size_t i;
	int h;

	assert(r != NULL && (domain != NULL || len == 0));
	/* An address literal names no domain a map could list. */
	if (len == 0 || domain[0] == '[' || r->nmap == 0)
		return r->default_hop;
	h = map_find(r, domain, len);
	if (h >= 0)
		return h;
	/* Parents from the longest: a.b.example.org tries .b.example.org,
	 * .example.org, .org. A local domain ".example.org" (every
	 * subdomain) is matched by the same entry or a shorter parent. */
	for (i = 0; i < len; i++) {
		if (domain[i] != '.')
			continue;
		h = map_find(r, domain + i, len - i);
		if (h >= 0)
			return h;
	}
	assert(r->default_hop < (int)r->nhops);
	return r->default_hop;
}
