/*
 * relay.c - deliver spooled mail to the next hop. Contract: relay.h;
 * operator view: docs/relay.md; journal: include/ringmx/journal_format.h.
 *
 * Owner: the relay module. One struct relay per worker, touched only by
 * that worker's thread.
 *
 * Objects
 *  rseg   a spool segment the relay reads (mapped read-only) and its
 *         journal (appended through a small buffer, flushed once per loop
 *         iteration). Deleted, with its journal, once the spool has closed
 *         it and every message in it is finished.
 *  rmsg   one spooled message: a copy of its envelope, its body in the
 *         mapping (read only under map_guard: see "reading the
 *         mappings"), a done mark per recipient. Freed when finished.
 *  rjob   the part of a message that goes to one next hop (its recipients
 *         routed there). A job waits (retry timer), is queued on its hop,
 *         is active on one outbound connection, or waits for its bounce to
 *         be spooled.
 *  rhop   a next hop: its queue of jobs and its connections.
 *  oconn  an outbound connection: connect (with a linked timeout), one
 *         recv and at most one send in flight, and the pure SMTP/LMTP
 *         client core (engine/smtp_client.c) that decides every command and
 *         reads every reply; this file only moves its bytes and acts on its
 *         events. With PIPELINING and CHUNKING whole transactions follow each
 *         other without waiting (BDAT n LAST); with DATA a transaction waits
 *         for 354 before its body.
 *
 * Durability and duplicates
 *  A recipient is finished when a DELIVERED or FAILED journal record names
 *  it. DELIVERED is appended when the final 2xx is read and written to the
 *  file at the end of that loop iteration: a crash in between (or a power
 *  loss before the page cache reaches the disk: the journal is not fsynced
 *  per record) delivers the message again after restart - at least once,
 *  never lost. FAILED is appended only after the bounce is durable in the
 *  spool (a crash before that retries the recipient, and may bounce twice).
 *
 * Buffers
 *  Each connection owns an input buffer (what one recv reads; the core
 *  carries a split reply line) and an output buffer the core writes whole
 *  commands into; the bytes of it in a send in flight belong to the kernel.
 *  The core names spans of the message in the segment mapping: up to
 *  RELAY_INLINE_MAX they are copied into the output after their commands
 *  (one send for many small transactions); larger ones are sent from the
 *  mapping with the commands before them in one sendmsg. With TLS, wolfSSL
 *  encrypts both into the ciphertext buffer.
 */
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
/* Journal bytes buffered per segment before a write is forced. */
#define RELAY_JBUF_SIZE (16u << 10)
/* Outbound connections per worker (slots; idx field of user_data). */
#define RELAY_SLOTS_MAX (1u << 20)
/* Delay before a bounce that could not be spooled is tried again. */
#define RELAY_BOUNCE_RETRY_NS (5ull * 1000000000ull)

enum subop { S_CONNECT = 1, S_LTIMEOUT, S_SEND, S_RECV };

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
	uint8_t ep; /* the hop's address of the last attempt (logs, bounces) */
	/* J_ACTIVE: the transaction lent to the connection's client core, its
	 * recipients (those not finished earlier) and their indices k here. */
	struct smtpc_tx tx;
	struct smtpc_rcpt *trc; /* one allocation with tk, at the first attempt */
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
	uint8_t *env;        /* a copy of the envelope (malloc): from and rcpt point into it */
	const uint8_t *body; /* in the mapping: read only under map_guard */
	uint64_t body_len;
	uint32_t nrcpt;
	struct raddr *rcpt;
	uint8_t *done; /* per recipient: 0, JOURNAL_DELIVERED or JOURNAL_FAILED */
	uint32_t njobs;
	uint32_t jobs_left;
	struct rjob *jobs;
	bool held;
	bool deleted;
};

struct rseg {
	struct rseg *next;
	unsigned wdir; /* w<wdir> */
	uint64_t seq;
	uint8_t *map;
	size_t maplen;
	int jfd;       /* -1 until the first journal record */
	uint64_t jpos; /* file offset of the next journal write */
	uint32_t jbuf_len;
	bool closed; /* the spool will not write it again */
	/* A durable record of it could not be loaded (no mapping, bad
	 * record): never deleted, so the next start reads it again. */
	bool keep;
	bool dirty; /* on the relay's list of journals to flush */
	struct rseg *next_dirty;
	bool jerr_logged;
	/* The journal's directory entry was fsynced by this run (before the
	 * first answer that depends on the journal: see jsync). */
	bool jdir_synced;
	uint32_t pending;  /* messages not finished */
	struct rmsg *msgs; /* unfinished messages */
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
	bool failed;                  /* conn_fail() started the end (counted, logged) */
	struct relay_tls_conn *tls;   /* after STARTTLS; NULL in plaintext */
	struct __kernel_timespec cts; /* connect timeout (read at submit) */
	struct rtimer t;

	struct smtpc sc;     /* the protocol (engine/smtp_client.c) */
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

	char in[RELAY_IN_SIZE];
	char out[RELAY_OUT_SIZE];
};

struct rbounce {
	struct sink_waiter waiter; /* the spool's verdict on the bounce */
	struct relay *r;
	struct rjob *job;
	struct sink_tx *tx;
	bool used;
	char qid[SINK_QID_MAX];
};

struct relay {
	struct relay_env env;
	const struct config *cfg;
	uint64_t now; /* monotonic ns */
	struct timer_wheel *wheel;
	struct rseg *segs;
	struct rseg *dirty; /* segments with journal records to write */
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

/* ---- small helpers ---- */

static uint64_t
wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *
xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n, sz);
	if (p == NULL)
		panic("relay: out of memory (%zu x %zu)", n, sz);
	return p;
}

static char *
xstrndup(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p == NULL)
		panic("relay: out of memory");
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static uint64_t
backoff_ns(const struct relay *r, uint32_t attempts)
{
	uint64_t d = r->cfg->relay.retry_min;
	for (uint32_t i = 1; i < attempts && d < r->cfg->relay.retry_max; i++)
		d *= 2;
	return d < r->cfg->relay.retry_max ? d : r->cfg->relay.retry_max;
}

/* The enhanced status code at the start of a reply's text ("2.1.5 Ok"),
 * or one derived from the basic code. */
static void
dsn_of(int code, const char *text, size_t len, char out[16])
{
	size_t i = 0;
	if (len >= 5 && text[0] >= '2' && text[0] <= '5' && text[1] == '.') {
		i = 2;
		size_t d1 = i;
		while (i < len && i - d1 < 3 && text[i] >= '0' && text[i] <= '9')
			i++;
		if (i > d1 && i < len && text[i] == '.') {
			size_t d2 = ++i;
			while (i < len && i - d2 < 3 && text[i] >= '0' && text[i] <= '9')
				i++;
			if (i > d2 && (i == len || text[i] == ' ') && text[0] - '0' == code / 100) {
				memcpy(out, text, i);
				out[i] = '\0';
				return;
			}
		}
	}
	snprintf(out, 16, "%d.0.0", code / 100 >= 2 && code / 100 <= 5 ? code / 100 : 4);
}

/* ---- journal ---- */

static void
seg_path(const struct relay *r, const struct rseg *s, const char *ext, char *buf, size_t len)
{
	snprintf(buf, len, "%s/w%u/%016" PRIx64 ".%s", r->dir, s->wdir, s->seq, ext);
}

/* Write the segment's buffered journal records. 0, or -1 when they could
 * not be written: the state stays in memory (a restart may deliver
 * again), and the file is cut back to its last whole record so that later
 * records are not hidden behind a torn one (recovery stops there). */
static int
jflush(struct relay *r, struct rseg *s)
{
	if (s->jbuf_len == 0)
		return 0;
	if (s->jfd < 0) {
		char path[CONFIG_PATH_MAX + 64];
		seg_path(r, s, "jnl", path, sizeof(path));
		s->jfd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (s->jfd < 0) {
			if (!s->jerr_logged)
				log_err("relay: cannot open journal %s: %s; delivery state is kept "
				        "in memory only (a restart may deliver again)",
				        path, strerror(errno));
			s->jerr_logged = true;
			s->jbuf_len = 0;
			return -1;
		}
	}
	size_t done = 0;
	while (done < s->jbuf_len) {
		ssize_t n =
		    pwrite(s->jfd, s->jbuf + done, s->jbuf_len - done, (off_t)(s->jpos + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (!s->jerr_logged)
				log_err("relay: journal write w%u/%016" PRIx64
				        ".jnl: %s; a restart "
				        "may deliver again",
				        s->wdir, s->seq, n < 0 ? strerror(errno) : "short write");
			s->jerr_logged = true;
			break;
		}
		done += (size_t)n;
	}
	int rc = 0;
	if (done < s->jbuf_len) {
		if (done > 0 && ftruncate(s->jfd, (off_t)s->jpos) < 0)
			log_err("relay: truncate w%u/%016" PRIx64 ".jnl: %s", s->wdir, s->seq,
			        strerror(errno));
		rc = -1;
	} else {
		s->jpos += done;
	}
	s->jbuf_len = 0;
	r->env.stats->relay_journal_writes++;
	return rc;
}

static void
jrec(struct relay *r, struct rmsg *m, uint8_t type, uint32_t first, uint32_t count,
     uint32_t attempts, uint64_t next_us, const char *text, size_t text_len)
{
	struct rseg *s = m->seg;
	struct journal_rec jr = {
	    .type = type,
	    .rcpt_first = first,
	    .rcpt_count = count,
	    .rec_off = m->off,
	    .attempts = attempts,
	    .time_us = wall_us(),
	    .next_us = next_us,
	    .text = text,
	    .text_len = (uint16_t)(text_len > JOURNAL_TEXT_MAX ? JOURNAL_TEXT_MAX : text_len),
	};
	if (s->jbuf_len + JOURNAL_REC_MAX > RELAY_JBUF_SIZE)
		jflush(r, s);
	size_t n = journal_encode(s->jbuf + s->jbuf_len, RELAY_JBUF_SIZE - s->jbuf_len, &jr);
	assert(n > 0);
	s->jbuf_len += (uint32_t)n;
	if (!s->dirty) {
		s->dirty = true;
		s->next_dirty = r->dirty;
		r->dirty = s;
	}
}

static int dir_fsync(const char *dir);

/* Flush and fdatasync: 0 or -1 (logged). The answer to an operator waits
 * for this, so a journal this run may have created also needs its
 * directory entry to be durable: without it the file, and the HOLD or
 * DELETE in it, could be gone after a crash. */
static int
jsync(struct relay *r, struct rseg *s)
{
	if (jflush(r, s) < 0)
		return -1;
	if (s->jfd >= 0 && fdatasync(s->jfd) < 0) {
		log_err("relay: fdatasync journal w%u/%016" PRIx64 ".jnl: %s", s->wdir, s->seq,
		        strerror(errno));
		return -1;
	}
	if (s->jfd >= 0 && !s->jdir_synced) {
		char dir[CONFIG_PATH_MAX + 16];
		snprintf(dir, sizeof(dir), "%s/w%u", r->dir, s->wdir);
		if (dir_fsync(dir) < 0)
			return -1;
		s->jdir_synced = true;
	}
	return 0;
}

/* ---- reading the mappings ----
 *
 * Segments are read through read-only MAP_SHARED mappings. A page that
 * cannot be read (a bad sector; the file cut short under the mapping)
 * raises SIGBUS on access, which would kill the daemon, and again at
 * every restart. So mapped bytes are touched only inside map_read() and
 * the MAP_GUARD() sections below: there the SIGBUS handler jumps back
 * (siglongjmp) and the access is an error result (-EIO) for that record.
 * Outside a guarded section the handler restores the default action and
 * the fault kills the process as before (a bug, not the disk). The
 * envelope is copied out when a message is loaded; only message bodies
 * are read from the mapping afterwards: touched page by page under the
 * guard before the client core gets them (body_check), then read by the
 * kernel (sendmsg: an unreadable page is EFAULT, not a signal), by wolfSSL
 * under the guard (TLS), and by the bounce builder under the guard. */

/* The jump buffer of the guarded section this thread is in, or NULL. */
static __thread sigjmp_buf *volatile map_guard;

static void
map_on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	sigjmp_buf *jb = map_guard;
	if (jb == NULL) {
		/* Not a mapped read: the access faults again, fatally. */
		signal(sig, SIG_DFL);
		return;
	}
	map_guard = NULL;
	siglongjmp(*jb, 1);
}

/* Once per process (every worker's relay calls it). */
static void
map_guard_install(void)
{
	static atomic_flag done = ATOMIC_FLAG_INIT;
	if (atomic_flag_test_and_set(&done))
		return;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = map_on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		panic("relay: sigaction SIGBUS: %s", strerror(errno));
}

/* Run stmt with SIGBUS turned into err = -EIO. sigsetjmp saves the signal
 * mask (1): the handler runs with SIGBUS blocked, the jump unblocks it. */
#define MAP_GUARD(err, stmt)                                                                       \
	do {                                                                                       \
		sigjmp_buf map_jb_;                                                                \
		if (sigsetjmp(map_jb_, 1) == 0) {                                                  \
			map_guard = &map_jb_;                                                      \
			stmt;                                                                      \
			map_guard = NULL;                                                          \
			(err) = 0;                                                                 \
		} else {                                                                           \
			(err) = -EIO;                                                              \
		}                                                                                  \
	} while (0)

/* Copy n mapped bytes. 0, or -EIO if they cannot be read. */
static int
map_read(void *dst, const uint8_t *src, size_t n)
{
	int err;
	MAP_GUARD(err, memcpy(dst, src, n));
	return err;
}

/* ---- segments ---- */

static struct rseg *
seg_find(struct relay *r, unsigned wdir, uint64_t seq)
{
	for (struct rseg *s = r->segs; s != NULL; s = s->next)
		if (s->seq == seq && s->wdir == wdir)
			return s;
	return NULL;
}

static struct rseg *
seg_new(struct relay *r, unsigned wdir, uint64_t seq, uint8_t *map, size_t maplen)
{
	struct rseg *s = xcalloc(1, sizeof(*s));
	s->wdir = wdir;
	s->seq = seq;
	s->map = map;
	s->maplen = maplen;
	s->jfd = -1;
	s->next = r->segs;
	r->segs = s;
	return s;
}

static struct rseg *
seg_map(struct relay *r, unsigned wdir, uint64_t seq)
{
	char path[CONFIG_PATH_MAX + 64];
	struct rseg tmp = {.wdir = wdir, .seq = seq};
	seg_path(r, &tmp, "seg", path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_err("relay: open %s: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size <= 0) {
		close(fd);
		return NULL;
	}
	void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		log_err("relay: mmap %s: %s", path, strerror(errno));
		return NULL;
	}
	return seg_new(r, wdir, seq, map, (size_t)st.st_size);
}

/* A kept placeholder (its first mapping failed) tries again. */
static void
seg_remap(struct relay *r, struct rseg *s)
{
	struct rseg *m = seg_map(r, s->wdir, s->seq);
	if (m == NULL)
		return;
	/* seg_map linked a second entry: take its mapping, drop the entry. */
	s->map = m->map;
	s->maplen = m->maplen;
	r->segs = m->next;
	free(m);
}

/* 0 or -errno (logged). */
static int
dir_fsync(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = fd < 0 ? -errno : fault_dirsync();
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	if (r < 0)
		log_err("relay: fsync %s: %s", dir, strerror(-r));
	return r;
}

/* Every message finished and the spool is done with it: the segment and
 * its journal go (the segment first: a journal without its segment is
 * harmless, a segment without its journal would be delivered again). */
static void
seg_maybe_delete(struct relay *r, struct rseg *s)
{
	if (!s->closed || s->pending > 0 || s->keep)
		return;
	char path[CONFIG_PATH_MAX + 64], dir[CONFIG_PATH_MAX + 16];
	s->jbuf_len = 0;
	if (s->dirty)
		for (struct rseg **pp = &r->dirty; *pp != NULL; pp = &(*pp)->next_dirty)
			if (*pp == s) {
				*pp = s->next_dirty;
				break;
			}
	if (s->jfd >= 0)
		close(s->jfd);
	munmap(s->map, s->maplen);
	seg_path(r, s, "seg", path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT)
		log_err("relay: unlink %s: %s", path, strerror(errno));
	seg_path(r, s, "jnl", path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT)
		log_err("relay: unlink %s: %s", path, strerror(errno));
	snprintf(dir, sizeof(dir), "%s/w%u", r->dir, s->wdir);
	/* Only logged: nothing is answered on it, and should the removal be
	 * lost in a crash, the worst is a second delivery of its messages
	 * (the .seg may come back without its .jnl), never a loss. */
	(void)dir_fsync(dir);
	r->env.stats->relay_segments_removed++;
	for (struct rseg **pp = &r->segs; *pp != NULL; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	free(s);
}

void
relay_seg_closed(void *arg, uint64_t seq)
{
	struct relay *r = arg;
	struct rseg *s = seg_find(r, r->env.worker, seq);
	if (s == NULL)
		return; /* nothing durable was ever written to it */
	s->closed = true;
	jflush(r, s);
	seg_maybe_delete(r, s);
}

/* ---- messages and jobs ---- */

static struct rhop *hop_for(struct relay *r, const char *domain, size_t len);
static void hop_enqueue(struct relay *r, struct rjob *j);
static void hop_dequeue(struct rjob *j);

static void msg_log(const struct rmsg *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
msg_log(const struct rmsg *m, const char *fmt, ...)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "%s: ", m->qid);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	log_info("%s", line);
}

static void
msg_destroy(struct rmsg *m)
{
	for (uint32_t i = 0; i < m->njobs; i++) {
		struct rjob *j = &m->jobs[i];
		for (uint32_t k = 0; k < j->n; k++)
			free(j->rtext[k]);
		free(j->rtext);
		free(j->rs);
		free(j->ri);
		free(j->trc);
	}
	free(m->jobs);
	free(m->rcpt);
	free(m->env);
	free(m);
}

static void
msg_free(struct relay *r, struct rmsg *m)
{
	struct rseg *s = m->seg;
	for (uint32_t i = 0; i < m->njobs; i++) {
		struct rjob *j = &m->jobs[i];
		assert(j->state != J_ACTIVE && j->state != J_BOUNCING);
		if (j->state == J_QUEUED)
			hop_dequeue(j);
		if (timer_armed(&j->t.n))
			timer_cancel(r->wheel, &j->t.n);
	}
	if (m->prev != NULL)
		m->prev->next = m->next;
	else
		s->msgs = m->next;
	if (m->next != NULL)
		m->next->prev = m->prev;
	assert(s->pending > 0);
	s->pending--;
	r->backlog_msgs--;
	r->backlog_bytes -= m->rec_len;
	msg_destroy(m);
	seg_maybe_delete(r, s);
}

/* A job is over for good. The message goes when its last job does. */
static void
job_done(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	j->state = J_DONE;
	if (timer_armed(&j->t.n))
		timer_cancel(r->wheel, &j->t.n);
	assert(m->jobs_left > 0);
	if (--m->jobs_left == 0) {
		if (!m->deleted)
			msg_log(m, "removed");
		r->env.stats->relay_messages_done++;
		msg_free(r, m);
	}
}

static void
job_schedule(struct relay *r, struct rjob *j, uint64_t at_ns)
{
	j->state = J_WAIT;
	if (j->m->held)
		return; /* RELEASE queues it */
	if (at_ns <= r->now) {
		hop_enqueue(r, j);
		return;
	}
	timer_set(r->wheel, &j->t.n, at_ns);
}

/* Build the in-memory message for the record at off, with the journal's
 * state applied (st may be NULL: nothing journaled). Returns NULL if the
 * record is unusable (logged) or already finished. Only the header is
 * checked: every record arrives here CRC-checked already, by the spool that
 * just wrote it or by spool_seg_scan() at recovery (no second CRC pass over
 * every message). */
static struct rmsg *
msg_load(struct relay *r, struct rseg *s, uint64_t off, const struct journal_msg_state *st)
{
	struct spool_hdr h;
	uint8_t hdr[SPOOL_HDR_SIZE];
	bool ok = off + SPOOL_HDR_SIZE <= s->maplen;
	if (ok && map_read(hdr, s->map + off, sizeof(hdr)) < 0) {
		log_err("relay: w%u/%016" PRIx64 ".seg: the record at offset %" PRIu64
		        " is unreadable (I/O error); left in the spool",
		        s->wdir, s->seq, off);
		return NULL;
	}
	if (ok) {
		spool_hdr_decode(hdr, &h);
		ok = h.magic == SPOOL_REC_MAGIC && h.version == SPOOL_REC_VERSION &&
		     h.rec_len == spool_rec_len(h.env_len, h.msg_len) &&
		     h.rec_len <= s->maplen - off;
	}
	if (!ok) {
		log_err("relay: w%u/%016" PRIx64 ".seg: no valid record at offset %" PRIu64,
		        s->wdir, s->seq, off);
		return NULL;
	}
	const uint8_t *rec = s->map + off;
	/* The envelope is copied: the commands are built from it later,
	 * outside any guarded section. */
	uint8_t *envc = xcalloc(h.env_len ? h.env_len : 1, 1);
	if (map_read(envc, rec + SPOOL_HDR_SIZE, h.env_len) < 0) {
		log_err("relay: %s: the envelope at offset %" PRIu64 " of w%u/%016" PRIx64
		        ".seg is unreadable (I/O error); left in the spool",
		        h.qid, off, s->wdir, s->seq);
		free(envc);
		return NULL;
	}
	struct spool_envelope env;
	if (spool_env_parse(envc, h.env_len, &env) < 0 || env.nrcpt == 0) {
		log_err("relay: %s: malformed envelope; left in the spool", h.qid);
		free(envc);
		return NULL;
	}
	/* Routing first: it decides how many jobs there are. */
	uint32_t nrcpt = env.nrcpt;
	struct raddr *addrs = xcalloc(nrcpt, sizeof(*addrs));
	struct rhop **rh = xcalloc(nrcpt, sizeof(*rh));
	struct spool_tlv_iter it = {.p = envc, .len = h.env_len};
	unsigned type;
	const uint8_t *v;
	size_t vlen;
	uint32_t k = 0;
	while (spool_tlv_next(&it, &type, &v, &vlen) == 1)
		if (type == SPOOL_TLV_RCPT && k < nrcpt) {
			addrs[k].p = (const char *)v;
			addrs[k].len = (uint32_t)vlen;
			const char *at = memrchr(v, '@', vlen);
			const char *dom = at != NULL ? at + 1 : "";
			size_t dlen = at != NULL ? vlen - (size_t)(at + 1 - (const char *)v) : 0;
			rh[k] = hop_for(r, dom, dlen);
			k++;
		}
	uint32_t pending = 0, njobs = 0;
	struct rhop *seen[CONFIG_MAX_HOPS + 1];
	uint32_t nseen = 0;
	for (k = 0; k < nrcpt; k++) {
		if (st != NULL && st->done[k] != 0)
			continue;
		pending++;
		bool dup = false;
		for (uint32_t i = 0; i < nseen; i++)
			dup |= seen[i] == rh[k];
		if (!dup && nseen < CONFIG_MAX_HOPS + 1)
			seen[nseen++] = rh[k];
	}
	njobs = nseen;
	if (pending == 0 || (st != NULL && st->deleted)) {
		free(addrs);
		free(rh);
		free(envc);
		return NULL;
	}
	struct rmsg *m = xcalloc(1, sizeof(*m) + nrcpt);
	m->done = (uint8_t *)(m + 1);
	m->seg = s;
	m->off = off;
	m->rec_len = h.rec_len;
	memcpy(m->qid, h.qid, sizeof(m->qid));
	m->received_us = h.received_us;
	m->env = envc;
	m->from = (const char *)env.from;
	m->from_len = env.from_len;
	m->flags = env.mail_flags;
	m->body = rec + SPOOL_HDR_SIZE + h.env_len;
	m->body_len = h.msg_len;
	m->nrcpt = nrcpt;
	m->rcpt = addrs;
	if (st != NULL) {
		memcpy(m->done, st->done, nrcpt);
		m->held = st->held;
	}
	m->jobs = xcalloc(njobs, sizeof(*m->jobs));
	m->njobs = m->jobs_left = njobs;
	for (uint32_t i = 0; i < njobs; i++) {
		struct rjob *j = &m->jobs[i];
		j->m = m;
		j->hop = seen[i];
		j->t.kind = T_JOB;
		j->attempts = st != NULL ? st->attempts : 0;
		for (k = 0; k < nrcpt; k++)
			if (m->done[k] == 0 && rh[k] == seen[i])
				j->n++;
		j->ri = xcalloc(j->n, sizeof(*j->ri));
		j->rs = xcalloc(j->n, 1);
		j->rtext = xcalloc(j->n, sizeof(*j->rtext));
		uint32_t n = 0;
		for (k = 0; k < nrcpt; k++)
			if (m->done[k] == 0 && rh[k] == seen[i])
				j->ri[n++] = k;
	}
	free(rh);
	/* The job arrays are separate allocations; free them with the message. */
	m->next = s->msgs;
	if (s->msgs != NULL)
		s->msgs->prev = m;
	s->msgs = m;
	s->pending++;
	r->backlog_msgs++;
	r->backlog_bytes += m->rec_len;
	return m;
}

/* ---- results of an attempt ---- */

static void job_end_attempt(struct relay *r, struct rjob *j);

static double
delay_s(const struct rmsg *m)
{
	uint64_t now = wall_us();
	return now > m->received_us ? (double)(now - m->received_us) / 1e6 : 0.0;
}

static const char *
hop_name(const struct rjob *j)
{
	if (j->hop == NULL)
		return "none";
	return j->ep < j->hop->conf.na ? j->hop->epname[j->ep] : j->hop->name;
}

/* One line per recipient and attempt, in the shape Postfix's tools parse. */
static void
rcpt_log(const struct rjob *j, uint32_t k, int code, const char *text, size_t len,
         const char *status)
{
	const struct rmsg *m = j->m;
	const struct raddr *a = &m->rcpt[j->ri[k]];
	char dsn[16];
	dsn_of(code, text, len, dsn);
	int tl = (int)(len > 400 ? 400 : len);
	msg_log(m, "to=<%.*s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%d %.*s)", (int)a->len,
	        a->p, hop_name(j), delay_s(m), dsn, status, code, tl, text);
}

/* Reply text as kept per recipient: "550 5.1.1 text". */
static char *
reply_dup(int code, const char *text, size_t len)
{
	char buf[RELAY_TEXT_MAX + 8];
	int n = snprintf(buf, sizeof(buf), "%d %.*s", code,
	                 (int)(len > RELAY_TEXT_MAX ? RELAY_TEXT_MAX : len), text);
	return xstrndup(buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void
rcpt_sent(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	struct rmsg *m = j->m;
	uint32_t ri = j->ri[k];
	j->rs[k] = RS_SENT;
	rcpt_log(j, k, code, text, len, "sent");
	if (!m->done[ri]) {
		char buf[RELAY_TEXT_MAX + 8];
		int n = snprintf(buf, sizeof(buf), "%d %.*s", code,
		                 (int)(len > RELAY_TEXT_MAX ? RELAY_TEXT_MAX : len), text);
		jrec(r, m, JOURNAL_DELIVERED, ri, 1, j->attempts, 0, buf,
		     (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
		m->done[ri] = JOURNAL_DELIVERED;
	}
	r->env.stats->relay_rcpt_sent++;
}

static void
rcpt_perm(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	j->rs[k] = RS_PERM;
	free(j->rtext[k]);
	j->rtext[k] = reply_dup(code, text, len);
	rcpt_log(j, k, code, text, len, "bounced");
	r->env.stats->relay_rcpt_bounced++;
}

static void
rcpt_temp(struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	j->rs[k] = RS_TEMP;
	int n = snprintf(j->last_temp, sizeof(j->last_temp), "%d %.*s", code, (int)len, text);
	j->last_temp_len =
	    (uint16_t)((size_t)n < sizeof(j->last_temp) ? (size_t)n : sizeof(j->last_temp) - 1);
}

/* Apply one reply to recipient k: 2xx delivered, 5xx (but 503, a
 * sequencing error that is ours, not the message's) permanent, else
 * temporary. */
static void
rcpt_result(struct relay *r, struct rjob *j, uint32_t k, int code, const char *text, size_t len)
{
	if (code >= 200 && code < 300)
		rcpt_sent(r, j, k, code, text, len);
	else if (code >= 500 && code != 503)
		rcpt_perm(r, j, k, code, text, len);
	else
		rcpt_temp(j, k, code, text, len);
}

/* Every recipient still open in this attempt fails temporarily. */
static void
job_fail_open(struct rjob *j, const char *reason)
{
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] == RS_PENDING || j->rs[k] == RS_RCPT_OK)
			rcpt_temp(j, k, 451, reason, strlen(reason));
}

static bool bounce_start(struct relay *r, struct rjob *j);
static void bounce_verdict(struct sink_waiter *waiter, int res);

/* Permanent failures are journaled (FAILED) once their bounce is durable,
 * or at once for the null sender; then temporary ones are scheduled. */
static void
job_settle(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	uint32_t ntemp = 0;
	for (uint32_t k = 0; k < j->n; k++) {
		if (j->rs[k] == RS_PERM) {
			uint32_t ri = j->ri[k];
			const char *t = j->rtext[k] != NULL ? j->rtext[k] : "";
			jrec(r, m, JOURNAL_FAILED, ri, 1, j->attempts, 0, t, strlen(t));
			m->done[ri] = JOURNAL_FAILED;
			j->rs[k] = RS_DONE;
		} else if (j->rs[k] == RS_SENT) {
			j->rs[k] = RS_DONE;
		} else if (j->rs[k] == RS_TEMP) {
			ntemp++;
		}
	}
	if (ntemp == 0) {
		job_done(r, j);
		return;
	}
	uint64_t delay = backoff_ns(r, j->attempts);
	uint64_t next_us = wall_us() + delay / 1000u;
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] == RS_TEMP) {
			const struct raddr *a = &m->rcpt[j->ri[k]];
			int code = atoi(j->last_temp);
			const char *t = j->last_temp_len > 4 ? j->last_temp + 4 : "";
			char dsn[16];
			dsn_of(code, t, strlen(t), dsn);
			msg_log(m, "to=<%.*s>, relay=%s, delay=%.2f, dsn=%s, status=deferred (%s)",
			        (int)a->len, a->p, hop_name(j), delay_s(m), dsn, j->last_temp);
			r->env.stats->relay_rcpt_deferred++;
		}
	jrec(r, m, JOURNAL_DEFERRED, 0, JOURNAL_ALL_RCPTS, j->attempts, next_us, j->last_temp,
	     j->last_temp_len);
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] != RS_DONE)
			j->rs[k] = RS_PENDING;
	job_schedule(r, j, r->now + delay);
}

/* The attempt is over (final reply, failure, or no route). */
static void
job_end_attempt(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	j->conn = NULL;
	j->state = J_WAIT;
	if (m->deleted) {
		job_done(r, j);
		return;
	}
	/* A wall clock stepped back must not make a message look old. */
	uint64_t now_us = wall_us();
	bool expired = now_us > m->received_us &&
	               now_us - m->received_us >= r->cfg->relay.queue_lifetime / 1000u;
	uint32_t nperm = 0;
	for (uint32_t k = 0; k < j->n; k++) {
		if (j->rs[k] == RS_PENDING || j->rs[k] == RS_RCPT_OK)
			rcpt_temp(j, k, 451, "4.4.0 no final reply", 22);
		if (j->rs[k] == RS_TEMP && expired) {
			char t[RELAY_TEXT_MAX + 64];
			int n =
			    snprintf(t, sizeof(t), "4.4.7 delivery time expired; last error: %s",
			             j->last_temp);
			rcpt_perm(r, j, k, 450, t,
			          (size_t)n < sizeof(t) ? (size_t)n : sizeof(t) - 1);
		}
		if (j->rs[k] == RS_PERM)
			nperm++;
	}
	if (nperm > 0 && m->from_len > 0) {
		if (bounce_start(r, j))
			return; /* job_settle when the bounce is durable */
		/* Not now (spool refused, too many in flight): the failures
		 * stay RS_PERM and the bounce is tried again from the timer. */
		j->state = J_WAIT;
		timer_set(r->wheel, &j->t.n, r->now + RELAY_BOUNCE_RETRY_NS);
		return;
	}
	job_settle(r, j);
}

/* ---- bounces ---- */

/* dsn_build() reads the original's header from the mapping: under the
 * guard, in a function of its own so no local of the caller lives across
 * the sigsetjmp. 0 or -EIO. */
static int __attribute__((noinline))
dsn_build_guarded(char *buf, size_t cap, const struct dsn_info *info, size_t *len)
{
	int err;
	MAP_GUARD(err, *len = dsn_build(buf, cap, info));
	return err;
}

static bool
bounce_start(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	struct rbounce *b = NULL;
	for (unsigned i = 0; i < RELAY_BOUNCES_MAX && b == NULL; i++)
		if (!r->bounces[i].used)
			b = &r->bounces[i];
	if (b == NULL)
		return false;
	struct dsn_rcpt dr[DSN_RCPTS_MAX];
	char status[DSN_RCPTS_MAX][16];
	size_t n = 0;
	int64_t now = time(NULL);
	for (uint32_t k = 0; k < j->n && n < DSN_RCPTS_MAX; k++) {
		if (j->rs[k] != RS_PERM)
			continue;
		const char *t = j->rtext[k] != NULL ? j->rtext[k] : "550 failed";
		size_t tl = strlen(t);
		int code = atoi(t);
		const char *txt = tl > 4 ? t + 4 : "";
		dsn_of(code, txt, strlen(txt), status[n]);
		dr[n] = (struct dsn_rcpt){
		    .addr = m->rcpt[j->ri[k]].p,
		    .addr_len = m->rcpt[j->ri[k]].len,
		    .status = status[n],
		    .remote_mta = j->hop != NULL && j->ep < j->hop->conf.na
		                      ? j->hop->conf.m[j->hop->conf.a[j->ep].member].host
		                      : NULL,
		    .diag = t,
		    .diag_len = tl,
		    .last_attempt = now,
		};
		if (dr[n].remote_mta != NULL && dr[n].remote_mta[0] == '\0')
			dr[n].remote_mta = NULL;
		n++;
	}
	struct dsn_info info = {
	    .hostname = r->cfg->smtp.hostname,
	    .qid = m->qid,
	    .sender = m->from,
	    .sender_len = m->from_len,
	    .arrival = (int64_t)(m->received_us / 1000000u),
	    .now = now,
	    .utf8 = (m->flags & SPOOL_MAIL_SMTPUTF8) != 0,
	    .rcpts = dr,
	    .nrcpt = n,
	    .msg = m->body,
	    .msg_len = m->body_len,
	};
	size_t cap = dsn_size_bound(&info);
	char *buf = malloc(cap);
	size_t len = 0;
	int err = 0;
	/* dsn_build copies the original's header from the mapping. If that
	 * cannot be read, the bounce goes without it. */
	if (buf != NULL)
		err = dsn_build_guarded(buf, cap, &info, &len);
	if (err < 0) {
		log_err("relay: %s: the message is unreadable (I/O error); its bounce goes "
		        "without the original's header",
		        m->qid);
		info.msg = NULL;
		info.msg_len = 0;
		len = dsn_build(buf, cap, &info);
	}
	if (len == 0) {
		/* Cannot happen with a bound from dsn_size_bound; never loop on it. */
		log_err("relay: %s: cannot build the bounce; failures recorded without one",
		        m->qid);
		free(buf);
		job_settle(r, j);
		return true;
	}
	struct sink_open_info oi = {
	    .peer = NULL,
	    .helo = r->cfg->smtp.hostname,
	    .from = "",
	    .from_len = 0,
	    .utf8 = info.utf8,
	    .eightbit = true,
	    .esmtp = true,
	    .wall = now,
	};
	const struct sink *sk = r->env.spool;
	memset(b, 0, sizeof(*b));
	b->r = r;
	b->job = j;
	b->used = true;
	spool_internal_next(r->env.sp);
	b->waiter.verdict = bounce_verdict;
	int rc = sk->ops->tx_open(sk->self, &b->waiter, &oi, &b->tx, b->qid);
	if (rc == 0) {
		rc = sk->ops->tx_rcpt(b->tx, m->from, m->from_len);
		if (rc == 0)
			rc = sk->ops->tx_data(b->tx, buf, len);
		if (rc < 0)
			sk->ops->tx_abort(b->tx);
		else
			rc = sk->ops->tx_commit(b->tx);
	}
	free(buf);
	if (rc < 0) {
		b->used = false;
		log_warn("relay: %s: cannot spool the bounce (%s); trying again in %llus", m->qid,
		         strerror(-rc), RELAY_BOUNCE_RETRY_NS / 1000000000ull);
		return false;
	}
	j->state = J_BOUNCING;
	j->bounce = b;
	r->nbounces++;
	if (rc == SINK_DONE)
		bounce_verdict(&b->waiter, 0);
	return true;
}

static void
bounce_verdict(struct sink_waiter *waiter, int res)
{
	struct rbounce *b = container_of(waiter, struct rbounce, waiter);
	struct relay *r = b->r;
	struct rjob *j = b->job;
	assert(b->used && j->state == J_BOUNCING);
	b->used = false;
	j->bounce = NULL;
	r->nbounces--;
	if (res < 0) {
		log_warn("relay: %s: the bounce was not spooled (%s); trying again in %llus",
		         j->m->qid, strerror(-res), RELAY_BOUNCE_RETRY_NS / 1000000000ull);
		j->state = J_WAIT;
		timer_set(r->wheel, &j->t.n, r->now + RELAY_BOUNCE_RETRY_NS);
		return;
	}
	msg_log(j->m, "sender non-delivery notification: %s", b->qid);
	r->env.stats->relay_bounces++;
	j->state = J_WAIT;
	if (j->m->deleted) {
		job_done(r, j);
		return;
	}
	job_settle(r, j);
}

/* ---- next hops ---- */

static void
ep_make_name(const struct relay_hop_conf *c, unsigned i, char *out, size_t cap)
{
	const struct relay_hop_addr *a = &c->a[i];
	const struct relay_hop_member *m = &c->m[a->member];
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (a->sa.ss_family == AF_UNIX) {
		const struct sockaddr_un *un = (const struct sockaddr_un *)&a->sa;
		snprintf(out, cap, "%s[%s]", m->proto == RELAY_PROTO_LMTP ? "lmtp" : "smtp",
		         un->sun_path);
		return;
	}
	if (a->sa.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&a->sa;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		port = ntohs(in->sin_port);
	} else if (a->sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		port = ntohs(in6->sin6_port);
	}
	snprintf(out, cap, "%s[%s]:%u", m->host[0] != '\0' ? m->host : ip, ip, port);
}

static void
hop_make_name(struct rhop *h)
{
	const struct relay_hop_conf *c = &h->conf;
	for (unsigned i = 0; i < c->na; i++)
		ep_make_name(c, i, h->epname[i], sizeof(h->epname[i]));
	if (c->na == 1)
		snprintf(h->name, sizeof(h->name), "%s", h->epname[0]);
	else
		snprintf(h->name, sizeof(h->name), "%s", c->text);
}

/* The first address of h not marked down (hop->conf.na if none). */
static unsigned
hop_first_up(const struct relay *r, const struct rhop *h)
{
	unsigned i = 0;
	while (i < h->conf.na && h->ep_down[i] > r->now)
		i++;
	return i;
}

/* The operator asked for an attempt now: every address may be tried. */
static void
hop_clear_down(struct rhop *h)
{
	h->retry_at = 0;
	memset(h->ep_down, 0, sizeof(h->ep_down));
}

/* Match our hops to the configuration's (by their canonical text). */
static void
hop_sync(struct relay *r)
{
	const struct relay_conf *rc = &r->cfg->relay;
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		h->gone = true;
	for (size_t i = 0; i < rc->nhops; i++) {
		struct rhop *h = r->hops;
		while (h != NULL && strcmp(h->conf.text, rc->hops[i].text) != 0)
			h = h->next;
		if (h == NULL) {
			h = xcalloc(1, sizeof(*h));
			h->next = r->hops;
			r->hops = h;
		}
		if (h->conf.na != rc->hops[i].na ||
		    memcmp(h->conf.a, rc->hops[i].a, sizeof(h->conf.a)) != 0)
			memset(h->ep_down, 0, sizeof(h->ep_down)); /* re-resolved */
		h->conf = rc->hops[i];
		h->gone = false;
		hop_make_name(h);
		r->hopmap[i] = h;
	}
}

static struct rhop *
hop_for(struct relay *r, const char *domain, size_t len)
{
	int i = relay_route(&r->cfg->relay, domain, len);
	return i < 0 ? NULL : r->hopmap[i];
}

static void
hop_dequeue(struct rjob *j)
{
	struct rhop *h = j->hop;
	if (j->prev != NULL)
		j->prev->next = j->next;
	else
		h->qhead = j->next;
	if (j->next != NULL)
		j->next->prev = j->prev;
	else
		h->qtail = j->prev;
	j->prev = j->next = NULL;
	h->qlen--;
	j->state = J_WAIT;
}

static void
hop_enqueue(struct relay *r, struct rjob *j)
{
	assert(j->state == J_WAIT);
	if (j->hop == NULL || j->hop->gone) {
		/* Routes changed (SIGHUP), or there never was one: route the
		 * job by its first recipient. */
		const struct raddr *a = &j->m->rcpt[j->ri[0]];
		const char *at = memrchr(a->p, '@', a->len);
		j->hop = at != NULL ? hop_for(r, at + 1, a->len - (size_t)(at + 1 - a->p))
		                    : hop_for(r, "", 0);
	}
	if (j->hop == NULL) {
		static const char t[] = "5.4.4 no next hop for this recipient's domain "
		                        "(relay_host, transport_maps)";
		for (uint32_t k = 0; k < j->n; k++)
			if (j->rs[k] == RS_PENDING)
				rcpt_perm(r, j, k, 550, t, sizeof(t) - 1);
		j->attempts++;
		job_end_attempt(r, j);
		return;
	}
	struct rhop *h = j->hop;
	j->state = J_QUEUED;
	j->next = NULL;
	j->prev = h->qtail;
	if (h->qtail != NULL)
		h->qtail->next = j;
	else
		h->qhead = j;
	h->qtail = j;
	h->qlen++;
}

/* The next hop cannot be reached: every job waiting for it is deferred
 * (one attempt each), like Postfix's dead-site handling. */
static void
hop_defer_all(struct relay *r, struct rhop *h, const char *reason)
{
	while (h->qhead != NULL) {
		struct rjob *j = h->qhead;
		hop_dequeue(j);
		j->attempts++;
		job_fail_open(j, reason);
		job_end_attempt(r, j);
	}
}

/* ---- outbound connections ---- */

/*
 * An outbound connection is the ring's side of one struct smtpc, the pure
 * SMTP/LMTP client (engine/smtp_client.c): replies received are fed to it,
 * the commands it writes into `out` are sent, and the body spans it names
 * are sent straight from the spool mapping after them. Its events decide
 * the jobs' results (conn_event). Nothing here knows the protocol.
 */

static void conn_send(struct oconn *c);
static void conn_close(struct oconn *c);
static void conn_starttls(struct oconn *c);
static void conn_after(struct oconn *c);

/* "host[ip]:port" of the address this connection uses, for logs. */
static const char *
conn_name(const struct oconn *c)
{
	return c->ep < c->hop->conf.na ? c->hop->epname[c->ep] : c->hop->name;
}

static uint64_t
conn_ud(const struct oconn *c, enum subop op)
{
	return c->r->env.ud_base | (uint64_t)(c->gen & 0xffffff) << 32 | (uint64_t)op << 24 |
	       c->idx;
}

/* Replies due, or a send in flight: relay_reply_timeout; an idle usable
 * connection: relay_idle_timeout. The deadline moves only when called,
 * which the callers do when something was written or read. */
static void
conn_timer_update(struct oconn *c)
{
	struct relay *r = c->r;
	const struct relay_conf *rc = &r->cfg->relay;
	if (c->st == C_CONNECTING || c->st == C_CLOSING) {
		if (timer_armed(&c->t.n))
			timer_cancel(r->wheel, &c->t.n);
		return;
	}
	unsigned st = smtpc_status(&c->sc);
	uint64_t d = (st & SMTPC_ST_IDLE) && !c->send_inflight && c->st == C_READY
	                 ? rc->idle_timeout
	                 : rc->reply_timeout;
	timer_set(r->wheel, &c->t.n, r->now + d);
}

static void
active_remove(struct oconn *c, struct rjob *j)
{
	for (uint32_t i = 0; i < c->nactive; i++)
		if (c->active[i] == j) {
			c->active[i] = c->active[--c->nactive];
			return;
		}
	assert(!"job not active on this connection");
}

/* The connection failed before the next hop was usable: this address is
 * skipped for retry_min; while another one is left, the next connection
 * goes there at once and the next hop as a whole is not failing. */
static void
conn_down(struct relay *r, struct rhop *h, unsigned ep, const char *reason)
{
	if (ep < h->conf.na)
		h->ep_down[ep] = r->now + r->cfg->relay.retry_min;
	if (hop_first_up(r, h) < h->conf.na) {
		log_info("relay: %s failed; trying the next address of %s",
		         ep < h->conf.na ? h->epname[ep] : "?", h->name);
		return;
	}
	if (h->fail_since == 0)
		h->fail_since = r->now;
	h->retry_at = r->now + r->cfg->relay.retry_min;
	if (h->nready == 0)
		hop_defer_all(r, h, reason);
}

/* The connection fails (lost, timed out, refused to connect): the client
 * core gives every open recipient a temporary result with why, then closes.
 * why starts with its enhanced status ("4.4.2 timeout waiting for ..."). */
static void conn_fail(struct oconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
conn_fail(struct oconn *c, const char *fmt, ...)
{
	if (c->st == C_CLOSING)
		return;
	char reason[RELAY_TEXT_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	log_info("relay: %s", reason + (strncmp(reason, "4.", 2) == 0 ? 6 : 0));
	c->r->env.stats->relay_conn_failed++;
	if (c->st == C_CONNECTING) {
		/* No client core yet. */
		struct relay *r = c->r;
		struct rhop *h = c->hop;
		unsigned ep = c->ep;
		conn_close(c); /* may free c */
		conn_down(r, h, ep, reason);
		return;
	}
	c->failed = true;
	/* The core prefixes its own 4.4.2. */
	smtpc_abort(&c->sc, strncmp(reason, "4.", 2) == 0 ? reason + 6 : reason);
	conn_after(c);
}

static void
conn_release(struct oconn *c)
{
	struct relay *r = c->r;
	struct rhop *h = c->hop;
	if (c->connect_inflight || c->lt_inflight || c->recv_inflight || c->send_inflight)
		return; /* the last CQE releases it */
	if (c->fd >= 0)
		close(c->fd);
	if (c->tls != NULL) {
		relay_tls_end(c->tls);
		free(c->tls);
	}
	for (struct oconn **pp = &h->conns; *pp != NULL; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	h->nconns--;
	r->slots[c->idx] = NULL;
	r->slot_gen[c->idx]++;
	r->free_slots[r->nfree++] = c->idx;
	free(c);
}

static void
conn_close(struct oconn *c)
{
	struct relay *r = c->r;
	if (c->st == C_CLOSING)
		return;
	if (c->st == C_READY || c->st == C_QUIT)
		c->hop->nready--;
	c->st = C_CLOSING;
	if (timer_armed(&c->t.n))
		timer_cancel(r->wheel, &c->t.n);
	/* Wakes the recv (0) and fails a send; a connect in flight ends by
	 * itself or by its linked timeout. */
	if (!c->shut && c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
	c->shut = true;
	conn_release(c);
}

static void
conn_open(struct relay *r, struct rhop *h)
{
	if (r->nfree == 0) {
		if (r->nslots == RELAY_SLOTS_MAX)
			return;
		if (r->nslots == r->slots_cap) {
			uint32_t cap = r->slots_cap ? r->slots_cap * 2 : 64;
			r->slots = realloc(r->slots, cap * sizeof(*r->slots));
			r->slot_gen = realloc(r->slot_gen, cap * sizeof(*r->slot_gen));
			r->free_slots = realloc(r->free_slots, cap * sizeof(*r->free_slots));
			if (r->slots == NULL || r->slot_gen == NULL || r->free_slots == NULL)
				panic("relay: out of memory");
			r->slots_cap = cap;
		}
		r->slot_gen[r->nslots] = 0;
		r->free_slots[r->nfree++] = r->nslots++;
	}
	const struct relay_hop_conf *hc = &h->conf;
	/* In order: the first address that has not failed lately, so a
	 * list is primary then backups and a name's addresses are tried as
	 * the resolver sorted them (RFC 6724). */
	unsigned ep = hop_first_up(r, h);
	if (ep == hc->na)
		return;
	const struct relay_hop_addr *a = &hc->a[ep];
	int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_err("relay: socket for %s: %s", h->epname[ep], strerror(errno));
		h->retry_at = r->now + r->cfg->relay.retry_min;
		return;
	}
	if (a->sa.ss_family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	struct oconn *c = malloc(sizeof(*c));
	if (c == NULL)
		panic("relay: out of memory");
	memset(c, 0, offsetof(struct oconn, in));
	c->r = r;
	c->hop = h;
	c->idx = r->free_slots[--r->nfree];
	c->gen = r->slot_gen[c->idx];
	r->slots[c->idx] = c;
	c->fd = fd;
	c->st = C_CONNECTING;
	c->ep = (uint8_t)ep;
	c->member = a->member;
	c->lmtp = hc->m[a->member].proto == RELAY_PROTO_LMTP;
	c->local = a->sa.ss_family == AF_UNIX;
	c->t.kind = T_CONN;
	c->next = h->conns;
	h->conns = c;
	h->nconns++;
	r->env.stats->relay_connections++;

	uint64_t to = r->cfg->relay.connect_timeout;
	c->cts.tv_sec = (long long)(to / 1000000000u);
	c->cts.tv_nsec = (long long)(to % 1000000000u);
	/* The connect and its linked timeout must go in the same submit: a
	 * submit between them (SQ full) would split the link. */
	if (io_uring_sq_space_left(r->env.ring) < 2)
		io_uring_submit(r->env.ring);
	struct io_uring_sqe *sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&a->sa, a->len);
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_CONNECT));
	sqe->flags |= IOSQE_IO_LINK;
	sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_link_timeout(sqe, &c->cts, 0);
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_LTIMEOUT));
	c->connect_inflight = c->lt_inflight = true;
}

static void
conn_recv(struct oconn *c)
{
	if (c->recv_inflight || c->st == C_CLOSING)
		return;
	struct io_uring_sqe *sqe = c->r->env.get_sqe(c->r->env.ctx);
	if (c->tls != NULL) {
		/* Ciphertext; conn_tls_input() drains it all before the next. */
		assert(c->tls->cin_len < RELAY_TLS_CIN);
		io_uring_prep_recv(sqe, c->fd, c->tls->cin + c->tls->cin_len,
		                   RELAY_TLS_CIN - c->tls->cin_len, 0);
	} else {
		io_uring_prep_recv(sqe, c->fd, c->in, RELAY_IN_SIZE, 0);
	}
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_RECV));
	c->recv_inflight = true;
}

/* relay_tls_write() of mapped bytes under the guard (a function of its
 * own: no caller local lives across the sigsetjmp). 0 or -EIO. */
static int __attribute__((noinline)) tls_write_guarded(struct relay_tls_conn *t, const char *p,
                                                       size_t n, char *err, size_t errlen, int *wr)
{
	int gerr;
	MAP_GUARD(gerr, *wr = relay_tls_write(t, p, n, err, errlen));
	return gerr;
}

/* TLS: move the commands, then the pending body span, into ciphertext
 * (copied by wolfSSL, so the span is done once encrypted). false: failed. */
static bool
conn_encrypt(struct oconn *c)
{
	struct relay_tls_conn *t = c->tls;
	char err[160];
	if (!t->io.done)
		return true;
	for (;;) {
		const char *p;
		size_t n;
		bool span = c->so.len == 0;
		if (!span) {
			p = c->out;
			n = c->so.len;
		} else if (c->span != NULL && c->span_off < c->span_len) {
			p = (const char *)c->span + c->span_off;
			n = c->span_len - c->span_off;
		} else {
			return true;
		}
		size_t room = tls_io_room(&t->io);
		if (room == 0)
			return true; /* after the send in flight */
		if (n > room)
			n = room;
		int wr = 0, gerr = 0;
		if (span) /* mapped bytes: wolfSSL reads them (see MAP_GUARD) */
			gerr = tls_write_guarded(t, p, n, err, sizeof(err), &wr);
		else
			wr = relay_tls_write(t, p, n, err, sizeof(err));
		if (gerr < 0) {
			c->span_bad = true;
			return false;
		}
		if (wr < 0) {
			log_err("relay: TLS write to %s: %s", conn_name(c), err);
			return false;
		}
		if (!span) {
			memmove(c->out, c->out + n, c->so.len - n);
			c->so.len -= n;
		} else {
			c->span_off += n;
		}
	}
}

/* One send in flight at most: the commands in out, then the body span the
 * core asked for (plaintext: one sendmsg of both, the span read from the
 * spool mapping; TLS: the ciphertext they became). */
static void
conn_send(struct oconn *c)
{
	if (c->send_inflight || c->st == C_CLOSING || c->st == C_CONNECTING)
		return;
	struct io_uring_sqe *sqe;
	if (c->tls != NULL) {
		if (!conn_encrypt(c)) {
			/* Not from here (callers still use c): the recv ends
			 * with 0 and the usual failure path runs. */
			shutdown(c->fd, SHUT_RDWR);
			return;
		}
		if (c->tls->io.out_len == 0)
			return;
		sqe = c->r->env.get_sqe(c->r->env.ctx);
		io_uring_prep_send(sqe, c->fd, c->tls->io.out, c->tls->io.out_len, MSG_NOSIGNAL);
		c->send_tls = true;
	} else {
		unsigned n = 0;
		c->send_out = (uint32_t)c->so.len;
		if (c->so.len > 0)
			c->iov[n++] = (struct iovec){c->out, c->so.len};
		c->span_in_send = false;
		if (c->span != NULL && c->span_off < c->span_len) {
			c->iov[n++] = (struct iovec){(void *)(c->span + c->span_off),
			                             c->span_len - c->span_off};
			c->span_in_send = true;
		}
		if (n == 0)
			return;
		memset(&c->msg, 0, sizeof(c->msg));
		c->msg.msg_iov = c->iov;
		c->msg.msg_iovlen = n;
		sqe = c->r->env.get_sqe(c->r->env.ctx);
		io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
		c->send_tls = false;
	}
	io_uring_sqe_set_data64(sqe, conn_ud(c, S_SEND));
	c->send_inflight = true;
	c->r->env.stats->relay_sends++;
}

/* A span is out (sent, or encrypted): the core goes on writing. */
static void
conn_span_done(struct oconn *c)
{
	if (c->span == NULL || c->span_off < c->span_len || (c->tls == NULL && c->so.len > 0))
		return;
	c->span = NULL;
	c->span_len = c->span_off = 0;
	smtpc_body_sent(&c->sc);
}

/* The 220 to STARTTLS: from now on every byte goes through TLS. */
static void
conn_starttls(struct oconn *c)
{
	struct relay *r = c->r;
	char err[160];
	if (r->tlsctx == NULL) {
		/* relay_tls was turned off by a reload while STARTTLS was on
		 * its way: this connection is retried under the new setting. */
		smtpc_tls_failed(&c->sc, "relay_tls changed while starting TLS");
		return;
	}
	c->tls = malloc(sizeof(*c->tls));
	if (c->tls == NULL || relay_tls_start(r->tlsctx, c->tls, c->hop->conf.m[c->member].host,
	                                      r->cfg->relay.tls == RELAY_TLS_VERIFY) < 0) {
		free(c->tls);
		c->tls = NULL;
		smtpc_tls_failed(&c->sc, "cannot start TLS (out of memory, or a host name wolfSSL "
		                         "cannot check)");
		return;
	}
	if (relay_tls_handshake(c->tls, err, sizeof(err)) < 0) {
		char why[RELAY_TEXT_MAX];
		snprintf(why, sizeof(why), "TLS handshake with %.200s failed: %s", conn_name(c),
		         err);
		r->env.stats->relay_tls_failures++;
		smtpc_tls_failed(&c->sc, why);
	}
}

static void
conn_ready(struct oconn *c)
{
	struct rhop *h = c->hop;
	c->st = C_READY;
	c->ever_ready = true;
	h->nready++;
	if (c->ep < h->conf.na)
		h->ep_down[c->ep] = 0;
	if (h->fail_since != 0)
		log_info("relay: %s is reachable again", h->name);
	h->fail_since = 0;
	h->retry_at = 0;
}

/* Transactions one connection takes from its hop's queue at once: with
 * CHUNKING whole transactions stream (RELAY_WINDOW); with DATA each waits a
 * round trip for its 354, so two (one being written, one awaiting its final
 * reply) keep it busy and leave the rest of the queue to other
 * connections; without PIPELINING, one. */
static uint32_t
conn_window(const struct oconn *c)
{
	unsigned ext = smtpc_ext(&c->sc);
	if (!(ext & SMTPC_EXT_PIPELINING))
		return 1;
	return (ext & SMTPC_EXT_CHUNKING) ? RELAY_WINDOW : 2;
}

static void
body_touch(const struct rmsg *m)
{
	volatile uint8_t x = 0;
	for (uint64_t o = 0; o < m->body_len; o += 4096)
		x ^= m->body[o];
	if (m->body_len > 0)
		x ^= m->body[m->body_len - 1];
	(void)x;
}

/* Every page of the body can be read (one byte per page: the stride is the
 * page size). 0 or -EIO. */
static int
body_check(const struct rmsg *m)
{
	int err;
	MAP_GUARD(err, body_touch(m));
	return err;
}

static void
log_unreadable(const struct rmsg *m)
{
	m->seg->keep = true;
	log_err("relay: %s: message UNREADABLE in w%u/%016" PRIx64 ".seg (record at offset %" PRIu64
	        "): I/O error reading the spool; deferred, the segment is kept",
	        m->qid, m->seg->wdir, m->seg->seq, m->off);
}

/* A job whose body cannot be read, before anything was sent for it. */
static void
job_unreadable(struct relay *r, struct rjob *j)
{
	struct rmsg *m = j->m;
	char t[160];
	log_unreadable(m);
	int n = snprintf(t, sizeof(t),
	                 "4.3.0 message unreadable in the spool (I/O error at offset %" PRIu64
	                 " of w%u/%016" PRIx64 ".seg)",
	                 m->off, m->seg->wdir, m->seg->seq);
	j->attempts++;
	for (uint32_t k = 0; k < j->n; k++)
		if (j->rs[k] == RS_PENDING)
			rcpt_temp(j, k, 451, t, (size_t)n < sizeof(t) ? (size_t)n : sizeof(t) - 1);
	job_end_attempt(r, j);
}

/* The body went bad while it was being sent: the connection ends, its
 * jobs are deferred (this one with the reason), the segment is kept. */
static void
body_unreadable(struct oconn *c, struct rjob *j)
{
	struct rmsg *m = j->m;
	log_unreadable(m);
	conn_fail(c,
	          "4.3.0 message unreadable in the spool (I/O error at offset %" PRIu64
	          " of w%u/%016" PRIx64 ".seg)",
	          m->off, m->seg->wdir, m->seg->seq);
}

/* Hand the next jobs of the hop's queue to the client core. */
static void
conn_fill(struct oconn *c)
{
	struct relay *r = c->r;
	struct rhop *h = c->hop;
	while (c->st == C_READY && !r->draining && h->qhead != NULL &&
	       c->nactive < conn_window(c) && (smtpc_status(&c->sc) & SMTPC_ST_READY)) {
		struct rjob *j = h->qhead;
		hop_dequeue(j);
		struct rmsg *m = j->m;
		if (body_check(m) < 0) {
			job_unreadable(r, j);
			continue;
		}
		if (j->trc == NULL) {
			j->trc = xcalloc(j->n, sizeof(*j->trc) + sizeof(*j->tk));
			j->tk = (uint32_t *)(j->trc + j->n);
		}
		uint32_t n = 0;
		for (uint32_t k = 0; k < j->n; k++) {
			if (j->rs[k] == RS_DONE)
				continue; /* finished in an earlier attempt */
			const struct raddr *a = &m->rcpt[j->ri[k]];
			j->trc[n] = (struct smtpc_rcpt){.addr = a->p, .len = a->len};
			j->tk[n++] = k;
		}
		j->state = J_ACTIVE;
		j->conn = c;
		j->ep = c->ep;
		j->attempts++;
		c->active[c->nactive++] = j;
		r->env.stats->relay_attempts++;
		j->tx = (struct smtpc_tx){
		    .from = m->from,
		    .from_len = m->from_len,
		    .rcpt = j->trc,
		    .nrcpt = n,
		    .body = m->body,
		    .body_len = m->body_len,
		    .flags = ((m->flags & SPOOL_MAIL_SMTPUTF8) ? SMTPC_TX_SMTPUTF8 : 0u) |
		             ((m->flags & SPOOL_MAIL_8BITMIME) ? SMTPC_TX_8BITMIME : 0u),
		    .user = j,
		};
		int rc = n > 0 ? smtpc_submit(&c->sc, &j->tx) : -EINVAL;
		if (rc < 0) {
			/* An envelope the core refuses (an address too long, or
			 * with CR/LF): never sendable. */
			static const char t[] = "5.1.3 the envelope cannot be sent (bad address)";
			for (uint32_t k = 0; k < j->n; k++)
				if (j->rs[k] == RS_PENDING)
					rcpt_perm(r, j, k, 553, t, sizeof(t) - 1);
			active_remove(c, j);
			job_end_attempt(r, j);
		}
	}
	/* Submitting only queues: this writes the commands. */
	if (c->st == C_READY)
		smtpc_pump(&c->sc);
}

/* "enh text" of a reply the core reports. */
static size_t
reply_text(const struct smtpc_reply *rp, char *buf, size_t cap)
{
	int n = rp->enh_len > 0 ? snprintf(buf, cap, "%.*s %.*s", (int)rp->enh_len, rp->enh,
	                                   (int)rp->text_len, rp->text)
	                        : snprintf(buf, cap, "%.*s", (int)rp->text_len, rp->text);
	return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* What the client core reports (docs/smtp-client.md, "Events"). */
static void
conn_event(void *arg, const struct smtpc_event *ev)
{
	struct oconn *c = arg;
	struct relay *r = c->r;
	char t[RELAY_TEXT_MAX + 16];
	size_t tl;
	switch (ev->type) {
	case SMTPC_EV_READY:
		conn_ready(c);
		return;
	case SMTPC_EV_TLS:
		c->want_tls = true; /* after the callback: the core must not be re-entered */
		return;
	case SMTPC_EV_BODY:
		c->span_job = ev->tx->user;
		c->span = ev->body;
		c->span_len = ev->body_len;
		c->span_off = 0;
		return;
	case SMTPC_EV_RCPT: {
		struct rjob *j = ev->tx->user;
		tl = reply_text(&ev->reply, t, sizeof(t));
		rcpt_result(r, j, j->tk[ev->rcpt], ev->reply.code, t, tl);
		return;
	}
	case SMTPC_EV_TX: {
		struct rjob *j = ev->tx->user;
		active_remove(c, j);
		job_end_attempt(r, j);
		return;
	}
	case SMTPC_EV_DEFER:
		c->defer = true;
		tl = reply_text(&ev->reply, t, sizeof(t));
		snprintf(c->why, sizeof(c->why), "%.*s",
		         (int)(tl < sizeof(c->why) ? tl : sizeof(c->why) - 1), t);
		if (!c->failed) {
			log_info("relay: %s: %s", conn_name(c), c->why + (tl > 6 ? 6 : 0));
			r->env.stats->relay_conn_failed++;
		}
		return;
	case SMTPC_EV_CLOSE:
		c->core_closed = true;
		return;
	}
}

static void conn_after(struct oconn *c);

/* Copy small body spans into the output (RELAY_INLINE_MAX) and let the core
 * go on writing after each. false: the connection ended (c may be gone). */
static bool
conn_inline_spans(struct oconn *c)
{
	while (c->span != NULL && !c->span_in_send && c->span_off == 0 &&
	       c->span_len <= RELAY_INLINE_MAX && c->so.cap - c->so.len >= c->span_len) {
		if (map_read(c->out + c->so.len, c->span, c->span_len) < 0) {
			body_unreadable(c, c->span_job);
			return false;
		}
		c->so.len += c->span_len;
		c->span = NULL;
		c->span_len = 0;
		smtpc_body_sent(&c->sc); /* may name the next span, or close */
		if (c->core_closed) {
			conn_after(c);
			return false;
		}
	}
	return true;
}

/* After anything the core did: start TLS if it asked, send what it wrote,
 * close when it closed (failing over if it never became usable). */
static void
conn_after(struct oconn *c)
{
	if (c->st == C_CLOSING)
		return;
	if (c->core_closed) {
		struct relay *r = c->r;
		struct rhop *h = c->hop;
		unsigned ep = c->ep;
		bool defer = c->defer;
		char why[sizeof(c->why)];
		memcpy(why, c->why, sizeof(why));
		conn_close(c); /* may free c */
		if (defer)
			conn_down(r, h, ep, why);
		return;
	}
	if (c->want_tls) {
		c->want_tls = false;
		conn_starttls(c);
		if (c->core_closed) {
			conn_after(c);
			return;
		}
	}
	conn_fill(c);
	if (!conn_inline_spans(c))
		return;
	conn_send(c);
	conn_span_done(c); /* TLS: the span may be encrypted already */
	if (c->core_closed) {
		conn_after(c);
		return;
	}
	conn_send(c);
}

/* Ciphertext arrived: finish the handshake (the core then says EHLO
 * again, RFC 3207 4.2), decrypt the replies and feed them. */
static void
conn_tls_input(struct oconn *c)
{
	struct relay *r = c->r;
	struct relay_tls_conn *t = c->tls;
	char err[160];
	if (!t->io.done) {
		int h = relay_tls_handshake(t, err, sizeof(err));
		if (h < 0) {
			char why[RELAY_TEXT_MAX];
			snprintf(why, sizeof(why), "TLS handshake with %.200s failed: %s",
			         conn_name(c), err);
			r->env.stats->relay_tls_failures++;
			smtpc_tls_failed(&c->sc, why);
			return;
		}
		if (h == 0)
			return;
		r->env.stats->relay_tls_handshakes++;
		log_info("relay: TLS connection established to %s: %s with cipher %s%s",
		         conn_name(c), t->version, t->cipher,
		         r->cfg->relay.tls == RELAY_TLS_VERIFY ? " (certificate verified)"
		                                               : " (certificate not verified)");
		smtpc_tls_done(&c->sc, true);
		if (c->core_closed)
			return;
	}
	for (;;) {
		long n = relay_tls_read(t, c->in, RELAY_IN_SIZE, err, sizeof(err));
		if (n == 0)
			return;
		if (n < 0) {
			smtpc_abort(&c->sc, "TLS error from the next hop");
			log_info("relay: TLS error from %s: %s", conn_name(c), err);
			return;
		}
		smtpc_feed(&c->sc, c->in, (size_t)n);
		if (c->core_closed)
			return;
	}
}

/* ---- completions ---- */

void
relay_on_cqe(struct relay *r, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint32_t idx = (uint32_t)ud & 0xffffff;
	enum subop op = (enum subop)(((uint32_t)ud >> 24) & 0xff);
	uint32_t gen = (uint32_t)(ud >> 32) & 0xffffff;
	if (idx >= r->nslots || r->slots[idx] == NULL || (r->slot_gen[idx] & 0xffffff) != gen)
		return; /* a slot's previous occupant: nothing of it is left */
	struct oconn *c = r->slots[idx];
	int res = cqe->res;
	switch (op) {
	case S_LTIMEOUT:
		c->lt_inflight = false;
		break;
	case S_CONNECT: {
		c->connect_inflight = false;
		if (c->st == C_CLOSING)
			break;
		if (res < 0) {
			conn_fail(c, "4.4.1 connect to %s: %s", conn_name(c),
			          res == -ECANCELED ? "Connection timed out" : strerror(-res));
			return;
		}
		enum smtpc_tls pol = SMTPC_TLS_NONE;
		if (!c->local && r->cfg->relay.tls == RELAY_TLS_MAY)
			pol = SMTPC_TLS_MAY;
		else if (!c->local && r->cfg->relay.tls == RELAY_TLS_ENCRYPT)
			pol = SMTPC_TLS_ENCRYPT;
		else if (!c->local && r->cfg->relay.tls == RELAY_TLS_VERIFY)
			pol = SMTPC_TLS_VERIFY;
		struct smtpc_conf sconf = {
		    .helo = r->cfg->smtp.hostname, .lmtp = c->lmtp, .tls = pol};
		static const struct smtpc_ops ops = {.event = conn_event};
		c->so = (struct smtpc_out){.buf = c->out, .len = 0, .cap = RELAY_OUT_SIZE};
		if (smtpc_init(&c->sc, &sconf, &c->so, &ops, c) < 0) {
			/* Only a hostname the client core cannot say. */
			conn_fail(c, "4.3.5 cannot speak to %s: bad smtp hostname for EHLO",
			          conn_name(c));
			return;
		}
		c->st = C_GREETING;
		conn_recv(c);
		conn_timer_update(c);
		return;
	}
	case S_RECV:
		c->recv_inflight = false;
		if (c->st == C_CLOSING)
			break;
		if (res <= 0) {
			if (c->span_bad && c->span_job != NULL) {
				body_unreadable(c, c->span_job);
				return;
			}
			if (res == 0 && c->nactive == 0 &&
			    (c->st == C_QUIT || (smtpc_status(&c->sc) & SMTPC_ST_IDLE))) {
				smtpc_abort(&c->sc,
				            NULL); /* an idle connection the next hop closed */
				conn_after(c);
				return;
			}
			conn_fail(c, "4.4.2 lost connection with %s while waiting for %s%s%s",
			          conn_name(c), smtpc_waiting_for(&c->sc), res < 0 ? ": " : "",
			          res < 0 ? strerror(-res) : "");
			return;
		}
		if (c->tls != NULL) {
			c->tls->cin_len += (uint32_t)res;
			conn_tls_input(c);
		} else {
			smtpc_feed(&c->sc, c->in, (size_t)res);
		}
		conn_after(c);
		if (r->slots[idx] != c || r->slot_gen[idx] != gen || c->st == C_CLOSING)
			return;
		conn_recv(c);
		conn_timer_update(c);
		return;
	case S_SEND:
		c->send_inflight = false;
		if (c->st == C_CLOSING)
			break;
		if (res == -EFAULT && !c->send_tls && c->span != NULL && c->span_job != NULL) {
			/* The kernel could not read the span from the mapping. */
			body_unreadable(c, c->span_job);
			return;
		}
		if (res < 0) {
			conn_fail(c, "4.4.2 lost connection with %s while sending: %s",
			          conn_name(c), strerror(-res));
			return;
		}
		c->span_in_send = false;
		if (c->send_tls) {
			tls_io_sent(&c->tls->io, (size_t)res);
		} else {
			size_t sent = (size_t)res;
			size_t o = sent < c->send_out ? sent : c->send_out;
			memmove(c->out, c->out + o, c->so.len - o);
			c->so.len -= o;
			c->span_off += sent - o;
		}
		conn_span_done(c);
		conn_after(c);
		if (r->slots[idx] != c || r->slot_gen[idx] != gen || c->st == C_CLOSING)
			return;
		conn_timer_update(c);
		return;
	}
	if (c->st == C_CLOSING)
		conn_release(c);
}

static void
relay_timer(struct timer_node *n, void *arg)
{
	struct relay *r = arg;
	struct rtimer *t = container_of(n, struct rtimer, n);
	if (t->kind == T_JOB) {
		struct rjob *j = container_of(t, struct rjob, t);
		if (j->state != J_WAIT || j->m->held)
			return;
		bool perm = false;
		for (uint32_t k = 0; k < j->n; k++)
			perm |= j->rs[k] == RS_PERM;
		if (perm)
			job_end_attempt(r, j); /* the bounce is due again */
		else
			hop_enqueue(r, j);
		return;
	}
	struct oconn *c = container_of(t, struct oconn, t);
	if (c->st == C_READY && (smtpc_status(&c->sc) & SMTPC_ST_IDLE) && !c->send_inflight &&
	    c->nactive == 0) {
		/* Idle for relay_idle_timeout. */
		c->st = C_QUIT; /* still counted in nready until closed */
		smtpc_quit(&c->sc);
		smtpc_pump(&c->sc);
		conn_after(c);
		if (c->st == C_QUIT)
			timer_set(r->wheel, &c->t.n, r->now + 2000000000ull);
		return;
	}
	if (c->st == C_QUIT) {
		conn_close(c);
		return;
	}
	conn_fail(c, "4.4.2 timeout waiting for %s from %s", smtpc_waiting_for(&c->sc),
	          conn_name(c));
}

/* ---- the loop's side ---- */

static void
hop_pump(struct relay *r, struct rhop *h)
{
	uint32_t busy = 0;
	for (struct oconn *c = h->conns, *cn; c != NULL; c = cn) {
		cn = c->next; /* a QUIT below may close (and free) c */
		if (c->st == C_READY) {
			/* The deadline moves only when something was queued: a
			 * next hop that stays silent must meet its timeout even
			 * though this runs every loop iteration. */
			uint32_t n0 = c->nactive;
			conn_fill(c);
			conn_send(c);
			if (c->nactive != n0)
				conn_timer_update(c);
		}
		/* Busy: with CHUNKING a connection streams up to RELAY_WINDOW
		 * transactions; with DATA each one waits a round trip for its
		 * 354, so one transaction already keeps it busy. */
		bool chunking = c->st == C_READY && (smtpc_ext(&c->sc) & SMTPC_EXT_CHUNKING);
		if (c->st != C_READY || c->nactive >= (chunking ? RELAY_WINDOW / 2 : 1))
			busy++;
		else if (r->draining && c->nactive == 0 && !c->send_inflight &&
		         (smtpc_status(&c->sc) & SMTPC_ST_IDLE))
			relay_timer(&c->t.n, r); /* idle while draining: QUIT now */
	}
	/* Open one more connection per loop iteration while jobs wait and
	 * every connection is busy or opening, up to relay_connections. A
	 * failing next hop is also probed every retry_min with nothing queued,
	 * so relay_defer_after's 451 ends as soon as it is back, not only when
	 * the next retry of some message comes (up to retry_max later). */
	bool want = h->qhead != NULL || (h->fail_since != 0 && h->nconns == 0);
	if (want && !r->draining && !h->gone && r->now >= h->retry_at && busy == h->nconns &&
	    h->nconns < r->cfg->relay.connections && h->nconns - h->nready == 0)
		conn_open(r, h);
}

static void
backpressure_update(struct relay *r)
{
	const struct relay_conf *rc = &r->cfg->relay;
	uint64_t hw = rc->high_water / (r->env.nworkers ? r->env.nworkers : 1);
	if (rc->high_water > 0 && !r->over_high_water && r->backlog_bytes > hw) {
		r->over_high_water = true;
		log_warn("relay: backlog %" PRIu64 " bytes in %" PRIu64 " messages is over this "
		         "worker's share of spool_high_water (%" PRIu64
		         "): new mail gets 452 4.3.1",
		         r->backlog_bytes, r->backlog_msgs, hw);
	} else if (r->over_high_water && (rc->high_water == 0 || r->backlog_bytes <= hw / 10 * 9)) {
		r->over_high_water = false;
		log_info("relay: backlog %" PRIu64 " bytes is below spool_high_water again: "
		         "accepting mail",
		         r->backlog_bytes);
	}
	bool deferring = false;
	const char *name = NULL;
	if (rc->defer_after > 0)
		for (struct rhop *h = r->hops; h != NULL; h = h->next)
			if (!h->gone && h->fail_since != 0 &&
			    r->now - h->fail_since >= rc->defer_after) {
				deferring = true;
				name = h->name;
			}
	if (deferring != r->deferring) {
		if (deferring)
			log_warn(
			    "relay: %s has been failing for relay_defer_after or longer: new mail "
			    "gets 451 4.3.0",
			    name);
		else
			log_info("relay: no next hop is failing: accepting mail");
	}
	r->deferring = deferring;
}

/* Queue (or schedule) every job of a newly loaded message. A job may end
 * at once (no route): the message is freed only when its last job ends,
 * so each job pointer stays valid until its own turn. */
static void
msg_start(struct relay *r, struct rmsg *m, uint64_t next_us)
{
	struct rjob *js[CONFIG_MAX_HOPS + 1];
	uint32_t n = m->njobs;
	bool held = m->held;
	for (uint32_t i = 0; i < n; i++)
		js[i] = &m->jobs[i];
	uint64_t wall = wall_us();
	for (uint32_t i = 0; i < n; i++) {
		if (held)
			continue;
		if (next_us > wall)
			job_schedule(r, js[i], r->now + (next_us - wall) * 1000u);
		else
			hop_enqueue(r, js[i]);
	}
}

int
relay_admit(void *arg)
{
	struct relay *r = arg;
	if (r->over_high_water) {
		r->env.stats->relay_refused_high_water++;
		return -ENOSPC;
	}
	if (r->deferring) {
		r->env.stats->relay_refused_hop_down++;
		return -EBUSY;
	}
	return 0;
}

void
relay_poll(struct relay *r, uint64_t now)
{
	r->now = now;
	timer_expire(r->wheel, now, relay_timer, r);
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		hop_pump(r, h);
	backpressure_update(r);
	/* One write per segment with new records, once per iteration. */
	struct rseg *d = r->dirty;
	r->dirty = NULL;
	while (d != NULL) {
		struct rseg *next = d->next_dirty;
		d->dirty = false;
		jflush(r, d);
		d = next;
	}
}

uint64_t
relay_wait_ns(const struct relay *r, uint64_t max)
{
	return timer_wait_ns(r->wheel, max);
}

void
relay_record_durable(void *arg, uint64_t seq, uint64_t off, uint64_t rec_len)
{
	struct relay *r = arg;
	(void)rec_len;
	struct rseg *s = seg_find(r, r->env.worker, seq);
	if (s != NULL && s->map == NULL)
		seg_remap(r, s);
	if (s == NULL)
		s = seg_map(r, r->env.worker, seq);
	if (s == NULL) {
		/* Could not map it (logged): remember the segment as kept so
		 * it is never deleted; the message waits for the next start. */
		s = seg_new(r, r->env.worker, seq, NULL, 0);
		s->keep = true;
		return;
	}
	struct rmsg *m = s->map != NULL ? msg_load(r, s, off, NULL) : NULL;
	if (m == NULL) {
		s->keep = true; /* logged by msg_load or above */
		return;
	}
	r->env.stats->relay_messages_queued++;
	msg_start(r, m, 0);
}

/* ---- start-up: what the spool holds ---- */

struct scan_rec {
	uint64_t off;
	struct journal_msg_state st;
};

struct scan_ctx {
	struct scan_rec *v;
	size_t n, cap;
	uint64_t maplen;
	const uint8_t *map;
	uint64_t unusable; /* valid records whose envelope cannot be parsed */
};

static int
scan_rec_cb(void *arg, uint64_t off, const struct spool_hdr *h, const uint8_t *rec)
{
	struct scan_ctx *sc = arg;
	struct spool_envelope env;
	if (spool_env_parse(rec + SPOOL_HDR_SIZE, h->env_len, &env) < 0) {
		log_err("relay: %s: malformed envelope at offset %" PRIu64 "; left in the spool",
		        h->qid, off);
		sc->unusable++;
		return 0;
	}
	if (sc->n == sc->cap) {
		sc->cap = sc->cap ? sc->cap * 2 : 256;
		sc->v = realloc(sc->v, sc->cap * sizeof(*sc->v));
		if (sc->v == NULL)
			panic("relay: out of memory");
	}
	struct scan_rec *sr = &sc->v[sc->n++];
	memset(sr, 0, sizeof(*sr));
	sr->off = off;
	sr->st.nrcpt = env.nrcpt;
	sr->st.done = xcalloc(env.nrcpt ? env.nrcpt : 1, 1);
	return 0;
}

static int
scan_jnl_cb(void *arg, size_t off, const struct journal_rec *jr)
{
	struct scan_ctx *sc = arg;
	(void)off;
	size_t lo = 0, hi = sc->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (sc->v[mid].off < jr->rec_off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < sc->n && sc->v[lo].off == jr->rec_off)
		journal_state_apply(&sc->v[lo].st, jr);
	return 0;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Read one segment and its journal; queue what is not finished. */
static void
recover_seg(struct relay *r, unsigned wdir, uint64_t seq, uint64_t *msgs, uint64_t *held)
{
	struct rseg *s = seg_map(r, wdir, seq);
	if (s == NULL)
		return;
	/* Not closed until every record is loaded: a message that finishes
	 * at once (no route, null sender) must not let the segment go while
	 * its other records are still being read. */
	struct scan_ctx sc = {.map = s->map, .maplen = s->maplen};
	struct spool_scan res;
	/* Scanned from a copy read with pread (recovery runs before the event
	 * loop): a bad sector is then damage for its bytes, not a SIGBUS. The
	 * messages are then read from the mapping, under map_guard. */
	char spath[CONFIG_PATH_MAX + 64];
	seg_path(r, s, "seg", spath, sizeof(spath));
	uint64_t bad = 0, bad_off = 0;
	uint8_t *copy = NULL;
	int sfd = open(spath, O_RDONLY | O_CLOEXEC);
	if (sfd >= 0) {
		copy = spool_read_file(sfd, s->maplen, &bad, &bad_off);
		close(sfd);
	}
	if (copy == NULL) {
		log_err("relay: reading %s: %s; left for the next start", spath, strerror(errno));
		s->keep = true;
		s->closed = true;
		return;
	}
	spool_seg_scan(copy, s->maplen, scan_rec_cb, NULL, &sc, &res);
	free(copy);
	if (bad > 0) {
		log_err("relay: %s: %" PRIu64 " bytes unreadable (I/O error), the first at offset "
		        "%" PRIu64 "; the segment is kept",
		        spath, bad, bad_off);
		s->keep = true;
	}
	/* Never deleted while any of its bytes was not read as a record:
	 * a damaged range may hold acknowledged mail only a person can
	 * recover (the spool set its bytes aside and logged it), and a
	 * record that cannot be loaded is still mail. The records around
	 * the damage are delivered as usual. */
	if (res.damaged > 0 || res.end != SPOOL_SCAN_CLEAN || sc.unusable > 0) {
		s->keep = true;
		log_err("relay: w%u/%016" PRIx64 ".seg: %" PRIu64 " damaged range%s (%" PRIu64
		        " bytes)%s%s, %" PRIu64 " unusable records: the segment is kept, never "
		        "removed by ringmxd (see ringmx-spool verify); its %zu other records are "
		        "delivered",
		        wdir, seq, res.damaged, res.damaged == 1 ? "" : "s", res.damaged_bytes,
		        res.end == SPOOL_SCAN_TORN ? ", an incomplete last record" : "",
		        res.end == SPOOL_SCAN_DAMAGED ? " reaching the end" : "", sc.unusable,
		        sc.n);
	}

	char path[CONFIG_PATH_MAX + 64];
	seg_path(r, s, "jnl", path, sizeof(path));
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		struct stat st;
		if (fstat(fd, &st) == 0 && st.st_size > 0) {
			size_t len = (size_t)st.st_size;
			uint8_t *buf = malloc(len);
			ssize_t got = buf != NULL ? pread(fd, buf, len, 0) : -1;
			if (got > 0) {
				size_t end = journal_scan(buf, (size_t)got, scan_jnl_cb, &sc);
				s->jpos = end;
				if (end < (size_t)got) {
					log_warn("relay: %s: torn tail at %zu (a crash while "
					         "appending); "
					         "truncated",
					         path, end);
					if (ftruncate(fd, (off_t)end) < 0)
						log_err("relay: truncate %s: %s", path,
						        strerror(errno));
				}
			}
			free(buf);
		}
		close(fd);
	}
	for (size_t i = 0; i < sc.n; i++) {
		struct scan_rec *sr = &sc.v[i];
		if (!journal_state_finished(&sr->st)) {
			struct rmsg *m = msg_load(r, s, sr->off, &sr->st);
			if (m != NULL) {
				(*msgs)++;
				if (m->held)
					(*held)++;
				msg_start(r, m, sr->st.next_us);
			} else {
				s->keep = true; /* unfinished and unusable (logged) */
			}
		}
		free(sr->st.done);
	}
	free(sc.v);
	s->closed = true;
	seg_maybe_delete(r, s);
}

static void
recover_dir(struct relay *r, unsigned wdir, bool own, uint64_t *msgs, uint64_t *held,
            uint64_t *segs)
{
	char dir[CONFIG_PATH_MAX + 16];
	snprintf(dir, sizeof(dir), "%s/w%u", r->dir, wdir);
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	uint64_t *seqs = NULL, *jseqs = NULL;
	size_t n = 0, cap = 0, nj = 0, jcap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;
		if (spool_seg_name_parse(de->d_name, &seq) == 0) {
			if (own && seq >= r->env.first_seq)
				continue; /* the spool's, in use */
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				seqs = realloc(seqs, cap * sizeof(*seqs));
				if (seqs == NULL)
					panic("relay: out of memory");
			}
			seqs[n++] = seq;
		} else if (journal_name_parse(de->d_name, &seq) == 0) {
			if (nj == jcap) {
				jcap = jcap ? jcap * 2 : 64;
				jseqs = realloc(jseqs, jcap * sizeof(*jseqs));
				if (jseqs == NULL)
					panic("relay: out of memory");
			}
			jseqs[nj++] = seq;
		}
	}
	closedir(d);
	if (n > 1)
		qsort(seqs, n, sizeof(*seqs), cmp_u64);
	/* A journal whose segment is gone: the segment was deleted and the
	 * crash came before its journal went. */
	for (size_t i = 0; i < nj; i++) {
		if ((n > 0 && bsearch(&jseqs[i], seqs, n, sizeof(*seqs), cmp_u64) != NULL) ||
		    (own && jseqs[i] >= r->env.first_seq))
			continue;
		char path[CONFIG_PATH_MAX + 64];
		snprintf(path, sizeof(path), "%s/%016" PRIx64 ".jnl", dir, jseqs[i]);
		if (unlink(path) == 0)
			log_info(
			    "relay: removed %s (its segment was already delivered and removed)",
			    path);
	}
	for (size_t i = 0; i < n; i++)
		recover_seg(r, wdir, seqs[i], msgs, held);
	*segs += n;
	free(seqs);
	free(jseqs);
}

int
relay_open(struct relay **out, const struct config *cfg, const struct relay_env *env, char *err,
           size_t errlen)
{
	struct relay *r = xcalloc(1, sizeof(*r));
	r->env = *env;
	r->cfg = cfg;
	r->now = 1;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	r->now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	r->wheel = xcalloc(1, sizeof(*r->wheel));
	timer_wheel_init(r->wheel, r->now);
	if (snprintf(r->dir, sizeof(r->dir), "%s", cfg->spool_dir) >= (int)sizeof(r->dir)) {
		snprintf(err, errlen, "relay: spool_dir too long");
		free(r->wheel);
		free(r);
		return -ENAMETOOLONG;
	}
	hop_sync(r);
	r->tlsctx = relay_tls_ctx_new(&cfg->relay, err, errlen);
	if (r->tlsctx == NULL && err[0] != '\0') {
		free(r->wheel);
		free(r);
		return -EINVAL;
	}
	r->tls_mode = cfg->relay.tls;
	snprintf(r->tls_ca, sizeof(r->tls_ca), "%s", cfg->relay.tls_ca_file);
	map_guard_install();

	uint64_t msgs = 0, held = 0, segs = 0;
	recover_dir(r, env->worker, true, &msgs, &held, &segs);
	/* Directories of workers that no longer exist (workers was lowered):
	 * worker i adopts w<M> for every M >= workers with M % workers == i. */
	DIR *d = opendir(r->dir);
	if (d != NULL) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			char *end;
			if (de->d_name[0] != 'w' || de->d_name[1] < '0' || de->d_name[1] > '9')
				continue;
			unsigned long m = strtoul(de->d_name + 1, &end, 10);
			if (*end != '\0' || m < env->nworkers || m % env->nworkers != env->worker)
				continue;
			recover_dir(r, (unsigned)m, false, &msgs, &held, &segs);
		}
		closedir(d);
	}
	if (msgs > 0 || segs > 0)
		log_info("relay: %" PRIu64 " messages (%" PRIu64 " bytes) to deliver from %" PRIu64
		         " segments, %" PRIu64 " on hold",
		         msgs, r->backlog_bytes, segs, held);
	*out = r;
	return 0;
}

void
relay_set_conf(struct relay *r, const struct config *cfg)
{
	r->cfg = cfg;
	hop_sync(r);
	/* Jobs queued for a next hop that is gone are routed again now (the
	 * gone hop opens no connection); waiting ones are when their timer
	 * fires, active ones when their attempt ends. */
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		while (h->gone && h->qhead != NULL) {
			struct rjob *j = h->qhead;
			hop_dequeue(j);
			hop_enqueue(r, j);
		}
	/* A new client context when relay_tls or the CA file changed (or on
	 * every reload for verify: the CA bundle may have been replaced).
	 * Sessions in progress keep the old one (wolfSSL counts references). */
	if (cfg->relay.tls != r->tls_mode || cfg->relay.tls == RELAY_TLS_VERIFY ||
	    strcmp(cfg->relay.tls_ca_file, r->tls_ca) != 0) {
		char err[CONFIG_ERR_MAX];
		struct relay_tls_ctx *n = relay_tls_ctx_new(&cfg->relay, err, sizeof(err));
		if (n == NULL && err[0] != '\0') {
			log_err("relay: %s; keeping the previous TLS settings", err);
			return;
		}
		relay_tls_ctx_free(r->tlsctx);
		r->tlsctx = n;
		r->tls_mode = cfg->relay.tls;
		snprintf(r->tls_ca, sizeof(r->tls_ca), "%s", cfg->relay.tls_ca_file);
	}
}

/* ---- operator commands ---- */

static bool
cmd_apply(struct relay *r, struct relay_cmd *cmd, struct rmsg *m)
{
	switch (cmd->op) {
	case RELAY_CMD_HOLD:
		if (m->held)
			return true;
		m->held = true;
		jrec(r, m, JOURNAL_HOLD, 0, JOURNAL_ALL_RCPTS, 0, 0, NULL, 0);
		if (jsync(r, m->seg) < 0)
			atomic_fetch_add(&cmd->failed, 1);
		for (uint32_t i = 0; i < m->njobs; i++) {
			struct rjob *j = &m->jobs[i];
			if (j->state == J_QUEUED)
				hop_dequeue(j);
			if (j->state == J_WAIT && timer_armed(&j->t.n))
				timer_cancel(r->wheel, &j->t.n);
		}
		msg_log(m, "held by the operator");
		return true;
	case RELAY_CMD_RELEASE:
		if (!m->held)
			return true;
		m->held = false;
		jrec(r, m, JOURNAL_RELEASE, 0, JOURNAL_ALL_RCPTS, 0, 0, NULL, 0);
		if (jsync(r, m->seg) < 0)
			atomic_fetch_add(&cmd->failed, 1);
		msg_log(m, "released by the operator");
		break; /* and queue it now, as a flush */
	case RELAY_CMD_DELETE: {
		m->deleted = true;
		jrec(r, m, JOURNAL_DELETE, 0, JOURNAL_ALL_RCPTS, 0, 0, NULL, 0);
		if (jsync(r, m->seg) < 0)
			atomic_fetch_add(&cmd->failed, 1);
		msg_log(m, "deleted by the operator");
		struct rjob *js[CONFIG_MAX_HOPS + 1];
		uint32_t n = 0;
		for (uint32_t i = 0; i < m->njobs; i++)
			if (m->jobs[i].state == J_WAIT || m->jobs[i].state == J_QUEUED)
				js[n++] = &m->jobs[i];
		/* Active and bouncing jobs end when their attempt does. */
		for (uint32_t i = 0; i < n; i++) {
			if (js[i]->state == J_QUEUED)
				hop_dequeue(js[i]);
			job_done(r, js[i]);
		}
		return true;
	}
	case RELAY_CMD_FLUSH:
		if (m->held)
			return cmd->qid[0] != '\0';
		break;
	}
	struct rjob *js[CONFIG_MAX_HOPS + 1];
	uint32_t n = 0;
	for (uint32_t i = 0; i < m->njobs; i++)
		if (m->jobs[i].state == J_WAIT)
			js[n++] = &m->jobs[i];
	for (uint32_t i = 0; i < n; i++) {
		if (timer_armed(&js[i]->t.n))
			timer_cancel(r->wheel, &js[i]->t.n);
		/* The operator asks for an attempt now: a next hop that
		 * failed recently may be connected to at once. */
		if (js[i]->hop != NULL)
			hop_clear_down(js[i]->hop);
		relay_timer(&js[i]->t.n, r);
	}
	return true;
}

void
relay_apply_cmds(struct relay *r, struct relay_cmdset *set)
{
	for (unsigned i = 0; i < set->n; i++) {
		struct relay_cmd *cmd = &set->cmd[i];
		unsigned matched = 0;
		if (cmd->op == RELAY_CMD_FLUSH && cmd->qid[0] == '\0')
			for (struct rhop *h = r->hops; h != NULL; h = h->next)
				hop_clear_down(h);
		for (struct rseg *s = r->segs, *sn; s != NULL; s = sn) {
			sn = s->next; /* a delete may free the segment */
			for (struct rmsg *m = s->msgs, *mn; m != NULL; m = mn) {
				mn = m->next;
				if (cmd->qid[0] != '\0' && strcmp(cmd->qid, m->qid) != 0)
					continue;
				if (m->deleted)
					continue;
				if (cmd_apply(r, cmd, m))
					matched++;
				if (cmd->qid[0] != '\0')
					break;
			}
		}
		atomic_fetch_add(&cmd->matched, matched);
	}
	atomic_fetch_add(&set->acks, 1);
}

/* ---- shutdown ---- */

void
relay_drain(struct relay *r, bool force)
{
	r->draining = true;
	for (struct rhop *h = r->hops; h != NULL; h = h->next)
		for (struct oconn *c = h->conns, *cn; c != NULL; c = cn) {
			cn = c->next;
			if (force && c->st != C_CLOSING)
				conn_fail(c, "4.3.2 ringmxd is shutting down");
			else if (c->st == C_READY && c->nactive == 0 &&
			         (smtpc_status(&c->sc) & SMTPC_ST_IDLE))
				relay_timer(&c->t.n, r); /* idle: QUIT now */
			else if (c->st == C_CONNECTING || c->st == C_GREETING)
				conn_close(c);
		}
}

bool
relay_idle(const struct relay *r)
{
	for (const struct rhop *h = r->hops; h != NULL; h = h->next)
		if (h->nconns > 0)
			return false;
	return r->nbounces == 0;
}

void
relay_log_backlog(const struct relay *r)
{
	log_info("relay: backlog %" PRIu64 " messages, %" PRIu64 " bytes", r->backlog_msgs,
	         r->backlog_bytes);
}

void
relay_close(struct relay *r)
{
	if (r == NULL)
		return;
	for (struct rhop *h = r->hops, *hn; h != NULL; h = hn) {
		hn = h->next;
		for (struct oconn *c = h->conns, *cn; c != NULL; c = cn) {
			cn = c->next;
			if (c->fd >= 0)
				close(c->fd);
			if (c->tls != NULL) {
				relay_tls_end(c->tls);
				free(c->tls);
			}
			free(c);
		}
		free(h);
	}
	for (struct rseg *s = r->segs, *sn; s != NULL; s = sn) {
		sn = s->next;
		jsync(r, s);
		if (s->jfd >= 0)
			close(s->jfd);
		for (struct rmsg *m = s->msgs, *mn; m != NULL; m = mn) {
			mn = m->next;
			msg_destroy(m);
		}
		if (s->map != NULL)
			munmap(s->map, s->maplen);
		free(s);
	}
	relay_tls_ctx_free(r->tlsctx);
	free(r->slots);
	free(r->slot_gen);
	free(r->free_slots);
	free(r->wheel);
	free(r);
}
