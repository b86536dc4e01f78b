/*
 * smtp_addr.c - RFC 5321 4.1.2 path/mailbox syntax (with the RFC 6531
 * SMTPUTF8 extensions), UTF-8 validation and accepted-domain matching.
 *
 * The parser is strict and classifies rather than decides: it reports
 * source routes, relay tricks (% ! and quoted @ in the local part), address
 * literals and missing domains as such, for a fully valid address, and the
 * session maps each class to a reply for MAIL or RCPT (docs/smtp.md).
 *
 * Ownership rules: pure functions over caller-owned views; struct smtp_addr
 * results point into the input.
 */
#include <arpa/inet.h>

#include "smtp_internal.h"

/* RFC 1035 2.3.4. */
#define ADDR_LABEL_MAX 63
/* "IPv6:" plus the longest textual IPv6 (45), with room to spare. */
#define ADDR_LITERAL_TEXT_MAX 64

static const char ipv6_tag[] = "IPv6:";

static inline bool
is_alpha(unsigned char c)
{
	return (unsigned char)((c | 0x20) - 'a') < 26;
}

static inline bool
is_digit(unsigned char c)
{
	return (unsigned char)(c - '0') < 10;
}

/* RFC 5322 atext; non-ASCII is handled by the caller (RFC 6531). */
static bool
is_atext(unsigned char c)
{
	if (is_alpha(c) || is_digit(c))
		return true;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
	case '+': case '-': case '/': case '=': case '?': case '^': case '_':
	case '`': case '{': case '|': case '}': case '~':
		return true;
	default:
		return false;
	}
}

/* Let-dig, with UTF8-non-ascii counting as a letter (RFC 6531 U-labels);
 * whether non-ASCII is allowed at all was decided before. */
static inline bool
is_letdig(unsigned char c)
{
	return c >= 0x80 || is_alpha(c) || is_digit(c);
}

bool
smtp_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	while (i < n) {
		unsigned c = p[i], c1, len;

		if (c < 0x80) {
			if (c == 0)
				return false;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			len = 2;
		else if (c >= 0xe0 && c <= 0xef)
			len = 3;
		else if (c >= 0xf0 && c <= 0xf4)
			len = 4;
		else
			return false; /* continuation, overlong lead C0/C1, > U+10FFFF */
		if (n - i < len)
			return false;
		c1 = p[i + 1];
		if ((c1 & 0xc0) != 0x80)
			return false;
		if ((c == 0xe0 && c1 < 0xa0) || (c == 0xf0 && c1 < 0x90))
			return false; /* overlong */
		if (c == 0xed && c1 > 0x9f)
			return false; /* UTF-16 surrogates */
		if (c == 0xf4 && c1 > 0x8f)
			return false; /* > U+10FFFF */
		for (unsigned k = 2; k < len; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
		i += len;
	}
	return true;
}

/* Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]. */
static enum smtp_addr_err
domain_check(const char *s, size_t n)
{
	const unsigned char *d = (const unsigned char *)s;
	size_t label = 0;

	if (n == 0)
		return SMTP_ADDR_SYNTAX;
	if (n > SMTP_DOMAIN_MAX)
		return SMTP_ADDR_TOO_LONG;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = d[i];

		if (c == '.') {
			if (label == 0 || d[i - 1] == '-')
				return SMTP_ADDR_SYNTAX;
			label = 0;
			continue;
		}
		if (label == 0 ? !is_letdig(c) : !(is_letdig(c) || c == '-'))
			return SMTP_ADDR_SYNTAX;
		if (++label > ADDR_LABEL_MAX)
			return SMTP_ADDR_TOO_LONG;
	}
	/* No trailing dot, no trailing hyphen. */
	if (label == 0 || d[n - 1] == '-')
		return SMTP_ADDR_SYNTAX;
	return SMTP_ADDR_OK;
}

static bool
ipv4_valid(const char *s, size_t n)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0, digits = 0;

		if (part > 0) {
			if (i >= n || s[i] != '.')
				return false;
			i++;
		}
		while (i < n && is_digit((unsigned char)s[i]) && digits < 3) {
			v = v * 10 + (unsigned)(s[i] - '0');
			digits++;
			i++;
		}
		if (digits == 0 || v > 255)
			return false;
	}
	return i == n;
}

/* address-literal without the brackets (RFC 5321 4.1.3). */
static bool
literal_valid(const char *s, size_t n)
{
	const size_t tl = sizeof ipv6_tag - 1;

	if (n > 0 && is_digit((unsigned char)s[0]))
		return ipv4_valid(s, n);
	if (n > tl && smtp_ieq(s, ipv6_tag, tl)) {
		char buf[ADDR_LITERAL_TEXT_MAX];
		unsigned char addr[16];

		if (n - tl >= sizeof buf)
			return false;
		memcpy(buf, s + tl, n - tl);
		buf[n - tl] = '\0';
		return inet_pton(AF_INET6, buf, addr) == 1;
	}
	/* General-address-literal = Standardized-tag ":" 1*dcontent. */
	const char *colon = memchr(s, ':', n);
	if (colon == NULL || colon == s || (size_t)(colon - s) + 1 == n)
		return false;
	for (const char *t = s; t < colon; t++)
		if (!(is_alpha((unsigned char)*t) || is_digit((unsigned char)*t) || *t == '-'))
			return false;
	if (colon[-1] == '-')
		return false;
	for (const char *t = colon + 1; t < s + n; t++) {
		unsigned char c = (unsigned char)*t;
		if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']')
			return false;
	}
	return true;
}

/* Quoted-string local part starting at p[*i] == '"'. */
static enum smtp_addr_err
quoted_local(const char *p, size_t n, size_t *ip, bool *trick)
{
	size_t i = *ip + 1;

	for (;;) {
		if (i >= n)
			return SMTP_ADDR_SYNTAX;
		unsigned char c = (unsigned char)p[i];
		if (c == '"')
			break;
		if (c == '\\') {
			/* quoted-pairSMTP = %d92 %d32-126 */
			if (i + 1 >= n || p[i + 1] < 32 || p[i + 1] > 126)
				return SMTP_ADDR_SYNTAX;
			c = (unsigned char)p[i + 1];
			i++;
		} else if (c < 32 || c == 127) {
			return SMTP_ADDR_SYNTAX;
		}
		if (c == '@' || c == '%' || c == '!')
			*trick = true;
		i++;
	}
	*ip = i + 1;
	return SMTP_ADDR_OK;
}

/* Dot-string local part: Atom *("." Atom). Stops at '@' or the end. */
static enum smtp_addr_err
dot_local(const char *p, size_t n, size_t *ip, bool *trick)
{
	size_t i = *ip;
	bool need_atom = true;

	for (; i < n && p[i] != '@'; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c == '.') {
			if (need_atom)
				return SMTP_ADDR_SYNTAX;
			need_atom = true;
			continue;
		}
		if (c < 0x80 && !is_atext(c))
			return SMTP_ADDR_SYNTAX;
		if (c == '%' || c == '!')
			*trick = true;
		need_atom = false;
	}
	if (need_atom)
		return SMTP_ADDR_SYNTAX;
	*ip = i;
	return SMTP_ADDR_OK;
}

/* A-d-l = At-domain *( "," At-domain ) ":" (RFC 5321 4.1.2). */
static enum smtp_addr_err
source_route(const char *p, size_t n, size_t *ip)
{
	size_t i = *ip;

	for (;;) {
		size_t start = ++i; /* skip '@' */
		enum smtp_addr_err e;

		while (i < n && p[i] != ',' && p[i] != ':')
			i++;
		if (i >= n)
			return SMTP_ADDR_SYNTAX;
		if ((e = domain_check(p + start, i - start)) != SMTP_ADDR_OK)
			return e;
		if (p[i++] == ':')
			break;
		if (i >= n || p[i] != '@')
			return SMTP_ADDR_SYNTAX;
	}
	*ip = i;
	return SMTP_ADDR_OK;
}

enum smtp_addr_err
smtp_addr_parse(const char *p, size_t n, bool utf8_allowed, struct smtp_addr *out)
{
	enum smtp_addr_err e;
	bool route = false, trick = false;
	size_t i = 0, ls;

	memset(out, 0, sizeof *out);
	if (n == 0)
		return SMTP_ADDR_OK; /* null reverse-path <> */
	/* SMTP_PATH_MAX counts the angle brackets. */
	if (n > SMTP_PATH_MAX - 2)
		return SMTP_ADDR_TOO_LONG;
	for (size_t k = 0; k < n; k++) {
		if ((unsigned char)p[k] >= 0x80) {
			out->utf8 = true;
			break;
		}
	}
	if (out->utf8 || memchr(p, '\0', n) != NULL) {
		if (!smtp_utf8_valid(p, n))
			return SMTP_ADDR_BAD_UTF8;
		if (!utf8_allowed)
			return SMTP_ADDR_UTF8;
	}

	if (p[0] == '@') {
		if ((e = source_route(p, n, &i)) != SMTP_ADDR_OK)
			return e;
		route = true;
	}
	ls = i;
	if (i < n && p[i] == '"') {
		out->quoted = true;
		e = quoted_local(p, n, &i, &trick);
	} else {
		e = dot_local(p, n, &i, &trick);
	}
	if (e != SMTP_ADDR_OK)
		return e;
	out->local = p + ls;
	out->local_len = i - ls;
	if (out->local_len > SMTP_LOCAL_MAX)
		return SMTP_ADDR_TOO_LONG;

	if (i == n) {
		/* RFC 5321 4.1.1.3: "<Postmaster>" needs no domain. */
		if (!route && !out->quoted && out->local_len == 10 &&
		    smtp_ieq(out->local, "postmaster", 10))
			return SMTP_ADDR_OK;
		return route ? SMTP_ADDR_SYNTAX : SMTP_ADDR_NO_DOMAIN;
	}
	if (p[i] != '@' || ++i >= n)
		return SMTP_ADDR_SYNTAX;

	if (p[i] == '[') {
		if (p[n - 1] != ']' || n - i < 3 || !literal_valid(p + i + 1, n - i - 2))
			return SMTP_ADDR_SYNTAX;
		out->literal = true;
		out->domain = p + i + 1;
		out->domain_len = n - i - 2;
	} else {
		if ((e = domain_check(p + i, n - i)) != SMTP_ADDR_OK)
			return e;
		out->domain = p + i;
		out->domain_len = n - i;
	}
	if (route)
		return SMTP_ADDR_ROUTE;
	if (trick)
		return SMTP_ADDR_RELAY_TRICK;
	if (out->literal)
		return SMTP_ADDR_LITERAL;
	return SMTP_ADDR_OK;
}

bool
smtp_domain_accepted(const struct smtp_conf *conf, const char *d, size_t n)
{
	if (d == NULL || n == 0)
		return false;
	for (size_t k = 0; k < conf->ndomains; k++) {
		const char *e = conf->domains[k];
		size_t el = strlen(e);

		if (e[0] == '.') {
			/* ".example.test" matches sub.example.test, not
			 * example.test: the domain must be strictly longer. */
			if (n > el && smtp_ieq(d + n - el, e, el))
				return true;
		} else if (n == el && smtp_ieq(d, e, n)) {
			return true;
		}
	}
	return false;
}
