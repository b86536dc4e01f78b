/*
 * milter.c - the MTA side of the milter protocol (milter.h): the stage
 * calls, which check the order, decide what is skipped, gather the
 * stage's macros and write whole packets into the caller's buffer; and
 * the getters. The milter's replies are read by milter_reply.c.
 *
 * Ownership: struct milter and the output buffer are the caller's; a call
 * appends to out->buf[out->len, out->cap) and nothing else. Strings and
 * macro values are read during the call only. Pure: libc only, no
 * allocation, no I/O. docs/milter-core.md describes the behaviour.
 *
 * Invariants: a call that returns a negative errno wrote nothing and
 * changed nothing (-ENOBUFS can be repeated); waiting != NONE only in
 * the phases where that stage was written; a call never writes while a
 * reply is due.
 */
#include "milter_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Most data octets one packet to the milter may carry: libmilter's
 * default MILTER_MAX_DATA_SIZE refuses more. */
#define MILTER_DATA_OUT MILTER_CHUNK_MAX

/* Per stage: its command octet, its SMFIM index (-1: no macros), the
 * protocol flag that skips it and the one that says no reply comes. */
static const struct {
	char cmd;
	int8_t mac;
	uint32_t no, nr;
} stages[MILTER_ST_COUNT] = {
    [MILTER_ST_NEGOTIATE] = {MC_OPTNEG, -1, 0, 0},
    [MILTER_ST_CONNECT] = {MC_CONNECT, 0, MILTER_P_NOCONNECT, MILTER_P_NR_CONN},
    [MILTER_ST_HELO] = {MC_HELO, 1, MILTER_P_NOHELO, MILTER_P_NR_HELO},
    [MILTER_ST_MAIL] = {MC_MAIL, 2, MILTER_P_NOMAIL, MILTER_P_NR_MAIL},
    [MILTER_ST_RCPT] = {MC_RCPT, 3, MILTER_P_NORCPT, MILTER_P_NR_RCPT},
    [MILTER_ST_DATA] = {MC_DATA, 4, MILTER_P_NODATA, MILTER_P_NR_DATA},
    [MILTER_ST_HEADER] = {MC_HEADER, -1, MILTER_P_NOHDRS, MILTER_P_NR_HDR},
    [MILTER_ST_EOH] = {MC_EOH, 6, MILTER_P_NOEOH, MILTER_P_NR_EOH},
    [MILTER_ST_BODY] = {MC_BODY, -1, MILTER_P_NOBODY, MILTER_P_NR_BODY},
    [MILTER_ST_EOM] = {MC_EOM, 5, 0, 0},
};

/* The macros Postfix sends at each stage (milter_*_macros defaults),
 * with the client's address, name and port at connect; by SMFIM index. */
static const char *const default_macros[MILTER_SYMLISTS] = {
    "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name} {client_port}",
    "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "i",
    "i",
    "i",
};

/* One piece of a stage packet's data: n octets, and a NUL after them. */
struct piece {
	const void *p;
	size_t n;
	bool nul;
};

/* The macros of one stage call: names (cut out of a copy of the list)
 * and the caller's values, both valid during the call. */
struct macros {
	size_t count;
	size_t len; /* data octets of the SMFIC_MACRO packet, its stage octet included */
	const char *name[MILTER_MACROS_MAX];
	const char *value[MILTER_MACROS_MAX];
	char names[MILTER_SYMLIST_MAX];
};

int
milter_init(struct milter *m, const struct milter_conf *conf, struct milter_out *out,
            const struct milter_ops *ops, void *arg)
{
	uint32_t act = conf != NULL && conf->actions != 0 ? conf->actions : MILTER_ACT_ALL;
	uint32_t proto = conf != NULL && conf->protocol != 0 ? conf->protocol : MILTER_P_OFFER;
	if (m == NULL || out == NULL || ops == NULL || ops->event == NULL ||
	    (act & ~(uint32_t)MILTER_ACT_ALL) != 0 || (proto & ~(uint32_t)MILTER_P_OFFER) != 0)
		return -EINVAL;
	/* The carry buffer needs no clearing: carry_len says what is in it. */
	memset(m, 0, offsetof(struct milter, carry));
	m->ops = ops;
	m->arg = arg;
	m->out = out;
	m->offer_act = act;
	m->offer_proto = proto;
	m->phase = PH_NEW;
	return 0;
}

/* ---- writing ---- */

static char *
put_u32(char *w, uint32_t v)
{
	w[0] = (char)(v >> 24);
	w[1] = (char)(v >> 16);
	w[2] = (char)(v >> 8);
	w[3] = (char)v;
	return w + 4;
}

static char *
put_hdr(char *w, size_t dlen, char cmd)
{
	w = put_u32(w, (uint32_t)dlen + 1);
	*w = cmd;
	return w + 1;
}

static char *
put_str(char *w, const char *s, size_t n)
{
	memcpy(w, s, n);
	w[n] = '\0';
	return w + n + 1;
}

/* Room for n more octets in the caller's buffer. */
static bool
out_room(const struct milter *m, size_t n)
{
	const struct milter_out *o = m->out;
	return o->len <= o->cap && o->cap - o->len >= n;
}

/* A packet without data (ABORT, QUIT). */
static int
write_bare(struct milter *m, char cmd)
{
	if (!out_room(m, MILTER_HDR))
		return -ENOBUFS;
	put_hdr(m->out->buf + m->out->len, 0, cmd);
	m->out->len += MILTER_HDR;
	return 0;
}

/* The macro list of SMFIM index i: the milter's, or the default. */
static const char *
macro_list(const struct milter *m, int i)
{
	return m->symlist_set[i] ? m->symlist[i] : default_macros[i];
}

/* Ask the caller for the values of stage st's macros. -EINVAL when they
 * do not fit in one packet. */
static int
macros_get(struct milter *m, enum milter_stage st, struct macros *mc)
{
	mc->count = 0;
	mc->len = 0;
	int i = stages[st].mac;
	if (i < 0 || m->ops->macro == NULL)
		return 0;
	snprintf(mc->names, sizeof(mc->names), "%s", macro_list(m, i));
	size_t len = 1;
	char *save = NULL;
	m->in_cb = true;
	for (char *w = strtok_r(mc->names, " \t,", &save);
	     w != NULL && mc->count < MILTER_MACROS_MAX; w = strtok_r(NULL, " \t,", &save)) {
		const char *v = m->ops->macro(m->arg, w);
		if (v == NULL)
			continue;
		mc->name[mc->count] = w;
		mc->value[mc->count++] = v;
		len += strlen(w) + strlen(v) + 2;
	}
	m->in_cb = false;
	if (mc->count > 0)
		mc->len = len;
	return len > MILTER_DATA_OUT ? -EINVAL : 0;
}

/* Write stage st's SMFIC_MACRO packet (when it has a value) and the stage
 * packet made of pieces, both or neither. */
static int
write_stage(struct milter *m, enum milter_stage st, const struct piece *pc, size_t npc)
{
	struct macros mc;
	int rc = macros_get(m, st, &mc);
	if (rc != 0)
		return rc;
	size_t dlen = 0;
	for (size_t i = 0; i < npc; i++)
		dlen += pc[i].n + pc[i].nul;
	if (dlen > MILTER_DATA_OUT)
		return -EINVAL;
	size_t total = MILTER_HDR + dlen + (mc.count > 0 ? MILTER_HDR + mc.len : 0);
	if (!out_room(m, total))
		return -ENOBUFS;
	char *w = m->out->buf + m->out->len;
	if (mc.count > 0) {
		w = put_hdr(w, mc.len, MC_MACRO);
		*w++ = stages[st].cmd;
		for (size_t i = 0; i < mc.count; i++) {
			w = put_str(w, mc.name[i], strlen(mc.name[i]));
			w = put_str(w, mc.value[i], strlen(mc.value[i]));
		}
	}
	w = put_hdr(w, dlen, stages[st].cmd);
	for (size_t i = 0; i < npc; i++) {
		if (pc[i].n > 0)
			memcpy(w, pc[i].p, pc[i].n);
		w += pc[i].n;
		if (pc[i].nul)
			*w++ = '\0';
	}
	m->out->len += total;
	return 0;
}

/* ---- order and skipping ---- */

/* The stage may be called in this phase. */
static bool
order_ok(const struct milter *m, enum milter_stage st)
{
	switch (st) {
	case MILTER_ST_NEGOTIATE:
		return m->phase == PH_NEW;
	case MILTER_ST_CONNECT:
		return m->phase == PH_OPEN;
	case MILTER_ST_HELO:
	case MILTER_ST_MAIL:
		return m->phase == PH_READY;
	case MILTER_ST_RCPT:
		return m->phase == PH_MAIL || m->phase == PH_RCPT;
	case MILTER_ST_DATA:
		return m->phase == PH_RCPT;
	case MILTER_ST_HEADER:
	case MILTER_ST_EOH:
		return m->phase == PH_DATA;
	case MILTER_ST_BODY:
	case MILTER_ST_EOM:
		return m->phase == PH_EOH;
	default:
		return false;
	}
}

/* What every stage call checks first. */
static int
stage_check(const struct milter *m, enum milter_stage st)
{
	if (m->in_cb)
		return -EDEADLK;
	if (milter_dead(m))
		return -EPIPE;
	if (m->waiting != MILTER_ST_NONE)
		return -EBUSY;
	return order_ok(m, st) ? 0 : -EINVAL;
}

/* Nothing goes to the milter for st: negotiated away, or a verdict made
 * it moot. */
static bool
skipped(const struct milter *m, enum milter_stage st)
{
	if (m->conn_done || (m->protocol & stages[st].no) != 0)
		return true;
	if (st >= MILTER_ST_RCPT && m->msg_done)
		return true;
	return st == MILTER_ST_BODY && m->body_skip;
}

static void
msg_end(struct milter *m)
{
	m->in_msg = false;
	m->msg_done = false;
	m->body_skip = false;
	m->phase = PH_READY;
}

/* The phase after stage st was called (written or skipped). */
static void
advance(struct milter *m, enum milter_stage st)
{
	switch (st) {
	case MILTER_ST_CONNECT:
	case MILTER_ST_HELO:
		m->phase = PH_READY;
		break;
	case MILTER_ST_MAIL:
		m->in_msg = true;
		m->msg_done = false;
		m->body_skip = false;
		m->phase = PH_MAIL;
		break;
	case MILTER_ST_RCPT:
		m->phase = PH_RCPT;
		break;
	case MILTER_ST_DATA:
	case MILTER_ST_HEADER:
		m->phase = PH_DATA;
		break;
	case MILTER_ST_EOH:
	case MILTER_ST_BODY:
		m->phase = PH_EOH;
		break;
	case MILTER_ST_EOM:
		msg_end(m);
		break;
	default:
		break;
	}
}

/* Send stage st (checked by stage_check) unless it is skipped. */
static int
stage(struct milter *m, enum milter_stage st, const struct piece *pc, size_t npc)
{
	if (skipped(m, st)) {
		advance(m, st);
		return MILTER_SKIPPED;
	}
	int rc = write_stage(m, st, pc, npc);
	if (rc != 0)
		return rc;
	advance(m, st);
	if ((m->protocol & stages[st].nr) != 0)
		return MILTER_SENT;
	m->waiting = st;
	return MILTER_WAIT;
}

/* ---- the stage calls ---- */

int
milter_negotiate(struct milter *m)
{
	int rc = stage_check(m, MILTER_ST_NEGOTIATE);
	if (rc != 0)
		return rc;
	if (!out_room(m, MILTER_HDR + 12))
		return -ENOBUFS;
	char *w = put_hdr(m->out->buf + m->out->len, 12, MC_OPTNEG);
	w = put_u32(w, MILTER_VERSION);
	w = put_u32(w, m->offer_act);
	put_u32(w, m->offer_proto);
	m->out->len += MILTER_HDR + 12;
	m->phase = PH_NEG;
	m->waiting = MILTER_ST_NEGOTIATE;
	return MILTER_WAIT;
}

int
milter_connect(struct milter *m, const char *hostname, enum milter_family fam, uint16_t port,
               const char *addr)
{
	int rc = stage_check(m, MILTER_ST_CONNECT);
	if (rc != 0)
		return rc;
	bool known = fam != MILTER_FAM_UNKNOWN;
	if (hostname == NULL || (known && addr == NULL) ||
	    (fam != MILTER_FAM_UNKNOWN && fam != MILTER_FAM_UNIX && fam != MILTER_FAM_INET &&
	     fam != MILTER_FAM_INET6))
		return -EINVAL;
	char f = (char)fam, pb[2] = {(char)(port >> 8), (char)port};
	struct piece pc[] = {
	    {hostname, strlen(hostname), true},
	    {&f, 1, false},
	    {pb, known ? 2 : 0, false},
	    {known ? addr : "", known ? strlen(addr) : 0, known},
	};
	return stage(m, MILTER_ST_CONNECT, pc, 4);
}

int
milter_helo(struct milter *m, const char *helo)
{
	int rc = stage_check(m, MILTER_ST_HELO);
	if (rc != 0)
		return rc;
	if (helo == NULL)
		return -EINVAL;
	struct piece pc = {helo, strlen(helo), true};
	return stage(m, MILTER_ST_HELO, &pc, 1);
}

/* MAIL and RCPT: argv[0] (the address), then the ESMTP parameters. */
static int
envelope(struct milter *m, enum milter_stage st, const char *const *argv, size_t argc)
{
	int rc = stage_check(m, st);
	if (rc != 0)
		return rc;
	/* More pieces than could fit in a packet is an error anyway. */
	struct piece pc[64];
	if (argv == NULL || argc == 0 || argc > sizeof(pc) / sizeof(pc[0]))
		return -EINVAL;
	for (size_t i = 0; i < argc; i++) {
		if (argv[i] == NULL)
			return -EINVAL;
		pc[i] = (struct piece){argv[i], strlen(argv[i]), true};
	}
	return stage(m, st, pc, argc);
}

int
milter_mail(struct milter *m, const char *const *argv, size_t argc)
{
	return envelope(m, MILTER_ST_MAIL, argv, argc);
}

int
milter_rcpt(struct milter *m, const char *const *argv, size_t argc)
{
	return envelope(m, MILTER_ST_RCPT, argv, argc);
}

int
milter_data(struct milter *m)
{
	int rc = stage_check(m, MILTER_ST_DATA);
	return rc != 0 ? rc : stage(m, MILTER_ST_DATA, NULL, 0);
}

int
milter_header(struct milter *m, const char *name, size_t name_len, const char *value,
              size_t value_len)
{
	int rc = stage_check(m, MILTER_ST_HEADER);
	if (rc != 0)
		return rc;
	if (name == NULL || name_len == 0 || (value == NULL && value_len > 0) ||
	    memchr(name, '\0', name_len) != NULL ||
	    (value_len > 0 && memchr(value, '\0', value_len) != NULL))
		return -EINVAL;
	/* Without HDR_LEADSPC the milter gets the value without the one space
	 * after the colon, as Sendmail and Postfix send it. */
	if ((m->protocol & MILTER_P_HDR_LEADSPC) == 0 && value_len > 0 && value[0] == ' ') {
		value++;
		value_len--;
	}
	struct piece pc[] = {{name, name_len, true}, {value != NULL ? value : "", value_len, true}};
	return stage(m, MILTER_ST_HEADER, pc, 2);
}

int
milter_eoh(struct milter *m)
{
	int rc = stage_check(m, MILTER_ST_EOH);
	return rc != 0 ? rc : stage(m, MILTER_ST_EOH, NULL, 0);
}

int
milter_body(struct milter *m, const void *p, size_t n)
{
	int rc = stage_check(m, MILTER_ST_BODY);
	if (rc != 0)
		return rc;
	if (n > MILTER_CHUNK_MAX || (p == NULL && n > 0))
		return -EINVAL;
	struct piece pc = {p, n, false};
	return stage(m, MILTER_ST_BODY, &pc, 1);
}

int
milter_eom(struct milter *m)
{
	int rc = stage_check(m, MILTER_ST_EOM);
	return rc != 0 ? rc : stage(m, MILTER_ST_EOM, NULL, 0);
}

int
milter_abort(struct milter *m)
{
	if (m->in_cb)
		return -EDEADLK;
	if (milter_dead(m))
		return -EPIPE;
	if (m->waiting != MILTER_ST_NONE)
		return -EBUSY;
	if (!m->in_msg)
		return MILTER_SKIPPED;
	if (m->conn_done) {
		msg_end(m);
		return MILTER_SKIPPED;
	}
	int rc = write_bare(m, MC_ABORT);
	if (rc != 0)
		return rc;
	msg_end(m);
	return MILTER_SENT;
}

int
milter_quit(struct milter *m)
{
	if (m->in_cb)
		return -EDEADLK;
	if (m->failed || m->phase == PH_QUIT)
		return -EPIPE;
	if (m->waiting != MILTER_ST_NONE)
		return -EBUSY;
	int rc = write_bare(m, MC_QUIT);
	if (rc != 0)
		return rc;
	m->in_msg = false;
	m->phase = PH_QUIT;
	return MILTER_SENT;
}

/* ---- failure and events ---- */

static void set_why(struct milter *m, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void
set_why(struct milter *m, const char *fmt, va_list ap)
{
	if (m->failed)
		return; /* the first reason stands */
	vsnprintf(m->why, sizeof(m->why), fmt, ap);
	m->failed = true;
	m->waiting = MILTER_ST_NONE;
}

int
milter_proto_fail(struct milter *m, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_why(m, fmt, ap);
	va_end(ap);
	return -EPROTO;
}

static void fail_fmt(struct milter *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
fail_fmt(struct milter *m, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_why(m, fmt, ap);
	va_end(ap);
}

void
milter_fail(struct milter *m, const char *why)
{
	fail_fmt(m, "%s", why != NULL && *why != '\0' ? why : "failed");
}

int
milter_emit(struct milter *m, const struct milter_event *ev)
{
	m->in_cb = true;
	m->ops->event(m->arg, ev);
	m->in_cb = false;
	return m->failed ? -EPIPE : 0;
}

/* ---- getters ---- */

enum milter_stage
milter_waiting(const struct milter *m)
{
	return m->waiting;
}

uint32_t
milter_version(const struct milter *m)
{
	return m->version;
}

uint32_t
milter_actions(const struct milter *m)
{
	return m->actions;
}

uint32_t
milter_protocol(const struct milter *m)
{
	return m->protocol;
}

bool
milter_failed(const struct milter *m)
{
	return m->failed;
}

const char *
milter_why(const struct milter *m)
{
	return m->why;
}

const char *
milter_stage_name(enum milter_stage st)
{
	static const char *const names[MILTER_ST_COUNT] = {
	    "none", "negotiate", "connect", "helo", "mail", "rcpt",
	    "data", "header",    "eoh",     "body", "eom",
	};
	return (unsigned)st < MILTER_ST_COUNT ? names[st] : "?";
}

const char *
milter_verdict_name(enum milter_verdict v)
{
	static const char *const names[] = {
	    "continue",  "accept", "reject",   "tempfail", "discard",
	    "replycode", "skip",   "connfail", "shutdown",
	};
	return (unsigned)v < sizeof(names) / sizeof(names[0]) ? names[v] : "?";
}
