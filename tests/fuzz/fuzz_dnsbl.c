/*
 * fuzz_dnsbl.c - libFuzzer target for the dnsbl_sites parser and scorer
 * in engine/policy/dnsbl.c. The input up to its first NUL byte is the
 * list's text; the bytes after it are the answers (per query: a count
 * byte, then four bytes per address) and then a client address (16
 * bytes, used as IPv6 and, its first four, as IPv4).
 *
 * Owner: the DNSBL module. Properties checked beyond "no crash, no leak,
 * no UB": a refused list has a one-line message naming an entry and
 * leaves the list empty; a parsed list keeps its invariants (limits,
 * query indexes, one query per distinct domain, non-empty octet sets);
 * its text form re-parses to the same list and formats to the same text;
 * the score equals a sum worked out here from the answers, and blame is
 * the first entry of the largest positive matching weight; every query
 * name fits DNSBL_NAME_MAX and ends in its domain.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnsbl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dnsbl_sites A, B;
static char text[4096], out1[65536], out2[65536];

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

static bool
in_set(const uint8_t set[32], unsigned v)
{
	return (set[v / 8] & (1u << (v % 8))) != 0;
}

static void
check_invariants(const struct dnsbl_sites *s)
{
	CHECK(s->nsites <= DNSBL_SITES_MAX && s->nqueries <= DNSBL_QUERIES_MAX);
	CHECK(s->nqueries <= s->nsites && (s->nsites == 0) == (s->nqueries == 0));
	for (unsigned q = 0; q < s->nqueries; q++) {
		CHECK(s->query_site[q] < s->nsites && s->site[s->query_site[q]].query == q);
		for (unsigned r = 0; r < q; r++)
			CHECK(strcmp(s->site[s->query_site[q]].domain,
			             s->site[s->query_site[r]].domain) != 0);
	}
	for (unsigned i = 0; i < s->nsites; i++) {
		const struct dnsbl_site *x = &s->site[i];
		size_t n = strlen(x->domain);

		CHECK(n > 0 && n <= DNSBL_DOMAIN_MAX && x->query < s->nqueries);
		CHECK(s->query_site[x->query] <= i);
		CHECK(strcmp(s->site[s->query_site[x->query]].domain, x->domain) == 0);
		CHECK(x->weight >= DNSBL_WEIGHT_MIN && x->weight <= DNSBL_WEIGHT_MAX);
		for (size_t k = 0; k < n; k++)
			CHECK(!(x->domain[k] >= 'A' && x->domain[k] <= 'Z'));
		for (int o = 0; o < 4; o++) {
			unsigned count = 0;

			for (unsigned v = 0; v < 256; v++)
				count += in_set(x->octet[o], v);
			CHECK(count > 0 && (!x->any || count == 256));
		}
	}
}

static void
check_same(const struct dnsbl_sites *a, const struct dnsbl_sites *b)
{
	CHECK(a->nsites == b->nsites && a->nqueries == b->nqueries);
	CHECK(memcmp(a->query_site, b->query_site, a->nqueries) == 0);
	for (unsigned i = 0; i < a->nsites; i++) {
		const struct dnsbl_site *x = &a->site[i], *y = &b->site[i];

		CHECK(strcmp(x->domain, y->domain) == 0 && x->any == y->any);
		CHECK(memcmp(x->octet, y->octet, sizeof(x->octet)) == 0);
		CHECK(x->weight == y->weight && x->query == y->query);
	}
}

/* Answers from the bytes at *p; the score worked out entry by entry. */
static void
check_score(const struct dnsbl_sites *s, const uint8_t **p, const uint8_t *end)
{
	struct dnsbl_answer ans[DNSBL_QUERIES_MAX];
	const char *blame = "unset", *want_blame = NULL;
	int want = 0, best = 0;

	memset(ans, 0, sizeof(ans));
	for (unsigned q = 0; q < s->nqueries && *p < end; q++) {
		ans[q].n = *(*p)++;
		for (unsigned i = 0; i < DNSBL_ADDR_MAX && end - *p >= 4; i++, *p += 4)
			memcpy(&ans[q].addr[i], *p, 4);
	}
	for (unsigned i = 0; i < s->nsites; i++) {
		const struct dnsbl_site *x = &s->site[i];
		const struct dnsbl_answer *a = &ans[x->query];
		unsigned n = a->n > DNSBL_ADDR_MAX ? DNSBL_ADDR_MAX : a->n;
		bool hit = false;

		for (unsigned k = 0; k < n && !hit; k++) {
			uint32_t h = ntohl(a->addr[k]);

			hit =
			    x->any ||
			    (in_set(x->octet[0], h >> 24) && in_set(x->octet[1], (h >> 16) & 255) &&
			     in_set(x->octet[2], (h >> 8) & 255) && in_set(x->octet[3], h & 255));
		}
		if (hit) {
			want += x->weight;
			if (x->weight > best) {
				best = x->weight;
				want_blame = x->domain;
			}
		}
	}
	CHECK(dnsbl_score(s, ans, &blame) == want && blame == want_blame);
}

static void
check_query_names(const struct dnsbl_sites *s, const uint8_t *p, const uint8_t *end)
{
	struct sockaddr_in in = {.sin_family = AF_INET};
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
	char name[DNSBL_NAME_MAX];
	uint8_t b[16] = {0};

	memcpy(b, p, (size_t)(end - p) < sizeof(b) ? (size_t)(end - p) : sizeof(b));
	memcpy(&in6.sin6_addr, b, 16);
	memcpy(&in.sin_addr, b, 4);
	for (unsigned q = 0; q < s->nqueries; q++) {
		const char *d = s->site[s->query_site[q]].domain;
		size_t dl = strlen(d);
		int n4 = dnsbl_query_name((struct sockaddr *)&in, d, name, sizeof(name));
		char want[20];

		snprintf(want, sizeof(want), "%u.%u.%u.%u.", b[3], b[2], b[1], b[0]);
		CHECK(n4 > 0 && (size_t)n4 == strlen(want) + dl && n4 <= 253);
		CHECK(memcmp(name, want, strlen(want)) == 0 && strcmp(name + strlen(want), d) == 0);
		int n6 = dnsbl_query_name((struct sockaddr *)&in6, d, name, sizeof(name));
		CHECK(n6 > 0 && (size_t)n6 == strlen(name) && n6 <= 253);
		CHECK(strcmp(name + n6 - dl, d) == 0 && name[n6 - dl - 1] == '.');
		CHECK(IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr) ? (size_t)n6 <= 16 + dl
		                                           : (size_t)n6 == 64 + dl);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size), *end = data + size, *p;
	size_t tlen = nul != NULL ? (size_t)(nul - data) : size;
	char err[512];
	int rc;

	if (tlen >= sizeof(text))
		return 0;
	memcpy(text, data, tlen);
	text[tlen] = '\0';
	p = nul != NULL ? nul + 1 : end;

	rc = dnsbl_sites_parse(text, &A, err, sizeof(err));
	if (rc != 0) {
		CHECK(rc == -EINVAL && strncmp(err, "dnsbl_sites: entry \"", 20) == 0);
		CHECK(strchr(err, '\n') == NULL && A.nsites == 0 && A.nqueries == 0);
		return 0;
	}
	CHECK(err[0] == '\0');
	check_invariants(&A);

	size_t n1 = dnsbl_sites_format(&A, out1, sizeof(out1));
	CHECK(n1 < sizeof(out1) && strlen(out1) == n1 && dnsbl_sites_format(&A, NULL, 0) == n1);
	if (dnsbl_sites_parse(out1, &B, err, sizeof(err)) != 0)
		abort();
	check_same(&A, &B);
	size_t n2 = dnsbl_sites_format(&B, out2, sizeof(out2));
	CHECK(n2 == n1 && strcmp(out1, out2) == 0);

	check_score(&A, &p, end);
	check_query_names(&A, p, end);
	return 0;
}
