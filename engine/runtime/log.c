/*
 * log.c - see log.h. Time stamps are RFC 3339 UTC with microseconds, the
 * form pflogsumm and most log shippers accept.
 */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum log_level log_level = LOG_INFO;

static const char *prog = "ringmxd";
static pid_t pid;
static __thread struct log_buf *tlb;

void
log_init(const char *progname)
{
	prog = progname;
	pid = getpid();
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

static const char *const level_name[] = {"error: ", "warning: ", "", "debug: "};

/* Format one whole line into dst (cap > 64). Returns its length including the newline. */
static size_t
format_line(char *dst, size_t cap, enum log_level lvl, const char *body, size_t blen)
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(dst, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ %s[%d]: %s%s%s", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000,
			 prog, (int)pid, tlb ? tlb->tag : "", tlb ? ": " : "", level_name[lvl]);
	size_t off = n < 0 ? 0 : (size_t)n;
	if (off >= cap - 1)
		off = cap - 2;
	if (blen > cap - 1 - off)
		blen = cap - 1 - off; /* over-long lines are cut, never split */
	memcpy(dst + off, body, blen);
	off += blen;
	dst[off++] = '\n';
	return off;
}

void
log_line(enum log_level lvl, const char *line, size_t len)
{
	if (lvl > log_level)
		return;
	char tmp[4096];
	size_t n = format_line(tmp, sizeof(tmp), lvl, line, len);
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
vlogmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	if (lvl > log_level)
		return;
	char body[3072];
	int n = vsnprintf(body, sizeof(body), fmt, ap);
	if (n < 0)
		return;
	log_line(lvl, body, (size_t)n < sizeof(body) ? (size_t)n : sizeof(body) - 1);
}

void
logmsg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlogmsg(lvl, fmt, ap);
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
