/*
 * relay_journal.c - the relay's delivery journal (a .jnl beside each
 * segment, docs/spool-format.md), the guarded reads of the segment mappings
 * (an unreadable page is an error for its record, not a dead process), and
 * the segments the relay reads and deletes once every message in them is
 * finished. Objects and ownership: relay.c; shared declarations:
 * relay_internal.h.
 */
#include "relay_internal.h"

/* ---- journal ---- */

void
rseg_path(const struct relay *r, const struct rseg *s, const char *ext, char *buf, size_t len)
{
	snprintf(buf, len, "%s/w%u/%016" PRIx64 ".%s", r->dir, s->wdir, s->seq, ext);
}

/* Write the segment's buffered journal records. 0, or -1 when they could
 * not be written: the state stays in memory (a restart may deliver
 * again), and the file is cut back to its last whole record so that later
 * records are not hidden behind a torn one (recovery stops there). */
int
rj_flush(struct relay *r, struct rseg *s)
{
	if (s->jbuf_len == 0)
		return 0;
	if (s->jfd < 0) {
		char path[CONFIG_PATH_MAX + 64];
		rseg_path(r, s, "jnl", path, sizeof(path));
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

void
rj_rec(struct relay *r, struct rmsg *m, uint8_t type, uint32_t first, uint32_t count,
       uint32_t attempts, uint64_t next_us, const char *text, size_t text_len)
{
	struct rseg *s = m->seg;
	struct journal_rec jr = {
	    .type = type,
	    .rcpt_first = first,
	    .rcpt_count = count,
	    .rec_off = m->off,
	    .attempts = attempts,
	    .time_us = relay_wall_us(),
	    .next_us = next_us,
	    .text = text,
	    .text_len = (uint16_t)(text_len > JOURNAL_TEXT_MAX ? JOURNAL_TEXT_MAX : text_len),
	};
	if (s->jbuf_len + JOURNAL_REC_MAX > RELAY_JBUF_SIZE)
		rj_flush(r, s);
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
int
rj_sync(struct relay *r, struct rseg *s)
{
	if (rj_flush(r, s) < 0)
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
 * every restart. So mapped bytes are touched only inside relay_map_read() and
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
__thread sigjmp_buf *volatile relay_map_guard;

static void
map_on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	sigjmp_buf *jb = relay_map_guard;
	if (jb == NULL) {
		/* Not a mapped read: the access faults again, fatally. */
		signal(sig, SIG_DFL);
		return;
	}
	relay_map_guard = NULL;
	siglongjmp(*jb, 1);
}

void
relay_map_unblock(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGBUS);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* Once per process (every worker's relay calls it). */
void
relay_map_guard_install(void)
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

/* Copy n mapped bytes. 0, or -EIO if they cannot be read. */
int
relay_map_read(void *dst, const uint8_t *src, size_t n)
{
	int err;
	MAP_GUARD(err, memcpy(dst, src, n));
	return err;
}

/* ---- segments ---- */

struct rseg *
rseg_find(struct relay *r, unsigned wdir, uint64_t seq)
{
	for (struct rseg *s = r->segs; s != NULL; s = s->next)
		if (s->seq == seq && s->wdir == wdir)
			return s;
	return NULL;
}

struct rseg *
rseg_new(struct relay *r, unsigned wdir, uint64_t seq, uint8_t *map, size_t maplen)
{
	struct rseg *s = relay_xcalloc(1, sizeof(*s));
	s->wdir = wdir;
	s->seq = seq;
	s->map = map;
	s->maplen = maplen;
	s->jfd = -1;
	s->next = r->segs;
	r->segs = s;
	return s;
}

struct rseg *
rseg_map(struct relay *r, unsigned wdir, uint64_t seq)
{
	char path[CONFIG_PATH_MAX + 64];
	struct rseg tmp = {.wdir = wdir, .seq = seq};
	rseg_path(r, &tmp, "seg", path, sizeof(path));
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
	return rseg_new(r, wdir, seq, map, (size_t)st.st_size);
}

/* A kept placeholder (its first mapping failed) tries again. */
void
rseg_remap(struct relay *r, struct rseg *s)
{
	struct rseg *m = rseg_map(r, s->wdir, s->seq);
	if (m == NULL)
		return;
	/* rseg_map linked a second entry: take its mapping, drop the entry. */
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
void
rseg_maybe_delete(struct relay *r, struct rseg *s)
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
	rseg_path(r, s, "seg", path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT)
		log_err("relay: unlink %s: %s", path, strerror(errno));
	rseg_path(r, s, "jnl", path, sizeof(path));
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
	struct rseg *s = rseg_find(r, r->env.worker, seq);
	if (s == NULL)
		return; /* nothing durable was ever written to it */
	s->closed = true;
	rj_flush(r, s);
	rseg_maybe_delete(r, s);
}
