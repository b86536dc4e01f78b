/*
 * smtp.h - the SMTP core: a pure, sans-I/O server state machine.
 *
 * The core is fed bytes and produces replies (into a caller-owned output
 * buffer) and transaction events (into a sink, see sink.h). It never sees a
 * socket, a file, an SQE or a clock: time is passed in as a monotonic
 * nanosecond count and wall-clock seconds for the Received: header.
 *
 * Ownership rules
 *  - Input passed to smtp_session_feed() is borrowed for the duration of the
 *    call only. Views handed to the sink (tx_data spans, addresses) are valid
 *    only during the sink call; the sink copies what it keeps.
 *  - A line split across two feeds is completed in the session's own bounded
 *    carry (SMTP_CARRY_MAX); nothing else is retained from input.
 *  - The output buffer (struct smtp_out) belongs to the caller (the
 *    connection). The session only appends to it and never writes past cap.
 *  - The configuration and counters are owned by the worker; the session
 *    keeps pointers to them and never frees them.
 *
 * Flow control: smtp_session_feed() returns how many bytes it consumed. It
 * consumes less than it was given when the session is paused (waiting for the
 * sink's verdict on a message, or the output buffer lacks room for a full
 * reply) or closing. The caller keeps the rest and feeds it again once
 * smtp_session_status() no longer reports SMTP_ST_PAUSED / SMTP_ST_OUTFULL.
 */
#ifndef RINGMX_SMTP_H
#define RINGMX_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "ringmx/sink.h"
#include "ringmx/stats.h"

/* RFC 5321 4.5.3.1.4: command line including CRLF. */
#define SMTP_CMD_LINE_MAX 512
/* MAIL and RCPT may be longer by what the advertised extensions add:
 * SIZE (RFC 1870: 26), SMTPUTF8 (RFC 6531: 10), BODY=8BITMIME (14). */
#define SMTP_PARAM_LINE_MAX (SMTP_CMD_LINE_MAX + 26 + 10 + 14)
/* RFC 5321 4.5.3.1.6: text line including CRLF. Longer body lines are
 * accepted as they are and counted (stats.long_lines); see docs/smtp.md. */
#define SMTP_TEXT_LINE_MAX 1000
/* Bytes the session keeps of a line that spans two feeds. Anything longer
 * than SMTP_PARAM_LINE_MAX is rejected, so this is a hard bound. */
#define SMTP_CARRY_MAX 1024
/* RFC 5321 4.5.3.1: local part 64, domain 255, path 256 (with <>). */
#define SMTP_LOCAL_MAX  64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX   256
/* Largest single reply the session writes (the EHLO reply is the largest). */
#define SMTP_REPLY_MAX 512
/* Room the output buffer must have before a command is processed: one reply
 * plus the 421 that may follow it (error/junk limit, shutdown). */
#define SMTP_OUT_MIN (2 * SMTP_REPLY_MAX)
#define SMTP_HOSTNAME_MAX 255
/* Envelope accounting against smtp_conf.envelope_limit: what one recipient
 * costs besides its bytes (the spool's TLV header), and an upper bound for
 * everything else the sink stores with the envelope (client address, port,
 * HELO, sender, MAIL parameters; the spool checks its own encoding fits). */
#define SMTP_ENV_RCPT_COST 4
#define SMTP_ENV_FIXED_MAX 2048

enum smtp_bare_newline {
	SMTP_BARE_NEWLINE_NORMALIZE = 0, /* bare LF in message content becomes CRLF */
	SMTP_BARE_NEWLINE_REJECT,        /* message refused with 550 5.5.2 */
};

/*
 * Policy and limits. Owned by the worker, replaced as a whole on reload
 * (smtp_session_set_conf()).
 */
struct smtp_conf {
	char hostname[SMTP_HOSTNAME_MAX + 1]; /* greeting, EHLO, Received: by */
	/* Domains we accept mail for, lower case ASCII (A-labels), NUL
	 * terminated. An entry starting with '.' matches every subdomain. */
	const char *const *domains;
	size_t ndomains;
	uint64_t message_size_limit; /* octets after dot-unstuffing; advertised in SIZE */
	unsigned recipient_limit;    /* RCPTs per transaction; 452 4.5.3 past it */
	/* Envelope bytes the sink can store for one transaction, 0 = no
	 * limit. The spool's record format bounds the envelope
	 * (SPOOL_ENV_MAX): a recipient that would take it past this gets
	 * 452 4.5.3, so nothing acknowledged is unreadable later. Each
	 * recipient counts SMTP_ENV_RCPT_COST + its length, on top of
	 * SMTP_ENV_FIXED_MAX. */
	uint64_t envelope_limit;
	unsigned error_limit;        /* error replies per session before 421 */
	unsigned junk_limit;         /* NOOP/RSET/VRFY/EXPN/HELP, repeated HELO/EHLO, before 421 */
	/* Received: header fields a message may carry; more: 554 5.4.6 at
	 * its end (mail loop). 0 = no limit. */
	unsigned hop_count_limit;
	enum smtp_bare_newline bare_newline;
	/* Timeouts, nanoseconds (RFC 5321 4.5.3.2). */
	uint64_t greeting_timeout;  /* connect to first command */
	uint64_t command_timeout;   /* waiting for the next command */
	uint64_t data_timeout;      /* between two reads inside DATA/BDAT */
	uint64_t data_end_timeout;  /* end of data to the sink's verdict */
	uint64_t session_timeout;   /* whole session */
	/* Offer STARTTLS on every session regardless of the listener (tests
	 * and fuzzers). The engine leaves it false and sets the policy per
	 * listener with smtp_session_set_tls_policy(). */
	bool starttls;
};

/* Where the client is. Filled by the connection layer (or PROXY header). */
struct smtp_peer {
	struct sockaddr_storage addr;
	char addr_text[64]; /* "127.0.0.1" or "IPv6:::1" style, for Received: and logs */
	uint16_t port;
};

/* Output buffer, owned by the caller. The session appends complete replies. */
struct smtp_out {
	char *buf;
	size_t len;
	size_t cap;
};

/* Status bits returned by smtp_session_status(). */
enum {
	SMTP_ST_PAUSED  = 1u << 0, /* waiting for the sink's verdict: do not feed */
	SMTP_ST_OUTFULL = 1u << 1, /* output lacks SMTP_OUT_MIN room: flush, then feed */
	SMTP_ST_CLOSE   = 1u << 2, /* close once the output is flushed; feed no more */
	SMTP_ST_IN_TX   = 1u << 3, /* a MAIL transaction is open (for drain) */
	/* "220 2.0.0 Ready to start TLS" is in the output: flush it in
	 * plaintext, discard every input byte until the handshake starts
	 * (CVE-2011-0411), then call smtp_session_tls_started(). While set,
	 * smtp_session_feed() consumes and discards everything. */
	SMTP_ST_STARTTLS = 1u << 4,
};

/* Longest "TLSv1.3 TLS_AES_256_GCM_SHA384" style TLS description kept by
 * the session (for Received:). */
#define SMTP_TLS_INFO_MAX 96

/* Where the session asks its owner's policy (struct smtp_hooks.check). */
enum smtp_check_point {
	SMTP_CHECK_MAIL = 0, /* addr: the reverse-path ("" for <>) */
	SMTP_CHECK_RCPT,     /* addr: the forward-path */
	SMTP_CHECK_STARTTLS, /* addr: NULL */
};

enum smtp_check_res {
	SMTP_CHECK_OK = 0,      /* go on */
	SMTP_CHECK_REJECT = 1,  /* refuse with the reply in struct smtp_check_reply */
	SMTP_CHECK_PENDING = 2, /* MAIL, RCPT: smtp_session_check_done() answers */
};

/* A policy refusal: one complete reply, e.g.
 * "550 5.1.1 <u@d>: Recipient address rejected: User unknown\r\n". */
struct smtp_check_reply {
	size_t len;
	char text[SMTP_REPLY_MAX];
};

/* Whose event a log line is, in Postfix's terms (the engine's log service):
 * the session's (smtpd), or the queue's taking a message in (qmgr). */
enum smtp_log_role { SMTP_LOG_SESSION, SMTP_LOG_QUEUE };

/*
 * Hooks the session calls outward besides the sink. All optional (NULL).
 * log: one message-level event, already formatted key=value text without a
 * trailing newline, e.g. reject lines; the engine adds the prefix.
 */
struct smtp_hooks {
	void (*log)(void *owner, enum smtp_log_role role, const char *line, size_t len);
	/* Policy (engine/policy/): asked before MAIL, RCPT or STARTTLS is
	 * accepted, once the command itself is valid; NULL accepts all. For
	 * RCPT only addresses of accepted domains (and <Postmaster>) are
	 * asked. addr is the path without <> (NULL for STARTTLS), a view
	 * valid during the call. Returns an enum smtp_check_res; on
	 * SMTP_CHECK_REJECT the hook has written one complete reply (CRLF
	 * terminated, < SMTP_REPLY_MAX) into *r; a 421 or 521 reply ends
	 * the session. SMTP_CHECK_PENDING (MAIL, RCPT): the answer comes
	 * later through smtp_session_check_done(); the session is paused
	 * until then (SMTP_ST_PAUSED). */
	int (*check)(void *owner, enum smtp_check_point what, const char *addr, size_t len,
		     struct smtp_check_reply *r);
	/* A pending check will not be answered: the session is closing
	 * (timeout, disconnect, shutdown). The owner forgets it; a later
	 * smtp_session_check_done() is ignored. Required with check. */
	void (*check_cancel)(void *owner);
};

enum smtp_state {
	SMTP_S_CONNECTED = 0, /* greeting sent, no HELO/EHLO yet */
	SMTP_S_READY,         /* HELO/EHLO done, no transaction */
	SMTP_S_MAIL,          /* MAIL accepted */
	SMTP_S_RCPT,          /* at least one RCPT accepted */
	SMTP_S_DATA,          /* reading DATA content */
	SMTP_S_BDAT,          /* reading a BDAT chunk */
	SMTP_S_VERDICT,       /* end of message, waiting for the sink */
	SMTP_S_QUIT,          /* closing: nothing more is read */
};

/* Body decoder state: dot-unstuffing, end-of-data detection and bare CR/LF
 * policy across feed boundaries (in the spirit of phr_decode_chunked). */
struct smtp_body {
	uint8_t st;        /* decoder state, private to smtp_body.c */
	uint8_t mode;      /* DATA (dot-stuffed, terminated) or BDAT (counted) */
	uint8_t flags;     /* bare CR seen, bare LF seen, too big, sink error */
	uint8_t hdr_st;    /* header scan (Received: count), private to smtp_body.c */
	uint8_t hdr_idx;   /* octets of "received" matched at the start of a line */
	uint32_t line_len; /* octets since the last CRLF */
	uint64_t size;     /* octets delivered to the sink */
	/* Received: fields in the header section as the client sent it (not
	 * the one the session adds), saturating. */
	uint32_t hops;
};

/* Per-command counters for the disconnect log line (Postfix style). */
struct smtp_counts {
	uint32_t helo, ehlo, mail, rcpt, data, bdat, rset, noop, vrfy, quit, unknown, commands;
	uint32_t messages; /* accepted (250 after end of data) */
	uint32_t errors;   /* error replies (4xx/5xx) */
	uint32_t junk;     /* NOOP/RSET/VRFY/EXPN/HELP, HELO/EHLO after the first */
};

struct smtp_session {
	enum smtp_state state;
	const struct smtp_conf *conf;
	const struct smtp_peer *peer;
	struct smtp_out *out;
	const struct sink *sink;
	const struct smtp_hooks *hooks;
	void *owner; /* passed to the hooks */
	struct sink_waiter *waiter; /* passed to the sink's tx_open */
	struct ringmx_stats *stats;

	uint64_t t_start;    /* monotonic ns at connect */
	uint64_t t_activity; /* last input or state change */
	uint64_t t_verdict;  /* when end of data was seen */
	int64_t wall_start;  /* wall clock seconds at connect (for logs) */

	uint64_t now;     /* monotonic ns of the current call (private) */
	int64_t now_wall; /* wall clock of the current feed (private) */

	bool esmtp;       /* EHLO (not HELO) */
	bool shutdown;    /* drain requested: 421 at the next idle point */
	bool partial;     /* a command line is in progress across feeds */
	bool carry_long;  /* the carried line overflowed: discard to CRLF */
	uint8_t carry_bad; /* the carried line holds a bare CR or LF (bits) */
	bool carry_cr;    /* carry ends in a CR that may pair with the next LF */

	/* TLS (smtp_session_set_tls_policy / smtp_session_tls_started). */
	bool tls_offer;     /* the listener offers STARTTLS */
	bool tls_require;   /* tls=required: MAIL needs TLS first (530 5.7.0) */
	bool tls_active;    /* the session runs over TLS */
	bool tls_starting;  /* 220 for STARTTLS written: SMTP_ST_STARTTLS */
	char tls_info[SMTP_TLS_INFO_MAX]; /* "TLSv1.3 TLS_AES_256_GCM_SHA384" */

	/* The open transaction. */
	struct sink_tx *tx;
	char qid[SINK_QID_MAX];
	bool tx_utf8;          /* MAIL ... SMTPUTF8 */
	bool tx_bdat;          /* BDAT used in this transaction */
	bool tx_8bit;          /* MAIL ... BODY=8BITMIME */
	uint64_t tx_size_decl; /* MAIL ... SIZE= */
	uint32_t tx_nrcpt;     /* accepted recipients */
	uint64_t tx_env_rcpt;  /* envelope bytes of the accepted recipients */
	uint64_t bdat_left;    /* octets of the current chunk still to read */
	uint64_t bdat_count;   /* size of the current chunk, for its reply */
	bool bdat_last;        /* current chunk is the LAST one */
	uint8_t bdat_err;      /* chunk is read and discarded, then refused */
	enum smtp_state bdat_ret; /* state to return to after a refused chunk */
	struct smtp_body body;

	char helo[SMTP_DOMAIN_MAX + 1];
	char mail_from[SMTP_PATH_MAX + 1]; /* without <> */
	char rcpt1[SMTP_PATH_MAX + 1];     /* first recipient, for Received: "for" */
	/* MAIL or RCPT waiting for an asynchronous policy answer
	 * (SMTP_CHECK_PENDING): pend_mail for MAIL (its sender is mail_from),
	 * else the recipient in pend_rcpt. */
	bool check_pending;
	bool pend_mail;
	/* Refused instead of the greeting (smtp_session_start_denied). */
	bool denied;
	uint16_t pend_len;
	char pend_rcpt[SMTP_PATH_MAX + 1];

	struct smtp_counts counts;

	uint16_t carry_len;
	char carry[SMTP_CARRY_MAX];
};

/*
 * Life cycle. smtp_session_init() writes nothing; smtp_session_start()
 * appends the 220 greeting. now_ns is monotonic, now_wall is time(NULL).
 */
void smtp_session_init(struct smtp_session *s, const struct smtp_conf *conf,
		       const struct smtp_peer *peer, struct smtp_out *out, const struct sink *sink,
		       const struct smtp_hooks *hooks, void *owner, struct ringmx_stats *stats,
		       uint64_t now_ns, int64_t now_wall);
void smtp_session_start(struct smtp_session *s);
/* Instead of smtp_session_start(): the client is refused before the
 * greeting (a per-client limit). Appends r's reply and closes. */
void smtp_session_start_refused(struct smtp_session *s, const struct smtp_check_reply *r);
/* Instead of smtp_session_start(): a client the access list refuses gets
 * r's reply (554) instead of the 220; the session then answers
 * `503 5.5.1` to every command but QUIT (RFC 5321 3.1). */
void smtp_session_start_denied(struct smtp_session *s, const struct smtp_check_reply *r);

/* Feed input. Returns bytes consumed (<= n). See the flow control note above. */
size_t smtp_session_feed(struct smtp_session *s, const char *p, size_t n, uint64_t now_ns,
			 int64_t now_wall);

unsigned smtp_session_status(const struct smtp_session *s);

/*
 * The sink's verdict on the message whose tx_commit() returned SINK_PENDING.
 * res is 0 (durable: 250 with the queue id) or a negative errno
 * (-ENOSPC: 452 4.3.1, anything else: 451 4.3.0). Appends the reply and
 * leaves the paused state; the caller then feeds any held input.
 */
void smtp_session_verdict(struct smtp_session *s, int res, uint64_t now_ns);
/* As smtp_session_verdict(), with a reply of the sink's own (a content
 * filter's verdict: one complete reply, CRLF terminated; 2xx counts as
 * accepted, 421 and 521 end the session). */
void smtp_session_verdict_reply(struct smtp_session *s, const struct smtp_check_reply *r,
				uint64_t now_ns);

/*
 * The answer to a pending MAIL or RCPT check: res SMTP_CHECK_OK accepts
 * the sender or recipient (250), SMTP_CHECK_REJECT sends r (as returned by
 * the hook), SMTP_CHECK_PENDING asks the hook again (what it waited for
 * is over; it may answer at once or stay pending). Leaves the paused state
 * unless still pending; the caller then feeds any held input. Ignored when
 * no check is pending (it was cancelled).
 */
void smtp_session_check_done(struct smtp_session *s, int res, const struct smtp_check_reply *r,
			     uint64_t now_ns);

/* Monotonic deadline of the current timer (greeting, command, data, verdict,
 * session), in ns. */
uint64_t smtp_session_deadline(const struct smtp_session *s);

/* Called when now_ns >= deadline: appends 421 4.4.2, aborts any transaction
 * and sets SMTP_ST_CLOSE. Returns true if the session timed out. */
bool smtp_session_tick(struct smtp_session *s, uint64_t now_ns);

/* Drain: an idle session (no transaction) gets 421 4.3.2 and closes now; a
 * session in a transaction finishes it and then gets 421. force=true sends
 * 421 and closes regardless (the shutdown_timeout expired). */
void smtp_session_shutdown(struct smtp_session *s, bool force);

/* The client closed or the connection failed: abort any open transaction.
 * Writes nothing. */
void smtp_session_eof(struct smtp_session *s);

/* Replace the configuration (SIGHUP). */
void smtp_session_set_conf(struct smtp_session *s, const struct smtp_conf *conf);

/*
 * TLS facts of the listener, set by the connection after init and before
 * any input: offer_starttls advertises STARTTLS in EHLO and accepts the
 * command (tls=starttls|required); require_tls refuses MAIL before TLS with
 * 530 5.7.0 (tls=required). Neither applies once TLS is active.
 */
void smtp_session_set_tls_policy(struct smtp_session *s, bool offer_starttls, bool require_tls);
/* Who hears the sink's asynchronous verdicts on this session's messages
 * (sink.h); before the first MAIL. */
void smtp_session_set_waiter(struct smtp_session *s, struct sink_waiter *w);

/*
 * The TLS handshake finished (after STARTTLS, or before the greeting on an
 * implicit TLS listener). RFC 3207 4.2: the session forgets everything it
 * learnt in plaintext (HELO/EHLO, any transaction) and waits for a new
 * EHLO; STARTTLS is no longer offered; Received: says ESMTPS/UTF8SMTPS
 * (RFC 3848, RFC 6531) and names version and cipher. Clears
 * SMTP_ST_STARTTLS. Writes nothing: on an implicit listener the caller
 * then calls smtp_session_start() for the greeting. Strings are copied
 * (truncated to SMTP_TLS_INFO_MAX).
 */
void smtp_session_tls_started(struct smtp_session *s, const char *version, const char *cipher,
			      uint64_t now_ns);

/*
 * The connection's last log line, in Postfix's words: "disconnect from
 * [ADDR]:PORT helo=<HELO> ehlo=1 mail=1 ... commands=N duration=S.mmms"
 * (a counter only when it is not 0; " tls=VERSION/CIPHER[/resumed]" before
 * commands= when tls_version is not NULL). peer is where the client is,
 * duration_ns how long it was connected. Writes at most
 * SMTP_DISCONNECT_LINE_MAX - 1 bytes into dst (no newline, no NUL; a
 * longer line is cut) and returns how many. Pure: no hook, no clock.
 */
#define SMTP_DISCONNECT_LINE_MAX 512
size_t smtp_session_disconnect_line(const struct smtp_session *s, const struct smtp_peer *peer,
				    const char *tls_version, const char *tls_cipher,
				    bool tls_resumed, uint64_t duration_ns, char *dst);

/* ---- building blocks, exposed for tests, fuzzing and benchmarks ---- */

/* RFC 5321 mailbox checks. Return 0 if valid, else one of SMTP_ADDR_*. */
enum smtp_addr_err {
	SMTP_ADDR_OK = 0,
	SMTP_ADDR_SYNTAX,       /* not a valid Path / Mailbox */
	SMTP_ADDR_TOO_LONG,     /* local > 64, domain > 255 or path > 256 */
	SMTP_ADDR_UTF8,         /* non-ASCII without SMTPUTF8 (553 5.6.7) */
	SMTP_ADDR_BAD_UTF8,     /* malformed UTF-8 or NUL */
	SMTP_ADDR_ROUTE,        /* source route <@a,@b:u@d> */
	SMTP_ADDR_RELAY_TRICK,  /* %, !, quoted @ in the local part */
	SMTP_ADDR_LITERAL,      /* domain is an address literal [1.2.3.4] */
	SMTP_ADDR_NO_DOMAIN,    /* valid local part without @domain (not Postmaster) */
};

struct smtp_addr {
	const char *local; /* view; for a quoted local part, includes the quotes */
	size_t local_len;
	const char *domain; /* view, without brackets for literals; NULL if none */
	size_t domain_len;
	bool quoted;
	bool literal;
	bool utf8; /* contains non-ASCII */
};

/* Parse the address inside <...> (without the brackets). An empty string
 * (null reverse-path) is SMTP_ADDR_OK with local_len == 0 and domain NULL;
 * "Postmaster" without domain is OK with domain NULL. */
enum smtp_addr_err smtp_addr_parse(const char *p, size_t n, bool utf8_allowed,
				   struct smtp_addr *out);

/* Does the domain (ASCII case-insensitive) belong to conf->domains? */
bool smtp_domain_accepted(const struct smtp_conf *conf, const char *d, size_t n);

/* Well-formed UTF-8 (RFC 3629: no overlongs, surrogates, > U+10FFFF), no NUL. */
bool smtp_utf8_valid(const char *p, size_t n);

#endif
