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
 *
 * No printf per line (docs/logging.md, "Cost"): a line is appended with
 * fmt.h straight into the thread's buffer. What does not change from line
 * to line is made beforehand: " HOST PROG/SERVICE[PID]: " at log_init(),
 * the "YYYY-MM-DDTHH:MM:SS." of the current second once per second and
 * thread (struct log_stamp). test_log.c keeps the snprintf formatter this
 * replaced and compares the two.
 */
#include "log.h"
#include "qid.h"
#include "ringmx/fmt.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Atomic int log_threshold_ = LOG_INFO;
_Atomic int log_format_ = LOG_FORMAT_POSTFIX;

#define DEFAULT_HOST "localhost"
#define DEFAULT_PROG "ringmxd"

static const char *prog = DEFAULT_PROG;
static char host[256] = DEFAULT_HOST;
static pid_t pid;
static __thread struct log_buf *tlb;
/* "YYYY-MM-DDTHH:MM:SS." of the second of the thread's last line: gmtime_r
 * and its formatting once a second, not per line. len 0: none yet. */
struct log_stamp {
	time_t sec;
	size_t len;
	char text[48];
};
static __thread struct log_stamp tstamp;
static void (*clock_fn)(struct timespec *ts);

/* What comes between the time stamp and the level on every line of one
 * service: " HOST PROG/SERVICE[PID]: ". log_init() makes them, once. */
#define LOG_HEAD_MAX 640 /* host (at most 255), prog ("ringmxd"), service, pid */
struct log_head {
	size_t len;
	char text[LOG_HEAD_MAX];
};
static struct log_head heads[LOG_SVC_COUNT];

struct name {
	const char *s;
	size_t len;
};
/* The initialiser of a struct name. */
#define NAME(lit) lit, sizeof(lit) - 1

static const struct name level_names[] = {
    {NAME("error")}, {NAME("warning")}, {NAME("notice")}, {NAME("info")}, {NAME("debug")}};
static const char *const format_names[] = {"postfix", "json"};
static const struct name service_names[] = {
    {NAME("master")}, {NAME("smtpd")}, {NAME("postscreen")}, {NAME("cleanup")},
    {NAME("qmgr")},   {NAME("smtp")},  {NAME("lmtp")},       {NAME("dns")}};
_Static_assert(sizeof(service_names) / sizeof(service_names[0]) == LOG_SVC_COUNT,
               "a name per service");
/* Postfix writes "warning: " and the like before the text; info and notice
 * have no word (Postfix has neither), debug is ringmxd's own. */
static const struct name postfix_prefix[] = {
    {NAME("error: ")}, {NAME("warning: ")}, {NAME("")}, {NAME("")}, {NAME("debug: ")}};

const char *
log_level_name(enum log_level lvl)
{
	return (unsigned)lvl <= LOG_DEBUG ? level_names[lvl].s : NULL;
}

const char *
log_format_name(enum log_format fmt)
{
	return (unsigned)fmt <= LOG_FORMAT_JSON ? format_names[fmt] : NULL;
}

const char *
log_service_name(enum log_service svc)
{
	return (unsigned)svc < LOG_SVC_COUNT ? service_names[svc].s : NULL;
}

/* "%d" */
static void
put_int(struct fmt *w, int v)
{
	if (v < 0)
		fmt_char(w, '-');
	fmt_u64(w, v < 0 ? (uint64_t)0 - (uint64_t)(int64_t)v : (uint64_t)v);
}

static void
head_make(struct log_head *h, const char *hostname, const char *progname, enum log_service svc,
          int id)
{
	struct fmt w = fmt_init(h->text, sizeof(h->text));
	fmt_char(&w, ' ');
	fmt_str(&w, hostname);
	fmt_char(&w, ' ');
	fmt_str(&w, progname);
	fmt_char(&w, '/');
	fmt_bytes(&w, service_names[svc].s, service_names[svc].len);
	fmt_char(&w, '[');
	put_int(&w, id);
	fmt_lit(&w, "]: ");
	assert(w.len < w.cap);
	h->len = w.len;
}

static void
heads_make(int id)
{
	for (int svc = 0; svc < LOG_SVC_COUNT; svc++)
		head_make(&heads[svc], host, prog, (enum log_service)svc, id);
}

/* A line logged before log_init() (a unit test, an early start-up error)
 * says localhost, ringmxd and pid 0, as it always did. Before main(), so
 * no thread can be logging while the heads are written. */
static void heads_default(void) __attribute__((constructor));

static void
heads_default(void)
{
	heads_make(0);
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
	heads_make((int)pid);
}

void
log_set_clock(void (*now)(struct timespec *ts))
{
	clock_fn = now;
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

/* The output is a struct fmt (fmt.h): writes past the end are dropped, so a
 * caller checks room only where it must keep a tail (a closing quote, the
 * worker). */

static void
stamp_second(struct log_stamp *st, time_t sec)
{
	if (st->len != 0 && st->sec == sec)
		return;
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	gmtime_r(&sec, &tm);
	int n = snprintf(st->text, sizeof(st->text), "%04d-%02d-%02dT%02d:%02d:%02d.",
	                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	                 tm.tm_sec);
	st->len = n > 0 ? (size_t)n : 0;
	st->sec = sec;
}

/* 2026-12-04T01:02:03.123456Z */
static void
put_time(struct fmt *w, struct log_stamp *st, const struct timespec *ts)
{
	assert(ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000);
	stamp_second(st, ts->tv_sec);
	fmt_bytes(w, st->text, st->len);
	fmt_digits(w, (uint64_t)ts->tv_nsec / 1000u, 6);
	fmt_char(w, 'Z');
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
put_json_text(struct fmt *o, const char *s, size_t n, size_t limit)
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
		if (en > limit - o->len)
			return;
		fmt_bytes(o, src, en);
		i += step;
	}
}

static void
put_json_member(struct fmt *o, const char *name, const char *val, size_t vlen, size_t limit)
{
	fmt_lit(o, ",\"");
	fmt_str(o, name);
	fmt_lit(o, "\":\"");
	put_json_text(o, val, vlen, limit);
	fmt_char(o, '"');
}

static size_t
format_json(char *dst, size_t cap, const struct log_origin *o, struct log_stamp *st,
            const char *body, size_t blen)
{
	struct fmt w = fmt_init(dst, cap);
	/* Room kept for the closing "}\n of a cut text. */
	size_t limit = cap - 3;
	fmt_lit(&w, "{\"timestamp\":\"");
	put_time(&w, st, &o->ts);
	fmt_char(&w, '"');
	put_json_member(&w, "host", o->host, strlen(o->host), limit);
	put_json_member(&w, "program", o->prog, strlen(o->prog), limit);
	fmt_lit(&w, ",\"service\":\"");
	fmt_bytes(&w, service_names[o->svc].s, service_names[o->svc].len);
	fmt_lit(&w, "\",\"pid\":");
	put_int(&w, o->pid);
	fmt_lit(&w, ",\"level\":\"");
	fmt_bytes(&w, level_names[o->lvl].s, level_names[o->lvl].len);
	fmt_char(&w, '"');
	if (o->worker != NULL)
		put_json_member(&w, "worker", o->worker, strlen(o->worker), limit);
	size_t q = leading_qid(body, blen);
	if (q > 0) {
		put_json_member(&w, "queue_id", body, q, limit);
		body += q + 2;
		blen -= q + 2;
	}
	put_json_member(&w, "text", body, blen, limit);
	fmt_lit(&w, "}\n");
	return w.len;
}

/* A control byte becomes '?'. A loop the compiler can vectorise: this is
 * most of a line's bytes. */
static void
copy_text(char *restrict d, const char *restrict s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		d[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
}

static size_t
format_postfix(char *dst, size_t cap, const struct log_origin *o, const struct log_head *h,
               struct log_stamp *st, const char *body, size_t blen)
{
	struct fmt w = fmt_init(dst, cap);
	put_time(&w, st, &o->ts);
	fmt_bytes(&w, h->text, h->len);
	fmt_bytes(&w, postfix_prefix[o->lvl].s, postfix_prefix[o->lvl].len);
	/* The tail (" worker=TAG" and the newline) always fits: the text is
	 * cut to leave room for it. */
	size_t wlen = o->worker != NULL ? strlen(o->worker) : 0;
	size_t tail = 1 + (o->worker != NULL ? 8 + wlen : 0);
	size_t room = w.len + tail < cap ? cap - w.len - tail : 0;
	if (blen > room)
		blen = room;
	copy_text(dst + w.len, body, blen);
	w.len += blen;
	if (o->worker != NULL) {
		fmt_lit(&w, " worker=");
		fmt_bytes(&w, o->worker, wlen);
	}
	if (w.len == cap)
		w.len--;
	dst[w.len++] = '\n';
	return w.len;
}

static size_t
format_line(char *dst, size_t cap, enum log_format fmt, const struct log_origin *o,
            const struct log_head *h, struct log_stamp *st, const char *body, size_t blen)
{
	if (fmt == LOG_FORMAT_JSON)
		return format_json(dst, cap, o, st, body, blen);
	return format_postfix(dst, cap, o, h, st, body, blen);
}

size_t
log_format_line(char *dst, size_t cap, enum log_format fmt, const struct log_origin *o,
                const char *body, size_t blen)
{
	struct log_head h;
	struct log_stamp st = {0};
	head_make(&h, o->host, o->prog, o->svc, o->pid);
	return format_line(dst, cap, fmt, o, &h, &st, body, blen);
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
	if (clock_fn != NULL)
		clock_fn(&o.ts);
	else
		clock_gettime(CLOCK_REALTIME, &o.ts);
	enum log_format fmt =
	    (enum log_format)atomic_load_explicit(&log_format_, memory_order_relaxed);
	if (tlb == NULL) {
		char tmp[LOG_LINE_CAP];
		write_all(tmp,
		          format_line(tmp, sizeof(tmp), fmt, &o, &heads[svc], &tstamp, line, len));
		return;
	}
	/* In place, at the end of what the thread has buffered: a line takes
	 * at most LOG_LINE_CAP. */
	if (LOG_BUF_SIZE - tlb->len < LOG_LINE_CAP)
		log_flush();
	tlb->len += format_line(tlb->buf + tlb->len, LOG_LINE_CAP, fmt, &o, &heads[svc], &tstamp,
	                        line, len);
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
