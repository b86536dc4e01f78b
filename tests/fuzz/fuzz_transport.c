/*
 * fuzz_transport.c - libFuzzer target for the transport_maps parser in
 * engine/config/relay_route.c: the input is a map file's text, given to
 * relay_map_parse() as config.c gives it after reading the file. Names are
 * never resolved here (no DNS from a fuzzer).
 *
 * Owner: the configuration module. Properties checked beyond "no crash, no
 * leak, no UB": a parsed map keeps the invariants relay_route()'s binary
 * search relies on (sorted, unique, lower case, no "*", hops in range),
 * every entry routes to its own hop, every hop's canonical text parses
 * back to itself, and a refused map leaves no map behind and has a
 * one-line message naming the file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(const struct relay_conf *r)
{
	size_t i;

	if (r->nhops > CONFIG_MAX_HOPS || r->nmap > CONFIG_MAX_TRANSPORT ||
	    r->default_hop >= (int)r->nhops || (r->nmap > 0) != (r->map != NULL))
		abort();
	for (i = 0; i < r->nmap; i++) {
		const char *d = r->map[i].domain;
		size_t n = strlen(d);

		if (r->map[i].hop >= r->nhops || strcmp(d, "*") == 0)
			abort();
		if (i > 0 && strcmp(r->map[i - 1].domain, d) >= 0)
			abort();
		if (strpbrk(d, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != NULL)
			abort();
		if (relay_route(r, d, n) != (int)r->map[i].hop)
			abort();
	}
	for (i = 0; i < r->nhops; i++) {
		struct relay_hop_conf h;
		char why[200];

		if (relay_hop_parse(r->hops[i].text, strlen(r->hops[i].text), true, &h, why,
				    sizeof(why)) != 0 ||
		    strcmp(h.text, r->hops[i].text) != 0)
			abort();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct relay_conf r; /* 45 KB of hops: not on the stack */
	char err[CONFIG_ERR_MAX];

	if (size > 256 * 1024)
		return -1;
	memset(&r, 0, sizeof(r));
	r.default_hop = -1;
	if (relay_map_parse(&r, "fuzz.map", (const char *)data, size, NULL, err, sizeof(err)) < 0) {
		if (r.map != NULL || r.nmap != 0 || strchr(err, '\n') != NULL ||
		    strncmp(err, "fuzz.map:", 9) != 0)
			abort();
		return 0;
	}
	check(&r);
	/* Lookups of text that is not in the map: any case, a literal. */
	(void)relay_route(&r, (const char *)data, size < 300 ? size : 300);
	(void)relay_route(&r, "[192.0.2.1]", 11);
	relay_map_free(&r);
	return 0;
}
