/*
 * milter_reply.c - reads the milter's replies (milter_feed, milter.h):
 * frames packets across feeds, checks each against the stage whose
 * answer is due and what was negotiated, and turns it into events.
 *
 * Zero copy: a packet that lies whole inside one feed is parsed where it
 * is; only the data of a packet split across feeds is gathered in
 * m->carry (the 5 header octets always go through m->hdr). SMFIR_REPLBODY
 * is never gathered: each feed's part of it is an event of its own.
 * Event pointers are views into the feed or into m->carry, valid during
 * the callback.
 *
 * Invariants: m->got counts the header octets of the current packet
 * read (0 between packets), m->carry_len its data octets read once the
 * header is in (gathered in m->carry for all but REPLBODY); once the
 * header is complete the packet has passed cmd_check(); after any
 * failure nothing is read.
 */
#include "milter_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const struct {
	char cmd;
	const char *name;
	uint32_t act; /* modification: the action it needs */
} replies[] = {
    {MR_ADDRCPT, "add recipient", MILTER_ACT_ADDRCPT},
    {MR_DELRCPT, "delete recipient", MILTER_ACT_DELRCPT},
    {MR_ADDRCPT_PAR, "add recipient with parameters", MILTER_ACT_ADDRCPT_PAR},
    {MR_SHUTDOWN, "shutdown", 0},
    {MR_ACCEPT, "accept", 0},
    {MR_REPLBODY, "replace body", MILTER_ACT_CHGBODY},
    {MR_CONTINUE, "continue", 0},
    {MR_DISCARD, "discard", 0},
    {MR_CHGFROM, "change sender", MILTER_ACT_CHGFROM},
    {MR_CONN_FAIL, "connection failure", 0},
    {MR_ADDHEADER, "add header", MILTER_ACT_ADDHDRS},
    {MR_INSHEADER, "insert header", MILTER_ACT_ADDHDRS},
    {MR_SETSYMLIST, "macro list", 0},
    {MR_CHGHEADER, "change header", MILTER_ACT_CHGHDRS},
    {MR_PROGRESS, "progress", 0},
    {MR_QUARANTINE, "quarantine", MILTER_ACT_QUARANTINE},
    {MR_REJECT, "reject", 0},
    {MR_SKIP, "skip", 0},
    {MR_TEMPFAIL, "tempfail", 0},
    {MR_REPLYCODE, "reply code", 0},
    {MC_OPTNEG, "option negotiation", 0},
};
#define NREPLIES (sizeof(replies) / sizeof(replies[0]))

static int
reply_index(uint8_t cmd)
{
	for (size_t i = 0; i < NREPLIES; i++)
		if ((uint8_t)replies[i].cmd == cmd)
			return (int)i;
	return -1;
}

/* "'h' (add header)" for why texts: a value, so threads share nothing
 * (C11 keeps the temporary alive to the end of the call it is used in). */
struct desc {
	char s[48];
};

static struct desc
cmd_desc(uint8_t cmd)
{
	struct desc d;
	int i = reply_index(cmd);
	if (i >= 0)
		snprintf(d.s, sizeof(d.s), "'%c' (%s)", cmd, replies[i].name);
	else if (cmd > 0x20 && cmd < 0x7f)
		snprintf(d.s, sizeof(d.s), "unknown reply '%c'", cmd);
	else
		snprintf(d.s, sizeof(d.s), "unknown reply 0x%02x", cmd);
	return d;
}

static uint32_t
get_u32(const void *p)
{
	const uint8_t *b = p;
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* A reply without data: its verdict, or -1. */
static int
bare_verdict(uint8_t cmd)
{
	switch (cmd) {
	case MR_CONTINUE:
		return MILTER_V_CONTINUE;
	case MR_ACCEPT:
		return MILTER_V_ACCEPT;
	case MR_REJECT:
		return MILTER_V_REJECT;
	case MR_TEMPFAIL:
		return MILTER_V_TEMPFAIL;
	case MR_DISCARD:
		return MILTER_V_DISCARD;
	case MR_SKIP:
		return MILTER_V_SKIP;
	case MR_CONN_FAIL:
		return MILTER_V_CONNFAIL;
	case MR_SHUTDOWN:
		return MILTER_V_SHUTDOWN;
	default:
		return -1;
	}
}

/* May a packet cmd of length field len come now? Checked as soon as its
 * header is in, so a bad packet is refused before its data is read. */
static int
cmd_check(struct milter *m, uint8_t cmd, uint32_t len)
{
	enum milter_stage st = m->waiting;
	const char *at = milter_stage_name(st);
	int i = reply_index(cmd);
	if (len == 0)
		return milter_proto_fail(m, "milter sent a packet of length 0");
	if (st == MILTER_ST_NEGOTIATE) {
		if (cmd != MC_OPTNEG)
			return milter_proto_fail(m, "milter sent %s in the option negotiation",
			                         cmd_desc(cmd).s);
	} else if (i < 0 || cmd == MC_OPTNEG || cmd == MR_SETSYMLIST) {
		return milter_proto_fail(m, "milter sent %s answering %s", cmd_desc(cmd).s, at);
	} else if (cmd == MR_SKIP && st != MILTER_ST_BODY) {
		return milter_proto_fail(m, "milter sent %s answering %s (only body)",
		                         cmd_desc(cmd).s, at);
	} else if (cmd == MR_SKIP && (m->protocol & MILTER_P_SKIP) == 0) {
		return milter_proto_fail(m, "milter sent %s without SKIP negotiated",
		                         cmd_desc(cmd).s);
	} else if ((replies[i].act != 0 || cmd == MR_PROGRESS) && st != MILTER_ST_EOM) {
		return milter_proto_fail(m, "milter sent %s answering %s (only at end of message)",
		                         cmd_desc(cmd).s, at);
	} else if (replies[i].act != 0 && (m->actions & replies[i].act) == 0) {
		return milter_proto_fail(m, "milter sent %s without the action negotiated",
		                         cmd_desc(cmd).s);
	}
	if ((bare_verdict(cmd) >= 0 || cmd == MR_PROGRESS) && len != 1)
		return milter_proto_fail(m, "milter sent %s with %u octets of data",
		                         cmd_desc(cmd).s, len - 1);
	if (len > MILTER_PKT_MAX && cmd != MR_REPLBODY)
		return milter_proto_fail(m, "milter sent %s of %u octets (limit %u)",
		                         cmd_desc(cmd).s, len, MILTER_PKT_MAX);
	return 0;
}

/* ---- verdicts ---- */

/* The state a verdict at stage st leaves. */
static void
verdict_state(struct milter *m, enum milter_stage st, enum milter_verdict v)
{
	switch (v) {
	case MILTER_V_CONTINUE:
		return;
	case MILTER_V_SKIP:
		m->body_skip = true;
		return;
	case MILTER_V_CONNFAIL:
	case MILTER_V_SHUTDOWN:
		m->phase = PH_ENDED;
		return;
	default:
		break;
	}
	/* ACCEPT, REJECT, TEMPFAIL, DISCARD, REPLYCODE */
	if (st == MILTER_ST_CONNECT ||
	    (st == MILTER_ST_HELO && (v == MILTER_V_ACCEPT || v == MILTER_V_DISCARD)))
		m->conn_done = true;
	else if (st == MILTER_ST_RCPT)
		m->msg_done = m->msg_done || v == MILTER_V_ACCEPT || v == MILTER_V_DISCARD;
	else if (st >= MILTER_ST_MAIL && st <= MILTER_ST_BODY)
		m->msg_done = true;
}

static int
verdict(struct milter *m, enum milter_verdict v, unsigned code, const char *text, size_t len)
{
	enum milter_stage st = m->waiting;
	m->waiting = MILTER_ST_NONE;
	verdict_state(m, st, v);
	struct milter_event ev = {.type = MILTER_EV_VERDICT, .stage = st, .verdict = v};
	ev.code = code;
	ev.text = text;
	ev.text_len = len;
	return milter_emit(m, &ev);
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* SMFIR_REPLYCODE: "4xx text" or "5xx text" (or the code alone), or
 * lines "5xx-..." joined by CRLF, the last "5xx ...", all of one code;
 * an enhanced code, when there is one, of the same class. */
static int
replycode(struct milter *m, const char *d, size_t dlen)
{
	const char *z = memchr(d, '\0', dlen);
	if (z == NULL)
		return milter_proto_fail(m, "milter sent 'y' (reply code) without a NUL");
	if (z != d + dlen - 1)
		return milter_proto_fail(m, "milter sent 'y' (reply code) with data after its NUL");
	size_t len = dlen - 1;
	if (len > MILTER_REPLY_MAX)
		return milter_proto_fail(m,
		                         "milter sent a reply code text of %zu octets (limit %u)",
		                         len, MILTER_REPLY_MAX);
	const char *s = d, *end = d + len;
	for (;;) {
		const char *e = s;
		while (e < end && *e != '\r' && *e != '\n')
			e++;
		bool final = e == end;
		size_t ll = (size_t)(e - s);
		if (ll < 3 || (s[0] != '4' && s[0] != '5') || !is_digit(s[1]) || !is_digit(s[2]) ||
		    (ll == 3 && !final) || (ll > 3 && s[3] != (final ? ' ' : '-')) ||
		    (ll > 4 && is_digit(s[4]) && s[4] != s[0]))
			return milter_proto_fail(m, "milter sent a malformed reply code: %.*s",
			                         (int)(ll < 40 ? ll : 40), s);
		if (s != d && memcmp(s, d, 3) != 0)
			return milter_proto_fail(m,
			                         "milter sent a multi-line reply with codes "
			                         "%.3s and %.3s",
			                         d, s);
		if (final)
			break;
		if (end - e < 2 || e[0] != '\r' || e[1] != '\n')
			return milter_proto_fail(m,
			                         "milter sent a reply code with a bare CR or LF");
		if (end - e == 2)
			return milter_proto_fail(m, "milter sent a reply code ending in CRLF");
		s = e + 2;
	}
	unsigned code =
	    (unsigned)(d[0] - '0') * 100 + (unsigned)(d[1] - '0') * 10 + (unsigned)(d[2] - '0');
	return verdict(m, MILTER_V_REPLYCODE, code, d, len);
}

/* ---- modifications ---- */

/* The NUL-terminated string at d[*at]: its view, and *at past its NUL. */
static bool
take_str(const char *d, size_t dlen, size_t *at, const char **s, size_t *n)
{
	if (*at >= dlen)
		return false;
	const char *z = memchr(d + *at, '\0', dlen - *at);
	if (z == NULL)
		return false;
	*s = d + *at;
	*n = (size_t)(z - *s);
	*at = (size_t)(z - d) + 1;
	return true;
}

/* Header changes: [index] name value. */
static int
mod_header(struct milter *m, uint8_t cmd, const char *d, size_t dlen, struct milter_event *ev)
{
	size_t at = 0;
	if (cmd != MR_ADDHEADER) {
		if (dlen < 4)
			return milter_proto_fail(m, "milter sent %s without its index",
			                         cmd_desc(cmd).s);
		ev->index = get_u32(d);
		at = 4;
	}
	if (!take_str(d, dlen, &at, &ev->name, &ev->name_len) ||
	    !take_str(d, dlen, &at, &ev->value, &ev->value_len))
		return milter_proto_fail(m, "milter sent %s with a missing NUL", cmd_desc(cmd).s);
	if (ev->name_len == 0)
		return milter_proto_fail(m, "milter sent %s with an empty name", cmd_desc(cmd).s);
	/* Sendmail compatibility, as Postfix: index 0 names the first. */
	if (cmd == MR_CHGHEADER && ev->index == 0)
		ev->index = 1;
	ev->leadspc = (m->protocol & MILTER_P_HDR_LEADSPC) != 0;
	ev->type = cmd == MR_ADDHEADER   ? MILTER_EV_ADD_HEADER
	           : cmd == MR_INSHEADER ? MILTER_EV_INS_HEADER
	                                 : MILTER_EV_CHG_HEADER;
	return at == dlen ? 0 : -1;
}

/* Envelope changes: addr [args]. */
static int
mod_envelope(struct milter *m, uint8_t cmd, const char *d, size_t dlen, struct milter_event *ev)
{
	size_t at = 0;
	if (!take_str(d, dlen, &at, &ev->addr, &ev->addr_len))
		return milter_proto_fail(m, "milter sent %s with a missing NUL", cmd_desc(cmd).s);
	if (ev->addr_len == 0)
		return milter_proto_fail(m, "milter sent %s with an empty address",
		                         cmd_desc(cmd).s);
	ev->args = "";
	bool args = cmd == MR_CHGFROM || cmd == MR_ADDRCPT_PAR;
	if (args && at < dlen && !take_str(d, dlen, &at, &ev->args, &ev->args_len))
		return milter_proto_fail(m, "milter sent %s with a missing NUL", cmd_desc(cmd).s);
	ev->type = cmd == MR_CHGFROM   ? MILTER_EV_CHG_FROM
	           : cmd == MR_DELRCPT ? MILTER_EV_DEL_RCPT
	                               : MILTER_EV_ADD_RCPT;
	return at == dlen ? 0 : -1;
}

static int
modification(struct milter *m, uint8_t cmd, const char *d, size_t dlen)
{
	struct milter_event ev = {.stage = MILTER_ST_EOM};
	int rc;
	if (cmd == MR_ADDHEADER || cmd == MR_INSHEADER || cmd == MR_CHGHEADER) {
		rc = mod_header(m, cmd, d, dlen, &ev);
	} else if (cmd == MR_QUARANTINE) {
		size_t at = 0;
		if (!take_str(d, dlen, &at, &ev.text, &ev.text_len))
			return milter_proto_fail(m, "milter sent %s with a missing NUL",
			                         cmd_desc(cmd).s);
		ev.type = MILTER_EV_QUARANTINE;
		rc = at == dlen ? 0 : -1;
	} else {
		rc = mod_envelope(m, cmd, d, dlen, &ev);
	}
	if (rc == -1)
		return milter_proto_fail(m, "milter sent %s with data after its strings",
		                         cmd_desc(cmd).s);
	return rc != 0 ? rc : milter_emit(m, &ev);
}

/* ---- negotiation ---- */

/* The milter's macro lists, after the three words of its OPTNEG. */
static int
symlists(struct milter *m, const char *d, size_t dlen)
{
	size_t at = 12;
	if (at < dlen && (m->actions & MILTER_ACT_SETSYMLIST) == 0)
		return milter_proto_fail(m,
		                         "milter sent macro lists without SETSYMLIST negotiated");
	while (at < dlen) {
		const char *s;
		size_t n;
		if (dlen - at < 4)
			return milter_proto_fail(m, "milter sent a truncated macro list");
		uint32_t i = get_u32(d + at);
		at += 4;
		if (i >= MILTER_SYMLISTS)
			return milter_proto_fail(m, "milter sent a macro list for stage %u (0..6)",
			                         i);
		if (!take_str(d, dlen, &at, &s, &n))
			return milter_proto_fail(m, "milter sent a macro list without a NUL");
		if (n >= MILTER_SYMLIST_MAX)
			return milter_proto_fail(
			    m, "milter sent a macro list of %zu octets (limit %u)", n,
			    MILTER_SYMLIST_MAX - 1);
		size_t names = 0;
		for (size_t k = 0; k < n; k++)
			if (s[k] != ' ' && s[k] != '\t' && s[k] != ',' &&
			    (k == 0 || s[k - 1] == ' ' || s[k - 1] == '\t' || s[k - 1] == ','))
				names++;
		if (names > MILTER_MACROS_MAX)
			return milter_proto_fail(m,
			                         "milter sent %zu macros for one stage (limit %u)",
			                         names, MILTER_MACROS_MAX);
		memcpy(m->symlist[i], s, n);
		m->symlist[i][n] = '\0';
		m->symlist_set[i] = true;
	}
	return 0;
}

static int
negotiated(struct milter *m, const char *d, size_t dlen)
{
	if (dlen < 12)
		return milter_proto_fail(m, "milter sent an option negotiation of %zu octets",
		                         dlen);
	uint32_t ver = get_u32(d), act = get_u32(d + 4), proto = get_u32(d + 8);
	if (ver < MILTER_VERSION_MIN || ver > MILTER_VERSION)
		return milter_proto_fail(m, "milter speaks protocol version %u (not %u..%u)", ver,
		                         MILTER_VERSION_MIN, MILTER_VERSION);
	if ((act & ~m->offer_act) != 0)
		return milter_proto_fail(m, "milter asked for actions 0x%x not offered (0x%x)", act,
		                         m->offer_act);
	if ((proto & ~m->offer_proto) != 0)
		return milter_proto_fail(m,
		                         "milter asked for protocol flags 0x%x not offered (0x%x)",
		                         proto, m->offer_proto);
	m->version = ver;
	m->actions = act;
	/* Versions 2 and 3 have no DATA stage (Postfix's MILTER8_V4_PROTO_MASK). */
	m->protocol = proto | (ver < 4 ? (uint32_t)MILTER_P_NODATA : 0);
	int rc = symlists(m, d, dlen);
	if (rc != 0)
		return rc;
	m->waiting = MILTER_ST_NONE;
	m->phase = PH_OPEN;
	struct milter_event ev = {.type = MILTER_EV_NEGOTIATED, .stage = MILTER_ST_NEGOTIATE};
	return milter_emit(m, &ev);
}

/* A whole packet (not REPLBODY): its data d[0, dlen). */
static int
packet(struct milter *m, uint8_t cmd, const char *d, size_t dlen)
{
	int v = bare_verdict(cmd);
	if (v >= 0)
		return verdict(m, (enum milter_verdict)v, 0, NULL, 0);
	switch (cmd) {
	case MC_OPTNEG:
		return negotiated(m, d, dlen);
	case MR_REPLYCODE:
		return replycode(m, d, dlen);
	case MR_PROGRESS: {
		struct milter_event ev = {.type = MILTER_EV_PROGRESS, .stage = MILTER_ST_EOM};
		return milter_emit(m, &ev);
	}
	default:
		return modification(m, cmd, d, dlen);
	}
}

static int
repl_body(struct milter *m, const void *p, size_t n)
{
	struct milter_event ev = {.type = MILTER_EV_REPL_BODY, .stage = MILTER_ST_EOM};
	ev.data = p;
	ev.data_len = n;
	return milter_emit(m, &ev);
}

/* Read from p[0, *n): the header, then the data of one packet, or as much
 * of it as there is. */
static int
take(struct milter *m, const char **pp, size_t *np)
{
	const char *p = *pp;
	size_t n = *np;
	if (m->got < MILTER_HDR) {
		if (m->waiting == MILTER_ST_NONE)
			return milter_proto_fail(m, "milter sent data with no reply due");
		size_t k = MILTER_HDR - m->got < n ? MILTER_HDR - m->got : n;
		memcpy(m->hdr + m->got, p, k);
		m->got += (uint32_t)k;
		p += k;
		n -= k;
		*pp = p;
		*np = n;
		if (m->got < MILTER_HDR)
			return 0;
		m->need = get_u32(m->hdr);
		m->cmd = m->hdr[4];
		m->carry_len = 0;
		int rc = cmd_check(m, m->cmd, m->need);
		if (rc != 0)
			return rc;
	}
	size_t dlen = m->need - 1, have = m->carry_len;
	size_t k = dlen - have < n ? dlen - have : n;
	*pp = p + k;
	*np = n - k;
	if (m->cmd == MR_REPLBODY) {
		/* Counted, never gathered. */
		m->carry_len += k;
		if (m->carry_len == dlen)
			m->got = 0;
		return k > 0 || dlen == 0 ? repl_body(m, p, k) : 0;
	}
	if (have == 0 && k == dlen) {
		m->got = 0;
		return packet(m, m->cmd, p, dlen);
	}
	memcpy(m->carry + have, p, k);
	m->carry_len += k;
	if (m->carry_len < dlen)
		return 0;
	m->got = 0;
	return packet(m, m->cmd, m->carry, dlen);
}

int
milter_feed(struct milter *m, const void *p, size_t n)
{
	if (m->in_cb)
		return -EDEADLK;
	if (milter_dead(m))
		return -EPIPE;
	const char *b = p;
	while (n > 0) {
		int rc = take(m, &b, &n);
		if (rc != 0)
			return rc;
	}
	return 0;
}
