/*
 * smtp_session.c - the SMTP server state machine (sans I/O).
 *
 * Bytes come in through smtp_session_feed(); replies are appended to the
 * caller's struct smtp_out; transactions go to a struct sink. The session
 * never reads a clock (time is passed in), never allocates, never does I/O.
 *
 * Ownership rules
 *  - Command lines are parsed in place as views into the fed input. Only a
 *    line split across feeds is copied, into the bounded carry
 *    (SMTP_CARRY_MAX); past that the line is discarded up to its CRLF.
 *  - Message content is handed to the sink as views into the fed input
 *    (smtp_body.c); the Received: header is formatted on the stack.
 *  - The transaction handle (s->tx) belongs to the sink from tx_open until
 *    tx_abort returns or tx_commit's verdict has been delivered; the
 *    session forgets it at that point and never touches it again.
 *
 * Invariants
 *  - The state changes only in enter(), which checks the transition.
 *  - A command (or end of data) is processed only with SMTP_OUT_MIN room in
 *    the output, so a reply and a following 421 always fit and are never
 *    split; otherwise feeding stops with SMTP_ST_OUTFULL.
 *  - Exactly one reply per end of data; once SMTP_S_QUIT is entered nothing
 *    more is written or read.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "ringmx/fmt.h"
#include "smtp_internal.h"

/* Bits for a command line's bare CR/LF (carry_bad). */
enum { LINE_BARE_LF = 1u << 0, LINE_BARE_CR = 1u << 1 };

/* BDAT chunk that is read and discarded, then refused (bdat_err). */
enum { BDAT_OK = 0, BDAT_NEED_MAIL, BDAT_NO_RCPT };

/* Received: header: helo 255 + hostname 255 + path 256 + TLS facts 128 + fixed text. */
#define RECEIVED_MAX 1280
/* One log line (hooks->log); fields are truncated to fit. */
#define LOG_LINE_MAX 1536

#define REPLY(s, lit) reply((s), lit "\r\n", sizeof(lit "\r\n") - 1)

static const char r_need_mail[] = "503 5.5.1 Error: need MAIL command\r\n";
static const char r_no_rcpt[] = "554 5.5.1 Error: no valid recipients\r\n";
static const char r_sink_err[] = "451 4.3.0 Error: queue file write error\r\n";
static const char r_no_space[] = "452 4.3.1 Insufficient system storage\r\n";
/* Backpressure from the relay: the next hop has been failing for a while. */
static const char r_busy[] = "451 4.3.0 Error: next hop unavailable, try again later\r\n";
/* A sink that stores elsewhere (jetstream) and got no acknowledgement. */
static const char r_queue_down[] = "451 4.3.0 Error: queue unavailable, try again later\r\n";
static const char r_too_big[] = "552 5.3.4 Message size exceeds fixed limit\r\n";
static const char r_bare_cr[] = "550 5.5.2 Error: bare <CR> received\r\n";
static const char r_bare_lf[] = "550 5.5.2 Error: bare <LF> received\r\n";
/* RFC 5321 6.3: a message with too many Received: fields is in a loop. */
static const char r_hops[] = "554 5.4.6 Too many hops\r\n";

/* ---- state, output, replies ---- */

static bool
closing(const struct smtp_session *s)
{
	return s->state == SMTP_S_QUIT;
}

static bool
in_tx(const struct smtp_session *s)
{
	return s->tx != NULL || s->state == SMTP_S_DATA || s->state == SMTP_S_BDAT ||
	       s->state == SMTP_S_VERDICT;
}

#define B(st) (1u << (st))
/* Legal transitions: from -> set of to. BDAT from CONNECTED/READY/MAIL is
 * a chunk that is read and then refused. */
static const unsigned legal[] __attribute__((unused)) = { /* read by assert() */
	[SMTP_S_CONNECTED] = B(SMTP_S_CONNECTED) | B(SMTP_S_READY) | B(SMTP_S_BDAT) | B(SMTP_S_QUIT),
	[SMTP_S_READY] = B(SMTP_S_CONNECTED) | B(SMTP_S_READY) | B(SMTP_S_MAIL) | B(SMTP_S_BDAT) |
			 B(SMTP_S_QUIT), /* READY -> CONNECTED: TLS started (RFC 3207) */
	[SMTP_S_MAIL] = B(SMTP_S_READY) | B(SMTP_S_RCPT) | B(SMTP_S_BDAT) | B(SMTP_S_QUIT),
	[SMTP_S_RCPT] = B(SMTP_S_READY) | B(SMTP_S_RCPT) | B(SMTP_S_DATA) | B(SMTP_S_BDAT) |
			B(SMTP_S_QUIT),
	[SMTP_S_DATA] = B(SMTP_S_READY) | B(SMTP_S_VERDICT) | B(SMTP_S_QUIT),
	[SMTP_S_BDAT] = B(SMTP_S_CONNECTED) | B(SMTP_S_READY) | B(SMTP_S_MAIL) | B(SMTP_S_RCPT) |
			B(SMTP_S_VERDICT) | B(SMTP_S_QUIT),
	[SMTP_S_VERDICT] = B(SMTP_S_READY) | B(SMTP_S_QUIT),
	[SMTP_S_QUIT] = 0,
};
#undef B

static void
enter(struct smtp_session *s, enum smtp_state to)
{
	assert(legal[s->state] & (1u << to));
	s->state = to;
}

static size_t
out_room(const struct smtp_session *s)
{
	return s->out->cap - s->out->len;
}

static void
tx_reset(struct smtp_session *s)
{
	s->tx = NULL;
	s->qid[0] = '\0';
	s->tx_utf8 = s->tx_bdat = s->tx_8bit = false;
	s->tx_size_decl = 0;
	s->tx_nrcpt = 0;
	s->tx_env_rcpt = 0;
	s->mail_from[0] = s->rcpt1[0] = '\0';
	memset(&s->body, 0, sizeof s->body);
}

static void
tx_abort(struct smtp_session *s)
{
	if (s->tx != NULL)
		s->sink->ops->tx_abort(s->tx);
	tx_reset(s);
}

static void
session_close(struct smtp_session *s)
{
	if (!closing(s)) {
		if (s->check_pending) {
			s->check_pending = false;
			s->pend_mail = false;
			s->hooks->check_cancel(s->owner);
		}
		tx_abort(s);
		enter(s, SMTP_S_QUIT);
	}
}

/* Replies are written whole or not at all. From feed() the SMTP_OUT_MIN
 * check guarantees room; the asynchronous entries (tick, shutdown) close
 * instead of writing half a reply. */
static bool
out_put(struct smtp_session *s, const char *p, size_t n)
{
	if (n > out_room(s))
		return false;
	memcpy(s->out->buf + s->out->len, p, n);
	s->out->len += n;
	return true;
}

/* 421 with the hostname; not counted as an error (it ends the session). */
static void
reply_421(struct smtp_session *s, const char *ecode, const char *text)
{
	char buf[SMTP_REPLY_MAX];
	int len = snprintf(buf, sizeof buf, "421 %s %s %s\r\n", ecode, s->conf->hostname, text);

	assert(len > 0 && (size_t)len < sizeof buf);
	out_put(s, buf, (size_t)len);
}

static void
reply(struct smtp_session *s, const char *text, size_t len)
{
	unsigned code;

	assert(len >= 5 && text[len - 2] == '\r' && text[len - 1] == '\n');
	if (!out_put(s, text, len)) {
		session_close(s);
		return;
	}
	if (text[0] != '4' && text[0] != '5')
		return;
	code = (unsigned)(text[0] - '0') * 100 + (unsigned)(text[1] - '0') * 10 +
	       (unsigned)(text[2] - '0');
	s->counts.errors++;
	if (code == 500 || code == 501 || code == 555)
		s->stats->syntax_errors++;
	else if (code == 503)
		s->stats->sequence_errors++;
	if (s->conf->error_limit != 0 && s->counts.errors > s->conf->error_limit && !closing(s)) {
		s->stats->error_limit++;
		reply_421(s, "4.7.0", "Error: too many errors");
		session_close(s);
	}
}

static void replyf(struct smtp_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
replyf(struct smtp_session *s, const char *fmt, ...)
{
	char buf[SMTP_REPLY_MAX];
	va_list ap;
	int len;

	va_start(ap, fmt);
	len = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	assert(len > 0 && (size_t)len < sizeof buf);
	reply(s, buf, (size_t)len);
}

/* ---- log hook ---- */

/* A line for hooks->log, built with fmt.h (no printf: these lines are per
 * message). The formatted pieces stop one byte short of the end, where
 * vsnprintf put its NUL when it built these lines, and client text
 * (lb_put) may take that byte, so a cut line is cut where it always was
 * (test_smtp_log.c keeps the vsnprintf builder to compare). */
struct logbuf {
	struct fmt f;
	char b[LOG_LINE_MAX];
};

static void
lb_init(struct logbuf *l)
{
	l->f = fmt_init(l->b, sizeof l->b - 1);
}

/* Client-supplied text is logged with control bytes (and, unless it is
 * valid UTF-8, non-ASCII) replaced, so a log line stays one line. One pass
 * for the usual ASCII text: the UTF-8 check only when a byte needs it
 * (over the whole text, also when only part of it fits). */
static void
lb_put(struct logbuf *l, const char *p, size_t n)
{
	size_t k = n < sizeof l->b - l->f.len ? n : sizeof l->b - l->f.len;
	char *d = l->b + l->f.len;
	unsigned char high = 0;

	for (size_t i = 0; i < k; i++) {
		unsigned char c = (unsigned char)p[i];

		high |= c;
		d[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if ((high & 0x80) && !smtp_utf8_valid(p, n))
		for (size_t i = 0; i < k; i++)
			if ((unsigned char)d[i] >= 0x80)
				d[i] = '?';
	l->f.len += k;
}

static void
lb_client(struct logbuf *l, const struct smtp_session *s)
{
	if (s->peer != NULL) {
		fmt_char(&l->f, '[');
		fmt_str(&l->f, s->peer->addr_text);
		fmt_lit(&l->f, "]:");
		fmt_u64(&l->f, s->peer->port);
	} else {
		fmt_lit(&l->f, "[unknown]");
	}
}

static void
lb_emit(struct smtp_session *s, enum smtp_log_role role, struct logbuf *l)
{
	s->hooks->log(s->owner, role, l->b, l->f.len);
}

/* NOQUEUE: reject: MAIL/RCPT from [ip]:port: <reply>; from=<> [to=<>] ... */
void
smtp_log_reject(struct smtp_session *s, const char *verb, const char *text, size_t len,
		const char *addr, size_t addr_len)
{
	struct logbuf l;

	if (s->hooks == NULL || s->hooks->log == NULL)
		return;
	lb_init(&l);
	fmt_lit(&l.f, "NOQUEUE: reject: ");
	fmt_str(&l.f, verb);
	fmt_lit(&l.f, " from ");
	lb_client(&l, s);
	fmt_lit(&l.f, ": ");
	lb_put(&l, text, len - 2);
	fmt_lit(&l.f, "; from=<");
	if (verb[0] == 'M') {
		lb_put(&l, addr, addr_len);
	} else {
		lb_put(&l, s->mail_from, strlen(s->mail_from));
		fmt_lit(&l.f, "> to=<");
		lb_put(&l, addr, addr_len);
	}
	if (s->esmtp)
		fmt_lit(&l.f, "> proto=ESMTP helo=<");
	else
		fmt_lit(&l.f, "> proto=SMTP helo=<");
	lb_put(&l, s->helo, strlen(s->helo));
	fmt_char(&l.f, '>');
	lb_emit(s, SMTP_LOG_SESSION, &l);
}

void
smtp_log_message(struct smtp_session *s, const char *text, size_t len, bool sent)
{
	struct logbuf l;

	if (s->hooks == NULL || s->hooks->log == NULL)
		return;
	lb_init(&l);
	fmt_str(&l.f, s->qid);
	fmt_lit(&l.f, ": client=");
	lb_client(&l, s);
	fmt_lit(&l.f, ", helo=<");
	lb_put(&l, s->helo, strlen(s->helo));
	fmt_lit(&l.f, ">, from=<");
	lb_put(&l, s->mail_from, strlen(s->mail_from));
	fmt_lit(&l.f, ">, nrcpt=");
	fmt_u64(&l.f, s->tx_nrcpt);
	fmt_lit(&l.f, ", size=");
	fmt_u64(&l.f, s->body.size);
	if (sent)
		fmt_lit(&l.f, ", status=queued (");
	else
		fmt_lit(&l.f, ", status=rejected (");
	lb_put(&l, text, len - 2);
	fmt_char(&l.f, ')');
	lb_emit(s, SMTP_LOG_SESSION, &l);
	if (!sent)
		return;
	/* Postfix's qmgr line, after smtpd's: pflogsumm takes sender and size
	 * from it, and only for a queue id whose client= line it has seen. */
	lb_init(&l);
	fmt_str(&l.f, s->qid);
	fmt_lit(&l.f, ": from=<");
	lb_put(&l, s->mail_from, strlen(s->mail_from));
	fmt_lit(&l.f, ">, size=");
	fmt_u64(&l.f, s->body.size);
	fmt_lit(&l.f, ", nrcpt=");
	fmt_u64(&l.f, s->tx_nrcpt);
	fmt_lit(&l.f, " (queued)");
	lb_emit(s, SMTP_LOG_QUEUE, &l);
}

/* The counters of the disconnect line, in Postfix's order. */
static const struct {
	char name[11]; /* " ehlo=" */
	uint8_t len;
	uint8_t off; /* in struct smtp_counts */
} disconnect_counts[] = {
#define COUNT(f) {" " #f "=", sizeof(" " #f "=") - 1, offsetof(struct smtp_counts, f)}
	COUNT(ehlo), COUNT(helo), COUNT(mail), COUNT(rcpt), COUNT(data),
	COUNT(bdat), COUNT(rset), COUNT(noop), COUNT(vrfy), COUNT(quit),
	COUNT(unknown), COUNT(messages), COUNT(errors),
#undef COUNT
};

size_t
smtp_session_disconnect_line(const struct smtp_session *s, const struct smtp_peer *peer,
			     const char *tls_version, const char *tls_cipher, bool tls_resumed,
			     uint64_t duration_ns, char *dst)
{
	/* One byte short of the buffer, as the snprintf chain that built
	 * this line before left room for its NUL. */
	struct fmt f = fmt_init(dst, SMTP_DISCONNECT_LINE_MAX - 1);

	fmt_lit(&f, "disconnect from [");
	fmt_str(&f, peer->addr_text);
	fmt_lit(&f, "]:");
	fmt_u64(&f, peer->port);
	if (s->helo[0]) {
		fmt_lit(&f, " helo=<");
		fmt_str(&f, s->helo);
		fmt_char(&f, '>');
	}
	for (size_t i = 0; i < sizeof disconnect_counts / sizeof disconnect_counts[0]; i++) {
		uint32_t v;

		memcpy(&v, (const char *)&s->counts + disconnect_counts[i].off, sizeof v);
		if (v != 0) {
			fmt_bytes(&f, disconnect_counts[i].name, disconnect_counts[i].len);
			fmt_u64(&f, v);
		}
	}
	if (tls_version != NULL) {
		fmt_lit(&f, " tls=");
		fmt_str(&f, tls_version);
		fmt_char(&f, '/');
		fmt_str(&f, tls_cipher);
		if (tls_resumed)
			fmt_lit(&f, "/resumed");
	}
	fmt_lit(&f, " commands=");
	fmt_u64(&f, s->counts.commands);
	fmt_lit(&f, " duration=");
	fmt_secs3(&f, duration_ns);
	fmt_char(&f, 's');
	return f.len;
}

/* A MAIL/RCPT refusal: the reply plus one log line. */
static void
reject(struct smtp_session *s, const char *verb, const char *text, size_t len, const char *addr,
       size_t addr_len)
{
	smtp_log_reject(s, verb, text, len, addr, addr_len);
	reply(s, text, len);
}

/* 555 for an unknown esmtp-keyword; smtp_param_next() checked its syntax,
 * so it is safe to echo. */
static void
reject_option(struct smtp_session *s, const char *verb, const struct smtp_param *prm,
	      const char *addr, size_t addr_len)
{
	char buf[SMTP_REPLY_MAX];
	int len = snprintf(buf, sizeof buf, "555 5.5.4 Unsupported option: %.*s\r\n",
			   (int)(prm->key_len < 64 ? prm->key_len : 64), prm->key);

	assert(len > 0 && (size_t)len < sizeof buf);
	reject(s, verb, buf, (size_t)len, addr, addr_len);
}

#define REJECT(s, verb, lit, a, an) reject((s), verb, lit "\r\n", sizeof(lit "\r\n") - 1, a, an)

/* ---- policy (struct smtp_hooks.check) ---- */

static void mail_accept(struct smtp_session *s);

static int
policy_check(struct smtp_session *s, enum smtp_check_point what, const char *addr, size_t len,
	     struct smtp_check_reply *r)
{
	int res;

	if (s->hooks == NULL || s->hooks->check == NULL)
		return SMTP_CHECK_OK;
	r->len = 0;
	res = s->hooks->check(s->owner, what, addr, len, r);
	assert(res == SMTP_CHECK_OK || res == SMTP_CHECK_REJECT ||
	       (res == SMTP_CHECK_PENDING && what != SMTP_CHECK_STARTTLS));
	assert(res != SMTP_CHECK_REJECT ||
	       (r->len >= 5 && r->len < sizeof r->text && r->text[r->len - 2] == '\r' &&
		r->text[r->len - 1] == '\n'));
	return res;
}

/* A policy refusal; 421 (a per-client limit) and 521 (a screened client,
 * RFC 7504) end the session. */
static void
policy_reject(struct smtp_session *s, const char *verb, const struct smtp_check_reply *r,
	      const char *addr, size_t addr_len)
{
	if (verb != NULL)
		reject(s, verb, r->text, r->len, addr, addr_len);
	else
		reply(s, r->text, r->len);
	if (memcmp(r->text, "421", 3) == 0 || memcmp(r->text, "521", 3) == 0)
		session_close(s);
}

/* ---- message content ---- */

static int
body_emit(void *ctx, const char *p, size_t n)
{
	struct smtp_session *s = ctx;

	s->stats->message_bytes += n;
	return s->sink->ops->tx_data(s->tx, p, n);
}

static void
body_env(struct smtp_session *s, struct smtp_body_env *env)
{
	env->emit = body_emit;
	env->ctx = s;
	env->size_limit = s->conf->message_size_limit;
	env->reject_bare_lf = s->conf->bare_newline == SMTP_BARE_NEWLINE_REJECT;
	env->stats = s->stats;
	env->hop_limit = s->conf->hop_count_limit;
}

/* RFC 5322 3.3 date-time in UTC; month/day names are not locale-dependent.
 * Built with fmt.h, like the header around it: snprintf was the largest
 * user-space cost of a small message after the parser. */
static void
put_date(struct fmt *f, int64_t wall)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)wall;
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 0) {
		t = 0;
		gmtime_r(&t, &tm);
	}
	fmt_bytes(f, days[tm.tm_wday % 7], 3);
	fmt_lit(f, ", ");
	fmt_digits(f, (uint64_t)tm.tm_mday, 2);
	fmt_char(f, ' ');
	fmt_bytes(f, months[tm.tm_mon % 12], 3);
	fmt_char(f, ' ');
	fmt_digits(f, (uint64_t)tm.tm_year + 1900, 4);
	fmt_char(f, ' ');
	fmt_digits(f, (uint64_t)tm.tm_hour, 2);
	fmt_char(f, ':');
	fmt_digits(f, (uint64_t)tm.tm_min, 2);
	fmt_char(f, ':');
	fmt_digits(f, (uint64_t)tm.tm_sec, 2);
	fmt_lit(f, " +0000");
}

/* RFC 5321 4.4 trace header, the first bytes of every message. */
static void
emit_received(struct smtp_session *s)
{
	char buf[RECEIVED_MAX];
	/* RFC 3848 / RFC 6531: a trailing S says the session ran over TLS. */
	static const char *const protos[2][3] = {{"SMTP", "ESMTP", "UTF8SMTP"},
						 {"SMTPS", "ESMTPS", "UTF8SMTPS"}};
	const char *proto = protos[s->tls_active][!s->esmtp ? 0 : s->tx_utf8 ? 2 : 1];
	const char *addr = s->peer != NULL ? s->peer->addr_text : "unknown";
	struct fmt f = fmt_init(buf, sizeof buf);

	fmt_lit(&f, "Received: from ");
	fmt_str(&f, s->helo);
	fmt_lit(&f, " ([");
	fmt_str(&f, addr);
	fmt_lit(&f, "])\r\n");
	/* Postfix's form of the TLS facts, as a comment after "from". */
	if (s->tls_active) {
		fmt_lit(&f, "\t(using ");
		fmt_str(&f, s->tls_info);
		fmt_lit(&f, ")\r\n");
	}
	fmt_lit(&f, "\tby ");
	fmt_str(&f, s->conf->hostname);
	fmt_lit(&f, " (ringmx) with ");
	fmt_str(&f, proto);
	fmt_lit(&f, " id ");
	fmt_str(&f, s->qid);
	if (s->tx_nrcpt == 1) {
		fmt_lit(&f, "\r\n\tfor <");
		fmt_str(&f, s->rcpt1);
		fmt_lit(&f, ">; ");
	} else {
		fmt_lit(&f, ";\r\n\t");
	}
	put_date(&f, s->now_wall);
	fmt_lit(&f, "\r\n");
	assert(f.len < sizeof buf); /* RECEIVED_MAX holds the longest fields */
	s->stats->message_bytes += f.len;
	if (s->sink->ops->tx_data(s->tx, buf, f.len) < 0)
		s->body.flags |= SMTP_BODY_F_SINK_ERR;
}

/* The transaction's final reply: log, forget the transaction, reply. */
static void
message_done(struct smtp_session *s, const char *text, size_t len, bool sent)
{
	/* Every final reply after the end of data, refusals too: what a
	 * client waits for there is the sink (fsync, milters). */
	RINGMX_HIST_OBSERVE(s->stats, eod_reply, (s->now - s->t_verdict) / 1000u);
	if (sent) {
		s->stats->messages_accepted++;
		s->counts.messages++;
	} else {
		s->stats->messages_rejected++;
	}
	smtp_log_message(s, text, len, sent);
	tx_abort(s); /* no-op unless refused before tx_commit */
	enter(s, SMTP_S_READY);
	reply(s, text, len);
}

/* tx_commit's answer (now or through smtp_session_verdict()). */
static void
message_verdict(struct smtp_session *s, int res)
{
	char buf[SMTP_REPLY_MAX];
	int len;

	s->tx = NULL; /* the sink is done with it: never abort it */
	if (res == 0) {
		len = snprintf(buf, sizeof buf, "250 2.0.0 Ok: queued as %s\r\n", s->qid);
		assert(len > 0 && (size_t)len < sizeof buf);
		message_done(s, buf, (size_t)len, true);
		return;
	}
	s->stats->sink_errors++;
	if (res == -ENOSPC)
		message_done(s, r_no_space, sizeof r_no_space - 1, false);
	else if (res == -EAGAIN)
		message_done(s, r_queue_down, sizeof r_queue_down - 1, false);
	else
		message_done(s, r_sink_err, sizeof r_sink_err - 1, false);
}

static void
message_end(struct smtp_session *s)
{
	unsigned f = s->body.flags;
	int rc;

	s->t_verdict = s->now;
	/* The protocol failures are decided by the content alone, whatever
	 * the feed boundaries (which decide how much reached a failing sink),
	 * so they take precedence. */
	if (f & SMTP_BODY_F_FAILED) {
		if (f & SMTP_BODY_F_TOO_BIG) {
			s->stats->size_limit++;
			message_done(s, r_too_big, sizeof r_too_big - 1, false);
		} else if (f & SMTP_BODY_F_BARE_CR) {
			message_done(s, r_bare_cr, sizeof r_bare_cr - 1, false);
		} else if (f & SMTP_BODY_F_BARE_LF) {
			message_done(s, r_bare_lf, sizeof r_bare_lf - 1, false);
		} else if (f & SMTP_BODY_F_HOPS) {
			s->stats->hop_limit++;
			message_done(s, r_hops, sizeof r_hops - 1, false);
		} else {
			s->stats->sink_errors++;
			message_done(s, r_sink_err, sizeof r_sink_err - 1, false);
		}
		return;
	}
	rc = s->sink->ops->tx_commit(s->tx);
	if (rc == SINK_PENDING) {
		enter(s, SMTP_S_VERDICT);
		return;
	}
	message_verdict(s, rc == SINK_DONE ? 0 : rc < 0 ? rc : -EIO);
}

static size_t
data_feed(struct smtp_session *s, const char *p, size_t n)
{
	struct smtp_body_env env;
	size_t k;

	body_env(s, &env);
	k = smtp_body_feed(&s->body, &env, p, n);
	if (smtp_body_done(&s->body))
		message_end(s);
	return k;
}

static void
bdat_chunk_end(struct smtp_session *s)
{
	struct smtp_body_env env;

	if (s->bdat_err != BDAT_OK) {
		unsigned err = s->bdat_err;

		s->bdat_err = BDAT_OK;
		enter(s, s->bdat_ret);
		if (err == BDAT_NEED_MAIL)
			reply(s, r_need_mail, sizeof r_need_mail - 1);
		else
			reply(s, r_no_rcpt, sizeof r_no_rcpt - 1);
		return;
	}
	if (s->bdat_last) {
		body_env(s, &env);
		smtp_body_finish(&s->body, &env);
		message_end(s);
	} else if (s->body.flags & SMTP_BODY_F_FAILED) {
		/* The first failing chunk ends the transaction. */
		message_end(s);
	} else {
		enter(s, SMTP_S_RCPT);
		replyf(s, "250 2.0.0 Ok: %" PRIu64 " octets received\r\n", s->bdat_count);
	}
}

static size_t
bdat_feed(struct smtp_session *s, const char *p, size_t n)
{
	size_t k = n < s->bdat_left ? n : (size_t)s->bdat_left;

	/* A failed body is still decoded (nothing reaches the sink) so its
	 * size does not depend on feed boundaries. */
	if (s->bdat_err == BDAT_OK) {
		struct smtp_body_env env;

		body_env(s, &env);
		smtp_body_feed(&s->body, &env, p, k);
	}
	s->bdat_left -= k;
	if (s->bdat_left == 0)
		bdat_chunk_end(s);
	return k;
}

/* ---- commands ---- */

static bool
helo_arg_ok(const struct smtp_cmdline *c)
{
	if (c->arg_len == 0 || c->arg_len > SMTP_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < c->arg_len; i++)
		if ((unsigned char)c->arg[i] < 0x21 || (unsigned char)c->arg[i] > 0x7e)
			return false;
	return true;
}

static void
helo_common(struct smtp_session *s, const struct smtp_cmdline *c, bool esmtp)
{
	tx_abort(s);
	memcpy(s->helo, c->arg, c->arg_len);
	s->helo[c->arg_len] = '\0';
	s->esmtp = esmtp;
	enter(s, SMTP_S_READY);
}

static bool
starttls_offered(const struct smtp_session *s)
{
	return (s->tls_offer || s->conf->starttls) && !s->tls_active;
}

void
smtp_cmd_helo(struct smtp_session *s, const struct smtp_cmdline *c)
{
	s->counts.helo++;
	if (!helo_arg_ok(c)) {
		REPLY(s, "501 5.5.4 Syntax: HELO hostname");
		return;
	}
	helo_common(s, c, false);
	replyf(s, "250 %s\r\n", s->conf->hostname);
}

void
smtp_cmd_ehlo(struct smtp_session *s, const struct smtp_cmdline *c)
{
	s->counts.ehlo++;
	if (!helo_arg_ok(c)) {
		REPLY(s, "501 5.5.4 Syntax: EHLO hostname");
		return;
	}
	helo_common(s, c, true);
	replyf(s,
	       "250-%s\r\n250-PIPELINING\r\n250-SIZE %" PRIu64 "\r\n250-8BITMIME\r\n"
	       "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n%s250 CHUNKING\r\n",
	       s->conf->hostname, s->conf->message_size_limit,
	       starttls_offered(s) ? "250-STARTTLS\r\n" : "");
}

enum { P_SIZE = 1u << 0, P_BODY = 1u << 1, P_UTF8 = 1u << 2 };

void
smtp_cmd_mail(struct smtp_session *s, const struct smtp_cmdline *c)
{
	const char *path = c->arg, *params;
	size_t plen = c->arg_len, nparams;
	struct smtp_param prm;
	struct smtp_addr a;
	unsigned seen = 0;
	uint64_t size = 0;
	bool eightbit = false, utf8 = false;
	int r;

	s->counts.mail++;
	/* As in RCPT: the reject lines below log the address, not the raw
	 * argument, whenever the argument parses. */
	if (smtp_parse_path_arg(c->arg, c->arg_len, "FROM:", 5, &path, &plen, &params, &nparams) <
	    0) {
		path = c->arg;
		plen = c->arg_len;
	}
	if (s->tls_require && !s->tls_active) {
		REJECT(s, "MAIL", "530 5.7.0 Must issue a STARTTLS command first", path, plen);
		return;
	}
	if (s->state == SMTP_S_CONNECTED) {
		REJECT(s, "MAIL", "503 5.5.1 Error: send HELO/EHLO first", path, plen);
		return;
	}
	if (s->state != SMTP_S_READY) {
		REJECT(s, "MAIL", "503 5.5.1 Error: nested MAIL command", path, plen);
		return;
	}
	if (smtp_parse_path_arg(c->arg, c->arg_len, "FROM:", 5, &path, &plen, &params, &nparams) <
	    0) {
		REJECT(s, "MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>", c->arg, c->arg_len);
		return;
	}
	while ((r = smtp_param_next(&params, &nparams, &prm)) > 0) {
		unsigned bit;
		uint64_t v_size = 0;
		bool v_8bit = false;

		if (prm.key_len == 4 && smtp_ieq(prm.key, "SIZE", 4))
			bit = P_SIZE;
		else if (prm.key_len == 4 && smtp_ieq(prm.key, "BODY", 4))
			bit = P_BODY;
		else if (prm.key_len == 8 && smtp_ieq(prm.key, "SMTPUTF8", 8))
			bit = P_UTF8;
		else {
			reject_option(s, "MAIL", &prm, path, plen);
			return;
		}
		if (bit == P_SIZE) {
			if (prm.val == NULL || smtp_parse_u64(prm.val, prm.val_len, &v_size) < 0) {
				REJECT(s, "MAIL", "501 5.5.4 Bad SIZE syntax", path, plen);
				return;
			}
		} else if (bit == P_BODY) {
			if (prm.val != NULL && prm.val_len == 8 && smtp_ieq(prm.val, "8BITMIME", 8)) {
				v_8bit = true;
			} else if (!(prm.val != NULL && prm.val_len == 4 &&
				     smtp_ieq(prm.val, "7BIT", 4))) {
				REJECT(s, "MAIL", "501 5.5.4 Unsupported BODY type", path, plen);
				return;
			}
		} else if (prm.val != NULL) {
			REJECT(s, "MAIL", "501 5.5.4 Bad SMTPUTF8 syntax", path, plen);
			return;
		}
		/* The same parameter again with the same value (SIZE compared
		 * as a number, BODY's keyword case-insensitively) says nothing
		 * new: Python's smtplib repeats SMTPUTF8 and BODY=8BITMIME it
		 * adds itself, and Postfix takes it. Only a conflict is an
		 * error. */
		if ((seen & bit) && ((bit == P_SIZE && v_size != size) ||
				     (bit == P_BODY && v_8bit != eightbit))) {
			REJECT(s, "MAIL", "501 5.5.4 Duplicate parameter with a different value", path,
			       plen);
			return;
		}
		seen |= bit;
		if (bit == P_SIZE)
			size = v_size;
		else if (bit == P_BODY)
			eightbit = v_8bit;
		else
			utf8 = true;
	}
	if (r < 0) {
		REJECT(s, "MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>", path, plen);
		return;
	}
	switch (smtp_addr_parse(path, plen, utf8, &a)) {
	case SMTP_ADDR_OK:
	case SMTP_ADDR_RELAY_TRICK: /* harmless in a sender */
	case SMTP_ADDR_LITERAL:
		break;
	case SMTP_ADDR_UTF8:
		REJECT(s, "MAIL", "553 5.6.7 Must declare SMTPUTF8 to send UTF-8 address", path,
		       plen);
		return;
	default:
		REJECT(s, "MAIL", "501 5.1.7 Bad sender address syntax", path, plen);
		return;
	}
	if (s->conf->message_size_limit != 0 && size > s->conf->message_size_limit) {
		s->stats->size_limit++;
		REJECT(s, "MAIL", "552 5.3.4 Message size exceeds fixed limit", path, plen);
		return;
	}

	/* Kept before the policy is asked: an answer that comes later
	 * (SMTP_CHECK_PENDING) resumes from here in mail_accept(). */
	memcpy(s->mail_from, path, plen);
	s->mail_from[plen] = '\0';
	s->tx_utf8 = utf8;
	s->tx_8bit = eightbit;
	s->tx_size_decl = size;
	struct smtp_check_reply cr;
	switch (policy_check(s, SMTP_CHECK_MAIL, path, plen, &cr)) {
	case SMTP_CHECK_OK:
		mail_accept(s);
		return;
	case SMTP_CHECK_PENDING:
		s->check_pending = true;
		s->pend_mail = true;
		return;
	default:
		policy_reject(s, "MAIL", &cr, path, plen);
		tx_reset(s);
		return;
	}
}

/* MAIL passed every check (the sender and its parameters are in the
 * session): open the transaction. */
static void
mail_accept(struct smtp_session *s)
{
	size_t plen = strlen(s->mail_from);
	struct sink_open_info info = {
		.peer = s->peer,
		.helo = s->helo,
		.from = s->mail_from,
		.from_len = plen,
		.size_declared = s->tx_size_decl,
		.utf8 = s->tx_utf8,
		.eightbit = s->tx_8bit,
		.esmtp = s->esmtp,
		.wall = s->now_wall,
		.tls = s->tls_active ? s->tls_info : "",
	};
	int r;

	s->qid[0] = '\0';
	r = s->sink->ops->tx_open(s->sink->self, s->waiter, &info, &s->tx, s->qid);
	if (r < 0) {
		s->tx = NULL;
		s->stats->sink_errors++;
		if (r == -ENOSPC)
			reject(s, "MAIL", r_no_space, sizeof r_no_space - 1, s->mail_from, plen);
		else if (r == -EBUSY)
			reject(s, "MAIL", r_busy, sizeof r_busy - 1, s->mail_from, plen);
		else
			reject(s, "MAIL", r_sink_err, sizeof r_sink_err - 1, s->mail_from, plen);
		tx_reset(s);
		return;
	}
	s->qid[SINK_QID_MAX - 1] = '\0';
	s->tx_nrcpt = 0;
	s->tx_env_rcpt = 0;
	enter(s, SMTP_S_MAIL);
	REPLY(s, "250 2.1.0 Ok");
}

/* A recipient passed every check: the sink takes it. */
static void
rcpt_accept(struct smtp_session *s, const char *path, size_t plen)
{
	int r = s->sink->ops->tx_rcpt(s->tx, path, plen);

	if (r < 0) {
		s->stats->sink_errors++;
		reject(s, "RCPT", r_sink_err, sizeof r_sink_err - 1, path, plen);
		return;
	}
	if (s->tx_nrcpt == 0) {
		memcpy(s->rcpt1, path, plen);
		s->rcpt1[plen] = '\0';
	}
	s->tx_nrcpt++;
	s->tx_env_rcpt += SMTP_ENV_RCPT_COST + plen;
	s->stats->rcpt_accepted++;
	enter(s, SMTP_S_RCPT);
	REPLY(s, "250 2.1.5 Ok");
}

void
smtp_cmd_rcpt(struct smtp_session *s, const struct smtp_cmdline *c)
{
	const char *path = c->arg, *params;
	size_t plen = c->arg_len, nparams;
	struct smtp_param prm;
	struct smtp_addr a;
	struct smtp_check_reply cr;
	char buf[SMTP_REPLY_MAX];
	int r, len;

	s->counts.rcpt++;
	/* Parsed first so that every reject line logs the address itself
	 * (to=<u@d>), not the raw argument (to=<TO:<u@d>>). */
	r = smtp_parse_path_arg(c->arg, c->arg_len, "TO:", 3, &path, &plen, &params, &nparams);
	if (s->state != SMTP_S_MAIL && s->state != SMTP_S_RCPT) {
		if (r < 0) {
			path = c->arg;
			plen = c->arg_len;
		}
		reject(s, "RCPT", r_need_mail, sizeof r_need_mail - 1, path, plen);
		return;
	}
	if (r < 0) {
		REJECT(s, "RCPT", "501 5.5.4 Syntax: RCPT TO:<address>", c->arg, c->arg_len);
		return;
	}
	/* No RCPT parameters are supported (no DSN). */
	if ((r = smtp_param_next(&params, &nparams, &prm)) != 0) {
		if (r < 0)
			REJECT(s, "RCPT", "501 5.5.4 Syntax: RCPT TO:<address>", path, plen);
		else
			reject_option(s, "RCPT", &prm, path, plen);
		return;
	}
	if (s->conf->recipient_limit != 0 && s->tx_nrcpt >= s->conf->recipient_limit) {
		s->stats->rcpt_limit++;
		REJECT(s, "RCPT", "452 4.5.3 Error: too many recipients", path, plen);
		return;
	}
	/* The sink could not store a larger envelope (the spool record's
	 * bound): refused now, while the client can still send the rest
	 * later, rather than acknowledged and unreadable after a restart. */
	if (s->conf->envelope_limit != 0 &&
	    SMTP_ENV_FIXED_MAX + s->tx_env_rcpt + SMTP_ENV_RCPT_COST + plen > s->conf->envelope_limit) {
		s->stats->rcpt_limit++;
		REJECT(s, "RCPT", "452 4.5.3 Error: envelope too large, too many recipients", path,
		       plen);
		return;
	}
	switch (smtp_addr_parse(path, plen, s->tx_utf8, &a)) {
	case SMTP_ADDR_OK:
		if (a.local_len == 0) /* <> is only a reverse-path */
			goto syntax;
		if (a.domain == NULL) /* <Postmaster>: always accepted */
			break;
		if (smtp_domain_accepted(s->conf, a.domain, a.domain_len))
			break;
		goto relay;
	case SMTP_ADDR_ROUTE:
	case SMTP_ADDR_RELAY_TRICK:
	case SMTP_ADDR_LITERAL:
	case SMTP_ADDR_NO_DOMAIN:
		goto relay;
	case SMTP_ADDR_UTF8:
		REJECT(s, "RCPT", "553 5.6.7 Must declare SMTPUTF8 to send UTF-8 address", path,
		       plen);
		return;
	default:
		goto syntax;
	}
	switch (policy_check(s, SMTP_CHECK_RCPT, path, plen, &cr)) {
	case SMTP_CHECK_OK:
		rcpt_accept(s, path, plen);
		return;
	case SMTP_CHECK_PENDING:
		/* plen <= SMTP_PATH_MAX: the path parsed */
		memcpy(s->pend_rcpt, path, plen);
		s->pend_rcpt[plen] = '\0';
		s->pend_len = (uint16_t)plen;
		s->check_pending = true;
		return;
	default:
		policy_reject(s, "RCPT", &cr, path, plen);
		return;
	}
syntax:
	REJECT(s, "RCPT", "501 5.1.3 Bad recipient address syntax", path, plen);
	return;
relay:
	/* Any valid path: plen <= SMTP_PATH_MAX - 2, so this fits. */
	s->stats->rcpt_relay_denied++;
	len = snprintf(buf, sizeof buf, "550 5.7.1 <%.*s>: Relay access denied\r\n", (int)plen,
		       path);
	assert(len > 0 && (size_t)len < sizeof buf);
	reject(s, "RCPT", buf, (size_t)len, path, plen);
}

void
smtp_cmd_data(struct smtp_session *s, const struct smtp_cmdline *c)
{
	s->counts.data++;
	if (c->arg_len != 0) {
		REPLY(s, "501 5.5.4 Syntax: DATA");
		return;
	}
	if (s->state != SMTP_S_MAIL && s->state != SMTP_S_RCPT) {
		reply(s, r_need_mail, sizeof r_need_mail - 1);
		return;
	}
	if (s->tx_bdat) {
		REPLY(s, "503 5.5.1 Error: DATA not allowed with BDAT");
		return;
	}
	if (s->state == SMTP_S_MAIL) {
		reply(s, r_no_rcpt, sizeof r_no_rcpt - 1);
		return;
	}
	/* RFC 2920: DATA ends a pipelining group; content sent before the
	 * client could have seen 354 is the smuggling pattern (Postfix
	 * smtpd_forbid_unauth_pipelining). */
	if (c->more) {
		s->stats->sync_errors++;
		session_close(s);
		REPLY(s, "554 5.5.0 Error: SMTP protocol synchronization");
		return;
	}
	smtp_body_init(&s->body, SMTP_BODY_DATA);
	emit_received(s);
	enter(s, SMTP_S_DATA);
	REPLY(s, "354 End data with <CR><LF>.<CR><LF>");
}

void
smtp_cmd_bdat(struct smtp_session *s, const struct smtp_cmdline *c)
{
	uint64_t count;
	bool last;

	s->counts.bdat++;
	if (smtp_parse_bdat(c->arg, c->arg_len, &count, &last) < 0) {
		REPLY(s, "501 5.5.4 Syntax: BDAT count [LAST]");
		return;
	}
	s->bdat_count = s->bdat_left = count;
	s->bdat_last = last;
	s->bdat_ret = s->state;
	s->bdat_err = BDAT_OK;
	/* A refused chunk is still read, or its octets would be taken for
	 * commands. */
	if (s->state != SMTP_S_MAIL && s->state != SMTP_S_RCPT) {
		s->bdat_err = BDAT_NEED_MAIL;
	} else if (s->state == SMTP_S_MAIL) {
		s->bdat_err = BDAT_NO_RCPT;
	} else if (!s->tx_bdat) {
		s->tx_bdat = true;
		smtp_body_init(&s->body, SMTP_BODY_BDAT);
		emit_received(s);
	}
	enter(s, SMTP_S_BDAT);
	if (count == 0)
		bdat_chunk_end(s);
}

void
smtp_cmd_rset(struct smtp_session *s, const struct smtp_cmdline *c)
{
	(void)c;
	s->counts.rset++;
	tx_abort(s);
	if (s->state != SMTP_S_CONNECTED)
		enter(s, SMTP_S_READY);
	REPLY(s, "250 2.0.0 Ok");
}

void
smtp_cmd_noop(struct smtp_session *s, const struct smtp_cmdline *c)
{
	(void)c;
	s->counts.noop++;
	REPLY(s, "250 2.0.0 Ok");
}

void
smtp_cmd_quit(struct smtp_session *s, const struct smtp_cmdline *c)
{
	(void)c;
	s->counts.quit++;
	REPLY(s, "221 2.0.0 Bye");
	session_close(s);
}

void
smtp_cmd_vrfy(struct smtp_session *s, const struct smtp_cmdline *c)
{
	(void)c;
	s->counts.vrfy++;
	REPLY(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

void
smtp_cmd_expn(struct smtp_session *s, const struct smtp_cmdline *c)
{
	(void)c;
	REPLY(s, "502 5.5.1 Error: EXPN not supported");
}

void
smtp_cmd_help(struct smtp_session *s, const struct smtp_cmdline *c)
{
	(void)c;
	REPLY(s, "214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321");
}

/*
 * RFC 3207. After the 220 the rest of this feed is discarded by
 * smtp_session_feed() and the connection discards everything until the
 * handshake (CVE-2011-0411): nothing pipelined behind STARTTLS in
 * plaintext is ever interpreted.
 */
void
smtp_cmd_starttls(struct smtp_session *s, const struct smtp_cmdline *c)
{
	if (s->tls_active) {
		REPLY(s, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (!starttls_offered(s)) {
		REPLY(s, "502 5.5.1 Error: STARTTLS not available");
		return;
	}
	if (c->arg_len != 0) {
		REPLY(s, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (s->state != SMTP_S_CONNECTED && s->state != SMTP_S_READY) {
		REPLY(s, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	struct smtp_check_reply cr;
	if (policy_check(s, SMTP_CHECK_STARTTLS, NULL, 0, &cr) != SMTP_CHECK_OK) {
		policy_reject(s, NULL, &cr, NULL, 0);
		return;
	}
	REPLY(s, "220 2.0.0 Ready to start TLS");
	if (!closing(s)) /* the reply may have hit error_limit: no */
		s->tls_starting = true;
}

/* ---- command lines ---- */

/*
 * Index of the LF of the CRLF ending the line in p[0..n), or n. prev_cr: the
 * byte before p[0] (in the carry) is a CR. Only CRLF ends a line; a bare LF
 * or CR is noted in *bad and the line goes on.
 */
static size_t
line_scan(const char *p, size_t n, bool prev_cr, unsigned *bad)
{
	size_t i = 0;

	if (prev_cr) {
		if (p[0] == '\n')
			return 0;
		*bad |= LINE_BARE_CR;
	}
	for (;;) {
		i += smtp_scan_crlf(p + i, n - i);
		if (i >= n)
			return n;
		if (p[i] == '\n') {
			*bad |= LINE_BARE_LF;
			i++;
			continue;
		}
		if (i + 1 == n)
			return n; /* a CR at the end: decided by the next feed */
		if (p[i + 1] == '\n')
			return i + 1;
		*bad |= LINE_BARE_CR;
		i++;
	}
}

static void
handle_line(struct smtp_session *s, const char *line, size_t len, unsigned bad, bool too_long,
	    bool more)
{
	const struct smtp_cmd_def *d = NULL;
	struct smtp_cmdline c;

	s->stats->commands++;
	s->counts.commands++;
	if (!too_long) {
		smtp_cmd_split(line, len, &c);
		d = smtp_cmd_lookup(c.verb, c.verb_len);
		too_long = len + 2 > ((d != NULL && (d->flags & SMTP_CMDF_LONG))
					      ? SMTP_PARAM_LINE_MAX
					      : SMTP_CMD_LINE_MAX);
	}
	if (too_long) {
		s->stats->line_too_long++;
		REPLY(s, "500 5.5.0 Error: line too long");
		return;
	}
	if (bad & LINE_BARE_LF) {
		s->stats->bare_lf++;
		REPLY(s, "500 5.5.2 Error: bare <LF> received");
		return;
	}
	if (bad & LINE_BARE_CR) {
		s->stats->bare_cr++;
		REPLY(s, "500 5.5.2 Error: bare <CR> received");
		return;
	}
	if (memchr(line, '\0', len) != NULL) {
		REPLY(s, "500 5.5.2 Error: NUL in command");
		return;
	}
	if (d == NULL) {
		s->counts.unknown++;
		REPLY(s, "500 5.5.2 Error: command not recognized");
		return;
	}
	c.more = more;
	if (s->denied && d->id != SMTP_CMD_QUIT) {
		/* Refused instead of the greeting (RFC 5321 3.1): only QUIT
		 * is served; the error limit still ends a client that
		 * insists. */
		REPLY(s, "503 5.5.1 Error: access denied");
		return;
	}
	/* A HELO/EHLO after one was accepted (since the TLS handshake, RFC
	 * 3207 4.2) is junk too: the EHLO reply is the largest there is, so a
	 * pipelined run of them is a reply amplifier. */
	bool junk = (d->flags & SMTP_CMDF_LIMIT) ||
		    ((d->id == SMTP_CMD_HELO || d->id == SMTP_CMD_EHLO) && s->helo[0] != '\0');
	if (junk)
		s->counts.junk++;
	d->handler(s, &c);
	if (junk && s->conf->junk_limit != 0 &&
	    s->counts.junk > s->conf->junk_limit && !closing(s)) {
		s->stats->junk_limit++;
		reply_421(s, "4.7.0", "Error: too many junk commands");
		session_close(s);
	}
}

/* Consume at most one command line from p[0..n) (n > 0). */
static size_t
cmd_feed(struct smtp_session *s, const char *p, size_t n)
{
	unsigned bad = 0;
	size_t lf = line_scan(p, n, s->carry_cr, &bad);
	const char *line;
	size_t len;
	bool too_long = false;

	if (lf == n) {
		/* Incomplete: keep it in the carry, or only remember to
		 * discard it once it cannot be a valid line any more. */
		s->partial = true;
		s->carry_bad |= (uint8_t)bad;
		if (!s->carry_long) {
			if (n <= (size_t)SMTP_CARRY_MAX - s->carry_len) {
				memcpy(s->carry + s->carry_len, p, n);
				s->carry_len = (uint16_t)(s->carry_len + n);
			} else {
				s->carry_long = true;
				s->carry_len = 0;
			}
		}
		s->carry_cr = p[n - 1] == '\r';
		return n;
	}
	if (!s->partial) {
		line = p; /* zero-copy: the line is a view into the input */
		len = lf - 1;
	} else {
		bad |= s->carry_bad;
		if (s->carry_long || lf > (size_t)SMTP_CARRY_MAX - s->carry_len) {
			too_long = true;
			line = NULL;
			len = 0;
		} else {
			memcpy(s->carry + s->carry_len, p, lf);
			line = s->carry;
			len = s->carry_len + lf - 1;
		}
		s->partial = s->carry_long = s->carry_cr = false;
		s->carry_bad = 0;
		s->carry_len = 0;
	}
	handle_line(s, line, len, bad, too_long, lf + 1 < n);
	return lf + 1;
}

/* ---- public API ---- */

void
smtp_session_init(struct smtp_session *s, const struct smtp_conf *conf,
		  const struct smtp_peer *peer, struct smtp_out *out, const struct sink *sink,
		  const struct smtp_hooks *hooks, void *owner, struct ringmx_stats *stats,
		  uint64_t now_ns, int64_t now_wall)
{
	memset(s, 0, sizeof *s);
	s->state = SMTP_S_CONNECTED;
	s->conf = conf;
	s->peer = peer;
	s->out = out;
	s->sink = sink;
	s->hooks = hooks;
	s->owner = owner;
	s->stats = stats;
	s->t_start = s->t_activity = s->now = now_ns;
	s->wall_start = s->now_wall = now_wall;
}

void
smtp_session_set_waiter(struct smtp_session *s, struct sink_waiter *w)
{
	s->waiter = w;
}

void
smtp_session_start(struct smtp_session *s)
{
	char buf[SMTP_REPLY_MAX];
	int len = snprintf(buf, sizeof buf, "220 %s ESMTP ringmx\r\n", s->conf->hostname);

	assert(len > 0 && (size_t)len < sizeof buf);
	if (!out_put(s, buf, (size_t)len))
		session_close(s);
}

void
smtp_session_start_refused(struct smtp_session *s, const struct smtp_check_reply *r)
{
	assert(r->len >= 5 && r->len < sizeof r->text && r->text[r->len - 2] == '\r' &&
	       r->text[r->len - 1] == '\n');
	out_put(s, r->text, r->len);
	session_close(s);
}

void
smtp_session_start_denied(struct smtp_session *s, const struct smtp_check_reply *r)
{
	assert(r->len >= 5 && r->len < sizeof r->text && r->text[r->len - 2] == '\r' &&
	       r->text[r->len - 1] == '\n');
	s->denied = true;
	if (!out_put(s, r->text, r->len))
		session_close(s);
}

/* A drain waits for the transaction to end, then says goodbye. */
static void
shutdown_check(struct smtp_session *s)
{
	if (s->shutdown && !closing(s) && !in_tx(s)) {
		reply_421(s, "4.3.2", "Service shutting down");
		session_close(s);
	}
}

size_t
smtp_session_feed(struct smtp_session *s, const char *p, size_t n, uint64_t now_ns,
		  int64_t now_wall)
{
	size_t i = 0;

	if (closing(s) || s->tls_starting)
		return n; /* STARTTLS: plaintext before the handshake is discarded */
	s->now = now_ns;
	s->now_wall = now_wall;
	while (i < n && !closing(s)) {
		if (s->state == SMTP_S_VERDICT || s->check_pending || out_room(s) < SMTP_OUT_MIN)
			break;
		switch (s->state) {
		case SMTP_S_DATA:
			i += data_feed(s, p + i, n - i);
			break;
		case SMTP_S_BDAT:
			i += bdat_feed(s, p + i, n - i);
			break;
		default:
			i += cmd_feed(s, p + i, n - i);
			break;
		}
		if (s->tls_starting) {
			/* CVE-2011-0411: bytes pipelined behind STARTTLS in
			 * plaintext are never interpreted. */
			if (i < n)
				s->stats->starttls_injection_discarded++;
			i = n;
			break;
		}
		shutdown_check(s);
	}
	if (closing(s))
		i = n; /* after QUIT or a fatal error, input is ignored */
	if (i > 0)
		s->t_activity = now_ns;
	assert(i <= n);
	return i;
}

unsigned
smtp_session_status(const struct smtp_session *s)
{
	unsigned st = 0;

	if (closing(s))
		return SMTP_ST_CLOSE;
	if (s->state == SMTP_S_VERDICT || s->check_pending)
		st |= SMTP_ST_PAUSED;
	if (out_room(s) < SMTP_OUT_MIN)
		st |= SMTP_ST_OUTFULL;
	if (in_tx(s))
		st |= SMTP_ST_IN_TX;
	if (s->tls_starting)
		st |= SMTP_ST_STARTTLS;
	return st;
}

void
smtp_session_verdict(struct smtp_session *s, int res, uint64_t now_ns)
{
	/* A verdict for an aborted transaction must not arrive (sink.h);
	 * tolerate it rather than reply twice. */
	if (s->state != SMTP_S_VERDICT)
		return;
	s->now = now_ns;
	s->t_activity = now_ns;
	message_verdict(s, res == 0 ? 0 : res < 0 ? res : -EIO);
	shutdown_check(s);
}

void
smtp_session_verdict_reply(struct smtp_session *s, const struct smtp_check_reply *r, uint64_t now_ns)
{
	if (s->state != SMTP_S_VERDICT)
		return;
	assert(r->len >= 5 && r->len < sizeof r->text && r->text[r->len - 2] == '\r' &&
	       r->text[r->len - 1] == '\n');
	s->now = now_ns;
	s->t_activity = now_ns;
	s->tx = NULL; /* the sink is done with it: never abort it */
	message_done(s, r->text, r->len, r->text[0] == '2');
	if (memcmp(r->text, "421", 3) == 0 || memcmp(r->text, "521", 3) == 0)
		session_close(s);
	shutdown_check(s);
}

void
smtp_session_check_done(struct smtp_session *s, int res, const struct smtp_check_reply *r,
			uint64_t now_ns)
{
	struct smtp_check_reply cr;

	if (!s->check_pending || closing(s))
		return;
	s->now = now_ns;
	s->t_activity = now_ns;
	if (res == SMTP_CHECK_PENDING) {
		/* The hook wants to be asked again (what held it is over). */
		if (s->pend_mail)
			res = policy_check(s, SMTP_CHECK_MAIL, s->mail_from, strlen(s->mail_from),
					   &cr);
		else
			res = policy_check(s, SMTP_CHECK_RCPT, s->pend_rcpt, s->pend_len, &cr);
		if (res == SMTP_CHECK_PENDING)
			return;
		r = &cr;
	}
	s->check_pending = false;
	/* The check was asked with SMTP_OUT_MIN room and nothing was
	 * written since (feeding stopped), so the reply fits. */
	assert(res == SMTP_CHECK_OK ||
	       (r != NULL && r->len >= 5 && r->len < sizeof r->text &&
		r->text[r->len - 2] == '\r' && r->text[r->len - 1] == '\n'));
	if (s->pend_mail) {
		s->pend_mail = false;
		if (res == SMTP_CHECK_OK) {
			mail_accept(s);
		} else {
			policy_reject(s, "MAIL", r, s->mail_from, strlen(s->mail_from));
			tx_reset(s);
		}
	} else if (res == SMTP_CHECK_OK) {
		rcpt_accept(s, s->pend_rcpt, s->pend_len);
	} else {
		policy_reject(s, "RCPT", r, s->pend_rcpt, s->pend_len);
	}
	shutdown_check(s);
}

static uint64_t
add_sat(uint64_t t, uint64_t d)
{
	return d == 0 ? UINT64_MAX : t + d < t ? UINT64_MAX : t + d;
}

uint64_t
smtp_session_deadline(const struct smtp_session *s)
{
	const struct smtp_conf *c = s->conf;
	uint64_t d, cap = add_sat(s->t_start, c->session_timeout);

	switch (s->state) {
	case SMTP_S_CONNECTED:
		d = add_sat(s->t_activity, c->greeting_timeout);
		break;
	case SMTP_S_READY:
	case SMTP_S_MAIL:
	case SMTP_S_RCPT:
		d = add_sat(s->t_activity, c->command_timeout);
		break;
	case SMTP_S_DATA:
	case SMTP_S_BDAT:
		d = add_sat(s->t_activity, c->data_timeout);
		break;
	case SMTP_S_VERDICT:
		d = add_sat(s->t_verdict, c->data_end_timeout);
		break;
	default:
		return UINT64_MAX;
	}
	return d < cap ? d : cap;
}

bool
smtp_session_tick(struct smtp_session *s, uint64_t now_ns)
{
	if (closing(s) || now_ns < smtp_session_deadline(s))
		return false;
	s->now = now_ns;
	s->stats->timeouts++;
	reply_421(s, "4.4.2", "Error: timeout exceeded");
	session_close(s);
	return true;
}

void
smtp_session_shutdown(struct smtp_session *s, bool force)
{
	if (closing(s))
		return;
	if (force || !in_tx(s)) {
		reply_421(s, "4.3.2", "Service shutting down");
		session_close(s);
		return;
	}
	s->shutdown = true;
}

void
smtp_session_eof(struct smtp_session *s)
{
	session_close(s);
}

void
smtp_session_set_conf(struct smtp_session *s, const struct smtp_conf *conf)
{
	s->conf = conf;
}

void
smtp_session_set_tls_policy(struct smtp_session *s, bool offer_starttls, bool require_tls)
{
	s->tls_offer = offer_starttls;
	s->tls_require = require_tls;
}

void
smtp_session_tls_started(struct smtp_session *s, const char *version, const char *cipher,
			 uint64_t now_ns)
{
	if (closing(s))
		return;
	/* RFC 3207 4.2: discard all knowledge obtained from the client in
	 * plaintext. STARTTLS is refused inside a transaction, but an
	 * implicit listener may call this in any pre-greeting state. */
	tx_abort(s);
	if (s->state != SMTP_S_CONNECTED)
		enter(s, SMTP_S_CONNECTED);
	s->helo[0] = '\0';
	s->esmtp = false;
	s->partial = s->carry_long = s->carry_cr = false;
	s->carry_bad = 0;
	s->carry_len = 0;
	s->tls_starting = false;
	s->tls_active = true;
	snprintf(s->tls_info, sizeof s->tls_info, "%s with cipher %s", version != NULL ? version : "TLS",
		 cipher != NULL ? cipher : "unknown");
	s->now = now_ns;
	s->t_activity = now_ns;
}
