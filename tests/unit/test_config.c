/*
 * test_config.c - unit tests for engine/config/config.c: defaults, every key with
 * valid and invalid values (exact "file:line: key: problem" text),
 * continuation lines, comments, the command line and its precedence, and
 * the print -> parse -> print round trip.
 *
 * The relay keys (relay_host, transport_maps and the rest) have their own
 * section at the end: map files, routing, cross-key checks.
 *
 * Owner: the configuration module. Files are written under a mkdtemp()
 * directory created in the group setup and removed in the teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ringmx/config.h"
#include "relay_route.h"

#define S(n) ((uint64_t)(n) * 1000000000ull)

static char tmpdir[64];
/* Every file write_file() created, for the teardown. */
static char written[32][64];
static size_t nwritten;

/* ---- helpers ---- */

static struct config *
load(const char *text, char *err)
{
	return config_load_string("t.conf", text, strlen(text), NULL, err);
}

/* text must load. */
static struct config *
ok(const char *text)
{
	char err[CONFIG_ERR_MAX] = "";
	struct config *cfg = load(text, err);

	if (cfg == NULL)
		fail_msg("unexpected error: %s\n--- input\n%s", err, text);
	return cfg;
}

/* text must fail with exactly msg. */
static void
bad(const char *text, const char *msg)
{
	char err[CONFIG_ERR_MAX] = "";
	struct config *cfg = load(text, err);

	if (cfg != NULL) {
		config_free(cfg);
		fail_msg("loaded, expected: %s\n--- input\n%s", msg, text);
	}
	assert_string_equal(err, msg);
}

/* One key = value must fail with "t.conf:1: key: problem". */
static void
bad1(const char *key, const char *value, const char *problem)
{
	char text[1100], msg[CONFIG_ERR_MAX + 1100];

	snprintf(text, sizeof(text), "%s = %s\n", key, value);
	snprintf(msg, sizeof(msg), "t.conf:1: %s: %s", key, problem);
	bad(text, msg);
}

static char *
print(const struct config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	config_print(cfg, f);
	assert_int_equal(fclose(f), 0);
	return buf;
}

static int
parse_argv(char **err_out, struct config_args *a, ...)
{
	static char err[CONFIG_ERR_MAX];
	char *argv[64];
	int argc = 0;
	va_list ap;
	const char *s;

	argv[argc++] = (char *)"ringmxd";
	va_start(ap, a);
	while ((s = va_arg(ap, const char *)) != NULL)
		argv[argc++] = (char *)s;
	va_end(ap);
	argv[argc] = NULL;
	err[0] = '\0';
	*err_out = err;
	return config_parse_args(argc, argv, a, err);
}
#define ARGS(a, ...) parse_argv(&perr, a, __VA_ARGS__, (const char *)NULL)

static const char *
write_file(const char *name, const char *text)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	{
		size_t i;

		for (i = 0; i < nwritten && strcmp(written[i], name) != 0; i++)
			;
		if (i == nwritten) {
			assert_true(nwritten < sizeof(written) / sizeof(written[0]));
			snprintf(written[nwritten++], sizeof(written[0]), "%s", name);
		}
	}
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
	return path;
}

static unsigned
affinity_count(void)
{
	cpu_set_t set;
	unsigned n;

	assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
	n = (unsigned)CPU_COUNT(&set);
	return n > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : n;
}

static uint16_t
lport(const struct listener_conf *l)
{
	if (l->addr.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&l->addr)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)&l->addr)->sin6_port);
}

/* ---- defaults ---- */

static void
test_defaults(void **state)
{
	char err[CONFIG_ERR_MAX], host[256] = "";
	struct config *cfg = config_load(NULL, err);
	const struct sockaddr_in *s4;
	size_t i;

	(void)state;
	assert_non_null(cfg); /* defaults always load, whatever the host is called */
	assert_string_equal(cfg->path, "");
	assert_int_equal(cfg->nlisteners, 1);
	assert_string_equal(cfg->listeners[0].text, "127.0.0.1:2525");
	s4 = (const struct sockaddr_in *)&cfg->listeners[0].addr;
	assert_int_equal(s4->sin_family, AF_INET);
	assert_int_equal(ntohl(s4->sin_addr.s_addr), INADDR_LOOPBACK);
	assert_int_equal(ntohs(s4->sin_port), 2525);
	assert_int_equal(cfg->listeners[0].addrlen, sizeof(struct sockaddr_in));
	assert_int_equal(cfg->listeners[0].tls, LISTENER_TLS_NONE);
	assert_false(cfg->listeners[0].proxy);

	assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
	/* The system name, or "localhost" when it is not a valid domain. */
	if (strcmp(cfg->smtp.hostname, "localhost") != 0)
		assert_string_equal(cfg->smtp.hostname, host);
	assert_int_equal(cfg->ndomains, 2);
	assert_string_equal(cfg->domain_list[0], "localhost");
	assert_string_equal(cfg->domain_list[1], "example.test");
	assert_ptr_equal(cfg->smtp.domains, cfg->domain_list);
	assert_int_equal(cfg->smtp.ndomains, 2);

	assert_int_equal(cfg->workers, affinity_count());
	assert_int_equal(cfg->ncpus, 0);
	assert_int_equal(cfg->ncpu_list, 0);
	for (i = 0; i < CONFIG_MAX_WORKERS; i++)
		assert_int_equal(cfg->cpus[i], -1);
	assert_int_equal(cfg->max_connections, 16384);
	assert_int_equal(cfg->recv_buffers, 4096);
	assert_int_equal(cfg->recv_buffer_size, 16384);
	assert_int_equal(cfg->listen_backlog, 4096);
	assert_int_equal(cfg->sink, SINK_KIND_SPOOL);
	assert_string_equal(cfg->spool_dir, "/var/spool/ringmx");
	assert_int_equal(cfg->segment_size, 64 << 20);
	assert_int_equal(cfg->durability, SPOOL_DURABILITY_FSYNC);
	assert_int_equal(cfg->commit_delay, 1000000);
	assert_int_equal(cfg->commit_size, 4 << 20);
	assert_int_equal(cfg->spool_memory, 256 << 20);
	assert_int_equal(cfg->smtp.message_size_limit, 10240000);
	assert_int_equal(cfg->smtp.recipient_limit, 1000);
	assert_int_equal(cfg->smtp.error_limit, 20);
	assert_int_equal(cfg->smtp.junk_limit, 100);
	assert_int_equal(cfg->smtp.hop_count_limit, 50);
	assert_int_equal(cfg->smtp.bare_newline, SMTP_BARE_NEWLINE_NORMALIZE);
	assert_int_equal(cfg->smtp.greeting_timeout, S(300));
	assert_int_equal(cfg->smtp.command_timeout, S(300));
	assert_int_equal(cfg->smtp.data_timeout, S(180));
	assert_int_equal(cfg->smtp.data_end_timeout, S(600));
	assert_int_equal(cfg->smtp.session_timeout, S(3600));
	assert_int_equal(cfg->shutdown_timeout, S(30));
	assert_int_equal(cfg->proxy_timeout, S(5));
	assert_false(cfg->smtp.starttls);
	config_free(cfg);
	config_free(NULL);

	/* An empty file and one of comments only are the defaults too. */
	cfg = ok("");
	assert_string_equal(cfg->path, "t.conf");
	assert_int_equal(cfg->nlisteners, 1);
	config_free(cfg);
	cfg = ok("# nothing\n\n   \n#x = y\n");
	assert_int_equal(cfg->ndomains, 2);
	config_free(cfg);
}

/* ---- every key, valid ---- */

static void
test_all_keys(void **state)
{
	struct config *cfg = ok("listen = 192.0.2.1:25\n"
				"listen = [2001:db8::1]:587\n"
				"hostname = mx1.Example.NET\n"
				"domains = Example.COM, .sub.example.org\n"
				"workers = 3\n"
				"cpus = 1\n"
				"max_connections = 1048576\n"
				"recv_buffers = 32768\n"
				"recv_buffer_size = 64k\n"
				"listen_backlog = 65535\n"
				"sink = discard\n"
				"spool_dir = /srv/spool dir\n"
				"segment_size = 1g\n"
				"durability = none\n"
				"commit_delay = 250us\n"
				"commit_size = 4k\n"
				"spool_memory = 1m\n"
				"message_size_limit = 50m\n"
				"recipient_limit = 1\n"
				"error_limit = 1000000\n"
				"junk_limit = 7\n"
				"bare_newline = reject\n"
				"greeting_timeout = 1\n"
				"command_timeout = 5m\n"
				"data_timeout = 2h\n"
				"data_end_timeout = 1d\n"
				"session_timeout = 7d\n"
				"shutdown_timeout = 0\n");

	(void)state;
	assert_int_equal(cfg->nlisteners, 2);
	assert_string_equal(cfg->listeners[0].text, "192.0.2.1:25");
	assert_string_equal(cfg->listeners[1].text, "[2001:db8::1]:587");
	assert_int_equal(cfg->listeners[1].addr.ss_family, AF_INET6);
	assert_int_equal(cfg->listeners[1].addrlen, sizeof(struct sockaddr_in6));
	assert_int_equal(lport(&cfg->listeners[1]), 587);
	assert_string_equal(cfg->smtp.hostname, "mx1.Example.NET");
	assert_int_equal(cfg->ndomains, 2);
	assert_string_equal(cfg->smtp.domains[0], "example.com");
	assert_string_equal(cfg->smtp.domains[1], ".sub.example.org");
	assert_int_equal(cfg->workers, 3);
	assert_int_equal(cfg->ncpus, 3);
	assert_int_equal(cfg->cpus[0], 1);
	assert_int_equal(cfg->cpus[2], 1);
	assert_int_equal(cfg->cpus[3], -1);
	assert_int_equal(cfg->max_connections, 1048576);
	assert_int_equal(cfg->recv_buffers, 32768);
	assert_int_equal(cfg->recv_buffer_size, 65536);
	assert_int_equal(cfg->listen_backlog, 65535);
	assert_int_equal(cfg->smtp.message_size_limit, 50ull << 20);
	assert_int_equal(cfg->smtp.recipient_limit, 1);
	assert_int_equal(cfg->smtp.error_limit, 1000000);
	assert_int_equal(cfg->smtp.junk_limit, 7);
	assert_int_equal(cfg->smtp.bare_newline, SMTP_BARE_NEWLINE_REJECT);
	assert_int_equal(cfg->smtp.greeting_timeout, S(1));
	assert_int_equal(cfg->smtp.command_timeout, S(300));
	assert_int_equal(cfg->smtp.data_timeout, S(7200));
	assert_int_equal(cfg->smtp.data_end_timeout, S(86400));
	assert_int_equal(cfg->smtp.session_timeout, S(7 * 86400));
	assert_int_equal(cfg->shutdown_timeout, 0);
	config_free(cfg);
}

/* ---- sizes, durations, numbers ---- */

/* Fair sharing (ringmx/spool_share.h): one message of message_size_limit
 * must fit the large messages' half of spool_memory; send_timeout. */
static void
test_spool_share(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = ok("");
	assert_int_equal(cfg->send_timeout, S(60));
	config_free(cfg);
	cfg = ok("send_timeout = 5s\n");
	assert_int_equal(cfg->send_timeout, S(5));
	config_free(cfg);
	bad1("send_timeout", "0", "out of range: '0' (1s..7d)");
	/* 400k + 10 x 260 + 2048 + 64k = 479784 bytes, twice that fits 1m. */
	cfg = ok("spool_memory = 1m\nmessage_size_limit = 400k\nrecipient_limit = 10\n");
	config_free(cfg);
	bad("spool_memory = 1m\nmessage_size_limit = 500k\nrecipient_limit = 10\n",
	    "t.conf: spool_memory: 1048576 bytes cannot stage a message of message_size_limit "
	    "(512000 bytes): large messages get spool_memory / 2, and one needs "
	    "message_size_limit + recipient_limit x 260 (at most 67108864) + 67584 bytes = "
	    "582184; raise spool_memory to at least 1164368 or lower message_size_limit");
	/* The defaults' 10240000 bytes and 1000 recipients need 21 MiB. */
	bad("spool_memory = 20m\n",
	    "t.conf: spool_memory: 20971520 bytes cannot stage a message of message_size_limit "
	    "(10240000 bytes): large messages get spool_memory / 2, and one needs "
	    "message_size_limit + recipient_limit x 260 (at most 67108864) + 67584 bytes = "
	    "10567584; raise spool_memory to at least 21135168 or lower message_size_limit");
	/* Nothing is staged with sink = discard. */
	cfg = ok("sink = discard\nspool_memory = 1m\n");
	config_free(cfg);
}

static void
test_sizes(void **state)
{
	static const struct {
		const char *v;
		uint64_t want;
	} good[] = {
		{"1", 1},         {"1024", 1024},          {"10k", 10240},     {"10K", 10240},
		{"3m", 3 << 20},  {"3M", 3 << 20},         {"2g", 2ull << 30}, {"1024G", 1ull << 40},
		{"007", 7},       {"  12k  ", 12288},
	};
	char text[128];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct config *cfg;

		/* sink = discard: the spool's staging check (test_spool_share)
		 * is not what is tested here. */
		snprintf(text, sizeof(text), "sink = discard\nmessage_size_limit = %s\n", good[i].v);
		cfg = ok(text);
		assert_int_equal(cfg->smtp.message_size_limit, good[i].want);
		config_free(cfg);
	}
	bad1("message_size_limit", "10QB", "not a size: '10QB'");
	bad1("message_size_limit", "-1", "not a size: '-1'");
	bad1("message_size_limit", "+1", "not a size: '+1'");
	bad1("message_size_limit", "1.5m", "not a size: '1.5m'");
	bad1("message_size_limit", "10 k", "not a size: '10 k'");
	bad1("message_size_limit", "k", "not a size: 'k'");
	bad1("message_size_limit", "10kk", "not a size: '10kk'");
	bad1("message_size_limit", "0x10", "not a size: '0x10'");
	bad1("message_size_limit", "0", "out of range: '0' (1..1099511627776)");
	bad1("message_size_limit", "1025G", "out of range: '1025G' (1..1099511627776)");
	bad1("message_size_limit", "18446744073709551616",
	     "out of range: '18446744073709551616' (1..1099511627776)");
	bad1("message_size_limit", "17179869184G",
	     "out of range: '17179869184G' (1..1099511627776)");
	bad1("message_size_limit", "99999999999999999999999k",
	     "out of range: '99999999999999999999999k' (1..1099511627776)");
	bad1("recv_buffer_size", "4095", "out of range: '4095' (4096..1048576)");
	bad1("recv_buffer_size", "2m", "out of range: '2m' (4096..1048576)");
	bad("message_size_limit =\n", "t.conf:1: message_size_limit: empty value");
}

static void round_trip(const char *text);

static void
test_durations(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = ok("greeting_timeout = 45\ncommand_timeout = 45s\ndata_timeout = 3m\n"
		 "data_end_timeout = 1h\nsession_timeout = 2d\nshutdown_timeout = 0s\n");
	assert_int_equal(cfg->smtp.greeting_timeout, S(45));
	assert_int_equal(cfg->smtp.command_timeout, S(45));
	assert_int_equal(cfg->smtp.data_timeout, S(180));
	assert_int_equal(cfg->smtp.data_end_timeout, S(3600));
	assert_int_equal(cfg->smtp.session_timeout, S(2 * 86400));
	assert_int_equal(cfg->shutdown_timeout, 0);
	config_free(cfg);

	/* Sub-second units (commit_delay) and their printing. */
	cfg = ok("commit_delay = 2ms\ngreeting_timeout = 1500ms\nshutdown_timeout = 7us\n");
	assert_int_equal(cfg->commit_delay, 2000000);
	assert_int_equal(cfg->smtp.greeting_timeout, 1500000000);
	assert_int_equal(cfg->shutdown_timeout, 7000);
	config_free(cfg);
	round_trip("commit_delay = 250us\nshutdown_timeout = 1500ms\n");

	bad1("greeting_timeout", "5x", "not a duration: '5x'");
	bad1("greeting_timeout", "5M", "not a duration: '5M'");
	bad1("greeting_timeout", "-5", "not a duration: '-5'");
	bad1("greeting_timeout", "1m30s", "not a duration: '1m30s'");
	bad1("greeting_timeout", "500ms", "out of range: '500ms' (1s..7d)");
	bad1("greeting_timeout", "1msx", "not a duration: '1msx'");
	bad1("greeting_timeout", "0", "out of range: '0' (1s..7d)");
	bad1("proxy_timeout", "500ms", "out of range: '500ms' (1s..1h)");
	bad1("proxy_timeout", "2h", "out of range: '2h' (1s..1h)");
	bad1("proxy_timeout", "5q", "not a duration: '5q'");
	bad1("command_timeout", "0s", "out of range: '0s' (1s..7d)");
	bad1("data_timeout", "8d", "out of range: '8d' (1s..7d)");
	bad1("data_end_timeout", "604801", "out of range: '604801' (1s..7d)");
	bad1("session_timeout", "99999999999999999999d",
	     "out of range: '99999999999999999999d' (1s..7d)");
	bad1("session_timeout", "18446744073h", "out of range: '18446744073h' (1s..7d)");
	bad1("shutdown_timeout", "169h", "out of range: '169h' (0s..7d)");
	bad("data_timeout = \n", "t.conf:1: data_timeout: empty value");
}

static void
test_numbers(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = ok("recv_buffers = 16\nmax_connections = 1\nlisten_backlog = 1\n"
		 "recipient_limit = 1000000\njunk_limit = 1\nerror_limit = 1\n");
	assert_int_equal(cfg->recv_buffers, 16);
	assert_int_equal(cfg->max_connections, 1);
	config_free(cfg);
	cfg = ok("proxy_timeout = 1500ms\n");
	assert_int_equal(cfg->proxy_timeout, 1500000000);
	config_free(cfg);
	cfg = ok("hop_count_limit = 0\n"); /* 0: no loop detection */
	assert_int_equal(cfg->smtp.hop_count_limit, 0);
	config_free(cfg);
	cfg = ok("hop_count_limit = 100\n");
	assert_int_equal(cfg->smtp.hop_count_limit, 100);
	config_free(cfg);

	bad1("recv_buffers", "100", "not a power of two: '100'");
	bad1("recv_buffers", "8", "out of range: '8' (16..32768)");
	bad1("recv_buffers", "65536", "out of range: '65536' (16..32768)");
	bad1("recv_buffers", "4k", "not a number: '4k'");
	bad1("max_connections", "0", "out of range: '0' (1..1048576)");
	bad1("max_connections", "1048577", "out of range: '1048577' (1..1048576)");
	bad1("max_connections", "abc", "not a number: 'abc'");
	bad1("max_connections", "-3", "not a number: '-3'");
	bad1("listen_backlog", "65536", "out of range: '65536' (1..65535)");
	bad1("recipient_limit", "0", "out of range: '0' (1..1000000)");
	bad1("error_limit", "1e3", "not a number: '1e3'");
	bad1("junk_limit", "99999999999999999999999",
	     "out of range: '99999999999999999999999' (1..1000000)");
	bad1("hop_count_limit", "-1", "not a number: '-1'");
	bad1("hop_count_limit", "1000001", "out of range: '1000001' (0..1000000)");
	bad1("hop_count_limit", "50x", "not a number: '50x'");
	bad1("workers", "257", "out of range: '257' (0..256)");
	bad1("workers", "two", "not a number: 'two'");
	bad1("sink", "file", "not one of spool, jetstream, discard: 'file'");
	bad1("durability", "sync", "not one of fsync, none: 'sync'");
	bad1("spool_io", "mmap", "not one of auto, direct, buffered: 'mmap'");
	bad1("spool_dir", "/a\tb", "control character in path: '/a\\x09b'");
	bad1("segment_size", "1k", "out of range: '1k' (65536..1099511627776)");
	bad1("commit_size", "1k", "out of range: '1k' (4096..1073741824)");
	bad1("spool_memory", "64k", "out of range: '64k' (1048576..1099511627776)");
	bad1("commit_delay", "2s", "out of range: '2s' (0s..1s)");
	bad1("commit_delay", "1001ms", "out of range: '1001ms' (0s..1s)");
	bad1("commit_delay", "5ns", "not a duration: '5ns'");
	bad1("bare_newline", "strict", "not one of normalize, reject: 'strict'");
	bad1("bare_newline", "Reject", "not one of normalize, reject: 'Reject'");
}

/* ---- listen ---- */

static void
test_listen_valid(void **state)
{
	struct config *cfg = ok("listen = 127.0.0.1:25\n"
				"listen = *:26\n"
				"listen = [::]:27\n"
				"listen = [::1]:28 tls=none proxy=no\n"
				"listen = 10.0.0.1:29   proxy=off\ttls=none\n"
				"listen = [0:0:0:0:0:0:0:1]:30 proxy=false\n"
				"listen = 10.0.0.1:65535 proxy=0\n");
	const struct sockaddr_in *s4;
	const struct sockaddr_in6 *s6;

	(void)state;
	assert_int_equal(cfg->nlisteners, 7);
	assert_string_equal(cfg->listeners[0].text, "127.0.0.1:25");
	assert_string_equal(cfg->listeners[1].text, "0.0.0.0:26");
	s4 = (const struct sockaddr_in *)&cfg->listeners[1].addr;
	assert_int_equal(s4->sin_addr.s_addr, htonl(INADDR_ANY));
	assert_string_equal(cfg->listeners[2].text, "[::]:27");
	s6 = (const struct sockaddr_in6 *)&cfg->listeners[2].addr;
	assert_int_equal(s6->sin6_family, AF_INET6);
	assert_memory_equal(&s6->sin6_addr, &in6addr_any, sizeof(in6addr_any));
	assert_string_equal(cfg->listeners[3].text, "[::1]:28");
	assert_string_equal(cfg->listeners[5].text, "[::1]:30");
	assert_int_equal(lport(&cfg->listeners[6]), 65535);
	config_free(cfg);

	/* IPv4 and IPv6 loopback on one port are different listeners. */
	cfg = ok("listen = 127.0.0.1:25\nlisten = [::1]:25\n");
	assert_int_equal(cfg->nlisteners, 2);
	config_free(cfg);
}

static void
test_listen_invalid(void **state)
{
	char text[2048];
	size_t i, o = 0;

	(void)state;
	/* TLS on a listener needs a certificate (checked after the file, so
	 * the message names the file but no line). */
	bad("listen = 127.0.0.1:25 tls=implicit\n",
	    "t.conf: listen 127.0.0.1:25: tls=implicit needs a certificate (tls_cert and tls_key)");
	bad("listen = 127.0.0.1:25 tls=starttls\n",
	    "t.conf: listen 127.0.0.1:25: tls=starttls needs a certificate (tls_cert and tls_key)");
	bad("listen = [::1]:25 tls=required\n",
	    "t.conf: listen [::1]:25: tls=required needs a certificate (tls_cert and tls_key)");
	bad1("listen", "127.0.0.1:25 tls=bogus",
	     "not one of none, starttls, required, implicit: tls=bogus");
	bad1("listen", "127.0.0.1:25 proxy=maybe", "not a boolean: proxy=maybe");
	bad1("listen", "127.0.0.1:25 color=red", "unknown option: 'color'");
	bad1("listen", "127.0.0.1:25 tls", "not option=value: 'tls'");
	bad1("listen", "127.0.0.1:25 tls=none tls=none", "option given twice: 'tls'");
	bad1("listen", "127.0.0.1:25 proxy=no proxy=no", "option given twice: 'proxy'");
	bad1("listen", "127.0.0.1:0", "port out of range: '0' (1..65535)");
	bad1("listen", "127.0.0.1:65536", "port out of range: '65536' (1..65535)");
	bad1("listen", "127.0.0.1:99999999999999999999",
	     "port out of range: '99999999999999999999' (1..65535)");
	bad1("listen", "127.0.0.1:smtp", "not a port: 'smtp'");
	bad1("listen", "127.0.0.1:", "not a port: ''");
	bad1("listen", "127.0.0.1:-25", "not a port: '-25'");
	bad1("listen", "127.0.0.1", "not ADDRESS:PORT: '127.0.0.1'");
	bad1("listen", "[::1]", "not ADDRESS:PORT: '[::1]'");
	bad1("listen", "[::1:25", "not ADDRESS:PORT: '[::1:25'");
	bad1("listen", "::1:25", "IPv6 addresses must be in brackets: '::1'");
	bad1("listen", "[127.0.0.1]:25", "not an IPv6 address: '127.0.0.1'");
	bad1("listen", "[fe80::1%eth0]:25", "not an IPv6 address: 'fe80::1%eth0'");
	bad1("listen", "localhost:25", "not an IPv4 address: 'localhost'");
	bad1("listen", "1.2.3:25", "not an IPv4 address: '1.2.3'");
	bad1("listen", "256.1.1.1:25", "not an IPv4 address: '256.1.1.1'");
	bad1("listen", "[*]:25", "not an IPv6 address: '*'");
	bad("listen =\n", "t.conf:1: listen: empty value");
	bad("listen = 127.0.0.1:25\nlisten = 127.0.0.1:25\n",
	    "t.conf:2: listen: duplicate listener: 127.0.0.1:25");
	bad("listen = *:25\nlisten = 0.0.0.0:25\n",
	    "t.conf:2: listen: duplicate listener: 0.0.0.0:25");
	bad("listen = [::1]:25\nlisten = [0::1]:25\n",
	    "t.conf:2: listen: duplicate listener: [::1]:25");
	bad("listen = 127.0.0.1:25\n  tls=none\n",
	    "t.conf:2: listen: continuation line not allowed (only domains, cpus, recipient_maps and milters take "
	    "continuation lines)");

	for (i = 0; i <= CONFIG_MAX_LISTENERS; i++)
		o += (size_t)snprintf(text + o, sizeof(text) - o, "listen = 127.0.0.1:%zu\n",
				      1000 + i);
	bad(text, "t.conf:17: listen: too many listeners (max 16)");
	text[o - strlen("listen = 127.0.0.1:1016\n")] = '\0';
	config_free(ok(text));
}

/* The file's listen lines replace the default, and only the default. */
static void
test_listen_replaces_default(void **state)
{
	struct config *cfg = ok("listen = 10.1.1.1:2525\n");

	(void)state;
	assert_int_equal(cfg->nlisteners, 1);
	assert_string_equal(cfg->listeners[0].text, "10.1.1.1:2525");
	config_free(cfg);
	/* ...which may be listed again explicitly. */
	cfg = ok("listen = 127.0.0.1:2525\nworkers = 1\nlisten = [::1]:2525\n");
	assert_int_equal(cfg->nlisteners, 2);
	config_free(cfg);
}

/* ---- PROXY protocol: proxy=yes and proxy_trusted (docs/proxy.md) ---- */

static void
want_net(const struct proxy_cidr *c, int fam, const char *addr, unsigned prefix)
{
	uint8_t a[16] = {0};

	assert_int_equal(c->family, fam);
	assert_int_equal(c->prefix, prefix);
	assert_int_equal(inet_pton(fam, addr, a), 1);
	assert_memory_equal(c->addr, a, sizeof(a));
}

static void
test_proxy_trusted(void **state)
{
	char text[4096], err[CONFIG_ERR_MAX];
	struct config *cfg, *cfg2;
	size_t o = 0;

	(void)state;
	/* Defaults: loopback only. */
	cfg = ok("");
	assert_int_equal(cfg->proxy_trusted.n, 2);
	want_net(&cfg->proxy_trusted.net[0], AF_INET, "127.0.0.0", 8);
	want_net(&cfg->proxy_trusted.net[1], AF_INET6, "::1", 128);
	config_free(cfg);

	/* proxy=yes is accepted now. */
	cfg = ok("listen = 127.0.0.1:2526 proxy=yes\nlisten = [::1]:2526 proxy=on tls=none\n"
		 "listen = 127.0.0.1:2525\n");
	assert_true(cfg->listeners[0].proxy);
	assert_true(cfg->listeners[1].proxy);
	assert_false(cfg->listeners[2].proxy);
	config_free(cfg);
	round_trip("listen = 127.0.0.1:2526 proxy=yes\n");

	/* Lists, brackets, bare hosts, blanks and commas; lines append. */
	cfg = ok("proxy_trusted = 10.0.0.0/8, 192.0.2.7 [2001:db8::]/32,,fd00::/8\n"
		 "proxy_trusted = 0.0.0.0/0 ::/0 [::1]\n");
	assert_int_equal(cfg->proxy_trusted.n, 7);
	want_net(&cfg->proxy_trusted.net[0], AF_INET, "10.0.0.0", 8);
	want_net(&cfg->proxy_trusted.net[1], AF_INET, "192.0.2.7", 32);
	want_net(&cfg->proxy_trusted.net[2], AF_INET6, "2001:db8::", 32);
	want_net(&cfg->proxy_trusted.net[3], AF_INET6, "fd00::", 8);
	want_net(&cfg->proxy_trusted.net[4], AF_INET, "0.0.0.0", 0);
	want_net(&cfg->proxy_trusted.net[5], AF_INET6, "::", 0);
	want_net(&cfg->proxy_trusted.net[6], AF_INET6, "::1", 128);
	/* Reloadable: a different list is not a restart. */
	cfg2 = ok("");
	assert_int_equal(config_check_reload(cfg2, cfg, err), 0);
	config_free(cfg2);
	config_free(cfg);
	round_trip("proxy_trusted = 10.0.0.0/8, [2001:db8::]/32 192.0.2.1\n");
	cfg = ok("proxy_trusted = [2001:db8::]/32\n");
	{
		char *p = print(cfg);

		assert_non_null(strstr(p, "\nproxy_trusted = 2001:db8::/32\n"));
		free(p);
	}
	config_free(cfg);

	bad1("proxy_trusted", "", "empty value");
	bad1("proxy_trusted", ", ,", "empty list");
	bad1("proxy_trusted", "10.0.0.1/8", "host bits set in '10.0.0.1/8' (network/8 is meant?)");
	bad1("proxy_trusted", "2001:db8::1/32",
	     "host bits set in '2001:db8::1/32' (network/32 is meant?)");
	bad1("proxy_trusted", "10.0.0.0/33", "not a prefix length: '10.0.0.0/33' (0..32)");
	bad1("proxy_trusted", "::/129", "not a prefix length: '::/129' (0..128)");
	bad1("proxy_trusted", "10.0.0.0/", "not a prefix length: '10.0.0.0/' (0..32)");
	bad1("proxy_trusted", "10.0.0.0/-1", "not a prefix length: '10.0.0.0/-1' (0..32)");
	bad1("proxy_trusted", "10.0.0.0/8/8", "not a prefix length: '10.0.0.0/8/8' (0..32)");
	bad1("proxy_trusted", "mx.example.com", "not an IPv4 address: 'mx.example.com'");
	bad1("proxy_trusted", "010.0.0.0/8", "not an IPv4 address: '010.0.0.0/8'");
	bad1("proxy_trusted", "[10.0.0.1]", "not an IPv4 address: '[10.0.0.1]'");
	bad1("proxy_trusted", "[::1", "not a network: '[::1'");
	bad1("proxy_trusted", "fe80::1%eth0", "not an IPv6 address: 'fe80::1%eth0'");
	bad1("proxy_trusted", "10.0.0.0/8, 10.0.0.0/8", "network listed twice: '10.0.0.0/8'");
	bad1("proxy_trusted", "::1 [::1]/128", "network listed twice: '[::1]/128'");
	bad1("proxy_trusted",
	     "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd:eeee:ffff/128",
	     "not a network: '1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd...'");

	/* At most PROXY_TRUST_MAX networks. */
	o = (size_t)snprintf(text, sizeof(text), "proxy_trusted =");
	for (unsigned i = 0; i < PROXY_TRUST_MAX + 1; i++)
		o += (size_t)snprintf(text + o, sizeof(text) - o, " 10.0.%u.0/24", i);
	strcpy(text + o, "\n");
	bad(text, "t.conf:1: proxy_trusted: too many networks (max 64)");
	text[o - strlen(" 10.0.64.0/24")] = '\n';
	text[o - strlen(" 10.0.64.0/24") + 1] = '\0';
	cfg = ok(text);
	assert_int_equal(cfg->proxy_trusted.n, PROXY_TRUST_MAX);
	config_free(cfg);
}

/* ---- per-client limits (docs/defences.md) ---- */

static void
test_client_limits(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config *cfg = ok(""), *cfg2;

	(void)state;
	assert_int_equal(cfg->client_limits.connection_limit, 50);
	assert_int_equal(cfg->client_limits.connection_rate_limit, 0);
	assert_int_equal(cfg->client_limits.message_rate_limit, 0);
	assert_int_equal(cfg->client_limits.recipient_rate_limit, 0);
	assert_int_equal(cfg->client_limits.tls_handshake_rate_limit, 0);
	assert_int_equal(cfg->client_limits.rate_window, S(60));
	assert_int_equal(cfg->client_limits.ipv6_prefix, 64);
	assert_int_equal(cfg->client_limits.table_size, 65536);
	assert_int_equal(cfg->client_limits.exceptions.n, 0);
	{
		char *p = print(cfg);
		assert_null(strstr(p, "client_limit_exceptions")); /* none: no empty line */
		free(p);
	}
	config_free(cfg);

	cfg = ok("client_connection_limit = 0\nclient_connection_rate_limit = 10\n"
		 "client_message_rate_limit = 20\nclient_recipient_rate_limit = 30\n"
		 "client_tls_handshake_rate_limit = 40\nclient_rate_window = 5m\n"
		 "client_ipv6_prefix = 48\nclient_limit_exceptions = 192.0.2.0/24, [2001:db8::]/32\n"
		 "client_table_size = 1024\n");
	assert_int_equal(cfg->client_limits.connection_limit, 0);
	assert_int_equal(cfg->client_limits.connection_rate_limit, 10);
	assert_int_equal(cfg->client_limits.message_rate_limit, 20);
	assert_int_equal(cfg->client_limits.recipient_rate_limit, 30);
	assert_int_equal(cfg->client_limits.tls_handshake_rate_limit, 40);
	assert_int_equal(cfg->client_limits.rate_window, S(300));
	assert_int_equal(cfg->client_limits.ipv6_prefix, 48);
	assert_int_equal(cfg->client_limits.table_size, 1024);
	assert_int_equal(cfg->client_limits.exceptions.n, 2);
	want_net(&cfg->client_limits.exceptions.net[0], AF_INET, "192.0.2.0", 24);
	want_net(&cfg->client_limits.exceptions.net[1], AF_INET6, "2001:db8::", 32);
	assert_int_equal(cfg->proxy_trusted.n, 2); /* a list of its own */
	{
		char *p = print(cfg);
		assert_non_null(strstr(p, "\nclient_limit_exceptions = 192.0.2.0/24, 2001:db8::/32\n"));
		free(p);
	}
	/* The limits reload; the table's size needs a restart. */
	cfg2 = ok("client_connection_limit = 7\nclient_table_size = 1024\n");
	assert_int_equal(config_check_reload(cfg, cfg2, err), 0);
	config_free(cfg2);
	cfg2 = ok("client_table_size = 2048\n");
	assert_int_equal(config_check_reload(cfg, cfg2, err), -1);
	assert_string_equal(err, "client_table_size: cannot be changed by a reload; restart ringmxd");
	config_free(cfg2);
	config_free(cfg);
	round_trip("client_limit_exceptions = 10.0.0.0/8 ::1\nclient_rate_window = 90s\n");

	bad1("client_connection_limit", "lots", "not a number: 'lots'");
	bad1("client_connection_limit", "1000001", "out of range: '1000001' (0..1000000)");
	bad1("client_ipv6_prefix", "129", "out of range: '129' (0..128)");
	bad1("client_rate_window", "0", "out of range: '0' (1s..1d)");
	bad1("client_table_size", "1000", "not a power of two: '1000'");
	bad1("client_table_size", "8", "out of range: '8' (16..16777216)");
	bad1("client_limit_exceptions", "10.0.0.1/8",
	     "host bits set in '10.0.0.1/8' (network/8 is meant?)");
}

/* ---- hostname and domains ---- */

static void
test_hostname(void **state)
{
	char text[600], want[700], label[70], name[300];
	struct config *cfg;

	(void)state;
	cfg = ok("hostname = localhost\n");
	assert_string_equal(cfg->smtp.hostname, "localhost");
	config_free(cfg);
	cfg = ok("hostname = xn--bcher-kva.example\n");
	assert_string_equal(cfg->smtp.hostname, "xn--bcher-kva.example");
	config_free(cfg);

	bad1("hostname", "bad_host.example", "not a valid host name: 'bad_host.example'");
	bad1("hostname", "a..b", "not a valid host name: 'a..b'");
	bad1("hostname", "mx.example.", "not a valid host name: 'mx.example.'");
	bad1("hostname", ".example", "not a valid host name: '.example'");
	bad1("hostname", "-mx.example", "not a valid host name: '-mx.example'");
	bad1("hostname", "mx-.example", "not a valid host name: 'mx-.example'");
	bad1("hostname", "192.0.2.1", "not a valid host name: '192.0.2.1'");
	bad1("hostname", "mx example", "not a valid host name: 'mx example'");
	bad1("hostname", "m\xc3\xa9.example", "not a valid host name: 'm\\xc3\\xa9.example'");
	bad("hostname =\n", "t.conf:1: hostname: empty value");

	/* Labels of 63 are fine, 64 are not; 255 in all is fine, 256 is not. */
	memset(label, 'a', 63);
	label[63] = '\0';
	snprintf(text, sizeof(text), "hostname = %s.x\n", label);
	config_free(ok(text));
	snprintf(text, sizeof(text), "hostname = %sa.x\n", label);
	snprintf(want, sizeof(want), "t.conf:1: hostname: not a valid host name: '%.64s...'",
		 text + 11);
	bad(text, want);
	snprintf(name, sizeof(name), "%s.%s.%s.%s", label, label, label, label); /* 255 */
	assert_int_equal(strlen(name), 255);
	snprintf(text, sizeof(text), "hostname = %s\n", name);
	cfg = ok(text);
	assert_string_equal(cfg->smtp.hostname, name);
	config_free(cfg);
	snprintf(text, sizeof(text), "hostname = b.%s\n", name); /* 257 */
	snprintf(want, sizeof(want), "t.conf:1: hostname: not a valid host name: '%.64s...'",
		 text + 11);
	bad(text, want);
}

static void
test_domains(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = ok("domains = A.example,b.example  c.example ,\t.D.Example,,x\n");
	assert_int_equal(cfg->ndomains, 5);
	assert_string_equal(cfg->domain_list[0], "a.example");
	assert_string_equal(cfg->domain_list[2], "c.example");
	assert_string_equal(cfg->domain_list[3], ".d.example");
	assert_string_equal(cfg->domain_list[4], "x");
	assert_ptr_equal(cfg->smtp.domains, cfg->domain_list);
	assert_int_equal(cfg->smtp.ndomains, 5);
	config_free(cfg);

	bad1("domains", "a.example, b..example", "not a domain: 'b..example'");
	bad1("domains", "a.example.", "not a domain: 'a.example.'");
	bad1("domains", "..a.example", "not a domain: '..a.example'");
	bad1("domains", ".", "not a domain: '.'");
	bad1("domains", "-a.example", "not a domain: '-a.example'");
	bad1("domains", "a_b.example", "not a domain: 'a_b.example'");
	bad1("domains", "192.0.2.1", "not a domain: '192.0.2.1'");
	bad1("domains", "[192.0.2.1]", "not a domain: '[192.0.2.1]'");
	bad1("domains", "a;b", "not a domain: 'a;b'");
	bad1("domains", "x.example X.Example", "duplicate domain: 'x.example'");
	bad("domains =\n", "t.conf:1: domains: empty list");
	bad("domains = ,,\n", "t.conf:1: domains: empty list");
	bad("workers = 1\ndomains =\n# no continuation\nworkers = 2\n",
	    "t.conf:4: workers: already set on line 1");
	bad("workers = 1\ndomains =\n# nothing follows\n", "t.conf:2: domains: empty list");
}

static void
test_domains_many(void **state)
{
	size_t cap = (CONFIG_MAX_DOMAINS + 2) * 16, o = 0, i;
	char *text = malloc(cap);
	struct config *cfg;

	(void)state;
	assert_non_null(text);
	o += (size_t)snprintf(text, cap, "domains =\n");
	for (i = 0; i < CONFIG_MAX_DOMAINS; i++)
		o += (size_t)snprintf(text + o, cap - o, "  d%zu.test\n", i);
	cfg = ok(text);
	assert_int_equal(cfg->ndomains, CONFIG_MAX_DOMAINS);
	config_free(cfg);
	snprintf(text + o, cap - o, "  one-more.test\n");
	bad(text, "t.conf:4098: domains: too many domains (max 4096)");
	free(text);
}

/* ---- continuation lines and comments ---- */

static void
test_continuation(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = ok("domains = a.example,\n"
		 "    b.example c.example\n"
		 "# a comment between continuation lines\n"
		 "\n"
		 "\tD.example\n"
		 "workers = 2\n");
	assert_int_equal(cfg->ndomains, 4);
	assert_string_equal(cfg->domain_list[3], "d.example");
	assert_int_equal(cfg->workers, 2);
	config_free(cfg);

	/* An empty first line, the list on continuation lines. */
	cfg = ok("domains =\n  one.example\n  two.example\n");
	assert_int_equal(cfg->ndomains, 2);
	assert_string_equal(cfg->domain_list[0], "one.example");
	config_free(cfg);

	/* Repeated domains lines append too; the default is gone. */
	cfg = ok("domains = a.example\nhostname = mx.example\ndomains = b.example\n");
	assert_int_equal(cfg->ndomains, 2);
	assert_string_equal(cfg->domain_list[1], "b.example");
	config_free(cfg);

	/* A continuation line's error names its own line. */
	bad("domains = a.example\n  b.example\n  bad..example\n",
	    "t.conf:3: domains: not a domain: 'bad..example'");
	bad("workers = 2\n  3\n",
	    "t.conf:2: workers: continuation line not allowed (only domains, cpus, recipient_maps and milters take "
	    "continuation lines)");
	bad("hostname = mx\n  .example\n",
	    "t.conf:2: hostname: continuation line not allowed (only domains, cpus, recipient_maps and milters take "
	    "continuation lines)");
	/* An indented first line is an ordinary key line. */
	cfg = ok("  workers = 5\n");
	assert_int_equal(cfg->workers, 5);
	config_free(cfg);
}

static void
test_syntax(void **state)
{
	char *text;
	struct config *cfg;

	(void)state;
	/* CRLF, trailing blanks, blanks around '=', '#' and ';' inside values. */
	cfg = ok("workers=2\r\nrecipient_limit   =\t7  \r\n  # indented comment\r\n");
	assert_int_equal(cfg->workers, 2);
	assert_int_equal(cfg->smtp.recipient_limit, 7);
	config_free(cfg);
	/* No final newline. */
	cfg = ok("workers = 4");
	assert_int_equal(cfg->workers, 4);
	config_free(cfg);

	bad("workers = 2 # two\n", "t.conf:1: workers: not a number: '2 # two'");
	bad("workers = 2 ; two\n", "t.conf:1: workers: not a number: '2 ; two'");
	bad("; comment\n", "t.conf:1: syntax error: expected 'key = value'");
	bad("workers = 1\n[main]\nworkers = 2\n", "t.conf:2: sections are not supported");
	bad("[main]\n", "t.conf:1: sections are not supported");
	bad("workers: 2\n", "t.conf:1: syntax error: expected 'key = value'");
	bad("workers 2\n", "t.conf:1: syntax error: expected 'key = value'");
	bad("listen 127.0.0.1:25\n", "t.conf:1: syntax error: expected 'key = value'");
	bad("= 2\n", "t.conf:1: syntax error: expected 'key = value'");
	bad("\xef\xbb\xbfworkers = 2\n", "t.conf:1: syntax error: expected 'key = value'");
	bad("# ok\nfrobnicate = 1\n", "t.conf:2: frobnicate: unknown key");
	bad("Workers = 1\n", "t.conf:1: Workers: unknown key");
	bad("smtpd_banner = x\n", "t.conf:1: smtpd_banner: unknown key");
	bad("workers = 1\n\nworkers = 2\n", "t.conf:3: workers: already set on line 1");
	bad("sink = discard\nsink = discard\n", "t.conf:2: sink: already set on line 1");
	/* The first error wins. */
	bad("workers = x\nfrob = 1\n", "t.conf:1: workers: not a number: 'x'");

	/* A NUL byte, and a line longer than CONFIG_LINE_MAX. */
	{
		static const char nul[] = "workers = 1\nhostname = a\0b\n";
		char err[CONFIG_ERR_MAX];

		assert_null(config_load_string("t.conf", nul, sizeof(nul) - 1, NULL, err));
		assert_string_equal(err, "t.conf:2: NUL byte in line");
	}
	text = malloc(CONFIG_LINE_MAX + 64);
	assert_non_null(text);
	memset(text, ' ', CONFIG_LINE_MAX + 2);
	memcpy(text, "domains = a", 11);
	strcpy(text + CONFIG_LINE_MAX - 1, "b\n");
	cfg = ok(text); /* exactly CONFIG_LINE_MAX bytes */
	config_free(cfg);
	strcpy(text + CONFIG_LINE_MAX - 1, "bc\n");
	bad(text, "t.conf:1: line too long (max 4000 bytes)");
	free(text);
}

/* ---- workers and cpus ---- */

static void
test_workers_cpus(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = ok("workers = 0\n");
	assert_int_equal(cfg->workers, affinity_count());
	assert_int_equal(cfg->ncpus, 0);
	config_free(cfg);

	/* workers 0 + cpus: one worker per listed CPU. */
	cfg = ok("cpus = 0-3,6\n");
	assert_int_equal(cfg->workers, 5);
	assert_int_equal(cfg->ncpus, 5);
	assert_int_equal(cfg->ncpu_list, 5);
	assert_int_equal(cfg->cpus[0], 0);
	assert_int_equal(cfg->cpus[3], 3);
	assert_int_equal(cfg->cpus[4], 6);
	assert_int_equal(cfg->cpus[5], -1);
	config_free(cfg);

	/* More workers than CPUs: round-robin over the list. */
	cfg = ok("workers = 5\ncpus = 2,7\n");
	assert_int_equal(cfg->ncpus, 5);
	assert_int_equal(cfg->cpus[0], 2);
	assert_int_equal(cfg->cpus[1], 7);
	assert_int_equal(cfg->cpus[2], 2);
	assert_int_equal(cfg->cpus[4], 2);
	config_free(cfg);

	/* Fewer workers than CPUs: the first ones are used. */
	cfg = ok("workers = 2\ncpus = 4 5 6\n");
	assert_int_equal(cfg->ncpus, 2);
	assert_int_equal(cfg->cpus[1], 5);
	assert_int_equal(cfg->cpus[2], -1);
	config_free(cfg);

	/* Continuation lines and repeated lines append; empty means none. */
	cfg = ok("cpus = 1-2,\n   9\ncpus = 1023\n");
	assert_int_equal(cfg->ncpu_list, 4);
	assert_int_equal(cfg->cpu_list[3], 1023);
	config_free(cfg);
	cfg = ok("cpus =\n");
	assert_int_equal(cfg->ncpus, 0);
	config_free(cfg);

	/* More listed CPUs than workers can exist: capped at the maximum. */
	cfg = ok("cpus = 0-1023\n");
	assert_int_equal(cfg->workers, CONFIG_MAX_WORKERS);
	assert_int_equal(cfg->cpus[255], 255);
	config_free(cfg);

	bad1("cpus", "3-1", "not a CPU range: '3-1'");
	bad1("cpus", "1024", "CPU out of range: '1024' (0..1023)");
	bad1("cpus", "0-1024", "CPU out of range: '0-1024' (0..1023)");
	bad1("cpus", "99999999999999999999999", "CPU out of range: '99999999999999999999999' (0..1023)");
	bad1("cpus", "0,0", "CPU 0 listed twice");
	bad1("cpus", "0-3,2", "CPU 2 listed twice");
	bad1("cpus", "a", "not a CPU list: 'a'");
	bad1("cpus", "0-", "not a CPU list: '0-'");
	bad1("cpus", "-1", "not a CPU list: '-1'");
	bad1("cpus", "1-2-3", "not a CPU list: '1-2-3'");
	bad1("cpus", "0x1", "not a CPU list: '0x1'");
	bad1("cpus", "1 - 2", "not a CPU list: '-'");
	bad("cpus = 1\n  1\n", "t.conf:2: cpus: CPU 1 listed twice");
}

static void
test_parse_cpus_api(void **state)
{
	int c[8];

	(void)state;
	assert_int_equal(config_parse_cpus("", c, 8), 0);
	assert_int_equal(config_parse_cpus(" , ", c, 8), 0);
	assert_int_equal(config_parse_cpus("0-3,6", c, 8), 5);
	assert_int_equal(c[0], 0);
	assert_int_equal(c[4], 6);
	assert_int_equal(config_parse_cpus("5,1", c, 8), 2);
	assert_int_equal(c[0], 5);
	assert_int_equal(c[1], 1);
	assert_int_equal(config_parse_cpus("7-7", c, 8), 1);
	assert_int_equal(config_parse_cpus("0-7", c, 8), 8);
	assert_int_equal(config_parse_cpus("0-8", c, 8), -1); /* more than max */
	assert_int_equal(config_parse_cpus("1023", c, 8), 1);
	assert_int_equal(config_parse_cpus("1024", c, 8), -1);
	assert_int_equal(config_parse_cpus("2,2", c, 8), -1);
	assert_int_equal(config_parse_cpus("2-1", c, 8), -1);
	assert_int_equal(config_parse_cpus("x", c, 8), -1);
	assert_int_equal(config_parse_cpus("1;2", c, 8), -1);
}

/* ---- files ---- */

static void
test_files(void **state)
{
	struct config_args a;
	char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];
	struct config *cfg;

	(void)state;
	memset(&a, 0, sizeof(a));
	a.config_path = write_file("ok.conf", "workers = 2\nlisten = [::1]:2626\n");
	cfg = config_load(&a, err);
	assert_non_null(cfg);
	assert_string_equal(cfg->path, a.config_path);
	assert_int_equal(cfg->workers, 2);
	assert_string_equal(cfg->listeners[0].text, "[::1]:2626");
	config_free(cfg);

	a.config_path = write_file("bad.conf", "# x\n\nmessage_size_limit = 10QB\n");
	assert_null(config_load(&a, err));
	snprintf(want, sizeof(want), "%s:3: message_size_limit: not a size: '10QB'",
		 a.config_path);
	assert_string_equal(err, want);

	{
		char path[128];

		snprintf(path, sizeof(path), "%s/missing.conf", tmpdir);
		a.config_path = path;
		assert_null(config_load(&a, err));
		snprintf(want, sizeof(want), "%s: cannot open: %s", path, strerror(ENOENT));
		assert_string_equal(err, want);
	}
	a.config_path = tmpdir; /* a directory */
	assert_null(config_load(&a, err));
	snprintf(want, sizeof(want), "%s: cannot read: %s", tmpdir, strerror(EISDIR));
	assert_string_equal(err, want);
}

/* ---- command line ---- */

static void
test_args_parse(void **state)
{
	struct config_args a;
	char *perr;

	(void)state;
	assert_int_equal(ARGS(&a, "-c", "/x.conf", "-t", "-V", "-h", "--print-config", "-o",
			      "workers=1", "-o", "cpus=0", "--listen", "127.0.0.1:25",
			      "--listen=[::1]:25", "--port", "26", "--workers", "3", "--cpus",
			      "0-1"),
			 0);
	assert_string_equal(a.config_path, "/x.conf");
	assert_true(a.check_only && a.version && a.help && a.print_config);
	assert_int_equal(a.nsets, 2);
	assert_string_equal(a.sets[1], "cpus=0");
	assert_int_equal(a.nlisten, 2);
	assert_string_equal(a.listen[1], "[::1]:25");
	assert_string_equal(a.port, "26");
	assert_string_equal(a.workers, "3");
	assert_string_equal(a.cpus, "0-1");

	assert_int_equal(ARGS(&a, "--config=/y.conf", "--check-config", "-oworkers=2"), 0);
	assert_string_equal(a.config_path, "/y.conf");
	assert_true(a.check_only);
	assert_false(a.version);
	assert_string_equal(a.sets[0], "workers=2");

	assert_int_equal(ARGS(&a, "-x"), -1);
	assert_string_equal(perr, "unknown option '-x'");
	assert_int_equal(ARGS(&a, "-tx"), -1);
	assert_string_equal(perr, "unknown option '-x'");
	assert_int_equal(ARGS(&a, "--frob"), -1);
	assert_string_equal(perr, "unknown option '--frob'");
	assert_int_equal(ARGS(&a, "--frob=1"), -1);
	assert_string_equal(perr, "unknown option '--frob'");
	assert_int_equal(ARGS(&a, "-c"), -1);
	assert_string_equal(perr, "option '-c' requires an argument");
	assert_int_equal(ARGS(&a, "--config"), -1);
	assert_string_equal(perr, "option '--config' requires an argument");
	assert_int_equal(ARGS(&a, "--listen"), -1);
	assert_string_equal(perr, "option '--listen' requires an argument");
	assert_int_equal(ARGS(&a, "-t", "stray"), -1);
	assert_string_equal(perr, "unexpected argument 'stray'");
	assert_int_equal(ARGS(&a, "stray", "-t"), -1);
	assert_string_equal(perr, "unexpected argument 'stray'");
	assert_int_equal(ARGS(&a, "--port", "1", "--port", "2"), -1);
	assert_string_equal(perr, "option '--port' given twice");
	assert_int_equal(ARGS(&a, "-c", "a", "-c", "b"), -1);
	assert_string_equal(perr, "option '--config' given twice");
	assert_int_equal(ARGS(&a, "--"), 0);
}

static void
test_args_limits(void **state)
{
	char *argv[200], err[CONFIG_ERR_MAX];
	struct config_args a;
	int argc = 0, i;

	(void)state;
	argv[argc++] = (char *)"ringmxd";
	for (i = 0; i < 65; i++) {
		argv[argc++] = (char *)"-o";
		argv[argc++] = (char *)"workers=1";
	}
	argv[argc] = NULL;
	assert_int_equal(config_parse_args(argc, argv, &a, err), -1);
	assert_string_equal(err, "too many -o options (max 64)");

	argc = 1;
	for (i = 0; i < 17; i++) {
		argv[argc++] = (char *)"--listen";
		argv[argc++] = (char *)"127.0.0.1:25";
	}
	argv[argc] = NULL;
	assert_int_equal(config_parse_args(argc, argv, &a, err), -1);
	assert_string_equal(err, "too many --listen options (max 16)");
}

static struct config *
load_args(const char *text, const struct config_args *a, char *err)
{
	return config_load_string("t.conf", text, strlen(text), a, err);
}

static void
test_precedence(void **state)
{
	static const char file[] = "workers = 2\n"
				   "message_size_limit = 1m\n"
				   "listen = 10.0.0.1:25\n"
				   "listen = [::1]:587\n"
				   "domains = file.example\n"
				   "cpus = 0\n";
	char err[CONFIG_ERR_MAX];
	struct config_args a;
	struct config *cfg;
	char *perr;

	(void)state;
	/* File only. */
	assert_int_equal(ARGS(&a, "-t"), 0);
	cfg = load_args(file, &a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->workers, 2);
	assert_int_equal(cfg->nlisteners, 2);
	config_free(cfg);

	/* -o beats the file; --workers beats -o; -o listen replaces. */
	assert_int_equal(ARGS(&a, "-o", "workers=3", "-o", "message_size_limit=2m",
			      "-o", "domains=a.example b.example", "-o", "listen=10.9.9.9:25",
			      "-o", "listen=10.9.9.8:25"),
			 0);
	cfg = load_args(file, &a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->workers, 3);
	assert_int_equal(cfg->smtp.message_size_limit, 2 << 20);
	assert_int_equal(cfg->ndomains, 2);
	assert_string_equal(cfg->domain_list[0], "a.example");
	assert_int_equal(cfg->nlisteners, 2);
	assert_string_equal(cfg->listeners[1].text, "10.9.9.8:25");
	config_free(cfg);

	assert_int_equal(ARGS(&a, "-o", "workers=3", "--workers", "4", "--cpus", "5-6"), 0);
	cfg = load_args(file, &a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->workers, 4);
	assert_int_equal(cfg->cpus[0], 5);
	assert_int_equal(cfg->cpus[1], 6);
	assert_int_equal(cfg->cpus[2], 5);
	config_free(cfg);

	/* --cpus '' turns pinning off. */
	assert_int_equal(ARGS(&a, "--cpus", ""), 0);
	cfg = load_args(file, &a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->ncpus, 0);
	config_free(cfg);

	/* --listen replaces both the file's and -o's listeners. */
	assert_int_equal(ARGS(&a, "-o", "listen=10.9.9.9:25", "--listen", "[::]:2525",
			      "--listen", "*:2526"),
			 0);
	cfg = load_args(file, &a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->nlisteners, 2);
	assert_string_equal(cfg->listeners[0].text, "[::]:2525");
	assert_string_equal(cfg->listeners[1].text, "0.0.0.0:2526");
	config_free(cfg);

	/* Without a file. */
	assert_int_equal(ARGS(&a, "--workers", "1"), 0);
	cfg = config_load(&a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->workers, 1);
	assert_string_equal(cfg->listeners[0].text, "127.0.0.1:2525");
	config_free(cfg);
}

static void
test_port(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config_args a;
	struct config *cfg;
	char *perr;

	(void)state;
	assert_int_equal(ARGS(&a, "--port", "2600"), 0);
	cfg = load_args("listen = 10.0.0.1:25\nlisten = [::1]:587\n", &a, err);
	assert_non_null(cfg);
	assert_int_equal(lport(&cfg->listeners[0]), 2600);
	assert_int_equal(lport(&cfg->listeners[1]), 2600);
	assert_string_equal(cfg->listeners[0].text, "10.0.0.1:2600");
	assert_string_equal(cfg->listeners[1].text, "[::1]:2600");
	config_free(cfg);

	/* The default listener, and together with --listen. */
	cfg = load_args("", &a, err);
	assert_non_null(cfg);
	assert_string_equal(cfg->listeners[0].text, "127.0.0.1:2600");
	config_free(cfg);
	assert_int_equal(ARGS(&a, "--listen", "[::1]:1", "--port", "3"), 0);
	cfg = load_args("", &a, err);
	assert_non_null(cfg);
	assert_string_equal(cfg->listeners[0].text, "[::1]:3");
	config_free(cfg);

	/* Two listeners that differ only by port collapse: an error. */
	assert_int_equal(ARGS(&a, "--port", "25"), 0);
	assert_null(load_args("listen = 10.0.0.1:25\nlisten = 10.0.0.1:587\n", &a, err));
	assert_string_equal(err, "--port 25: duplicate listener: 10.0.0.1:25");
	assert_int_equal(ARGS(&a, "--port", "0"), 0);
	assert_null(load_args("", &a, err));
	assert_string_equal(err, "--port 0: port out of range: '0' (1..65535)");
	assert_int_equal(ARGS(&a, "--port", "smtp"), 0);
	assert_null(load_args("", &a, err));
	assert_string_equal(err, "--port smtp: not a port: 'smtp'");
}

static void
test_cli_errors(void **state)
{
	static const struct {
		const char *opt, *arg, *msg;
	} cases[] = {
		{"-o", "message_size_limit=x", "-o message_size_limit=x: not a size: 'x'"},
		{"-o", "frobnicate=1", "-o frobnicate=1: unknown key"},
		{"-o", "workers", "-o workers: expected key=value"},
		{"-o", "workers=", "-o workers=: empty value"},
		{"-o", "domains=", "-o domains=: empty value"},
		{"-o", "listen=", "-o listen=: empty value"},
		{"-o", " workers=1", "-o  workers=1: unknown key"},
		{"-o", "listen=1.2.3.4:25 tls=implicit",
		 "t.conf: listen 1.2.3.4:25: tls=implicit needs a certificate (tls_cert and tls_key)"},
		{"-o", "hostname=a\tb", "-o hostname=a\\x09b: not a valid host name: 'a\\x09b'"},
		{"--workers", "x", "--workers x: not a number: 'x'"},
		{"--workers", "999", "--workers 999: out of range: '999' (0..256)"},
		{"--cpus", "4-2", "--cpus 4-2: not a CPU range: '4-2'"},
		{"--listen", "1.2.3.4", "--listen 1.2.3.4: not ADDRESS:PORT: '1.2.3.4'"},
		{"--listen", "", "--listen : empty value"},
		{"--listen", "[::1]:25 proxy=sometimes",
		 "--listen [::1]:25 proxy=sometimes: not a boolean: proxy=sometimes"},
		{"-o", "proxy_trusted=10.0.0.1/8",
		 "-o proxy_trusted=10.0.0.1/8: host bits set in '10.0.0.1/8' (network/8 is meant?)"},
	};
	char err[CONFIG_ERR_MAX];
	struct config_args a;
	size_t i;
	char *perr;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(ARGS(&a, cases[i].opt, cases[i].arg), 0);
		assert_null(load_args("", &a, err));
		assert_string_equal(err, cases[i].msg);
	}
	/* A scalar twice among the -o options; -o wins over the file's. */
	assert_int_equal(ARGS(&a, "-o", "workers=1", "-o", "workers=2"), 0);
	assert_null(load_args("", &a, err));
	assert_string_equal(err, "-o workers=2: already set by an earlier option");
	/* The same key in the file and in -o is fine. */
	assert_int_equal(ARGS(&a, "-o", "workers=1", "--listen", "[::1]:25", "--listen",
			      "[::1]:25"),
			 0);
	assert_null(load_args("workers = 3\n", &a, err));
	assert_string_equal(err, "--listen [::1]:25: duplicate listener: [::1]:25");
	/* File errors come first. */
	assert_int_equal(ARGS(&a, "-o", "frob=1"), 0);
	assert_null(load_args("workers = x\n", &a, err));
	assert_string_equal(err, "t.conf:1: workers: not a number: 'x'");
}

/* ---- print ---- */

static void
round_trip(const char *text)
{
	char err[CONFIG_ERR_MAX];
	struct config *a = ok(text), *b;
	char *p1, *p2;

	p1 = print(a);
	b = config_load_string("printed", p1, strlen(p1), NULL, err);
	if (b == NULL)
		fail_msg("printed config does not load: %s\n%s", err, p1);
	p2 = print(b);
	assert_string_equal(p1, p2);
	assert_int_equal(a->workers, b->workers);
	assert_int_equal(a->ncpus, b->ncpus);
	assert_memory_equal(a->cpus, b->cpus, sizeof(a->cpus));
	assert_int_equal(a->nlisteners, b->nlisteners);
	assert_memory_equal(a->listeners, b->listeners, sizeof(a->listeners));
	assert_memory_equal(&a->smtp.hostname, &b->smtp.hostname, sizeof(a->smtp.hostname));
	assert_int_equal(a->ndomains, b->ndomains);
	free(p1);
	free(p2);
	config_free(a);
	config_free(b);
}

static void
test_print(void **state)
{
	char *text, *p;
	struct config *cfg;
	size_t cap = 64 * 1024, o = 0, i;

	(void)state;
	round_trip("");
	round_trip("listen = *:25\nlisten = [::]:25\nlisten = [2001:db8::7]:2525 tls=none\n"
		   "hostname = mx.example\ndomains = .a.example b.example\ncpus = 3,0-2,8-9,5\n"
		   "workers = 7\nrecv_buffer_size = 32k\nmessage_size_limit = 1g\nspool_memory = 3g\n"
		   "bare_newline = reject\ngreeting_timeout = 90\ncommand_timeout = 7200\n"
		   "data_timeout = 86400\nshutdown_timeout = 0\nsession_timeout = 61\n");

	/* Enough domains to wrap onto continuation lines. */
	text = malloc(cap);
	assert_non_null(text);
	o += (size_t)snprintf(text, cap, "domains =");
	for (i = 0; i < 150; i++)
		o += (size_t)snprintf(text + o, cap - o, "%shost-%zu.example.org",
				      i % 50 == 0 ? "\n  " : " ", i);
	strcpy(text + o, "\n");
	round_trip(text);
	cfg = ok(text);
	p = print(cfg);
	assert_non_null(strstr(p, ",\n    host-"));
	for (char *l = p; *l != '\0'; l = strchr(l, '\n') + 1)
		assert_true(strchr(l, '\n') - l <= 80);
	free(p);
	config_free(cfg);
	free(text);

	/* Exact text for a small config. */
	cfg = ok("hostname = mx.example\nworkers = 2\ncpus = 1,2,3,7\n");
	p = print(cfg);
	assert_non_null(strstr(p, "\nlisten = 127.0.0.1:2525\nhostname = mx.example\n"
				  "domains = localhost, example.test\nworkers = 2\n"
				  "cpus = 1-3,7\nmax_connections = 16384\nrecv_buffers = 4096\n"
				  "recv_buffer_size = 16384\nlisten_backlog = 4096\n"
				  "proxy_trusted = 127.0.0.0/8, ::1/128\nproxy_timeout = 5s\nsink = spool\n"
				  "spool_dir = /var/spool/ringmx\nsegment_size = 67108864\n"
				  "durability = fsync\nspool_io = auto\ncommit_delay = 1ms\n"
				  "commit_size = 4194304\nspool_memory = 268435456\n"
				  "relay_tls = none\nrelay_connections = 8\n"
				  "relay_connect_timeout = 30s\nrelay_reply_timeout = 5m\n"
				  "relay_idle_timeout = 10s\nretry_min = 1m\nretry_max = 1h\n"
				  "maximal_queue_lifetime = 5d\nspool_high_water = 0\n"
				  "relay_defer_after = 10m\n"
				  "message_size_limit = 10240000\nrecipient_limit = 1000\n"
				  "error_limit = 20\njunk_limit = 100\nhop_count_limit = 50\nbare_newline = normalize\n"
				  "greeting_timeout = 5m\ncommand_timeout = 5m\ndata_timeout = 3m\n"
				  "data_end_timeout = 10m\nsession_timeout = 1h\n"
				  "send_timeout = 1m\nshutdown_timeout = 30s\n"));
	assert_int_equal(strncmp(p, "# ringmxd ", 10), 0);
	free(p);
	config_free(cfg);

	/* No pinning prints an empty list, which loads. */
	round_trip("cpus =\n");
}

/* ---- reload and usage ---- */

static void
test_reload_check(void **state)
{
	struct config *a = ok("workers = 2\ndomains = a.example\n");
	struct config *b = ok("workers = 2\ndomains = b.example\nmessage_size_limit = 5\n"
			      "hostname = other.example\ncommand_timeout = 1\n");
	struct config *c = ok("workers = 3\ndomains = a.example\n");
	struct config *d = ok("workers = 2\nlisten = [::1]:2525\n");
	struct config *e = ok("workers = 2\nrecv_buffers = 16\n");
	struct config *f = ok("workers = 2\ndomains = a.example\ncommit_delay = 5ms\n"
			      "commit_size = 64k\n");
	struct config *g = ok("workers = 2\ndomains = a.example\nspool_dir = /elsewhere\n");
	struct config *h = ok("workers = 2\ndomains = a.example\ndurability = none\n");
	struct config *k = ok("workers = 2\ndomains = a.example\nspool_memory = 1g\n");
	char err[CONFIG_ERR_MAX];

	(void)state;
	assert_int_equal(config_check_reload(a, b, err), 0);
	assert_int_equal(config_check_reload(a, c, err), -1);
	assert_string_equal(err, "workers: cannot be changed by a reload; restart ringmxd");
	assert_int_equal(config_check_reload(a, d, err), -1);
	assert_string_equal(err, "listen: cannot be changed by a reload; restart ringmxd");
	assert_int_equal(config_check_reload(a, e, err), -1);
	assert_string_equal(err, "recv_buffers: cannot be changed by a reload; restart ringmxd");
	assert_int_equal(config_check_reload(a, f, err), 0);
	assert_int_equal(config_check_reload(a, g, err), -1);
	assert_string_equal(err, "spool_dir: cannot be changed by a reload; restart ringmxd");
	assert_int_equal(config_check_reload(a, h, err), -1);
	assert_string_equal(err, "durability: cannot be changed by a reload; restart ringmxd");
	assert_int_equal(config_check_reload(a, k, err), -1);
	assert_string_equal(err, "spool_memory: cannot be changed by a reload; restart ringmxd");
	config_free(f);
	config_free(g);
	config_free(h);
	config_free(k);
	config_free(a);
	config_free(b);
	config_free(c);
	config_free(d);
	config_free(e);
}

static void
test_usage(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	(void)state;
	assert_non_null(f);
	config_usage(f);
	fclose(f);
	assert_non_null(strstr(buf, "Usage: ringmxd"));
	assert_non_null(strstr(buf, "--check-config"));
	assert_non_null(strstr(buf, "--listen"));
	assert_non_null(strstr(buf, "--port"));
	assert_non_null(strstr(buf, "-o KEY=VALUE"));
	free(buf);
}

/* etc/ringmxd.conf.example loads and is the defaults but for [::1]. The
 * source tree is found through RINGMX_DIALOGUES (set by tests/meson.build
 * to <source>/tests/dialogues); without it the test is skipped. */
static void
test_example_file(void **state)
{
	const char *d = getenv("RINGMX_DIALOGUES");
	char path[4096], err[CONFIG_ERR_MAX];
	struct config_args a;
	struct config *cfg;
	size_t n = d != NULL ? strlen(d) : 0;

	(void)state;
	if (n < 16 || strcmp(d + n - 16, "/tests/dialogues") != 0)
		skip();
	snprintf(path, sizeof(path), "%.*s/etc/ringmxd.conf.example", (int)(n - 16), d);
	memset(&a, 0, sizeof(a));
	a.config_path = path;
	cfg = config_load(&a, err);
	if (cfg == NULL)
		fail_msg("%s", err);
	assert_int_equal(cfg->nlisteners, 2);
	assert_string_equal(cfg->listeners[1].text, "[::1]:2525");
	assert_int_equal(cfg->ndomains, 2);
	assert_int_equal(cfg->workers, affinity_count());
	assert_int_equal(cfg->smtp.message_size_limit, 10240000);
	assert_int_equal(cfg->smtp.data_end_timeout, S(600));
	assert_int_equal(cfg->recv_buffer_size, 16384);
	assert_int_equal(cfg->sink, SINK_KIND_SPOOL);
	assert_int_equal(cfg->commit_delay, 1000000);
	assert_int_equal(cfg->spool_memory, 256 << 20);
	assert_false(relay_enabled(&cfg->relay));
	assert_int_equal(cfg->relay.connections, 8);
	assert_int_equal(cfg->relay.retry_max, S(3600));
	assert_int_equal(cfg->relay.queue_lifetime, S(5 * 86400));
	config_free(cfg);
}

/* ---- fixture ---- */

static int
setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "%s", "/tmp/test_config.XXXXXX");
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[4400];

	(void)state;
	/* Only the files this suite wrote. */
	for (size_t i = 0; i < nwritten; i++) {
		snprintf(cmd, sizeof(cmd), "%s/%s", tmpdir, written[i]);
		unlink(cmd);
	}
	return rmdir(tmpdir);
}

/* ---- native TLS keys (docs/tls.md) ---- */

static void
test_tls_keys(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config_args a;
	struct config *cfg, *c2;
	char *p;

	(void)state;
	cfg = ok("");
	assert_string_equal(cfg->tls.cert, "");
	assert_int_equal(cfg->tls.min_version, 12);
	assert_true(cfg->tls.session_tickets);
	assert_int_equal(cfg->tls.handshake_timeout, S(30));
	assert_int_equal(cfg->listeners[0].tls, LISTENER_TLS_NONE);
	config_free(cfg);

	/* A certificate turns STARTTLS on for listeners without tls=. */
	cfg = ok("tls_cert = /etc/c.pem\ntls_key = /etc/k.pem\nlisten = 127.0.0.1:25\n"
		 "listen = 127.0.0.1:465 tls=implicit\nlisten = 127.0.0.1:26 tls=none\n"
		 "listen = 127.0.0.1:587 tls=required\n"
		 "tls_sni = Mail.Example.org /c1 /k1\ntls_sni = *.example.net /c2 /k2\n"
		 "tls_min_version = 1.3\ntls_session_tickets = no\nhandshake_timeout = 10s\n"
		 "tls_ciphers = TLS13-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384\n");
	assert_int_equal(cfg->listeners[0].tls, LISTENER_TLS_STARTTLS);
	assert_int_equal(cfg->listeners[1].tls, LISTENER_TLS_IMPLICIT);
	assert_int_equal(cfg->listeners[2].tls, LISTENER_TLS_NONE);
	assert_int_equal(cfg->listeners[3].tls, LISTENER_TLS_REQUIRED);
	assert_int_equal(cfg->tls.nsni, 2);
	assert_string_equal(cfg->tls.sni[0].name, "mail.example.org");
	assert_string_equal(cfg->tls.sni[1].name, "*.example.net");
	assert_string_equal(cfg->tls.sni[1].key, "/k2");
	assert_int_equal(cfg->tls.min_version, 13);
	assert_false(cfg->tls.session_tickets);
	assert_int_equal(cfg->tls.handshake_timeout, S(10));
	p = print(cfg);
	assert_non_null(strstr(p, "listen = 127.0.0.1:25 tls=starttls\n"));
	assert_non_null(strstr(p, "listen = 127.0.0.1:26 tls=none\n"));
	assert_non_null(strstr(p, "tls_cert = /etc/c.pem\ntls_key = /etc/k.pem\n"
				  "tls_sni = mail.example.org /c1 /k1\n"
				  "tls_sni = *.example.net /c2 /k2\ntls_min_version = 1.3\n"
				  "tls_ciphers = TLS13-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384\n"
				  "tls_session_tickets = no\nhandshake_timeout = 10s\n"));
	c2 = config_load_string("printed", p, strlen(p), NULL, err);
	assert_non_null(c2);
	assert_int_equal(c2->listeners[0].tls, LISTENER_TLS_STARTTLS);
	assert_int_equal(c2->tls.nsni, 2);
	/* Changing files, versions or tickets is a reload; dropping the
	 * certificate is not (it changes the listeners' default). */
	assert_int_equal(config_check_reload(cfg, c2, err), 0);
	config_free(c2);
	free(p);
	c2 = ok("listen = 127.0.0.1:25\nlisten = 127.0.0.1:465\nlisten = 127.0.0.1:26\n"
		"listen = 127.0.0.1:587\n");
	assert_int_equal(config_check_reload(cfg, c2, err), -1);
	assert_string_equal(err, "tls_cert: adding or removing the certificate changes the "
				 "listeners' TLS; restart ringmxd");
	config_free(c2);
	config_free(cfg);

	bad("tls_cert = /c\n", "t.conf: tls_key: missing (tls_cert is set)");
	bad("tls_key = /k\n", "t.conf: tls_cert: missing (tls_key is set)");
	bad("tls_sni = a.example /c /k\n", "t.conf: tls_sni: needs a default certificate (tls_cert, tls_key)");
	bad1("tls_min_version", "1.1", "not one of 1.2, 1.3: '1.1'");
	bad1("tls_min_version", "1.0", "not one of 1.2, 1.3: '1.0'");
	bad1("tls_sni", "a.example /c", "expected 'NAME CERTFILE KEYFILE': 'a.example /c'");
	bad1("tls_sni", "bad_name /c /k", "not a host name or *.domain: 'bad_name'");
	bad1("tls_session_tickets", "maybe", "not a boolean: 'maybe'");
	bad1("tls_ciphers", "AES GCM", "not a cipher list: 'AES GCM'");
	bad1("handshake_timeout", "0", "out of range: '0' (1s..1h)");
	bad("tls_cert = /c\ntls_key = /k\ntls_sni = a.example /c /k\ntls_sni = A.example /d /e\n",
	    "t.conf:4: tls_sni: name listed twice: 'A.example'");

	/* The old interface: defaults < environment < file < command line. */
	memset(&a, 0, sizeof(a));
	a.env_tls_cert = "/env/c.pem";
	a.env_tls_key = "/env/k.pem";
	cfg = load_args("", &a, err);
	assert_non_null(cfg);
	assert_string_equal(cfg->tls.cert, "/env/c.pem");
	assert_int_equal(cfg->listeners[0].tls, LISTENER_TLS_STARTTLS);
	config_free(cfg);
	cfg = load_args("tls_cert = /file/c.pem\n", &a, err);
	assert_non_null(cfg);
	assert_string_equal(cfg->tls.cert, "/file/c.pem");
	assert_string_equal(cfg->tls.key, "/env/k.pem");
	config_free(cfg);
	a.sets[a.nsets++] = "tls_cert=/cli/c.pem";
	cfg = load_args("tls_cert = /file/c.pem\n", &a, err);
	assert_non_null(cfg);
	assert_string_equal(cfg->tls.cert, "/cli/c.pem");
	config_free(cfg);
	a.nsets = 0;
	a.env_enable_tls = "false";
	cfg = load_args("", &a, err);
	assert_non_null(cfg);
	assert_int_equal(cfg->listeners[0].tls, LISTENER_TLS_NONE);
	config_free(cfg);
	memset(&a, 0, sizeof(a));
	a.env_enable_tls = "true";
	assert_null(load_args("", &a, err));
	assert_string_equal(err, "t.conf: SMTP_ENABLE_TLS=true: no certificate (set SMTP_TLS_CERT "
				 "and SMTP_TLS_KEY, or tls_cert and tls_key)");
	a.env_enable_tls = "sometimes";
	assert_null(load_args("", &a, err));
	assert_string_equal(err, "SMTP_ENABLE_TLS sometimes: not a boolean");
}


/* ---- relay: relay_host, transport_maps and the rest ---- */

/* "t.conf" text with the map file's path substituted for every "@MAP@". */
static char *
with_map(const char *text, const char *map)
{
	static char buf[4096];
	const char *at;
	size_t o = 0;

	while ((at = strstr(text, "@MAP@")) != NULL) {
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%.*s%s", (int)(at - text), text,
				      map);
		text = at + 5;
	}
	snprintf(buf + o, sizeof(buf) - o, "%s", text);
	return buf;
}

static const char *
map_file(const char *name, const char *text)
{
	static char path[128];

	snprintf(path, sizeof(path), "%s", write_file(name, text));
	return path;
}

/* The canonical text of the hop d routes to, or "-" for none. */
static const char *
route(const struct config *cfg, const char *d)
{
	int h = relay_route(&cfg->relay, d, strlen(d));

	if (h < 0)
		return "-";
	assert_true((size_t)h < cfg->relay.nhops);
	return cfg->relay.hops[h].text;
}

static void
test_relay_defaults(void **state)
{
	struct config *cfg = ok("");
	const struct relay_conf *r = &cfg->relay;

	(void)state;
	assert_false(relay_enabled(r));
	assert_int_equal(r->nhops, 0);
	assert_int_equal(r->default_hop, -1);
	assert_null(r->map);
	assert_int_equal(r->nmap, 0);
	assert_string_equal(r->relay_host, "");
	assert_string_equal(r->transport_maps, "");
	assert_int_equal(r->tls, RELAY_TLS_NONE);
	assert_string_equal(r->tls_ca_file, "");
	assert_int_equal(r->connections, 8);
	assert_int_equal(r->connect_timeout, S(30));
	assert_int_equal(r->reply_timeout, S(300));
	assert_int_equal(r->idle_timeout, S(10));
	assert_int_equal(r->retry_min, S(60));
	assert_int_equal(r->retry_max, S(3600));
	assert_int_equal(r->queue_lifetime, S(5 * 86400));
	assert_int_equal(r->high_water, 0);
	assert_int_equal(r->defer_after, S(600));
	assert_int_equal(relay_route(r, "example.test", 12), -1);
	config_free(cfg);
}

static void
test_relay_scalars(void **state)
{
	struct config *cfg;
	char *p;

	(void)state;
	cfg = ok("relay_tls = encrypt\nrelay_connections = 1024\nrelay_connect_timeout = 1h\n"
		 "relay_reply_timeout = 1\nrelay_idle_timeout = 0\nretry_min = 1s\n"
		 "retry_max = 7d\nmaximal_queue_lifetime = 100d\nspool_high_water = 10g\n"
		 "relay_defer_after = 0\n");
	assert_int_equal(cfg->relay.tls, RELAY_TLS_ENCRYPT);
	assert_int_equal(cfg->relay.connections, 1024);
	assert_int_equal(cfg->relay.connect_timeout, S(3600));
	assert_int_equal(cfg->relay.reply_timeout, S(1));
	assert_int_equal(cfg->relay.idle_timeout, 0);
	assert_int_equal(cfg->relay.retry_min, S(1));
	assert_int_equal(cfg->relay.retry_max, S(7 * 86400));
	assert_int_equal(cfg->relay.queue_lifetime, S(100 * 86400));
	assert_int_equal(cfg->relay.high_water, 10ull << 30);
	assert_int_equal(cfg->relay.defer_after, 0);
	assert_false(relay_enabled(&cfg->relay));
	p = print(cfg);
	assert_non_null(strstr(p, "\nspool_memory = 268435456\nrelay_tls = encrypt\n"
				  "relay_connections = 1024\nrelay_connect_timeout = 1h\n"
				  "relay_reply_timeout = 1s\nrelay_idle_timeout = 0s\n"
				  "retry_min = 1s\nretry_max = 7d\nmaximal_queue_lifetime = 100d\n"
				  "spool_high_water = 10737418240\nrelay_defer_after = 0s\n"
				  "message_size_limit = "));
	free(p);
	config_free(cfg);
	cfg = ok("relay_tls = may\nretry_min = 5m\nretry_max = 5m\n");
	assert_int_equal(cfg->relay.tls, RELAY_TLS_MAY);
	assert_int_equal(cfg->relay.retry_max, S(300));
	config_free(cfg);
	round_trip("relay_tls = may\nrelay_connections = 9\nrelay_idle_timeout = 0\n"
		   "retry_min = 1s\nspool_high_water = 1m\nrelay_defer_after = 7d\n");

	bad1("relay_tls", "yes", "not one of none, may, encrypt, verify: 'yes'");
	bad1("relay_tls", "Verify", "not one of none, may, encrypt, verify: 'Verify'");
	bad1("relay_connections", "0", "out of range: '0' (1..1024)");
	bad1("relay_connections", "1025", "out of range: '1025' (1..1024)");
	bad1("relay_connections", "4k", "not a number: '4k'");
	bad1("relay_connect_timeout", "0", "out of range: '0' (1s..1h)");
	bad1("relay_connect_timeout", "61m", "out of range: '61m' (1s..1h)");
	bad1("relay_reply_timeout", "500ms", "out of range: '500ms' (1s..1h)");
	bad1("relay_reply_timeout", "2h", "out of range: '2h' (1s..1h)");
	bad1("relay_idle_timeout", "3601", "out of range: '3601' (0s..1h)");
	bad1("relay_idle_timeout", "x", "not a duration: 'x'");
	bad1("retry_min", "0", "out of range: '0' (1s..7d)");
	bad1("retry_min", "8d", "out of range: '8d' (1s..7d)");
	bad1("retry_max", "8d", "out of range: '8d' (1s..7d)");
	bad1("maximal_queue_lifetime", "0", "out of range: '0' (1s..100d)");
	bad1("maximal_queue_lifetime", "101d", "out of range: '101d' (1s..100d)");
	bad1("spool_high_water", "1.5g", "not a size: '1.5g'");
	bad1("spool_high_water", "2000000g",
	     "out of range: '2000000g' (0..1125899906842624)");
	bad1("relay_defer_after", "8d", "out of range: '8d' (0s..7d)");
	bad1("relay_tls_ca_file", "/a\tb", "control character in path: '/a\\x09b'");
	bad1("transport_maps", "/a\x01" "b", "control character in path: '/a\\x01b'");
	bad("relay_host =\n", "t.conf:1: relay_host: empty value");

	/* retry_max below retry_min names retry_max, where it was set. */
	bad("retry_min = 10m\nretry_max = 5m\n",
	    "t.conf:2: retry_max: 5m is less than retry_min (10m)");
	bad("retry_min = 2h\n", "t.conf: retry_max: 1h is less than retry_min (2h)");
	{
		struct config_args a;
		char err[CONFIG_ERR_MAX];

		memset(&a, 0, sizeof(a));
		a.sets[a.nsets++] = "retry_max=30s";
		assert_null(load_args("retry_max = 1h\n", &a, err));
		assert_string_equal(err, "-o retry_max=30s: 30s is less than retry_min (1m)");
	}

	/* verify needs a CA file, which must be readable at load. */
	bad("relay_tls = verify\n", "t.conf:1: relay_tls: verify needs relay_tls_ca_file");
	{
		char want[CONFIG_ERR_MAX], text[256];
		const char *ca = write_file("ca.pem", "not really PEM: only opened\n");

		snprintf(text, sizeof(text), "relay_tls = verify\nrelay_tls_ca_file = %s\n", ca);
		cfg = ok(text);
		assert_int_equal(cfg->relay.tls, RELAY_TLS_VERIFY);
		assert_string_equal(cfg->relay.tls_ca_file, ca);
		p = print(cfg);
		snprintf(want, sizeof(want), "relay_tls = verify\nrelay_tls_ca_file = %s\n", ca);
		assert_non_null(strstr(p, want));
		free(p);
		config_free(cfg);
		snprintf(text, sizeof(text), "relay_tls = verify\nrelay_tls_ca_file = %s/none.pem\n",
			 tmpdir);
		snprintf(want, sizeof(want), "t.conf:2: relay_tls_ca_file: cannot open: %s",
			 strerror(ENOENT));
		bad(text, want);
	}
}

static void
test_relay_host(void **state)
{
	const struct relay_hop_conf *h;
	const struct sockaddr_in *s4;
	const struct sockaddr_in6 *s6;
	struct config *cfg;
	char text[512], want[CONFIG_ERR_MAX];
	char *p;

	(void)state;
	/* HOST:PORT is smtp; the default local domains route to it. */
	cfg = ok("relay_host = 127.0.0.1:25\n");
	assert_true(relay_enabled(&cfg->relay));
	assert_int_equal(cfg->relay.nhops, 1);
	assert_int_equal(cfg->relay.default_hop, 0);
	h = &cfg->relay.hops[0];
	assert_int_equal(h->m[0].proto, RELAY_PROTO_SMTP);
	assert_string_equal(h->text, "smtp:127.0.0.1:25");
	assert_string_equal(h->m[0].host, "127.0.0.1");
	s4 = (const struct sockaddr_in *)&h->a[0].sa;
	assert_int_equal(s4->sin_family, AF_INET);
	assert_int_equal(ntohl(s4->sin_addr.s_addr), INADDR_LOOPBACK);
	assert_int_equal(ntohs(s4->sin_port), 25);
	assert_int_equal(h->a[0].len, sizeof(*s4));
	assert_string_equal(route(cfg, "localhost"), "smtp:127.0.0.1:25");
	assert_string_equal(route(cfg, "anything.example"), "smtp:127.0.0.1:25");
	assert_string_equal(route(cfg, "[192.0.2.1]"), "smtp:127.0.0.1:25");
	p = print(cfg);
	assert_non_null(strstr(p, "\nspool_memory = 268435456\nrelay_host = 127.0.0.1:25\n"
				  "relay_tls = none\n"));
	free(p);
	config_free(cfg);

	cfg = ok("relay_host = lmtp:[0:0::1]:24\n");
	h = &cfg->relay.hops[0];
	assert_int_equal(h->m[0].proto, RELAY_PROTO_LMTP);
	assert_string_equal(h->text, "lmtp:[::1]:24");
	s6 = (const struct sockaddr_in6 *)&h->a[0].sa;
	assert_int_equal(s6->sin6_family, AF_INET6);
	assert_int_equal(ntohs(s6->sin6_port), 24);
	assert_int_equal(h->a[0].len, sizeof(*s6));
	config_free(cfg);

	cfg = ok("relay_host = smtp:[2001:db8::1]:2525\n");
	assert_string_equal(cfg->relay.hops[0].text, "smtp:[2001:db8::1]:2525");
	assert_int_equal(cfg->relay.hops[0].m[0].proto, RELAY_PROTO_SMTP);
	config_free(cfg);

	cfg = ok("relay_host = lmtp:unix:/run/dovecot/lmtp\n");
	h = &cfg->relay.hops[0];
	assert_string_equal(h->text, "lmtp:unix:/run/dovecot/lmtp");
	assert_string_equal(h->m[0].host, "");
	assert_int_equal(h->a[0].sa.ss_family, AF_UNIX);
	assert_string_equal(((const struct sockaddr_un *)&h->a[0].sa)->sun_path, "/run/dovecot/lmtp");
	assert_int_equal(h->a[0].len, offsetof(struct sockaddr_un, sun_path) + 18);
	config_free(cfg);

	/* A name is resolved at load time (first address); the text keeps
	 * the name, lower-cased. */
	cfg = ok("relay_host = LocalHost:2525\n");
	h = &cfg->relay.hops[0];
	assert_string_equal(h->text, "smtp:localhost:2525");
	assert_string_equal(h->m[0].host, "localhost");
	assert_string_equal(cfg->relay.relay_host, "LocalHost:2525"); /* as written */
	assert_true(h->a[0].sa.ss_family == AF_INET || h->a[0].sa.ss_family == AF_INET6);
	if (h->a[0].sa.ss_family == AF_INET)
		assert_int_equal(ntohs(((const struct sockaddr_in *)&h->a[0].sa)->sin_port), 2525);
	else
		assert_int_equal(ntohs(((const struct sockaddr_in6 *)&h->a[0].sa)->sin6_port), 2525);
	config_free(cfg);
	round_trip("relay_host = LocalHost:2525\n");
	round_trip("relay_host = lmtp:unix:/run/x\n");

	bad1("relay_host", "host", "bad next hop 'host': expected HOST:PORT");
	bad1("relay_host", "smtp:host", "bad next hop 'smtp:host': expected HOST:PORT");
	bad1("relay_host", "127.0.0.1:0", "bad next hop '127.0.0.1:0': port not in 1..65535");
	bad1("relay_host", "127.0.0.1:65536",
	     "bad next hop '127.0.0.1:65536': port not in 1..65535");
	bad1("relay_host", "127.0.0.1:smtp", "bad next hop '127.0.0.1:smtp': port not in 1..65535");
	bad1("relay_host", "::1:25", "bad next hop '::1:25': IPv6 addresses must be in brackets");
	bad1("relay_host", "[::g]:25", "bad next hop '[::g]:25': not an IPv6 address");
	bad1("relay_host", "[::1]25", "bad next hop '[::1]25': expected HOST:PORT");
	bad1("relay_host", "bad_host:25", "bad next hop 'bad_host:25': not a host name or address");
	bad1("relay_host", "1.2.3.256:25", "bad next hop '1.2.3.256:25': not a host name or address");
	bad1("relay_host", "esmtp:a.example:25",
	     "bad next hop 'esmtp:a.example:25': not a host name or address");
	bad1("relay_host", "smtp:unix:/run/x", "bad next hop 'smtp:unix:/run/x': a unix socket needs lmtp:");
	/* "unix:" in any case: a host "Unix" would print as a unix socket. */
	bad1("relay_host", "lmtp:Unix:28", "bad next hop 'lmtp:Unix:28': unix socket path must be "
					   "absolute");
	bad1("relay_host", "lmtp:unix:run/x",
	     "bad next hop 'lmtp:unix:run/x': unix socket path must be absolute");
	bad1("relay_host", "a.example:25 b.example:25",
	     "bad next hop 'a.example:25 b.example:25': blank or control character");
	/* sun_path holds 107 bytes and the NUL. */
	snprintf(text, sizeof(text), "lmtp:unix:/%0107d", 0);
	snprintf(want, sizeof(want), "bad next hop '%.64s...': unix socket path too long (max 107 bytes)",
		 text);
	bad1("relay_host", text, want);
	snprintf(text, sizeof(text), "relay_host = lmtp:unix:/%0106d\n", 0);
	config_free(ok(text));

	/* Resolution failures are errors naming the key and its line. */
	{
		char err[CONFIG_ERR_MAX];
		const char *t = "# x\nrelay_host = nonexistent.invalid:25\n";

		const char *pre = "t.conf:2: relay_host: cannot resolve 'nonexistent.invalid': ";

		assert_null(load(t, err));
		if (strncmp(err, pre, strlen(pre)) != 0)
			fail_msg("%s", err);
	}
	/* The name of an overridden relay_host is never looked up. */
	{
		struct config_args a;
		char err[CONFIG_ERR_MAX];

		memset(&a, 0, sizeof(a));
		a.sets[a.nsets++] = "relay_host=[::1]:25";
		cfg = load_args("relay_host = nonexistent.invalid:25\n", &a, err);
		assert_non_null(cfg);
		assert_string_equal(cfg->relay.hops[0].text, "smtp:[::1]:25");
		config_free(cfg);
	}

	/* A relay needs the spool. */
	bad("relay_host = 127.0.0.1:25\nsink = discard\n",
	    "t.conf:1: relay_host: needs sink = spool or jetstream");
	/* Direct spool writes would make every delivery read the disk. */
	bad("relay_host = 127.0.0.1:25\nspool_io = direct\n",
	    "t.conf:2: spool_io: direct cannot be used with relay_host or transport_maps (the relay "
	    "reads the spool back through the page cache); use auto or buffered");
	config_free(ok("relay_host = 127.0.0.1:25\nspool_io = buffered\n"));
	config_free(ok("spool_io = direct\n"));
}

static void
test_transport_maps(void **state)
{
	const char *map;
	struct config *cfg;
	char want[CONFIG_ERR_MAX];
	int star;

	(void)state;
	map = map_file("transport", "# comment\n"
				    "\n"
				    "   # indented comment\n"
				    "example.org      smtp:127.0.0.1:2525\n"
				    ".example.org\tlmtp:[::1]:24\r\n"
				    "  Sub.Example.NET  lmtp:unix:/run/lmtp.sock  \n"
				    ".net             smtp:127.0.0.1:2525\n"
				    "*                smtp:192.0.2.1:25");
	cfg = ok(with_map("domains = example.org, .example.org, b.example.net\n"
			  "transport_maps = @MAP@\n",
			  map));
	assert_true(relay_enabled(&cfg->relay));
	assert_string_equal(cfg->relay.transport_maps, map);
	assert_int_equal(cfg->relay.nmap, 4); /* "*" is default_hop */
	assert_int_equal(cfg->relay.nhops, 4); /* 127.0.0.1:2525 once */
	star = cfg->relay.default_hop;
	assert_true(star >= 0);
	assert_string_equal(cfg->relay.hops[star].text, "smtp:192.0.2.1:25");
	assert_string_equal(route(cfg, "example.org"), "smtp:127.0.0.1:2525");
	assert_string_equal(route(cfg, "EXAMPLE.Org"), "smtp:127.0.0.1:2525");
	assert_string_equal(route(cfg, "a.example.org"), "lmtp:[::1]:24");
	assert_string_equal(route(cfg, "a.b.EXAMPLE.org"), "lmtp:[::1]:24");
	assert_string_equal(route(cfg, "sub.example.net"), "lmtp:unix:/run/lmtp.sock");
	assert_string_equal(route(cfg, "x.sub.example.net"), "smtp:127.0.0.1:2525");
	assert_string_equal(route(cfg, "example.net"), "smtp:127.0.0.1:2525");
	assert_string_equal(route(cfg, "net"), "smtp:192.0.2.1:25");
	assert_string_equal(route(cfg, "xexample.org"), "smtp:192.0.2.1:25");
	assert_string_equal(route(cfg, "example.org.evil"), "smtp:192.0.2.1:25");
	assert_string_equal(route(cfg, "[127.0.0.1]"), "smtp:192.0.2.1:25");
	assert_string_equal(route(cfg, ""), "smtp:192.0.2.1:25");
	/* Not NUL terminated: only len bytes count. */
	assert_string_equal(cfg->relay.hops[relay_route(&cfg->relay, "example.orgX", 11)].text,
			    "smtp:127.0.0.1:2525");
	round_trip(with_map("domains = example.org\ntransport_maps = @MAP@\n", map));
	config_free(cfg);

	/* The map wins over relay_host, which is the default without "*";
	 * the same hop in both is one hop. */
	map = map_file("transport2", "example.org smtp:127.0.0.1:25\n"
				     ".example.org smtp:127.0.0.1:26\n");
	cfg = ok(with_map("domains = example.org, other.example\nrelay_host = 127.0.0.1:25\n"
			  "transport_maps = @MAP@\n",
			  map));
	assert_int_equal(cfg->relay.nhops, 2);
	assert_string_equal(cfg->relay.hops[cfg->relay.default_hop].text, "smtp:127.0.0.1:25");
	assert_string_equal(route(cfg, "x.example.org"), "smtp:127.0.0.1:26");
	assert_string_equal(route(cfg, "other.example"), "smtp:127.0.0.1:25");
	config_free(cfg);
	map = map_file("transport3", "* smtp:127.0.0.1:27\nexample.org smtp:127.0.0.1:25\n");
	cfg = ok(with_map("relay_host = 127.0.0.1:26\ntransport_maps = @MAP@\n", map));
	assert_int_equal(cfg->relay.nhops, 3);
	assert_string_equal(route(cfg, "localhost"), "smtp:127.0.0.1:27");
	config_free(cfg);

	/* Every local domain needs a route. */
	map = map_file("transport4", "example.org smtp:127.0.0.1:25\n");
	bad(with_map("transport_maps = @MAP@\ndomains = example.org\n  .example.org\n", map),
	    "t.conf:2: domains: no next hop for '.example.org': add it to transport_maps or "
	    "set relay_host");
	bad(with_map("transport_maps = @MAP@\n", map),
	    "t.conf: domains: no next hop for 'localhost': add it to transport_maps or set "
	    "relay_host");
	map = map_file("transport5", ".example.org smtp:127.0.0.1:25\n");
	config_free(ok(with_map("transport_maps = @MAP@\ndomains = .example.org, a.example.org\n",
				map)));
	bad(with_map("transport_maps = @MAP@\nsink = discard\ndomains = a.example.org\n", map),
	    "t.conf:1: transport_maps: needs sink = spool or jetstream");

	/* An empty map (comments only) enables nothing. */
	map = map_file("transport6", "# nothing yet\n\n");
	cfg = ok(with_map("transport_maps = @MAP@\nsink = discard\n", map));
	assert_false(relay_enabled(&cfg->relay));
	config_free(cfg);

	/* A name in the map is resolved too. */
	map = map_file("transport7", "example.org smtp:LOCALHOST:25\n");
	cfg = ok(with_map("transport_maps = @MAP@\ndomains = example.org\n", map));
	assert_string_equal(cfg->relay.hops[0].text, "smtp:localhost:25");
	assert_string_equal(cfg->relay.hops[0].m[0].host, "localhost");
	assert_true(cfg->relay.hops[0].a[0].len > 0);
	config_free(cfg);
	{
		char err[CONFIG_ERR_MAX];

		map = map_file("transport8", "example.org smtp:127.0.0.1:25\n"
					     "Example.NET lmtp:nonexistent.invalid:24\n");
		assert_null(load(with_map("domains = example.org\ntransport_maps = @MAP@\n", map),
				 err));
		snprintf(want, sizeof(want), "t.conf:2: transport_maps: %s:2: Example.NET: cannot "
					     "resolve 'nonexistent.invalid': ", map);
		assert_int_equal(strncmp(err, want, strlen(want)), 0);
	}

	/* Errors name the config line and the map's own line and domain. */
	map = map_file("bad1", "# x\nexample.net smtp:127.0.0.1:25\nexample.org smtp:host\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:3: example.org: bad next hop "
				     "'smtp:host': expected HOST:PORT", map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	map = map_file("bad2", "example.org 127.0.0.1:25\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:1: example.org: bad next hop "
				     "'127.0.0.1:25': expected smtp: or lmtp: before the host", map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	map = map_file("bad3", "a.example smtp:127.0.0.1:25\nexample.org smtp:127.0.0.1:25\n"
			       "b.example smtp:127.0.0.1:25\nExample.ORG smtp:127.0.0.1:26\n"
			       "a.example smtp:127.0.0.1:26\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:4: example.org: duplicate "
				     "domain (first on line 2)", map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	map = map_file("bad4", "* smtp:127.0.0.1:25\n* smtp:127.0.0.1:25\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:2: *: duplicate domain "
				     "(first on line 1)", map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	map = map_file("bad5", "bad_domain smtp:127.0.0.1:25\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:1: not a domain: 'bad_domain'",
		 map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	map = map_file("bad6", "example.org\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:1: example.org: no next hop "
				     "(expected 'DOMAIN NEXTHOP')", map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	map = map_file("bad7", "example.org smtp:127.0.0.1:25 # trailing\n");
	snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:1: example.org: extra text "
				     "after the next hop", map);
	bad(with_map("transport_maps = @MAP@\n", map), want);
	{
		char line[256];

		snprintf(line, sizeof(line), "example.org lmtp:unix:/%0107d\n", 0);
		map = map_file("bad8", line);
		snprintf(want, sizeof(want), "t.conf:1: transport_maps: %s:1: example.org: bad "
					     "next hop 'lmtp:unix:/%053d...': unix socket path too "
					     "long (max 107 bytes)", map, 0);
		bad(with_map("transport_maps = @MAP@\n", map), want);
	}
	snprintf(want, sizeof(want), "t.conf:2: transport_maps: %s/missing: cannot open: %s",
		 tmpdir, strerror(ENOENT));
	{
		char text[256];

		snprintf(text, sizeof(text), "#\ntransport_maps = %s/missing\n", tmpdir);
		bad(text, want);
	}
}

/* A relative transport_maps is found next to the configuration file. */
static void
test_transport_relative(void **state)
{
	struct config_args a;
	char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];
	struct config *cfg;

	(void)state;
	write_file("rel.map", "example.org lmtp:unix:/run/rel\n");
	memset(&a, 0, sizeof(a));
	a.config_path = write_file("rel.conf", "domains = example.org\ntransport_maps = rel.map\n");
	cfg = config_load(&a, err);
	if (cfg == NULL)
		fail_msg("%s", err);
	assert_string_equal(cfg->relay.transport_maps, "rel.map"); /* as written */
	assert_string_equal(route(cfg, "example.org"), "lmtp:unix:/run/rel");
	config_free(cfg);

	a.config_path = write_file("rel2.conf", "domains = example.org\n"
						"transport_maps = rel-missing.map\n");
	assert_null(config_load(&a, err));
	snprintf(want, sizeof(want), "%s:2: transport_maps: %s/rel-missing.map: cannot open: %s",
		 a.config_path, tmpdir, strerror(ENOENT));
	assert_string_equal(err, want);
}

/* The map's limits: entries and distinct next hops. */
static void
test_transport_limits(void **state)
{
	size_t cap = 4u << 20, o = 0, i;
	char *text = malloc(cap), want[CONFIG_ERR_MAX];
	struct relay_conf *r = calloc(1, sizeof(*r));
	char err[CONFIG_ERR_MAX];

	(void)state;
	assert_non_null(text);
	assert_non_null(r);
	for (i = 0; i < CONFIG_MAX_HOPS; i++)
		o += (size_t)snprintf(text + o, cap - o, "d%zu.example smtp:127.0.0.1:%zu\n", i,
				      i + 1);
	r->default_hop = -1;
	assert_int_equal(relay_map_parse(r, "m", text, o, NULL, err, sizeof(err)), 0);
	assert_int_equal(r->nhops, CONFIG_MAX_HOPS);
	relay_map_free(r);
	memset(r, 0, sizeof(*r));
	r->default_hop = -1;
	/* 64 hops in the map, and relay_host a 65th. */
	{
		const char *map = map_file("hops64", text);
		char conf[256];

		snprintf(conf, sizeof(conf), "domains = d1.example\nrelay_host = 127.0.0.1:9999\n"
					     "transport_maps = %s\n", map);
		bad(conf, "t.conf:2: relay_host: too many next hops with transport_maps (max 64)");
		snprintf(conf, sizeof(conf), "domains = d1.example\nrelay_host = 127.0.0.1:64\n"
					     "transport_maps = %s\n", map);
		config_free(ok(conf)); /* the same as the map's last: still 64 */
	}
	o += (size_t)snprintf(text + o, cap - o, "d64.example smtp:127.0.0.1:65\n");
	assert_int_equal(relay_map_parse(r, "m", text, o, NULL, err, sizeof(err)), -1);
	assert_string_equal(err, "m:65: d64.example: too many next hops (max 64)");
	assert_null(r->map);

	/* CONFIG_MAX_TRANSPORT entries, "*" included. */
	o = 0;
	for (i = 0; i < CONFIG_MAX_TRANSPORT - 1; i++)
		o += (size_t)snprintf(text + o, cap - o, "d%zu.example smtp:127.0.0.1:25\n", i);
	o += (size_t)snprintf(text + o, cap - o, "* smtp:127.0.0.1:26\n");
	memset(r, 0, sizeof(*r));
	r->default_hop = -1;
	assert_int_equal(relay_map_parse(r, "m", text, o, NULL, err, sizeof(err)), 0);
	assert_int_equal(r->nmap, CONFIG_MAX_TRANSPORT - 1);
	assert_int_equal(r->nhops, 2);
	assert_int_equal(relay_route(r, "d65534.example", 14), 0);
	assert_int_equal(relay_route(r, "D0.EXAMPLE", 10), 0);
	assert_int_equal(relay_route(r, "d65535.example", 14), 1);
	relay_map_free(r);
	o += (size_t)snprintf(text + o, cap - o, "one.more smtp:127.0.0.1:25\n");
	memset(r, 0, sizeof(*r));
	r->default_hop = -1;
	assert_int_equal(relay_map_parse(r, "m", text, o, NULL, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "m:%d: one.more: too many entries (max %d)",
		 CONFIG_MAX_TRANSPORT + 1, CONFIG_MAX_TRANSPORT);
	assert_string_equal(err, want);

	/* The parser alone: text without a final newline, NUL bytes, long
	 * lines. */
	memset(r, 0, sizeof(*r));
	r->default_hop = -1;
	assert_int_equal(relay_map_parse(r, "m", "a.example smtp:127.0.0.1:25", 27, NULL, err,
					 sizeof(err)), 0);
	assert_int_equal(r->nmap, 1);
	relay_map_free(r);
	memset(r, 0, sizeof(*r));
	assert_int_equal(relay_map_parse(r, "m", "x\n\0", 3, NULL, err, sizeof(err)), -1);
	assert_string_equal(err, "m:1: x: no next hop (expected 'DOMAIN NEXTHOP')");
	memset(r, 0, sizeof(*r));
	assert_int_equal(relay_map_parse(r, "m", "#\na\0b", 5, NULL, err, sizeof(err)), -1);
	assert_string_equal(err, "m:2: NUL byte in line");
	memset(text, 'a', CONFIG_LINE_MAX + 1);
	memset(r, 0, sizeof(*r));
	assert_int_equal(relay_map_parse(r, "m", text, CONFIG_LINE_MAX + 1, NULL, err,
					 sizeof(err)), -1);
	assert_string_equal(err, "m:1: line too long (max 4000 bytes)");
	free(r);
	free(text);
}

/* A next hop may list several members, tried in order (failover). */
static void
test_relay_host_list(void **state)
{
	const struct relay_hop_conf *h;
	struct config *cfg;
	struct relay_conf *r;
	char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];
	const char *map;

	(void)state;
	/* Brackets around IPv4 (Postfix's spelling) change nothing. */
	cfg = ok("relay_host = smtp:[127.0.0.1]:2525 ,smtp:[127.0.0.2]:2526,lmtp:[::1]:24\n");
	h = &cfg->relay.hops[0];
	assert_int_equal(cfg->relay.nhops, 1);
	assert_int_equal(h->nm, 3);
	assert_int_equal(h->na, 3);
	assert_string_equal(h->text, "smtp:127.0.0.1:2525, smtp:127.0.0.2:2526, lmtp:[::1]:24");
	assert_string_equal(h->m[1].host, "127.0.0.2");
	assert_int_equal(h->m[2].proto, RELAY_PROTO_LMTP);
	assert_int_equal(h->a[1].member, 1);
	assert_int_equal(ntohs(((const struct sockaddr_in *)&h->a[1].sa)->sin_port), 2526);
	assert_int_equal(h->a[2].sa.ss_family, AF_INET6);
	config_free(cfg);
	round_trip("relay_host = smtp:[127.0.0.1]:2525, smtp:[127.0.0.2]:2525\n");

	/* A name with its literal: the address is tried once. */
	cfg = ok("relay_host = 127.0.0.1:25, [localhost]:25\n");
	h = &cfg->relay.hops[0];
	assert_int_equal(h->nm, 2);
	assert_string_equal(h->text, "smtp:127.0.0.1:25, smtp:localhost:25");
	assert_true(h->na >= 1);
	for (unsigned i = 1; i < h->na; i++)
		assert_false(h->a[i].len == h->a[0].len &&
			     memcmp(&h->a[i].sa, &h->a[0].sa, h->a[0].len) == 0);
	config_free(cfg);

	bad1("relay_host", "a.example:25,,b.example:25",
	     "bad next hop 'a.example:25,,b.example:25': empty member in the list");
	bad1("relay_host", "a.example:25, a.example:25",
	     "bad next hop 'a.example:25, a.example:25': smtp:a.example:25 is listed twice");
	bad1("relay_host", "a:1,b:1,c:1,d:1,e:1,f:1,g:1,h:1,i:1",
	     "bad next hop 'a:1,b:1,c:1,d:1,e:1,f:1,g:1,h:1,i:1': more than 8 next hops in one "
	     "list");
	bad1("relay_host", "[a.example:25", "bad next hop '[a.example:25': expected HOST:PORT");

	/* In a transport map: blanks only around the commas. */
	map = map_file("transport-list", "example.org smtp:[127.0.0.1]:25, smtp:[127.0.0.2]:25\n"
					 "* smtp:127.0.0.3:25\n");
	cfg = ok(with_map("transport_maps = @MAP@\ndomains = example.org\n", map));
	assert_string_equal(route(cfg, "example.org"), "smtp:127.0.0.1:25, smtp:127.0.0.2:25");
	assert_int_equal(cfg->relay.hops[relay_route(&cfg->relay, "example.org", 11)].na, 2);
	config_free(cfg);
	r = calloc(1, sizeof(*r));
	assert_non_null(r);
	r->default_hop = -1;
	assert_int_equal(relay_map_parse(r, "m", "a.example smtp:a:25 smtp:b:25\n", 29, NULL, err,
					 sizeof(err)), -1);
	snprintf(want, sizeof(want), "m:1: a.example: extra text after the next hop");
	assert_string_equal(err, want);
	free(r);
}

/* Every relay key reloads; a reload may add, change or drop the relay. */
static void
test_relay_reload(void **state)
{
	const char *map = map_file("reload.map", "* smtp:127.0.0.1:25\n");
	struct config *a = ok("workers = 2\n");
	struct config *b = ok(with_map("workers = 2\nrelay_host = [::1]:25\n"
				       "transport_maps = @MAP@\nrelay_tls = may\n"
				       "relay_connections = 8\nrelay_connect_timeout = 5s\n"
				       "relay_reply_timeout = 60s\nrelay_idle_timeout = 0\n"
				       "retry_min = 1s\nretry_max = 10s\n"
				       "maximal_queue_lifetime = 1d\nspool_high_water = 1g\n"
				       "relay_defer_after = 0\n",
				       map));
	char err[CONFIG_ERR_MAX];

	(void)state;
	assert_true(relay_enabled(&b->relay));
	assert_int_equal(config_check_reload(a, b, err), 0);
	assert_int_equal(config_check_reload(b, a, err), 0);
	config_free(a);
	config_free(b);
}

/* milters (docs/config.md "Content filters"): the Postfix syntax, the
 * defaults, the errors naming the entry, and --print-config's round trip. */
static void
test_milters(void **state)
{
	(void)state;
	struct config *cfg = ok("milters = inet:127.0.0.1:11332, unix:/run/opendkim/o.sock\n"
				"    inet:[::1]:8891 local:/run/x.sock\n");
	assert_int_equal(cfg->milters.n, 4);
	assert_string_equal(cfg->milters.m[0].text, "inet:127.0.0.1:11332");
	assert_int_equal(cfg->milters.m[0].addr.ss_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&cfg->milters.m[0].addr)->sin_port), 11332);
	assert_int_equal(cfg->milters.m[1].addr.ss_family, AF_UNIX);
	assert_int_equal(cfg->milters.m[2].addr.ss_family, AF_INET6);
	assert_int_equal(cfg->milters.m[3].addr.ss_family, AF_UNIX);
	assert_int_equal(cfg->milters.default_action, MILTER_DEFAULT_TEMPFAIL);
	assert_true(cfg->milters.connect_timeout == 30ull * 1000000000ull);
	assert_true(cfg->milters.command_timeout == 30ull * 1000000000ull);
	assert_true(cfg->milters.content_timeout == 300ull * 1000000000ull);
	assert_int_equal(cfg->milters.conversation_limit, 256);
	char *p = print(cfg);
	assert_non_null(strstr(p, "milters = inet:127.0.0.1:11332, unix:/run/opendkim/o.sock, "
				  "inet:[::1]:8891, local:/run/x.sock\n"));
	assert_non_null(strstr(p, "milter_default_action = tempfail\n"));
	struct config *again = ok(p);
	assert_int_equal(again->milters.n, 4);
	free(p);
	config_free(again);
	config_free(cfg);
	cfg = ok("milter_default_action = accept\nmilter_content_timeout = 10m\n");
	assert_int_equal(cfg->milters.default_action, MILTER_DEFAULT_ACCEPT);
	assert_int_equal(cfg->milters.n, 0);
	config_free(cfg);
	cfg = ok("milters = inet:localhost:11332\n"); /* a name: the hosts file */
	assert_int_equal(cfg->milters.n, 1);
	assert_int_not_equal(cfg->milters.m[0].addrlen, 0);
	config_free(cfg);

	bad1("milters", "inet:foo", "'inet:foo': not inet:HOST:PORT");
	bad1("milters", "inet:127.0.0.1:0", "'inet:127.0.0.1:0': bad port");
	bad1("milters", "inet:127.0.0.1:70000", "'inet:127.0.0.1:70000': bad port");
	bad1("milters", "unix:relative.sock", "'unix:relative.sock': the socket path must be absolute");
	bad1("milters", "tcp:1.2.3.4:5", "'tcp:1.2.3.4:5': not inet:HOST:PORT or unix:/PATH");
	bad1("milters", "inet:[::1:5", "'inet:[::1:5': not inet:[ADDRESS]:PORT");
	bad1("milters", "inet:a:1 inet:a:2 inet:a:3 inet:a:4 inet:a:5 inet:a:6 inet:a:7 inet:a:8 inet:a:9",
	     "too many milters (max 8)");
	bad1("milter_default_action", "bounce", "not one of tempfail, accept, reject: 'bounce'");
	bad1("milter_conversation_limit", "0", "out of range: '0' (1..65536)");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_all_keys),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_spool_share),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_listen_valid),
		cmocka_unit_test(test_listen_invalid),
		cmocka_unit_test(test_listen_replaces_default),
		cmocka_unit_test(test_proxy_trusted),
		cmocka_unit_test(test_client_limits),
		cmocka_unit_test(test_hostname),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_domains_many),
		cmocka_unit_test(test_continuation),
		cmocka_unit_test(test_syntax),
		cmocka_unit_test(test_workers_cpus),
		cmocka_unit_test(test_parse_cpus_api),
		cmocka_unit_test(test_files),
		cmocka_unit_test(test_args_parse),
		cmocka_unit_test(test_args_limits),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_port),
		cmocka_unit_test(test_cli_errors),
		cmocka_unit_test(test_print),
		cmocka_unit_test(test_reload_check),
		cmocka_unit_test(test_usage),
		cmocka_unit_test(test_tls_keys),
		cmocka_unit_test(test_example_file),
		cmocka_unit_test(test_relay_defaults),
		cmocka_unit_test(test_relay_scalars),
		cmocka_unit_test(test_relay_host),
		cmocka_unit_test(test_relay_host_list),
		cmocka_unit_test(test_transport_maps),
		cmocka_unit_test(test_transport_relative),
		cmocka_unit_test(test_transport_limits),
		cmocka_unit_test(test_relay_reload),
		cmocka_unit_test(test_milters),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
