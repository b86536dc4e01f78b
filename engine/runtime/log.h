/*
 * log.h - Postfix-style key=value log lines on stderr.
 *
 * Lines look like
 *   2026-11-28T12:53:05.123456Z ringmxd[4242]: w0: disconnect from [127.0.0.1]:5555 ...
 * Each worker formats into its own buffer (struct log_buf) and writes it with
 * one write(2) per event-loop iteration, so logging costs no syscall per line
 * and lines from different workers never interleave mid-line (each write is
 * a run of whole lines, O_APPEND/pipe semantics keep them atomic up to
 * PIPE_BUF per line in practice). The main thread logs unbuffered.
 *
 * Ownership: a log_buf belongs to one thread. If a buffer fills before it
 * is flushed, it is flushed early (a blocking write, like syslog(3)).
 */
#ifndef RINGMX_LOG_H
#define RINGMX_LOG_H

#include <stdarg.h>
#include <stddef.h>

#define LOG_BUF_SIZE 65536

enum log_level { LOG_ERR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

struct log_buf {
	size_t len;
	char tag[16]; /* "w0", "main" */
	char buf[LOG_BUF_SIZE];
};

extern enum log_level log_level;

void log_init(const char *progname);
/* Per-thread buffer (NULL: unbuffered, main thread). */
void log_set_thread_buf(struct log_buf *lb);
void log_flush(void);

void logmsg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vlogmsg(enum log_level lvl, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* A pre-formatted line (no trailing newline). */
void log_line(enum log_level lvl, const char *line, size_t len);

#define log_err(...)   logmsg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  logmsg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  logmsg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_level >= LOG_DEBUG) logmsg(LOG_DEBUG, __VA_ARGS__); } while (0)

/* Print "ringmxd: fatal: ..." to stderr and exit(1). For start-up errors. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Broken invariant: message and abort(). */
void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
