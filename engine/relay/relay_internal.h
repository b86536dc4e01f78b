/*
 * relay_internal.h - what the relay's files share (engine/relay/): its
 * limits, its objects (rseg, rmsg, rjob, rhop, oconn, rbounce, relay; see
 * relay.c for what each is and who owns it), the SIGBUS guard for reads of
 * the segment mappings, and the functions one file calls in another.
 *
 * Files: relay.c (messages, jobs, results, bounces, next hops, the loop's
 * side, operator commands, shutdown), relay_journal.c (the delivery
 * journal and the segments' life, through the ring), relay_map.c (the
 * mappings and their SIGBUS guard), relay_msg.c (messages and their
 * block pool), relay_conn.c (outbound
 * connections on the SMTP/LMTP client core), relay_recover.c (start-up:
 * what the spool holds). Nothing outside the relay includes this.
 */
#ifndef RINGMX_RELAY_INTERNAL_H
#define RINGMX_RELAY_INTERNAL_H

#include "relay.h"

#include <arpa/inet.h>
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"
#include "ringmx/config.h"
#include "ringmx/dsn.h"
#include "ringmx/journal_format.h"
#include "ringmx/spool_format.h"
#include "ringmx/spool_read.h"
#include "smtp_client.h"
#include "relay_tls.h"
#include "spool.h"
#include "timer.h"
#include "ud.h"

/* Output buffer per connection: a burst of pipelined commands and message
 * bytes; a larger message streams through it. */
#define RELAY_OUT_SIZE (64u << 10)
/* Input buffer: what one recv reads (the client core carries a reply line
 * split across reads; one longer than SMTPC_LINE_MAX is a protocol error). */
#define RELAY_IN_SIZE (16u << 10)
/* Reply text kept for logs, the journal and bounces. */
#define RELAY_TEXT_MAX 512
/* Transactions in flight on one connection (pipelined with CHUNKING). */
#define RELAY_WINDOW 32
/* A body span up to this size is copied into the output after its commands
 * instead of being sent from the mapping on its own: one send then carries
 * many small transactions, which costs less than a send (and a completion,
 * and a round of the loop before the final dot) per message. */
#define RELAY_INLINE_MAX (16u << 10)
/* Bounces being spooled at once; more wait for the next retry. */
#define RELAY_BOUNCES_MAX 64
/* Journal bytes buffered per segment: what one write takes, plus what
 * comes while it is in flight (a write starts when half of it is used). */
#define RELAY_JBUF_SIZE (32u << 10)
/* (segment, command) pairs one set of operator commands may wait on. */
#define RELAY_CMD_HITS_MAX 4096
/* Message blocks (relay_msg.c): two sizes, carved from slabs; a message
 * that fits neither is a malloc of its own (counter relay_msg_large). */
#define RELAY_POOL_CLASSES 2
#define RELAY_MSG_SMALL    2048u
#define RELAY_MSG_BIG      16384u
#define RELAY_SLAB_SIZE    (1u << 20)
/* Outbound connections per worker (slots; idx field of user_data). */
#define RELAY_SLOTS_MAX (1u << 20)
/* Delay before a bounce that could not be spooled is tried again. */
#define RELAY_BOUNCE_RETRY_NS (5ull * 1000000000ull)

/* user_data kind of the relay's SQEs (ud.h): connections, then the
 * journal and the segments (relay_journal.c; idx: a segment slot). */
enum subop {
	S_CONNECT = 1,
	S_LTIMEOUT,
	S_SEND,
	S_RECV,
	S_JWRITE,      /* journal write */
	S_JSYNC,       /* fdatasync of the journal (operator commands) */
	S_JDIRSYNC,    /* fsync of its directory after that */
	S_DEL_SEG,     /* deletion chain: unlinkat .seg, */
	S_DEL_JNL,     /* unlinkat .jnl, */
	S_DEL_DIRSYNC, /* fsync of the directory */
};

/* Per recipient of a job, during and after an attempt. */
enum rstate {
	RS_PENDING = 0, /* not tried in this attempt yet */
	RS_RCPT_OK,     /* RCPT accepted, waiting for the final reply */
	RS_SENT,        /* delivered */
	RS_PERM,        /* permanent failure: bounce */
	RS_TEMP,        /* temporary failure: retry */
	RS_DONE,        /* finished before this attempt (journal) */
};

enum jstate { J_WAIT = 0, J_QUEUED, J_ACTIVE, J_BOUNCING, J_DONE };

enum tkind { T_JOB = 1, T_CONN };
struct rtimer {
	struct timer_node n; /* first: the wheel hands us &n */
	uint8_t kind;
};

struct rseg;
struct rhop;
struct oconn;
struct rmsg;

struct rjob {
	struct rmsg *m;
	struct rhop *hop;
	struct rjob *prev, *next; /* hop queue */
	struct rtimer t;          /* retry */
	struct oconn *conn;       /* J_ACTIVE */
	uint8_t state;
	uint32_t n;   /* recipients */
	uint32_t *ri; /* their indices in the message */
	uint8_t *rs;  /* enum rstate per recipient */
	char **rtext; /* per recipient: the reply that decided it (malloc) */
	uint32_t attempts;
	uint64_t t_attempt; /* monotonic ns the last attempt's transaction began */
	uint8_t ep; /* the hop's address of the last attempt (logs, bounces) */
	/* J_ACTIVE: the transaction lent to the connection's client core, its
	 * recipients (those not finished earlier) and their indices k here. */
	struct smtpc_tx tx;
	struct smtpc_rcpt *trc; /* slices of the message block (relay_msg.c) */
	uint32_t *tk;
	char last_temp[RELAY_TEXT_MAX]; /* the last temporary failure */
	uint16_t last_temp_len;
	struct rbounce *bounce;
};

struct raddr {
	const char *p;
	uint32_t len;
};

struct rmsg {
	struct rseg *seg;
	struct rmsg *prev, *next; /* the segment's messages */
	uint64_t off, rec_len;
	char qid[SPOOL_QID_FIELD + 1];
	uint64_t received_us;
	const char *from;
	size_t from_len;
	unsigned flags;      /* SPOOL_MAIL_* */
	uint8_t *env;        /* a copy of the envelope (in the block): from, rcpt point in */
	const uint8_t *body; /* in the mapping: read only under relay_map_guard */
	uint64_t body_len;
	uint32_t nrcpt;
	struct raddr *rcpt;
	uint8_t *done; /* per recipient: 0, JOURNAL_DELIVERED or JOURNAL_FAILED */
	uint32_t njobs;
	uint32_t jobs_left;
	struct rjob *jobs;
	bool held;
	bool deleted;
	uint8_t pool_cls; /* its block's size class (relay_msg.c) */
};

struct rseg {
	struct rseg *next;
	unsigned wdir; /* w<wdir> */
	uint64_t seq;
	uint8_t *map;
	size_t maplen;
	int jfd;       /* -1 until the first journal record */
	int dirfd;     /* its directory (struct relay's wdirs), -1 if unopenable */
	uint32_t slot, sgen; /* r->segtab index and generation (user_data) */
	uint64_t jpos; /* file offset of jbuf[0] */
	uint32_t jbuf_len;
	uint32_t jinflight; /* jbuf[0, jinflight) is being written by the kernel */
	uint8_t jop;        /* the journal operation in flight (enum subop), 0: none */
	uint64_t jretry_at; /* after a failed write: not again before this (monotonic ns) */
	bool jdrop_logged;
	/* An operator command waits for the journal up to sync_upto to be
	 * durable; the fdatasync in flight covers up to sync_sent_upto. */
	bool sync_wanted;
	uint64_t sync_upto, sync_sent_upto;
	bool delete_wanted;
	uint8_t del_left; /* CQEs of the deletion chain still due */
	char del_name[2][24];
	bool closed; /* the spool will not write it again */
	/* A durable record of it could not be loaded (no mapping, bad
	 * record): never deleted, so the next start reads it again. */
	bool keep;
	bool dirty; /* on the relay's list of journals to flush */
	struct rseg *next_dirty;
	bool jerr_logged;
	/* The journal's directory entry was fsynced by this run (before the
	 * first answer that depends on the journal: see rj_sync_want). */
	bool jdir_synced;
	uint32_t pending;  /* messages not finished */
	struct rmsg *msgs; /* unfinished messages, newest first */
	struct rmsg *msgs_tail; /* the oldest of them (relay_gauges) */
	uint8_t jbuf[RELAY_JBUF_SIZE];
};

struct rhop {
	struct rhop *next;
	struct relay_hop_conf conf;
	/* For logs: the next hop ("host[ip]:port" when it has one address,
	 * else its list), and each address as "host[ip]:port". */
	char name[CONFIG_HOP_LIST_MAX];
	char epname[CONFIG_HOP_ADDRS][CONFIG_HOP_TEXT_MAX + 64];
	/* Per address: no new connection to it before this monotonic ns (it
	 * failed before greeting us); the next address is tried meanwhile. */
	uint64_t ep_down[CONFIG_HOP_ADDRS];
	bool gone; /* no longer in the configuration */
	struct rjob *qhead, *qtail;
	uint32_t qlen;
	struct relay_probe *phead, *ptail; /* address verification (relay_probe.c) */
	/* Why the last connection failed before it was usable: the answer
	 * to a probe while the hop is not retried. */
	char down_why[RELAY_TEXT_MAX];
	uint32_t nconns; /* open or opening */
	uint32_t nready;
	struct oconn *conns; /* list */
	uint64_t fail_since; /* monotonic ns of the first failure of a streak; 0: fine */
	uint64_t retry_at;   /* no new connection before this (after a failed one) */
};

enum cstate { C_CONNECTING = 1, C_GREETING, C_READY, C_QUIT, C_CLOSING };

struct oconn {
	struct relay *r;
	struct rhop *hop;
	struct oconn *next; /* hop's list */
	uint32_t idx, gen;
	int fd;
	uint8_t st;
	bool lmtp;
	bool local;     /* a unix socket: never TLS */
	uint8_t ep;     /* index into hop->conf.a: the address connected to */
	uint8_t member; /* its member in hop->conf.m (TLS host name) */
	bool connect_inflight, lt_inflight, recv_inflight, send_inflight;
	bool send_tls; /* the send in flight is from tls->cout (else out + span) */
	bool shut;
	bool ever_ready;
	bool want_tls;                /* the core asked for the handshake (SMTPC_EV_TLS) */
	bool core_closed;             /* SMTPC_EV_CLOSE: close now */
	bool defer;                   /* SMTPC_EV_DEFER: failed before usable, why says why */
	bool failed;                  /* oconn_fail() started the end (counted, logged) */
	struct relay_tls_conn *tls;   /* after STARTTLS; NULL in plaintext */
	/* The TLS state's memory, kept when the connection is reused. */
	struct relay_tls_conn *tls_mem;
	struct __kernel_timespec cts; /* connect timeout (read at submit) */
	struct rtimer t;

	struct smtpc sc;     /* the protocol (engine/smtp/smtp_client.c) */
	struct smtpc_out so; /* over out[]: the commands it wrote */
	/* The body span due after out (SMTPC_EV_BODY), sent from the spool
	 * mapping; [0, span_off) is sent (or encrypted). */
	const uint8_t *span;
	size_t span_len, span_off;
	struct rjob *span_job;
	bool span_bad;     /* reading the span failed (SIGBUS under the guard) */
	bool span_in_send; /* plaintext: the send in flight has the span's iovec */
	uint32_t send_out; /* plaintext: bytes of out in the send in flight */
	struct msghdr msg;
	struct iovec iov[2];
	char why[RELAY_TEXT_MAX];

	struct rjob *active[RELAY_WINDOW];
	uint32_t nactive;
	uint32_t nprobes; /* relay_probe transactions lent to sc */

	char in[RELAY_IN_SIZE];
	char out[RELAY_OUT_SIZE];
};

struct rbounce {
	struct sink_waiter waiter; /* the spool's verdict on the bounce */
	struct relay *r;
	struct rjob *job;
	struct sink_tx *tx;
	bool used;
	size_t size; /* of the bounce message, for its qmgr log line */
	char qid[SINK_QID_MAX];
};

/* Free message blocks of one size, and the slabs they are carved from. */
struct rpool {
	void **free;
};
struct rslab {
	struct rslab *next;
	char *mem;
};

/* A directory w<N> the relay reads, opened once. */
struct rwdir {
	unsigned wdir;
	int fd;
};

/* Records of one operator command in one segment, waiting for its sync. */
struct rcmd_hit {
	struct rseg *s;
	struct relay_cmd *cmd;
	uint32_t n;
};

struct relay {
	struct relay_env env;
	const struct config *cfg;
	uint64_t now; /* monotonic ns */
	struct timer_wheel *wheel;
	struct rseg *segs;
	struct rseg *dirty; /* segments with journal records to write */
	struct rseg **segtab; /* slots: segments by user_data idx */
	uint32_t *seg_free;
	uint32_t segtab_cap, seg_nfree, seg_gen;
	uint32_t jops; /* journal and deletion operations in the kernel */
	struct rwdir *wdirs;
	uint32_t nwdirs;
	/* The operator commands being applied: answered when every segment
	 * they wrote to is synced (cmd_syncs at zero). */
	struct relay_cmdset *cmdset;
	uint32_t cmd_syncs;
	struct rcmd_hit *hits; /* RELAY_CMD_HITS_MAX */
	uint32_t nhits;
	struct rpool pool[RELAY_POOL_CLASSES];
	struct rslab *slabs;
	uint8_t *envbuf; /* scratch: the envelope being loaded, routed */
	size_t envbuf_cap;
	struct oconn *free_conns; /* closed connections, kept for the next */
	struct rhop *hops;
	struct rhop *hopmap[CONFIG_MAX_HOPS]; /* cfg->relay.hops[i] -> ours */
	struct oconn **slots;
	uint32_t *slot_gen;
	uint32_t nslots, slots_cap;
	uint32_t *free_slots;
	uint32_t nfree;
	struct rbounce bounces[RELAY_BOUNCES_MAX];
	uint32_t nbounces;
	uint64_t backlog_bytes, backlog_msgs;
	bool over_high_water;
	bool deferring;
	bool draining;
	struct relay_tls_ctx *tlsctx; /* relay_tls != none */
	enum relay_tls tls_mode;      /* what tlsctx was built for */
	char tls_ca[CONFIG_PATH_MAX];
	char dir[CONFIG_PATH_MAX];
};

/* ---- the SIGBUS guard (relay_map.c) ---- */

extern __thread sigjmp_buf *volatile relay_map_guard;
/* After a jump out of the SIGBUS handler: SIGBUS is blocked again no more. */
void relay_map_unblock(void);

/* Run stmt with SIGBUS turned into err = -EIO. The guard runs for every
 * message sent (body_check, small bodies copied, every call into the client
 * core), so it saves no signal mask (sigsetjmp(.., 1) is a sigprocmask
 * system call each time): the handler runs with SIGBUS blocked, and only
 * the rare jump back unblocks it. Guards nest (a core call's callback copies
 * a span under its own): the inner one catches, and the outer one is in
 * force again after it. */
#define MAP_GUARD(err, stmt)                                                                       \
	do {                                                                                       \
		sigjmp_buf map_jb_;                                                                \
		sigjmp_buf *volatile map_prev_ = relay_map_guard;                                  \
		if (sigsetjmp(map_jb_, 0) == 0) {                                                  \
			relay_map_guard = &map_jb_;                                                \
			stmt;                                                                      \
			relay_map_guard = map_prev_;                                               \
			(err) = 0;                                                                 \
		} else {                                                                           \
			relay_map_guard = map_prev_;                                               \
			relay_map_unblock();                                                       \
			(err) = -EIO;                                                              \
		}                                                                                  \
	} while (0)

/* relay.c: messages, jobs, results, next hops */
uint64_t relay_wall_us(void);
void *relay_xcalloc(size_t n, size_t sz);
void rhop_defer_all(struct relay *r, struct rhop *h, const char *reason);
void rhop_dequeue(struct rjob *j);
void rhop_enqueue(struct relay *r, struct rjob *j);
unsigned rhop_first_up(const struct relay *r, const struct rhop *h);
void rhop_sync(struct relay *r);
void rjob_end_attempt(struct relay *r, struct rjob *j);
void rjob_rcpt_perm(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text,
                    size_t len);
void rjob_rcpt_result(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text,
                      size_t len);
void rjob_rcpt_temp(struct rjob *j, uint32_t k, int code, const char *text, size_t len);
void rmsg_start(struct relay *r, struct rmsg *m, uint64_t next_us);

struct rhop *rhop_for(struct relay *r, const char *domain, size_t len);
/* Every segment the current operator commands wrote to is synced: answer. */
void relay_cmds_done(struct relay *r);

/* relay_journal.c: the journal and the segments' life, through the ring */
/* 0, or -ENOBUFS: the buffer is full (the record is dropped, counted). */
int rj_rec(struct relay *r, struct rmsg *m, uint8_t type, uint32_t first, uint32_t count,
           uint32_t attempts, uint64_t next_us, const char *text, size_t text_len);
void rj_sync_want(struct relay *r, struct rseg *s, struct relay_cmd *cmd);
void rj_kick(struct relay *r, struct rseg *s);
void rj_poll(struct relay *r);
uint64_t rj_wait_ns(const struct relay *r, uint64_t max);
bool rj_busy(const struct relay *r);
void rj_close(struct relay *r);
void relay_journal_cqe(struct relay *r, enum subop op, uint32_t idx, uint32_t gen, int res);
void rdir_open(struct relay *r, unsigned wdir);
struct rseg *rseg_find(struct relay *r, unsigned wdir, uint64_t seq);
void rseg_maybe_delete(struct relay *r, struct rseg *s);
struct rseg *rseg_new(struct relay *r, unsigned wdir, uint64_t seq, uint8_t *map, size_t maplen);
void rseg_path(const struct relay *r, const struct rseg *s, const char *ext, char *buf, size_t len);

/* relay_msg.c: messages and their block pool */
struct rmsg *rmsg_load(struct relay *r, struct rseg *s, uint64_t off,
                       const struct journal_msg_state *st);
void msg_destroy(struct relay *r, struct rmsg *m);
void relay_pool_init(struct relay *r);
void relay_pool_fini(struct relay *r);

/* relay_map.c: the mappings and the SIGBUS guard */
void relay_map_guard_install(void);
int relay_map_read(void *dst, const uint8_t *src, size_t n);
struct rseg *rseg_map(struct relay *r, unsigned wdir, uint64_t seq);
void rseg_remap(struct relay *r, struct rseg *s);

/* relay_probe.c: address verification probes on the hop's connections */
void probe_fill(struct oconn *c);
void probe_event(struct oconn *c, const struct smtpc_event *ev);
void probe_defer_all(struct rhop *h, const char *reason);
bool probe_conn_usable(const struct oconn *c);
void probe_reroute(struct relay *r, struct rhop *h);

/* relay_conn.c: outbound connections */
void oconn_close(struct oconn *c);
void oconn_fail(struct oconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void oconn_fill(struct oconn *c);
void oconn_open(struct relay *r, struct rhop *h);
size_t oconn_reply_text(const struct smtpc_reply *rp, char *buf, size_t cap);
void oconn_send(struct oconn *c);
void oconn_timer_update(struct oconn *c);
void oconn_timer(struct oconn *c);

#endif
