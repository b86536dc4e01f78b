/*
 * config.c - ringmxd configuration: embedded defaults, a Postfix main.cf
 * style file read through libinih, `-o key=value` overrides and the
 * dedicated command-line flags. Contract: include/ringmx/config.h; every key
 * is documented in docs/config.md.
 *
 * Owner: the configuration module (this file, tests/unit/test_config.c,
 * tests/fuzz/fuzz_config.c). A struct config is built here on the main
 * thread and never modified after config_load() returns; config_free()
 * releases everything it holds (domain strings, the domain array, itself).
 *
 * Layers, applied in order: defaults, file, -o, flags. Inside one layer a
 * scalar key may be set once. A list key (listen, domains, cpus) replaces
 * the lower layer's list on its first use in a layer and appends after that;
 * domains, cpus and recipient_maps also take continuation lines.
 *
 * libinih is driven through ini_parse_stream() with our own line reader, so
 * that we know the line number in the handler, can reject what inih would
 * accept but main.cf does not (sections, `key: value`, over-long lines, NUL
 * bytes) and stop at the first error. The first error wins: every later
 * cf_fail() is ignored.
 */
#include "config_internal.h"
#include "log.h"
#include "ringmx/spool_share.h"

/* The words of log_level and log_format, indexed by their enums; LOG_ERR
 * has none (errors are always logged). */
const char *const cf_log_level_words[] = {NULL, "warning", "notice", "info", "debug"};
const char *const cf_log_format_words[] = {"postfix", "json"};

/* ---- the key table ---- */

const struct key_def config_keys[] = {
	{"listen", T_LISTEN, 0, 0, 0, false},
	{"hostname", T_HOSTNAME, 0, 0, 0, true},
	{"domains", T_DOMAINS, 0, 0, 0, true},
	{"workers", T_WORKERS, CO(workers), 0, CONFIG_MAX_WORKERS, false},
	{"cpus", T_CPUS, 0, 0, 0, false},
	{"max_connections", T_UINT, CO(max_connections), 1, 1048576, false},
	{"recv_buffers", T_POW2, CO(recv_buffers), 16, 32768, false},
	{"recv_buffer_size", T_SIZE32, CO(recv_buffer_size), 4096, 1048576, false},
	{"listen_backlog", T_UINT, CO(listen_backlog), 1, 65535, false},
	{"proxy_trusted", T_PROXY_TRUSTED, CO(proxy_trusted), 0, 0, true},
	{"proxy_timeout", T_DURATION, CO(proxy_timeout), SEC(1), SEC(3600), true},
	{"sink", T_SINK, 0, 0, 0, false},
	{"spool_dir", T_PATH, 0, 0, 0, false},
	{"segment_size", T_SIZE64, CO(segment_size), 64ull << 10, 1ull << 40, false},
	{"durability", T_DURABILITY, 0, 0, 0, false},
	{"spool_io", T_SPOOL_IO, 0, 0, 0, false},
	{"commit_delay", T_DURATION, CO(commit_delay), 0, SEC(1), true},
	{"commit_size", T_SIZE64, CO(commit_size), 4096, 1ull << 30, true},
	{"spool_memory", T_SIZE64, CO(spool_memory), 1ull << 20, 1ull << 40, false},
	/* Relay to the next hop (docs/config.md). All reloadable: SIGHUP
	 * builds a new map and hop list, and names are resolved again. */
	{"relay_host", T_RELAY_HOST, 0, 0, 0, true},
	{"transport_maps", T_FILE, CO(relay.transport_maps), 0, 0, true},
	{"relay_tls", T_RELAY_TLS, 0, 0, 0, true},
	{"relay_tls_ca_file", T_FILE, CO(relay.tls_ca_file), 0, 0, true},
	{"relay_connections", T_UINT, CO(relay.connections), 1, 1024, true},
	{"relay_connect_timeout", T_DURATION, CO(relay.connect_timeout), SEC(1), SEC(3600), true},
	{"relay_reply_timeout", T_DURATION, CO(relay.reply_timeout), SEC(1), SEC(3600), true},
	{"relay_idle_timeout", T_DURATION, CO(relay.idle_timeout), 0, SEC(3600), true},
	{"retry_min", T_DURATION, CO(relay.retry_min), SEC(1), SEC(7 * DAY_S), true},
	{"retry_max", T_DURATION, CO(relay.retry_max), SEC(1), SEC(7 * DAY_S), true},
	{"maximal_queue_lifetime", T_DURATION, CO(relay.queue_lifetime), SEC(1), SEC(100 * DAY_S),
	 true},
	{"spool_high_water", T_SIZE64, CO(relay.high_water), 0, 1ull << 50, true},
	{"relay_defer_after", T_DURATION, CO(relay.defer_after), 0, SEC(7 * DAY_S), true},
	/* Read again on every SIGHUP (docs/defences.md). */
	{"recipient_maps", T_RCPT_MAPS, 0, 0, 0, true},
	{"message_size_limit", T_SIZE64, CO(smtp.message_size_limit), 1, 1ull << 40, true},
	{"recipient_limit", T_UINT, CO(smtp.recipient_limit), 1, 1000000, true},
	{"error_limit", T_UINT, CO(smtp.error_limit), 1, 1000000, true},
	{"junk_limit", T_UINT, CO(smtp.junk_limit), 1, 1000000, true},
	{"hop_count_limit", T_UINT, CO(smtp.hop_count_limit), 0, 1000000, true},
	{"bare_newline", T_BARE_NEWLINE, 0, 0, 0, true},
	{"greeting_timeout", T_DURATION, CO(smtp.greeting_timeout), SEC(1), SEC(7 * DAY_S), true},
	{"command_timeout", T_DURATION, CO(smtp.command_timeout), SEC(1), SEC(7 * DAY_S), true},
	{"data_timeout", T_DURATION, CO(smtp.data_timeout), SEC(1), SEC(7 * DAY_S), true},
	{"data_end_timeout", T_DURATION, CO(smtp.data_end_timeout), SEC(1), SEC(7 * DAY_S), true},
	{"session_timeout", T_DURATION, CO(smtp.session_timeout), SEC(1), SEC(7 * DAY_S), true},
	{"send_timeout", T_DURATION, CO(send_timeout), SEC(1), SEC(7 * DAY_S), true},
	{"shutdown_timeout", T_DURATION, CO(shutdown_timeout), 0, SEC(7 * DAY_S), true},
	/* Native TLS (docs/tls.md). Reloadable: SIGHUP rebuilds every
	 * worker's contexts; only adding or removing tls_cert needs a restart
	 * (it changes the listeners' tls= default). */
	{"tls_cert", T_TLS_PATH, CO(tls.cert), 0, 0, true},
	{"tls_key", T_TLS_PATH, CO(tls.key), 0, 0, true},
	{"tls_sni", T_TLS_SNI, 0, 0, 0, true},
	{"tls_min_version", T_TLS_VERSION, 0, 0, 0, true},
	{"tls_ciphers", T_TLS_CIPHERS, 0, 0, 0, true},
	{"tls_session_tickets", T_BOOL, CO(tls.session_tickets), 0, 0, true},
	{"handshake_timeout", T_DURATION, CO(tls.handshake_timeout), SEC(1), SEC(3600), true},
	/* Recipient verification (docs/defences.md). The cache is allocated
	 * at start: its switch and its size need a restart. */
	{"verify_recipients", T_BOOL, CO(verify.enabled), 0, 0, false},
	{"verify_positive_ttl", T_DURATION, CO(verify.positive_ttl), SEC(1), SEC(100 * DAY_S), true},
	{"verify_negative_ttl", T_DURATION, CO(verify.negative_ttl), 0, SEC(100 * DAY_S), true},
	{"verify_timeout", T_DURATION, CO(verify.timeout), SEC(1), SEC(3600), true},
	{"verify_cache_size", T_UINT, CO(verify.cache_size), 1, 16777216, false},
	/* Per-client limits (docs/defences.md); the table's size is fixed at
	 * start-up (it is mapped once, shared by the workers). */
	{"client_connection_limit", T_UINT, CO(client_limits.connection_limit), 0, 1000000, true},
	{"client_connection_rate_limit", T_UINT, CO(client_limits.connection_rate_limit), 0, 100000000,
	 true},
	{"client_message_rate_limit", T_UINT, CO(client_limits.message_rate_limit), 0, 100000000, true},
	{"client_recipient_rate_limit", T_UINT, CO(client_limits.recipient_rate_limit), 0, 100000000,
	 true},
	{"client_tls_handshake_rate_limit", T_UINT, CO(client_limits.tls_handshake_rate_limit), 0,
	 100000000, true},
	{"client_rate_window", T_DURATION, CO(client_limits.rate_window), SEC(1), SEC(DAY_S), true},
	{"client_ipv6_prefix", T_UINT, CO(client_limits.ipv6_prefix), 0, 128, true},
	{"client_limit_exceptions", T_PROXY_TRUSTED, CO(client_limits.exceptions), 0, 0, true},
	{"client_table_size", T_POW2, CO(client_limits.table_size), 16, 1u << 24, false},
	/* Screening (docs/defences.md); the shared pass cache and the
	 * answer caches are sized once, at start-up. */
	{"client_access", T_ACCESS, 0, 0, 0, true},
	{"greet_wait", T_DURATION, CO(screen.greet_wait), 0, SEC(60), true},
	{"greet_action", T_SCREEN_ACTION, CO(screen.greet_action), 0, 0, true},
	{"dnsbl_sites", T_DNSBL_SITES, 0, 0, 0, true},
	{"dnsbl_threshold", T_UINT, CO(screen.dnsbl_threshold), 1, 100000, true},
	{"dnsbl_action", T_SCREEN_ACTION, CO(screen.dnsbl_action), 0, 0, true},
	{"dnsbl_timeout", T_DURATION, CO(screen.dnsbl_timeout), 100000000ull, SEC(60), true},
	{"screen_cache_ttl", T_DURATION, CO(screen.cache_ttl), 0, SEC(30 * DAY_S), true},
	{"screen_cache_size", T_UINT, CO(screen.cache_size), 16, 1u << 26, false},
	{"dns_servers", T_DNS_SERVERS, 0, 0, 0, true},
	{"dns_cache_size", T_UINT, CO(screen.dns_cache_size), 16, 1u << 24, false},
	/* Content filters (docs/milter.md). New connections use the list of
	 * the configuration they started under; the pool is sized at start. */
	/* Operations (docs/operations.md). */
	{"metrics_listen", T_ADDR, CO(metrics_listen), 0, 0, false},
	{"user", T_ACCOUNT, CO(run_as.user), 0, 0, false},
	{"group", T_ACCOUNT, CO(run_as.group), 0, 0, false},
	/* Reloadable: two numbers every log call reads anyway (log.h). */
	{"log_level", T_LOG_LEVEL, CO(log_level), 0, 0, true},
	{"log_format", T_LOG_FORMAT, CO(log_format), 0, 0, true},
	{"milters", T_MILTERS, 0, 0, 0, true},
	{"milter_default_action", T_MILTER_ACTION, CO(milters.default_action), 0, 0, true},
	{"milter_connect_timeout", T_DURATION, CO(milters.connect_timeout), SEC(1), SEC(3600), true},
	{"milter_command_timeout", T_DURATION, CO(milters.command_timeout), SEC(1), SEC(3600), true},
	{"milter_content_timeout", T_DURATION, CO(milters.content_timeout), SEC(1), SEC(3600), true},
	{"milter_conversation_limit", T_UINT, CO(milters.conversation_limit), 1, 65536, false},
	/* sink = jetstream (docs/jetstream.md). Each worker connects at
	 * start-up: all restart only. */
	{"jetstream_servers", T_JS_SERVERS, 0, 0, 0, false},
	{"jetstream_stream", T_JS_STREAM, 0, 0, 0, false},
	{"jetstream_subject", T_JS_SUBJECT, 0, 0, 0, false},
	{"jetstream_create", T_BOOL, CO(jetstream.create), 0, 0, false},
	{"jetstream_replicas", T_UINT, CO(jetstream.replicas), 1, 5, false},
	{"jetstream_timeout", T_DURATION, CO(jetstream.timeout), 100000000ull, SEC(600), false},
	{"jetstream_max_pending", T_UINT, CO(jetstream.max_pending), 1, 65536, false},
	{"jetstream_creds", T_FILE, CO(jetstream.creds), 0, 0, false},
	{"jetstream_tls_ca", T_FILE, CO(jetstream.tls_ca), 0, 0, false},
};
_Static_assert(sizeof(config_keys) / sizeof(config_keys[0]) == NKEYS, "NKEYS is the key count");

/* snprintf() for messages where cutting an over-long path or value short is
 * the intended behaviour (and not worth a -Wformat-truncation warning). */
void
cf_buff(char *b, size_t cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(b, cap, fmt, ap);
	va_end(ap);
}

/* First error wins. File errors: "file:line: key: problem" (line 0: a
 * built-in value, "file: key: problem"); command-line errors: "label:
 * problem". */
int
cf_vfail(struct pstate *st, const char *key, const char *fmt, va_list ap)
{
	char prob[CONFIG_ERR_MAX];

	if (st->failed)
		return -1;
	st->failed = true;
	vsnprintf(prob, sizeof(prob), fmt, ap);
	if (st->ly.file == NULL)
		cf_buff(st->err, CONFIG_ERR_MAX, "%s: %s", st->ly.label, prob);
	else if (st->ly.lineno == 0 && key != NULL)
		cf_buff(st->err, CONFIG_ERR_MAX, "%s: %s: %s", st->ly.file, key, prob);
	else if (key == NULL)
		cf_buff(st->err, CONFIG_ERR_MAX, "%s:%d: %s", st->ly.file, st->ly.lineno, prob);
	else
		cf_buff(st->err, CONFIG_ERR_MAX, "%s:%d: %s: %s", st->ly.file, st->ly.lineno, key,
		     prob);
	return -1;
}

int
cf_fail(struct pstate *st, const char *key, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = cf_vfail(st, key, fmt, ap);
	va_end(ap);
	return rc;
}

static const char *
q(struct pstate *st, const char *s)
{
	syn_quote(st->qbuf, sizeof(st->qbuf), s);
	return st->qbuf;
}

/* ---- lists ---- */

static void
domains_clear(struct config *cfg)
{
	size_t i;

	for (i = 0; i < cfg->ndomains; i++)
		free(cfg->domain_list[i]);
	free(cfg->domain_list);
	cfg->domain_list = NULL;
	cfg->ndomains = 0;
}

static int
domain_add(struct pstate *st, const char *key, const char *tok, size_t n)
{
	struct config *cfg = st->cfg;
	char d[SMTP_DOMAIN_MAX + 2];
	char **nl;
	size_t i;

	if (!syn_domain_valid(tok, n, true)) {
		char raw[CONFIG_LINE_MAX + 1];

		assert(n <= CONFIG_LINE_MAX);
		memcpy(raw, tok, n);
		raw[n] = '\0';
		return cf_fail(st, key, "not a domain: '%s'", q(st, raw));
	}
	assert(n < sizeof(d));
	for (i = 0; i < n; i++)
		d[i] = (tok[i] >= 'A' && tok[i] <= 'Z') ? (char)(tok[i] - 'A' + 'a') : tok[i];
	d[n] = '\0';
	for (i = 0; i < cfg->ndomains; i++)
		if (strcmp(cfg->domain_list[i], d) == 0)
			return cf_fail(st, key, "duplicate domain: '%s'", d);
	if (cfg->ndomains == CONFIG_MAX_DOMAINS)
		return cf_fail(st, key, "too many domains (max %d)", CONFIG_MAX_DOMAINS);
	nl = realloc(cfg->domain_list, (cfg->ndomains + 1) * sizeof(*nl));
	if (nl == NULL)
		return cf_fail(st, key, "out of memory");
	cfg->domain_list = nl;
	nl[cfg->ndomains] = strdup(d);
	if (nl[cfg->ndomains] == NULL)
		return cf_fail(st, key, "out of memory");
	cfg->ndomains++;
	return 0;
}

/* The next item of a list separated by commas and/or blanks: its start,
 * with its length in *n, or NULL at the end; *p moves past it. */
const char *
cf_list_next(const char **p, size_t *n)
{
	const char *s = *p, *t;

	while (*s == ',' || syn_is_blank(*s))
		s++;
	t = s;
	while (*s != '\0' && *s != ',' && !syn_is_blank(*s))
		s++;
	*p = s;
	*n = (size_t)(s - t);
	return *n > 0 ? t : NULL;
}

/* Domains separated by commas and/or blanks; appended to the list. */
static int
domains_parse(struct pstate *st, const char *key, const char *v)
{
	const char *t;
	size_t n;

	while ((t = cf_list_next(&v, &n)) != NULL)
		if (domain_add(st, key, t, n) < 0)
			return -1;
	return 0;
}

/*
 * CPUs ("0-3,6": numbers and ranges separated by commas and/or blanks)
 * appended to list[*n]. Returns 0, or -1 with the reason in why.
 */
static int
cpus_parse(const char *v, int *list, size_t *n, size_t max, char *why, size_t whylen)
{
	bool seen[CPU_SETSIZE] = {false};
	const char *p = v;
	char qb[288];
	size_t i;

	for (i = 0; i < *n; i++)
		seen[list[i]] = true;
	for (;;) {
		uint64_t lo, hi;
		const char *t, *end;
		int rc;

		while (*p == ',' || syn_is_blank(*p))
			p++;
		if (*p == '\0')
			return 0;
		t = p;
		while (*p != '\0' && *p != ',' && !syn_is_blank(*p))
			p++;
		syn_quote_n(qb, sizeof(qb), t, (size_t)(p - t));
		rc = syn_parse_digits(t, &lo, &end);
		hi = lo;
		if (rc == 0 && *end == '-')
			rc = syn_parse_digits(end + 1, &hi, &end);
		if (rc == -1 || end != p) {
			cf_buff(why, whylen, "not a CPU list: '%s'", qb);
			return -1;
		}
		if (rc == -2 || lo >= CPU_SETSIZE || hi >= CPU_SETSIZE) {
			cf_buff(why, whylen, "CPU out of range: '%s' (0..%d)", qb, CPU_SETSIZE - 1);
			return -1;
		}
		if (lo > hi) {
			cf_buff(why, whylen, "not a CPU range: '%s'", qb);
			return -1;
		}
		for (; lo <= hi; lo++) {
			if (seen[lo]) {
				cf_buff(why, whylen, "CPU %d listed twice", (int)lo);
				return -1;
			}
			if (*n == max) {
				cf_buff(why, whylen, "too many CPUs (max %zu)", max);
				return -1;
			}
			seen[lo] = true;
			list[(*n)++] = (int)lo;
		}
	}
}

int
config_parse_cpus(const char *s, int *cpus, size_t max)
{
	char why[400];
	size_t n = 0;

	assert(s != NULL && (cpus != NULL || max == 0));
	if (cpus_parse(s, cpus, &n, max, why, sizeof(why)) < 0)
		return -1;
	return (int)n;
}

/* ---- listeners ---- */

bool
cf_listener_same(const struct listener_conf *a, const struct listener_conf *b)
{
	return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

static void
listener_text(struct listener_conf *l)
{
	char a[INET6_ADDRSTRLEN];

	if (l->addr.ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&l->addr;

		inet_ntop(AF_INET, &s4->sin_addr, a, sizeof(a));
		snprintf(l->text, sizeof(l->text), "%s:%u", a, ntohs(s4->sin_port));
	} else {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&l->addr;

		assert(l->addr.ss_family == AF_INET6);
		inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a));
		snprintf(l->text, sizeof(l->text), "[%s]:%u", a, ntohs(s6->sin6_port));
	}
}

void
cf_listener_set_port(struct listener_conf *l, uint16_t port)
{
	if (l->addr.ss_family == AF_INET)
		((struct sockaddr_in *)&l->addr)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&l->addr)->sin6_port = htons(port);
	listener_text(l);
}

int
cf_port_parse(struct pstate *st, const char *key, const char *s, uint16_t *port)
{
	uint64_t v;
	int rc = syn_parse_uint(s, &v);

	if (rc == -1)
		return cf_fail(st, key, "not a port: '%s'", q(st, s));
	if (rc == -2 || v < 1 || v > 65535)
		return cf_fail(st, key, "port out of range: '%s' (1..65535)", q(st, s));
	*port = (uint16_t)v;
	return 0;
}

/* "ADDRESS:PORT": IPv4, [IPv6], '*' (0.0.0.0) or [::]. */
static int
listener_addr(struct pstate *st, const char *key, char *a, struct listener_conf *l)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)&l->addr;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&l->addr;
	char *host = a, *port;
	uint16_t pn = 0;

	if (*a == '[') {
		char *rb = strchr(a, ']');

		if (rb == NULL || rb[1] != ':')
			return cf_fail(st, key, "not ADDRESS:PORT: '%s'", q(st, a));
		*rb = '\0';
		host = a + 1;
		port = rb + 2;
		if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
			return cf_fail(st, key, "not an IPv6 address: '%s'", q(st, host));
		s6->sin6_family = AF_INET6;
		l->addrlen = sizeof(*s6);
	} else {
		port = strrchr(a, ':');
		if (port == NULL)
			return cf_fail(st, key, "not ADDRESS:PORT: '%s'", q(st, a));
		*port++ = '\0';
		if (strchr(host, ':') != NULL)
			return cf_fail(st, key, "IPv6 addresses must be in brackets: '%s'", q(st, host));
		if (strcmp(host, "*") == 0)
			s4->sin_addr.s_addr = htonl(INADDR_ANY);
		else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
			return cf_fail(st, key, "not an IPv4 address: '%s'", q(st, host));
		s4->sin_family = AF_INET;
		l->addrlen = sizeof(*s4);
	}
	if (cf_port_parse(st, key, port, &pn) < 0)
		return -1;
	cf_listener_set_port(l, pn);
	return 0;
}

static int
listener_option(struct pstate *st, const char *key, char *opt, struct listener_conf *l,
		unsigned *have)
{
	static const char *const tls[] = {"none", "starttls", "required", "implicit"};
	char *v = strchr(opt, '=');
	size_t i;

	if (v == NULL)
		return cf_fail(st, key, "not option=value: '%s'", q(st, opt));
	*v++ = '\0';
	if (strcmp(opt, "tls") == 0) {
		if (*have & 1)
			return cf_fail(st, key, "option given twice: 'tls'");
		*have |= 1;
		for (i = 0; i < 4; i++)
			if (strcmp(v, tls[i]) == 0)
				break;
		if (i == 4)
			return cf_fail(st, key, "not one of none, starttls, required, implicit: tls=%s",
				    q(st, v));
		l->tls = (enum listener_tls)i;
		l->tls_explicit = true;
		return 0;
	}
	if (strcmp(opt, "proxy") == 0) {
		if (*have & 2)
			return cf_fail(st, key, "option given twice: 'proxy'");
		*have |= 2;
		if (syn_parse_bool(v, &l->proxy) < 0)
			return cf_fail(st, key, "not a boolean: proxy=%s", q(st, v));
		return 0;
	}
	return cf_fail(st, key, "unknown option: '%s'", q(st, opt));
}

/* "ADDRESS:PORT [option=value ...]", appended to the listeners. */
int
cf_listen_parse(struct pstate *st, const char *key, const char *value)
{
	struct config *cfg = st->cfg;
	struct listener_conf l;
	char buf[CONFIG_LINE_MAX + 1], *tok, *save = NULL;
	unsigned have = 0;
	size_t i;

	memset(&l, 0, sizeof(l));
	if (strlen(value) >= sizeof(buf))
		return cf_fail(st, key, "value too long");
	strcpy(buf, value);
	tok = strtok_r(buf, " \t", &save);
	assert(tok != NULL); /* empty values are refused before */
	if (listener_addr(st, key, tok, &l) < 0)
		return -1;
	while ((tok = strtok_r(NULL, " \t", &save)) != NULL)
		if (listener_option(st, key, tok, &l, &have) < 0)
			return -1;
	for (i = 0; i < cfg->nlisteners; i++)
		if (cf_listener_same(&cfg->listeners[i], &l))
			return cf_fail(st, key, "duplicate listener: %s", l.text);
	if (cfg->nlisteners == CONFIG_MAX_LISTENERS)
		return cf_fail(st, key, "too many listeners (max %d)", CONFIG_MAX_LISTENERS);
	cfg->listeners[cfg->nlisteners++] = l;
	return 0;
}

/* ---- proxy_trusted ---- */

/*
 * One network: ADDRESS[/LEN]; IPv6 may be bracketed ([::1]/128, Postfix's
 * mynetworks form). Without /LEN it is the one host (/32, /128). Host bits
 * must be zero: 10.0.0.1/8 is more likely a typo than an intent.
 */
static int
cidr_parse(struct pstate *st, const char *key, const char *tok, size_t n, struct proxy_cidr *c)
{
	char a[INET6_ADDRSTRLEN + 8], qb[288], *host = a, *pl;
	unsigned max, i;
	uint64_t len;

	syn_quote_n(qb, sizeof(qb), tok, n);
	memset(c, 0, sizeof(*c));
	if (n >= sizeof(a))
		return cf_fail(st, key, "not a network: '%s'", qb);
	memcpy(a, tok, n);
	a[n] = '\0';
	pl = strchr(a, '/');
	if (pl != NULL)
		*pl++ = '\0';
	if (*host == '[') {
		size_t hl = strlen(host);

		if (hl < 3 || host[hl - 1] != ']')
			return cf_fail(st, key, "not a network: '%s'", qb);
		host[hl - 1] = '\0';
		host++;
	}
	if (strchr(host, ':') != NULL) {
		if (inet_pton(AF_INET6, host, c->addr) != 1)
			return cf_fail(st, key, "not an IPv6 address: '%s'", qb);
		c->family = AF_INET6;
		max = 128;
	} else {
		if (host != a || inet_pton(AF_INET, host, c->addr) != 1)
			return cf_fail(st, key, "not an IPv4 address: '%s'", qb);
		c->family = AF_INET;
		max = 32;
	}
	len = max;
	if (pl != NULL && (syn_parse_uint(pl, &len) != 0 || len > max))
		return cf_fail(st, key, "not a prefix length: '%s' (0..%u)", qb, max);
	c->prefix = (uint8_t)len;
	for (i = c->prefix; i < max; i++)
		if (c->addr[i / 8] & (0x80u >> (i % 8)))
			return cf_fail(st, key, "host bits set in '%s' (network/%u is meant?)", qb,
				    c->prefix);
	return 0;
}

/* Networks separated by commas and/or blanks; appended to the list. */
static int
trusted_parse(struct pstate *st, const char *key, struct proxy_trust *t, const char *v)
{
	const char *p = v;
	size_t added = 0;

	for (;; added++) {
		struct proxy_cidr c;
		const char *tk;
		size_t i;

		while (*p == ',' || syn_is_blank(*p))
			p++;
		if (*p == '\0')
			return added > 0 ? 0 : cf_fail(st, key, "empty list");
		tk = p;
		while (*p != '\0' && *p != ',' && !syn_is_blank(*p))
			p++;
		if (cidr_parse(st, key, tk, (size_t)(p - tk), &c) < 0)
			return -1;
		for (i = 0; i < t->n; i++) {
			const struct proxy_cidr *o = &t->net[i];

			if (o->family == c.family && o->prefix == c.prefix &&
			    memcmp(o->addr, c.addr, sizeof(c.addr)) == 0) {
				char qb[288];

				syn_quote_n(qb, sizeof(qb), tk, (size_t)(p - tk));
				return cf_fail(st, key, "network listed twice: '%s'", qb);
			}
		}
		if (t->n == PROXY_TRUST_MAX)
			return cf_fail(st, key, "too many networks (max %d)", PROXY_TRUST_MAX);
		t->net[t->n++] = c;
	}
}

/* Text form of one network, for config_print(). */
void
cf_cidr_text(const struct proxy_cidr *c, char *b, size_t cap)
{
	char a[INET6_ADDRSTRLEN];

	inet_ntop(c->family, c->addr, a, sizeof(a));
	cf_buff(b, cap, "%s/%u", a, c->prefix);
}

/* ---- keys ---- */

const struct key_def *
cf_key_find(const char *name)
{
	size_t i;

	for (i = 0; i < NKEYS; i++)
		if (strcmp(config_keys[i].name, name) == 0)
			return &config_keys[i];
	return NULL;
}

static bool
key_is_list(const struct key_def *k)
{
	return k->type == T_LISTEN || k->type == T_DOMAINS || k->type == T_CPUS ||
	       k->type == T_PROXY_TRUSTED || k->type == T_TLS_SNI || k->type == T_RCPT_MAPS;
}

static int
set_number(struct pstate *st, const struct key_def *k, const char *v)
{
	char lo[32], hi[32];
	uint64_t n = 0;
	int rc;

	switch (k->type) {
	case T_SIZE32:
	case T_SIZE64:
		rc = syn_parse_size(v, &n);
		if (rc == -1)
			return cf_fail(st, k->name, "not a size: '%s'", q(st, v));
		break;
	case T_DURATION:
		rc = syn_parse_duration(v, &n);
		if (rc == -1)
			return cf_fail(st, k->name, "not a duration: '%s'", q(st, v));
		break;
	default:
		rc = syn_parse_uint(v, &n);
		if (rc == -1)
			return cf_fail(st, k->name, "not a number: '%s'", q(st, v));
		break;
	}
	if (rc == -2 || n < k->min || n > k->max) {
		if (k->type == T_DURATION) {
			syn_fmt_duration(lo, sizeof(lo), k->min);
			syn_fmt_duration(hi, sizeof(hi), k->max);
		} else {
			snprintf(lo, sizeof(lo), "%llu", (unsigned long long)k->min);
			snprintf(hi, sizeof(hi), "%llu", (unsigned long long)k->max);
		}
		return cf_fail(st, k->name, "out of range: '%s' (%s..%s)", q(st, v), lo, hi);
	}
	if (k->type == T_POW2 && (n & (n - 1)) != 0)
		return cf_fail(st, k->name, "not a power of two: '%s'", q(st, v));
	if (k->type == T_SIZE64 || k->type == T_DURATION)
		*(uint64_t *)(void *)((char *)st->cfg + k->off) = n;
	else
		*(unsigned *)(void *)((char *)st->cfg + k->off) = (unsigned)n;
	return 0;
}

/* A file name: bounded (cap bytes with the NUL), no control characters
 * (log lines). */
static int
path_set(struct pstate *st, const char *key, char *dst, size_t cap, const char *v, size_t n)
{
	char qb[288];

	syn_quote_n(qb, sizeof(qb), v, n);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
			return cf_fail(st, key, "control character in path: '%s'", qb);
	if (n >= cap)
		return cf_fail(st, key, "path too long (max %zu bytes)", cap - 1);
	memcpy(dst, v, n);
	dst[n] = '\0';
	return 0;
}

/* tls_sni = NAME CERTFILE KEYFILE; NAME is a host name or *.domain. */
static int
tls_sni_parse(struct pstate *st, const char *key, const char *v)
{
	struct tls_conf *t = &st->cfg->tls;
	struct tls_sni_conf *e;
	const char *f[4];
	size_t fl[4], n = 0, i;
	const char *p = v;

	while (n < 4) {
		while (syn_is_blank(*p))
			p++;
		if (*p == '\0')
			break;
		f[n] = p;
		while (*p != '\0' && !syn_is_blank(*p))
			p++;
		fl[n] = (size_t)(p - f[n]);
		n++;
	}
	if (n != 3)
		return cf_fail(st, key, "expected 'NAME CERTFILE KEYFILE': '%s'", q(st, v));
	if (t->nsni == CONFIG_TLS_SNI_MAX)
		return cf_fail(st, key, "too many names (max %d)", CONFIG_TLS_SNI_MAX);
	e = &t->sni[t->nsni];
	memset(e, 0, sizeof(*e));
	{
		const char *name = f[0];
		size_t nl = fl[0];
		bool wild = nl > 2 && name[0] == '*' && name[1] == '.';
		char qb[288];

		syn_quote_n(qb, sizeof(qb), f[0], fl[0]);
		if (wild) {
			name += 2;
			nl -= 2;
		}
		if (nl >= sizeof(e->name) - 2 || !syn_domain_valid(name, nl, false))
			return cf_fail(st, key, "not a host name or *.domain: '%s'", qb);
		for (i = 0; i < fl[0]; i++) {
			char c = f[0][i];

			e->name[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
		}
		e->name[fl[0]] = '\0';
		for (i = 0; i < t->nsni; i++)
			if (strcmp(t->sni[i].name, e->name) == 0)
				return cf_fail(st, key, "name listed twice: '%s'", qb);
	}
	if (path_set(st, key, e->cert, sizeof(e->cert), f[1], fl[1]) < 0 ||
	    path_set(st, key, e->key, sizeof(e->key), f[2], fl[2]) < 0)
		return -1;
	t->nsni++;
	return 0;
}

int
cf_set_value(struct pstate *st, const struct key_def *k, const char *v)
{
	struct config *cfg = st->cfg;
	char why[400];

	switch (k->type) {
	case T_LISTEN:
		return cf_listen_parse(st, k->name, v);
	case T_ADDR: {
		struct listener_conf *l = (struct listener_conf *)(void *)((char *)cfg + k->off);
		char buf[CONFIG_LINE_MAX + 1];

		if (strlen(v) >= sizeof(buf))
			return cf_fail(st, k->name, "value too long");
		strcpy(buf, v);
		memset(l, 0, sizeof(*l));
		return listener_addr(st, k->name, buf, l);
	}
	case T_DOMAINS:
		return domains_parse(st, k->name, v);
	case T_CPUS:
		if (cpus_parse(v, cfg->cpu_list, &cfg->ncpu_list, CONFIG_MAX_CPUS, why,
			       sizeof(why)) < 0)
			return cf_fail(st, k->name, "%s", why);
		return 0;
	case T_HOSTNAME:
		if (!syn_domain_valid(v, strlen(v), false))
			return cf_fail(st, k->name, "not a valid host name: '%s'", q(st, v));
		strcpy(cfg->smtp.hostname, v); /* syn_domain_valid bounds it to 255 */
		return 0;
	case T_SINK:
		if (strcmp(v, "discard") == 0)
			cfg->sink = SINK_KIND_DISCARD;
		else if (strcmp(v, "spool") == 0)
			cfg->sink = SINK_KIND_SPOOL;
		else if (strcmp(v, "jetstream") == 0)
			cfg->sink = SINK_KIND_JETSTREAM;
		else
			return cf_fail(st, k->name, "not one of spool, jetstream, discard: '%s'",
				       q(st, v));
		return 0;
	case T_DURABILITY:
		if (strcmp(v, "fsync") == 0)
			cfg->durability = SPOOL_DURABILITY_FSYNC;
		else if (strcmp(v, "none") == 0)
			cfg->durability = SPOOL_DURABILITY_NONE;
		else
			return cf_fail(st, k->name, "not one of fsync, none: '%s'", q(st, v));
		return 0;
	case T_SPOOL_IO:
		if (strcmp(v, "auto") == 0)
			cfg->spool_io = SPOOL_IO_AUTO;
		else if (strcmp(v, "direct") == 0)
			cfg->spool_io = SPOOL_IO_DIRECT;
		else if (strcmp(v, "buffered") == 0)
			cfg->spool_io = SPOOL_IO_BUFFERED;
		else
			return cf_fail(st, k->name, "not one of auto, direct, buffered: '%s'", q(st, v));
		return 0;
	case T_PROXY_TRUSTED:
		return trusted_parse(st, k->name, (struct proxy_trust *)(void *)((char *)cfg + k->off),
				     v);
	case T_PATH:
		/* Control characters would make log lines and file names
		 * ambiguous; a path is otherwise taken as written. */
		for (const char *c = v; *c; c++)
			if ((unsigned char)*c < 0x20 || *c == 0x7f)
				return cf_fail(st, k->name, "control character in path: '%s'", q(st, v));
		if (strlen(v) >= sizeof(cfg->spool_dir) - 64)
			return cf_fail(st, k->name, "path too long (max %zu bytes)",
				    sizeof(cfg->spool_dir) - 65);
		strcpy(cfg->spool_dir, v);
		return 0;
	case T_BOOL:
		if (syn_parse_bool(v, (bool *)(void *)((char *)cfg + k->off)) < 0)
			return cf_fail(st, k->name, "not a boolean: '%s'", q(st, v));
		return 0;
	case T_TLS_PATH:
		return path_set(st, k->name, (char *)cfg + k->off, CONFIG_TLS_PATH_MAX, v, strlen(v));
	case T_FILE:
		return path_set(st, k->name, (char *)cfg + k->off, CONFIG_PATH_MAX, v, strlen(v));
	case T_RELAY_HOST: {
		struct relay_hop_conf h;

		/* Syntax now, for the line number; the name is resolved
		 * once every layer is read (cf_finish_relay()), so a relay_host
		 * that -o overrides is never looked up. */
		if (relay_hop_parse(v, strlen(v), false, &h, why, sizeof(why)) < 0)
			return cf_fail(st, k->name, "bad next hop '%s': %s", q(st, v), why);
		strcpy(cfg->relay.relay_host, v); /* relay_hop_parse() bounds it */
		return 0;
	}
	case T_RELAY_TLS: {
		static const char *const names[] = {"none", "may", "encrypt", "verify"};
		size_t i;

		for (i = 0; i < 4; i++)
			if (strcmp(v, names[i]) == 0)
				break;
		if (i == 4)
			return cf_fail(st, k->name, "not one of none, may, encrypt, verify: '%s'",
				    q(st, v));
		cfg->relay.tls = (enum relay_tls)i;
		return 0;
	}
	case T_TLS_SNI:
		return tls_sni_parse(st, k->name, v);
	case T_LOG_LEVEL:
	case T_LOG_FORMAT: {
		const char *const *w = k->type == T_LOG_LEVEL ? cf_log_level_words : cf_log_format_words;
		unsigned nw = k->type == T_LOG_LEVEL ? LOG_DEBUG + 1 : LOG_FORMAT_JSON + 1;

		for (unsigned i = 0; i < nw; i++)
			if (w[i] != NULL && strcmp(v, w[i]) == 0) {
				*(unsigned *)(void *)((char *)cfg + k->off) = i;
				return 0;
			}
		return cf_fail(st, k->name, "not one of %s: '%s'",
			    k->type == T_LOG_LEVEL ? "debug, info, notice, warning" : "postfix, json",
			    q(st, v));
	}
	case T_RCPT_MAPS:
		return cf_rcpt_maps_parse(st, k->name, v);
	case T_ACCESS:
	case T_SCREEN_ACTION:
	case T_DNSBL_SITES:
	case T_DNS_SERVERS:
		return cf_screen_set(st, k, v);
	case T_MILTERS:
	case T_MILTER_ACTION:
		return cf_milter_set(st, k, v);
	case T_ACCOUNT:
		return cf_account_set(st, k, v);
	case T_JS_SERVERS:
	case T_JS_STREAM:
	case T_JS_SUBJECT:
		return cf_jetstream_set(st, k, v);
	case T_TLS_VERSION:
		/* TLS 1.0 and 1.1 are never offered (RFC 8996). */
		if (strcmp(v, "1.2") == 0)
			cfg->tls.min_version = 12;
		else if (strcmp(v, "1.3") == 0)
			cfg->tls.min_version = 13;
		else
			return cf_fail(st, k->name, "not one of 1.2, 1.3: '%s'", q(st, v));
		return 0;
	case T_TLS_CIPHERS:
		/* Checked against wolfSSL when the contexts are built
		 * (engine/tls/tls.c); here only the syntax of a cipher list. */
		for (const char *c = v; *c; c++)
			if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
			      (*c >= '0' && *c <= '9') || strchr(":-_+!@=.,", *c) != NULL))
				return cf_fail(st, k->name, "not a cipher list: '%s'", q(st, v));
		if (strlen(v) >= sizeof(cfg->tls.ciphers))
			return cf_fail(st, k->name, "value too long (max %zu bytes)",
				    sizeof(cfg->tls.ciphers) - 1);
		strcpy(cfg->tls.ciphers, v);
		return 0;
	case T_BARE_NEWLINE:
		if (strcmp(v, "normalize") == 0)
			cfg->smtp.bare_newline = SMTP_BARE_NEWLINE_NORMALIZE;
		else if (strcmp(v, "reject") == 0)
			cfg->smtp.bare_newline = SMTP_BARE_NEWLINE_REJECT;
		else
			return cf_fail(st, k->name, "not one of normalize, reject: '%s'", q(st, v));
		return 0;
	default:
		return set_number(st, k, v);
	}
}

/*
 * Apply one setting of the current layer. cont: v continues the previous
 * line of the same key. Scalars may be set once per layer; a list key's
 * first use in a layer drops what lower layers set.
 */
int
cf_set_key(struct pstate *st, const char *name, const char *v, bool cont)
{
	const struct key_def *k = cf_key_find(name);
	struct config *cfg = st->cfg;
	int *seen;

	if (k == NULL)
		return cf_fail(st, name, "unknown key");
	seen = &st->ly.seen[k - config_keys];
	if (cont && k->type != T_DOMAINS && k->type != T_CPUS && k->type != T_RCPT_MAPS &&
	    k->type != T_MILTERS)
		return cf_fail(st, k->name, "continuation line not allowed (only domains, cpus, "
					 "recipient_maps and milters take continuation lines)");
	if (!cont && !key_is_list(k) && *seen != 0) {
		if (st->ly.file != NULL)
			return cf_fail(st, k->name, "already set on line %d", *seen);
		return cf_fail(st, k->name, "already set by an earlier option");
	}
	if (!cont && *seen == 0) {
		struct key_origin *o = &st->origin[k - config_keys];

		*seen = st->ly.file != NULL ? st->ly.lineno : 1;
		o->line = st->ly.file != NULL ? st->ly.lineno : 0;
		o->cli = st->ly.file == NULL;
		snprintf(o->label, sizeof(o->label), "%s", st->ly.label);
		if (k->type == T_LISTEN)
			cfg->nlisteners = 0;
		else if (k->type == T_DOMAINS)
			domains_clear(cfg);
		else if (k->type == T_CPUS)
			cfg->ncpu_list = 0;
		else if (k->type == T_MILTERS)
			cfg->milters.n = 0;
		else if (k->type == T_TLS_SNI)
			cfg->tls.nsni = 0;
		else if (k->type == T_PROXY_TRUSTED)
			((struct proxy_trust *)(void *)((char *)cfg + k->off))->n = 0;
		else if (k->type == T_RCPT_MAPS)
			cf_rcpt_maps_clear(cfg);
	}
	/* An empty `domains =` or `cpus =` line may be followed by
	 * continuation lines; an empty cpus list means no pinning, an empty
	 * recipient_maps none (as in Postfix). */
	if (*v == '\0' && k->type != T_CPUS && k->type != T_RCPT_MAPS &&
	    !(k->type == T_DOMAINS && st->ly.file != NULL))
		return cf_fail(st, k->name, "empty value");
	return cf_set_value(st, k, v);
}

/* End of a layer: list keys that ended up empty. */
static int
layer_end(struct pstate *st)
{
	int line = st->ly.seen[2]; /* domains */

	assert(strcmp(config_keys[2].name, "domains") == 0);
	if (line != 0 && st->cfg->ndomains == 0) {
		st->ly.lineno = line;
		return cf_fail(st, "domains", "empty list");
	}
	return 0;
}

/* ---- the file ---- */

/*
 * inih's line reader. Hands inih one physical line at a time (so the line
 * number is known in the handler) after checking what inih would accept
 * but main.cf syntax does not. Returning NULL stops the parse.
 */
static char *
cfg_reader(char *str, int num, void *stream)
{
	struct pstate *st = stream;
	const char *p, *nl, *s, *k;
	size_t n, body;

	if (st->failed || st->pos >= st->len)
		return NULL;
	p = st->buf + st->pos;
	nl = memchr(p, '\n', st->len - st->pos);
	n = nl != NULL ? (size_t)(nl - p) + 1 : st->len - st->pos;
	body = nl != NULL ? n - 1 : n;
	st->pos += n;
	st->ly.lineno++;
	st->ly.cont = false;
	if (body > CONFIG_LINE_MAX) {
		cf_fail(st, NULL, "line too long (max %d bytes)", CONFIG_LINE_MAX);
		return NULL;
	}
	if (memchr(p, '\0', body) != NULL) {
		cf_fail(st, NULL, "NUL byte in line");
		return NULL;
	}
	/* inih's buffer is ini_max_line (set to fit CONFIG_LINE_MAX below);
	 * checked, not asserted, so a release build can never overflow it. */
	if (num <= 0 || (size_t)num <= n) {
		cf_fail(st, NULL, "line too long (max %d bytes)", CONFIG_LINE_MAX);
		return NULL;
	}
	memcpy(str, p, n);
	str[n] = '\0';

	for (s = str; syn_is_blank(*s); s++)
		;
	if (*s == '\0' || *s == '#')
		return str; /* blank or comment */
	if (s > str && st->key_seen) {
		st->ly.cont = true; /* inih passes it with the previous key */
		return str;
	}
	if (*s == '[') {
		cf_fail(st, NULL, "sections are not supported");
		return NULL;
	}
	for (k = s; syn_is_digit(*s) || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    *s == '_' || *s == '-';
	     s++)
		;
	if (s == k || s - k > 40) {
		cf_fail(st, NULL, "syntax error: expected 'key = value'");
		return NULL;
	}
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s != '=') {
		cf_fail(st, NULL, "syntax error: expected 'key = value'");
		return NULL;
	}
	st->key_seen = true;
	return str;
}

static int
cfg_handler(void *user, const char *section, const char *name, const char *value)
{
	struct pstate *st = user;

	if (st->failed)
		return 0;
	if (section != NULL && *section != '\0') {
		cf_fail(st, NULL, "sections are not supported");
		return 0;
	}
	assert(name != NULL && value != NULL);
	return cf_set_key(st, name, value, st->ly.cont) == 0;
}

static char ini_comment_prefixes[] = "#";
static char ini_no_inline_prefixes[] = "";

static int
parse_text(struct pstate *st, const char *name, const char *text, size_t len)
{
	int rc;

	memset(&st->ly, 0, sizeof(st->ly));
	st->ly.file = name;
	st->buf = text;
	st->len = len;
	st->pos = 0;
	st->key_seen = false;

	/* libinih 55 runtime knobs (Debian builds it with INI_RUNTIME_OPTIONS).
	 * main.cf has only whole-line '#' comments: a ';' or '#' inside a
	 * value is part of the value. */
	ini_allow_multiline = true;
	ini_allow_bom = false;
	ini_start_comment_prefixes = ini_comment_prefixes;
	ini_allow_inline_comments = false;
	ini_inline_comment_prefixes = ini_no_inline_prefixes;
	ini_use_stack = true;
	ini_max_line = CONFIG_LINE_MAX + 3; /* '\r', '\n', NUL */
	ini_allow_realloc = false;
	ini_stop_on_first_error = true;
	ini_allow_no_value = false;

	rc = ini_parse_stream(cfg_reader, st, cfg_handler, st);
	if (st->failed)
		return -1;
	if (rc == -2)
		return cf_fail(st, NULL, "out of memory");
	if (rc != 0) {
		st->ly.lineno = rc;
		return cf_fail(st, NULL, "syntax error");
	}
	return layer_end(st);
}

/* The whole file, at most max bytes. */
int
cf_read_file(const char *path, size_t max, char **out, size_t *outlen, char *err)
{
	size_t len = 0, cap = 8192;
	char *buf;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		cf_buff(err, CONFIG_ERR_MAX, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	buf = malloc(cap);
	while (buf != NULL) {
		ssize_t r;

		if (len == cap) {
			char *nb = cap > max ? NULL : realloc(buf, cap * 2);

			if (nb == NULL) {
				free(buf);
				close(fd);
				cf_buff(err, CONFIG_ERR_MAX, "%s: file too large (max %zu bytes)",
					 path, max);
				return -1;
			}
			buf = nb;
			cap *= 2;
		}
		r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			cf_buff(err, CONFIG_ERR_MAX, "%s: cannot read: %s", path, strerror(errno));
			free(buf);
			close(fd);
			return -1;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	if (buf == NULL) {
		cf_buff(err, CONFIG_ERR_MAX, "%s: out of memory", path);
		return -1;
	}
	if (len > max) {
		cf_buff(err, CONFIG_ERR_MAX, "%s: file too large (max %zu bytes)", path, max);
		free(buf);
		return -1;
	}
	*out = buf;
	*outlen = len;
	return 0;
}

/* ---- defaults and resolution ---- */

static int
set_defaults(struct config *cfg)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)&cfg->listeners[0].addr;
	size_t i;

	s4->sin_family = AF_INET;
	s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cfg->listeners[0].addrlen = sizeof(*s4);
	cf_listener_set_port(&cfg->listeners[0], 2525);
	cfg->nlisteners = 1;

	cfg->workers = 0;
	cfg->max_connections = 16384;
	cfg->recv_buffers = 4096;
	cfg->recv_buffer_size = 16384;
	cfg->listen_backlog = 4096;
	cfg->sink = SINK_KIND_SPOOL;
	cf_jetstream_defaults(cfg);
	strcpy(cfg->spool_dir, "/var/spool/ringmx");
	cfg->segment_size = 64ull << 20;
	cfg->durability = SPOOL_DURABILITY_FSYNC;
	cfg->spool_io = SPOOL_IO_AUTO;
	cfg->commit_delay = 1000000ull; /* 1ms */
	cfg->commit_size = 4ull << 20;
	cfg->spool_memory = 256ull << 20;

	cfg->relay.default_hop = -1;
	cfg->relay.tls = RELAY_TLS_NONE;
	cfg->relay.connections = 8;
	cfg->relay.connect_timeout = SEC(30);
	cfg->relay.reply_timeout = SEC(300);
	cfg->relay.idle_timeout = SEC(10);
	cfg->relay.retry_min = SEC(60);
	cfg->relay.retry_max = SEC(3600);
	cfg->relay.queue_lifetime = SEC(5 * DAY_S);
	cfg->relay.high_water = 0;
	cfg->relay.defer_after = SEC(600);

	cfg->screen.greet_action = SCREEN_ACTION_ENFORCE;
	cfg->screen.dnsbl_threshold = 1;
	cfg->screen.dnsbl_action = SCREEN_ACTION_ENFORCE;
	cfg->screen.dnsbl_timeout = SEC(2);
	cfg->screen.cache_ttl = SEC(DAY_S);
	cfg->screen.cache_size = 65536;
	cfg->screen.dns_cache_size = 16384;
	cfg->milters.default_action = MILTER_DEFAULT_TEMPFAIL;
	cfg->milters.connect_timeout = SEC(30);
	cfg->milters.command_timeout = SEC(30);
	cfg->milters.content_timeout = SEC(300);
	cfg->milters.conversation_limit = 256;

	cfg->smtp.message_size_limit = 10240000;
	cfg->smtp.recipient_limit = 1000;
	cfg->smtp.error_limit = 20;
	cfg->smtp.junk_limit = 100;
	cfg->smtp.hop_count_limit = 50; /* Postfix's hopcount_limit */
	cfg->smtp.bare_newline = SMTP_BARE_NEWLINE_NORMALIZE;
	cfg->smtp.greeting_timeout = SEC(300);
	cfg->smtp.command_timeout = SEC(300);
	cfg->send_timeout = SEC(60);
	cfg->smtp.data_timeout = SEC(180);
	cfg->smtp.data_end_timeout = SEC(600);
	cfg->smtp.session_timeout = SEC(3600);
	cfg->smtp.starttls = false;
	cfg->shutdown_timeout = SEC(30);
	cfg->log_level = LOG_INFO;
	cfg->log_format = LOG_FORMAT_POSTFIX;

	cfg->verify.enabled = false;
	cfg->verify.positive_ttl = SEC(DAY_S);
	cfg->verify.negative_ttl = SEC(3600);
	cfg->verify.timeout = SEC(10);
	cfg->verify.cache_size = 100000;

	cfg->tls.min_version = 12;
	cfg->tls.session_tickets = true;
	cfg->tls.handshake_timeout = SEC(30);
	cfg->tls.env_enable = -1;

	cfg->proxy_timeout = SEC(5); /* Postfix's smtpd_upstream_proxy_timeout */
	/* proxy_trusted = 127.0.0.0/8, ::1/128: a proxy on the same host. */
	cfg->proxy_trusted.net[0].family = AF_INET;
	cfg->proxy_trusted.net[0].prefix = 8;
	cfg->proxy_trusted.net[0].addr[0] = 127;
	cfg->proxy_trusted.net[1].family = AF_INET6;
	cfg->proxy_trusted.net[1].prefix = 128;
	cfg->proxy_trusted.net[1].addr[15] = 1;
	cfg->proxy_trusted.n = 2;

	/* Postfix's smtpd_client_connection_count_limit and anvil_rate_time_unit. */
	cfg->client_limits.connection_limit = 50;
	cfg->client_limits.rate_window = SEC(60);
	cfg->client_limits.ipv6_prefix = 64;
	cfg->client_limits.table_size = 65536;

	cfg->domain_list = calloc(2, sizeof(char *));
	if (cfg->domain_list == NULL)
		return -1;
	for (i = 0; i < 2; i++) {
		cfg->domain_list[i] = strdup(default_domains[i]);
		if (cfg->domain_list[i] == NULL)
			return -1;
		cfg->ndomains++;
	}
	return 0;
}

static unsigned
affinity_cpus(void)
{
	cpu_set_t set;
	long n;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned)CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

/* Cross-key TLS rules; the files themselves are checked by engine/tls/tls.c. */
static int
finish_tls(struct config *cfg, char *err)
{
	struct tls_conf *t = &cfg->tls;
	bool have = t->cert[0] != '\0';
	size_t i;

	if (have && t->key[0] == '\0') {
		cf_buff(err, CONFIG_ERR_MAX, "tls_key: missing (tls_cert is set)");
		return -1;
	}
	if (!have && t->key[0] != '\0') {
		cf_buff(err, CONFIG_ERR_MAX, "tls_cert: missing (tls_key is set)");
		return -1;
	}
	if (!have && t->nsni > 0) {
		cf_buff(err, CONFIG_ERR_MAX, "tls_sni: needs a default certificate (tls_cert, tls_key)");
		return -1;
	}
	if (t->env_enable == 1 && !have) {
		cf_buff(err, CONFIG_ERR_MAX, "SMTP_ENABLE_TLS=true: no certificate (set SMTP_TLS_CERT "
					  "and SMTP_TLS_KEY, or tls_cert and tls_key)");
		return -1;
	}
	for (i = 0; i < cfg->nlisteners; i++) {
		struct listener_conf *l = &cfg->listeners[i];
		static const char *const names[] = {"none", "starttls", "required", "implicit"};

		if (!l->tls_explicit)
			l->tls = have && t->env_enable != 0 ? LISTENER_TLS_STARTTLS
							   : LISTENER_TLS_NONE;
		if (l->tls != LISTENER_TLS_NONE && !have) {
			cf_buff(err, CONFIG_ERR_MAX,
			     "listen %s: tls=%s needs a certificate (tls_cert and tls_key)", l->text,
			     names[l->tls]);
			return -1;
		}
	}
	return 0;
}

/* Fair sharing of staging memory (ringmx/spool_share.h): one message of
 * message_size_limit must fit the large messages' share of spool_memory,
 * or every message that large would fail after its upload. */
static int
finish_spool_share(const struct config *cfg, char *err)
{
	uint64_t need = spool_stage_need(cfg->smtp.message_size_limit, cfg->smtp.recipient_limit);

	if (cfg->spool_memory / SPOOL_LARGE_DIV >= need)
		return 0;
	cf_buff(err, CONFIG_ERR_MAX,
		"spool_memory: %llu bytes cannot stage a message of message_size_limit (%llu "
		"bytes): large messages get spool_memory / %u, and one needs message_size_limit + "
		"recipient_limit x %u (at most %u) + %u bytes = %llu; raise spool_memory to at "
		"least %llu or lower message_size_limit",
		(unsigned long long)cfg->spool_memory,
		(unsigned long long)cfg->smtp.message_size_limit, SPOOL_LARGE_DIV,
		SMTP_PATH_MAX + SMTP_ENV_RCPT_COST, SPOOL_ENV_MAX, SMTP_ENV_FIXED_MAX + SPOOL_STAGE_SLACK,
		(unsigned long long)need, (unsigned long long)need * SPOOL_LARGE_DIV);
	return -1;
}

static int
finish(struct config *cfg, char *err)
{
	size_t i;

	if (finish_tls(cfg, err) < 0)
		return -1;
	if (cfg->sink == SINK_KIND_SPOOL && finish_spool_share(cfg, err) < 0)
		return -1;

	if (cfg->smtp.hostname[0] == '\0') {
		char h[256] = "";

		/* A machine named like "build_01" must still start on defaults
		 * (tools/run): fall back to "localhost"; operators set hostname. */
		if (gethostname(h, sizeof(h) - 1) < 0 || !syn_domain_valid(h, strlen(h), false))
			strcpy(h, "localhost");
		strcpy(cfg->smtp.hostname, h);
	}
	if (cfg->workers == 0) {
		cfg->workers = cfg->ncpu_list > 0 ? (unsigned)cfg->ncpu_list : affinity_cpus();
		if (cfg->workers > CONFIG_MAX_WORKERS)
			cfg->workers = CONFIG_MAX_WORKERS;
	}
	assert(cfg->workers >= 1 && cfg->workers <= CONFIG_MAX_WORKERS);
	for (i = 0; i < CONFIG_MAX_WORKERS; i++)
		cfg->cpus[i] = -1;
	cfg->ncpus = 0;
	if (cfg->ncpu_list > 0) {
		for (i = 0; i < cfg->workers; i++)
			cfg->cpus[i] = cfg->cpu_list[i % cfg->ncpu_list];
		cfg->ncpus = cfg->workers;
	}
	assert(cfg->nlisteners >= 1 && cfg->ndomains >= 1);
	cfg->smtp.domains = (const char *const *)cfg->domain_list;
	cfg->smtp.ndomains = cfg->ndomains;
	cfg->smtp.starttls = false;
	/* Whatever the sink: an envelope the spool's record cannot hold is
	 * refused at RCPT (recipient_limit alone allows 1000000 x 256 bytes). */
	cfg->smtp.envelope_limit = SPOOL_ENV_MAX;
	return 0;
}

/* ---- loading ---- */

struct config *
cf_load(const char *name, const char *text, size_t len, const struct config_args *args, char *err)
{
	struct pstate st;
	struct config *cfg;

	assert(err != NULL);
	err[0] = '\0';
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || set_defaults(cfg) < 0) {
		cf_buff(err, CONFIG_ERR_MAX, "out of memory");
		config_free(cfg);
		return NULL;
	}
	memset(&st, 0, sizeof(st));
	st.cfg = cfg;
	st.err = err;
	if (args != NULL && cf_apply_env(&st, args) < 0)
		goto cf_fail;
	if (name != NULL) {
		snprintf(cfg->path, sizeof(cfg->path), "%s", name);
		if (parse_text(&st, name, text, len) < 0)
			goto cf_fail;
	}
	if (args != NULL && cf_apply_args(&st, args) < 0)
		goto cf_fail;
	if (finish(cfg, err) < 0) {
		/* Checks across keys have no single line; still name the
		 * file they concern (the contract: file, line where there is
		 * one, key). */
		if (name != NULL) {
			char tmp[CONFIG_ERR_MAX];
			snprintf(tmp, sizeof(tmp), "%s", err);
			cf_buff(err, CONFIG_ERR_MAX, "%s: %s", name, tmp);
		}
		goto cf_fail;
	}
	if (cf_finish_relay(&st) < 0 || cf_finish_rcpt_maps(&st) < 0 || cf_finish_screen(&st) < 0 ||
	    cf_finish_milters(&st) < 0 || cf_finish_account(&st) < 0 ||
	    cf_finish_jetstream(&st) < 0)
		goto cf_fail;
	return cfg;
cf_fail:
	assert(err[0] != '\0');
	config_free(cfg);
	return NULL;
}

struct config *
config_load_string(const char *name, const char *text, size_t len,
		   const struct config_args *args, char err[CONFIG_ERR_MAX])
{
	assert(name != NULL && (text != NULL || len == 0));
	return cf_load(name, text != NULL ? text : "", len, args, err);
}

struct config *
config_load(const struct config_args *args, char err[CONFIG_ERR_MAX])
{
	struct config *cfg;
	char *text = NULL;
	size_t len = 0;

	if (args == NULL || args->config_path == NULL)
		return cf_load(NULL, NULL, 0, args, err);
	if (cf_read_file(args->config_path, CONFIG_FILE_MAX, &text, &len, err) < 0)
		return NULL;
	cfg = cf_load(args->config_path, text, len, args, err);
	free(text);
	return cfg;
}

void
config_tls_pem_clear(struct tls_pem *p)
{
	if (p->key != NULL) {
		/* Do not leave key material in freed heap memory. */
		explicit_bzero(p->key, p->key_len);
		free(p->key);
	}
	free(p->cert);
	memset(p, 0, sizeof(*p));
}

void
config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	config_tls_pem_clear(&cfg->tls.pem);
	for (size_t i = 0; i < cfg->tls.nsni; i++)
		config_tls_pem_clear(&cfg->tls.sni[i].pem);
	domains_clear(cfg);
	relay_map_free(&cfg->relay);
	cf_rcpt_maps_clear(cfg);
	cf_screen_free(cfg);
	free(cfg);
}

