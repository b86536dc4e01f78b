/*
 * log.h - log lines on stderr in Postfix's shape (or one JSON object per
 * line), so pflogsumm and Postfix-minded log tools read them. docs/logging.md
 * lists every shape.
 *
 * log_format = postfix, one line is
 *   TIMESTAMP HOST PROGRAM/SERVICE[PID]: [LEVEL: ]TEXT[ worker=TAG]
 * for instance (wrapped here)
 *   2026-12-04T01:02:03.123456Z mx1 ringmxd/smtpd[4242]: 1K1RJB3K1CX01:
 *       client=[127.0.0.1]:5555, ... worker=w0
 * The service names the role of the line's code in Postfix's terms (smtpd
 * for inbound sessions, qmgr for the queue, smtp/lmtp for deliveries, ...),
 * because pflogsumm counts by it. The worker tag goes last: pflogsumm wants
 * the queue id right after "]: ". log_format = json: the same fields as the
 * members of one object per line.
 *
 * Each worker formats into its own buffer (struct log_buf), each line in
 * place at its end, and writes it with one write(2) per event-loop iteration, so logging costs no
 * syscall per line and lines from different workers never interleave mid-line (each write is a run
 * of whole lines, O_APPEND/pipe semantics keep them atomic up to PIPE_BUF per line in practice).
 * The main thread logs unbuffered.
 *
 * Every .c file that logs defines LOG_SERVICE (an enum log_service) before
 * its first log_*() call: the default service of its lines. A file without
 * one does not compile, so no line is left without a service.
 *
 * Ownership: a log_buf belongs to one thread. If a buffer fills before it
 * is flushed, it is flushed early (a blocking write, like syslog(3)). The
 * level and the format are process-wide and change on SIGHUP (main thread);
 * workers read them with relaxed atomics: a line formatted during the switch
 * may take either, never a torn value.
 */
#ifndef RINGMX_LOG_H
#define RINGMX_LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#define LOG_BUF_SIZE 65536
/* One formatted line at most; longer text is cut, never split. */
#define LOG_LINE_CAP 4096

/* Most severe first: a threshold shows its level and every one above. */
enum log_level { LOG_ERR = 0, LOG_WARN, LOG_NOTICE, LOG_INFO, LOG_DEBUG };

enum log_format { LOG_FORMAT_POSTFIX = 0, LOG_FORMAT_JSON };

enum log_service {
	LOG_SVC_MASTER = 0, /* process life: start-up, reload, drain, stop, stats */
	LOG_SVC_SMTPD,      /* inbound sessions */
	LOG_SVC_POSTSCREEN, /* client screening: DNSBL, pregreet, client_access */
	LOG_SVC_CLEANUP,    /* the spool and content filters (milters) */
	LOG_SVC_QMGR,       /* the relay's queue: messages, journal, backlog */
	LOG_SVC_SMTP,       /* SMTP deliveries to the next hop */
	LOG_SVC_LMTP,       /* LMTP deliveries */
	LOG_SVC_DNS,        /* the resolver */
	LOG_SVC_COUNT
};

struct log_buf {
	size_t len;
	char tag[16]; /* "w0", "metrics" */
	char buf[LOG_BUF_SIZE];
};

extern _Atomic int log_threshold_; /* enum log_level; use log_enabled() */
extern _Atomic int log_format_;    /* enum log_format */

static inline int
log_enabled(enum log_level lvl)
{
	return (int)lvl <= atomic_load_explicit(&log_threshold_, memory_order_relaxed);
}

void log_init(const char *progname);
/* log_level and log_format (the configuration's); any thread may log meanwhile. */
void log_configure(enum log_level lvl, enum log_format fmt);
/* Per-thread buffer (NULL: unbuffered, main thread). */
void log_set_thread_buf(struct log_buf *lb);
void log_flush(void);

void logmsg(enum log_service svc, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void vlogmsg(enum log_service svc, enum log_level lvl, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* A pre-formatted line (no trailing newline). */
void log_line(enum log_service svc, enum log_level lvl, const char *line, size_t len);
/* Where log_line() reads the time, for tests (NULL: CLOCK_REALTIME). */
void log_set_clock(void (*now)(struct timespec *ts));

#define log_err(...)    logmsg(LOG_SERVICE, LOG_ERR, __VA_ARGS__)
#define log_warn(...)   logmsg(LOG_SERVICE, LOG_WARN, __VA_ARGS__)
#define log_notice(...) logmsg(LOG_SERVICE, LOG_NOTICE, __VA_ARGS__)
#define log_info(...)   logmsg(LOG_SERVICE, LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_DEBUG))                                                        \
			logmsg(LOG_SERVICE, LOG_DEBUG, __VA_ARGS__);                               \
	} while (0)

/* What a line is made of, apart from its text (log_format_line()). */
struct log_origin {
	const char *host; /* host and prog: together under 600 bytes */
	const char *prog;
	int pid;
	const char *worker; /* NULL: the main thread, no worker field */
	enum log_service svc;
	enum log_level lvl;
	struct timespec ts; /* CLOCK_REALTIME */
};

/* Format one whole line, newline included, into dst (cap >= 256) and return
 * its length. Pure: no clock, no I/O; the unit tests call it directly.
 * ts.tv_nsec is in [0, 1e9) (clock_gettime's). */
size_t log_format_line(char *dst, size_t cap, enum log_format fmt, const struct log_origin *o,
                       const char *body, size_t blen);
/* Configuration words, for config and docs: "debug", "postfix", ... NULL past the end. */
const char *log_level_name(enum log_level lvl);
const char *log_format_name(enum log_format fmt);
const char *log_service_name(enum log_service svc);

/* Print "ringmxd: fatal: ..." to stderr and exit(1). For start-up errors. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Broken invariant: message and abort(). */
void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
