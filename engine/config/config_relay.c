/*
 * config_relay.c - the relay keys checked together once every layer is
 * read: retry bounds, TLS verification, the transport map (read here,
 * parsed by relay_route.c) and relay_host, names resolved, and a route for
 * every local domain. Owner: the configuration module; shared
 * declarations: config_internal.h.
 */
#include "config_internal.h"

/* ---- relay: checks across keys, the map, name resolution ---- */

static size_t
key_index(const char *name)
{
	const struct key_def *k = cf_key_find(name);

	assert(k != NULL);
	return (size_t)(k - config_keys);
}

/*
 * An error found after every layer was read, named after the place that
 * set the key: "FILE:LINE: key: problem", "-o key=value: problem", or for
 * a built-in value "FILE: key: problem" (just "key: problem" without a
 * file), so it reads like an error found while parsing that line.
 */
int
cf_fail_key(struct pstate *st, const char *name, const char *fmt, ...)
{
	const struct key_origin *o = &st->origin[key_index(name)];
	va_list ap;
	int rc;

	/* Stand in the layer that set the key; every layer has been read. */
	memset(&st->ly, 0, sizeof(st->ly));
	if (o->cli)
		snprintf(st->ly.label, sizeof(st->ly.label), "%s", o->label);
	else if (st->cfg->path[0] != '\0') {
		st->ly.file = st->cfg->path;
		st->ly.lineno = o->line;
	} else
		snprintf(st->ly.label, sizeof(st->ly.label), "%s", name);
	va_start(ap, fmt);
	rc = cf_vfail(st, name, fmt, ap);
	va_end(ap);
	return rc;
}

/* A file named by key: a relative path is taken from the configuration
 * file's directory, as an operator reading that file would. */
int
cf_path_beside(struct pstate *st, const char *key, const char *name, char path[CONFIG_PATH_MAX])
{
	const char *slash = strrchr(st->cfg->path, '/');

	if (name[0] != '/' && slash != NULL) {
		size_t dl = (size_t)(slash - st->cfg->path);

		if (dl + 1 + strlen(name) >= CONFIG_PATH_MAX)
			return cf_fail_key(st, key, "path too long (max %d bytes) with the "
					"configuration file's directory", CONFIG_PATH_MAX - 1);
		memcpy(path, st->cfg->path, dl + 1); /* with the '/' */
		strcpy(path + dl + 1, name);          /* fits: checked above */
	} else if (strlen(name) >= CONFIG_PATH_MAX) {
		return cf_fail_key(st, key, "path too long (max %d bytes)", CONFIG_PATH_MAX - 1);
	} else {
		strcpy(path, name);
	}
	return 0;
}

/* transport_maps: read the whole file (every cf_load, so every SIGHUP),
 * parse it, resolve its names. */
static int
load_map(struct pstate *st)
{
	static const char key[] = "transport_maps";
	struct relay_conf *r = &st->cfg->relay;
	struct relay_hop_origin *origin;
	char path[CONFIG_PATH_MAX], why[CONFIG_ERR_MAX];
	char *text = NULL;
	size_t len = 0, i;
	int rc;

	if (cf_path_beside(st, key, r->transport_maps, path) < 0)
		return -1;
	if (cf_read_file(path, RELAY_MAP_FILE_MAX, &text, &len, why) < 0)
		return cf_fail_key(st, key, "%s", why);
	/* 64 origins of ~300 bytes: the heap, not the main thread's stack. */
	origin = calloc(CONFIG_MAX_HOPS, sizeof(*origin));
	if (origin == NULL) {
		free(text);
		return cf_fail_key(st, key, "out of memory");
	}
	rc = relay_map_parse(r, path, text, len, origin, why, sizeof(why));
	free(text);
	if (rc < 0) {
		free(origin);
		return cf_fail_key(st, key, "%s", why);
	}
	assert(r->nhops <= CONFIG_MAX_HOPS);
	for (i = 0; rc == 0 && i < r->nhops; i++) {
		struct relay_hop_conf *h = &r->hops[i];

		unsigned bad = 0;

		if (relay_hop_resolve(h, st->cfg->screen.dns_servers, &bad, why, sizeof(why)) < 0)
			rc = cf_fail_key(st, key, "%s:%u: %s: cannot resolve '%s': %s", path,
				      origin[i].line, origin[i].domain, h->m[bad].host, why);
	}
	free(origin);
	return rc;
}

/*
 * The relay keys together: retry bounds, TLS verification, the map and
 * relay_host (both resolved here, at start-up and on every SIGHUP), and
 * what a relay needs from the rest: the spool, and a route for every
 * local domain (else mail accepted for it could never leave).
 */
int
cf_finish_relay(struct pstate *st)
{
	struct config *cfg = st->cfg;
	struct relay_conf *r = &cfg->relay;
	char why[CONFIG_ERR_MAX], a[32], b[32];
	size_t i;

	assert(r->map == NULL && r->nhops == 0 && r->default_hop == -1);
	if (r->retry_max < r->retry_min) {
		syn_fmt_duration(a, sizeof(a), r->retry_max);
		syn_fmt_duration(b, sizeof(b), r->retry_min);
		return cf_fail_key(st, "retry_max", "%s is less than retry_min (%s)", a, b);
	}
	if (r->tls == RELAY_TLS_VERIFY && r->tls_ca_file[0] == '\0')
		return cf_fail_key(st, "relay_tls", "verify needs relay_tls_ca_file");
	if (r->tls_ca_file[0] != '\0') {
		/* Only readability: engine/relay/relay.c loads the certificates. */
		int fd = open(r->tls_ca_file, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			return cf_fail_key(st, "relay_tls_ca_file", "cannot open: %s", strerror(errno));
		close(fd);
	}
	if (r->transport_maps[0] != '\0' && load_map(st) < 0)
		return -1;
	if (r->relay_host[0] != '\0') {
		struct relay_hop_conf h;
		int idx;

		if (relay_hop_parse(r->relay_host, strlen(r->relay_host), false, &h, why,
				    sizeof(why)) < 0)
			abort(); /* cf_set_value() accepted it */
		/* Deduplicated before resolving: a hop the map already has
		 * was resolved with it. */
		idx = relay_hop_add(r, &h);
		if (idx < 0)
			return cf_fail_key(st, "relay_host", "too many next hops with transport_maps "
				       "(max %d)", CONFIG_MAX_HOPS);
		unsigned bad = 0;

		if (relay_hop_resolve(&r->hops[idx], cfg->screen.dns_servers, &bad, why, sizeof(why)) < 0)
			return cf_fail_key(st, "relay_host", "cannot resolve '%s': %s",
					r->hops[idx].m[bad].host, why);
		if (r->default_hop < 0)
			r->default_hop = idx;
	}
	/* Verification probes go to the recipient's own next hop. */
	if (cfg->verify.enabled && !relay_enabled(r))
		return cf_fail_key(st, "verify_recipients", "needs a next hop to ask: set relay_host "
			       "or transport_maps");
	if (cfg->verify.enabled && cfg->verify.timeout >= cfg->smtp.command_timeout) {
		syn_fmt_duration(a, sizeof(a), cfg->verify.timeout);
		syn_fmt_duration(b, sizeof(b), cfg->smtp.command_timeout);
		return cf_fail_key(st, "verify_timeout", "%s is not less than command_timeout (%s)", a,
				b);
	}
	if (!relay_enabled(r))
		return 0;
	/* The relay reads the records it delivers from the page cache
	 * (relay_map.c): after direct writes each read would be a disk read
	 * inside the event loop. */
	if (cfg->sink == SINK_KIND_SPOOL && cfg->spool_io == SPOOL_IO_DIRECT)
		return cf_fail_key(st, "spool_io", "direct cannot be used with relay_host or "
			       "transport_maps (the relay reads the spool back through the page cache); "
			       "use auto or buffered");
	/* With jetstream the stream's consumer (ringmx-deliver) reads the
	 * same keys and delivers. */
	if (cfg->sink == SINK_KIND_DISCARD)
		return cf_fail_key(st, r->relay_host[0] != '\0' ? "relay_host" : "transport_maps",
				"needs sink = spool or jetstream");
	for (i = 0; i < cfg->ndomains; i++) {
		const char *d = cfg->domain_list[i];

		if (relay_route(r, d, strlen(d)) < 0)
			return cf_fail_key(st, "domains", "no next hop for '%s': add it to "
				       "transport_maps or set relay_host", d);
	}
	return 0;
}

