/*
 * dns_resolve.h - host names to addresses for the configuration loader:
 * the relay's next hops (relay_host, transport_maps), through c-ares and
 * the same servers as screening (dns_servers, else /etc/resolv.conf; the
 * hosts file first, as the C library does).
 *
 * This blocks: it is for the main thread only (start-up, SIGHUP, -t),
 * which serves no connection. A worker never calls it; its lookups go
 * through engine/dns/dns.c on its ring.
 *
 * Ownership: nothing outlives a call; the channel is made and destroyed
 * inside it, and the addresses go to the caller's array.
 */
#ifndef RINGMX_DNS_RESOLVE_H
#define RINGMX_DNS_RESOLVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct dns_addr {
	struct sockaddr_storage sa; /* AF_INET or AF_INET6, port set */
	socklen_t len;
};

/* One try per server waits this long, and there are two tries: a dead
 * server delays a reload by at most ~4 s per name, never forever. */
#define DNS_RESOLVE_TRY_MS 2000
#define DNS_RESOLVE_TRIES  2

/*
 * Every IPv4 and IPv6 address of name, in c-ares' order (RFC 6724
 * sorting), port set: at most max in out[], their count in *n (> 0 on
 * success). servers: "" or c-ares' CSV form ("127.0.0.1:5353,[::1]:53").
 * Returns 0, or -1 with a reason in why.
 */
int dns_resolve_host(const char *servers, const char *name, uint16_t port,
		     struct dns_addr *out, unsigned max, unsigned *n, char *why, size_t whylen);

#endif
