/*
 * dns_resolve.c - blocking host name lookups over c-ares for the
 * configuration loader (see dns_resolve.h for who may call it).
 *
 * ares_getaddrinfo() does the work (hosts file, then A and AAAA, sorted);
 * this file only waits for it with poll(), never select(): the main thread
 * shares the process's descriptor table with the workers, whose numbers
 * are far past FD_SETSIZE under load.
 *
 * Ownership: the channel and c-ares' answer live inside one call.
 */
#include "dns_resolve.h"

#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#ifdef RINGMX_FUZZING
/* Fuzzed configurations name arbitrary hosts: no DNS from a fuzzer (slow,
 * and not the code under test). */
int
dns_resolve_host(const char *servers, const char *name, uint16_t port, struct dns_addr *out,
                 unsigned max, unsigned *n, char *why, size_t whylen)
{
	(void)servers, (void)name, (void)port, (void)out, (void)max;
	*n = 0;
	snprintf(why, whylen, "no DNS in a fuzzing build");
	return -1;
}
#else
struct gai_wait {
	bool done;
	int status;
	struct ares_addrinfo *res;
};

static void
on_gai(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	struct gai_wait *w = arg;

	(void)timeouts;
	w->done = true;
	w->status = status;
	w->res = res;
}

/* Run c-ares until the lookup is done: each round polls its sockets for
 * at most its next timeout, then lets it read, write or retry. */
static void
wait_done(ares_channel ch, struct gai_wait *w)
{
	while (!w->done) {
		ares_socket_t socks[ARES_GETSOCK_MAXNUM];
		struct pollfd pfd[ARES_GETSOCK_MAXNUM];
		struct timeval tv, *tp;
		nfds_t np = 0;
		unsigned bits;
		int ms;

		/* Bits tested as unsigned: c-ares' own ARES_GETSOCK_WRITABLE
		 * shifts a signed 1 into bit 31 for the last socket. */
		bits = (unsigned)ares_getsock(ch, socks, ARES_GETSOCK_MAXNUM);
		for (unsigned i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
			short ev = 0;
			if (bits & (1u << i))
				ev |= POLLIN;
			if (bits & (1u << (i + ARES_GETSOCK_MAXNUM)))
				ev |= POLLOUT;
			if (ev != 0)
				pfd[np++] = (struct pollfd){.fd = socks[i], .events = ev};
		}
		tp = ares_timeout(ch, NULL, &tv);
		ms = tp == NULL ? 1000 : (int)(tp->tv_sec * 1000 + (tp->tv_usec + 999) / 1000);
		if (poll(pfd, np, ms) < 0 && errno != EINTR)
			break; /* cannot happen with valid descriptors; ares gives up below */
		if (np == 0) {
			ares_process_fd(ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
			continue;
		}
		for (nfds_t i = 0; i < np; i++)
			ares_process_fd(ch,
			                (pfd[i].revents & (POLLIN | POLLERR | POLLHUP))
			                    ? pfd[i].fd
			                    : ARES_SOCKET_BAD,
			                (pfd[i].revents & POLLOUT) ? pfd[i].fd : ARES_SOCKET_BAD);
		if (np > 0 && !w->done)
			ares_process_fd(ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
	}
	if (!w->done)
		ares_cancel(ch); /* calls on_gai with ARES_ECANCELLED */
}

/* RFC 6761 6.3: localhost is loopback even where the hosts file does not
 * say so (a minimal container). */
static bool
is_localhost(const char *name)
{
	size_t n = strlen(name);
	return strcmp(name, "localhost") == 0 ||
	       (n > 10 && strcmp(name + n - 10, ".localhost") == 0);
}

static unsigned
add_addr(struct dns_addr *out, unsigned max, unsigned n, int family, const void *a, uint16_t port)
{
	struct dns_addr *d;

	if (n == max)
		return n;
	d = &out[n];
	memset(d, 0, sizeof(*d));
	if (family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&d->sa;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		memcpy(&s4->sin_addr, a, sizeof(s4->sin_addr));
		d->len = sizeof(*s4);
	} else {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&d->sa;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		memcpy(&s6->sin6_addr, a, sizeof(s6->sin6_addr));
		d->len = sizeof(*s6);
	}
	return n + 1;
}

int
dns_resolve_host(const char *servers, const char *name, uint16_t port, struct dns_addr *out,
                 unsigned max, unsigned *n, char *why, size_t whylen)
{
	struct ares_options o;
	struct ares_addrinfo_hints hints;
	struct gai_wait w = {0};
	ares_channel ch;
	char ps[8];
	int rc;

	*n = 0;
	/* Refcounted, and only the main thread calls it: safe while the
	 * workers' channels exist. */
	rc = ares_library_init(ARES_LIB_INIT_ALL);
	if (rc != ARES_SUCCESS) {
		snprintf(why, whylen, "c-ares: %s", ares_strerror(rc));
		return -1;
	}
	memset(&o, 0, sizeof(o));
	o.timeout = DNS_RESOLVE_TRY_MS;
	o.tries = DNS_RESOLVE_TRIES;
	rc = ares_init_options(&ch, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (rc != ARES_SUCCESS) {
		snprintf(why, whylen, "c-ares: %s", ares_strerror(rc));
		ares_library_cleanup();
		return -1;
	}
	if (servers[0] != '\0' && (rc = ares_set_servers_ports_csv(ch, servers)) != ARES_SUCCESS) {
		snprintf(why, whylen, "dns_servers '%s': %s", servers, ares_strerror(rc));
		goto out;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = ARES_AI_NUMERICSERV;
	snprintf(ps, sizeof(ps), "%u", (unsigned)port);
	ares_getaddrinfo(ch, name, ps, &hints, on_gai, &w);
	wait_done(ch, &w);
	if (w.status == ARES_SUCCESS && w.res != NULL) {
		for (struct ares_addrinfo_node *a = w.res->nodes; a != NULL; a = a->ai_next) {
			if (a->ai_family == AF_INET)
				*n = add_addr(out, max, *n, AF_INET,
				              &((struct sockaddr_in *)a->ai_addr)->sin_addr, port);
			else if (a->ai_family == AF_INET6)
				*n =
				    add_addr(out, max, *n, AF_INET6,
				             &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, port);
		}
		if (*n == 0)
			snprintf(why, whylen, "no IPv4 or IPv6 address");
	} else if (is_localhost(name)) {
		static const struct in6_addr lo6 = IN6ADDR_LOOPBACK_INIT;
		const uint32_t lo4 = htonl(INADDR_LOOPBACK);

		*n = add_addr(out, max, *n, AF_INET6, &lo6, port);
		*n = add_addr(out, max, *n, AF_INET, &lo4, port);
	} else {
		snprintf(why, whylen, "%s",
		         w.status == ARES_ENOTFOUND || w.status == ARES_ENODATA
		             ? "no such host (DNS)"
		             : ares_strerror(w.status));
	}
	if (w.res != NULL)
		ares_freeaddrinfo(w.res);
out:
	ares_destroy(ch);
	ares_library_cleanup();
	return *n > 0 ? 0 : -1;
}
#endif
