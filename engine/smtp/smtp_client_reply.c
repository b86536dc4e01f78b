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
	/* The relay's reader knows six keywords; the seventh is ours. */
	static const struct {
		unsigned relay, ours;
	} map[] = {
	    {RELAY_EXT_PIPELINING, SMTPC_EXT_PIPELINING},
	    {RELAY_EXT_CHUNKING, SMTPC_EXT_CHUNKING},
	    {RELAY_EXT_8BITMIME, SMTPC_EXT_8BITMIME},
	    {RELAY_EXT_SMTPUTF8, SMTPC_EXT_SMTPUTF8},
	    {RELAY_EXT_SIZE, SMTPC_EXT_SIZE},
	    {RELAY_EXT_STARTTLS, SMTPC_EXT_STARTTLS},
	};
	static const char esc[] = "ENHANCEDSTATUSCODES";
	if ((n == sizeof(esc) - 1 || (n > sizeof(esc) - 1 && p[sizeof(esc) - 1] == ' ')) &&
	    strncasecmp(p, esc, sizeof(esc) - 1) == 0)
		return SMTPC_EXT_ENHANCEDSTATUSCODES;
	unsigned kw = relay_ehlo_keyword(p, n, size_max);
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (kw == map[i].relay)
			return map[i].ours;
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
