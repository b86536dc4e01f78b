/*
 * relay_route.h - internal interface between engine/config/config.c and
 * engine/config/relay_route.c: next-hop syntax, the transport_maps parser and the
 * map's lifetime. relay_route() itself, the per-recipient lookup, is part
 * of the public contract in include/ringmx/config.h.
 *
 * Owner: the configuration module. Nothing here does file I/O: config.c
 * reads the map file and hands its text over, so the parser can be fuzzed
 * (tests/fuzz/fuzz_transport.c) and tested without files.
 */
#ifndef RINGMX_RELAY_ROUTE_H
#define RINGMX_RELAY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ringmx/config.h"

/* A transport map may be far larger than a main.cf (CONFIG_MAX_TRANSPORT
 * lines of up to a 253-byte domain and a next hop), so it has its own cap. */
#define RELAY_MAP_FILE_MAX (32 << 20)

/*
 * Parse a next hop s[0..n) into *h (zeroed first): a list of members
 * separated by commas (blanks around them allowed), each in the syntax of
 * struct relay_hop_member. need_proto: the smtp:/lmtp: prefix is mandatory
 * (transport_maps); without it a bare HOST:PORT means smtp (relay_host).
 * A list of literals and unix paths is complete afterwards (h->na > 0);
 * one with a host name needs relay_hop_resolve(). Returns 0, or -1 with
 * the reason in why.
 */
int relay_hop_parse(const char *s, size_t n, bool need_proto, struct relay_hop_conf *h,
		    char *why, size_t whylen);

/* (Re)build h->a from every member: literals as they are, names through
 * c-ares with servers (dns_servers; "" = /etc/resolv.conf), every IPv4 and
 * IPv6 address in its order (engine/dns/dns_resolve.h). Blocks: load time
 * only, in the main thread. Returns 0, or -1 with the resolver's reason in
 * why and, if bad is not NULL, the member it concerns in *bad. */
int relay_hop_resolve(struct relay_hop_conf *h, const char *servers, unsigned *bad, char *why,
		      size_t whylen);

/* The index of the hop with h's canonical text, appending it if new.
 * -1 when r->hops is full. */
int relay_hop_add(struct relay_conf *r, const struct relay_hop_conf *h);

/* Where a map's next hop was first used, for resolution errors. */
struct relay_hop_origin {
	unsigned line;
	char domain[288]; /* quoted as syn_quote_n() does, for messages */
};

/*
 * Parse a transport map's text (len bytes, need not be NUL terminated;
 * name is used in messages) into r: entries into r->map (sorted for
 * relay_route(); "*" becomes r->default_hop), next hops appended to
 * r->hops, deduplicated by canonical text. Named hops are left unresolved;
 * origin (NULL allowed, else CONFIG_MAX_HOPS entries) receives, for each
 * hop this call appended, the line and domain that first used it.
 * r->map must be empty on entry. Returns 0, or -1 with one line in err,
 * "NAME:LINE: DOMAIN: problem", and r->map empty again.
 */
int relay_map_parse(struct relay_conf *r, const char *name, const char *text, size_t len,
		    struct relay_hop_origin *origin, char *err, size_t errlen);

/* Free r->map and its strings; r->map = NULL, r->nmap = 0. */
void relay_map_free(struct relay_conf *r);

#endif
