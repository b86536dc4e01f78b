/*
 * config_jetstream.c - the keys of sink = jetstream (docs/jetstream.md,
 * docs/config.md "JetStream"): the server list, the stream and subject
 * names, and the checks made once every layer is read.
 *
 * Ownership: everything lives in struct config (cfg->jetstream, fixed
 * arrays); engine/jetstream/ reads it at worker start.
 */
#include "config_internal.h"

#include <stdio.h>

/* jetstream_servers = nats://h1:4222, nats://h2:4222 (commas and/or
 * blanks). The URL itself is libnats' business; the scheme is checked
 * here so a typo is reported at its line. */
static int
servers_parse(struct pstate *st, const char *key, const char *v)
{
	struct jetstream_conf *js = &st->cfg->jetstream;
	const char *p = v, *t;
	size_t n;

	js->nservers = 0;
	while ((t = cf_list_next(&p, &n)) != NULL) {
		char url[CONFIG_JS_URL_MAX];

		if (js->nservers == CONFIG_JS_SERVERS_MAX)
			return cf_fail(st, key, "more than %d servers", CONFIG_JS_SERVERS_MAX);
		if (n >= sizeof(url))
			return cf_fail(st, key, "URL too long (max %zu bytes): '%.40s...'",
			               sizeof(url) - 1, t);
		memcpy(url, t, n);
		url[n] = '\0';
		if (strncmp(url, "nats://", 7) != 0 && strncmp(url, "tls://", 6) != 0)
			return cf_fail(st, key, "'%s': not a nats:// or tls:// URL", url);
		if (url[strcspn(url, "://") + 3] == '\0')
			return cf_fail(st, key, "'%s': no host", url);
		memcpy(js->servers[js->nservers++], url, n + 1);
	}
	if (js->nservers == 0)
		return cf_fail(st, key, "no server");
	return 0;
}

/* A stream name: NATS forbids blanks, '.', '*', '>' and path separators. */
static int
stream_set(struct pstate *st, const char *key, const char *v)
{
	size_t n = strlen(v);

	if (n == 0 || n >= CONFIG_JS_NAME_MAX)
		return cf_fail(st, key, "a stream name has 1 to %d bytes", CONFIG_JS_NAME_MAX - 1);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] <= 0x20 || v[i] == 0x7f || strchr(".*>/\\", v[i]) != NULL)
			return cf_fail(st, key,
			               "'%s': a stream name has no blanks, '.', '*', '>', "
			               "'/' or '\\\\'",
			               v);
	strcpy(st->cfg->jetstream.stream, v);
	return 0;
}

/* A subject to publish to: dot-separated tokens, no wildcards. */
static int
subject_set(struct pstate *st, const char *key, const char *v)
{
	size_t n = strlen(v);

	if (n == 0 || n >= CONFIG_JS_SUBJECT_MAX)
		return cf_fail(st, key, "a subject has 1 to %d bytes", CONFIG_JS_SUBJECT_MAX - 1);
	for (size_t i = 0; i < n; i++) {
		char c = v[i];

		if ((unsigned char)c <= 0x20 || c == 0x7f || c == '*' || c == '>')
			return cf_fail(st, key,
			               "'%s': a subject to publish to has no blanks or "
			               "wildcards",
			               v);
		if (c == '.' && (i == 0 || i == n - 1 || v[i + 1] == '.'))
			return cf_fail(st, key, "'%s': empty token", v);
	}
	strcpy(st->cfg->jetstream.subject, v);
	return 0;
}

int
cf_jetstream_set(struct pstate *st, const struct key_def *k, const char *v)
{
	switch (k->type) {
	case T_JS_SERVERS:
		return servers_parse(st, k->name, v);
	case T_JS_STREAM:
		return stream_set(st, k->name, v);
	case T_JS_SUBJECT:
		return subject_set(st, k->name, v);
	default:
		return cf_fail(st, k->name, "not a jetstream key");
	}
}

void
cf_jetstream_defaults(struct config *cfg)
{
	struct jetstream_conf *js = &cfg->jetstream;

	strcpy(js->servers[0], "nats://127.0.0.1:4222");
	js->nservers = 1;
	strcpy(js->stream, "MAIL");
	strcpy(js->subject, "mail.in");
	js->create = false;
	js->replicas = 1;
	js->timeout = 5 * NS_PER_S;
	js->max_pending = 1024;
}

int
cf_finish_jetstream(struct pstate *st)
{
	struct config *cfg = st->cfg;
	struct jetstream_conf *js = &cfg->jetstream;
	char path[CONFIG_PATH_MAX];

	if (cfg->sink != SINK_KIND_JETSTREAM)
		return 0;
	/* Relative paths, like every other file key, from the file's place. */
	if (js->creds[0] != '\0') {
		if (cf_path_beside(st, "jetstream_creds", js->creds, path) < 0)
			return -1;
		if (access(path, R_OK) < 0)
			return cf_fail_key(st, "jetstream_creds", "%s: %s", path, strerror(errno));
		strcpy(js->creds, path);
	}
	if (js->tls_ca[0] != '\0') {
		if (cf_path_beside(st, "jetstream_tls_ca", js->tls_ca, path) < 0)
			return -1;
		if (access(path, R_OK) < 0)
			return cf_fail_key(st, "jetstream_tls_ca", "%s: %s", path, strerror(errno));
		strcpy(js->tls_ca, path);
	}
	/* Verification probes ride the relay's connections, which only the
	 * spool has; without them every recipient would pass unchecked. */
	if (cfg->verify.enabled)
		return cf_fail_key(st, "verify_recipients",
		                   "needs sink = spool (the relay asks "
		                   "the next hop)");
	return 0;
}

void
cf_jetstream_print(const struct config *cfg, const struct key_def *k, FILE *f)
{
	const struct jetstream_conf *js = &cfg->jetstream;

	switch (k->type) {
	case T_JS_SERVERS:
		fputs("jetstream_servers =", f);
		for (size_t i = 0; i < js->nservers; i++)
			fprintf(f, "%s %s", i ? "," : "", js->servers[i]);
		fputc('\n', f);
		return;
	case T_JS_STREAM:
		fprintf(f, "jetstream_stream = %s\n", js->stream);
		return;
	case T_JS_SUBJECT:
		fprintf(f, "jetstream_subject = %s\n", js->subject);
		return;
	default:
		return;
	}
}
