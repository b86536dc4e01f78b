/*
 * config_rcpt.c - the recipient_maps key: its list of files (parsed with
 * the other keys) and the map built from them once every layer is read
 * (engine/policy/rcpt_map.c parses the files' texts). Owner: the
 * configuration module; shared declarations: config_internal.h.
 *
 * The files are read whole on the main thread at every cf_load (start-up,
 * -t, SIGHUP) and released as soon as the map is built: the running
 * configuration keeps only the map. A file that cannot be read or has a
 * malformed line fails the whole load, so on SIGHUP the old configuration
 * and its map stay in force.
 */
#include "config_internal.h"
#include "rcpt_map.h"

_Static_assert(CONFIG_RCPT_MAPS_MAX == RCPT_MAP_FILES_MAX, "one limit on the files");

void
cf_rcpt_maps_clear(struct config *cfg)
{
	for (size_t i = 0; i < cfg->nrcpt_map_files; i++)
		free(cfg->rcpt_map_files[i]);
	cfg->nrcpt_map_files = 0;
	rcpt_map_free(cfg->rcpt_map);
	cfg->rcpt_map = NULL;
}

/* Files separated by commas and/or blanks (Postfix's list syntax);
 * appended to the list. */
int
cf_rcpt_maps_parse(struct pstate *st, const char *key, const char *v)
{
	struct config *cfg = st->cfg;
	const char *t;
	size_t n;

	while ((t = cf_list_next(&v, &n)) != NULL) {
		char qb[288];

		syn_quote_n(qb, sizeof(qb), t, n);
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
				return cf_fail(st, key, "control character in path: '%s'", qb);
		if (n >= CONFIG_PATH_MAX)
			return cf_fail(st, key, "path too long (max %d bytes)", CONFIG_PATH_MAX - 1);
		for (size_t i = 0; i < cfg->nrcpt_map_files; i++)
			if (strlen(cfg->rcpt_map_files[i]) == n &&
			    memcmp(cfg->rcpt_map_files[i], t, n) == 0)
				return cf_fail(st, key, "file listed twice: '%s'", qb);
		if (cfg->nrcpt_map_files == CONFIG_RCPT_MAPS_MAX)
			return cf_fail(st, key, "too many files (max %d)", CONFIG_RCPT_MAPS_MAX);
		cfg->rcpt_map_files[cfg->nrcpt_map_files] = strndup(t, n);
		if (cfg->rcpt_map_files[cfg->nrcpt_map_files] == NULL)
			return cf_fail(st, key, "out of memory");
		cfg->nrcpt_map_files++;
	}
	return 0;
}

/* Every file read, one map built; errors are named after the line that
 * set recipient_maps, then the map file's own name and line. */
int
cf_finish_rcpt_maps(struct pstate *st)
{
	static const char key[] = "recipient_maps";
	struct config *cfg = st->cfg;
	struct rcpt_map_src src[CONFIG_RCPT_MAPS_MAX];
	char (*paths)[CONFIG_PATH_MAX];
	char why[CONFIG_ERR_MAX];
	size_t n = cfg->nrcpt_map_files, i;
	int rc = 0;

	assert(cfg->rcpt_map == NULL);
	if (n == 0)
		return 0;
	/* 16 paths of 4 KiB: the heap, not the main thread's stack. */
	paths = calloc(n, sizeof(*paths));
	if (paths == NULL)
		return cf_fail_key(st, key, "out of memory");
	memset(src, 0, sizeof(src));
	for (i = 0; i < n && rc == 0; i++) {
		char *text = NULL;
		size_t len = 0;

		if (cf_path_beside(st, key, cfg->rcpt_map_files[i], paths[i]) < 0)
			rc = -1;
		else if (cf_read_file(paths[i], RCPT_MAP_FILE_MAX, &text, &len, why) < 0)
			rc = cf_fail_key(st, key, "%s", why);
		src[i] = (struct rcpt_map_src){.name = paths[i], .text = text, .len = len};
	}
	if (rc == 0) {
		char merr[RCPT_MAP_ERR_MAX];

		cfg->rcpt_map = rcpt_map_build(src, n, merr);
		if (cfg->rcpt_map == NULL)
			rc = cf_fail_key(st, key, "%s", merr);
	}
	for (i = 0; i < n; i++)
		free((char *)src[i].text);
	free(paths);
	return rc;
}

void
cf_rcpt_maps_print(const struct config *cfg, FILE *f)
{
	fputs("recipient_maps =", f);
	for (size_t i = 0; i < cfg->nrcpt_map_files; i++)
		fprintf(f, "%s %s", i == 0 ? "" : ",", cfg->rcpt_map_files[i]);
}
