/*
 * config_argv.c - ringmxd's command line: the dedicated flags and -o
 * key=value (applied as the top layers), the SMTP_* environment variables
 * kept from older versions, and argv parsing with its usage text. Owner:
 * the configuration module; shared declarations: config_internal.h.
 */
#include "config_internal.h"

/* ---- the command line ---- */

static void
layer_cli(struct pstate *st, const char *opt, const char *arg)
{
	memset(&st->ly, 0, sizeof(st->ly));
	syn_quote(st->qbuf, sizeof(st->qbuf), arg);
	cf_buff(st->ly.label, sizeof(st->ly.label), "%s %s", opt, st->qbuf);
}

/* One -o key=value. Keeps the -o layer's seen[] (scalars once per layer). */
static int
apply_set(struct pstate *st, const char *arg, int *seen)
{
	char key[48], val[CONFIG_LINE_MAX + 1];
	const char *eq = strchr(arg, '=');
	size_t kl, vl;
	int rc;

	layer_cli(st, "-o", arg);
	memcpy(st->ly.seen, seen, sizeof(st->ly.seen));
	if (eq == NULL)
		return cf_fail(st, NULL, "expected key=value");
	kl = (size_t)(eq - arg);
	if (kl >= sizeof(key))
		return cf_fail(st, NULL, "unknown key");
	memcpy(key, arg, kl);
	key[kl] = '\0';
	eq++;
	while (syn_is_blank(*eq))
		eq++;
	vl = strlen(eq);
	while (vl > 0 && syn_is_blank(eq[vl - 1]))
		vl--;
	if (vl >= sizeof(val))
		return cf_fail(st, NULL, "value too long");
	memcpy(val, eq, vl);
	val[vl] = '\0';
	rc = cf_set_key(st, key, val, false);
	memcpy(seen, st->ly.seen, sizeof(st->ly.seen));
	return rc;
}

int
cf_apply_args(struct pstate *st, const struct config_args *a)
{
	int seen[NKEYS] = {0};
	uint16_t port = 0;
	size_t i, j;

	for (i = 0; i < a->nsets; i++)
		if (apply_set(st, a->sets[i], seen) < 0)
			return -1;
	memset(seen, 0, sizeof(seen));
	for (i = 0; i < a->nlisten; i++) {
		layer_cli(st, "--listen", a->listen[i]);
		if (i == 0)
			st->cfg->nlisteners = 0;
		if (*a->listen[i] == '\0')
			return cf_fail(st, NULL, "empty value");
		if (cf_listen_parse(st, NULL, a->listen[i]) < 0)
			return -1;
	}
	if (a->workers != NULL) {
		layer_cli(st, "--workers", a->workers);
		if (cf_set_key(st, "workers", a->workers, false) < 0)
			return -1;
	}
	if (a->cpus != NULL) {
		layer_cli(st, "--cpus", a->cpus);
		if (cf_set_key(st, "cpus", a->cpus, false) < 0)
			return -1;
	}
	if (a->port == NULL)
		return 0;
	layer_cli(st, "--port", a->port);
	if (cf_port_parse(st, NULL, a->port, &port) < 0)
		return -1;
	for (i = 0; i < st->cfg->nlisteners; i++) {
		cf_listener_set_port(&st->cfg->listeners[i], port);
		for (j = 0; j < i; j++)
			if (cf_listener_same(&st->cfg->listeners[j], &st->cfg->listeners[i]))
				return cf_fail(st, NULL, "duplicate listener: %s",
					    st->cfg->listeners[i].text);
	}
	return 0;
}

/*
 * The old interface's environment, a layer between the defaults and the
 * file: SMTP_TLS_CERT / SMTP_TLS_KEY name the files, SMTP_ENABLE_TLS=true
 * demands them (and turns STARTTLS on for listeners without tls=), =false
 * leaves such listeners without TLS.
 */
int
cf_apply_env(struct pstate *st, const struct config_args *a)
{
	bool on;

	if (a->env_enable_tls != NULL) {
		layer_cli(st, "SMTP_ENABLE_TLS", a->env_enable_tls);
		if (syn_parse_bool(a->env_enable_tls, &on) < 0)
			return cf_fail(st, NULL, "not a boolean");
		st->cfg->tls.env_enable = on;
	}
	if (a->env_tls_cert != NULL && a->env_tls_cert[0] != '\0') {
		layer_cli(st, "SMTP_TLS_CERT", a->env_tls_cert);
		if (cf_set_key(st, "tls_cert", a->env_tls_cert, false) < 0)
			return -1;
	}
	if (a->env_tls_key != NULL && a->env_tls_key[0] != '\0') {
		layer_cli(st, "SMTP_TLS_KEY", a->env_tls_key);
		if (cf_set_key(st, "tls_key", a->env_tls_key, false) < 0)
			return -1;
	}
	return 0;
}

/* ---- argv ---- */

enum {
	OPT_LISTEN = 256,
	OPT_PORT,
	OPT_WORKERS,
	OPT_CPUS,
	OPT_PRINT,
};

void
config_usage(FILE *f)
{
	fputs("Usage: ringmxd [options]\n"
	      "  -c, --config FILE      read FILE (key = value, see docs/config.md);\n"
	      "                         without it only defaults and options apply\n"
	      "  -t, --check-config     cf_load the configuration, report the first error and exit\n"
	      "      --print-config     print the effective configuration and exit\n"
	      "  -o KEY=VALUE           set a configuration key (repeatable; wins over the file)\n"
	      "      --listen 'ADDR:PORT [tls=..] [proxy=..]'\n"
	      "                         listen there instead of the file's listen lines\n"
	      "                         (repeatable); ADDR is IPv4, [IPv6], * or [::]\n"
	      "      --port N           use port N on every listener\n"
	      "      --workers N        worker threads (0 = one per CPU)\n"
	      "      --cpus LIST        pin workers to CPUs, e.g. 0-3,6\n"
	      "  -V, --version          print the version, the libraries and the build; exit\n"
	      "  -h, --help             print this help and exit\n"
	      "Environment (old interface): SMTP_ENABLE_TLS=true|false, SMTP_TLS_CERT=FILE,\n"
	      "                         SMTP_TLS_KEY=FILE (as tls_cert, tls_key)\n"
	      "Precedence: defaults < environment < file < -o < --listen, --workers, --cpus,\n"
	      "            --port.\n",
	      f);
}

static int
arg_once(const char **slot, const char *v, const char *name, char *err)
{
	if (*slot != NULL) {
		cf_buff(err, CONFIG_ERR_MAX, "option '%s' given twice", name);
		return -1;
	}
	*slot = v;
	return 0;
}

/* getopt_long() returned '?' (unknown) or ':' (missing argument). */
static int
arg_error(int c, int argc, char **argv, char *err)
{
	const char *last = optind > 0 && optind <= argc ? argv[optind - 1] : "";
	bool is_long = strncmp(last, "--", 2) == 0;
	char qb[288];

	/* An unknown long option leaves optopt 0; a missing argument of a
	 * long option leaves its val (maybe a short letter) and optind past
	 * it; a short option inside a cluster is named by optopt alone. */
	if (c == '?')
		is_long = optopt == 0;
	if (is_long) {
		const char *eq = strchr(last, '=');
		char raw[72];
		size_t n = eq != NULL ? (size_t)(eq - last) : strlen(last);

		snprintf(raw, sizeof(raw), "%.*s", (int)(n > 64 ? 64 : n), last);
		syn_quote(qb, sizeof(qb), raw);
	} else {
		snprintf(qb, sizeof(qb), "-%c", optopt > 32 && optopt < 127 ? optopt : '?');
	}
	if (c == ':')
		cf_buff(err, CONFIG_ERR_MAX, "option '%s' requires an argument", qb);
	else
		cf_buff(err, CONFIG_ERR_MAX, "unknown option '%s'", qb);
	return -1;
}

int
config_parse_args(int argc, char **argv, struct config_args *args, char err[CONFIG_ERR_MAX])
{
	static const struct option lopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", no_argument, NULL, 't'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{"print-config", no_argument, NULL, OPT_PRINT},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"port", required_argument, NULL, OPT_PORT},
		{"workers", required_argument, NULL, OPT_WORKERS},
		{"cpus", required_argument, NULL, OPT_CPUS},
		{NULL, 0, NULL, 0},
	};
	int c;

	memset(args, 0, sizeof(*args));
	err[0] = '\0';
	optind = 0; /* glibc: full re-initialisation */
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:c:tVho:", lopts, NULL)) != -1) {
		int rc = 0;

		switch (c) {
		case 'c':
			rc = arg_once(&args->config_path, optarg, "--config", err);
			break;
		case 't':
			args->check_only = true;
			break;
		case 'V':
			args->version = true;
			break;
		case 'h':
			args->help = true;
			break;
		case OPT_PRINT:
			args->print_config = true;
			break;
		case 'o':
			if (args->nsets == sizeof(args->sets) / sizeof(args->sets[0])) {
				cf_buff(err, CONFIG_ERR_MAX, "too many -o options (max %zu)",
					 sizeof(args->sets) / sizeof(args->sets[0]));
				return -1;
			}
			args->sets[args->nsets++] = optarg;
			break;
		case OPT_LISTEN:
			if (args->nlisten == CONFIG_MAX_LISTENERS) {
				cf_buff(err, CONFIG_ERR_MAX, "too many --listen options (max %d)",
					 CONFIG_MAX_LISTENERS);
				return -1;
			}
			args->listen[args->nlisten++] = optarg;
			break;
		case OPT_PORT:
			rc = arg_once(&args->port, optarg, "--port", err);
			break;
		case OPT_WORKERS:
			rc = arg_once(&args->workers, optarg, "--workers", err);
			break;
		case OPT_CPUS:
			rc = arg_once(&args->cpus, optarg, "--cpus", err);
			break;
		default:
			return arg_error(c, argc, argv, err);
		}
		if (rc < 0)
			return -1;
	}
	if (optind < argc) {
		char qb[288];

		syn_quote(qb, sizeof(qb), argv[optind]);
		cf_buff(err, CONFIG_ERR_MAX, "unexpected argument '%s'", qb);
		return -1;
	}
	args->env_enable_tls = getenv("SMTP_ENABLE_TLS");
	args->env_tls_cert = getenv("SMTP_TLS_CERT");
	args->env_tls_key = getenv("SMTP_TLS_KEY");
	return 0;
}
