/*
 * main.c - ringmxd: configuration, start-up checks, worker threads and
 * signals.
 *
 * The main thread never touches a connection. It loads the configuration,
 * creates every worker's listening sockets (so a bind error stops start-up
 * with one message), starts the pinned workers, then waits for signals:
 *   SIGTERM, SIGINT  drain: stop accepting, finish open transactions up to
 *                    shutdown_timeout, then 421 and close; exit 0.
 *   SIGHUP           reload the configuration file (domains, limits,
 *                    timeouts); a broken file is refused and logged, the
 *                    running configuration stays.
 *   SIGUSR1          every worker logs its counters.
 * Workers are told through their control block and woken with an eventfd.
 *
 * Ownership: main owns the configurations. A replaced one is freed only
 * after every worker has acknowledged its successor.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_MASTER
#include <errno.h>
#include <liburing.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <ares.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/version.h>

#include "log.h"
#include "ringmx/config.h"
#include "tls.h"
#include "ringmx_version.h"
#include "control.h"
#include "rcpt_map.h"
#include "worker.h"
#include "pass_cache.h"
#include "client_table.h"
#include "metrics_http.h"
#include "notify.h"
#include "privdrop.h"

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Fail fast, with the fix, when io_uring is not available (TigerBeetle's
 * init does the same): Docker's default seccomp profile and the sysctl
 * kernel.io_uring_disabled both make io_uring_setup fail. */
static void
check_io_uring(void)
{
	struct io_uring ring;
	int r = io_uring_queue_init(2, &ring, 0);
	if (r == 0) {
		/* A filter may allow io_uring_setup and refuse io_uring_register
		 * (which the workers need for their buffer rings): ask it too. */
		struct io_uring_probe *probe =
			calloc(1, sizeof(*probe) + 256 * sizeof(struct io_uring_probe_op));
		r = probe != NULL ? io_uring_register_probe(&ring, probe, 256) : -ENOMEM;
		free(probe);
		io_uring_queue_exit(&ring);
		if (r == 0)
			return;
	}
	if (r == -EPERM || r == -ENOSYS || r == -EACCES) {
		fatal("io_uring is not available (%s). ringmxd needs io_uring (Linux >= 6.1). "
		      "Check 'sysctl kernel.io_uring_disabled' (set it to 0, or to 1 and run as a "
		      "member of kernel.io_uring_group) and any seccomp filter (Docker's default "
		      "profile blocks io_uring: run with a profile that allows io_uring_setup, "
		      "io_uring_enter and io_uring_register, such as etc/seccomp-ringmxd.json)",
		      strerror(-r));
	}
	fatal("io_uring_queue_init: %s", strerror(-r));
}

/* Each connection is a descriptor: make sure the limit allows the pools. */
static void
raise_nofile(const struct config *cfg)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t want = (rlim_t)cfg->workers * cfg->max_connections + 64 * cfg->workers + 64;
	if (rl.rlim_cur < want) {
		rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
		if (rl.rlim_cur < want && geteuid() == 0)
			rl.rlim_max = rl.rlim_cur = want; /* root may raise the hard limit */
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < want)
		log_warn("open file limit %llu is below what workers x max_connections needs (%llu): "
			 "connections past it will be refused; raise the limit (ulimit -n, "
			 "systemd LimitNOFILE=) or lower max_connections",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

static void
wake_all(struct worker *ws, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		worker_wake(&ws[i]);
}

/* What recipient_maps loaded ("" when unset): for the start-up and
 * reload log lines and -t. */
static void
rcpt_map_text(const struct config *cfg, char *b, size_t cap)
{
	struct rcpt_map_info mi;

	b[0] = '\0';
	if (cfg->rcpt_map == NULL)
		return;
	rcpt_map_get_info(cfg->rcpt_map, &mi);
	snprintf(b, cap, "recipient_maps: %zu entries (%zu @domain, %zu duplicates ignored) "
		 "from %zu file%s, %zu bytes", mi.entries, mi.catchall, mi.duplicates,
		 cfg->nrcpt_map_files, cfg->nrcpt_map_files == 1 ? "" : "s", mi.bytes);
}

static const struct config *reload_config(struct worker *ws, unsigned n,
					  const struct config_args *args, const struct config *cur);

/* systemd sees RELOADING=1 then READY=1 whether the new file was taken or
 * refused (the service runs either way; the log says which). */
static const struct config *
reload(struct worker *ws, unsigned n, const struct config_args *args, const struct config *cur)
{
	notify_reloading();
	const struct config *next = reload_config(ws, n, args, cur);
	notify_ready(next != cur ? "configuration reloaded" : "reload refused; running configuration kept");
	return next;
}

static const struct config *
reload_config(struct worker *ws, unsigned n, const struct config_args *args, const struct config *cur)
{
	char err[CONFIG_ERR_MAX];
	struct config *next = config_load(args, err);
	if (next == NULL) {
		log_err("reload refused, keeping the running configuration: %s", err);
		return cur;
	}
	if (config_check_reload(cur, next, err) < 0) {
		log_err("reload refused, keeping the running configuration: %s", err);
		config_free(next);
		return cur;
	}
	/* Certificates are re-read on every SIGHUP (certbot deploy hook); a
	 * broken one keeps the old configuration and certificates. */
	if (tls_check(&next->tls, (int64_t)time(NULL), err, sizeof(err)) < 0) {
		log_err("reload refused, keeping the running configuration and certificates: %s",
			err);
		config_free(next);
		return cur;
	}
	for (unsigned i = 0; i < n; i++)
		atomic_store(&ws[i].ctl.next_cfg, next);
	wake_all(ws, n);
	/* Wait until every worker switched; only then is cur unused. */
	for (unsigned i = 0; i < n; i++)
		while (atomic_load(&ws[i].ctl.cfg_ack) != next && atomic_load(&ws[i].started) == 1)
			sleep_ms(1);
	log_configure((enum log_level)next->log_level, (enum log_format)next->log_format);
	log_notice("configuration reloaded from %s", next->path[0] ? next->path : "(defaults)");
	rcpt_map_text(next, err, sizeof(err));
	if (err[0] != '\0')
		log_notice("%s", err);
	config_free((struct config *)cur);
	return next;
}

int
main(int argc, char **argv)
{
	struct config_args args;
	char err[CONFIG_ERR_MAX];

	log_init("ringmxd");
	if (config_parse_args(argc, argv, &args, err) < 0) {
		fprintf(stderr, "ringmxd: %s\n", err);
		fprintf(stderr, "Try 'ringmxd --help'.\n");
		return 2;
	}
	if (args.help) {
		config_usage(stdout);
		return 0;
	}
	if (args.version) {
		/* First line as before (scripts read it); then what it runs on. */
		printf("ringmxd %s\n", RINGMX_VERSION);
		printf("liburing %s (built against)\n", RINGMX_BUILD_LIBURING);
		printf("wolfSSL %s (running; built against %s)\n", wolfSSL_lib_version(),
		       LIBWOLFSSL_VERSION_STRING);
		printf("c-ares %s (running; built against %s)\n", ares_version(NULL),
		       RINGMX_BUILD_CARES);
		printf("build: %s\n", RINGMX_BUILD_OPTIONS);
		const char *why;
		bool aes = tls_aes_fast(&why);
		printf("tls: default suites %s first (%s)\n",
		       aes ? "AES-GCM" : "ChaCha20-Poly1305", why);
		return 0;
	}
	struct config *cfg = config_load(&args, err);
	if (cfg == NULL) {
		fprintf(stderr, "ringmxd: %s\n", err);
		return 1;
	}
	if (args.print_config) {
		config_print(cfg, stdout);
		config_free(cfg);
		return 0;
	}
	log_configure((enum log_level)cfg->log_level, (enum log_format)cfg->log_format);
	if (tls_global_init() < 0) {
		fprintf(stderr, "ringmxd: wolfSSL_Init failed\n");
		config_free(cfg);
		return 1;
	}
	/* Certificates: one clear error each, before anything starts. */
	if (tls_check(&cfg->tls, (int64_t)time(NULL), err, sizeof(err)) < 0) {
		log_flush();
		fprintf(stderr, "ringmxd: %s\n", err);
		config_free(cfg);
		return 1;
	}
	if (args.check_only) {
		printf("ringmxd: configuration %s is valid\n", cfg->path[0] ? cfg->path : "(defaults)");
		rcpt_map_text(cfg, err, sizeof(err));
		if (err[0] != '\0')
			printf("ringmxd: %s\n", err);
		config_free(cfg);
		return 0;
	}

	check_io_uring();
	raise_nofile(cfg);
	signal(SIGPIPE, SIG_IGN);

	/* Workers inherit this mask: only the main thread takes signals. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	if (listener_probe(cfg, err, sizeof(err)) < 0)
		fatal("%s", err);
	/* Bound with the SMTP listeners, before any privilege is dropped. */
	struct metrics_server *metrics = NULL;
	if (cfg->metrics_listen.addrlen != 0 && metrics_bind(&metrics, cfg, err, sizeof(err)) < 0)
		fatal("%s", err);
	notify_init();
	unsigned n = cfg->workers;
	struct worker *ws = calloc(n, sizeof(*ws));
	if (ws == NULL)
		fatal("out of memory");
	/* One per-client table for every worker (SO_REUSEPORT spreads a
	 * client over all of them); its hash key is secret. */
	struct client_table *clients;
	uint64_t seed[2];
	if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
		fatal("getrandom: %s", strerror(errno));
	int cr = client_table_new(&clients, cfg->client_limits.table_size, seed);
	if (cr < 0)
		fatal("client table (%u slots): %s", cfg->client_limits.table_size, strerror(-cr));
	/* The screening pass cache, shared the same way; its key too. */
	struct pass_cache *passes;
	if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
		fatal("getrandom: %s", strerror(errno));
	cr = pass_cache_new(&passes, cfg->screen.cache_size, seed);
	if (cr < 0)
		fatal("screening pass cache (%u slots): %s", cfg->screen.cache_size, strerror(-cr));
	/* c-ares' global state, once, before any worker makes a channel. */
	cr = dns_library_init();
	if (cr < 0)
		fatal("c-ares: cannot initialise: %s", strerror(-cr));
	for (unsigned i = 0; i < n; i++) {
		struct worker *w = &ws[i];
		w->id = i;
		w->cfg = cfg;
		w->policy.clients = clients;
		w->policy.passes = passes;
		w->cpu = cfg->ncpus ? cfg->cpus[i % cfg->ncpus] : -1;
		for (size_t l = 0; l < CONFIG_MAX_LISTENERS; l++)
			w->listen_fd[l] = -1;
		if (worker_setup_listeners(w, cfg, err, sizeof(err)) < 0)
			fatal("%s", err);
		w->wake_fd = eventfd(0, EFD_CLOEXEC);
		if (w->wake_fd < 0)
			fatal("eventfd: %s", strerror(errno));
	}
	/* Everything root was needed for is done: every listener bound, the
	 * keys read (tls_check above), the descriptor limit raised. The spool
	 * is opened from here on as the user, so everything in it stays the
	 * user's. No thread but this one exists yet. */
	if (privdrop_check_spool(cfg, err, sizeof(err)) < 0 || privdrop(cfg, err, sizeof(err)) < 0)
		fatal("%s", err);
	if (cfg->sink == SINK_KIND_SPOOL && control_lock(cfg, err, sizeof(err)) < 0)
		fatal("%s", err);
	for (unsigned i = 0; i < n; i++) {
		int r = pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
		if (r != 0)
			fatal("pthread_create: %s", strerror(r));
	}
	for (unsigned i = 0; i < n; i++) {
		int st;
		while ((st = atomic_load(&ws[i].started)) == 0)
			sleep_ms(1);
		if (st < 0)
			fatal("worker %u failed to start: %s", i, strerror(-st));
	}

	char where[CONFIG_MAX_LISTENERS * 90] = "";
	for (size_t l = 0, off = 0; l < cfg->nlisteners && off < sizeof(where); l++)
		off += (size_t)snprintf(where + off, sizeof(where) - off, "%s%s", l ? ", " : "",
					cfg->listeners[l].text);
	log_notice("ringmxd %s listening on %s (%u worker%s, sink=%s, config %s)", RINGMX_VERSION,
		 where, n, n == 1 ? "" : "s", cfg->sink == SINK_KIND_SPOOL       ? "spool"
		 : cfg->sink == SINK_KIND_JETSTREAM ? "jetstream"
						    : "discard",
		 cfg->path[0] ? cfg->path : "(defaults)");
	rcpt_map_text(cfg, err, sizeof(err));
	if (err[0] != '\0')
		log_notice("%s", err);
	if (metrics != NULL) {
		int mr = metrics_start(metrics, ws, n, clients);
		if (mr < 0)
			fatal("metrics_listen %s: %s", cfg->metrics_listen.text, strerror(-mr));
	}
	/* Listeners bound, every worker's spool recovered (started == 1). */
	notify_ready(where);

	const struct config *cur = cfg;
	uint64_t tick_ns = notify_tick_ns();
	for (;;) {
		siginfo_t si;
		/* Wake once a second (or more often for the watchdog) for
		 * ringmx-spool's requests (control.c). */
		struct timespec tick = {(time_t)(tick_ns / 1000000000u), (long)(tick_ns % 1000000000u)};
		int sig = sigtimedwait(&sigs, &si, &tick);
		notify_tick(ws, n, now_ns());
		if (sig < 0) {
			if (errno == EAGAIN && cur->sink == SINK_KIND_SPOOL)
				control_poll(ws, n, cur);
			continue;
		}
		if (sig == SIGHUP) {
			cur = reload(ws, n, &args, cur);
		} else if (sig == SIGUSR1) {
			for (unsigned i = 0; i < n; i++)
				atomic_store(&ws[i].ctl.dump, true);
			wake_all(ws, n);
		} else {
			log_notice("%s: draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
			notify_stopping();
			break;
		}
	}
	for (unsigned i = 0; i < n; i++)
		atomic_store(&ws[i].ctl.stop, true);
	wake_all(ws, n);

	struct ringmx_stats total = {0};
	for (unsigned i = 0; i < n; i++) {
		pthread_join(ws[i].thread, NULL);
#define RINGMX_STATS_SUM(name, help) total.name += ws[i].stats.name;
		RINGMX_STATS(RINGMX_STATS_SUM)
#undef RINGMX_STATS_SUM
		close(ws[i].wake_fd);
	}
	log_notice("stopped: connections=%llu messages=%llu", (unsigned long long)total.connections_accepted,
		 (unsigned long long)total.messages_accepted);
	metrics_stop(metrics);
	free(ws);
	client_table_free(clients);
	pass_cache_free(passes);
	dns_library_cleanup();
	if (cur->sink == SINK_KIND_JETSTREAM)
		js_library_fini();
	config_free((struct config *)cur);
	tls_global_fini();
	return 0;
}
