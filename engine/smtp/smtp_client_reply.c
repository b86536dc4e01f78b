/*
 * smtp_client_reply.c - the stateless readers of the client core
 * (smtp_client.h): EHLO keyword lines and RFC 3463 enhanced status codes
 * at the start of reply text. Views only: nothing is copied or kept.
 *
 * Owner: the client core's module (engine/smtp/smtp_client.c is the caller;
 * the unit tests and fuzz_client reach them through it).
 */
#include "smtp_client.h"

#include <string.h>
#include <strings.h>

unsigned
smtpc_ehlo_keyword(const char *p, size_t n, uint64_t *size_max)
{
	/* Lengths in the table: one compare rules out most keywords before any
	 * case-folding compare (a connection reads every line of every EHLO). */
#define KW(s, f) {s, sizeof(s) - 1, f}
	static const struct {
		const char *kw;
		size_t len;
		unsigned flag;
	} kws[] = {
	    KW("PIPELINING", SMTPC_EXT_PIPELINING),
	    KW("CHUNKING", SMTPC_EXT_CHUNKING),
	    KW("8BITMIME", SMTPC_EXT_8BITMIME),
	    KW("SMTPUTF8", SMTPC_EXT_SMTPUTF8),
	    KW("SIZE", SMTPC_EXT_SIZE),
	    KW("STARTTLS", SMTPC_EXT_STARTTLS),
	    KW("ENHANCEDSTATUSCODES", SMTPC_EXT_ENHANCEDSTATUSCODES),
	};
#undef KW
	size_t i = 0;
	while (i < n && p[i] != ' ' && p[i] != '=')
		i++;
	for (size_t k = 0; k < sizeof(kws) / sizeof(kws[0]); k++) {
		if (kws[k].len != i || ((unsigned char)p[0] | 0x20) != (kws[k].kw[0] | 0x20) ||
		    strncasecmp(p, kws[k].kw, i) != 0)
			continue;
		if (kws[k].flag == SMTPC_EXT_SIZE) {
			/* "SIZE 10240000": digits only, no overflow; else 0. */
			uint64_t v = 0;
			size_t j = i + 1;
			bool ok = i < n && j < n;
			for (; ok && j < n && p[j] != ' '; j++) {
				if (p[j] < '0' || p[j] > '9' || v > (UINT64_MAX - 9) / 10)
					ok = false;
				else
					v = v * 10 + (uint64_t)(p[j] - '0');
			}
			*size_max = ok ? v : 0;
		}
		return kws[k].flag;
	}
	return 0;
}

size_t
smtpc_enh_len(const char *t, size_t n, int code)
{
	/* class "." subject (1-3 digits) "." detail (1-3 digits), RFC 3463 2 */
	if (n < 5 || t[0] != (char)('0' + code / 100) || t[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (i < n && t[i] >= '0' && t[i] <= '9' && d < 4) {
			i++;
			d++;
		}
		if (d == 0 || d > 3)
			return 0;
		if (part == 0) {
			if (i >= n || t[i] != '.')
				return 0;
			i++;
		}
	}
	return i == n || t[i] == ' ' ? i : 0;
}
