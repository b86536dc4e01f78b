/*
 * spool_recover.c - the spool at start-up: its directories (created and
 * fsynced), and recovery of every segment (read with pread: a damaged or
 * unreadable record is set aside, never a signal; a torn tail is cut off).
 * Runs before the loop starts, so it may block. Objects and ownership:
 * spool.c; shared declarations: spool_internal.h.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include "spool_internal.h"

/* ---- start-up: directories and recovery ---- */

/* mkdir -p with mode 0700 for what it creates. */
int
spool_mkdir_p(const char *path)
{
	char buf[CONFIG_PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0700) < 0 && errno != EEXIST)
			return -errno;
		buf[i] = c;
	}
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Copy [off, off + len) of the segment fd into
 * spool_dir/damaged/w<N>-<seq>-<off>.bin (via a .tmp file, fsynced, renamed),
 * where an operator finds it (ringmx-spool verify names it). Read with
 * pread, so an unreadable sector is an error here, not a signal. A copy
 * made by an earlier start is kept. 0 or -errno (the caller logs). */
static int
damaged_copy(const struct spool *sp, int fd, uint64_t seq, uint64_t off, uint64_t len,
	     char *path, size_t pathlen)
{
	char dir[CONFIG_PATH_MAX + 16], tmp[CONFIG_PATH_MAX + 96];
	snprintf(dir, sizeof(dir), "%s/" SPOOL_DAMAGED_DIR, sp->cfg->spool_dir);
	snprintf(path, pathlen, "%s/w%u-%016" PRIx64 "-%016" PRIx64 ".bin", dir, sp->worker, seq,
		 off);
	struct stat st;
	if (stat(path, &st) == 0)
		return 0;
	int r = spool_mkdir_p(dir);
	if (r < 0)
		return r;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0)
		return -errno;
	static uint8_t buf[1u << 16];
	for (uint64_t done = 0; done < len && r == 0;) {
		size_t n = len - done < sizeof(buf) ? (size_t)(len - done) : sizeof(buf);
		ssize_t got = pread(fd, buf, n, (off_t)(off + done));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			/* An unreadable part: zeros in the copy, which the
			 * operator is told about (the log names the error). */
			r = got < 0 ? -errno : -EIO;
			memset(buf, 0, n);
			got = (ssize_t)n;
		}
		for (size_t w = 0; w < (size_t)got;) {
			ssize_t k = pwrite(out, buf + w, (size_t)got - w, (off_t)(done + w));
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return close(out), unlink(tmp), k < 0 ? -errno : -EIO;
			w += (size_t)k;
		}
		done += (uint64_t)got;
		if (r < 0) {
			log_err("spool: recovery: reading damaged bytes at %" PRIu64 " of %s/%016" PRIx64
				".seg: %s; zeros in their copy",
				off + done - (uint64_t)got, sp->dir, seq, strerror(-r));
			r = 0;
		}
	}
	if (fsync(out) < 0 || close(out) < 0) {
		r = -errno;
		unlink(tmp);
		return r;
	}
	if (rename(tmp, path) < 0) {
		r = -errno;
		unlink(tmp);
		return r;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		(void)fsync(dfd); /* the segment keeps the bytes anyway */
		close(dfd);
	}
	return 0;
}

struct recover_dmg {
	struct spool *sp;
	int fd;
	uint64_t seq;
};

/* A damaged range: set its bytes aside and say so, loudly. The segment
 * itself is left as it is and never removed by ringmxd (relay.c). */
static void
recover_on_damage(void *arg, uint64_t off, uint64_t len)
{
	struct recover_dmg *d = arg;
	char path[CONFIG_PATH_MAX + 96];
	int r = damaged_copy(d->sp, d->fd, d->seq, off, len, path, sizeof(path));
	log_err("spool: recovery: %s/%016" PRIx64 ".seg: DAMAGED at offset %" PRIu64 ": %" PRIu64
		" bytes are not a valid record (a disk or a person changed them); %s %s; the "
		"records after them are recovered, the segment is kept (inspect with "
		"ringmx-spool verify)",
		d->sp->dir, d->seq, off, len, r < 0 ? "could not copy them:" : "copied to",
		r < 0 ? strerror(-r) : path);
}

/* Verify one segment; truncate a torn tail or the unused preallocation. */
static void
recover_seg(struct spool *sp, uint64_t seq, uint64_t *msgs, uint64_t *bytes)
{
	char name[32];
	sp_seg_name(name, sizeof(name), seq);
	int fd = openat(sp->dirfd, name, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		log_err("spool: recovery: %s/%s: %s", sp->dir, name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	if (st.st_size == 0) {
		close(fd);
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)sp_dir_sync(sp); /* a removal: logged, see sp_seg_close */
		log_info("spool: recovery: %s/%s: empty, removed", sp->dir, name);
		return;
	}
	/* Read, not mapped: an unreadable sector is then an error for its
	 * bytes (they read as SPOOL_READ_POISON, so the records around them
	 * survive and they show as damage), not a SIGBUS at every start. */
	uint64_t bad, bad_off;
	uint8_t *map = spool_read_file(fd, (uint64_t)st.st_size, &bad, &bad_off);
	if (map == NULL) {
		log_err("spool: recovery: reading %s/%s: %s", sp->dir, name, strerror(errno));
		close(fd);
		return;
	}
	if (bad > 0)
		log_err("spool: recovery: %s/%s: %" PRIu64 " bytes UNREADABLE (I/O error), the "
			"first at offset %" PRIu64 "; the records there are damage",
			sp->dir, name, bad, bad_off);
	struct spool_scan sc;
	struct recover_dmg dm = {sp, fd, seq};
	spool_seg_scan(map, (uint64_t)st.st_size, NULL, recover_on_damage, &dm, &sc);
	free(map);
	if (bad > 0 && sc.end == SPOOL_SCAN_TORN) {
		/* Unreadable bytes in the last record look like a torn tail;
		 * this one may have been acknowledged: never cut it off. */
		sc.end = SPOOL_SCAN_DAMAGED;
		sc.damaged++;
		sc.damaged_bytes += (uint64_t)st.st_size - sc.valid_end;
		if (sc.damaged == 1)
			sc.first_damage = sc.valid_end;
		recover_on_damage(&dm, sc.valid_end, (uint64_t)st.st_size - sc.valid_end);
		sc.valid_end = (uint64_t)st.st_size;
	}
	if (sc.end == SPOOL_SCAN_CLEAN && sc.records == 0 && sc.damaged == 0) {
		/* Only zeros: a segment zero-filled ahead of need and never
		 * used, or one whose zero-filling a crash cut short (its
		 * fallocated blocks read as zeros too). Nothing to keep. */
		close(fd);
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)sp_dir_sync(sp); /* a removal: logged, see sp_seg_close */
		log_info("spool: recovery: %s/%s: no records, removed", sp->dir, name);
		return;
	}
	*msgs += sc.records;
	*bytes += sc.bytes;
	if (sc.damaged > 0)
		log_err("spool: recovery: %s/%s: %" PRIu64 " DAMAGED range%s, %" PRIu64 " bytes, the "
			"first at offset %" PRIu64 "; recovered %" PRIu64 " messages, %" PRIu64
			" bytes around them",
			sp->dir, name, sc.damaged, sc.damaged == 1 ? "" : "s", sc.damaged_bytes,
			sc.first_damage, sc.records, sc.bytes);
	switch (sc.end) {
	case SPOOL_SCAN_CLEAN:
		/* valid_end is after the last record or damaged range: only
		 * zeros are cut off. */
		if (sc.valid_end < (uint64_t)st.st_size && ftruncate(fd, (off_t)sc.valid_end) < 0)
			log_warn("spool: recovery: truncate %s/%s: %s", sp->dir, name,
				 strerror(errno));
		log_info("spool: recovery: %s/%s: recovered %" PRIu64 " messages, %" PRIu64
			 " bytes, clean end at %" PRIu64,
			 sp->dir, name, sc.records, sc.bytes, sc.valid_end);
		break;
	case SPOOL_SCAN_TORN:
		if (ftruncate(fd, (off_t)sc.valid_end) < 0 || fsync(fd) < 0)
			log_err("spool: recovery: truncate %s/%s: %s", sp->dir, name,
				strerror(errno));
		log_warn("spool: recovery: %s/%s: recovered %" PRIu64 " messages, %" PRIu64
			 " bytes, torn tail at %" PRIu64 " truncated",
			 sp->dir, name, sc.records, sc.bytes, sc.valid_end);
		break;
	case SPOOL_SCAN_DAMAGED:
		/* Damaged to the end (logged above): nothing is cut off. */
		break;
	}
	close(fd);
	if (sc.damaged == 0 && sc.valid_end == 0 && sc.records == 0) {
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)sp_dir_sync(sp); /* a removal: logged, see sp_seg_close */
	}
}

#define SPOOL_RECOVER_MAX_SEGS 1000000 /* files per worker directory */

static int
recover(struct spool *sp, char *err, size_t errlen)
{
	DIR *d = fdopendir(dup(sp->dirfd));
	if (d == NULL) {
		snprintf(err, errlen, "spool: opendir %s: %s", sp->dir, strerror(errno));
		return -errno;
	}
	size_t n = 0, cap = 64;
	uint64_t *seqs = malloc(cap * sizeof(*seqs));
	struct dirent *de;
	while (seqs != NULL && (de = readdir(d)) != NULL) {
		uint64_t seq;
		if (spool_seg_name_parse(de->d_name, &seq) < 0)
			continue;
		if (n == cap) {
			uint64_t *ns = cap < SPOOL_RECOVER_MAX_SEGS ? realloc(seqs, 2 * cap * sizeof(*seqs)) : NULL;
			if (ns == NULL) {
				free(seqs);
				seqs = NULL;
				break;
			}
			seqs = ns;
			cap *= 2;
		}
		seqs[n++] = seq;
	}
	closedir(d);
	if (seqs == NULL) {
		snprintf(err, errlen, "spool: %s: too many segments or out of memory", sp->dir);
		return -ENOMEM;
	}
	qsort(seqs, n, sizeof(*seqs), cmp_u64);
	uint64_t msgs = 0, bytes = 0;
	for (size_t i = 0; i < n; i++)
		recover_seg(sp, seqs[i], &msgs, &bytes);
	/* New messages always go to a new segment after a restart. */
	sp->next_seq = n > 0 ? seqs[n - 1] + 1 : 1;
	sp->first_seq = sp->next_seq;
	free(seqs);
	log_notice("spool: %s: %zu segment%s, %" PRIu64 " messages, %" PRIu64 " bytes recovered",
		 sp->dir, n, n == 1 ? "" : "s", msgs, bytes);
	return 0;
}

static void
spool_free(struct spool *sp)
{
	for (size_t i = 0; i < sp->nblocks; i++) {
		munmap(sp->blocks[i], SPOOL_BLOCK_SIZE);
		free(sp->descs[i]);
	}
	sp_dio_free(sp);
	free(sp->blocks);
	free(sp->descs);
	if (sp->txs != NULL)
		munmap(sp->txs, (size_t)sp->ntx * sizeof(*sp->txs));
	if (sp->dirfd >= 0 && !sp->keep_dirfd)
		close(sp->dirfd);
	free(sp);
}

int
spool_open(struct spool **out, const struct config *cfg, const struct spool_env *env, char *err,
	   size_t errlen)
{
	struct spool *sp = calloc(1, sizeof(*sp));
	if (sp == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		return -ENOMEM;
	}
	sp->env = *env;
	sp->cfg = cfg;
	sp->worker = env->worker;
	sp->dirfd = -1;
	sp->seg_size = (cfg->segment_size + SPOOL_SEG_ALIGN - 1) / SPOOL_SEG_ALIGN * SPOOL_SEG_ALIGN;
	sp->memory_cap = cfg->spool_memory;
	sp_share_init(sp);
	sp->durable = cfg->durability == SPOOL_DURABILITY_FSYNC;
	for (unsigned i = 0; i < SPOOL_MAX_SEGS; i++)
		sp->segs[i].fd = sp->void_fd[i] = -1;
	sp->prep.fd = -1;

	sp->maxblocks = (size_t)(sp->memory_cap / SPOOL_BLOCK_SIZE) + 1;
	sp->blocks = calloc(sp->maxblocks, sizeof(*sp->blocks));
	sp->descs = calloc(sp->maxblocks, sizeof(*sp->descs));
	/* See struct spool: connections plus staging chunks; mapped, so
	 * untouched slots cost no memory. */
	sp->ntx = cfg->max_connections + (unsigned)(sp->memory_cap / SPOOL_CHUNK_SIZE) + 1;
	sp->txs = mmap(NULL, (size_t)sp->ntx * sizeof(*sp->txs), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (sp->txs == MAP_FAILED)
		sp->txs = NULL;
	if (sp->blocks == NULL || sp->descs == NULL || sp->txs == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		spool_free(sp);
		return -ENOMEM;
	}

	int r = spool_mkdir_p(cfg->spool_dir);
	if (r == 0) {
		snprintf(sp->dir, sizeof(sp->dir), "%s/w%u", cfg->spool_dir, env->worker);
		r = spool_mkdir_p(sp->dir);
	}
	if (r < 0) {
		snprintf(err, errlen, "spool: cannot create %s/w%u: %s", cfg->spool_dir, env->worker,
			 strerror(-r));
		spool_free(sp);
		return r;
	}
	sp->dirfd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd < 0) {
		r = -errno;
		snprintf(err, errlen, "spool: open %s: %s", sp->dir, strerror(-r));
		spool_free(sp);
		return r;
	}
	/* The worker directory itself must survive a crash, or every
	 * segment in it could vanish with it: an error stops start-up. */
	int pfd = open(cfg->spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = pfd < 0 ? -errno : fault_dirsync();
	if (r == 0 && fsync(pfd) < 0)
		r = -errno;
	if (pfd >= 0)
		close(pfd);
	if (r < 0) {
		snprintf(err, errlen, "spool: fsync %s: %s", cfg->spool_dir, strerror(-r));
		spool_free(sp);
		return r;
	}
	r = recover(sp, err, errlen);
	if (r < 0) {
		spool_free(sp);
		return r;
	}
	r = sp_dio_init(sp, err, errlen);
	if (r < 0) {
		spool_free(sp);
		return r;
	}
	/* The first segment is zero-filled here, synchronously: the loop is
	 * not running yet (~35 ms for 64 MiB on the benchmark disk), and the
	 * load that follows start-up would otherwise begin on a fallocated
	 * segment. With direct writes too: the zeros cost no bandwidth yet,
	 * and until the first segment's writes are seen (spool_prep.c,
	 * prep_wants_zero) small writes are as likely as large ones. Any
	 * failure: the usual path, which logs it. */
	r = sp->durable ? sp_seg_create(sp, sp->seg_size, true) : -1;
	if (r < 0)
		r = sp_seg_ensure(sp, SPOOL_HDR_SIZE);
	if (r < 0 && r != -ENOSPC) {
		snprintf(err, errlen, "spool: cannot create a segment in %s (see above)", sp->dir);
		spool_free(sp);
		return r;
	}
	log_notice("spool: %s: segment_size %llu, durability %s%s, spool_io %s%s, commit_delay "
		 "%lluus, commit_size %llu, spool_memory %llu",
		 sp->dir, (unsigned long long)sp->seg_size, sp->durable ? "fsync" : "none",
		 sp->durable && !sp->direct ? " (segments pre-zeroed)" : "",
		 sp->direct ? "direct" : "buffered",
		 sp->io_note,
		 (unsigned long long)(cfg->commit_delay / 1000u), (unsigned long long)cfg->commit_size,
		 (unsigned long long)cfg->spool_memory);
	*out = sp;
	return 0;
}

void
spool_set_hooks(struct spool *sp, const struct spool_hooks *hooks)
{
	sp->hooks = *hooks;
}

uint64_t
spool_first_seq(const struct spool *sp)
{
	return sp->first_seq;
}

void
spool_internal_next(struct spool *sp)
{
	sp->internal_next = true;
}

void
spool_close(struct spool *sp)
{
	if (sp == NULL)
		return;
	/* The worker exits only when spool_idle(): no batch is in the
	 * kernel, so the fds and chunks can go. Transactions still open
	 * belong to sessions that are gone with the worker. */
	if (!spool_idle(sp))
		log_err("spool: %s: closing with work in flight (%u batches, %u queued)", sp->dir,
			sp->b_count, sp->q_count);
	sp_seg_retire(sp);
	struct prep *p = &sp->prep;
	if (p->state != P_NONE) {
		/* Never used: remove it (no directory fsync: should the name
		 * survive a crash, recovery removes a file of zeros). */
		char name[32];
		sp_seg_name(name, sizeof(name), p->seq);
		unlinkat(sp->dirfd, name, 0);
		if (p->inflight == 0) {
			close(p->fd);
		} else {
			/* spool_idle() does not wait for zero-filling (an exit
			 * would wait for a segment of zeros). io-wq may still
			 * run these SQEs after this, and it looks their fds up
			 * only then: the file's fd and dirfd are left open so
			 * their numbers cannot be reused by another file. The
			 * buffer is static. The process is exiting. */
			sp->keep_dirfd = true;
		}
		p->fd = -1;
		p->state = P_NONE;
	}
	for (unsigned i = 0; i < SPOOL_MAX_SEGS; i++)
		if (sp->segs[i].fd >= 0) {
			close(sp->segs[i].fd);
			sp->segs[i].fd = -1;
		}
	spool_free(sp);
}
