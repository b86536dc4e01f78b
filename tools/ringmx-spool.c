/*
 * ringmx-spool - read ringmxd's spool: list, show, cat, verify, export to a
 * Maildir, stats, and the delivery queue (queue, hold, release, delete,
 * flush). Reading is safe while ringmxd runs: segments are mapped
 * read-only, journals read, and only complete, CRC-valid records are used.
 * Journals are written only while this tool holds SPOOL_DIR/lock (ringmxd
 * is not running); otherwise ringmxd is asked through SPOOL_DIR/ctl/.
 *
 * Owner: the spool module. Format: include/ringmx/spool_format.h and
 * docs/spool-format.md; operator guide: docs/spool.md.
 *
 * Layout read: SPOOL_DIR/w<N>/<seq 16 hex>.seg (and its <seq>.jnl),
 * workers in numeric order, segments in sequence order, records in file
 * order.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ringmx/config.h"
#include "ringmx/journal_format.h"
#include "ringmx/spool_format.h"
#include "ringmx/spool_read.h"

#define DEFAULT_SPOOL_DIR "/var/spool/ringmx"
/* Bounds: worker directories and segment files this tool will look at. */
#define MAX_WORKERS 4096
#define MAX_SEGS_PER_WORKER 1000000

static const char *prog = "ringmx-spool";

struct seginfo {
	unsigned worker;
	uint64_t seq;
	char path[CONFIG_PATH_MAX + 64];
	bool last_with_data; /* no later segment of this worker holds records */
};

/* One record handed to a command. */
struct rec {
	const struct seginfo *seg;
	uint64_t off;
	const struct spool_hdr *h;
	const uint8_t *env;
	const uint8_t *msg;
};

typedef int (*rec_fn)(void *arg, const struct rec *r);

/* What a walk over the spool found. */
struct walk {
	uint64_t segments, records, bytes, damaged, torn;
	uint64_t oldest_us, newest_us;
	bool verbose_verify;
	bool stopped;
};

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int
cmp_uint(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	return x < y ? -1 : x > y;
}

/* Sorted worker numbers under dir. */
static size_t
list_workers(const char *dir, unsigned *out, size_t max)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0;
	if (d == NULL) {
		fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(errno));
		exit(2);
	}
	while ((de = readdir(d)) != NULL && n < max) {
		char *end;
		if (de->d_name[0] != 'w' || de->d_name[1] < '0' || de->d_name[1] > '9')
			continue;
		unsigned long v = strtoul(de->d_name + 1, &end, 10);
		if (*end == '\0' && v < 1000000)
			out[n++] = (unsigned)v;
	}
	closedir(d);
	qsort(out, n, sizeof(*out), cmp_uint);
	return n;
}

static size_t
list_segs(const char *wdir, uint64_t **out)
{
	DIR *d = opendir(wdir);
	struct dirent *de;
	size_t n = 0, cap = 64;
	uint64_t *v = malloc(cap * sizeof(*v));
	if (d == NULL || v == NULL) {
		if (d)
			closedir(d);
		free(v);
		*out = NULL;
		return 0;
	}
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;
		if (spool_seg_name_parse(de->d_name, &seq) < 0)
			continue;
		if (n == cap) {
			uint64_t *nv = cap < MAX_SEGS_PER_WORKER ? realloc(v, 2 * cap * sizeof(*v)) : NULL;
			if (nv == NULL)
				break;
			v = nv;
			cap *= 2;
		}
		v[n++] = seq;
	}
	closedir(d);
	qsort(v, n, sizeof(*v), cmp_u64);
	*out = v;
	return n;
}

struct scan_ctx {
	const struct seginfo *seg;
	rec_fn fn;
	void *arg;
	struct walk *w;
	const char *spool; /* verify: print the damaged ranges; else NULL */
};

/* verify: one line per damaged range, naming the copy ringmxd made of its
 * bytes at start-up (SPOOL_DIR/damaged/, see docs/spool.md). */
static void
on_damage(void *arg, uint64_t off, uint64_t len)
{
	struct scan_ctx *c = arg;
	char copy[CONFIG_PATH_MAX + 96];
	struct stat st;
	if (c->spool == NULL)
		return;
	snprintf(copy, sizeof(copy), "%s/" SPOOL_DAMAGED_DIR "/w%u-%016" PRIx64 "-%016" PRIx64 ".bin",
		 c->spool, c->seg->worker, c->seg->seq, off);
	bool have = stat(copy, &st) == 0;
	printf("DAMAGED %s: bytes %" PRIu64 "..%" PRIu64 " (%" PRIu64
	       " bytes) are not a valid record; %s%s\n",
	       c->seg->path, off, off + len, len,
	       have ? "their copy: " : "not set aside yet (ringmxd copies them to " SPOOL_DAMAGED_DIR
				       "/ when it starts)",
	       have ? copy : "");
}

static int
on_record(void *arg, uint64_t off, const struct spool_hdr *h, const uint8_t *p)
{
	struct scan_ctx *c = arg;
	struct rec r = {c->seg, off, h, p + SPOOL_HDR_SIZE, p + SPOOL_HDR_SIZE + h->env_len};
	if (c->w->oldest_us == 0 || h->received_us < c->w->oldest_us)
		c->w->oldest_us = h->received_us;
	if (h->received_us > c->w->newest_us)
		c->w->newest_us = h->received_us;
	if (c->fn == NULL)
		return 0;
	if (c->fn(c->arg, &r)) {
		c->w->stopped = true;
		return 1;
	}
	return 0;
}

/* Map one segment and scan it. Returns its scan result in sc. spool: print
 * the damaged ranges (verify). */
static int
scan_file(const struct seginfo *si, rec_fn fn, void *arg, struct walk *w, struct spool_scan *sc,
	  const char *spool)
{
	int fd = open(si->path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	memset(sc, 0, sizeof(*sc));
	if (fd < 0 || fstat(fd, &st) < 0) {
		/* Removed meanwhile (an empty segment at shutdown): nothing lost. */
		if (fd >= 0)
			close(fd);
		return errno == ENOENT ? 0 : -1;
	}
	if (st.st_size == 0) {
		close(fd);
		return 0;
	}
	/* Read, not mapped: an unreadable sector (or the file cut short
	 * while ringmxd runs) is then an error for its bytes, not a SIGBUS. */
	uint64_t bad, bad_off;
	uint8_t *map = spool_read_file(fd, (uint64_t)st.st_size, &bad, &bad_off);
	int err = errno;
	close(fd);
	if (map == NULL) {
		errno = err;
		return -1;
	}
	if (bad > 0) {
		fprintf(stderr, "%s: %s: %" PRIu64 " bytes UNREADABLE (I/O error), the first at offset "
			"%" PRIu64 "\n", prog, si->path, bad, bad_off);
		w->damaged++;
	}
	struct scan_ctx c = {si, fn, arg, w, spool};
	spool_seg_scan(map, (uint64_t)st.st_size, on_record, on_damage, &c, sc);
	free(map);
	return 0;
}

/* Walk every record of the spool in order. verify: print one line per
 * segment. */
static void
walk(const char *dir, rec_fn fn, void *arg, struct walk *w, bool verify)
{
	static unsigned workers[MAX_WORKERS];
	size_t nw = list_workers(dir, workers, MAX_WORKERS);
	for (size_t i = 0; i < nw && !w->stopped; i++) {
		char wdir[CONFIG_PATH_MAX + 32];
		uint64_t *seqs;
		snprintf(wdir, sizeof(wdir), "%s/w%u", dir, workers[i]);
		size_t ns = list_segs(wdir, &seqs);
		/* Which segment is the last holding data: a torn tail there is
		 * a write in progress (or cut by a crash), not damage. Found by
		 * scanning newest first without callbacks. */
		size_t last = ns;
		for (size_t j = ns; j-- > 0;) {
			struct seginfo si = {workers[i], seqs[j], "", false};
			struct spool_scan sc;
			struct walk tmp = {0};
			snprintf(si.path, sizeof(si.path), "%s/%016" PRIx64 ".seg", wdir, seqs[j]);
			if (scan_file(&si, NULL, NULL, &tmp, &sc, NULL) == 0 &&
			    (sc.records > 0 || sc.end != SPOOL_SCAN_CLEAN)) {
				last = j;
				break;
			}
		}
		for (size_t j = 0; j < ns && !w->stopped; j++) {
			struct seginfo si = {workers[i], seqs[j], "", j >= last};
			struct spool_scan sc;
			snprintf(si.path, sizeof(si.path), "%s/%016" PRIx64 ".seg", wdir, seqs[j]);
			if (scan_file(&si, fn, arg, w, &sc, verify ? dir : NULL) < 0) {
				fprintf(stderr, "%s: %s: %s\n", prog, si.path, strerror(errno));
				w->damaged++;
				continue;
			}
			w->segments++;
			w->records += sc.records;
			w->bytes += sc.bytes;
			if (sc.damaged > 0) {
				w->damaged++;
				if (verify)
					printf("DAMAGED %s: %" PRIu64 " records ok, %" PRIu64
					       " damaged range%s (%" PRIu64 " bytes), the first at offset "
					       "%" PRIu64 "\n",
					       si.path, sc.records, sc.damaged, sc.damaged == 1 ? "" : "s",
					       sc.damaged_bytes, sc.first_damage);
			}
			if (sc.end == SPOOL_SCAN_TORN && !si.last_with_data) {
				w->damaged++;
				if (verify)
					printf("DAMAGED %s: %" PRIu64 " records ok, invalid record at "
					       "offset %" PRIu64 " (torn, but not the last segment)\n",
					       si.path, sc.records, sc.valid_end);
			} else if (sc.damaged > 0) {
				/* said above */
			} else if (sc.end == SPOOL_SCAN_TORN) {
				w->torn++;
				if (verify)
					printf("ok      %s: %" PRIu64 " records, incomplete record at %" PRIu64
					       " (being written, or cut by a crash; ringmxd truncates it at "
					       "start)\n",
					       si.path, sc.records, sc.valid_end);
			} else if (verify) {
				printf("ok      %s: %" PRIu64 " records, %" PRIu64 " bytes\n", si.path,
				       sc.records, sc.bytes);
			}
		}
		free(seqs);
	}
}

/* ---- output helpers ---- */

static void
put_text(FILE *f, const uint8_t *p, size_t n)
{
	/* Addresses may be UTF-8 (SMTPUTF8); control bytes are escaped so a
	 * hostile envelope cannot move the terminal. */
	for (size_t i = 0; i < n; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			fprintf(f, "\\x%02x", p[i]);
		else
			fputc(p[i], f);
	}
}

static void
fmt_time(char *b, size_t n, uint64_t us)
{
	time_t t = (time_t)(us / 1000000u);
	struct tm tm;
	gmtime_r(&t, &tm);
	size_t k = strftime(b, n, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(b + k, n - k, ".%06uZ", (unsigned)(us % 1000000u));
}

/* JSON string contents: quotes, backslashes and control bytes escaped;
 * other bytes as they are (addresses are UTF-8 at most). */
static void
put_json(FILE *f, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '"' || p[i] == '\\')
			fprintf(f, "\\%c", p[i]);
		else if (p[i] < 0x20 || p[i] == 0x7f)
			fprintf(f, "\\u%04x", p[i]);
		else
			fputc(p[i], f);
	}
}

/* The recipients, each as pre, text (through put), post, separated by sep.
 * done (NULL: none) holds the journal's verdict per recipient; finished
 * ones are left out. */
static void
rcpts(FILE *f, const struct rec *r, const uint8_t *done,
      void (*put)(FILE *, const uint8_t *, size_t), const char *sep, const char *pre,
      const char *post)
{
	struct spool_tlv_iter it = {r->env, r->h->env_len, 0};
	unsigned type, k = 0, i = 0;
	const uint8_t *v;
	size_t n;
	while (spool_tlv_next(&it, &type, &v, &n) > 0) {
		if (type != SPOOL_TLV_RCPT)
			continue;
		if (done != NULL && done[i++] != 0)
			continue;
		fputs(k++ ? sep : "", f);
		fputs(pre, f);
		put(f, v, n);
		fputs(post, f);
	}
}

/* ---- commands ---- */

static int
list_one(void *arg, const struct rec *r)
{
	struct spool_envelope e;
	char t[40];
	(void)arg;
	fmt_time(t, sizeof(t), r->h->received_us);
	if (spool_env_parse(r->env, r->h->env_len, &e) < 0) {
		printf("%-13s %s %10" PRIu64 " (bad envelope)\n", r->h->qid, t, r->h->msg_len);
		return 0;
	}
	printf("%-13s %s %10" PRIu64 " <", r->h->qid, t, r->h->msg_len);
	put_text(stdout, e.from, e.from_len);
	printf("> ");
	rcpts(stdout, r, NULL, put_text, ",", "<", ">");
	putchar('\n');
	return 0;
}

struct find {
	const char *id;
	int (*fn)(const struct rec *r);
	int rc;
	bool found;
};

static int
find_one(void *arg, const struct rec *r)
{
	struct find *f = arg;
	if (strcmp(r->h->qid, f->id) != 0)
		return 0;
	f->found = true;
	f->rc = f->fn(r);
	return 1;
}

static int
show_rec(const struct rec *r)
{
	struct spool_envelope e;
	char t[40];
	fmt_time(t, sizeof(t), r->h->received_us);
	printf("id: %s\nsegment: %s\noffset: %" PRIu64 "\nrecord_length: %" PRIu64
	       "\nreceived: %s\nmessage_size: %" PRIu64 "\n",
	       r->h->qid, r->seg->path, r->off, r->h->rec_len, t, r->h->msg_len);
	if (spool_env_parse(r->env, r->h->env_len, &e) < 0) {
		printf("envelope: malformed\n");
		return 1;
	}
	printf("client: ");
	put_text(stdout, e.client_addr, e.client_addr_len);
	printf(" port %u\nhelo: ", e.client_port);
	put_text(stdout, e.helo, e.helo_len);
	printf("\nmail_from: <");
	put_text(stdout, e.from, e.from_len);
	printf(">\nsize_declared: %" PRIu64 "\nbody: %s\nsmtputf8: %s\nesmtp: %s\n",
	       e.size_declared, e.mail_flags & SPOOL_MAIL_8BITMIME ? "8BITMIME" : "7BIT",
	       e.mail_flags & SPOOL_MAIL_SMTPUTF8 ? "yes" : "no",
	       e.mail_flags & SPOOL_MAIL_ESMTP ? "yes" : "no");
	rcpts(stdout, r, NULL, put_text, "", "rcpt_to: <", ">\n");
	return 0;
}

static int
write_all(int fd, const uint8_t *p, uint64_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : (size_t)n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (uint64_t)w;
	}
	return 0;
}

static int
cat_rec(const struct rec *r)
{
	if (write_all(STDOUT_FILENO, r->msg, r->h->msg_len) < 0) {
		fprintf(stderr, "%s: write: %s\n", prog, strerror(errno));
		return 1;
	}
	return 0;
}

struct exporter {
	char dir[CONFIG_PATH_MAX];
	char host[256];
	uint64_t written, skipped;
	int err;
};

/* Maildir delivery: tmp/NAME, fsync, rename to new/NAME (atomic, so a
 * reader never sees half a message). An existing new/NAME is skipped, so
 * an export can be repeated. */
static int
export_one(void *arg, const struct rec *r)
{
	struct exporter *x = arg;
	char name[512], tmp[CONFIG_PATH_MAX + 600], dst[CONFIG_PATH_MAX + 600];
	struct stat st;
	snprintf(name, sizeof(name), "%" PRIu64 ".M%06uR%s.%s", r->h->received_us / 1000000u,
		 (unsigned)(r->h->received_us % 1000000u), r->h->qid, x->host);
	snprintf(tmp, sizeof(tmp), "%s/tmp/%s", x->dir, name);
	snprintf(dst, sizeof(dst), "%s/new/%s", x->dir, name);
	if (stat(dst, &st) == 0) {
		x->skipped++;
		return 0;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, r->msg, r->h->msg_len) < 0 || fsync(fd) < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		x->err = 1;
		return 1;
	}
	close(fd);
	if (rename(tmp, dst) < 0) {
		fprintf(stderr, "%s: rename %s: %s\n", prog, dst, strerror(errno));
		unlink(tmp);
		x->err = 1;
		return 1;
	}
	x->written++;
	return 0;
}

static int
sync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = fd >= 0 ? fsync(fd) : -1;
	if (fd >= 0)
		close(fd);
	return r;
}

static int
cmd_export(const char *spool, const char *maildir)
{
	static struct exporter x;
	char sub[CONFIG_PATH_MAX + 8];
	const char *subs[] = {"", "/tmp", "/new", "/cur"};
	if (strlen(maildir) >= sizeof(x.dir)) {
		fprintf(stderr, "%s: maildir path too long\n", prog);
		return 2;
	}
	strcpy(x.dir, maildir);
	for (size_t i = 0; i < 4; i++) {
		snprintf(sub, sizeof(sub), "%s%s", maildir, subs[i]);
		if (mkdir(sub, 0700) < 0 && errno != EEXIST) {
			fprintf(stderr, "%s: mkdir %s: %s\n", prog, sub, strerror(errno));
			return 1;
		}
	}
	if (gethostname(x.host, sizeof(x.host) - 1) < 0 || x.host[0] == '\0')
		strcpy(x.host, "localhost");
	/* Maildir names must not contain '/' or ':'. */
	for (char *c = x.host; *c; c++)
		if (*c == '/' || *c == ':')
			*c = '_';
	struct walk w = {0};
	walk(spool, export_one, &x, &w, false);
	snprintf(sub, sizeof(sub), "%s/new", maildir);
	if (sync_dir(sub) < 0) {
		fprintf(stderr, "%s: fsync %s: %s\n", prog, sub, strerror(errno));
		x.err = 1;
	}
	printf("exported %" PRIu64 " messages to %s/new (%" PRIu64 " already there)\n", x.written,
	       maildir, x.skipped);
	return x.err || w.damaged ? 1 : 0;
}

/* ---- delivery journals (docs/spool-format.md, "Delivery journal") ---- */

/* Largest journal this tool reads: a journal holds a few records per
 * message, so even a 64 MiB segment of tiny messages stays far below. */
#define JNL_READ_MAX (256u << 20)

/* SPOOL_DIR/w<N>/<seq>.jnl beside <seq>.seg. */
static void
jnl_path(char *out, size_t n, const char *seg_path)
{
	size_t l = strlen(seg_path);
	snprintf(out, n, "%.*s.jnl", (int)(l > 4 ? l - 4 : 0), seg_path);
}

/* Read a whole journal (fd at any offset) into *out (malloc, caller frees;
 * NULL when empty). A journal is read, not mapped: ringmxd truncates a
 * torn tail when it starts, and a mapped page past the new end would be
 * SIGBUS, while a copy is merely stale. 0 or -1 (errno). */
static int
jnl_read(int fd, uint8_t **out, size_t *size)
{
	struct stat st;
	*out = NULL;
	*size = 0;
	if (fstat(fd, &st) < 0)
		return -1;
	if (st.st_size > JNL_READ_MAX) {
		errno = EFBIG;
		return -1;
	}
	if (st.st_size == 0)
		return 0;
	uint8_t *b = malloc((size_t)st.st_size);
	size_t got = 0;
	if (b == NULL)
		return -1;
	while (got < (size_t)st.st_size) {
		ssize_t r = pread(fd, b + got, (size_t)st.st_size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			free(b);
			return -1;
		}
		if (r == 0)
			break; /* shorter now than fstat said: use what is there */
		got += (size_t)r;
	}
	*out = b;
	*size = got;
	return 0;
}

/* The valid records of one segment's journal, read once per segment
 * (segments are walked in order). text points into data, which lives
 * until the next jnl_load() or jnl_unload(). */
struct jnl {
	char seg[CONFIG_PATH_MAX + 64]; /* the segment these belong to; "" none */
	uint8_t *data;
	size_t size;
	struct journal_rec *recs;
	size_t n, cap;
};

static _Noreturn void
out_of_memory(void)
{
	fprintf(stderr, "%s: out of memory\n", prog);
	exit(2);
}

/* v (n elements of size bytes used, *cap allocated) with room for one
 * more. The tool has nothing useful to do without the memory. */
static void *
grow(void *v, size_t n, size_t *cap, size_t size)
{
	if (n < *cap)
		return v;
	size_t c = *cap ? 2 * *cap : 64;
	void *nv = realloc(v, c * size);
	if (nv == NULL)
		out_of_memory();
	*cap = c;
	return nv;
}

static int
jnl_collect(void *arg, size_t off, const struct journal_rec *r)
{
	struct jnl *j = arg;
	(void)off;
	j->recs = grow(j->recs, j->n, &j->cap, sizeof(*j->recs));
	j->recs[j->n++] = *r;
	return 0;
}

static void
jnl_unload(struct jnl *j)
{
	free(j->data);
	j->data = NULL;
	j->size = 0;
	j->n = 0;
	j->seg[0] = '\0';
}

static void
jnl_load(struct jnl *j, const char *seg_path)
{
	char path[sizeof(j->seg) + 8];
	if (strcmp(j->seg, seg_path) == 0)
		return;
	jnl_unload(j);
	snprintf(j->seg, sizeof(j->seg), "%s", seg_path);
	jnl_path(path, sizeof(path), seg_path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		/* No journal: nothing has happened to these messages yet. */
		if (errno != ENOENT)
			fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		return;
	}
	if (jnl_read(fd, &j->data, &j->size) < 0)
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
	close(fd);
	/* A torn last record (an append in progress) simply ends the scan. */
	journal_scan(j->data, j->size, jnl_collect, j);
}

/* One message's state from its segment's journal: st->done is allocated
 * here (one byte per recipient; the caller frees it). deferred: a
 * DEFERRED record exists. -1 if the envelope is malformed. */
static int
msg_state(struct jnl *j, const struct rec *r, struct spool_envelope *e,
	  struct journal_msg_state *st, bool *deferred)
{
	memset(st, 0, sizeof(*st));
	*deferred = false;
	if (spool_env_parse(r->env, r->h->env_len, e) < 0) {
		fprintf(stderr, "%s: %s: malformed envelope, skipped\n", prog, r->h->qid);
		return -1;
	}
	st->nrcpt = e->nrcpt;
	st->done = calloc(e->nrcpt ? e->nrcpt : 1, 1);
	if (st->done == NULL)
		out_of_memory();
	jnl_load(j, r->seg->path);
	for (size_t i = 0; i < j->n; i++) {
		if (j->recs[i].rec_off != r->off)
			continue;
		journal_state_apply(st, &j->recs[i]);
		if (j->recs[i].type == JOURNAL_DEFERRED)
			*deferred = true;
	}
	return 0;
}

/* ---- queue ---- */

struct queue {
	struct jnl j;
	bool json;
	uint64_t messages, bytes;
};

static const char *
msg_status(const struct journal_msg_state *st, const struct spool_envelope *e, bool deferred)
{
	/* A content filter's quarantine (SPOOL_TLV_HOLD) holds it until released. */
	bool held = st->held || (e->hold != NULL && !st->released);

	return held ? "held" : deferred ? "deferred" : "active";
}

static void
queue_text(const struct queue *q, const struct rec *r, const struct spool_envelope *e,
	   const struct journal_msg_state *st, bool deferred)
{
	char t[40], next[40] = "now";
	if (q->messages == 1)
		printf("%-13s %10s %-27s %-8s %s\n", "-Queue ID-", "--Size--",
		       "----Arrival Time (UTC)-----", "-State--", "-Sender/Recipient-------");
	fmt_time(t, sizeof(t), r->h->received_us);
	if (st->next_us)
		fmt_time(next, sizeof(next), st->next_us);
	printf("%-13s %10" PRIu64 " %-27s %-8s <", r->h->qid, r->h->msg_len, t,
	       msg_status(st, e, deferred));
	put_text(stdout, e->from, e->from_len);
	printf(">\n%53sattempts: %" PRIu32 ", next: %s\n", "", st->attempts, next);
	if (st->last_text_len) {
		printf("%53s(", "");
		put_text(stdout, (const uint8_t *)st->last_text, st->last_text_len);
		printf(")\n");
	}
	rcpts(stdout, r, st->done, put_text, "", "                                                     <",
	      ">\n");
	putchar('\n');
}

static void
queue_json(const struct rec *r, const struct spool_envelope *e,
	   const struct journal_msg_state *st, bool deferred)
{
	char t[40], next[40] = "now";
	fmt_time(t, sizeof(t), r->h->received_us);
	if (st->next_us)
		fmt_time(next, sizeof(next), st->next_us);
	printf("{\"queue_id\":\"");
	put_json(stdout, (const uint8_t *)r->h->qid, strlen(r->h->qid));
	printf("\",\"size\":%" PRIu64 ",\"arrival_time\":\"%s\",\"state\":\"%s\",\"sender\":\"",
	       r->h->msg_len, t, msg_status(st, e, deferred));
	put_json(stdout, e->from, e->from_len);
	printf("\",\"attempts\":%" PRIu32 ",\"next_attempt\":\"%s\",\"reason\":", st->attempts,
	       next);
	if (st->last_text_len) {
		putchar('"');
		put_json(stdout, (const uint8_t *)st->last_text, st->last_text_len);
		putchar('"');
	} else {
		printf("null");
	}
	printf(",\"recipients\":[");
	rcpts(stdout, r, st->done, put_json, ",", "\"", "\"");
	printf("]}\n");
}

static int
queue_one(void *arg, const struct rec *r)
{
	struct queue *q = arg;
	struct spool_envelope e;
	struct journal_msg_state st;
	bool deferred;
	if (msg_state(&q->j, r, &e, &st, &deferred) < 0)
		return 0;
	if (!journal_state_finished(&st)) {
		q->messages++;
		q->bytes += r->h->msg_len;
		if (q->json)
			queue_json(r, &e, &st, deferred);
		else
			queue_text(q, r, &e, &st, deferred);
	}
	free(st.done);
	return 0;
}

static int
cmd_queue(const char *spool, bool json)
{
	static struct queue q;
	struct walk w = {0};
	q.json = json;
	walk(spool, queue_one, &q, &w, false);
	jnl_unload(&q.j);
	free(q.j.recs);
	if (!json) {
		if (q.messages == 0)
			printf("Mail queue is empty\n");
		else
			printf("-- %" PRIu64 " KiB in %" PRIu64 " message%s.\n", (q.bytes + 1023) / 1024,
			       q.messages, q.messages == 1 ? "" : "s");
	}
	return 0;
}

/* ---- hold, release, delete, flush ---- */

/* Offline (the tool holds SPOOL_DIR/lock, so ringmxd is not running) the
 * tool appends journal records itself; online (ringmxd holds the lock) it
 * asks ringmxd through a request file in SPOOL_DIR/ctl/ (docs/spool.md). */

#define CTL_TIMEOUT_S 10.0 /* how long to wait for ringmxd's answer */
#define CTL_POLL_MS 50
#define CTL_RES_MAX 65536 /* bytes of an answer read: one short line per id */

static const struct ctl_cmd {
	const char *name;
	uint8_t type;    /* the journal record appended offline */
	bool ids_needed; /* false: no ID means every message */
} ctl_cmds[] = {
	{"hold", JOURNAL_HOLD, true},
	{"release", JOURNAL_RELEASE, true},
	{"delete", JOURNAL_DELETE, true},
	{"flush", JOURNAL_DEFERRED, false},
};

static const struct ctl_cmd *
ctl_cmd_find(const char *name)
{
	for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++)
		if (strcmp(ctl_cmds[i].name, name) == 0)
			return &ctl_cmds[i];
	return NULL;
}

/* A queue id as ringmxd makes them (letters and digits, at most the
 * record's field): anything else could not be one, and must not reach a
 * request file, which is line- and space-separated. */
static bool
qid_valid(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > SPOOL_QID_FIELD)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'Z') ||
		      (id[i] >= 'a' && id[i] <= 'z')))
			return false;
	return true;
}

/* A message to act on, found by walking the spool. */
struct target {
	const char *id; /* as given; NULL for "every message" entries */
	char qid[SPOOL_QID_FIELD + 1];
	char seg[CONFIG_PATH_MAX + 64];
	uint64_t rec_off;
	uint32_t attempts;
	bool found;
};

struct targets {
	struct jnl j;
	struct target *t;
	size_t n, cap, found;
	bool all; /* every unfinished message (flush without ids) */
};

static void
target_set(struct target *t, const struct rec *r, const struct journal_msg_state *st)
{
	snprintf(t->qid, sizeof(t->qid), "%s", r->h->qid);
	snprintf(t->seg, sizeof(t->seg), "%s", r->seg->path);
	t->rec_off = r->off;
	t->attempts = st->attempts;
	t->found = true;
}

static int
target_one(void *arg, const struct rec *r)
{
	struct targets *ts = arg;
	struct spool_envelope e;
	struct journal_msg_state st;
	bool deferred;
	size_t i = 0; /* the target: found below, or appended (ts->all) */

	if (!ts->all) {
		for (i = 0; i < ts->n; i++)
			if (!ts->t[i].found && strcmp(ts->t[i].id, r->h->qid) == 0)
				break;
		if (i == ts->n)
			return 0;
	}
	if (msg_state(&ts->j, r, &e, &st, &deferred) < 0)
		return 0;
	/* A finished message only waits for its segment to go: it is no
	 * longer in the queue, so it is "no such message" like a gone one. */
	if (!journal_state_finished(&st)) {
		if (ts->all) {
			ts->t = grow(ts->t, ts->n, &ts->cap, sizeof(*ts->t));
			i = ts->n++;
			ts->t[i].id = NULL;
		}
		target_set(&ts->t[i], r, &st);
		ts->found++;
	}
	free(st.done);
	/* Queue ids are unique: stop once every one asked for is found. */
	return !ts->all && ts->found == ts->n;
}

static int
write_at(int fd, const uint8_t *p, size_t n, off_t off)
{
	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

/* Append r to the journal of segment seg_path, creating it (0600) if
 * absent: after the last valid record (a torn tail is cut off first, as
 * ringmxd does), then fdatasync; a new file's directory entry is made
 * durable too. Only called with the spool lock held. 0 or -1 (errno). */
static int
jnl_append(const char *seg_path, const struct journal_rec *r)
{
	char path[CONFIG_PATH_MAX + 80], dir[CONFIG_PATH_MAX + 80];
	uint8_t rec[JOURNAL_REC_MAX], *old;
	size_t size, n = journal_encode(rec, sizeof(rec), r);
	int fd, err = 0;

	assert(n > 0);
	jnl_path(path, sizeof(path), seg_path);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (jnl_read(fd, &old, &size) < 0) {
		err = errno;
		goto out;
	}
	size_t end = journal_scan(old, size, NULL, NULL);
	free(old);
	if ((end < size && ftruncate(fd, (off_t)end) < 0) ||
	    write_at(fd, rec, n, (off_t)end) < 0 || fdatasync(fd) < 0) {
		err = errno;
		goto out;
	}
	if (size == 0) {
		snprintf(dir, sizeof(dir), "%s", path);
		*strrchr(dir, '/') = '\0';
		if (sync_dir(dir) < 0)
			err = errno;
	}
out:
	close(fd);
	errno = err;
	return err ? -1 : 0;
}

static uint64_t
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* One result line per id, as ringmxd writes them online. */
static int
ctl_offline(const char *spool, const struct ctl_cmd *c, char **ids, int nids)
{
	static struct targets ts;
	struct walk w = {0};
	int rc = 0;

	ts.all = nids == 0;
	if (!ts.all) {
		ts.t = calloc((size_t)nids, sizeof(*ts.t));
		if (ts.t == NULL)
			out_of_memory();
		for (int i = 0; i < nids; i++)
			ts.t[i].id = ids[i];
		ts.n = (size_t)nids;
	}
	walk(spool, target_one, &ts, &w, false);
	jnl_unload(&ts.j);
	free(ts.j.recs);
	for (size_t i = 0; i < ts.n; i++) {
		struct target *t = &ts.t[i];
		const char *shown = t->id != NULL ? t->id : t->qid;
		if (!t->found) {
			printf("error %s %s: no such message\n", c->name, shown);
			rc = 1;
			continue;
		}
		struct journal_rec r = {
			.type = c->type,
			.rcpt_count = JOURNAL_ALL_RCPTS,
			.rec_off = t->rec_off,
			.time_us = now_us(),
		};
		if (c->type == JOURNAL_DEFERRED) {
			/* Due now; the attempts so far stay as they were. */
			r.attempts = t->attempts;
			r.text = "flush requested";
			r.text_len = (uint16_t)strlen(r.text);
		}
		if (jnl_append(t->seg, &r) < 0) {
			printf("error %s %s: %s\n", c->name, shown, strerror(errno));
			rc = 1;
			continue;
		}
		if (t->id != NULL)
			printf("ok %s %s\n", c->name, shown);
	}
	if (ts.all)
		printf("ok flush\n");
	free(ts.t);
	return rc;
}

static double
ctl_timeout(void)
{
	const char *s = getenv("RINGMX_SPOOL_CTL_TIMEOUT");
	char *end;
	double v = s != NULL ? strtod(s, &end) : 0;
	return s != NULL && end != s && *end == '\0' && v > 0 && v <= 3600 ? v : CTL_TIMEOUT_S;
}

/* Print ringmxd's answer; 1 if any line is an error, else 0. */
static int
ctl_answer(const char *path)
{
	char buf[CTL_RES_MAX + 1];
	int rc = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, CTL_RES_MAX) : -1;
	if (fd >= 0)
		close(fd);
	if (n < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		return 1;
	}
	buf[n] = '\0';
	fputs(buf, stdout);
	if (n > 0 && buf[n - 1] != '\n')
		putchar('\n');
	for (char *l = buf; l != NULL && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (strncmp(l, "ok ", 3) != 0)
			rc = 1; /* "error ...", or something not understood */
	unlink(path);
	return rc;
}

static int
ctl_online(const char *spool, const struct ctl_cmd *c, char **ids, int nids)
{
	char ctl[CONFIG_PATH_MAX + 8], base[CONFIG_PATH_MAX + 64], tmp[CONFIG_PATH_MAX + 80],
		req[CONFIG_PATH_MAX + 80], res[CONFIG_PATH_MAX + 80];
	struct timespec ts;
	struct stat st;

	snprintf(ctl, sizeof(ctl), "%s/ctl", spool);
	if (mkdir(ctl, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "%s: mkdir %s: %s\n", prog, ctl, strerror(errno));
		return 2;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(base, sizeof(base), "%s/%ld.%" PRIu64, ctl, (long)getpid(),
		 (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	snprintf(tmp, sizeof(tmp), "%s.tmp", base);
	snprintf(req, sizeof(req), "%s.req", base);
	snprintf(res, sizeof(res), "%s.res", base);

	/* Written under a temporary name and renamed, so ringmxd never reads
	 * half a request. */
	FILE *f = fopen(tmp, "wex");
	if (f == NULL) {
		fprintf(stderr, "%s: %s: %s\n", prog, tmp, strerror(errno));
		return 2;
	}
	if (nids == 0)
		fprintf(f, "%s\n", c->name);
	for (int i = 0; i < nids; i++)
		fprintf(f, "%s %s\n", c->name, ids[i]);
	if (fclose(f) != 0 || rename(tmp, req) < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, req, strerror(errno));
		unlink(tmp);
		return 2;
	}

	double limit = ctl_timeout();
	for (double waited = 0; waited < limit; waited += CTL_POLL_MS / 1000.0) {
		if (stat(res, &st) == 0)
			return ctl_answer(res);
		usleep(CTL_POLL_MS * 1000);
	}
	if (stat(res, &st) == 0)
		return ctl_answer(res);
	if (unlink(req) == 0)
		fprintf(stderr, "%s: ringmxd did not answer within %.1f s; request withdrawn\n", prog,
			limit);
	else
		fprintf(stderr, "%s: ringmxd took the request but did not answer within %.1f s; "
			"it may still be applied\n", prog, limit);
	return 2;
}

static int
cmd_control(const char *spool, const struct ctl_cmd *c, char **ids, int nids)
{
	char lock[CONFIG_PATH_MAX + 8];
	for (int i = 0; i < nids; i++)
		if (!qid_valid(ids[i])) {
			fprintf(stderr, "%s: %s: not a queue id\n", prog, ids[i]);
			return 2;
		}
	snprintf(lock, sizeof(lock), "%s/lock", spool);
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, lock, strerror(errno));
		return 2;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		if (e == EWOULDBLOCK)
			return ctl_online(spool, c, ids, nids); /* ringmxd runs */
		fprintf(stderr, "%s: flock %s: %s\n", prog, lock, strerror(e));
		return 2;
	}
	/* The lock is held until the last record is synced: ringmxd cannot
	 * start meanwhile and append to the same journals. */
	int rc = ctl_offline(spool, c, ids, nids);
	close(fd);
	return rc;
}

static void
usage(FILE *f)
{
	fprintf(f,
		"Usage: ringmx-spool [-d SPOOL_DIR | -c CONFIG] COMMAND\n"
		"  list                    id, time, size, sender and recipients of every message\n"
		"  show ID                 the envelope of one message\n"
		"  cat ID                  the message bytes exactly as spooled\n"
		"  verify                  check every record's CRC; exit 1 on damage\n"
		"  export --maildir DIR    one file per message in DIR/new (via DIR/tmp)\n"
		"  stats                   segments, messages, bytes, oldest and newest\n"
		"  queue [--json]          messages still to deliver: state, attempts, next\n"
		"                          attempt, last reason, pending recipients\n"
		"  hold ID...              no delivery until released\n"
		"  release ID...           lift a hold\n"
		"  delete ID...            remove from the queue: no delivery, no bounce\n"
		"  flush [ID...]           try now (no ID: every message)\n"
		"  -d SPOOL_DIR  the spool (default %s)\n"
		"  -c CONFIG     read spool_dir from a ringmxd configuration file\n"
		"Only complete, CRC-valid records are shown; safe while ringmxd runs.\n"
		"hold/release/delete/flush write the journal themselves when ringmxd is not\n"
		"running, else ask ringmxd (SPOOL_DIR/ctl); exit 0 all ok, 1 an error, 2 no\n"
		"answer (RINGMX_SPOOL_CTL_TIMEOUT seconds, default 10).\n",
		DEFAULT_SPOOL_DIR);
}

int
main(int argc, char **argv)
{
	static char spool[CONFIG_PATH_MAX];
	const char *dir = NULL, *conf = NULL;
	int c;
	snprintf(spool, sizeof(spool), "%s", DEFAULT_SPOOL_DIR);
	while ((c = getopt(argc, argv, "+d:c:h")) != -1) {
		switch (c) {
		case 'd':
			dir = optarg;
			break;
		case 'c':
			conf = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (dir != NULL && conf != NULL) {
		fprintf(stderr, "%s: -d and -c are exclusive\n", prog);
		return 2;
	}
	if (conf != NULL) {
		struct config_args a;
		char err[CONFIG_ERR_MAX];
		memset(&a, 0, sizeof(a));
		a.config_path = conf;
		struct config *cfg = config_load(&a, err);
		if (cfg == NULL) {
			fprintf(stderr, "%s: %s\n", prog, err);
			return 2;
		}
		snprintf(spool, sizeof(spool), "%s", cfg->spool_dir);
		config_free(cfg);
	} else if (dir != NULL) {
		snprintf(spool, sizeof(spool), "%s", dir);
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	int nargs = argc - optind - 1;
	char **args = argv + optind + 1;
	struct walk w = {0};

	if (strcmp(cmd, "list") == 0 && nargs == 0) {
		walk(spool, list_one, NULL, &w, false);
		return 0;
	}
	if ((strcmp(cmd, "show") == 0 || strcmp(cmd, "cat") == 0) && nargs == 1) {
		struct find f = {args[0], cmd[0] == 's' ? show_rec : cat_rec, 0, false};
		walk(spool, find_one, &f, &w, false);
		if (!f.found) {
			fprintf(stderr, "%s: %s: no such message\n", prog, args[0]);
			return 1;
		}
		return f.rc;
	}
	if (strcmp(cmd, "verify") == 0 && nargs == 0) {
		walk(spool, NULL, NULL, &w, true);
		printf("%" PRIu64 " segments, %" PRIu64 " records, %" PRIu64 " bytes: %s\n",
		       w.segments, w.records, w.bytes, w.damaged ? "DAMAGED" : "ok");
		return w.damaged ? 1 : 0;
	}
	if (strcmp(cmd, "export") == 0 && nargs == 2 && strcmp(args[0], "--maildir") == 0)
		return cmd_export(spool, args[1]);
	if (strcmp(cmd, "queue") == 0 &&
	    (nargs == 0 || (nargs == 1 && strcmp(args[0], "--json") == 0)))
		return cmd_queue(spool, nargs == 1);
	const struct ctl_cmd *cc = ctl_cmd_find(cmd);
	if (cc != NULL && (nargs > 0 || !cc->ids_needed))
		return cmd_control(spool, cc, args, nargs);
	if (strcmp(cmd, "stats") == 0 && nargs == 0) {
		char a[40] = "-", b[40] = "-";
		walk(spool, NULL, NULL, &w, false);
		if (w.records) {
			fmt_time(a, sizeof(a), w.oldest_us);
			fmt_time(b, sizeof(b), w.newest_us);
		}
		printf("spool_dir: %s\nsegments: %" PRIu64 "\nmessages: %" PRIu64
		       "\nrecord_bytes: %" PRIu64 "\noldest: %s\nnewest: %s\nincomplete_tails: %" PRIu64
		       "\ndamaged_segments: %" PRIu64 "\n",
		       spool, w.segments, w.records, w.bytes, a, b, w.torn, w.damaged);
		return w.damaged ? 1 : 0;
	}
	usage(stderr);
	return 2;
}
