/*
 * dnsbl.h - dnsbl_sites (issue 13): the DNSBL/DNSWL site list in
 * postscreen(8)'s postscreen_dnsbl_sites syntax, the query name of a
 * client for a site, and the client's score from the answers.
 *
 * Syntax: entries separated by commas and/or white space, each
 * `domain[=filter][*weight]`. A filter is four dot-separated octet
 * patterns: a number 0..255, or `[..]` holding `;`-separated numbers and
 * ranges `a..b` (`127.0.[0..255].[1;3..5]`). A weight is an integer in
 * -1000..1000, default 1; negative weights make allow lists. A domain may
 * appear in several entries (different filters and weights): they share
 * one DNS query, and each matching entry adds its weight.
 *
 * Ownership rules
 *  - A struct dnsbl_sites is a plain value with no pointers: it is built
 *    by dnsbl_sites_parse() on the main thread as part of the
 *    configuration, and read-only afterwards, so every worker reads it
 *    without locks. The `blame` pointer of dnsbl_score() points into it
 *    and lives as long as it does.
 *  - Pure: no I/O, no clock, no allocation. The caller does the DNS
 *    queries (one per distinct domain, query index 0..nqueries-1) and
 *    hands the answers in.
 */
#ifndef RINGMX_DNSBL_H
#define RINGMX_DNSBL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define DNSBL_SITES_MAX   32
#define DNSBL_QUERIES_MAX 16
#define DNSBL_ADDR_MAX    8   /* A records looked at per answer */
#define DNSBL_NAME_MAX    254 /* a query name: 253 characters and the NUL */
/*
 * Longest domain accepted. The longest query prefix is the IPv6 one, 32
 * nibbles and their dots (64 characters), and a DNS name has at most 253,
 * so 189 guarantees every client's query name fits. (struct dnsbl_site
 * keeps room for 200.)
 */
#define DNSBL_DOMAIN_MAX 189
#define DNSBL_WEIGHT_MIN (-1000)
#define DNSBL_WEIGHT_MAX 1000

struct dnsbl_site {
	char domain[201];     /* folded to lower case, NUL terminated */
	bool any;             /* no filter: every address matches (octet[] all set) */
	uint8_t octet[4][32]; /* per octet of an answer, the bit set of values that match */
	int weight;
	uint8_t query; /* index of this domain's DNS query, 0..nqueries-1 */
};

struct dnsbl_sites {
	unsigned nsites, nqueries;
	struct dnsbl_site site[DNSBL_SITES_MAX];
	uint8_t query_site[DNSBL_QUERIES_MAX]; /* first site of each distinct domain */
};

/*
 * Parse text (NUL terminated) into *out. Empty or blank text is a valid,
 * empty list. Returns 0, or -EINVAL with one line in err naming the
 * offending entry (empty or invalid domain, bad filter, bad weight, too
 * many entries or distinct domains); *out is then the empty list.
 */
int dnsbl_sites_parse(const char *text, struct dnsbl_sites *out, char *err, size_t errlen);

/*
 * The query name for a client address and a domain: "4.3.2.1.domain"
 * (IPv4; a v4-mapped IPv6 address counts as IPv4) or 32 reversed nibbles
 * (IPv6), into out (NUL terminated). Returns the length, -EAFNOSUPPORT
 * for another family, -ENAMETOOLONG when the name is longer than 253 or
 * does not fit outlen (DNSBL_NAME_MAX always suffices for a parsed
 * domain), -EINVAL for an empty domain.
 */
int dnsbl_query_name(const struct sockaddr *sa, const char *domain, char *out, size_t outlen);

struct dnsbl_answer {
	uint8_t n; /* n == 0: not listed (NXDOMAIN, no answer, timeout); more than
	              DNSBL_ADDR_MAX counts as DNSBL_ADDR_MAX */
	uint32_t addr[DNSBL_ADDR_MAX]; /* network byte order */
};

/*
 * Score of a client given one answer per distinct query
 * (ans[0..nqueries-1]; NULL is allowed when nqueries == 0): the sum of the
 * weights of every entry whose filter matches any of its query's
 * addresses (no filter: any address matches); an entry counts once
 * however many addresses match. *blame (blame may be NULL): the domain of
 * the matching entry with the largest positive weight (the first in the
 * list on ties), NULL when none.
 */
int dnsbl_score(const struct dnsbl_sites *s, const struct dnsbl_answer *ans, const char **blame);

/*
 * The text form for logs and config print: canonical (entries joined by
 * ", ", "*1" left out, an octet as a number or a bracket list of runs),
 * re-parses to the same list. Works like snprintf: writes at most outlen
 * bytes, NUL terminated when outlen > 0 (out may be NULL when outlen is
 * 0), and returns the length of the whole text, so a return >= outlen
 * means it was cut.
 */
size_t dnsbl_sites_format(const struct dnsbl_sites *s, char *out, size_t outlen);

#endif
