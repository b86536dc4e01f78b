/*
 * config_milter.c - the milter keys that are more than a number or a
 * duration (docs/milter.md, docs/config.md "Content filters"): `milters`
 * in Postfix's smtpd_milters syntax (inet:HOST:PORT, unix:/PATH, local:
 * as unix:), checked while the line is read, host names resolved once
 * every layer is read (dns_servers may come later), and
 * milter_default_action.
 *
 * Ownership: everything lives inside struct config (fixed arrays); the
 * workers copy an endpoint's address into a conversation at connect.
 */
#include "config_internal.h"

#include <stdio.h>
#include <sys/un.h>

#include "dns_resolve.h"

static const char *const action_names[] = {"tempfail", "accept", "reject"};

/* One entry: syntax now; inet addresses that are not literals later. */
static int
endpoint_parse(struct pstate *st, const char *key, const char *t, size_t n,
               struct milter_endpoint *e)
{
	char item[CONFIG_MILTER_TEXT_MAX];

	if (n >= sizeof(item))
		return cf_fail(st, key, "entry too long (max %zu bytes): '%.40s...'",
		               sizeof(item) - 1, t);
	memcpy(item, t, n);
	item[n] = '\0';
	memset(e, 0, sizeof(*e));
	memcpy(e->text, item, n + 1);
	if (strncmp(item, "unix:", 5) == 0 || strncmp(item, "local:", 6) == 0) {
		const char *path = strchr(item, ':') + 1;
		struct sockaddr_un *un = (struct sockaddr_un *)&e->addr;

		if (path[0] != '/')
			return cf_fail(st, key, "'%s': the socket path must be absolute", item);
		if (strlen(path) >= sizeof(un->sun_path))
			return cf_fail(st, key, "'%s': socket path too long (max %zu bytes)", item,
			               sizeof(un->sun_path) - 1);
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, path);
		e->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
		return 0;
	}
	if (strncmp(item, "inet:", 5) != 0)
		return cf_fail(st, key, "'%s': not inet:HOST:PORT or unix:/PATH", item);
	char *host = item + 5, *colon;
	if (host[0] == '[') {
		char *close = strchr(host, ']');
		if (close == NULL || close[1] != ':')
			return cf_fail(st, key, "'%s': not inet:[ADDRESS]:PORT", e->text);
		*close = '\0';
		host++;
		colon = close + 1;
	} else {
		colon = strrchr(host, ':');
		if (colon == NULL || colon == host)
			return cf_fail(st, key, "'%s': not inet:HOST:PORT", e->text);
		*colon = '\0';
	}
	char *end;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || port == 0 || port > 65535)
		return cf_fail(st, key, "'%s': bad port", e->text);
	struct sockaddr_in *in4 = (struct sockaddr_in *)&e->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&e->addr;
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		e->addrlen = sizeof(*in4);
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		e->addrlen = sizeof(*in6);
	} else if (host[0] == '\0' || strlen(host) > 253) {
		return cf_fail(st, key, "'%s': bad host", e->text);
	} else {
		/* A name: resolved by cf_finish_milters(); the port waits here. */
		in4->sin_port = htons((uint16_t)port);
		e->addrlen = 0;
	}
	return 0;
}

int
cf_milter_set(struct pstate *st, const struct key_def *k, const char *v)
{
	struct milters_conf *mc = &st->cfg->milters;

	if (k->type == T_MILTER_ACTION) {
		for (unsigned i = 0; i < 3; i++)
			if (strcmp(v, action_names[i]) == 0) {
				mc->default_action = i;
				return 0;
			}
		return cf_fail(st, k->name, "not one of tempfail, accept, reject: '%s'", v);
	}
	/* Appended: continuation lines add to the list; a later layer
	 * (-o milters=...) starts it again (cf_set_key). */
	const char *t;
	size_t n;
	while ((t = cf_list_next(&v, &n)) != NULL) {
		if (mc->n == CONFIG_MILTERS_MAX)
			return cf_fail(st, k->name, "too many milters (max %d)",
			               CONFIG_MILTERS_MAX);
		if (endpoint_parse(st, k->name, t, n, &mc->m[mc->n]) < 0)
			return -1;
		mc->n++;
	}
	return 0;
}

/* inet:NAME:PORT through the same resolver as the relay's next hops. */
int
cf_finish_milters(struct pstate *st)
{
	static const char key[] = "milters";
	struct milters_conf *mc = &st->cfg->milters;

	for (size_t i = 0; i < mc->n; i++) {
		struct milter_endpoint *e = &mc->m[i];
		struct dns_addr found[1];
		char host[CONFIG_MILTER_TEXT_MAX], why[256];
		unsigned nf = 0;

		if (e->addrlen != 0)
			continue;
		snprintf(host, sizeof(host), "%s", e->text + 5);
		*strrchr(host, ':') = '\0';
		uint16_t port = ntohs(((struct sockaddr_in *)&e->addr)->sin_port);
		if (dns_resolve_host(st->cfg->screen.dns_servers, host, port, found, 1, &nf, why,
		                     sizeof(why)) < 0)
			return cf_fail_key(st, key, "'%s': %s", e->text, why);
		memcpy(&e->addr, &found[0].sa, found[0].len);
		e->addrlen = found[0].len;
	}
	return 0;
}

void
cf_milter_print(const struct config *cfg, const struct key_def *k, FILE *f)
{
	const struct milters_conf *mc = &cfg->milters;

	if (k->type == T_MILTER_ACTION) {
		fprintf(f, "%s = %s\n", k->name, action_names[mc->default_action]);
		return;
	}
	if (mc->n == 0)
		return;
	fprintf(f, "milters =");
	for (size_t i = 0; i < mc->n; i++)
		fprintf(f, "%s %s", i ? "," : "", mc->m[i].text);
	fprintf(f, "\n");
}
