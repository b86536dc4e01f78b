/*
 * ringmx-spool - read ringmxd's spool: list, show, cat, verify, export to a
 * Maildir, stats. Safe while ringmxd runs: it only reads, maps segments
 * read-only and hands on complete, CRC-valid records only.
 *
 * Owner: the spool module. Format: include/ringmx/spool_format.h and
 * docs/spool-format.md; operator guide: docs/spool.md.
 *
 * Layout read: SPOOL_DIR/w<N>/<seq 16 hex>.seg, workers in numeric order,
 * segments in sequence order, records in file order.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ringmx/config.h"
#include "ringmx/spool_format.h"

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
};

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

/* Map one segment and scan it. Returns its scan result in sc. */
static int
scan_file(const struct seginfo *si, rec_fn fn, void *arg, struct walk *w, struct spool_scan *sc)
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
	const uint8_t *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return -1;
	struct scan_ctx c = {si, fn, arg, w};
	spool_seg_scan(map, (uint64_t)st.st_size, on_record, &c, sc);
	munmap((void *)map, (size_t)st.st_size);
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
			if (scan_file(&si, NULL, NULL, &tmp, &sc) == 0 &&
			    (sc.records > 0 || sc.end != SPOOL_SCAN_CLEAN)) {
				last = j;
				break;
			}
		}
		for (size_t j = 0; j < ns && !w->stopped; j++) {
			struct seginfo si = {workers[i], seqs[j], "", j >= last};
			struct spool_scan sc;
			snprintf(si.path, sizeof(si.path), "%s/%016" PRIx64 ".seg", wdir, seqs[j]);
			if (scan_file(&si, fn, arg, w, &sc) < 0) {
				fprintf(stderr, "%s: %s: %s\n", prog, si.path, strerror(errno));
				w->damaged++;
				continue;
			}
			w->segments++;
			w->records += sc.records;
			w->bytes += sc.bytes;
			if (sc.end == SPOOL_SCAN_DAMAGED ||
			    (sc.end == SPOOL_SCAN_TORN && !si.last_with_data)) {
				w->damaged++;
				if (verify)
					printf("DAMAGED %s: %" PRIu64 " records ok, invalid record at "
					       "offset %" PRIu64 "%s\n",
					       si.path, sc.records, sc.valid_end,
					       sc.end == SPOOL_SCAN_TORN ? " (torn, but not the last segment)"
									 : " followed by other data");
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

static void
rcpts(FILE *f, const struct rec *r, const char *sep, const char *pre, const char *post)
{
	struct spool_tlv_iter it = {r->env, r->h->env_len, 0};
	unsigned type, k = 0;
	const uint8_t *v;
	size_t n;
	while (spool_tlv_next(&it, &type, &v, &n) > 0) {
		if (type != SPOOL_TLV_RCPT)
			continue;
		fputs(k++ ? sep : "", f);
		fputs(pre, f);
		put_text(f, v, n);
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
	rcpts(stdout, r, ",", "<", ">");
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
	rcpts(stdout, r, "", "rcpt_to: <", ">\n");
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
		"  -d SPOOL_DIR  the spool (default %s)\n"
		"  -c CONFIG     read spool_dir from a ringmxd configuration file\n"
		"Only complete, CRC-valid records are shown; safe while ringmxd runs.\n",
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
