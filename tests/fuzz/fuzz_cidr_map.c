/*
 * fuzz_cidr_map.c - libFuzzer target for the client_access table parser in
 * engine/policy/cidr_map.c: the input is a table file's text.
 *
 * Owner: the client_access module. Properties checked beyond "no crash, no
 * leak, no UB": a refused input has rc -EINVAL, no map and one line
 * "fuzz:LINE: ..." with a line that exists; an accepted one has at most
 * one rule a line, and every lookup (fixed addresses, and addresses taken
 * from the input's bytes) gives a valid action, a v4-mapped client the
 * same answer as its IPv4 address, and REJECT text that is printable,
 * bounded and NUL terminated at its length.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cidr_map.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_text(enum cidr_action a, const char *t, size_t tl)
{
	if (a != CIDR_REJECT) {
		if (t != NULL || tl != 0)
			abort();
		return;
	}
	if (t == NULL || tl == 0 || tl > CIDR_TEXT_MAX || t[tl] != '\0' || strlen(t) != tl)
		abort();
	for (size_t i = 0; i < tl; i++)
		if ((t[i] < 0x20 && t[i] != '\t') || t[i] >= 0x7f)
			abort();
}

/* Look a up as IPv4 and as ::ffff:a: the same answer, the same text. */
static void
look4(const struct cidr_map *m, const uint8_t a[4])
{
	struct sockaddr_in s4 = {.sin_family = AF_INET};
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
	const char *t4, *t6;
	size_t l4, l6;
	enum cidr_action a4, a6;

	memcpy(&s4.sin_addr, a, 4);
	s6.sin6_addr.s6_addr[10] = 0xff;
	s6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(s6.sin6_addr.s6_addr + 12, a, 4);
	a4 = cidr_map_lookup(m, (struct sockaddr *)&s4, &t4, &l4);
	a6 = cidr_map_lookup(m, (struct sockaddr *)&s6, &t6, &l6);
	if (a4 > CIDR_REJECT || a4 != a6 || t4 != t6 || l4 != l6)
		abort();
	check_text(a4, t4, l4);
}

static void
look6(const struct cidr_map *m, const uint8_t a[16])
{
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
	const char *t;
	size_t tl;
	enum cidr_action r;

	memcpy(&s6.sin6_addr, a, 16);
	r = cidr_map_lookup(m, (struct sockaddr *)&s6, &t, &tl);
	if (r > CIDR_REJECT)
		abort();
	check_text(r, t, tl);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const fixed[] = {"0.0.0.0",     "255.255.255.255",
	                                    "192.0.2.1",   "10.1.2.3",
	                                    "::",          "::1",
	                                    "2001:db8::1", "ffff::"};
	struct cidr_map *m = (struct cidr_map *)&size; /* must be reset */
	size_t lines = 1;
	char err[512];
	uint8_t a[16];
	int rc;

	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	rc = cidr_map_parse((const char *)data, size, "fuzz", &m, err, sizeof(err));
	if (rc != 0) {
		char *end;
		unsigned long line;

		if (rc != -EINVAL || m != NULL || strncmp(err, "fuzz:", 5) != 0 ||
		    strchr(err, '\n') != NULL)
			abort();
		line = strtoul(err + 5, &end, 10);
		if (*end != ':' || line == 0 || line > lines)
			abort();
		return 0;
	}
	if (m == NULL || cidr_map_count(m) > lines)
		abort();
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		if (strchr(fixed[i], ':') == NULL) {
			inet_pton(AF_INET, fixed[i], a);
			look4(m, a);
		} else {
			inet_pton(AF_INET6, fixed[i], a);
			look6(m, a);
		}
	}
	/* Addresses near the input's own: its first bytes. */
	memset(a, 0, sizeof(a));
	memcpy(a, data, size < sizeof(a) ? size : sizeof(a));
	look4(m, a);
	look6(m, a);
	cidr_map_free(m);
	return 0;
}
