/*
 * milter_internal.h - what milter_io.c (conversations, checks) and
 * milter_msg.c (the filtering sink) share. Nothing else includes it.
 *
 * Ownership rules: see milter_io.h. A slot's buffers (obuf while a send is
 * in flight, ibuf while a receive is) belong to the kernel until the CQE;
 * a released slot waits in MF_S_ZOMBIE for its last CQE before it is
 * reused.
 */
#ifndef RINGMX_MILTER_INTERNAL_H
#define RINGMX_MILTER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "milter.h"
#include "milter_io.h"
#include "ringmx/stats.h"

/* Output room: a stage packet and its macros (milter.h MILTER_OUT_MIN). */
#define MF_OUT_CAP (2u * (MILTER_CHUNK_MAX + 5u))
#define MF_IN_CAP  16384u
/* Header fields of a message shown to milters; the rest stay as they are. */
#define MF_HDR_MAX 1000u
/* A milter's reply text kept for the client (one SMTP reply). */
#define MF_REPLY_KEEP (SMTP_REPLY_MAX - 8)
/* mf_slot.cres: the milter said discard (the check itself passes). */
#define MF_DISCARD 3

enum mf_slot_state {
	MF_S_FREE = 0,
	MF_S_CONNECTING, /* socket made, IORING_OP_CONNECT in flight */
	MF_S_OPEN,       /* negotiating or negotiated */
	MF_S_DONE,       /* failed, or the milter is out of this connection */
	MF_S_ZOMBIE,     /* released; waiting for its CQEs */
};

/* What a slot was asked to do and what came back (milter_io.c). */
enum mf_want {
	MF_W_NONE = 0,
	MF_W_CHECK,   /* answer the connection's check_seq */
	MF_W_CONTENT, /* the message, from DATA to end of message */
};

struct mf_slot {
	struct mf_pool *pool;
	struct mf_conn *owner; /* NULL once released */
	uint32_t idx, gen;
	int fd;
	uint8_t st;    /* enum mf_slot_state */
	uint8_t which; /* index in owner->slot[] */
	bool send_inflight, recv_inflight, connect_inflight;
	bool negotiated, connect_done; /* the connect stage answered */
	bool active;        /* takes part in the connection (not accepted out / failed) */
	bool msg_out;       /* out of this message (accept at MAIL/RCPT, or failed) */
	uint64_t deadline;  /* a reply is due by then; 0: none */
	uint64_t timeout;   /* the current stage's timeout, ns */
	uint32_t check_seq; /* the check it answered last */
	uint8_t cres;       /* its answer: enum smtp_check_res, or MF_DISCARD */
	struct smtp_check_reply creply;
	char helo[SMTP_DOMAIN_MAX + 1]; /* the HELO it was told */
	bool helo_tls;
	bool helo_wait; /* the HELO's verdict is due */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char ep[CONFIG_MILTER_TEXT_MAX]; /* the endpoint, for logs */
	/* macro values of the current call */
	char mv_port[8], mv_addr[64], mv_us[80], mv_tlsv[32], mv_cipher[64], mv_bits[8];
	/* The verdict the last reply carried (copied out of the callback). */
	bool have_verdict;
	uint8_t verdict;                /* enum milter_verdict */
	uint8_t vstage;                 /* enum milter_stage */
	struct smtp_check_reply vreply; /* REPLYCODE, CRLF-terminated */
	/* content: which step comes next */
	uint8_t cstep;
	uint32_t chdr; /* next header */
	size_t cbody;  /* body octets sent */
	size_t send_len;
	struct milter core;
	struct milter_out out;
	char obuf[MF_OUT_CAP];
	char ibuf[MF_IN_CAP];
};

/* A growable byte buffer from the pool's cache. */
struct mf_buf {
	char *p;
	size_t len, cap;
};

struct mf_hdr {
	uint32_t off, len; /* the whole field with its CRLF, in data or in mods */
	uint32_t name_len;
	uint8_t in_mods;
	uint8_t deleted;
};

struct mf_msg {
	struct mf_conn *mc;
	struct mf_pool *pool;
	struct sink_tx *inner;
	struct sink_waiter iw; /* the inner sink's verdict */
	char *qid;             /* the session's */
	struct sink_open_info info;
	char from[SMTP_PATH_MAX + 1];
	bool from_changed;
	bool discard, quarantine;
	bool committing;   /* content phase running */
	bool passthrough;  /* no milter wants the content */
	bool failed;       /* tx_data failed: 451 at the end */
	bool body_new;     /* REPL_BODY replaced the body */
	bool repl_started; /* the current milter's REPL_BODY has begun */
	bool in_commit;    /* inside tx_commit: verdicts are returned, not called back */
	bool sync_done;
	bool deferred; /* a reply decided inside tx_commit, given from the timer */
	int sync_res;
	char qreason[128];
	size_t hdr_end;      /* end of the indexed header fields in data */
	uint8_t cur;         /* the slot filtering the content now */
	struct mf_buf data;  /* the message as the session gave it */
	struct mf_buf mods;  /* header fields milters added */
	struct mf_buf body;  /* a replaced body */
	struct mf_buf rcpts; /* [u16 len][u8 deleted][addr] ... */
	uint32_t nrcpt;
	struct mf_hdr hdr[MF_HDR_MAX];
	uint32_t nhdr;
	size_t body_off; /* where the body starts in data */
	bool has_sep;    /* data has the empty line */
	struct smtp_check_reply reply;
	bool have_reply;
	struct mf_msg *next_free;
};

struct mf_pool {
	struct mf_env env;
	struct mf_slot *slots;
	struct mf_conn *conns; /* one per connection slot of the worker */
	uint32_t nconns;
	size_t conns_len;
	uint32_t nslots, nfree;
	uint32_t *free;
	size_t map_len;
	struct sink sink;
	struct mf_msg *free_msgs;
	uint64_t mem_used;
	char scratch[MILTER_PKT_MAX];
};

/* milter_io.c */
void mf_slot_fail(struct mf_slot *s, const char *why);
void mf_slot_flush(struct mf_slot *s);
void mf_slot_wait(struct mf_slot *s, uint64_t timeout);
/* The slot's answer for the content is in (verdict), or it failed. */
void mf_content_step(struct mf_slot *s);
void mf_default_reply(const struct mf_conn *mc, struct smtp_check_reply *r);
void mf_verdict_reply(const struct mf_slot *s, struct smtp_check_reply *r);

/* milter_msg.c */
void mf_msg_event(struct mf_slot *s, const struct milter_event *ev);
void mf_msg_advance(struct mf_msg *m);
void mf_msg_conn_closed(struct mf_conn *mc);
void mf_sink_init(struct mf_pool *p);
bool mf_msg_deferred(struct mf_conn *mc);

#endif
