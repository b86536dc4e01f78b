/*
 * bench_parser.c - bytes/s of the SMTP core over a recorded pipelined
 * session, with no I/O: the cost the engine pays per byte before any
 * syscall.
 *
 * The session is what a pipelining client sends: EHLO, then per message
 * MAIL+RCPT+DATA in one group, a body of the chosen size with some
 * dot-leading lines, and the final dot, then QUIT. It is fed in chunks of
 * the chosen receive-buffer size (as the ring would deliver it) into a
 * session with a counting sink; replies go to an output buffer that is
 * emptied whenever the session reports it full.
 *
 * Usage: bench_parser [--size BYTES] [--messages N] [--chunk BYTES] [--seconds S]
 * Prints one line: MB/s, messages/s and ns per message.
 *
 * Ownership: everything is allocated once in main and freed at exit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ringmx/smtp.h"

struct count_sink {
	uint64_t bytes, messages;
	char tx; /* the transaction handle only needs an address */
};

static int
cs_open(void *self, struct sink_waiter *waiter, const struct sink_open_info *info, struct sink_tx **tx,
	char qid[SINK_QID_MAX])
{
	struct count_sink *c = self;
	(void)waiter;
	(void)info;
	memcpy(qid, "BENCH0000000", 13);
	*tx = (struct sink_tx *)&c->tx;
	return 0;
}
static int
cs_rcpt(struct sink_tx *tx, const char *r, size_t n)
{
	(void)tx;
	(void)r;
	(void)n;
	return 0;
}
static struct count_sink *g_sink;
static int
cs_data(struct sink_tx *tx, const char *p, size_t n)
{
	(void)tx;
	(void)p;
	g_sink->bytes += n;
	return 0;
}
static int
cs_commit(struct sink_tx *tx)
{
	(void)tx;
	g_sink->messages++;
	return SINK_DONE;
}
static void
cs_abort(struct sink_tx *tx)
{
	(void)tx;
}
static const struct sink_ops cs_ops = {cs_open, cs_rcpt, cs_data, cs_commit, cs_abort};

static size_t
append(char *buf, size_t off, const char *s)
{
	size_t n = strlen(s);
	memcpy(buf + off, s, n);
	return off + n;
}

/* Where a real pipelining client stops writing and waits for a reply:
 * after EHLO and after each DATA (RFC 2920: DATA ends a group). */
static size_t *g_cuts;
static unsigned g_ncuts;

static void
cut(size_t off)
{
	g_cuts[g_ncuts++] = off;
}

/* One recorded session with `messages` messages of about `size` bytes. */
static char *
record_session(size_t size, unsigned messages, size_t *len)
{
	g_cuts = calloc((size_t)messages + 3, sizeof(*g_cuts));
	if (g_cuts == NULL)
		return NULL;
	size_t cap = (size + 512) * messages + 4096;
	char *buf = malloc(cap);
	if (buf == NULL)
		return NULL;
	size_t off = append(buf, 0, "EHLO client.example.org\r\n");
	cut(off);
	for (unsigned m = 0; m < messages; m++) {
		off = append(buf, off,
			     "MAIL FROM:<sender@example.org> SIZE=1024 BODY=8BITMIME\r\n"
			     "RCPT TO:<user@example.test>\r\nDATA\r\n");
		cut(off);
		off = append(buf, off, "Subject: benchmark\r\nMessage-ID: <x@example.org>\r\n\r\n");
		size_t body = 0;
		for (unsigned line = 0; body < size; line++) {
			/* Every 16th line starts with a dot, to exercise unstuffing. */
			const char *l = line % 16 == 0
						? "..dot-stuffed line of a benchmark message body, 72 octets.....\r\n"
						: "an ordinary line of a benchmark message body, seventy-two octets\r\n";
			off = append(buf, off, l);
			body += strlen(l);
		}
		off = append(buf, off, ".\r\n");
	}
	off = append(buf, off, "QUIT\r\n");
	cut(off);
	*len = off;
	return buf;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	size_t size = 1024, chunk = 16384;
	unsigned messages = 100;
	double seconds = 3;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--size"))
			size = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--messages"))
			messages = (unsigned)strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--chunk"))
			chunk = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--seconds"))
			seconds = strtod(argv[i + 1], NULL);
		else {
			fprintf(stderr, "usage: bench_parser [--size B] [--messages N] [--chunk B] "
					"[--seconds S]\n");
			return 2;
		}
	}
	if (chunk == 0 || messages == 0)
		return 2;
	size_t len;
	char *session = record_session(size, messages, &len);
	if (session == NULL)
		return 1;

	static const char *const domains[] = {"example.test"};
	struct smtp_conf conf = {
		.hostname = "bench.example.test",
		.domains = domains,
		.ndomains = 1,
		.message_size_limit = 10240000,
		.recipient_limit = 1000,
	};
	struct smtp_peer peer = {.addr_text = "127.0.0.1", .port = 4242};
	struct count_sink cs = {0};
	g_sink = &cs;
	struct sink sink = {&cs_ops, &cs};
	struct ringmx_stats stats = {0};
	static char outbuf[4096];
	struct smtp_out out = {outbuf, 0, sizeof(outbuf)};
	struct smtp_session *s = malloc(sizeof(*s));
	if (s == NULL)
		return 1;

	uint64_t iterations = 0;
	double start = now_s(), elapsed;
	do {
		out.len = 0;
		smtp_session_init(s, &conf, &peer, &out, &sink, NULL, NULL, &stats, 1, 1795000000);
		smtp_session_start(s);
		unsigned next_cut = 0;
		for (size_t off = 0; off < len;) {
			size_t n = len - off < chunk ? len - off : chunk;
			/* A chunk never spans a point where the client waits. */
			while (g_cuts[next_cut] <= off)
				next_cut++;
			if (off + n > g_cuts[next_cut])
				n = g_cuts[next_cut] - off;
			size_t used = 0;
			while (used < n) {
				size_t u = smtp_session_feed(s, session + off + used, n - used, 2,
							     1795000000);
				used += u;
				if (smtp_session_status(s) & SMTP_ST_OUTFULL)
					out.len = 0; /* as if the reply batch was sent */
				else if (u == 0)
					break;
			}
			off += n;
		}
		iterations++;
		elapsed = now_s() - start;
	} while (elapsed < seconds);

	double bytes = (double)len * (double)iterations;
	uint64_t msgs = (uint64_t)messages * iterations;
	if (cs.messages != msgs) {
		fprintf(stderr, "bench_parser: expected %llu messages, sink saw %llu\n",
			(unsigned long long)msgs, (unsigned long long)cs.messages);
		return 1;
	}
	printf("bench_parser: size=%zu chunk=%zu: %.1f MB/s, %.0f messages/s, %.0f ns/message "
	       "(%llu sessions in %.2fs)\n",
	       size, chunk, bytes / elapsed / 1e6, (double)msgs / elapsed, elapsed * 1e9 / (double)msgs,
	       (unsigned long long)iterations, elapsed);
	free(s);
	free(session);
	free(g_cuts);
	return 0;
}
