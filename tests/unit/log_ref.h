/*
 * log_ref.h - the line formatter of engine/runtime/log.c as it was before
 * fmt.h (snprintf for the time stamp and the pid, a stack copy per line),
 * kept unchanged as the reference test_log.c compares the new one with:
 * "the same bytes as before" for every line, both formats. Do not fix
 * anything here; it is what the daemon wrote.
 */
#ifndef LOG_REF_H
#define LOG_REF_H

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "qid.h"

static const char *const ref_level_names[] = {"error", "warning", "notice", "info", "debug"};
static const char *const ref_service_names[] = {"master", "smtpd", "postscreen", "cleanup",
                                                "qmgr",   "smtp",  "lmtp",       "dns"};

/* A bounded output cursor: writes past the end are dropped, so a caller
 * checks room only where it must keep a tail (a closing quote, the worker). */
struct ref_out {
	char *p;
	size_t n, cap;
};

static void
ref_put(struct ref_out *o, const char *s, size_t n)
{
	if (n > o->cap - o->n)
		n = o->cap - o->n;
	memcpy(o->p + o->n, s, n);
	o->n += n;
}

static void
ref_puts(struct ref_out *o, const char *s)
{
	ref_put(o, s, strlen(s));
}

static void
ref_put_time(struct ref_out *o, const struct timespec *ts)
{
	struct tm tm;
	char b[40];
	gmtime_r(&ts->tv_sec, &tm);
	int n = snprintf(b, sizeof(b), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
	                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	                 ts->tv_nsec / 1000);
	ref_put(o, b, n > 0 ? (size_t)n : 0);
}

/* A line about one message starts "QID: " (qid.h: QID_LEN characters of
 * Crockford's base 32). Returns QID_LEN if it does, else 0. Only the shape
 * is checked, so "NOQUEUE" (Postfix's "no id yet") is not taken for one. */
static size_t
ref_leading_qid(const char *s, size_t n)
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
ref_utf8_len(const unsigned char *s, size_t n)
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
ref_json_text(struct ref_out *o, const char *s, size_t n, size_t limit)
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
		} else if ((step = ref_utf8_len((const unsigned char *)s + i, n - i)) > 0) {
			src = s + i;
			en = step;
		} else {
			step = 1;
			memcpy(e, "\\ufffd", 6);
			en = 6;
		}
		if (en > limit - o->n)
			return;
		ref_put(o, src, en);
		i += step;
	}
}

static void
ref_json_member(struct ref_out *o, const char *name, const char *val, size_t vlen, size_t limit)
{
	ref_puts(o, ",\"");
	ref_puts(o, name);
	ref_puts(o, "\":\"");
	ref_json_text(o, val, vlen, limit);
	ref_puts(o, "\"");
}

static size_t
ref_format_json(char *dst, size_t cap, const struct log_origin *o, const char *body, size_t blen)
{
	struct ref_out w = {dst, 0, cap};
	char num[24];
	/* Room kept for the closing "}\n of a cut text. */
	size_t limit = cap - 3;
	ref_puts(&w, "{\"timestamp\":\"");
	ref_put_time(&w, &o->ts);
	ref_puts(&w, "\"");
	ref_json_member(&w, "host", o->host, strlen(o->host), limit);
	ref_json_member(&w, "program", o->prog, strlen(o->prog), limit);
	ref_puts(&w, ",\"service\":\"");
	ref_puts(&w, ref_service_names[o->svc]);
	snprintf(num, sizeof(num), "%d", o->pid);
	ref_puts(&w, "\",\"pid\":");
	ref_puts(&w, num);
	ref_puts(&w, ",\"level\":\"");
	ref_puts(&w, ref_level_names[o->lvl]);
	ref_puts(&w, "\"");
	if (o->worker != NULL)
		ref_json_member(&w, "worker", o->worker, strlen(o->worker), limit);
	size_t q = ref_leading_qid(body, blen);
	if (q > 0) {
		ref_json_member(&w, "queue_id", body, q, limit);
		body += q + 2;
		blen -= q + 2;
	}
	ref_json_member(&w, "text", body, blen, limit);
	ref_put(&w, "}\n", 2);
	return w.n;
}

/* Postfix writes "warning: " and the like before the text; info and notice
 * have no word (Postfix has neither), debug is ringmxd's own. */
static const char *const ref_postfix_prefix[] = {"error: ", "warning: ", "", "", "debug: "};

static size_t
ref_format_postfix(char *dst, size_t cap, const struct log_origin *o, const char *body, size_t blen)
{
	struct ref_out w = {dst, 0, cap};
	char head[64];
	ref_put_time(&w, &o->ts);
	ref_put(&w, " ", 1);
	ref_puts(&w, o->host);
	ref_put(&w, " ", 1);
	ref_puts(&w, o->prog);
	ref_put(&w, "/", 1);
	ref_puts(&w, ref_service_names[o->svc]);
	int n = snprintf(head, sizeof(head), "[%d]: %s", o->pid, ref_postfix_prefix[o->lvl]);
	ref_put(&w, head, n > 0 ? (size_t)n : 0);
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
		ref_puts(&w, " worker=");
		ref_puts(&w, o->worker);
	}
	if (w.n == cap)
		w.n--;
	dst[w.n++] = '\n';
	return w.n;
}

static size_t
ref_format_line(char *dst, size_t cap, enum log_format fmt, const struct log_origin *o,
                const char *body, size_t blen)
{
	if (fmt == LOG_FORMAT_JSON)
		return ref_format_json(dst, cap, o, body, blen);
	return ref_format_postfix(dst, cap, o, body, blen);
}

#endif
