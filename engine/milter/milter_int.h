/*
 * milter_int.h - what milter.c (the stage calls, the writer) and
 * milter_reply.c (the reader of the milter's replies) share. Not for
 * callers: they use milter.h only.
 */
#ifndef RINGMX_MILTER_INT_H
#define RINGMX_MILTER_INT_H

#include "milter.h"

/* struct milter.phase: where the conversation is. Stage calls are legal
 * in the phases order_ok() (milter.c) names; PH_ENDED and PH_QUIT refuse
 * everything (PH_ENDED still lets milter_quit() write QUIT). */
enum milter_phase {
	PH_NEW = 0, /* milter_init: negotiate is due */
	PH_NEG,     /* OPTNEG written, its answer due */
	PH_OPEN,    /* negotiated: connect is due */
	PH_READY,   /* connected, no message: helo or mail */
	PH_MAIL,    /* MAIL: rcpt */
	PH_RCPT,    /* a RCPT: rcpt or data */
	PH_DATA,    /* DATA: header or eoh */
	PH_EOH,     /* EOH: body or eom */
	PH_ENDED,   /* SMFIR_CONN_FAIL or SMFIR_SHUTDOWN */
	PH_QUIT,    /* QUIT written */
};

/* Command octets (SMFIC_*, MTA to milter). */
enum {
	MC_ABORT = 'A',
	MC_BODY = 'B',
	MC_CONNECT = 'C',
	MC_MACRO = 'D',
	MC_EOM = 'E',
	MC_HELO = 'H',
	MC_HEADER = 'L',
	MC_MAIL = 'M',
	MC_EOH = 'N',
	MC_OPTNEG = 'O',
	MC_QUIT = 'Q',
	MC_RCPT = 'R',
	MC_DATA = 'T',
};

/* Reply octets (SMFIR_*, milter to MTA). */
enum {
	MR_ADDRCPT = '+',
	MR_DELRCPT = '-',
	MR_ADDRCPT_PAR = '2',
	MR_SHUTDOWN = '4',
	MR_ACCEPT = 'a',
	MR_REPLBODY = 'b',
	MR_CONTINUE = 'c',
	MR_DISCARD = 'd',
	MR_CHGFROM = 'e',
	MR_CONN_FAIL = 'f',
	MR_ADDHEADER = 'h',
	MR_INSHEADER = 'i',
	MR_SETSYMLIST = 'l',
	MR_CHGHEADER = 'm',
	MR_PROGRESS = 'p',
	MR_QUARANTINE = 'q',
	MR_REJECT = 'r',
	MR_SKIP = 's',
	MR_TEMPFAIL = 't',
	MR_REPLYCODE = 'y',
};

/* Length field and command octet. */
#define MILTER_HDR 5u
/* SMFIM_* indexes: symlist[] and the default macro lists. */
#define MILTER_SYMLISTS 7u

/* The conversation is over for the caller: failed, ended or quit. */
static inline bool
milter_dead(const struct milter *m)
{
	return m->failed || m->phase >= PH_ENDED;
}

/* Record why the milter broke the protocol (printf format): the
 * conversation is over. Returns -EPROTO. */
int milter_proto_fail(struct milter *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Hand ev to the caller's callback (getters only from there). Returns 0,
 * or -EPIPE when the callback called milter_fail(). */
int milter_emit(struct milter *m, const struct milter_event *ev);

#endif
