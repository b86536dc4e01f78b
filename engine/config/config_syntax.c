/*
 * config_syntax.c - value syntax shared by engine/config/config.c and
 * engine/config/relay_route.c (config_syntax.h). Pure: no allocation, no I/O.
 */
#include "config_syntax.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "ringmx/smtp.h"

/* Printable, bounded copy of untrusted text for messages. */
void
syn_quote(char *b, size_t cap, const char *s)
{
	size_t o = 0, i;

	(void)cap; /* only the assertion reads it */
	assert(cap >= 64 * 4 + 8);
	for (i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];

		if (i == 64) {
			memcpy(b + o, "...", 3);
			o += 3;
			break;
		}
		if (c >= 0x20 && c < 0x7f) {
			b[o++] = (char)c;
		} else {
			snprintf(b + o, 5, "\\x%02x", c);
			o += 4;
		}
	}
	b[o] = '\0';
}

/* ---- value syntax ---- */

bool
syn_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

bool
syn_is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Decimal digits up to end (or NUL). Returns 0, -1 (junk), -2 (overflow).
 * *end is set past the last digit. */
int
syn_parse_digits(const char *s, uint64_t *out, const char **end)
{
	uint64_t v = 0;
	const char *p = s;

	if (!syn_is_digit(*p))
		return -1;
	for (; syn_is_digit(*p); p++) {
		unsigned d = (unsigned)(*p - '0');

		if (v > (UINT64_MAX - d) / 10) {
			while (syn_is_digit(*p))
				p++;
			*end = p;
			return -2;
		}
		v = v * 10 + d;
	}
	*out = v;
	*end = p;
	return 0;
}

int
syn_parse_uint(const char *s, uint64_t *out)
{
	const char *end;
	int rc = syn_parse_digits(s, out, &end);

	if (rc == 0 && *end != '\0')
		return -1;
	if (rc == -2 && *end != '\0')
		return -1;
	return rc;
}

/* Bytes with an optional k/m/g suffix (powers of 1024). */
int
syn_parse_size(const char *s, uint64_t *out)
{
	const char *end;
	uint64_t v = 0, mul = 1;
	int rc = syn_parse_digits(s, &v, &end);

	if (rc == -1)
		return -1;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		mul = 1ull << 10;
		end++;
		break;
	case 'm':
	case 'M':
		mul = 1ull << 20;
		end++;
		break;
	case 'g':
	case 'G':
		mul = 1ull << 30;
		end++;
		break;
	default:
		return -1;
	}
	if (*end != '\0')
		return -1;
	if (rc == -2 || v > UINT64_MAX / mul)
		return -2;
	*out = v * mul;
	return 0;
}

/* Seconds with an optional us/ms/s/m/h/d suffix; the result is in ns. */
int
syn_parse_duration(const char *s, uint64_t *ns)
{
	const char *end;
	uint64_t v = 0, mul = 1;
	int rc = syn_parse_digits(s, &v, &end);

	if (rc == -1)
		return -1;
	/* Sub-second units (commit_delay): the multiplier is in ns. */
	if ((end[0] == 'm' || end[0] == 'u') && end[1] == 's' && end[2] == '\0') {
		uint64_t sub = end[0] == 'm' ? 1000000ull : 1000ull;

		if (rc == -2 || v > UINT64_MAX / sub)
			return -2;
		*ns = v * sub;
		return 0;
	}
	switch (*end) {
	case '\0':
		break;
	case 's':
		end++;
		break;
	case 'm':
		mul = 60;
		end++;
		break;
	case 'h':
		mul = 3600;
		end++;
		break;
	case 'd':
		mul = DAY_S;
		end++;
		break;
	default:
		return -1;
	}
	if (*end != '\0')
		return -1;
	if (rc == -2 || v > UINT64_MAX / mul || v * mul > UINT64_MAX / NS_PER_S)
		return -2;
	*ns = v * mul * NS_PER_S;
	return 0;
}

int
syn_parse_bool(const char *s, bool *b)
{
	static const char *const yes[] = {"yes", "true", "on", "1"};
	static const char *const no[] = {"no", "false", "off", "0"};
	size_t i;

	for (i = 0; i < 4; i++) {
		if (strcmp(s, yes[i]) == 0) {
			*b = true;
			return 0;
		}
		if (strcmp(s, no[i]) == 0) {
			*b = false;
			return 0;
		}
	}
	return -1;
}

/* Largest unit that divides exactly: "5m", "1h", "30s", "1ms", "250us". */
void
syn_fmt_duration(char *b, size_t cap, uint64_t ns)
{
	uint64_t s = ns / NS_PER_S;

	if (ns % NS_PER_S != 0) {
		if (ns % 1000000ull == 0)
			snprintf(b, cap, "%llums", (unsigned long long)(ns / 1000000ull));
		else
			snprintf(b, cap, "%lluus", (unsigned long long)(ns / 1000ull));
		return;
	}
	if (s != 0 && s % DAY_S == 0)
		snprintf(b, cap, "%llud", (unsigned long long)(s / DAY_S));
	else if (s != 0 && s % 3600 == 0)
		snprintf(b, cap, "%lluh", (unsigned long long)(s / 3600));
	else if (s != 0 && s % 60 == 0)
		snprintf(b, cap, "%llum", (unsigned long long)(s / 60));
	else
		snprintf(b, cap, "%llus", (unsigned long long)s);
}

/*
 * RFC 1035 LDH labels of at most 63 octets, at most SMTP_DOMAIN_MAX in all,
 * no empty label (so no trailing dot), and a last label that is not all
 * digits (that would be an IPv4 address). With wildcard_ok a leading '.'
 * (every subdomain) is allowed.
 */
bool
syn_domain_valid(const char *s, size_t n, bool wildcard_ok)
{
	size_t i, label = 0;
	bool digits = true;

	if (wildcard_ok && n > 0 && s[0] == '.') {
		s++;
		n--;
	}
	if (n == 0 || n > SMTP_DOMAIN_MAX)
		return false;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			digits = true;
			continue;
		}
		if (!(syn_is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      c == '-'))
			return false;
		if (label == 0 && c == '-')
			return false;
		if (++label > 63)
			return false;
		if (!syn_is_digit(c))
			digits = false;
	}
	return label != 0 && s[n - 1] != '-' && !digits;
}

/* Quoted copy of the token t[0..n) for messages. */
void
syn_quote_n(char *b, size_t cap, const char *t, size_t n)
{
	char raw[72];

	if (n > 65)
		n = 65; /* syn_quote() marks the cut with "..." */
	memcpy(raw, t, n);
	raw[n] = '\0';
	syn_quote(b, cap, raw);
}
