/*
 * smtp_client.h - the SMTP/LMTP client protocol core (sans I/O): the
 * outbound twin of smtp_session. Replies go in (smtpc_feed), commands come
 * out into a caller-owned buffer, everything else comes out as events
 * through one callback. No socket, no clock, no allocation, no TLS: the
 * core asks the caller to start TLS and is told when it is done; timeouts
 * are the caller's (smtpc_abort). States, events and limits: docs/smtp-client.md.
 *
 * Ownership rules
 *  - struct smtpc, the output buffer and every submitted struct smtpc_tx
 *    (with its recipient array, addresses and body) belong to the caller.
 *    A transaction is lent to the core from smtpc_submit() until its
 *    SMTPC_EV_TX event returns: meanwhile the caller must not touch it.
 *  - Message bytes are never copied: SMTPC_EV_BODY names a span of
 *    tx->body (or of one of tx->pieces). The caller sends out->buf[0,
 *    out->len) first, then the span, and then calls smtpc_body_sent();
 *    until then the core writes nothing. "Sends" may mean "queues": a
 *    caller that gathers one write (sendmsg) notes where the span goes
 *    among the output bytes, calls smtpc_body_sent() and sends all of it
 *    later, in order.
 *    Dot-stuffing for DATA is the core's: it writes the extra "." octets
 *    (and the terminating ".") into the output buffer between spans.
 *  - The caller drains out->buf (sends, then lowers out->len, moving what
 *    is left to the front) between calls; the core only appends whole
 *    commands, so a command is never split.
 *  - Pointers in an event are valid only during the callback.
 *
 * Re-entrancy: from an event callback the caller may call smtpc_submit(),
 * smtpc_quit() and the getters only; the others return -EDEADLK there.
 * smtpc_submit() and smtpc_quit() only queue: the next smtpc_feed(),
 * smtpc_pump() or smtpc_body_sent() writes the commands.
 *
 * TLS: policy ENCRYPT and VERIFY never write a MAIL, RCPT, DATA or BDAT
 * before smtpc_tls_done(c, true): every path that would (no STARTTLS in
 * the EHLO reply, EHLO refused, STARTTLS refused, handshake failed) ends
 * the connection with SMTPC_EV_DEFER, enhanced status 4.7.4.
 */
#ifndef RINGMX_SMTP_CLIENT_H
#define RINGMX_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relay_reply.h"

/* Longest reply line (without its line end). RFC 5321 4.5.3.1.5 says 512
 * octets with the CRLF; real servers exceed it in banners and EHLO
 * keywords, so there is slack. A longer line ends the connection. */
#define SMTPC_LINE_MAX 2048
/* Replies the client may be waiting for at once (commands in flight,
 * pipelined). A full queue stops writing until replies come in. */
#define SMTPC_EXP_MAX 256
/* Transactions submitted and not finished (queued or in flight). */
#define SMTPC_TX_MAX 32
/* Longest address in MAIL FROM / RCPT TO (RFC 5321 4.5.3.1.3: a path is
 * 256 octets; the rest is slack for SMTPUTF8 addresses). */
#define SMTPC_ADDR_MAX 512
/* Longest EHLO/LHLO/HELO name. */
#define SMTPC_HELO_MAX 255
/* Longest command written (MAIL FROM with its parameters); the output
 * buffer must hold at least this much (smtpc_init). */
#define SMTPC_CMD_MAX (SMTPC_ADDR_MAX + 96)
/* Reason text the core formats for failures (NUL included). */
#define SMTPC_TEXT_MAX RELAY_REPLY_TEXT_MAX

/* EHLO keywords the client acts on (smtpc_ext). */
enum {
	SMTPC_EXT_PIPELINING = 1u << 0,
	SMTPC_EXT_SIZE = 1u << 1,
	SMTPC_EXT_8BITMIME = 1u << 2,
	SMTPC_EXT_SMTPUTF8 = 1u << 3,
	SMTPC_EXT_CHUNKING = 1u << 4,
	SMTPC_EXT_STARTTLS = 1u << 5,
	SMTPC_EXT_ENHANCEDSTATUSCODES = 1u << 6,
};

enum smtpc_tls {
	SMTPC_TLS_NONE = 0, /* never STARTTLS (e.g. LMTP over a unix socket) */
	SMTPC_TLS_MAY,      /* STARTTLS when offered; plaintext when not or refused */
	SMTPC_TLS_ENCRYPT,  /* TLS or nothing; the certificate is not checked */
	SMTPC_TLS_VERIFY,   /* TLS or nothing; the caller verifies the certificate */
};

struct smtpc_conf {
	const char *helo; /* our name for EHLO/LHLO/HELO; copied by smtpc_init */
	bool lmtp;        /* LHLO, one reply per accepted recipient, no HELO */
	enum smtpc_tls tls;
	/* SMTPC_EXT_* bits to take as not offered, whatever the EHLO reply
	 * says (Postfix's smtp_discard_ehlo_keywords): PIPELINING for a
	 * lock-step session, CHUNKING to keep to DATA. 0: use what is offered. */
	unsigned ext_ignore;
};

enum smtpc_state {
	SMTPC_S_GREETING = 0, /* waiting for the 220 */
	SMTPC_S_EHLO,         /* EHLO/LHLO to write or written */
	SMTPC_S_HELO,         /* HELO fallback after a 5xx to EHLO */
	SMTPC_S_STARTTLS,     /* STARTTLS to write or written */
	SMTPC_S_TLS,          /* 220 to STARTTLS: the caller handshakes */
	SMTPC_S_READY,        /* transactions */
	SMTPC_S_QUIT,         /* QUIT to write or written */
	SMTPC_S_CLOSED,       /* SMTPC_EV_CLOSE delivered; nothing more */
	SMTPC_S_COUNT
};

/* Output buffer, owned by the caller: the core appends whole commands. */
struct smtpc_out {
	char *buf;
	size_t len;
	size_t cap;
};

/* One recipient. st is the core's while the transaction is lent. */
struct smtpc_rcpt {
	const char *addr; /* without <>; no CR, LF or NUL */
	size_t len;
	uint8_t st;
};

/* One piece of a body given in several (struct smtpc_tx.pieces): a view,
 * never copied; p may be NULL when len is 0. nostuff: the caller built it
 * so that no line in it starts with '.', counting its first octet as a
 * line start (a header block it formatted, a template), and DATA sends it
 * without reading a byte of it. Such a line would go out unstuffed: a
 * caller's bug, caught by an assertion in debug builds. Never set it for
 * bytes from the network or the spool. */
struct smtpc_piece {
	const uint8_t *p;
	size_t len;
	bool nostuff;
};

/* What the message needs from the server. */
enum {
	SMTPC_TX_SMTPUTF8 = 1u << 0, /* refused (5.6.7) unless SMTPUTF8 is offered */
	SMTPC_TX_8BITMIME = 1u << 1, /* BODY=8BITMIME when offered */
	/* Address verification (Postfix's verify(8) probe): MAIL and the
	 * RCPTs only, never DATA or BDAT and never SIZE; each RCPT's own
	 * reply is that recipient's result, 2xx included; a RSET goes in
	 * front of the next transaction (QUIT needs none). No body. */
	SMTPC_TX_PROBE = 1u << 2,
};

struct smtpc_tx {
	/* set by the caller before smtpc_submit() */
	const char *from; /* reverse path without <>; "" for the null sender */
	size_t from_len;
	struct smtpc_rcpt *rcpt;
	uint32_t nrcpt;      /* >= 1 */
	const uint8_t *body; /* the message as it is (not dot-stuffed) */
	size_t body_len;     /* with pieces: their total */
	/* Or the message as npieces pieces, in order (body is then NULL): a
	 * caller that builds each message from parts it already has (a
	 * header block of its own, a shared template) lends them as they
	 * are. The result on the wire is the same as for one body of their
	 * concatenation; SMTPC_EV_BODY spans never cross a piece. */
	const struct smtpc_piece *pieces;
	uint32_t npieces;
	unsigned flags; /* SMTPC_TX_* */
	void *user;     /* the caller's */
	uint32_t id;    /* the caller's; the core only prints it */

	/* the core's from smtpc_submit() until SMTPC_EV_TX */
	struct smtpc_tx *next;
	uint32_t nexp;     /* expected replies still naming this transaction */
	uint32_t nacc;     /* RCPT accepted, final reply due */
	uint32_t nleft;    /* recipients without a result yet */
	uint32_t rcpt_out; /* RCPT written, reply not yet read */
	uint8_t phase;     /* internal enum tx_phase */
	bool mail_failed;
	bool mail_ok;
};

/* The command a reply answers (struct smtpc_event.cmd). */
enum smtpc_cmd {
	SMTPC_CMD_NONE = 0, /* no reply decided: the core did (below) */
	SMTPC_CMD_GREETING,
	SMTPC_CMD_EHLO, /* or LHLO */
	SMTPC_CMD_HELO,
	SMTPC_CMD_STARTTLS,
	SMTPC_CMD_MAIL,
	SMTPC_CMD_RCPT,
	SMTPC_CMD_DATA,
	SMTPC_CMD_DOT, /* end of data */
	SMTPC_CMD_BDAT,
	SMTPC_CMD_RSET,
	SMTPC_CMD_QUIT,
	SMTPC_CMD_COUNT
};

/* A reply as events carry it: views, valid during the callback. enh is
 * the RFC 3463 enhanced status at the start of the text ("5.1.1"), or
 * empty; text is what follows it. */
struct smtpc_reply {
	int code;
	const char *enh;
	size_t enh_len;
	const char *text;
	size_t text_len;
};

enum smtpc_ev_type {
	SMTPC_EV_READY = 1, /* usable: smtpc_ext() is final (after TLS if any) */
	SMTPC_EV_TLS,       /* send the output, discard input, handshake, smtpc_tls_done() */
	SMTPC_EV_BODY,      /* send the output, then body[0, body_len), then smtpc_body_sent() */
	SMTPC_EV_RCPT,      /* the final result of tx->rcpt[rcpt] */
	SMTPC_EV_TX,        /* every recipient has its result; tx is the caller's again */
	SMTPC_EV_DEFER,     /* failed before READY: defer everything for this next hop */
	SMTPC_EV_CLOSE,     /* close once the output is sent; the last event */
};

struct smtpc_event {
	enum smtpc_ev_type type;
	struct smtpc_tx *tx; /* RCPT, TX, BODY */
	uint32_t rcpt;       /* RCPT: index into tx->rcpt */
	/* RCPT: the deciding reply (the server's, or one the core made up:
	 * 552 5.3.4, 553 5.6.7, or the connection's failure);
	 * DEFER, CLOSE: why (CLOSE after QUIT: the 221; code 0 when the
	 * server closed an idle connection) */
	struct smtpc_reply reply;
	/* RCPT: the command whose reply decided it (MAIL, RCPT, DATA, DOT,
	 * BDAT: a refusal at RCPT is then told from one at the end of data,
	 * as a bounce says "in reply to RCPT TO command"); SMTPC_CMD_NONE
	 * when the core decided without one: 552 5.3.4, 553 5.6.7, or the
	 * connection ended (a 421, a failure, smtpc_abort);
	 * DEFER, CLOSE: the command whose reply ended the connection (the
	 * greeting, EHLO whose reply lacks STARTTLS, a refused STARTTLS, the
	 * 221 to QUIT, a 421 to anything), or SMTPC_CMD_NONE (smtpc_abort,
	 * an unreadable or unexpected reply, smtpc_tls_done/failed). */
	enum smtpc_cmd cmd;
	const uint8_t *body; /* BODY: a span of tx->body or of one piece */
	size_t body_len;
	bool verify; /* TLS: the policy is VERIFY */
};

struct smtpc_ops {
	void (*event)(void *arg, const struct smtpc_event *ev);
};

/* Status bits (smtpc_status). */
enum {
	SMTPC_ST_OUTFULL = 1u << 0, /* the next command does not fit: send, then smtpc_pump() */
	SMTPC_ST_BODY = 1u << 1,    /* a body span is due: send it, then smtpc_body_sent() */
	SMTPC_ST_TLS = 1u << 2,     /* between SMTPC_EV_TLS and smtpc_tls_done() */
	SMTPC_ST_CLOSE = 1u << 3,   /* closed: send the output, then close */
	SMTPC_ST_WAIT = 1u << 4,    /* replies are due: the reply timeout applies */
	SMTPC_ST_READY = 1u << 5,   /* READY and room for smtpc_submit() */
	SMTPC_ST_IDLE = 1u << 6,    /* READY, nothing submitted, nothing due */
};

/* An expected reply (the pipelining queue). */
struct smtpc_exp {
	uint8_t kind;
	uint32_t k; /* RCPT: recipient index */
	struct smtpc_tx *tx;
};

/* smtpc_init zeroes everything up to reply and sets what follows that it
 * reads; the buffers are written before they are read (a connection that
 * reconnects often pays for no more). What every reply and command touches
 * comes first, together (a load generator keeps thousands of these, and
 * each line a reply touches is a cache miss); what is set up once or used
 * rarely, and the buffers, come last. */
struct smtpc {
	bool lmtp;
	uint8_t state;
	bool cmd_written; /* the current state's handshake command is out */
	bool tls_active;
	bool ever_ready;
	bool quit_wanted;
	bool quit_early; /* smtpc_quit_pipelined */
	bool need_rset;
	bool body_pending;
	bool outfull;
	uint8_t cur;      /* enum smtpc_cmd of the reply being acted on */
	uint8_t lmtp_cmd; /* DOT or BDAT: what the LMTP replies answer */
	uint8_t estage;
	unsigned in_cb;
	unsigned ext; /* SMTPC_EXT_* from the last EHLO */
	uint32_t exp_head, exp_n;
	uint32_t ntx;
	uint32_t ek;
	uint32_t bpiece; /* the body piece being written */
	uint32_t lmtp_k;
	uint32_t carry_len;
	struct smtpc_out *out;
	const struct smtpc_ops *ops;
	void *arg;
	struct smtpc_tx *txs;     /* submitted, oldest first */
	struct smtpc_tx *emit;    /* the transaction being written */
	struct smtpc_tx *lmtp_tx; /* LMTP: per-recipient replies still due */
	size_t boff;              /* the offset in the body piece */
	/* DATA: the last body octet written (NULL: none yet). The next one
	 * starts a line if it is a LF; read only when that matters, so a
	 * nostuff piece is never touched. */
	const uint8_t *last;
	struct relay_reply reply; /* the reply being read */

	enum smtpc_tls tls;
	unsigned ext_ignore;
	uint64_t size_max;
	uint64_t tls_dropped; /* smtpc_tls_dropped */
	size_t helo_len;
	char helo[SMTPC_HELO_MAX + 1];

	char carry[SMTPC_LINE_MAX + 1]; /* a line split across feeds (+ its CR) */
	struct smtpc_exp exp[SMTPC_EXP_MAX];
	char why[SMTPC_TEXT_MAX]; /* failure reasons the core formats */
};

/* 0, or -EINVAL: bad HELO name (empty, too long, CR/LF/space), policy, or
 * an output buffer smaller than SMTPC_CMD_MAX. Call right after connect:
 * the greeting is the first reply expected. */
int smtpc_init(struct smtpc *c, const struct smtpc_conf *conf, struct smtpc_out *out,
               const struct smtpc_ops *ops, void *arg);

/* Replies from the server (plaintext, or decrypted by the caller). All of
 * p[0, n) is consumed; in SMTPC_ST_TLS it is dropped unread (plaintext
 * after the 220 to STARTTLS). Then writes what it can (smtpc_pump).
 * 0; -ENOBUFS: the output is full (send it, then smtpc_pump()); -EPIPE:
 * the connection is closed, now or before (SMTPC_EV_CLOSE was delivered);
 * -EDEADLK: from a callback. */
int smtpc_feed(struct smtpc *c, const char *p, size_t n);

/* Write as many commands as the protocol, the reply queue and the output
 * allow. 0 (nothing more to write now); -ENOBUFS; -EPIPE; -EDEADLK. */
int smtpc_pump(struct smtpc *c);

/* Queue a transaction (it is started once READY, in order). 0; -EINVAL
 * (no recipient, an address too long or holding CR, LF or NUL); -EBUSY
 * (SMTPC_TX_MAX unfinished); -EPIPE (closed or quitting). */
int smtpc_submit(struct smtpc *c, struct smtpc_tx *tx);

/* The span of the last SMTPC_EV_BODY is on its way: go on (pumps).
 * 0, -ENOBUFS, -EPIPE, -EDEADLK; -EINVAL if no span was due. */
int smtpc_body_sent(struct smtpc *c);

/* The TLS handshake the core asked for ended: ok, EHLO again (RFC 3207
 * 4.2, what the server said before counts no more); failed, the
 * connection ends (4.7.4 under ENCRYPT/VERIFY, 4.7.5 under MAY).
 * 0, -ENOBUFS, -EPIPE, -EDEADLK; -EINVAL outside SMTPC_ST_TLS. */
int smtpc_tls_done(struct smtpc *c, bool ok);

/* The TLS handshake failed for a reason the caller knows better (a name
 * check, the library's error): as smtpc_tls_done(c, false), with why as
 * the text after 4.7.4 (ENCRYPT/VERIFY) or 4.7.5 (MAY). */
int smtpc_tls_failed(struct smtpc *c, const char *why);

/* What the connection waits for, for timeout messages: "the greeting",
 * "EHLO", "MAIL", "RCPT", "DATA", "end of data", "BDAT", "QUIT", ...,
 * "a reply" when nothing is due. */
const char *smtpc_waiting_for(const struct smtpc *c);

/* QUIT once every submitted transaction has finished (before READY: once
 * ready). 0; -EPIPE if closed. Only queues. */
int smtpc_quit(struct smtpc *c);

/* QUIT right behind the last transaction written, when the server
 * pipelines (RFC 2920 3.1: QUIT may end a group), without waiting for the
 * replies still due; without PIPELINING as smtpc_quit(). The results
 * still come, then the 221 closes. For a caller with nothing more to send
 * on this connection (a load generator at the end of one): the round
 * trip of the last reply is saved. 0; -EPIPE if closed. Only queues. */
int smtpc_quit_pipelined(struct smtpc *c);

/* A transaction submitted now would be started at once: READY, not
 * quitting, the writer free (no span due, not waiting for a 354, nothing
 * submitted still waiting) and room in the reply queue for its MAIL (and
 * the RSET in front of it; in lock-step that RSET goes first and the MAIL
 * after its reply). A caller that keeps work back until the server can
 * see it (a load generator timing each message from its MAIL) submits
 * then. */
bool smtpc_can_start(const struct smtpc *c);

/* Plaintext octets dropped unread after the 220 to STARTTLS: the rest of
 * the input that held the 220 and every feed until smtpc_tls_done(). Not
 * 0: the server, or someone on the path, sent what RFC 3207 forbids (a
 * response injection, CVE-2011-0411). The core never reads them; a caller
 * may log it or give up on the server. */
uint64_t smtpc_tls_dropped(const struct smtpc *c);

/* The caller ends the connection: EOF, I/O error, timeout (why: text for
 * the results, e.g. "timeout waiting for the DATA reply"). Unfinished
 * recipients get 451 4.4.2 why; SMTPC_EV_DEFER if never READY;
 * SMTPC_EV_CLOSE. An idle READY connection, or one waiting for the 221,
 * just closes. Nothing after it. No-op when closed or from a callback. */
void smtpc_abort(struct smtpc *c, const char *why);

unsigned smtpc_status(const struct smtpc *c);
enum smtpc_state smtpc_state(const struct smtpc *c);
unsigned smtpc_ext(const struct smtpc *c);
/* SIZE's argument (0: not offered, or no limit given). */
uint64_t smtpc_size_max(const struct smtpc *c);

/* The SMTPC_EXT_* bit of one EHLO keyword line (case-insensitive); for
 * SIZE, *size_max gets its argument (0: none or unparsable). 0: unknown. */
unsigned smtpc_ehlo_keyword(const char *p, size_t n, uint64_t *size_max);
/* Length of the RFC 3463 status ("4.7.4") at the start of text, whose
 * class must be code's first digit; 0 if there is none. */
size_t smtpc_enh_len(const char *text, size_t n, int code);

#endif
