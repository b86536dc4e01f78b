/*
 * log.c - see log.h. Time stamps are RFC 3339 UTC with microseconds
 * (2026-12-04T01:02:03.123456Z): pflogsumm 1.1.5 takes that form as well as
 * the traditional "Dec  4 01:02:03", and unlike the latter it carries the
 * year and sorts as text.
 *
 * Text is made safe here, once, whoever wrote it: in the postfix format a
 * control byte becomes '?' (a line stays one line; bytes >= 0x80 pass, as
 * Postfix passes them); in JSON the string escapes of RFC 8259 apply and a
 * byte that is not part of valid UTF-8 becomes U+FFFD, so every line is
 * valid UTF-8 JSON.
 */
#include "log.h"
#include "qid.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Atomic int log_threshold_ = LOG_INFO;
_Atomic int log_format_ = LOG_FORMAT_POSTFIX;

static const char *prog = "ringmxd";
static char host[256] = "localhost";
static pid_t pid;
static __thread struct log_buf *tlb;

static const char *const level_names[] = {"error", "warning", "notice", "info", "debug"};
static const char *const format_names[] = {"postfix", "json"};
static const char *const service_names[] = {"master", "smtpd", "postscreen", "cleanup",
                                            "qmgr",   "smtp",  "lmtp",       "dns"};
_Static_assert(sizeof(service_names) / sizeof(service_names[0]) == LOG_SVC_COUNT,
               "a name per service");

const char *
log_level_name(enum log_level lvl)
{
	return (unsigned)lvl <= LOG_DEBUG ? level_names[lvl] : NULL;
}

const char *
log_format_name(enum log_format fmt)
{
	return (unsigned)fmt <= LOG_FORMAT_JSON ? format_names[fmt] : NULL;
}

const char *
log_service_name(enum log_service svc)
{
	return (unsigned)svc < LOG_SVC_COUNT ? service_names[svc] : NULL;
}

void
log_init(const char *progname)
{
	prog = progname;
	pid = getpid();
	/* The host field must be one non-empty token (pflogsumm's \S+). */
	char h[sizeof(host)];
	if (gethostname(h, sizeof(h)) == 0) {
		h[sizeof(h) - 1] = '\0';
		size_t n = strcspn(h, " \t\r\n");
		if (n > 0) {
			memcpy(host, h, n);
			host[n] = '\0';
		}
	}
}

void
log_configure(enum log_level lvl, enum log_format fmt)
{
	atomic_store_explicit(&log_threshold_, (int)lvl, memory_order_relaxed);
	atomic_store_explicit(&log_format_, (int)fmt, memory_order_relaxed);
}

void
log_set_thread_buf(struct log_buf *lb)
{
	tlb = lb;
}

static void
write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* nowhere left to report it */
		}
		p += w;
		n -= (size_t)w;
	}
}

void
log_flush(void)
{
	if (tlb == NULL || tlb->len == 0)
		return;
	write_all(tlb->buf, tlb->len);
	tlb->len = 0;
}

/* ---- the formatter ---- */

/* A bounded output cursor: writes past the end are dropped, so a caller
 * checks room only where it must keep a tail (a closing quote, the worker). */
struct out {
	char *p;
	size_t n, cap;
};

static void
put(struct out *o, const char *s, size_t n)
{
	if (n > o->cap - o->n)
		n = o->cap - o->n;
	memcpy(o->p + o->n, s, n);
	o->n += n;
}

static void
puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void
put_time(struct out *o, const struct timespec *ts)
{
	struct tm tm;
	char b[40];
	gmtime_r(&ts->tv_sec, &tm);
	int n = snprintf(b, sizeof(b), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
	                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	                 ts->tv_nsec / 1000);
	put(o, b, n > 0 ? (size_t)n : 0);
}

/* A line about one message starts "QID: " (qid.h: QID_LEN characters of
 * Crockford's base 32). Returns QID_LEN if it does, else 0. Only the shape
 * is checked, so "NOQUEUE" (Postfix's "no id yet") is not taken for one. */
static size_t
leading_qid(const char *s, size_t n)
{
	if (n < QID_LEN + 2 || s[QID_LEN] != ':' || s[QID_LEN + 1] != ' ')
		return 0;
	for (size_t i = 0; i < QID_LEN; i++)
		if (s[i] == '\0' || strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", s[i]) == NULL)
			return 0;
	return QID_LEN;
}

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), 0 if it is not one. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (len > n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/* A JSON string's content; stops before it would write past limit, and
 * never writes half an escape or half a UTF-8 sequence. */
static void
put_json_text(struct out *o, const char *s, size_t n, size_t limit)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		char e[8];
		size_t en = 0, step = 1;
		const char *src = e;
		if (c == '"' || c == '\\') {
			e[0] = '\\';
			e[1] = (char)c;
			en = 2;
		} else if (c == '\n' || c == '\r' || c == '\t') {
			e[0] = '\\';
			e[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
			en = 2;
		} else if (c < 0x20 || c == 0x7f) {
			memcpy(e, "\\u00", 4);
			e[4] = hex[c >> 4];
			e[5] = hex[c & 15];
			en = 6;
		} else if (c < 0x80) {
			e[0] = (char)c;
			en = 1;
		} else if ((step = utf8_len((const unsigned char *)s + i, n - i)) > 0) {
			src = s + i;
			en = step;
		} else {
			step = 1;
			memcpy(e, "\\ufffd", 6);
			en = 6;
		}
		if (en > limit - o->n)
			return;
		put(o, src, en);
		i += step;
	}
}

static void
put_json_member(struct out *o, const char *name, const char *val, size_t vlen, size_t limit)
{
	puts_(o, ",\"");
	puts_(o, name);
	puts_(o, "\":\"");
	put_json_text(o, val, vlen, limit);
	puts_(o, "\"");
}

static size_t
format_json(char *dst, size_t cap, const struct log_origin *o, const char *body, size_t blen)
{
	struct out w = {dst, 0, cap};
	char num[24];
	/* Room kept for the closing "}\n of a cut text. */
	size_t limit = cap - 3;
	puts_(&w, "{\"timestamp\":\"");
	put_time(&w, &o->ts);
	puts_(&w, "\"");
	put_json_member(&w, "host", o->host, strlen(o->host), limit);
	put_json_member(&w, "program", o->prog, strlen(o->prog), limit);
	puts_(&w, ",\"service\":\"");
	puts_(&w, service_names[o->svc]);
	snprintf(num, sizeof(num), "%d", o->pid);
	puts_(&w, "\",\"pid\":");
	puts_(&w, num);
	puts_(&w, ",\"level\":\"");
	puts_(&w, level_names[o->lvl]);
	puts_(&w, "\"");
	if (o->worker != NULL)
		put_json_member(&w, "worker", o->worker, strlen(o->worker), limit);
	size_t q = leading_qid(body, blen);
	if (q > 0) {
		put_json_member(&w, "queue_id", body, q, limit);
		body += q + 2;
		blen -= q + 2;
	}
	put_json_member(&w, "text", body, blen, limit);
	put(&w, "}\n", 2);
	return w.n;
}

/* Postfix writes "warning: " and the like before the text; info and notice
 * have no word (Postfix has neither), debug is ringmxd's own. */
static const char *const postfix_prefix[] = {"error: ", "warning: ", "", "", "debug: "};

static size_t
format_postfix(char *dst, size_t cap, const struct log_origin *o, const char *body, size_t blen)
{
	struct out w = {dst, 0, cap};
	char head[64];
	put_time(&w, &o->ts);
	put(&w, " ", 1);
	puts_(&w, o->host);
	put(&w, " ", 1);
	puts_(&w, o->prog);
	put(&w, "/", 1);
	puts_(&w, service_names[o->svc]);
	int n = snprintf(head, sizeof(head), "[%d]: %s", o->pid, postfix_prefix[o->lvl]);
	put(&w, head, n > 0 ? (size_t)n : 0);
	/* The tail (" worker=TAG" and the newline) always fits: the text is
	 * cut to leave room for it. */
	size_t tail = 1 + (o->worker != NULL ? 8 + strlen(o->worker) : 0);
	size_t room = w.n + tail < cap ? cap - w.n - tail : 0;
	if (blen > room)
		blen = room;
	for (size_t i = 0; i < blen; i++) {
		unsigned char c = (unsigned char)body[i];
		dst[w.n++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	if (o->worker != NULL) {
		puts_(&w, " worker=");
		puts_(&w, o->worker);
	}
	if (w.n == cap)
		w.n--;
	dst[w.n++] = '\n';
	return w.n;
}

size_t
log_format_line(char *dst, size_t cap, enum log_format fmt, const struct log_origin *o,
                const char *body, size_t blen)
{
	if (fmt == LOG_FORMAT_JSON)
		return format_json(dst, cap, o, body, blen);
	return format_postfix(dst, cap, o, body, blen);
}

/* ---- logging ---- */

void
log_line(enum log_service svc, enum log_level lvl, const char *line, size_t len)
{
	if (!log_enabled(lvl))
		return;
	struct log_origin o = {.host = host,
	                       .prog = prog,
	                       .pid = (int)pid,
	                       .worker = tlb != NULL ? tlb->tag : NULL,
	                       .svc = svc,
	                       .lvl = lvl};
	clock_gettime(CLOCK_REALTIME, &o.ts);
	char tmp[LOG_LINE_CAP];
	enum log_format fmt =
	    (enum log_format)atomic_load_explicit(&log_format_, memory_order_relaxed);
	size_t n = log_format_line(tmp, sizeof(tmp), fmt, &o, line, len);
	if (tlb == NULL) {
		write_all(tmp, n);
		return;
	}
	if (LOG_BUF_SIZE - tlb->len < n)
		log_flush();
	memcpy(tlb->buf + tlb->len, tmp, n);
	tlb->len += n;
}

void
vlogmsg(enum log_service svc, enum log_level lvl, const char *fmt, va_list ap)
{
	if (!log_enabled(lvl))
		return;
	char body[3072];
	int n = vsnprintf(body, sizeof(body), fmt, ap);
	if (n < 0)
		return;
	log_line(svc, lvl, body, (size_t)n < sizeof(body) ? (size_t)n : sizeof(body) - 1);
}

void
logmsg(enum log_service svc, enum log_level lvl, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlogmsg(svc, lvl, fmt, ap);
	va_end(ap);
}

/* The last words of the process: flush what the thread logged, then one
 * unbuffered line. */
static void __attribute__((format(printf, 2, 0)))
last_words(const char *what, const char *fmt, va_list ap)
{
	char body[1024];
	vsnprintf(body, sizeof(body), fmt, ap);
	log_flush();
	fprintf(stderr, "%s: %s: %s\n", prog, what, body);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	last_words("fatal", fmt, ap);
	va_end(ap);
	exit(1);
}

void
panic(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	last_words("panic", fmt, ap);
	va_end(ap);
	abort();
}
