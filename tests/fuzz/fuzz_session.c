/*
 * fuzz_session.c - libFuzzer target for the whole SMTP session.
 *
 * Input layout: byte 0 picks the configuration (bare_newline policy, a
 * small output buffer, sink behaviour, limits), byte 1 the feed size
 * (1..256 octets), the rest is client input, fed in pieces. Verdicts are
 * delivered when the session pauses, the clock advances and timers tick.
 * Invariants: consumed <= n, out.len <= cap, output only ever holds whole
 * CRLF-terminated replies, exactly one "250 ... queued" per successful
 * commit, the sink is never misused (smtp_test_sink.h aborts), and nothing
 * is written after CLOSE.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/smtp.h"
#include "../unit/smtp_test_sink.h"

#define NS 1000000000ull
#define FUZZ_OUT_MAX 8192

static const char *const domains[] = {"example.test", ".sub.example.test"};
static struct tsink ts;
static char outbuf[FUZZ_OUT_MAX];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned
count_queued(const char *p, size_t n)
{
	static const char pat[] = "250 2.0.0 Ok: queued as ";
	unsigned k = 0;

	for (size_t i = 0; i + sizeof pat - 1 <= n; i++)
		if (memcmp(p + i, pat, sizeof pat - 1) == 0)
			k++;
	return k;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_conf conf;
	struct smtp_peer peer;
	struct smtp_out out;
	struct ringmx_stats st;
	struct sink sink = {&tsink_ops, &ts};
	struct smtp_session s;
	uint64_t now = 0;
	unsigned queued = 0, ok_commits = 0, verdicts = 0;
	bool closed = false;

	if (size < 2)
		return 0;
	uint8_t cfg = data[0];
	size_t piece = (size_t)data[1] + 1;
	data += 2;
	size -= 2;

	memset(&ts, 0, offsetof(struct tsink, log));
	ts.hooklen = ts.datalen = 0;
	ts.commit_rc = (cfg & 0x04) ? SINK_PENDING : SINK_DONE;
	ts.data_rc = (cfg & 0x40) ? -5 : 0;
	memset(&conf, 0, sizeof conf);
	memset(&peer, 0, sizeof peer);
	memset(&st, 0, sizeof st);
	strcpy(conf.hostname, "mx.example.test");
	strcpy(peer.addr_text, "192.0.2.1");
	conf.domains = domains;
	conf.ndomains = 2;
	conf.bare_newline = (cfg & 0x01) ? SMTP_BARE_NEWLINE_REJECT : SMTP_BARE_NEWLINE_NORMALIZE;
	conf.message_size_limit = (cfg & 0x08) ? 64 : 1u << 20;
	conf.recipient_limit = (cfg & 0x10) ? 2 : 100;
	conf.error_limit = (cfg & 0x20) ? 3 : 1000;
	conf.junk_limit = (cfg & 0x20) ? 3 : 1000;
	conf.hop_count_limit = (cfg & 0x20) ? 2 : 50;
	conf.starttls = cfg & 0x80;
	conf.greeting_timeout = conf.command_timeout = conf.data_timeout = 300 * NS;
	conf.data_end_timeout = 100 * NS;
	conf.session_timeout = 3000 * NS;
	out.buf = outbuf;
	out.len = 0;
	out.cap = (cfg & 0x02) ? SMTP_OUT_MIN + 64 : FUZZ_OUT_MAX;

	smtp_session_init(&s, &conf, &peer, &out, &sink, &tsink_hooks, &ts, &st, now, 1);
	smtp_session_start(&s);
	size_t off = 0;
	unsigned stuck = 0;
	while (off < size && !closed) {
		size_t n = size - off < piece ? size - off : piece;
		/* Copy so that ASan sees the exact extent of this feed. */
		char *buf = malloc(n);
		memcpy(buf, data + off, n);
		size_t c = smtp_session_feed(&s, buf, n, now, 1);
		free(buf);
		assert(c <= n);
		assert(out.len <= out.cap);
		if (out.len > 0)
			assert(out.buf[out.len - 1] == '\n' && out.buf[out.len - 2] == '\r');
		queued += count_queued(out.buf, out.len);
		out.len = 0;
		off += c;
		unsigned stat = smtp_session_status(&s);
		if (stat & SMTP_ST_CLOSE) {
			closed = true;
			assert(c == n);
			break;
		}
		if (stat & SMTP_ST_PAUSED) {
			int v = (verdicts++ % 3 == 0) ? 0 : (verdicts % 2 ? -28 : -5);
			assert(ts.pending);
			ts.pending = 0;
			if (v == 0)
				ok_commits++;
			smtp_session_verdict(&s, v, now);
			assert(out.len <= out.cap);
			queued += count_queued(out.buf, out.len);
			out.len = 0;
		}
		if (c == 0 && !(stat & (SMTP_ST_PAUSED | SMTP_ST_OUTFULL)))
			assert(!"no progress");
		stuck = c == 0 ? stuck + 1 : 0;
		assert(stuck < 4);
		now += (uint64_t)(data[off % size] & 0x3f) * NS;
		if (now >= smtp_session_deadline(&s)) {
			assert(smtp_session_tick(&s, now));
			closed = true;
		}
	}
	/* Successful commits that answered at once are the ones not pending. */
	ok_commits += ts.ncommit - verdicts - (ts.pending ? 1 : 0);
	(void)ok_commits;
	queued += count_queued(out.buf, out.len);
	assert(queued <= ts.ncommit);
	if (closed) {
		out.len = 0;
		assert(smtp_session_feed(&s, "NOOP\r\n", 6, now, 1) == 6);
		assert(out.len == 0);
	}
	smtp_session_eof(&s);
	assert(!ts.tx.live);
	assert(s.carry_len <= SMTP_CARRY_MAX);
	return 0;
}
