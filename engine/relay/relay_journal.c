/*
 * relay_journal.c - the relay's delivery journal (a .jnl beside each
 * segment, docs/spool-format.md) and the life of the segments the relay
 * reads: every write, fsync and unlink goes through the worker's ring, so
 * nothing here blocks the event loop. Objects and ownership: relay.c;
 * shared declarations: relay_internal.h.
 *
 * Ownership rules
 *  - Each segment has one journal buffer (jbuf, RELAY_JBUF_SIZE). While a
 *    write is in flight its bytes [0, jinflight) belong to the kernel;
 *    records are only appended after jbuf_len. When the write completes,
 *    what it took is dropped from the front.
 *  - At most one journal operation per segment is in the kernel (jop):
 *    write, fdatasync, directory fsync, or the deletion chain. Its
 *    completion starts the next (rj_kick), so writes land in file order
 *    and a sync follows the write it covers.
 *  - A segment is freed only when nothing of it is in the kernel: after
 *    the last CQE of its deletion chain (or at exit, if none is left).
 *  - The slot table (r->segtab) names segments in user_data (ud.h: kind =
 *    the operation, idx = the slot, gen = the segment's generation).
 *
 * Durability: records are written once per loop iteration and not
 * fsynced; a crash of the machine before writeback can only deliver a
 * message again, never lose one. Operator commands (hold, release,
 * delete) are answered only after their records are fdatasynced and the
 * journal's directory entry is durable (rj_sync_want).
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_QMGR
#include "relay_internal.h"

/* A failed journal write is tried again after this long. */
#define RJ_RETRY_NS (1000ull * 1000000ull)

void
rseg_path(const struct relay *r, const struct rseg *s, const char *ext, char *buf, size_t len)
{
	snprintf(buf, len, "%s/w%u/%016" PRIx64 ".%s", r->dir, s->wdir, s->seq, ext);
}

/* ---- directories and slots ---- */

/* The directory w<wdir>, opened once (at start-up: own directory, adopted
 * ones found by recovery) and kept for fsync and unlinkat. -1 if it cannot
 * be opened (logged). */
static int
rdir_fd(struct relay *r, unsigned wdir)
{
	for (uint32_t i = 0; i < r->nwdirs; i++)
		if (r->wdirs[i].wdir == wdir)
			return r->wdirs[i].fd;
	char dir[CONFIG_PATH_MAX + 16];
	snprintf(dir, sizeof(dir), "%s/w%u", r->dir, wdir);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		log_err("relay: open %s: %s", dir, strerror(errno));
		return -1;
	}
	struct rwdir *n = realloc(r->wdirs, (r->nwdirs + 1) * sizeof(*n));
	if (n == NULL)
		panic("relay: out of memory");
	r->wdirs = n;
	r->wdirs[r->nwdirs++] = (struct rwdir){.wdir = wdir, .fd = fd};
	return fd;
}

void
rdir_open(struct relay *r, unsigned wdir)
{
	(void)rdir_fd(r, wdir);
}

/* A slot for a new segment. The table grows by doubling: segments come
 * one per spool segment (tens of MiB of mail), never per message. */
static void
seg_slot_take(struct relay *r, struct rseg *s)
{
	if (r->seg_nfree == 0) {
		uint32_t cap = r->segtab_cap ? r->segtab_cap * 2 : 64;
		if (cap > UD_IDX_LIMIT)
			panic("relay: more than %u segments", UD_IDX_LIMIT);
		struct rseg **t = realloc(r->segtab, cap * sizeof(*t));
		uint32_t *f = realloc(r->seg_free, cap * sizeof(*f));
		if (t == NULL || f == NULL)
			panic("relay: out of memory");
		r->segtab = t;
		r->seg_free = f;
		for (uint32_t i = cap; i > r->segtab_cap; i--) {
			t[i - 1] = NULL;
			f[r->seg_nfree++] = i - 1;
		}
		r->segtab_cap = cap;
	}
	s->slot = r->seg_free[--r->seg_nfree];
	s->sgen = ++r->seg_gen & UD_GEN_MASK;
	r->segtab[s->slot] = s;
}

static void
seg_slot_free(struct relay *r, struct rseg *s)
{
	r->segtab[s->slot] = NULL;
	r->seg_free[r->seg_nfree++] = s->slot;
}

static uint64_t
seg_ud(const struct relay *r, const struct rseg *s, enum subop op)
{
	return ud_make(r->env.ud_op, s->sgen, op, s->slot);
}

static void
seg_unlink_list(struct rseg **head, struct rseg *s, bool dirty)
{
	for (struct rseg **pp = head; *pp != NULL; pp = dirty ? &(*pp)->next_dirty : &(*pp)->next)
		if (*pp == s) {
			*pp = dirty ? s->next_dirty : s->next;
			return;
		}
}

static void
rj_dirty(struct relay *r, struct rseg *s)
{
	if (!s->dirty) {
		s->dirty = true;
		s->next_dirty = r->dirty;
		r->dirty = s;
	}
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
	s->dirfd = rdir_fd(r, wdir);
	seg_slot_take(r, s);
	s->next = r->segs;
	r->segs = s;
	return s;
}

/* ---- the journal ---- */

int
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
	if (s->jbuf_len + JOURNAL_REC_MAX > RELAY_JBUF_SIZE) {
		/* Full while a write is in the kernel (or failing): the disk is
		 * far behind. The state stays in memory; a restart may deliver
		 * this message again. Never a loss. */
		r->env.stats->relay_journal_dropped++;
		if (!s->jdrop_logged)
			log_err("relay: journal w%u/%016" PRIx64 ".jnl: buffer full (%u bytes "
			        "waiting for the disk); records dropped (counter "
			        "relay_journal_dropped), a restart may deliver again",
			        s->wdir, s->seq, s->jbuf_len);
		s->jdrop_logged = true;
		return -ENOBUFS;
	}
	size_t n = journal_encode(s->jbuf + s->jbuf_len, RELAY_JBUF_SIZE - s->jbuf_len, &jr);
	assert(n > 0);
	s->jbuf_len += (uint32_t)n;
	rj_dirty(r, s);
	/* Half full: write now rather than at the end of the iteration, so
	 * the rest of the buffer takes what comes while it is in flight. */
	if (s->jbuf_len > RELAY_JBUF_SIZE / 2 && s->jop == 0)
		rj_kick(r, s);
	return 0;
}

/* An operator command's record in s must be durable before the command is
 * answered: the answer waits for r->cmd_syncs to reach zero. */
void
rj_sync_want(struct relay *r, struct rseg *s, struct relay_cmd *cmd)
{
	if (!s->sync_wanted) {
		s->sync_wanted = true;
		r->cmd_syncs++;
	}
	s->sync_upto = s->jpos + s->jbuf_len;
	struct rcmd_hit *h = r->nhits > 0 ? &r->hits[r->nhits - 1] : NULL;
	if (h != NULL && h->s == s && h->cmd == cmd)
		h->n++;
	else if (r->nhits < RELAY_CMD_HITS_MAX)
		r->hits[r->nhits++] = (struct rcmd_hit){.s = s, .cmd = cmd, .n = 1};
	else
		atomic_fetch_add(&cmd->failed, 1); /* cannot be confirmed: said so */
	rj_dirty(r, s);
}

/* The sync s was asked for is over (res: 0 or -errno). */
static void
rj_sync_done(struct relay *r, struct rseg *s, int res)
{
	assert(s->sync_wanted && r->cmd_syncs > 0);
	s->sync_wanted = false;
	if (res < 0)
		for (uint32_t i = 0; i < r->nhits; i++)
			if (r->hits[i].s == s)
				atomic_fetch_add(&r->hits[i].cmd->failed, r->hits[i].n);
	if (--r->cmd_syncs == 0)
		relay_cmds_done(r);
}

static void
submit_write(struct relay *r, struct rseg *s)
{
	if (s->jfd < 0) {
		/* Synchronous, like the spool's openat of a new segment:
		 * creating an inode waits for no I/O. */
		char path[CONFIG_PATH_MAX + 64];
		rseg_path(r, s, "jnl", path, sizeof(path));
		s->jfd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (s->jfd < 0) {
			if (!s->jerr_logged)
				log_err("relay: cannot open journal %s: %s; delivery state is kept "
				        "in memory only (a restart may deliver again)",
				        path, strerror(errno));
			s->jerr_logged = true;
			r->env.stats->relay_journal_dropped++;
			s->jbuf_len = 0;
			if (s->sync_wanted)
				rj_sync_done(r, s, -EIO);
			return;
		}
	}
	struct io_uring_sqe *sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_write(sqe, s->jfd, s->jbuf, s->jbuf_len, s->jpos);
	io_uring_sqe_set_data64(sqe, seg_ud(r, s, S_JWRITE));
	s->jinflight = s->jbuf_len;
	s->jop = S_JWRITE;
	r->jops++;
	r->env.stats->relay_journal_writes++;
}

static void
submit_fsync(struct relay *r, struct rseg *s, int fd, enum subop op)
{
	struct io_uring_sqe *sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_fsync(sqe, fd, op == S_JSYNC ? IORING_FSYNC_DATASYNC : 0);
	io_uring_sqe_set_data64(sqe, seg_ud(r, s, op));
	s->jop = (uint8_t)op;
	r->jops++;
}

/* Every message finished and the spool is done with it: the segment and
 * its journal go, in one chain (the segment first: a journal without its
 * segment is harmless, a segment without its journal would be delivered
 * again), then the directory is fsynced. Hard links: each step runs even
 * if the one before failed (no journal: ENOENT). */
static void
submit_delete(struct relay *r, struct rseg *s)
{
	seg_unlink_list(&r->segs, s, false);
	if (s->dirty) {
		seg_unlink_list(&r->dirty, s, true);
		s->dirty = false;
	}
	s->jbuf_len = 0;
	if (s->jfd >= 0)
		close(s->jfd);
	s->jfd = -1;
	if (s->map != NULL)
		munmap(s->map, s->maplen);
	s->map = NULL;
	if (s->dirfd < 0) {
		/* Logged when the directory would not open: the files stay,
		 * and the next start delivers them again. */
		seg_slot_free(r, s);
		free(s);
		return;
	}
	snprintf(s->del_name[0], sizeof(s->del_name[0]), "%016" PRIx64 ".seg", s->seq);
	snprintf(s->del_name[1], sizeof(s->del_name[1]), "%016" PRIx64 ".jnl", s->seq);
	/* A chain must go in one submit: a submit between its SQEs would
	 * split it. */
	if (io_uring_sq_space_left(r->env.ring) < 3)
		io_uring_submit(r->env.ring);
	struct io_uring_sqe *sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_unlinkat(sqe, s->dirfd, s->del_name[0], 0);
	io_uring_sqe_set_data64(sqe, seg_ud(r, s, S_DEL_SEG));
	sqe->flags |= IOSQE_IO_HARDLINK;
	sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_unlinkat(sqe, s->dirfd, s->del_name[1], 0);
	io_uring_sqe_set_data64(sqe, seg_ud(r, s, S_DEL_JNL));
	sqe->flags |= IOSQE_IO_HARDLINK;
	sqe = r->env.get_sqe(r->env.ctx);
	io_uring_prep_fsync(sqe, s->dirfd, 0);
	io_uring_sqe_set_data64(sqe, seg_ud(r, s, S_DEL_DIRSYNC));
	s->jop = S_DEL_SEG;
	s->del_left = 3;
	r->jops++;
	r->env.stats->relay_segments_removed++;
}

/* Start the segment's next journal operation, if none is in flight: the
 * write a pending sync needs, then the sync, then the deletion, else the
 * buffered records. */
void
rj_kick(struct relay *r, struct rseg *s)
{
	if (s->jop != 0)
		return;
	if (s->sync_wanted) {
		if (s->jpos < s->sync_upto) {
			if (s->jbuf_len > 0)
				submit_write(r, s);
			else
				rj_sync_done(r, s, -EIO); /* its records were dropped */
		} else if (s->jfd >= 0) {
			s->sync_sent_upto = s->jpos;
			submit_fsync(r, s, s->jfd, S_JSYNC);
		} else {
			rj_sync_done(r, s, -EIO);
		}
		return;
	}
	if (s->delete_wanted) {
		submit_delete(r, s);
		return;
	}
	if (s->jbuf_len == 0)
		return;
	if (r->now < s->jretry_at) {
		rj_dirty(r, s); /* relay_wait_ns wakes the loop for it */
		return;
	}
	submit_write(r, s);
}

static void
on_write(struct relay *r, struct rseg *s, int res)
{
	if (res >= 0) {
		int f = fault_journal();
		if (f < 0)
			res = f; /* the bytes are written again, at the same offset */
	}
	if (res <= 0) {
		/* The records stay in the buffer and are written again, at the
		 * same offset, after RJ_RETRY_NS; a record torn by a short
		 * write before is completed then. An answer waiting for them
		 * fails now. */
		int err = res < 0 ? res : -EIO;
		if (!s->jerr_logged)
			log_err("relay: journal write w%u/%016" PRIx64 ".jnl: %s; retrying (a "
			        "restart meanwhile may deliver again)",
			        s->wdir, s->seq, strerror(-err));
		s->jerr_logged = true;
		s->jretry_at = r->now + RJ_RETRY_NS;
		if (s->sync_wanted)
			rj_sync_done(r, s, err);
		rj_dirty(r, s);
		return;
	}
	uint32_t n = (uint32_t)res;
	assert(n <= s->jinflight && s->jinflight <= s->jbuf_len);
	memmove(s->jbuf, s->jbuf + n, s->jbuf_len - n);
	s->jbuf_len -= n;
	s->jpos += n;
	s->jinflight = 0;
	if (s->jerr_logged && s->jbuf_len == 0) {
		log_info("relay: journal w%u/%016" PRIx64 ".jnl written again", s->wdir, s->seq);
		s->jerr_logged = false;
	}
	rj_kick(r, s);
}

static void
on_sync(struct relay *r, struct rseg *s, enum subop op, int res)
{
	if (res >= 0 && op == S_JDIRSYNC)
		res = fault_dirsync();
	if (res < 0) {
		log_err("relay: %s w%u/%016" PRIx64 ".jnl: %s",
		        op == S_JSYNC ? "fdatasync journal" : "fsync the directory of journal",
		        s->wdir, s->seq, strerror(-res));
		if (s->sync_wanted)
			rj_sync_done(r, s, res);
	} else if (op == S_JSYNC && s->sync_sent_upto < s->sync_upto) {
		/* More records were asked for while it ran: kick writes them
		 * and syncs again. */
	} else if (op == S_JSYNC && !s->jdir_synced) {
		/* A journal this run may have created also needs its directory
		 * entry durable: without it the file, and the HOLD or DELETE
		 * in it, could be gone after a crash. */
		submit_fsync(r, s, s->dirfd, S_JDIRSYNC);
		return;
	} else {
		if (op == S_JDIRSYNC)
			s->jdir_synced = true;
		if (s->sync_wanted)
			rj_sync_done(r, s, 0);
	}
	rj_kick(r, s);
}

static void
on_delete(struct relay *r, struct rseg *s, enum subop op, int res)
{
	if (op == S_DEL_DIRSYNC && res >= 0)
		res = fault_dirsync();
	/* Only logged: nothing is answered on it, and should the removal be
	 * lost, the worst is a second delivery of its messages (the .seg may
	 * come back without its .jnl), never a loss. */
	if (res < 0 && !(res == -ENOENT && op != S_DEL_DIRSYNC))
		log_err("relay: %s w%u/%016" PRIx64 ".%s: %s",
		        op == S_DEL_DIRSYNC ? "fsync the directory after removing" : "unlink",
		        s->wdir, s->seq, op == S_DEL_JNL ? "jnl" : "seg", strerror(-res));
	assert(s->del_left > 0);
	if (--s->del_left > 0)
		return;
	r->jops--;
	seg_slot_free(r, s);
	free(s);
}

void
relay_journal_cqe(struct relay *r, enum subop op, uint32_t idx, uint32_t gen, int res)
{
	struct rseg *s = idx < r->segtab_cap ? r->segtab[idx] : NULL;
	if (s == NULL || s->sgen != gen)
		panic("relay: journal CQE for no segment (slot %u)", idx);
	if (op == S_DEL_SEG || op == S_DEL_JNL || op == S_DEL_DIRSYNC) {
		on_delete(r, s, op, res);
		return;
	}
	assert(s->jop == op && r->jops > 0);
	s->jop = 0;
	r->jops--;
	if (op == S_JWRITE)
		on_write(r, s, res);
	else
		on_sync(r, s, op, res);
}

/* Every message finished and the spool is done with it. */
void
rseg_maybe_delete(struct relay *r, struct rseg *s)
{
	if (!s->closed || s->pending > 0 || s->keep || s->delete_wanted)
		return;
	s->delete_wanted = true;
	rj_kick(r, s);
}

void
relay_seg_closed(void *arg, uint64_t seq)
{
	struct relay *r = arg;
	struct rseg *s = rseg_find(r, r->env.worker, seq);
	if (s == NULL)
		return; /* nothing durable was ever written to it */
	s->closed = true;
	rseg_maybe_delete(r, s);
}

/* Once per loop iteration: one write per segment with new records. */
void
rj_poll(struct relay *r)
{
	struct rseg *d = r->dirty;
	r->dirty = NULL;
	while (d != NULL) {
		struct rseg *next = d->next_dirty;
		d->dirty = false;
		rj_kick(r, d);
		d = next;
	}
}

/* When the loop must wake for a journal write waiting to be retried. */
uint64_t
rj_wait_ns(const struct relay *r, uint64_t max)
{
	for (const struct rseg *s = r->dirty; s != NULL; s = s->next_dirty) {
		if (s->jop != 0 || s->jbuf_len == 0)
			continue;
		uint64_t w = s->jretry_at > r->now ? s->jretry_at - r->now : 0;
		if (w < max)
			max = w;
	}
	return max;
}

/* Is journal work pending that the loop should wait for before exit? A
 * write being retried after an error is not waited for. */
bool
rj_busy(const struct relay *r)
{
	if (r->jops > 0)
		return true;
	for (const struct rseg *s = r->dirty; s != NULL; s = s->next_dirty)
		if (s->jbuf_len > 0 && s->jretry_at <= r->now)
			return true;
	return false;
}

bool
relay_io_pending(const struct relay *r)
{
	return r->jops > 0;
}

/* After the loop: what is left of a journal (the drain timed out, or its
 * writes were failing) is written once more, synchronously: the ring is
 * gone. Segments with an operation still in the kernel are left as they
 * are (the kernel may still read their buffers; the process is exiting).
 * Their messages are already gone (relay_close). */
void
rj_close(struct relay *r)
{
	for (struct rseg *s = r->segs, *sn; s != NULL; s = sn) {
		sn = s->next;
		if (s->jop != 0)
			continue;
		if (s->jbuf_len > 0 && s->jfd >= 0) {
			ssize_t n = pwrite(s->jfd, s->jbuf, s->jbuf_len, (off_t)s->jpos);
			if (n != (ssize_t)s->jbuf_len)
				log_err("relay: journal w%u/%016" PRIx64 ".jnl: %u bytes not "
				        "written at exit; a restart may deliver again",
				        s->wdir, s->seq, s->jbuf_len);
		}
		if (s->jfd >= 0)
			close(s->jfd);
		if (s->map != NULL)
			munmap(s->map, s->maplen);
		free(s);
	}
	if (r->jops == 0) {
		free(r->segtab);
		free(r->seg_free);
	}
	for (uint32_t i = 0; i < r->nwdirs; i++)
		close(r->wdirs[i].fd);
	free(r->wdirs);
	free(r->hits);
}
