/*
 * tools/load.h - shared declarations of ringmx-load, the io_uring SMTP load client.
 *
 * Ownership: ringmx-load (issue 4; TLS from issue 5). Included only by
 * tools/ringmx-load.c (options, threads, report) and tools/load_*.c (load_engine.c:
 * a worker's ring and loop, load_conn.c its connections, load_tx.c its messages, with
 * load_internal.h between them; load_tls.c: wolfSSL over memory I/O; load_msg.c: body
 * templates, address patterns, FNV-1a; load_hist.c: latency histogram). wolfSSL types
 * appear here only as opaque pointers, so only load_tls.c includes wolfSSL.
 * Nothing in engine/ depends on it; the SMTP dialogue is the client core's
 * (engine/smtp/smtp_client.h, through load_internal.h).
 *
 * Invariants: everything here is set up by the main thread before the worker threads
 * start and is read-only afterwards, except struct load_thread, which each worker owns
 * (the main thread reads only the pub_* fields, with relaxed atomics, until join).
 */
#ifndef RINGMX_TOOLS_LOAD_H
#define RINGMX_TOOLS_LOAD_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tls_io.h"

#define LOAD_MAX_TARGETS 64
#define LOAD_MAX_THREADS 256
#define LOAD_MAX_RCPTS 1000
#define LOAD_MAX_CONNECTIONS 1000000
#define LOAD_MAX_SIZE ((uint64_t)1 << 30)
#define LOAD_SIZE_VARIANTS 64 /* --size MIN-MAX picks among this many precomputed sizes */
#define LOAD_PATTERN_MAX 200  /* --from/--to pattern length, so command buffers stay bounded */
#define LOAD_EHLO_MAX 200

enum load_proxy { LOAD_PROXY_NONE, LOAD_PROXY_V1, LOAD_PROXY_V2 };
enum load_tls_mode { LOAD_TLS_NONE, LOAD_TLS_STARTTLS, LOAD_TLS_IMPLICIT };

struct load_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[80]; /* as given on the command line, for messages */
};

/* "user%d@example.test" split around its single %d (none is allowed). */
struct load_pattern {
	char pre[LOAD_PATTERN_MAX + 1];
	char post[LOAD_PATTERN_MAX + 1];
	size_t pre_len, post_len;
	bool has_num;
};

struct load_opts {
	unsigned threads;
	unsigned connections;
	uint64_t messages;     /* 0 with duration > 0 */
	double duration;       /* seconds; 0 = run for --messages */
	unsigned per_conn;     /* 0 = unlimited */
	uint64_t size_min, size_max;
	unsigned rcpts;
	struct load_pattern from, to;
	bool pipelining;
	bool bdat;
	double rate;           /* messages/s over all threads; 0 = closed loop */
	enum load_proxy proxy;
	enum load_tls_mode tls;
	int tls_version;       /* 0: negotiate 1.2 or 1.3; 12 or 13: only that one */
	bool tls_resume;       /* keep each slot's session and offer it on reconnect */
	const char *tls_verify;/* CA file; NULL = no certificate verification */
	const char *sni;
	const char *tls_ciphers;
	const char *tls_groups;
	struct load_addr targets[LOAD_MAX_TARGETS];
	unsigned ntargets;
	bool source_set;       /* --source: bind to src_base .. src_base+src_count-1 */
	int src_family;
	uint32_t src_base;     /* IPv4, host byte order */
	unsigned src_count;
	char ehlo[LOAD_EHLO_MAX + 1];
	double timeout;        /* seconds per reply (and per connect) */
	bool expect_reject;
	const char *json;
	const char *verify;
	bool quiet;
	int cpus[LOAD_MAX_THREADS];
	unsigned ncpus;
};

/* One body size: a prefix of the shared template plus a short tail that ends the body
 * with CRLF, so any size yields a valid body with no dot-stuffing (no template line
 * starts with '.'). The checksum is precomputed, so --size MIN-MAX costs nothing per
 * message. */
struct load_variant {
	size_t prefix;   /* bytes taken from the template */
	char tail[4];    /* "\r\n" or "Z\r\n" */
	unsigned tail_len;
	size_t size;     /* prefix + tail_len: the body size reported in the manifest */
	char sum_hex[17];/* FNV-1a 64 of the body, lower-case hex */
};

struct load_body {
	char *tmpl;      /* size_max bytes, read-only once built, shared by all threads */
	size_t tmpl_len;
	struct load_variant v[LOAD_SIZE_VARIANTS];
	unsigned nv;
};

/* HdrHistogram-like log-linear histogram of nanoseconds: values below 2048 are exact,
 * above that each power of two is split into 1024 sub-buckets (relative error under
 * 0.1%, i.e. 3 significant digits). Values past 2^41 ns (~37 min) are clamped. */
#define HIST_SUB 1024u
#define HIST_MAX_SHIFT 30u
#define HIST_BUCKETS (2 * HIST_SUB + HIST_MAX_SHIFT * HIST_SUB)

struct load_hist {
	uint64_t count, sum, max, min;
	uint64_t b[HIST_BUCKETS];
};

void hist_init(struct load_hist *h);
void hist_record(struct load_hist *h, uint64_t v);
void hist_merge(struct load_hist *dst, const struct load_hist *src);
uint64_t hist_percentile(const struct load_hist *h, double q);

#define LOAD_CODES 600

/* "TLSv1.3 TLS13-CHACHA20-POLY1305-SHA256 X25519": version, cipher, key exchange group
 * of completed handshakes, with counts. */
#define LOAD_TLS_SEEN 8
struct load_tls_seen {
	char name[96];
	uint64_t n;
};

struct load_stats {
	uint64_t attempted;      /* messages whose MAIL was written */
	uint64_t accepted;       /* final reply 2xx */
	uint64_t rejected;       /* a 4xx/5xx decided the message */
	uint64_t failed;         /* lost to a timeout, disconnect or protocol error */
	uint64_t rcpt_rejected;  /* individual RCPTs refused (message may still be accepted) */
	uint64_t connections;    /* connects that succeeded */
	uint64_t connect_errors;
	uint64_t session_errors; /* greeting or EHLO/HELO refused */
	uint64_t timeouts;
	uint64_t disconnects;    /* server closed or reset with replies outstanding */
	uint64_t protocol_errors;
	uint64_t bytes_out;      /* everything written to sockets */
	uint64_t msg_bytes;      /* header + body bytes of accepted messages */
	uint64_t enobufs;        /* multishot recv stopped for lack of provided buffers */
	uint64_t short_sends;
	uint64_t lockstep_sessions; /* --pipelining on, but the server did not offer it */
	uint64_t stale_cqes;       /* CQEs for an older incarnation of a connection slot */
	uint64_t tls_handshakes;   /* completed */
	uint64_t tls_failures;     /* handshakes that did not complete (error, EOF, timeout) */
	uint64_t tls_resumed;      /* completed handshakes that resumed a session */
	uint64_t codes[LOAD_CODES]; /* the reply code that decided each message */
	struct load_hist hist;
	/* Not summed by the generic counter merge (ringmx-load.c merges them by hand). */
	struct load_hist tls_hist;  /* handshake time: ClientHello written to Finished */
	struct load_tls_seen tls_seen[LOAD_TLS_SEEN];
	unsigned tls_nseen;
	char tls_error[160];        /* first handshake/TLS failure reason */
};

struct load_thread {
	unsigned id;
	pthread_t th;
	const struct load_opts *o;
	const struct load_body *body;
	unsigned first_conn; /* global index of this thread's first connection */
	unsigned nconns;
	uint64_t budget;     /* messages this thread may start (UINT64_MAX with --duration) */
	int cpu;             /* -1: not pinned */
	struct load_stats st;
	/* written by the worker, read by the progress printer */
	uint64_t pub_accepted, pub_done, pub_inflight, pub_errors;
	/* a setup or capability failure that ends the whole run (exit 2) */
	int fatal;
	char fatal_msg[256];
	uint64_t end_ns;     /* CLOCK_MONOTONIC when the worker finished */
};

/* Run-wide state owned by main, read by the workers. */
struct load_run {
	pid_t pid;
	uint64_t t0_ns;        /* CLOCK_MONOTONIC at start */
	uint64_t deadline_ns;  /* --duration end, 0 = none */
	int stop;              /* SIGINT/SIGTERM or a fatal error: stop starting messages */
	int manifest_fd;       /* --verify, -1 = off */
	pthread_mutex_t manifest_lock;
};
extern struct load_run load_run;

uint64_t load_now_ns(void);
void *load_thread_main(void *arg);

/* load_msg.c */
int load_pattern_parse(struct load_pattern *p, const char *s);
size_t load_pattern_fmt(char *dst, const struct load_pattern *p, uint64_t n);
int load_body_build(struct load_body *b, uint64_t min, uint64_t max);
void load_body_free(struct load_body *b);
uint64_t load_fnv1a64(uint64_t h, const void *p, size_t n);
#define LOAD_FNV_INIT 0xcbf29ce484222325ull

/* load_tls.c: per-connection TLS state, embedded in the engine's connection. */
struct WOLFSSL_SESSION;
struct load_tls {
	/* ssl (NULL: this connection is plaintext, now); in/in_len: ciphertext not
	 * yet pulled by wolfSSL, a view into the provided buffer being handled, valid
	 * during one CQE; out: ciphertext for the ring, [0, out_busy) in flight. */
	struct tls_io io;
	size_t out_busy, out_sent;
	uint64_t hs_start;       /* ns: first ClientHello written */
	struct WOLFSSL_SESSION *sess; /* --tls-resume: last resumable session of this slot */
};
int load_tls_init(const struct load_opts *o, char *err, size_t errlen);
void load_tls_cleanup(void);
void *load_tls_ctx_new(const struct load_opts *o, char *err, size_t errlen);
void load_tls_ctx_free(void *ctx);
int load_tls_start(void *ctx, struct load_tls *t, const struct load_opts *o);
int load_tls_handshake(struct load_tls *t, char *err, size_t errlen); /* 1 done, 0 more, -1 */
long load_tls_read(struct load_tls *t, char *buf, size_t cap, char *err, size_t errlen);
int load_tls_write(struct load_tls *t, const void *p, size_t n, char *err, size_t errlen);
void load_tls_describe(const struct load_tls *t, char *buf, size_t n, bool *resumed);
void load_tls_end(struct load_tls *t, bool keep_session);
void load_tls_forget(struct load_tls *t);

/* v in decimal at dst (up to 20 bytes, no NUL); its length. */
static inline size_t utoa(char *dst, uint64_t v)
{
	char tmp[20];
	size_t k = 0;
	do {
		tmp[k++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < k; i++)
		dst[i] = tmp[k - 1 - i];
	return k;
}

#endif
