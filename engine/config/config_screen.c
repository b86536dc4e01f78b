/*
 * config_screen.c - the screening keys that are more than a number or a
 * duration (docs/config.md "Screening"): client_access (a cidr table file,
 * read with every configuration load, so on every SIGHUP), greet_action and
 * dnsbl_action, dnsbl_sites (postscreen's syntax, engine/policy/dnsbl.c)
 * and dns_servers.
 *
 * Ownership rules
 *  - struct screen_conf's access map and site list belong to their struct
 *    config: built here, freed by cf_screen_free() with it. The workers
 *    only read them, and the old configuration is freed after every worker
 *    switched to the next one.
 */
#include "config_internal.h"

#include <stdio.h>

#include "cidr_map.h"
#include "dnsbl.h"

static const char *const action_names[] = {"enforce", "drop", "ignore"};

/* dns_servers: IPv4 or IPv6 addresses, with an optional port
 * ("127.0.0.1:5353", "[::1]:5353", "::1"), into c-ares' CSV form. */
static int
dns_servers_parse(struct pstate *st, const char *key, const char *v)
{
	char *out = st->cfg->screen.dns_servers;
	size_t o = 0, n;
	const char *t;

	out[0] = '\0';
	while ((t = cf_list_next(&v, &n)) != NULL) {
		char host[INET6_ADDRSTRLEN + 24], item[INET6_ADDRSTRLEN + 16];
		const char *port = NULL;
		unsigned char bin[16];
		bool v6;
		int len;

		if (n >= sizeof(item) - 8)
			return cf_fail(st, key, "not an address: '%.*s'", (int)(n > 64 ? 64 : n), t);
		memcpy(item, t, n);
		item[n] = '\0';
		if (item[0] == '[') {
			char *close = strchr(item, ']');
			if (close == NULL || (close[1] != '\0' && close[1] != ':'))
				return cf_fail(st, key, "not an address: '%s'", item);
			*close = '\0';
			snprintf(host, sizeof(host), "%s", item + 1);
			port = close[1] == ':' ? close + 2 : NULL;
		} else {
			char *colon = strchr(item, ':');
			/* One colon: IPv4 with a port; more: a bare IPv6 address. */
			if (colon != NULL && strchr(colon + 1, ':') == NULL) {
				*colon = '\0';
				port = colon + 1;
			}
			snprintf(host, sizeof(host), "%s", item);
		}
		v6 = strchr(host, ':') != NULL;
		if (inet_pton(v6 ? AF_INET6 : AF_INET, host, bin) != 1)
			return cf_fail(st, key, "not an IP address: '%s' (names are not resolved here)",
				    host);
		if (port != NULL) {
			char *end;
			unsigned long p = strtoul(port, &end, 10);
			if (*port == '\0' || *end != '\0' || p == 0 || p > 65535)
				return cf_fail(st, key, "bad port in '%.*s'", (int)n, t);
			len = snprintf(out + o, CONFIG_DNS_SERVERS_MAX - o, "%s%s%s%s:%lu",
				       o ? "," : "", v6 ? "[" : "", host, v6 ? "]" : "", p);
		} else {
			len = snprintf(out + o, CONFIG_DNS_SERVERS_MAX - o, "%s%s%s%s", o ? "," : "",
				       v6 ? "[" : "", host, v6 ? "]" : "");
		}
		if (len < 0 || (size_t)len >= CONFIG_DNS_SERVERS_MAX - o)
			return cf_fail(st, key, "too many servers (max %d bytes)",
				    CONFIG_DNS_SERVERS_MAX - 1);
		o += (size_t)len;
	}
	return 0;
}

int
cf_screen_set(struct pstate *st, const struct key_def *k, const char *v)
{
	struct screen_conf *sc = &st->cfg->screen;
	char why[CONFIG_ERR_MAX];

	switch (k->type) {
	case T_ACCESS:
		if (strlen(v) >= sizeof(sc->access_file))
			return cf_fail(st, k->name, "path too long (max %zu bytes)",
				    sizeof(sc->access_file) - 1);
		for (const char *c = v; *c; c++)
			if ((unsigned char)*c < 0x20 || *c == 0x7f)
				return cf_fail(st, k->name, "control character in path");
		strcpy(sc->access_file, v);
		return 0;
	case T_SCREEN_ACTION:
		for (unsigned i = 0; i < 3; i++)
			if (strcmp(v, action_names[i]) == 0) {
				*(unsigned *)(void *)((char *)st->cfg + k->off) = i;
				return 0;
			}
		return cf_fail(st, k->name, "not one of enforce, drop, ignore: '%s'", v);
	case T_DNSBL_SITES: {
		struct dnsbl_sites *s = calloc(1, sizeof(*s));

		if (s == NULL)
			return cf_fail(st, k->name, "out of memory");
		if (dnsbl_sites_parse(v, s, why, sizeof(why)) < 0) {
			free(s);
			return cf_fail(st, k->name, "%s", why);
		}
		free(sc->sites);
		sc->sites = s->nsites > 0 ? s : NULL;
		if (sc->sites == NULL)
			free(s);
		return 0;
	}
	case T_DNS_SERVERS:
		return dns_servers_parse(st, k->name, v);
	default:
		return cf_fail(st, k->name, "not a screening key");
	}
}

/* client_access, once every layer is read: one table per load. */
int
cf_finish_screen(struct pstate *st)
{
	static const char key[] = "client_access";
	struct screen_conf *sc = &st->cfg->screen;
	char path[CONFIG_PATH_MAX], why[CONFIG_ERR_MAX];

	if (sc->access_file[0] == '\0')
		return 0;
	if (cf_path_beside(st, key, sc->access_file, path) < 0)
		return -1;
	if (cidr_map_load(path, &sc->access, why, sizeof(why)) < 0)
		return cf_fail_key(st, key, "%s", why);
	return 0;
}

void
cf_screen_print(const struct config *cfg, const struct key_def *k, FILE *f)
{
	const struct screen_conf *sc = &cfg->screen;
	char buf[4096];

	switch (k->type) {
	case T_ACCESS:
		if (sc->access_file[0] != '\0')
			fprintf(f, "client_access = %s\n", sc->access_file);
		return;
	case T_SCREEN_ACTION:
		fprintf(f, "%s = %s\n", k->name,
			action_names[*(const unsigned *)(const void *)((const char *)cfg + k->off)]);
		return;
	case T_DNSBL_SITES:
		if (sc->sites != NULL && dnsbl_sites_format(sc->sites, buf, sizeof(buf)) < sizeof(buf))
			fprintf(f, "dnsbl_sites = %s\n", buf);
		return;
	case T_DNS_SERVERS:
		if (sc->dns_servers[0] != '\0')
			fprintf(f, "dns_servers = %s\n", sc->dns_servers);
		return;
	default:
		return;
	}
}

void
cf_screen_free(struct config *cfg)
{
	cidr_map_free(cfg->screen.access);
	cfg->screen.access = NULL;
	free(cfg->screen.sites);
	cfg->screen.sites = NULL;
}
