/*
 * fuzz_config.c - libFuzzer target for engine/config/config.c: the input is a
 * configuration file's text (through config_load_string(), the same path
 * config_load() takes after reading the file).
 *
 * Owner: the configuration module. Properties checked beyond "no crash, no
 * leak, no UB": a loaded config satisfies the struct's invariants, and its
 * printed form loads and prints identically (print -> parse -> print); a
 * refused one has a one-line message naming the file.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *
print(const struct config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		abort();
	config_print(cfg, f);
	if (fclose(f) != 0)
		abort();
	return buf;
}

static void
check(const struct config *cfg)
{
	size_t i;

	if (cfg->nlisteners < 1 || cfg->nlisteners > CONFIG_MAX_LISTENERS)
		abort();
	if (cfg->workers < 1 || cfg->workers > CONFIG_MAX_WORKERS)
		abort();
	if (cfg->ncpus != 0 && cfg->ncpus != cfg->workers)
		abort();
	if (cfg->ndomains < 1 || cfg->smtp.ndomains != cfg->ndomains ||
	    cfg->smtp.domains != (const char *const *)cfg->domain_list)
		abort();
	for (i = 0; i < cfg->ndomains; i++)
		if (strlen(cfg->domain_list[i]) > SMTP_DOMAIN_MAX + 1)
			abort();
	if (cfg->smtp.hostname[0] == '\0' || cfg->smtp.starttls)
		abort();
	/* TLS on a listener only with a certificate (whose files are checked
	 * later, by tls_check() on the main thread), and both paths or none. */
	if ((cfg->tls.cert[0] == '\0') != (cfg->tls.key[0] == '\0'))
		abort();
	for (i = 0; i < cfg->nlisteners; i++)
		if (cfg->listeners[i].tls != LISTENER_TLS_NONE && cfg->tls.cert[0] == '\0')
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[CONFIG_ERR_MAX];
	struct config *cfg, *again;
	char *p1, *p2;

	if (size > 64 * 1024)
		return -1;
	cfg = config_load_string("fuzz.conf", (const char *)data, size, NULL, err);
	if (cfg == NULL) {
		/* One line, naming the file (or "hostname:" when the
		 * machine's own name is the problem). */
		if (strchr(err, '\n') != NULL ||
		    (strncmp(err, "fuzz.conf:", 10) != 0 && strncmp(err, "hostname:", 9) != 0))
			abort();
		return 0;
	}
	check(cfg);
	p1 = print(cfg);
	again = config_load_string("printed.conf", p1, strlen(p1), NULL, err);
	if (again == NULL) {
		fprintf(stderr, "printed config does not load: %s\n%s", err, p1);
		abort();
	}
	p2 = print(again);
	if (strcmp(p1, p2) != 0) {
		fprintf(stderr, "round trip differs:\n%s---\n%s", p1, p2);
		abort();
	}
	free(p1);
	free(p2);
	config_free(again);
	config_free(cfg);
	return 0;
}
