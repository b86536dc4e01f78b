/*
 * milter.h - the MTA side of the Sendmail milter protocol, version 6, as
 * Postfix speaks it (sans I/O). Stage calls write commands into a
 * caller-owned buffer; the milter's replies go in through milter_feed()
 * and come out as events through one callback. No socket, no clock, no
 * allocation: timeouts, connecting and closing are the caller's.
 *
 * Wire format (libmilter, draft-adams-milter-protocol): every packet is a
 * 4-octet big-endian length, a command octet and length-1 octets of data;
 * strings are NUL-terminated. Docs: docs/milter.md.
 *
 * Ownership rules
 *  - struct milter and the output buffer belong to the caller. The core
 *    appends whole packets to out->buf[out->len, out->cap); the caller
 *    sends and lowers out->len between calls (moving what is left to the
 *    front). A packet that does not fit is not written (-ENOBUFS) and the
 *    call can be repeated once the buffer is drained.
 *  - Strings passed to stage calls are read during the call only.
 *  - Pointers in an event are valid only during the callback; they point
 *    into the caller's fed bytes or the core's carry buffer.
 *  - Macro values come from ops->macro during a stage call, and are read
 *    during that call only.
 *
 * Re-entrancy: from an event callback the caller may call the getters
 * only; every other call returns -EDEADLK there.
 *
 * Line ends: the core is byte-transparent. Header values go out and come
 * back as the caller and the milter give them (Postfix and libmilter use
 * a bare LF inside folded headers); body chunks are sent as given (the
 * protocol expects CRLF line ends). Conversions are the caller's.
 */
#ifndef RINGMX_MILTER_H
#define RINGMX_MILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest body chunk one SMFIC_BODY carries (libmilter's
 * MILTER_CHUNK_SIZE); milter_body() takes at most this much. */
#define MILTER_CHUNK_MAX 65535u
/* An output buffer this large, when empty, takes the packets of any call
 * (a stage packet and its macros, each at most MILTER_CHUNK_MAX data). */
#define MILTER_OUT_MIN (2u * (MILTER_CHUNK_MAX + 5u))
/* Longest packet the core accepts from a milter (length field, i.e.
 * command octet + data), except SMFIR_REPLBODY, which is streamed in
 * parts of any size. libmilter's default MILTER_MAX_DATA_SIZE is 65535;
 * the rest is slack for the index and NULs of a header change. A larger
 * packet breaks the protocol (-EPROTO). */
#define MILTER_PKT_MAX (65536u + 16u)
/* Longest SMFIR_REPLYCODE text (what an SMTP reply of a few lines needs). */
#define MILTER_REPLY_MAX 4096u
/* Why a conversation failed (milter_why), NUL included. */
#define MILTER_WHY_MAX 160u
/* Macros per stage (milter's SETSYMLIST included) and longest name list. */
#define MILTER_MACROS_MAX  24u
#define MILTER_SYMLIST_MAX 512u

/* Protocol version the core offers, and the oldest it accepts back. */
#define MILTER_VERSION     6u
#define MILTER_VERSION_MIN 2u

/* Actions (SMFIF_*): what a milter may do at end of message. */
enum {
	MILTER_ACT_ADDHDRS = 0x01,
	MILTER_ACT_CHGBODY = 0x02,
	MILTER_ACT_ADDRCPT = 0x04,
	MILTER_ACT_DELRCPT = 0x08,
	MILTER_ACT_CHGHDRS = 0x10,
	MILTER_ACT_QUARANTINE = 0x20,
	MILTER_ACT_CHGFROM = 0x40,
	MILTER_ACT_ADDRCPT_PAR = 0x80,
	MILTER_ACT_SETSYMLIST = 0x100,
	MILTER_ACT_ALL = 0x1ff,
};

/* Protocol flags (SMFIP_*): stages a milter does not want (NO*), stages
 * it will not answer (NR_*), and options. */
enum {
	MILTER_P_NOCONNECT = 0x1,
	MILTER_P_NOHELO = 0x2,
	MILTER_P_NOMAIL = 0x4,
	MILTER_P_NORCPT = 0x8,
	MILTER_P_NOBODY = 0x10,
	MILTER_P_NOHDRS = 0x20,
	MILTER_P_NOEOH = 0x40,
	MILTER_P_NR_HDR = 0x80,
	MILTER_P_NOUNKNOWN = 0x100,
	MILTER_P_NODATA = 0x200,
	MILTER_P_SKIP = 0x400,
	MILTER_P_RCPT_REJ = 0x800, /* not offered: rejected RCPTs never reach a milter */
	MILTER_P_NR_CONN = 0x1000,
	MILTER_P_NR_HELO = 0x2000,
	MILTER_P_NR_MAIL = 0x4000,
	MILTER_P_NR_RCPT = 0x8000,
	MILTER_P_NR_DATA = 0x10000,
	MILTER_P_NR_UNKN = 0x20000,
	MILTER_P_NR_EOH = 0x40000,
	MILTER_P_NR_BODY = 0x80000,
	MILTER_P_HDR_LEADSPC = 0x100000,
	/* What the core offers: everything above but RCPT_REJ. */
	MILTER_P_OFFER = 0x1fffff & ~0x800,
};

/* Stages, in protocol order; also the SETSYMLIST indexes for the ones
 * that carry macros (SMFIM_*: connect 0, helo 1, mail 2, rcpt 3, data 4,
 * eom 5, eoh 6). */
enum milter_stage {
	MILTER_ST_NONE = 0,
	MILTER_ST_NEGOTIATE,
	MILTER_ST_CONNECT,
	MILTER_ST_HELO,
	MILTER_ST_MAIL,
	MILTER_ST_RCPT,
	MILTER_ST_DATA,
	MILTER_ST_HEADER,
	MILTER_ST_EOH,
	MILTER_ST_BODY,
	MILTER_ST_EOM,
	MILTER_ST_COUNT
};

/* What a stage call did (>= 0), or a negative errno:
 *  -ENOBUFS  the packet(s) do not fit in out: nothing written
 *  -EBUSY    a reply is still due (MILTER_WAIT was returned before)
 *  -EINVAL   bad argument (a body chunk over MILTER_CHUNK_MAX, a string
 *            with a NUL, a packet over MILTER_CHUNK_MAX data octets, the
 *            stage's macros included; a call out of order)
 *  -EPIPE    the conversation is over (failed, shut down, or quit)
 *  -EDEADLK  called from the event callback */
enum {
	MILTER_SKIPPED = 0, /* nothing sent: negotiated away, or skipped (below) */
	MILTER_SENT = 1,    /* sent; no reply is due (NR_* flag, abort, quit) */
	MILTER_WAIT = 2,    /* sent; feed replies until MILTER_EV_VERDICT */
};

enum milter_verdict {
	MILTER_V_CONTINUE = 0, /* SMFIR_CONTINUE */
	MILTER_V_ACCEPT,       /* SMFIR_ACCEPT */
	MILTER_V_REJECT,       /* SMFIR_REJECT: 5xx, text is the MTA's */
	MILTER_V_TEMPFAIL,     /* SMFIR_TEMPFAIL: 4xx, text is the MTA's */
	MILTER_V_DISCARD,      /* SMFIR_DISCARD */
	MILTER_V_REPLYCODE,    /* SMFIR_REPLYCODE: code and text below */
	MILTER_V_SKIP,         /* SMFIR_SKIP (body only, when negotiated) */
	MILTER_V_CONNFAIL,     /* SMFIR_CONN_FAIL */
	MILTER_V_SHUTDOWN,     /* SMFIR_SHUTDOWN */
};

enum milter_ev_type {
	/* The option exchange is done: milter_actions()/milter_protocol()
	 * tell what was agreed. */
	MILTER_EV_NEGOTIATED = 0,
	/* The answer to the stage milter_waiting() named (ev->stage). */
	MILTER_EV_VERDICT,
	/* Modifications: only between milter_eom() and its verdict, and
	 * only when the action was negotiated (else -EPROTO). */
	MILTER_EV_ADD_HEADER, /* name, value */
	MILTER_EV_INS_HEADER, /* index (position among all headers, 0: first), name, value */
	MILTER_EV_CHG_HEADER, /* index (1-based among headers of that name; a 0 from the
	                         milter comes as 1), name, value (len 0: delete) */
	MILTER_EV_CHG_FROM,   /* addr, args (may be empty) */
	MILTER_EV_ADD_RCPT,   /* addr, args (empty unless ADDRCPT_PAR) */
	MILTER_EV_DEL_RCPT,   /* addr */
	MILTER_EV_REPL_BODY,  /* data: the next part of the new body (any size, 0 allowed) */
	MILTER_EV_QUARANTINE, /* text: the reason */
	MILTER_EV_PROGRESS,   /* the milter is alive: restart the timeout */
};

struct milter_event {
	enum milter_ev_type type;
	enum milter_stage stage;     /* VERDICT: the stage it answers */
	enum milter_verdict verdict; /* VERDICT */
	/* VERDICT with MILTER_V_REPLYCODE: the 4xx/5xx code, the milter's
	 * text as sent (one or more SMTP reply lines, "550 5.7.1 ..." or
	 * "550-5.7.1 a\r\n550 5.7.1 b", no final CRLF): the caller sends it
	 * as it is, with CRLF. Checked: every line starts with the same
	 * 4xx/5xx code, then '-' on all lines but the last, ' ' (or nothing)
	 * on the last; no bare CR or LF. Sendmail's "%%" is not undone.
	 * QUARANTINE: text is the reason. */
	unsigned code;
	const char *text;
	size_t text_len;
	/* Header events. leadspc: HDR_LEADSPC was negotiated, so value is as
	 * the milter wants it after the colon (else the caller puts ": "
	 * between name and value). */
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
	uint32_t index;
	bool leadspc;
	/* CHG_FROM, ADD_RCPT, DEL_RCPT (addr as the milter sent it, usually
	 * with <>), and ESMTP args */
	const char *addr;
	size_t addr_len;
	const char *args;
	size_t args_len;
	/* REPL_BODY */
	const char *data;
	size_t data_len;
};

struct milter_ops {
	void (*event)(void *arg, const struct milter_event *ev);
	/* The value of macro name ("j", "{client_addr}", ...), NUL-terminated,
	 * or NULL when it has none (then it is not sent). */
	const char *(*macro)(void *arg, const char *name);
};

struct milter_out {
	char *buf;
	size_t len;
	size_t cap;
};

/* Connection family for milter_connect (SMFIA_*). */
enum milter_family {
	MILTER_FAM_UNKNOWN = 'U',
	MILTER_FAM_UNIX = 'L',
	MILTER_FAM_INET = '4',
	MILTER_FAM_INET6 = '6',
};

struct milter_conf {
	uint32_t actions;  /* offered; 0 means MILTER_ACT_ALL */
	uint32_t protocol; /* offered; 0 means MILTER_P_OFFER */
};

/* The core's state; the caller allocates it and reads it only through
 * the getters. */
struct milter {
	const struct milter_ops *ops;
	void *arg;
	struct milter_out *out;
	uint32_t offer_act, offer_proto;
	uint32_t version, actions, protocol; /* agreed */
	enum milter_stage waiting;           /* reply due for this stage, or NONE */
	uint8_t phase;                       /* internal */
	bool in_cb;
	bool in_msg;    /* MAIL sent, message not ended */
	bool msg_done;  /* final verdict for this message: stages skipped */
	bool conn_done; /* final verdict for the connection */
	bool body_skip; /* SMFIR_SKIP: no more body chunks */
	bool failed;
	char why[MILTER_WHY_MAX];
	/* SETSYMLIST from the milter, per SMFIM index; empty: the defaults */
	char symlist[7][MILTER_SYMLIST_MAX];
	bool symlist_set[7];
	/* a partial packet from the milter */
	uint32_t need; /* length field of the packet being read */
	uint32_t got;  /* octets of its header read (0..5; 0 between packets) */
	uint8_t hdr[5];
	uint8_t cmd;
	size_t carry_len; /* data octets of it read (gathered in carry, but REPLBODY's) */
	char carry[MILTER_PKT_MAX];
};

int milter_init(struct milter *m, const struct milter_conf *conf, struct milter_out *out,
                const struct milter_ops *ops, void *arg);

/* SMFIC_OPTNEG. MILTER_WAIT (or an error); MILTER_EV_NEGOTIATED then
 * comes (no MILTER_EV_VERDICT for it). Versions before 4 have no DATA
 * stage: milter_protocol() then has MILTER_P_NODATA. */
int milter_negotiate(struct milter *m);

/* SMFIC_CONNECT: the client's name (or "[addr]"), family, port, address.
 * For MILTER_FAM_UNKNOWN port and addr are not sent. */
int milter_connect(struct milter *m, const char *hostname, enum milter_family fam, uint16_t port,
                   const char *addr);
/* SMFIC_HELO */
int milter_helo(struct milter *m, const char *helo);
/* SMFIC_MAIL / SMFIC_RCPT: argv[0] is the address with its <>, then the
 * ESMTP parameters ("SIZE=123"). MAIL starts a message. */
int milter_mail(struct milter *m, const char *const *argv, size_t argc);
int milter_rcpt(struct milter *m, const char *const *argv, size_t argc);
/* SMFIC_DATA */
int milter_data(struct milter *m);
/* SMFIC_HEADER: value as in the message after the colon. Without
 * HDR_LEADSPC the core drops its first octet when it is a space (one
 * space, not a tab: as Sendmail and Postfix do). */
int milter_header(struct milter *m, const char *name, size_t name_len, const char *value,
                  size_t value_len);
/* SMFIC_EOH */
int milter_eoh(struct milter *m);
/* SMFIC_BODY: at most MILTER_CHUNK_MAX octets. After SMFIR_SKIP (or
 * NOBODY) returns MILTER_SKIPPED. */
int milter_body(struct milter *m, const void *p, size_t n);
/* SMFIC_BODYEOB: modification events, then the verdict. Ends the message. */
int milter_eom(struct milter *m);
/* SMFIC_ABORT: the message ends without EOM (RSET, a rejected DATA, a
 * lost client). No reply. MILTER_SKIPPED when no message is open (or
 * after a connection-level verdict); -EBUSY while a reply is due. */
int milter_abort(struct milter *m);
/* SMFIC_QUIT: the conversation ends; the caller closes after sending.
 * Only QUIT is written (Postfix aborts an open message first: call
 * milter_abort before). Also after SMFIR_CONN_FAIL/SHUTDOWN (MILTER_SENT);
 * -EPIPE after a failure or a QUIT; -EBUSY while a reply is due. */
int milter_quit(struct milter *m);

/* Replies from the milter. 0, or -EPROTO when the milter broke the
 * protocol (milter_why() says how; the conversation is over), -EDEADLK
 * from the callback. Replies are accepted only while one is due. */
int milter_feed(struct milter *m, const void *p, size_t n);

/* The caller gave up on the conversation (timeout, connection lost):
 * later calls return -EPIPE. May be called from the event callback (a
 * change it cannot take): milter_feed() then stops and returns -EPIPE. */
void milter_fail(struct milter *m, const char *why);

/* Getters. */
enum milter_stage milter_waiting(const struct milter *m); /* NONE when no reply is due */
uint32_t milter_version(const struct milter *m);
uint32_t milter_actions(const struct milter *m);
uint32_t milter_protocol(const struct milter *m);
bool milter_failed(const struct milter *m);
const char *milter_why(const struct milter *m);
const char *milter_stage_name(enum milter_stage st); /* "connect", "helo", ... */
const char *milter_verdict_name(enum milter_verdict v);

#endif
