/*
 * config_internal.h - what the configuration's files share (engine/config/
 * but config_syntax.c, a leaf): the key table, the parser state and the
 * functions one file calls in another. Files: config.c (lists, listeners,
 * proxy_trusted, keys, the file, defaults, loading), config_argv.c (flags,
 * environment and argv), config_relay.c (the relay keys together: the map,
 * name resolution), config_print.c (--print-config and what a reload may
 * change). Nothing outside the configuration includes this.
 */
#ifndef RINGMX_CONFIG_INTERNAL_H
#define RINGMX_CONFIG_INTERNAL_H

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <ini.h>

#include "ringmx/config.h"
#include "ringmx/spool_format.h"
#include "ringmx_version.h"
#include "config_syntax.h"
#include "relay_route.h"


/* Keep the CPU list bound and the kernel's in step. */
_Static_assert(CONFIG_MAX_CPUS == CPU_SETSIZE, "CONFIG_MAX_CPUS must equal CPU_SETSIZE");


enum key_type {
	T_LISTEN,
	T_HOSTNAME,
	T_DOMAINS,
	T_WORKERS,
	T_CPUS,
	T_UINT,     /* unsigned, plain decimal */
	T_POW2,     /* unsigned, plain decimal, power of two */
	T_SIZE32,   /* unsigned, size syntax */
	T_SIZE64,   /* uint64_t, size syntax */
	T_DURATION, /* uint64_t ns, duration syntax */
	T_SINK,
	T_BARE_NEWLINE,
	T_PATH,       /* spool_dir */
	T_DURABILITY,
	T_SPOOL_IO,
	T_BOOL,        /* bool at off */
	T_TLS_PATH,    /* tls_cert, tls_key: char[CONFIG_TLS_PATH_MAX] at off */
	T_TLS_SNI,     /* tls_sni = NAME CERTFILE KEYFILE (list) */
	T_TLS_VERSION, /* tls_min_version = 1.2 | 1.3 */
	T_TLS_CIPHERS, /* tls_ciphers */
	T_PROXY_TRUSTED, /* list of CIDRs: struct proxy_trust at off */
	T_RELAY_HOST,    /* a next hop, checked here, resolved in cf_finish_relay() */
	T_FILE,          /* a path: char[CONFIG_PATH_MAX] at off */
	T_RELAY_TLS,     /* none | may | encrypt | verify */
	T_RCPT_MAPS,     /* list of files, loaded in cf_finish_rcpt_maps() */
	T_ACCESS,        /* client_access: a file, loaded in cf_finish_screen() */
	T_SCREEN_ACTION, /* enforce | drop | ignore: unsigned at off */
	T_DNSBL_SITES,   /* postscreen's site list, parsed at once */
	T_DNS_SERVERS,   /* host[:port] list */
	T_MILTERS,       /* inet:HOST:PORT, unix:/PATH list, resolved in cf_finish_milters() */
	T_MILTER_ACTION, /* tempfail | accept | reject */
	T_ADDR,          /* ADDRESS:PORT, no options: struct listener_conf at off (addrlen 0: unset) */
	T_ACCOUNT,       /* user, group: a name at off, resolved in cf_finish_account() */
	T_JS_SERVERS,    /* jetstream_servers: URL list */
	T_JS_STREAM,     /* jetstream_stream: a stream name */
	T_JS_SUBJECT,    /* jetstream_subject: a subject without wildcards */
	T_LOG_LEVEL,     /* debug | info | notice | warning: unsigned at off (enum log_level) */
	T_LOG_FORMAT,    /* postfix | json: unsigned at off (enum log_format) */
};

struct key_def {
	const char *name;
	enum key_type type;
	size_t off;        /* into struct config, for the numeric types */
	uint64_t min, max; /* numeric bounds (ns for durations) */
	bool reload;       /* takes effect on SIGHUP */
};

#define CO(f) offsetof(struct config, f)
#define SEC(n) ((uint64_t)(n) * NS_PER_S)

/* The order here is the order of config_print() and docs/config.md. */
#define NKEYS 98 /* entries of config_keys (checked in config.c) */

static const char *const default_domains[] = {"localhost", "example.test"};

/* Where a key got its value, for checks made after every layer is read
 * (cf_finish_relay()). Neither line nor cli: the built-in default. */
struct key_origin {
	int line;  /* file line; 0 = not from the file */
	bool cli;  /* from the command line or environment: label */
	char label[CONFIG_ERR_MAX / 2];
};

/* One source of settings: the file, the -o options or the flags. */
struct layer {
	const char *file; /* file name; NULL for the command line */
	int lineno;       /* current physical line (file) */
	bool cont;        /* current line is a continuation line */
	int seen[NKEYS];  /* line (file) or 1 (command line) a key was first set */
	char label[CONFIG_ERR_MAX / 2]; /* command line: "-o key=value" */
};

struct pstate {
	struct config *cfg;
	char *err;
	bool failed;
	struct layer ly;
	/* The line reader's input. */
	const char *buf;
	size_t len, pos;
	bool key_seen; /* mirrors inih's prev_name: a key line was seen */
	char qbuf[288];
	struct key_origin origin[NKEYS]; /* the layer that set each key last */
};


/* config.c: the key table */
extern const struct key_def config_keys[NKEYS];
extern const char *const cf_log_level_words[];
extern const char *const cf_log_format_words[];

/* config.c */
void cf_buff(char *b, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void cf_cidr_text(const struct proxy_cidr *c, char *b, size_t cap);
int cf_fail(struct pstate *st, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
const struct key_def *cf_key_find(const char *name);
const char *cf_list_next(const char **p, size_t *n);
int cf_listen_parse(struct pstate *st, const char *key, const char *value);
bool cf_listener_same(const struct listener_conf *a, const struct listener_conf *b);
void cf_listener_set_port(struct listener_conf *l, uint16_t port);
struct config *cf_load(const char *name, const char *text, size_t len, const struct config_args *args, char *err);
int cf_port_parse(struct pstate *st, const char *key, const char *s, uint16_t *port);
int cf_read_file(const char *path, size_t max, char **out, size_t *outlen, char *err);
int cf_set_key(struct pstate *st, const char *name, const char *v, bool cont);
int cf_set_value(struct pstate *st, const struct key_def *k, const char *v);
int cf_vfail(struct pstate *st, const char *key, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* config_argv.c */
int cf_apply_args(struct pstate *st, const struct config_args *a);
int cf_apply_env(struct pstate *st, const struct config_args *a);

/* config_relay.c */
int cf_fail_key(struct pstate *st, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int cf_finish_relay(struct pstate *st);
int cf_path_beside(struct pstate *st, const char *key, const char *name,
		   char path[CONFIG_PATH_MAX]);

/* config_rcpt.c */
void cf_rcpt_maps_clear(struct config *cfg);
int cf_rcpt_maps_parse(struct pstate *st, const char *key, const char *v);
int cf_finish_rcpt_maps(struct pstate *st);
void cf_rcpt_maps_print(const struct config *cfg, FILE *f);

/* config_screen.c */
int cf_screen_set(struct pstate *st, const struct key_def *k, const char *v);
int cf_finish_screen(struct pstate *st);
void cf_screen_print(const struct config *cfg, const struct key_def *k, FILE *f);
void cf_screen_free(struct config *cfg);

/* config_milter.c */
int cf_milter_set(struct pstate *st, const struct key_def *k, const char *v);
int cf_finish_milters(struct pstate *st);
void cf_milter_print(const struct config *cfg, const struct key_def *k, FILE *f);

/* config_account.c */
int cf_account_set(struct pstate *st, const struct key_def *k, const char *v);
int cf_finish_account(struct pstate *st);
void cf_account_print(const struct config *cfg, const struct key_def *k, FILE *f);

/* config_jetstream.c */
int cf_jetstream_set(struct pstate *st, const struct key_def *k, const char *v);
void cf_jetstream_defaults(struct config *cfg);
int cf_finish_jetstream(struct pstate *st);
void cf_jetstream_print(const struct config *cfg, const struct key_def *k, FILE *f);

/* config_print.c */
void config_print(const struct config *cfg, FILE *f);

#endif
