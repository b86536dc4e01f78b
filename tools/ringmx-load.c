/*
 * tools/ringmx-load.c - ringmx-load, an io_uring SMTP load client: command line,
 * worker threads, progress line and the final report (text and JSON).
 *
 * Ownership: ringmx-load (issue 4; TLS options from issue 5). A worker is
 * load_engine.c (one ring per thread), load_conn.c (its connections, each on the
 * SMTP client core, engine/smtp/smtp_client.c) and load_tx.c (its messages); the
 * wolfSSL client is in load_tls.c, message material in load_msg.c, the latency
 * histogram in load_hist.c; shared declarations in load.h. See docs/ringmx-load.md for usage and
 * measurements against Postfix smtp-sink/smtp-source.
 *
 * Exit status: 0 all messages accepted; 1 some message was not accepted (unless
 * --expect-reject) or there were connect errors, timeouts, disconnects or protocol
 * errors, or TLS handshakes failed; 2 usage error, setup failure, or a missing server
 * capability (--bdat without CHUNKING, --starttls without STARTTLS).
 */
#include "load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "ringmx_version.h"

struct load_run load_run = { .manifest_fd = -1, .manifest_lock = PTHREAD_MUTEX_INITIALIZER };

static struct load_opts opts;
static struct load_body body;
static struct load_thread *threads;
static int finished_count;

static void usage(FILE *f)
{
	fprintf(f,
	"usage: ringmx-load [options] HOST:PORT [HOST:PORT...]   ([::1]:2525 for IPv6)\n"
	"  -c, --connections N     concurrent connections (default 10)\n"
	"  -m, --messages N        messages to send in total (default 10000)\n"
	"  -d, --duration SECONDS  run for this long instead (with -m: whichever ends first)\n"
	"      --per-connection N  messages per connection, then QUIT and reconnect\n"
	"                          (0 = keep connections open, the default; 1 = churn)\n"
	"  -s, --size N|MIN-MAX    body bytes, k/m suffixes (default 1k)\n"
	"      --rcpts N           recipients per message (default 1)\n"
	"      --from PATTERN      envelope sender, %%d = sequence (default load%%d@ringmx-load.test)\n"
	"      --to PATTERN        recipients, %%d = sequence (default rcpt%%d@example.test)\n"
	"      --pipelining on|off RFC 2920 pipelining when offered (default on)\n"
	"      --bdat              RFC 3030 BDAT LAST instead of DATA (needs CHUNKING)\n"
	"      --proxy v1|v2       send a PROXY protocol header first (in the clear, before TLS)\n"
	"      --starttls          EHLO, STARTTLS, TLS handshake, EHLO again, then mail\n"
	"      --tls               implicit TLS (port 465 style): handshake, then the greeting\n"
	"      --tls-version V     1.2 or 1.3 only (default: negotiate, at least 1.2)\n"
	"      --tls-resume        resume each connection slot's last session on reconnect\n"
	"      --tls-verify CAFILE verify the server certificate (default: no verification)\n"
	"      --sni NAME          send SNI NAME (and check it with --tls-verify)\n"
	"      --tls-ciphers LIST  wolfSSL cipher list, e.g. TLS13-CHACHA20-POLY1305-SHA256\n"
	"      --tls-groups LIST   key exchange groups, e.g. X25519:P-256\n"
	"      --rate N            open loop: start N messages/s; latency from intended start\n"
	"      --source A[-B]      bind to IPv4 loopback source addresses A..B, round-robin\n"
	"      --ehlo NAME         EHLO argument (default ringmx-load.test)\n"
	"      --timeout SECONDS   per reply and per connect (default 30)\n"
	"  -t, --threads N         worker threads, one ring each (default 1)\n"
	"      --cpus LIST         pin worker i to the i-th CPU of LIST (e.g. 1 or 2-3,6)\n"
	"      --expect-reject     rejections do not make the exit status non-zero\n"
	"      --json FILE         write the summary as JSON (- = stdout)\n"
	"      --verify MANIFEST   write 'id queue-id body-size fnv1a64' per accepted message\n"
	"  -q, --quiet             no progress line, no text summary\n"
	"  -h, --help, --version\n");
}

__attribute__((format(printf, 1, 2), noreturn))
static void fail_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "ringmx-load: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static uint64_t parse_u64(const char *s, const char *what, uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v > max)
		fail_usage("bad value for %s", what);
	return v;
}

static double parse_pos_double(const char *s, const char *what)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v > 0) || v > 1e9)
		fail_usage("bad value for %s", what);
	return v;
}

/* "1024", "64k", "1m" */
static uint64_t parse_size1(const char *s, size_t n)
{
	char buf[32];
	if (n == 0 || n >= sizeof(buf))
		fail_usage("bad --size '%s'", s);
	memcpy(buf, s, n);
	buf[n] = 0;
	uint64_t mult = 1;
	char last = buf[n - 1];
	if (last == 'k' || last == 'K')
		mult = 1024;
	else if (last == 'm' || last == 'M')
		mult = 1024 * 1024;
	if (mult > 1)
		buf[n - 1] = 0;
	uint64_t v = parse_u64(buf, "--size", LOAD_MAX_SIZE);
	if (v * mult > LOAD_MAX_SIZE)
		fail_usage("--size above 1g: '%s'", s);
	return v * mult;
}

static void parse_size(const char *s)
{
	const char *dash = strchr(s, '-');
	if (dash) {
		opts.size_min = parse_size1(s, (size_t)(dash - s));
		opts.size_max = parse_size1(dash + 1, strlen(dash + 1));
	} else {
		opts.size_min = opts.size_max = parse_size1(s, strlen(s));
	}
	if (opts.size_max < opts.size_min)
		fail_usage("--size MIN-MAX with MIN > MAX: '%s'", s);
}

static void parse_cpus(const char *s)
{
	char *copy = strdup(s), *save = NULL;
	if (!copy)
		exit(2);
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *dash = strchr(tok, '-');
		unsigned a, b;
		if (dash) {
			*dash = 0;
			a = (unsigned)parse_u64(tok, "--cpus", CPU_SETSIZE - 1);
			b = (unsigned)parse_u64(dash + 1, "--cpus", CPU_SETSIZE - 1);
		} else {
			a = b = (unsigned)parse_u64(tok, "--cpus", CPU_SETSIZE - 1);
		}
		for (unsigned c = a; c <= b && opts.ncpus < LOAD_MAX_THREADS; c++)
			opts.cpus[opts.ncpus++] = (int)c;
	}
	free(copy);
	if (!opts.ncpus)
		fail_usage("empty --cpus '%s'", s);
}

static void parse_source(const char *s)
{
	char a[64], b[64];
	const char *dash = strchr(s, '-');
	size_t la = dash ? (size_t)(dash - s) : strlen(s);
	if (la >= sizeof(a) || (dash && strlen(dash + 1) >= sizeof(b)))
		fail_usage("bad --source '%s'", s);
	memcpy(a, s, la);
	a[la] = 0;
	snprintf(b, sizeof(b), "%s", dash ? dash + 1 : a);
	struct in_addr ia, ib;
	if (inet_pton(AF_INET, a, &ia) != 1 || inet_pton(AF_INET, b, &ib) != 1)
		fail_usage("--source takes IPv4 loopback addresses A or A-B: '%s'", s);
	uint32_t ha = ntohl(ia.s_addr), hb = ntohl(ib.s_addr);
	/* Loopback only: other addresses would have to be configured on an interface,
	 * and this tool is for local benchmarks. */
	if ((ha >> 24) != 127 || (hb >> 24) != 127 || hb < ha)
		fail_usage("--source must be a range inside 127.0.0.0/8: '%s'", s);
	opts.source_set = true;
	opts.src_family = AF_INET;
	opts.src_base = ha;
	opts.src_count = hb - ha + 1;
}

static void parse_target(const char *s)
{
	if (opts.ntargets >= LOAD_MAX_TARGETS)
		fail_usage("too many targets (max 64): '%s'", s);
	char host[256];
	const char *port;
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof(host))
			fail_usage("bad target '%s' (want [v6addr]:port)", s);
		memcpy(host, s + 1, (size_t)(rb - s - 1));
		host[rb - s - 1] = 0;
		port = rb + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof(host) || colon == s)
			fail_usage("bad target '%s' (want host:port)", s);
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = 0;
		port = colon + 1;
	}
	parse_u64(port, "target port", 65535);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc || !res) {
		fprintf(stderr, "ringmx-load: cannot resolve '%s': %s\n", s, gai_strerror(rc));
		exit(2);
	}
	struct load_addr *t = &opts.targets[opts.ntargets++];
	memcpy(&t->ss, res->ai_addr, res->ai_addrlen);
	t->len = res->ai_addrlen;
	snprintf(t->text, sizeof(t->text), "%s", s);
	freeaddrinfo(res);
}

enum {
	O_PER_CONN = 256, O_RCPTS, O_FROM, O_TO, O_PIPELINING, O_BDAT, O_PROXY, O_RATE, O_SOURCE,
	O_EHLO, O_TIMEOUT, O_CPUS, O_EXPECT_REJECT, O_JSON, O_VERIFY, O_VERSION,
	O_STARTTLS, O_TLS, O_TLS_VERSION, O_TLS_RESUME, O_TLS_VERIFY, O_SNI, O_TLS_CIPHERS,
	O_TLS_GROUPS,
};

static const struct option long_opts[] = {
	{ "connections", required_argument, NULL, 'c' },
	{ "messages", required_argument, NULL, 'm' },
	{ "duration", required_argument, NULL, 'd' },
	{ "per-connection", required_argument, NULL, O_PER_CONN },
	{ "size", required_argument, NULL, 's' },
	{ "rcpts", required_argument, NULL, O_RCPTS },
	{ "from", required_argument, NULL, O_FROM },
	{ "to", required_argument, NULL, O_TO },
	{ "pipelining", required_argument, NULL, O_PIPELINING },
	{ "bdat", no_argument, NULL, O_BDAT },
	{ "proxy", required_argument, NULL, O_PROXY },
	{ "starttls", no_argument, NULL, O_STARTTLS },
	{ "tls", no_argument, NULL, O_TLS },
	{ "tls-version", required_argument, NULL, O_TLS_VERSION },
	{ "tls-resume", no_argument, NULL, O_TLS_RESUME },
	{ "tls-verify", required_argument, NULL, O_TLS_VERIFY },
	{ "sni", required_argument, NULL, O_SNI },
	{ "tls-ciphers", required_argument, NULL, O_TLS_CIPHERS },
	{ "tls-groups", required_argument, NULL, O_TLS_GROUPS },
	{ "rate", required_argument, NULL, O_RATE },
	{ "source", required_argument, NULL, O_SOURCE },
	{ "ehlo", required_argument, NULL, O_EHLO },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "threads", required_argument, NULL, 't' },
	{ "cpus", required_argument, NULL, O_CPUS },
	{ "expect-reject", no_argument, NULL, O_EXPECT_REJECT },
	{ "json", required_argument, NULL, O_JSON },
	{ "verify", required_argument, NULL, O_VERIFY },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, O_VERSION },
	{ NULL, 0, NULL, 0 },
};

static void parse_args(int argc, char **argv)
{
	opts.threads = 1;
	opts.connections = 10;
	opts.size_min = opts.size_max = 1024;
	opts.rcpts = 1;
	opts.pipelining = true;
	opts.timeout = 30;
	snprintf(opts.ehlo, sizeof(opts.ehlo), "ringmx-load.test");
	load_pattern_parse(&opts.from, "load%d@ringmx-load.test");
	load_pattern_parse(&opts.to, "rcpt%d@example.test");
	bool messages_set = false;
	const char *tls_opt = NULL; /* a --tls-* option seen, for the "needs --tls" check */
	int ch;
	while ((ch = getopt_long(argc, argv, "c:m:d:s:t:qh", long_opts, NULL)) != -1) {
		switch (ch) {
		case 'c': opts.connections = (unsigned)parse_u64(optarg, "--connections", LOAD_MAX_CONNECTIONS); break;
		case 'm': opts.messages = parse_u64(optarg, "--messages", UINT64_MAX / 2); messages_set = true; break;
		case 'd': opts.duration = parse_pos_double(optarg, "--duration"); break;
		case O_PER_CONN: opts.per_conn = (unsigned)parse_u64(optarg, "--per-connection", 1u << 30); break;
		case 's': parse_size(optarg); break;
		case O_RCPTS: opts.rcpts = (unsigned)parse_u64(optarg, "--rcpts", LOAD_MAX_RCPTS); break;
		case O_FROM:
			if (load_pattern_parse(&opts.from, optarg) < 0)
				fail_usage("bad --from pattern '%s' (one %%d, no spaces or <>)", optarg);
			break;
		case O_TO:
			if (load_pattern_parse(&opts.to, optarg) < 0)
				fail_usage("bad --to pattern '%s' (one %%d, no spaces or <>)", optarg);
			break;
		case O_PIPELINING:
			if (!strcmp(optarg, "on"))
				opts.pipelining = true;
			else if (!strcmp(optarg, "off"))
				opts.pipelining = false;
			else
				fail_usage("--pipelining takes on or off, not '%s'", optarg);
			break;
		case O_BDAT: opts.bdat = true; break;
		case O_PROXY:
			if (!strcmp(optarg, "v1"))
				opts.proxy = LOAD_PROXY_V1;
			else if (!strcmp(optarg, "v2"))
				opts.proxy = LOAD_PROXY_V2;
			else
				fail_usage("--proxy takes v1 or v2, not '%s'", optarg);
			break;
		case O_STARTTLS:
		case O_TLS: {
			enum load_tls_mode m = ch == O_TLS ? LOAD_TLS_IMPLICIT : LOAD_TLS_STARTTLS;
			if (opts.tls != LOAD_TLS_NONE && opts.tls != m)
				fail_usage("%s", "--tls and --starttls exclude each other");
			opts.tls = m;
			break;
		}
		case O_TLS_VERSION:
			if (!strcmp(optarg, "1.2"))
				opts.tls_version = 12;
			else if (!strcmp(optarg, "1.3"))
				opts.tls_version = 13;
			else
				fail_usage("--tls-version takes 1.2 or 1.3, not '%s'", optarg);
			tls_opt = "--tls-version";
			break;
		case O_TLS_RESUME: opts.tls_resume = true; tls_opt = "--tls-resume"; break;
		case O_TLS_VERIFY: opts.tls_verify = optarg; tls_opt = "--tls-verify"; break;
		case O_SNI:
			if (!*optarg || strlen(optarg) > 253 || strpbrk(optarg, " \r\n\t"))
				fail_usage("bad --sni '%s'", optarg);
			opts.sni = optarg;
			tls_opt = "--sni";
			break;
		case O_TLS_CIPHERS: opts.tls_ciphers = optarg; tls_opt = "--tls-ciphers"; break;
		case O_TLS_GROUPS:
			if (strlen(optarg) > 200)
				fail_usage("--tls-groups too long: '%s'", optarg);
			opts.tls_groups = optarg;
			tls_opt = "--tls-groups";
			break;
		case O_RATE: opts.rate = parse_pos_double(optarg, "--rate"); break;
		case O_SOURCE: parse_source(optarg); break;
		case O_EHLO:
			if (strlen(optarg) > LOAD_EHLO_MAX || strpbrk(optarg, " \r\n\t") || !*optarg)
				fail_usage("bad --ehlo '%s'", optarg);
			snprintf(opts.ehlo, sizeof(opts.ehlo), "%s", optarg);
			break;
		case O_TIMEOUT: opts.timeout = parse_pos_double(optarg, "--timeout"); break;
		case 't': opts.threads = (unsigned)parse_u64(optarg, "--threads", LOAD_MAX_THREADS); break;
		case O_CPUS: parse_cpus(optarg); break;
		case O_EXPECT_REJECT: opts.expect_reject = true; break;
		case O_JSON: opts.json = optarg; break;
		case O_VERIFY: opts.verify = optarg; break;
		case 'q': opts.quiet = true; break;
		case 'h': usage(stdout); exit(0);
		case O_VERSION: printf("ringmx-load %s\n", RINGMX_VERSION); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	for (int i = optind; i < argc; i++)
		parse_target(argv[i]);
	if (!opts.ntargets) {
		usage(stderr);
		exit(2);
	}
	if (opts.threads == 0 || opts.connections == 0 || opts.rcpts == 0)
		fail_usage("%s", "--threads, --connections and --rcpts must be at least 1");
	if (!messages_set && opts.duration == 0)
		opts.messages = 10000;
	if (messages_set && opts.messages == 0)
		fail_usage("%s", "--messages must be at least 1");
	if (tls_opt && opts.tls == LOAD_TLS_NONE)
		fail_usage("%s needs --tls or --starttls", tls_opt);
	if (opts.source_set) {
		for (unsigned i = 0; i < opts.ntargets; i++)
			if (opts.targets[i].ss.ss_family != AF_INET)
				fail_usage("--source is IPv4 but target '%s' is not", opts.targets[i].text);
	}
}

/* --connections sockets plus the rings, the manifest and stdio. */
static void raise_nofile(void)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)opts.connections + 4 * opts.threads + 64;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur >= need)
		return;
	if (rl.rlim_max < need) {
		struct rlimit up = { need, need };
		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < need)
		fprintf(stderr, "ringmx-load: warning: RLIMIT_NOFILE is %llu, %llu needed for %u connections\n",
		        (unsigned long long)rl.rlim_cur, (unsigned long long)need, opts.connections);
}

static void on_signal(int sig)
{
	(void)sig;
	__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
}

static void *thread_entry(void *arg)
{
	struct load_thread *t = arg;
	load_thread_main(t);
	t->end_ns = load_now_ns();
	__atomic_add_fetch(&finished_count, 1, __ATOMIC_RELEASE);
	return NULL;
}

static double rusage_cpu(struct rusage *ru, double *user, double *sys)
{
	*user = (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6;
	*sys = (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
	return *user + *sys;
}

static void progress(uint64_t now, uint64_t *last_done, uint64_t *last_ns)
{
	uint64_t acc = 0, done = 0, infl = 0, err = 0;
	for (unsigned i = 0; i < opts.threads; i++) {
		acc += __atomic_load_n(&threads[i].pub_accepted, __ATOMIC_RELAXED);
		done += __atomic_load_n(&threads[i].pub_done, __ATOMIC_RELAXED);
		infl += __atomic_load_n(&threads[i].pub_inflight, __ATOMIC_RELAXED);
		err += __atomic_load_n(&threads[i].pub_errors, __ATOMIC_RELAXED);
	}
	double dt = (double)(now - *last_ns) / 1e9;
	double rate = dt > 0 ? (double)(done - *last_done) / dt : 0;
	fprintf(stderr, "\r%7.1fs  %9.0f msgs/s  accepted %llu  in-flight %llu  errors %llu\033[K",
	        (double)(now - load_run.t0_ns) / 1e9, rate, (unsigned long long)acc,
	        (unsigned long long)infl, (unsigned long long)err);
	*last_done = done;
	*last_ns = now;
}

struct summary {
	struct load_stats st;
	double elapsed, cpu, cpu_user, cpu_sys;
	int fatal;
	const char *fatal_msg;
};

static const double pct_q[] = { 0.50, 0.90, 0.99, 0.999 };
static const char *pct_name[] = { "p50", "p90", "p99", "p99.9" };
static const char *tls_mode_name[] = { "none", "starttls", "implicit" };

static void print_text(const struct summary *s)
{
	const struct load_stats *st = &s->st;
	double mps = s->elapsed > 0 ? (double)st->accepted / s->elapsed : 0;
	double mbs = s->elapsed > 0 ? (double)st->msg_bytes / s->elapsed / 1e6 : 0;
	FILE *f = stderr;
	fprintf(f, "ringmx-load: %u connection%s, %u thread%s, %s%s%s, size ",
	        opts.connections, opts.connections == 1 ? "" : "s", opts.threads,
	        opts.threads == 1 ? "" : "s", opts.bdat ? "BDAT" : "DATA",
	        opts.pipelining ? ", pipelining" : ", no pipelining",
	        opts.per_conn ? "" : ", persistent connections");
	if (opts.size_min == opts.size_max)
		fprintf(f, "%llu", (unsigned long long)opts.size_min);
	else
		fprintf(f, "%llu-%llu", (unsigned long long)opts.size_min, (unsigned long long)opts.size_max);
	if (opts.per_conn)
		fprintf(f, ", %u msg/conn", opts.per_conn);
	if (opts.rate > 0)
		fprintf(f, ", rate %.0f/s", opts.rate);
	if (opts.tls != LOAD_TLS_NONE)
		fprintf(f, ", %s%s", opts.tls == LOAD_TLS_IMPLICIT ? "implicit TLS" : "STARTTLS",
		        opts.tls_resume ? " with resumption" : "");
	fprintf(f, "\n");
	fprintf(f, "  messages     %llu attempted, %llu accepted, %llu rejected, %llu failed",
	        (unsigned long long)st->attempted, (unsigned long long)st->accepted,
	        (unsigned long long)st->rejected, (unsigned long long)st->failed);
	if (opts.messages > st->attempted)
		fprintf(f, ", %llu never started", (unsigned long long)(opts.messages - st->attempted));
	fprintf(f, "\n");
	fprintf(f, "  throughput   %.0f msgs/s, %.2f MB/s of message data, %.3f s elapsed\n",
	        mps, mbs, s->elapsed);
	fprintf(f, "  latency      ");
	for (unsigned i = 0; i < 4; i++)
		fprintf(f, "%s %.3f ms  ", pct_name[i], (double)hist_percentile(&st->hist, pct_q[i]) / 1e6);
	fprintf(f, "max %.3f ms  (%s to final reply)\n", (double)st->hist.max / 1e6,
	        opts.rate > 0 ? "intended start" : "MAIL sent");
	fprintf(f, "  replies      ");
	bool any = false;
	for (unsigned c = 0; c < LOAD_CODES; c++) {
		if (st->codes[c]) {
			fprintf(f, "%s%u: %llu", any ? ", " : "", c, (unsigned long long)st->codes[c]);
			any = true;
		}
	}
	fprintf(f, "%s\n", any ? "" : "none");
	fprintf(f, "  connections  %llu opened, %llu connect errors, %llu timeouts, %llu disconnects, "
	        "%llu protocol errors, %llu refused sessions\n",
	        (unsigned long long)st->connections, (unsigned long long)st->connect_errors,
	        (unsigned long long)st->timeouts, (unsigned long long)st->disconnects,
	        (unsigned long long)st->protocol_errors, (unsigned long long)st->session_errors);
	if (opts.tls != LOAD_TLS_NONE) {
		fprintf(f, "  tls          %llu handshakes (%llu resumed, %llu full), %llu failed%s\n",
		        (unsigned long long)st->tls_handshakes, (unsigned long long)st->tls_resumed,
		        (unsigned long long)(st->tls_handshakes - st->tls_resumed),
		        (unsigned long long)st->tls_failures,
		        opts.tls_verify ? "" : ", certificates not verified");
		fprintf(f, "  handshake    p50 %.3f ms  p99 %.3f ms  max %.3f ms  (ClientHello to Finished)\n",
		        (double)hist_percentile(&st->tls_hist, 0.50) / 1e6,
		        (double)hist_percentile(&st->tls_hist, 0.99) / 1e6, (double)st->tls_hist.max / 1e6);
		for (unsigned i = 0; i < st->tls_nseen; i++)
			fprintf(f, "  negotiated   %s: %llu\n", st->tls_seen[i].name,
			        (unsigned long long)st->tls_seen[i].n);
		if (st->tls_error[0])
			fprintf(f, "  tls error    %s\n", st->tls_error);
	}
	if (st->rcpt_rejected)
		fprintf(f, "  recipients   %llu refused\n", (unsigned long long)st->rcpt_rejected);
	fprintf(f, "  cpu          %.3f s (user %.3f, sys %.3f), %.2f us/message\n", s->cpu,
	        s->cpu_user, s->cpu_sys, st->attempted ? s->cpu * 1e6 / (double)st->attempted : 0);
	if (st->lockstep_sessions)
		fprintf(f, "  note         %llu sessions ran without pipelining: the server did not offer PIPELINING\n",
		        (unsigned long long)st->lockstep_sessions);
	if (st->enobufs)
		fprintf(f, "  note         %llu ENOBUFS re-arms of multishot recv\n", (unsigned long long)st->enobufs);
}

static void json_str(FILE *f, const char *p)
{
	fputc('"', f);
	for (; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if ((unsigned char)*p < ' ')
			fprintf(f, "\\u%04x", (unsigned char)*p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

static void write_json_tls(FILE *f, const struct load_stats *st)
{
	if (opts.tls == LOAD_TLS_NONE) {
		fprintf(f, "\"tls\":null,");
		return;
	}
	fprintf(f, "\"tls\":{\"mode\":\"%s\",\"handshakes\":%llu,\"handshake_failures\":%llu,"
	        "\"resumed\":%llu,\"full\":%llu,\"verified\":%s,\"handshake_us\":{",
	        tls_mode_name[opts.tls], (unsigned long long)st->tls_handshakes,
	        (unsigned long long)st->tls_failures, (unsigned long long)st->tls_resumed,
	        (unsigned long long)(st->tls_handshakes - st->tls_resumed),
	        opts.tls_verify ? "true" : "false");
	for (unsigned i = 0; i < 4; i++)
		fprintf(f, "\"%s\":%.1f,", pct_name[i], (double)hist_percentile(&st->tls_hist, pct_q[i]) / 1e3);
	fprintf(f, "\"max\":%.1f,\"mean\":%.1f,\"count\":%llu},\"negotiated\":{",
	        (double)st->tls_hist.max / 1e3,
	        st->tls_hist.count ? (double)st->tls_hist.sum / (double)st->tls_hist.count / 1e3 : 0.0,
	        (unsigned long long)st->tls_hist.count);
	for (unsigned i = 0; i < st->tls_nseen; i++) {
		fprintf(f, "%s", i ? "," : "");
		json_str(f, st->tls_seen[i].name);
		fprintf(f, ":%llu", (unsigned long long)st->tls_seen[i].n);
	}
	fprintf(f, "},\"error\":");
	if (st->tls_error[0])
		json_str(f, st->tls_error);
	else
		fprintf(f, "null");
	fprintf(f, "},");
}

static void write_json(const struct summary *s)
{
	FILE *f = strcmp(opts.json, "-") ? fopen(opts.json, "w") : stdout;
	if (!f) {
		perror(opts.json);
		return;
	}
	const struct load_stats *st = &s->st;
	double mps = s->elapsed > 0 ? (double)st->accepted / s->elapsed : 0;
	fprintf(f, "{\"tool\":\"ringmx-load\",\"version\":\"%s\",", RINGMX_VERSION);
	fprintf(f, "\"config\":{\"connections\":%u,\"threads\":%u,\"messages\":%llu,\"duration_s\":%g,"
	        "\"per_connection\":%u,\"size_min\":%llu,\"size_max\":%llu,\"rcpts\":%u,"
	        "\"pipelining\":%s,\"bdat\":%s,\"proxy\":%d,\"rate\":%g,\"targets\":[",
	        opts.connections, opts.threads, (unsigned long long)opts.messages, opts.duration,
	        opts.per_conn, (unsigned long long)opts.size_min, (unsigned long long)opts.size_max,
	        opts.rcpts, opts.pipelining ? "true" : "false", opts.bdat ? "true" : "false",
	        (int)opts.proxy, opts.rate);
	for (unsigned i = 0; i < opts.ntargets; i++)
		fprintf(f, "%s\"%s\"", i ? "," : "", opts.targets[i].text);
	fprintf(f, "],\"tls\":\"%s\",\"tls_version\":\"%s\",\"tls_resume\":%s,\"sni\":",
	        tls_mode_name[opts.tls],
	        opts.tls_version == 12 ? "1.2" : opts.tls_version == 13 ? "1.3" : "any",
	        opts.tls_resume ? "true" : "false");
	if (opts.sni)
		json_str(f, opts.sni);
	else
		fprintf(f, "null");
	fprintf(f, ",\"tls_ciphers\":");
	if (opts.tls_ciphers)
		json_str(f, opts.tls_ciphers);
	else
		fprintf(f, "null");
	fprintf(f, "},");
	fprintf(f, "\"requested\":%llu,", (unsigned long long)opts.messages);
	fprintf(f, "\"messages\":%llu,\"accepted\":%llu,\"rejected\":%llu,\"failed\":%llu,",
	        (unsigned long long)st->attempted, (unsigned long long)st->accepted,
	        (unsigned long long)st->rejected, (unsigned long long)st->failed);
	fprintf(f, "\"elapsed_s\":%.6f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"bytes_out\":%llu,",
	        s->elapsed, mps, s->elapsed > 0 ? (double)st->msg_bytes / s->elapsed / 1e6 : 0,
	        (unsigned long long)st->bytes_out);
	fprintf(f, "\"latency_us\":{");
	for (unsigned i = 0; i < 4; i++)
		fprintf(f, "\"%s\":%.1f,", pct_name[i], (double)hist_percentile(&st->hist, pct_q[i]) / 1e3);
	fprintf(f, "\"max\":%.1f,\"mean\":%.1f,\"count\":%llu,\"from\":\"%s\"},",
	        (double)st->hist.max / 1e3,
	        st->hist.count ? (double)st->hist.sum / (double)st->hist.count / 1e3 : 0.0,
	        (unsigned long long)st->hist.count, opts.rate > 0 ? "intended" : "mail");
	fprintf(f, "\"codes\":{");
	bool any = false;
	for (unsigned c = 0; c < LOAD_CODES; c++) {
		if (st->codes[c]) {
			fprintf(f, "%s\"%u\":%llu", any ? "," : "", c, (unsigned long long)st->codes[c]);
			any = true;
		}
	}
	fprintf(f, "},\"rcpt_rejected\":%llu,\"connections_opened\":%llu,\"connect_errors\":%llu,"
	        "\"timeouts\":%llu,\"disconnects\":%llu,\"protocol_errors\":%llu,\"session_errors\":%llu,"
	        "\"lockstep_sessions\":%llu,\"enobufs\":%llu,",
	        (unsigned long long)st->rcpt_rejected, (unsigned long long)st->connections,
	        (unsigned long long)st->connect_errors, (unsigned long long)st->timeouts,
	        (unsigned long long)st->disconnects, (unsigned long long)st->protocol_errors,
	        (unsigned long long)st->session_errors, (unsigned long long)st->lockstep_sessions,
	        (unsigned long long)st->enobufs);
	write_json_tls(f, st);
	fprintf(f, "\"cpu_s\":%.6f,\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,\"cpu_us_per_msg\":%.3f,",
	        s->cpu, s->cpu_user, s->cpu_sys,
	        st->attempted ? s->cpu * 1e6 / (double)st->attempted : 0.0);
	fprintf(f, "\"error\":");
	if (s->fatal) {
		json_str(f, s->fatal_msg);
	} else {
		fprintf(f, "null");
	}
	fprintf(f, "}\n");
	if (f != stdout)
		fclose(f);
	else
		fflush(f);
}

static void merge_stats(struct load_stats *dst, const struct load_stats *src)
{
	const uint64_t *s = (const uint64_t *)src;
	uint64_t *d = (uint64_t *)dst;
	/* every field before hist is a uint64_t counter */
	size_t n = offsetof(struct load_stats, hist) / sizeof(uint64_t);
	for (size_t i = 0; i < n; i++)
		d[i] += s[i];
	hist_merge(&dst->hist, &src->hist);
	hist_merge(&dst->tls_hist, &src->tls_hist);
	for (unsigned i = 0; i < src->tls_nseen; i++) {
		unsigned j = 0;
		while (j < dst->tls_nseen && strcmp(dst->tls_seen[j].name, src->tls_seen[i].name))
			j++;
		if (j == dst->tls_nseen) {
			if (j == LOAD_TLS_SEEN)
				continue;
			dst->tls_seen[dst->tls_nseen++] = src->tls_seen[i];
		} else {
			dst->tls_seen[j].n += src->tls_seen[i].n;
		}
	}
	if (!dst->tls_error[0])
		memcpy(dst->tls_error, src->tls_error, sizeof(dst->tls_error));
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	load_run.pid = getpid();
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if (opts.tls != LOAD_TLS_NONE) {
		char err[256];
		if (load_tls_init(&opts, err, sizeof(err)) < 0) {
			fprintf(stderr, "ringmx-load: %s\n", err);
			return 2;
		}
	}
	if (load_body_build(&body, opts.size_min, opts.size_max) < 0) {
		fprintf(stderr, "ringmx-load: cannot allocate a %llu-byte body template\n",
		        (unsigned long long)opts.size_max);
		return 2;
	}
	if (opts.verify) {
		load_run.manifest_fd = open(opts.verify, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (load_run.manifest_fd < 0) {
			perror(opts.verify);
			return 2;
		}
	}
	threads = calloc(opts.threads, sizeof(*threads));
	if (!threads)
		return 2;

	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	load_run.t0_ns = load_now_ns();
	if (opts.duration > 0)
		load_run.deadline_ns = load_run.t0_ns + (uint64_t)(opts.duration * 1e9);

	unsigned first = 0;
	for (unsigned i = 0; i < opts.threads; i++) {
		struct load_thread *t = &threads[i];
		t->id = i;
		t->o = &opts;
		t->body = &body;
		t->nconns = opts.connections / opts.threads + (i < opts.connections % opts.threads);
		t->first_conn = first;
		first += t->nconns;
		if (opts.messages) {
			t->budget = opts.messages / opts.threads + (i < opts.messages % opts.threads);
			if (t->nconns > t->budget)
				t->nconns = (unsigned)t->budget; /* no connection without a message */
		} else {
			t->budget = UINT64_MAX;
		}
		t->cpu = opts.ncpus ? opts.cpus[i % opts.ncpus] : -1;
		hist_init(&t->st.hist);
		hist_init(&t->st.tls_hist);
		int rc = pthread_create(&t->th, NULL, thread_entry, t);
		if (rc) {
			fprintf(stderr, "ringmx-load: pthread_create: %s\n", strerror(rc));
			return 2;
		}
	}

	bool tty = isatty(STDERR_FILENO) && !opts.quiet;
	uint64_t last_ns = load_run.t0_ns, last_done = 0, next_print = load_run.t0_ns + 1000000000ull;
	while (__atomic_load_n(&finished_count, __ATOMIC_ACQUIRE) < (int)opts.threads) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		uint64_t now = load_now_ns();
		if (tty && now >= next_print) {
			progress(now, &last_done, &last_ns);
			next_print += 1000000000ull;
		}
	}
	if (tty)
		fprintf(stderr, "\r\033[K");

	struct summary s;
	memset(&s, 0, sizeof(s));
	hist_init(&s.st.hist);
	hist_init(&s.st.tls_hist);
	uint64_t t1 = load_run.t0_ns;
	for (unsigned i = 0; i < opts.threads; i++) {
		pthread_join(threads[i].th, NULL);
		if (threads[i].end_ns > t1)
			t1 = threads[i].end_ns; /* the run ends with its last worker */
		merge_stats(&s.st, &threads[i].st);
		if (threads[i].fatal && !s.fatal) {
			s.fatal = threads[i].fatal;
			s.fatal_msg = threads[i].fatal_msg;
		}
	}
	getrusage(RUSAGE_SELF, &ru1);
	double u0, s0, u1, s1;
	rusage_cpu(&ru0, &u0, &s0);
	rusage_cpu(&ru1, &u1, &s1);
	s.cpu_user = u1 - u0;
	s.cpu_sys = s1 - s0;
	s.cpu = s.cpu_user + s.cpu_sys;
	s.elapsed = (double)(t1 - load_run.t0_ns) / 1e9;

	if (s.fatal)
		fprintf(stderr, "ringmx-load: error: %s\n", s.fatal_msg);
	if (!opts.quiet)
		print_text(&s);
	if (opts.json)
		write_json(&s);
	if (load_run.manifest_fd >= 0)
		close(load_run.manifest_fd);
	load_body_free(&body);
	free(threads);
	if (opts.tls != LOAD_TLS_NONE)
		load_tls_cleanup();

	if (s.fatal)
		return 2;
	const struct load_stats *st = &s.st;
	if (st->failed || st->connect_errors || st->timeouts || st->disconnects || st->protocol_errors ||
	    st->tls_failures)
		return 1;
	if (!opts.expect_reject && (st->accepted < st->attempted || st->session_errors))
		return 1;
	if (!opts.expect_reject && st->attempted == 0)
		return 1;
	return 0;
}
