/*
 * config_print.c - the effective configuration as a file would say it
 * (--print-config; every key, so a printed file loads back the same), and
 * which changes a reload refuses. Owner: the configuration module; shared
 * declarations: config_internal.h.
 */
#include "config_internal.h"

/* ---- output ---- */

static void
print_cpus(const struct config *cfg, FILE *f)
{
	size_t i = 0;

	while (i < cfg->ncpu_list) {
		size_t j = i;

		while (j + 1 < cfg->ncpu_list && cfg->cpu_list[j + 1] == cfg->cpu_list[j] + 1)
			j++;
		fprintf(f, "%s%d", i == 0 ? " " : ",", cfg->cpu_list[i]);
		if (j > i)
			fprintf(f, "-%d", cfg->cpu_list[j]);
		i = j + 1;
	}
}

static void
print_domains(const struct config *cfg, FILE *f)
{
	size_t i, col = sizeof("domains =") - 1;

	for (i = 0; i < cfg->ndomains; i++) {
		size_t w = strlen(cfg->domain_list[i]) + 2;

		if (i > 0 && col + w > 78) {
			fputs(",\n   ", f);
			col = 3;
		} else if (i > 0) {
			fputc(',', f);
		}
		fprintf(f, " %s", cfg->domain_list[i]);
		col += w;
	}
}

void
config_print(const struct config *cfg, FILE *f)
{
	static const char *const tls[] = {"none", "starttls", "required", "implicit"};
	char d[32];
	size_t i, j;

	fprintf(f, "# ringmxd %s: effective configuration\n", RINGMX_VERSION);
	for (i = 0; i < NKEYS; i++) {
		const struct key_def *k = &config_keys[i];
		const void *p = (const char *)cfg + k->off;

		switch (k->type) {
		case T_LISTEN:
			for (j = 0; j < cfg->nlisteners; j++) {
				const struct listener_conf *l = &cfg->listeners[j];

				fprintf(f, "listen = %s", l->text);
				if (l->tls != LISTENER_TLS_NONE || l->tls_explicit)
					fprintf(f, " tls=%s", tls[l->tls]);
				if (l->proxy)
					fprintf(f, " proxy=yes");
				fputc('\n', f);
			}
			continue;
		case T_ADDR: {
			const struct listener_conf *l = p;

			if (l->addrlen != 0)
				fprintf(f, "%s = %s\n", k->name, l->text);
			continue;
		}
		case T_HOSTNAME:
			fprintf(f, "hostname = %s\n", cfg->smtp.hostname);
			continue;
		case T_DOMAINS:
			fputs("domains =", f);
			print_domains(cfg, f);
			break;
		case T_CPUS:
			fputs("cpus =", f);
			print_cpus(cfg, f);
			break;
		case T_PROXY_TRUSTED: {
			const struct proxy_trust *t = p;

			if (t->n == 0)
				continue; /* none: no empty `key =` line (that is an error) */
			fprintf(f, "%s =", k->name);
			for (j = 0; j < t->n; j++) {
				char net[INET6_ADDRSTRLEN + 8];

				cf_cidr_text(&t->net[j], net, sizeof(net));
				fprintf(f, "%s %s", j == 0 ? "" : ",", net);
			}
			break;
		}
		case T_SINK:
			fputs(cfg->sink == SINK_KIND_SPOOL       ? "sink = spool"
			      : cfg->sink == SINK_KIND_JETSTREAM ? "sink = jetstream"
								 : "sink = discard",
			      f);
			break;
		case T_PATH:
			fprintf(f, "spool_dir = %s", cfg->spool_dir);
			break;
		case T_DURABILITY:
			fprintf(f, "durability = %s",
				cfg->durability == SPOOL_DURABILITY_NONE ? "none" : "fsync");
			break;
		case T_SPOOL_IO:
			fprintf(f, "spool_io = %s",
				cfg->spool_io == SPOOL_IO_DIRECT     ? "direct"
				: cfg->spool_io == SPOOL_IO_BUFFERED ? "buffered"
								     : "auto");
			break;
		case T_BOOL:
			fprintf(f, "%s = %s", k->name, *(const bool *)p ? "yes" : "no");
			break;
		case T_RELAY_HOST:
			if (cfg->relay.relay_host[0] == '\0')
				continue;
			fprintf(f, "relay_host = %s", cfg->relay.relay_host);
			break;
		case T_RELAY_TLS: {
			static const char *const rt[] = {"none", "may", "encrypt", "verify"};

			fprintf(f, "relay_tls = %s", rt[cfg->relay.tls]);
			break;
		}
		case T_FILE:
		case T_TLS_PATH:
			if (*(const char *)p == '\0')
				continue; /* unset: no empty `key =` line (that is an error) */
			fprintf(f, "%s = %s", k->name, (const char *)p);
			break;
		case T_RCPT_MAPS:
			if (cfg->nrcpt_map_files == 0)
				continue;
			cf_rcpt_maps_print(cfg, f);
			break;
		case T_ACCESS:
		case T_SCREEN_ACTION:
		case T_DNSBL_SITES:
		case T_DNS_SERVERS:
			cf_screen_print(cfg, k, f);
			continue;
		case T_MILTERS:
		case T_MILTER_ACTION:
			cf_milter_print(cfg, k, f);
			continue;
		case T_ACCOUNT:
			cf_account_print(cfg, k, f);
			continue;
		case T_JS_SERVERS:
		case T_JS_STREAM:
		case T_JS_SUBJECT:
			cf_jetstream_print(cfg, k, f);
			continue;
		case T_TLS_SNI:
			for (j = 0; j < cfg->tls.nsni; j++)
				fprintf(f, "tls_sni = %s %s %s\n", cfg->tls.sni[j].name,
					cfg->tls.sni[j].cert, cfg->tls.sni[j].key);
			continue;
		case T_TLS_VERSION:
			fprintf(f, "tls_min_version = 1.%u", cfg->tls.min_version - 10);
			break;
		case T_LOG_LEVEL:
			fprintf(f, "%s = %s", k->name, cf_log_level_words[*(const unsigned *)p]);
			break;
		case T_LOG_FORMAT:
			fprintf(f, "%s = %s", k->name, cf_log_format_words[*(const unsigned *)p]);
			break;
		case T_TLS_CIPHERS:
			if (cfg->tls.ciphers[0] == '\0')
				continue; /* the built-in list */
			fprintf(f, "tls_ciphers = %s", cfg->tls.ciphers);
			break;
		case T_BARE_NEWLINE:
			fprintf(f, "bare_newline = %s",
				cfg->smtp.bare_newline == SMTP_BARE_NEWLINE_REJECT ? "reject"
										   : "normalize");
			break;
		case T_SIZE64:
			fprintf(f, "%s = %llu", k->name,
				(unsigned long long)*(const uint64_t *)p);
			break;
		case T_DURATION:
			syn_fmt_duration(d, sizeof(d), *(const uint64_t *)p);
			fprintf(f, "%s = %s", k->name, d);
			break;
		default:
			fprintf(f, "%s = %u", k->name, *(const unsigned *)p);
			break;
		}
		fputc('\n', f);
	}
}

int
config_check_reload(const struct config *cur, const struct config *next, char err[CONFIG_ERR_MAX])
{
	size_t i;

	/* The listeners' tls= default follows the certificate. */
	if ((cur->tls.cert[0] == '\0') != (next->tls.cert[0] == '\0')) {
		cf_buff(err, CONFIG_ERR_MAX, "tls_cert: adding or removing the certificate changes the "
					  "listeners' TLS; restart ringmxd");
		return -1;
	}
	for (i = 0; i < NKEYS; i++) {
		const struct key_def *k = &config_keys[i];
		bool same = true;

		if (k->reload)
			continue;
		switch (k->type) {
		case T_LISTEN:
			same = cur->nlisteners == next->nlisteners;
			for (size_t j = 0; same && j < cur->nlisteners; j++)
				same = cf_listener_same(&cur->listeners[j], &next->listeners[j]) &&
				       cur->listeners[j].tls == next->listeners[j].tls &&
				       cur->listeners[j].proxy == next->listeners[j].proxy;
			break;
		case T_ADDR:
			same = cf_listener_same((const struct listener_conf *)(const void *)((const char *)cur + k->off),
						(const struct listener_conf *)(const void *)((const char *)next + k->off));
			break;
		case T_ACCOUNT:
		case T_FILE:
			same = strcmp((const char *)cur + k->off, (const char *)next + k->off) == 0;
			break;
		case T_JS_SERVERS:
			same = cur->jetstream.nservers == next->jetstream.nservers;
			for (size_t j = 0; same && j < cur->jetstream.nservers; j++)
				same = strcmp(cur->jetstream.servers[j], next->jetstream.servers[j]) == 0;
			break;
		case T_JS_STREAM:
			same = strcmp(cur->jetstream.stream, next->jetstream.stream) == 0;
			break;
		case T_JS_SUBJECT:
			same = strcmp(cur->jetstream.subject, next->jetstream.subject) == 0;
			break;
		case T_CPUS:
			same = cur->ncpus == next->ncpus &&
			       memcmp(cur->cpus, next->cpus, sizeof(cur->cpus)) == 0;
			break;
		case T_SINK:
			same = cur->sink == next->sink;
			break;
		case T_PATH:
			same = strcmp(cur->spool_dir, next->spool_dir) == 0;
			break;
		case T_DURABILITY:
			same = cur->durability == next->durability;
			break;
		case T_SPOOL_IO:
			same = cur->spool_io == next->spool_io;
			break;
		case T_SIZE64:
		case T_DURATION:
			same = *(const uint64_t *)(const void *)((const char *)cur + k->off) ==
			       *(const uint64_t *)(const void *)((const char *)next + k->off);
			break;
		default:
			same = *(const unsigned *)(const void *)((const char *)cur + k->off) ==
			       *(const unsigned *)(const void *)((const char *)next + k->off);
			break;
		}
		if (!same) {
			cf_buff(err, CONFIG_ERR_MAX,
				 "%s: cannot be changed by a reload; restart ringmxd", k->name);
			return -1;
		}
	}
	return 0;
}

