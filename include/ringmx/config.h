/*
 * config.h - ringmxd configuration: embedded defaults, a Postfix main.cf
 * style `key = value` file, and command-line overrides. Implemented in
 * engine/config/config.c; every key is documented in docs/config.md.
 * Owner: the configuration module (engine/config/config.c and its tests).
 *
 * Precedence (lowest to highest): embedded defaults < environment
 * (SMTP_ENABLE_TLS, SMTP_TLS_CERT, SMTP_TLS_KEY) < config file < `-o
 * key=value` < dedicated flags (--listen, --workers, --cpus, --port).
 * `--listen` replaces every `listen` line of the file; `--port` is applied
 * last, to every listener.
 *
 * Ownership rules
 *  - A struct config is built by config_load() on the main thread and is
 *    immutable afterwards. Workers read it; on SIGHUP a new one is built and
 *    published, and the old one is freed by the main thread once every
 *    worker has switched (config_free()).
 *  - All strings inside are owned by the struct.
 *  - config_load() sets libinih's process-wide runtime knobs before each
 *    parse, so only one thread may load a configuration at a time.
 */
#ifndef RINGMX_CONFIG_H
#define RINGMX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "ringmx/proxy.h"
#include "ringmx/smtp.h"

#define CONFIG_MAX_LISTENERS 16
#define CONFIG_MAX_DOMAINS   4096
#define CONFIG_MAX_WORKERS   256
#define CONFIG_ERR_MAX       512
#define CONFIG_MAX_CPUS      1024    /* == CPU_SETSIZE: entries in cpu_list */
#define CONFIG_LINE_MAX      4000    /* bytes per physical line, newline excluded */
#define CONFIG_FILE_MAX      (1 << 20)
#define CONFIG_RCPT_MAPS_MAX 16      /* files in recipient_maps (RCPT_MAP_FILES_MAX) */

struct rcpt_map; /* engine/policy/rcpt_map.h */
struct cidr_map;    /* engine/policy/cidr_map.h */
struct dnsbl_sites; /* engine/policy/dnsbl.h */

enum listener_tls {
	LISTENER_TLS_NONE = 0,
	LISTENER_TLS_STARTTLS,
	LISTENER_TLS_REQUIRED,
	LISTENER_TLS_IMPLICIT,
};

struct listener_conf {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char text[80]; /* as written, for logs: "127.0.0.1:2525", "[::1]:2525" */
	/* Per-listener options (`listen = ADDR:PORT key=value ...`). tls is
	 * resolved at load time: without tls= it is STARTTLS when a
	 * certificate is configured (and SMTP_ENABLE_TLS is not false), else
	 * NONE (docs/tls.md). */
	enum listener_tls tls;
	bool tls_explicit; /* tls= was written on the line */
	bool proxy; /* PROXY header first (docs/proxy.md); peers from proxy_trusted only */
};

enum sink_kind {
	SINK_KIND_DISCARD = 0,
	SINK_KIND_SPOOL,
	SINK_KIND_JETSTREAM, /* a NATS JetStream stream (docs/jetstream.md) */
};

#define CONFIG_PATH_MAX 4096

/* sink = jetstream (docs/jetstream.md, engine/jetstream/). Restart only:
 * each worker connects once, at start-up. */
#define CONFIG_JS_SERVERS_MAX 16
#define CONFIG_JS_URL_MAX 256
#define CONFIG_JS_NAME_MAX 64
#define CONFIG_JS_SUBJECT_MAX 256
struct jetstream_conf {
	char servers[CONFIG_JS_SERVERS_MAX][CONFIG_JS_URL_MAX]; /* nats:// or tls:// URLs */
	size_t nservers;
	char stream[CONFIG_JS_NAME_MAX];     /* jetstream_stream, default MAIL */
	char subject[CONFIG_JS_SUBJECT_MAX]; /* jetstream_subject, default mail.in */
	bool create;                         /* jetstream_create: add the stream if missing */
	unsigned replicas;                   /* jetstream_replicas, for a created stream */
	uint64_t timeout;                    /* ns: publish to acknowledgement, and connect */
	unsigned max_pending;                /* publishes in flight per worker */
	char creds[CONFIG_PATH_MAX];         /* jetstream_creds: a .creds file; "" none */
	char tls_ca[CONFIG_PATH_MAX];        /* jetstream_tls_ca: CA file; "" none */
};

/* When the spool answers 250 (docs/spool.md). */
enum spool_durability {
	SPOOL_DURABILITY_FSYNC = 0, /* after the batch's fdatasync: durable */
	SPOOL_DURABILITY_NONE,      /* after the write completed: UNSAFE, benchmarks only */
};

/* How the spool writes its segments (docs/spool.md, "Direct I/O"). */
enum spool_io {
	SPOOL_IO_AUTO = 0, /* direct with durability = fsync and no relay reading back, else buffered */
	SPOOL_IO_DIRECT,   /* O_DIRECT: aligned writes, no page cache */
	SPOOL_IO_BUFFERED, /* through the page cache */
};


/* Native TLS (docs/tls.md). Files are only named here; engine/tls/tls.c loads
 * and validates them (start-up, -t, SIGHUP). */
#define CONFIG_TLS_PATH_MAX    1024
#define CONFIG_TLS_SNI_MAX     32
#define CONFIG_TLS_CIPHERS_MAX 1024

/*
 * A certificate and key as read by tls_check() on the main thread, before
 * any privilege drop: the workers build their contexts from these bytes, so
 * a key file readable by root only still serves every worker. Owned by the
 * configuration they belong to; config_free() wipes the key.
 */
struct tls_pem {
	char *cert, *key;
	size_t cert_len, key_len;
};
/* Free both buffers, wiping the key first; leaves p empty. */
void config_tls_pem_clear(struct tls_pem *p);

/* user and group names (useradd allows 32 bytes). */
#define CONFIG_ACCOUNT_MAX 33

struct tls_sni_conf {
	char name[256]; /* lower case; "*.example.org" matches one label */
	char cert[CONFIG_TLS_PATH_MAX];
	char key[CONFIG_TLS_PATH_MAX];
	struct tls_pem pem;
};

/* Per-client limits (docs/defences.md, engine/policy/client_limits.c).
 * 0 turns a limit off. All reloadable but table_size. */
struct client_limits_conf {
	unsigned connection_limit;        /* concurrent connections per client */
	unsigned connection_rate_limit;   /* per rate_window, as are the next three */
	unsigned message_rate_limit;
	unsigned recipient_rate_limit;
	unsigned tls_handshake_rate_limit;
	uint64_t rate_window;             /* ns */
	unsigned ipv6_prefix;             /* IPv6 clients are counted per this prefix */
	unsigned table_size;              /* slots of the shared table (restart) */
	struct proxy_trust exceptions;    /* exempt networks */
};

/* Screening before the 220 (docs/defences.md "Screening",
 * engine/policy/screen.c). All reloadable but the two cache sizes. */
enum screen_action {
	SCREEN_ACTION_ENFORCE = 0, /* go on, refuse every RCPT (the envelope is logged) */
	SCREEN_ACTION_DROP,        /* 521 and close */
	SCREEN_ACTION_IGNORE,      /* log and count only */
};
#define CONFIG_DNS_SERVERS_MAX 512

struct screen_conf {
	char access_file[CONFIG_PATH_MAX]; /* client_access as written; "" unset */
	struct cidr_map *access;           /* built from it at load; owned */
	uint64_t greet_wait;               /* ns; 0: no pregreet test */
	unsigned greet_action;             /* enum screen_action */
	struct dnsbl_sites *sites;         /* dnsbl_sites parsed; owned; NULL unset */
	unsigned dnsbl_threshold;
	unsigned dnsbl_action; /* enum screen_action */
	uint64_t dnsbl_timeout;  /* ns */
	uint64_t cache_ttl;      /* screen_cache_ttl, ns; 0: no pass cache */
	unsigned cache_size;     /* screen_cache_size: shared slots (restart) */
	char dns_servers[CONFIG_DNS_SERVERS_MAX]; /* c-ares CSV form; "" = resolv.conf */
	unsigned dns_cache_size; /* answer cache entries per worker (restart) */
};

/* Content filters (docs/milter.md): milters = inet:HOST:PORT, unix:/PATH. */
#define CONFIG_MILTERS_MAX 8
#define CONFIG_MILTER_TEXT_MAX 300
enum milter_default_action {
	MILTER_DEFAULT_TEMPFAIL = 0, /* 451 4.7.1 (Postfix's default) */
	MILTER_DEFAULT_ACCEPT,       /* go on without that milter */
	MILTER_DEFAULT_REJECT,       /* 550 5.7.1 */
};
struct milter_endpoint {
	char text[CONFIG_MILTER_TEXT_MAX]; /* as written, for logs and --print-config */
	struct sockaddr_storage addr;   /* AF_INET, AF_INET6 (resolved at load) or AF_UNIX */
	socklen_t addrlen;
};
struct milters_conf {
	struct milter_endpoint m[CONFIG_MILTERS_MAX]; /* applied in this order */
	size_t n;
	unsigned default_action;  /* enum milter_default_action */
	uint64_t connect_timeout; /* ns: connect and the option negotiation */
	uint64_t command_timeout; /* ns: connect .. RCPT stages */
	uint64_t content_timeout; /* ns: DATA .. end of message, per reply */
	unsigned conversation_limit; /* conversations per worker (restart) */
};

struct tls_conf {
	char cert[CONFIG_TLS_PATH_MAX]; /* PEM, leaf first then chain; "" = no TLS */
	char key[CONFIG_TLS_PATH_MAX];
	struct tls_pem pem; /* filled by tls_check() */
	struct tls_sni_conf sni[CONFIG_TLS_SNI_MAX];
	size_t nsni;
	unsigned min_version;                 /* 12 (TLS 1.2) or 13 */
	char ciphers[CONFIG_TLS_CIPHERS_MAX]; /* "" = the built-in AEAD-only list */
	bool session_tickets;
	uint64_t handshake_timeout; /* ns */
	int env_enable;             /* SMTP_ENABLE_TLS: -1 unset, 0 false, 1 true */
};

/* Relay to the next hop (docs/relay.md, docs/config.md). */
#define CONFIG_MAX_HOPS      64   /* distinct next hops: relay_host plus transport_maps targets */
#define CONFIG_MAX_TRANSPORT 65536 /* entries in the transport_maps file */
#define CONFIG_HOP_TEXT_MAX  300

enum relay_proto {
	RELAY_PROTO_SMTP = 0,
	RELAY_PROTO_LMTP,
};

/* relay_tls: STARTTLS to the next hop. LMTP over a unix socket never uses
 * TLS whatever the setting. */
enum relay_tls {
	RELAY_TLS_NONE = 0, /* never */
	RELAY_TLS_MAY,      /* when the next hop offers STARTTLS; no certificate check */
	RELAY_TLS_ENCRYPT,  /* required (4xx/deferral without it); no certificate check */
	RELAY_TLS_VERIFY,   /* required, certificate checked against relay_tls_ca_file and
			     * the next hop's host name */
};

/* A next hop is a list of up to CONFIG_HOP_MEMBERS members separated by
 * commas, tried in order ("smtp:[10.0.0.5]:25, smtp:[10.0.0.6]:25"). A
 * member is written "smtp:HOST:PORT", "lmtp:HOST:PORT", "lmtp:unix:/PATH",
 * or (relay_host only) "HOST:PORT" meaning smtp. HOST is a name (resolved
 * when the configuration is loaded: at start and on SIGHUP; through c-ares and
 * dns_servers, engine/dns/dns_resolve.c; every IPv4 and IPv6 address is
 * used, in the resolver's order), an IPv4 address
 * or [IPv6]; brackets around a name or an IPv4 address are allowed and
 * change nothing (there are no MX lookups to suppress). */
#define CONFIG_HOP_MEMBERS 8
#define CONFIG_HOP_ADDRS   16 /* addresses of all the members of one next hop */
#define CONFIG_HOP_LIST_MAX (CONFIG_HOP_MEMBERS * (CONFIG_HOP_TEXT_MAX + 2))

struct relay_hop_member {
	enum relay_proto proto;
	/* TLS SNI and verification: the name as written, lower-cased; for an
	 * address literal its inet_ntop() text, without brackets (no SNI:
	 * RFC 6066 forbids literals); "" for unix. */
	char host[256];
	char text[CONFIG_HOP_TEXT_MAX]; /* canonical form, "smtp:127.0.0.1:25" */
	/* An address literal or unix path (len > 0), known from the text. */
	struct sockaddr_storage literal;
	socklen_t literal_len;
};

/* One address to connect to, and the member it belongs to. */
struct relay_hop_addr {
	struct sockaddr_storage sa; /* AF_INET, AF_INET6 or AF_UNIX */
	socklen_t len;
	uint8_t member;
};

struct relay_hop_conf {
	struct relay_hop_member m[CONFIG_HOP_MEMBERS];
	unsigned nm;
	/* Filled by relay_hop_resolve() (and by the parser when every member
	 * is a literal): the members' addresses in member order. */
	struct relay_hop_addr a[CONFIG_HOP_ADDRS];
	unsigned na;
	/* The members' canonical texts joined by ", ": identity and logs. */
	char text[CONFIG_HOP_LIST_MAX];
};

/* A transport_maps entry. domain is lower case: "example.org" matches that
 * domain only; ".example.org" matches its subdomains (not itself); "*" is
 * the default. Exact entries win over subdomain entries (the longest
 * suffix), which win over "*", which wins over relay_host. The "*" entry
 * is not kept in relay.map: it is relay.default_hop. */
struct transport_entry {
	char *domain;
	uint32_t hop; /* index into relay.hops */
};

struct relay_conf {
	struct relay_hop_conf hops[CONFIG_MAX_HOPS];
	size_t nhops;
	int default_hop; /* "*" in the map, else relay_host; -1: none */
	struct transport_entry *map; /* sorted for relay_route(); owned */
	size_t nmap;
	char relay_host[CONFIG_HOP_LIST_MAX];   /* as written, "" = none */
	char transport_maps[CONFIG_PATH_MAX];   /* path, "" = none */
	enum relay_tls tls;
	char tls_ca_file[CONFIG_PATH_MAX];
	unsigned connections;        /* per worker per next hop */
	uint64_t connect_timeout;    /* ns */
	uint64_t reply_timeout;      /* ns: any one reply, and each send */
	uint64_t idle_timeout;       /* ns: an unused outbound connection is closed */
	uint64_t retry_min, retry_max; /* ns: backoff after a temporary failure */
	uint64_t queue_lifetime;     /* ns: maximal_queue_lifetime */
	uint64_t high_water;         /* bytes of undelivered mail in the spool; 0 = no limit */
	uint64_t defer_after;        /* ns: a next hop failing this long -> 451 to new mail; 0 = never */
};

/* relay_host or transport_maps set (and sink = spool). */
static inline bool
relay_enabled(const struct relay_conf *r)
{
	return r->nhops > 0;
}

struct config {
	char path[4096]; /* the file read, "" for embedded defaults */

	struct listener_conf listeners[CONFIG_MAX_LISTENERS];
	size_t nlisteners;

	/* Resolved at load time: never 0 in a loaded config (0 in the file
	 * means one per CPU in the affinity mask, or one per listed CPU). */
	unsigned workers;
	int cpus[CONFIG_MAX_WORKERS]; /* CPU for worker i; -1 = not pinned */
	size_t ncpus;                 /* entries in cpus[] (== workers if pinned); 0 = no pinning */
	/* The `cpus` list as written (for config_print); cpus[i] is
	 * cpu_list[i % ncpu_list]. */
	int cpu_list[CONFIG_MAX_CPUS];
	size_t ncpu_list;

	unsigned max_connections; /* per worker */
	unsigned recv_buffers;    /* provided buffers per worker, power of two */
	unsigned recv_buffer_size;
	unsigned listen_backlog;

	enum sink_kind sink;
	struct jetstream_conf jetstream;

	/* The durable spool (sink = spool); see docs/spool.md. */
	char spool_dir[CONFIG_PATH_MAX]; /* absolute or relative path, no NUL */
	uint64_t segment_size;           /* bytes per preallocated segment file */
	enum spool_durability durability;
	enum spool_io spool_io;
	uint64_t commit_delay;           /* ns: a batch closes this long after its first message */
	uint64_t commit_size;            /* bytes: a batch closes at this size */
	uint64_t spool_memory;           /* bytes of staged messages per worker */

	/* SMTP policy and limits handed to sessions; domains point into
	 * domain_list. */
	struct smtp_conf smtp;
	char **domain_list;
	size_t ndomains;

	uint64_t shutdown_timeout; /* ns */
	uint64_t send_timeout;     /* ns: a reply the client does not read (conn.c) */

	struct tls_conf tls;

	/* Peers allowed to send a PROXY header on proxy=yes listeners
	 * (docs/proxy.md). Reloadable: checked at accept time. */
	struct proxy_trust proxy_trusted;
	/* ns: a PROXY header not complete this long after connect closes
	 * the connection (no reply). Reloadable. */
	uint64_t proxy_timeout;

	struct client_limits_conf client_limits;
	struct screen_conf screen;
	struct milters_conf milters;
	/* metrics_listen: the Prometheus endpoint (engine/runtime/metrics_http.c);
	 * addrlen 0 when unset. Not a listener for SMTP. */
	struct listener_conf metrics_listen;
	/* user, group: the account ringmxd runs as once its listeners are
	 * bound and its keys read (engine/runtime/privdrop.c). Names as
	 * written ("" unset), resolved at load. Restart only. */
	struct run_as_conf {
		char user[CONFIG_ACCOUNT_MAX], group[CONFIG_ACCOUNT_MAX];
		bool set;   /* user given */
		uint32_t uid, gid;
	} run_as;
	/* log_level, log_format: enum log_level, enum log_format
	 * (engine/runtime/log.h, docs/logging.md). Reloadable. */
	unsigned log_level;
	unsigned log_format;

	struct relay_conf relay;

	/* Recipient verification against the next hop (docs/defences.md,
	 * engine/policy/verify.c). */
	struct verify_conf {
		bool enabled;          /* verify_recipients */
		uint64_t positive_ttl; /* ns */
		uint64_t negative_ttl; /* ns; 0: 5xx results are not cached */
		uint64_t timeout;      /* ns: a probe's answer, at most */
		unsigned cache_size;   /* entries per worker */
	} verify;
	/* recipient_maps (docs/defences.md): the files as written, and the
	 * map built from them at load (NULL when the key is unset); owned. */
	char *rcpt_map_files[CONFIG_RCPT_MAPS_MAX];
	size_t nrcpt_map_files;
	struct rcpt_map *rcpt_map;
};

/*
 * Command-line options that override the file. Strings are borrowed from
 * argv. Filled by config_parse_args().
 */
struct config_args {
	const char *config_path; /* -c/--config */
	bool check_only;         /* -t/--check-config */
	bool version;            /* -V/--version */
	bool help;               /* -h/--help */
	bool print_config;       /* --print-config */
	const char *listen[CONFIG_MAX_LISTENERS]; /* --listen (repeatable) */
	size_t nlisten;
	const char *port;    /* --port N: every listener's port (old interface) */
	const char *workers; /* --workers */
	const char *cpus;    /* --cpus */
	const char *sets[64]; /* -o key=value (repeatable), Postfix master.cf style */
	size_t nsets;
	/* The old interface's environment (read by config_parse_args(),
	 * applied above the defaults and below the file): SMTP_ENABLE_TLS,
	 * SMTP_TLS_CERT, SMTP_TLS_KEY. NULL = unset. */
	const char *env_enable_tls;
	const char *env_tls_cert;
	const char *env_tls_key;
};

/* Parse argv. Returns 0, or -1 with a message in err (usage errors).
 * May permute argv (getopt_long); resets getopt's state, so it can be
 * called more than once. */
int config_parse_args(int argc, char **argv, struct config_args *args, char err[CONFIG_ERR_MAX]);

/* The --help text. */
void config_usage(FILE *f);

/*
 * Build a configuration: defaults, then the file (if args->config_path, or
 * NULL for none), then the command line. Returns a new config, or NULL with
 * one line in err naming the file, line and key, e.g.
 *   "/etc/ringmx/ringmxd.conf:12: message_size_limit: not a size: '10QB'"
 * Command-line errors name the option instead of a line.
 */
struct config *config_load(const struct config_args *args, char err[CONFIG_ERR_MAX]);

/* As config_load(), but the file's text is given (len bytes, need not be
 * NUL terminated) and name is used in messages; args->config_path is
 * ignored. For tests and fuzzing. args may be NULL. */
struct config *config_load_string(const char *name, const char *text, size_t len,
				  const struct config_args *args, char err[CONFIG_ERR_MAX]);

/* NULL is allowed. */
void config_free(struct config *cfg);

/*
 * SIGHUP: may next replace cur? Returns 0 if they differ only in keys that
 * are reloadable (docs/config.md), else -1 with err naming the first key
 * that needs a restart, e.g. "workers: cannot be changed by a reload;
 * restart ringmxd". The caller decides whether to refuse the reload.
 */
int config_check_reload(const struct config *cur, const struct config *next,
			char err[CONFIG_ERR_MAX]);

/* Write the effective configuration in file syntax (for --print-config). */
void config_print(const struct config *cfg, FILE *f);

/* The next hop for a recipient domain (not NUL terminated, any case):
 * an index into cfg->relay.hops, or -1 when nothing routes it. */
int relay_route(const struct relay_conf *r, const char *domain, size_t len);

/* Parse "0-3,6" (comma and/or blank separated; each CPU < CPU_SETSIZE,
 * at most once) into a CPU list. Returns count or -1. */
int config_parse_cpus(const char *s, int *cpus, size_t max);

#endif
