/*
 * spool_prep.c - the spool prepares its next segment ahead of need: a
 * temporary file, fallocated and pre-zeroed through the worker's ring (or
 * fallocated only), renamed into place, its directory fsynced; a failure
 * fails the batch that needs it. Objects and ownership: spool.c; shared
 * declarations: spool_internal.h.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include "spool_internal.h"

/* ---- preparing the next segment (pre-zeroing, through the ring) ---- */

static void
prep_tag(struct spool *sp, struct io_uring_sqe *sqe, unsigned kind, unsigned idx)
{
	io_uring_sqe_set_data64(sqe, ud_make(sp->env.ud_op, 0, kind, idx));
	sp->prep.inflight++;
}

/* A failed preparation is removed once none of its SQEs is in the kernel:
 * until then its fd stays open, because io-wq looks an fd up only when it
 * runs the request, and a reused number would point it at another file. */
static void
prep_reap(struct spool *sp)
{
	struct prep *p = &sp->prep;
	char name[32];
	if (p->state != P_FAILED || p->inflight > 0)
		return;
	sp_seg_name(name, sizeof(name), p->seq);
	close(p->fd);
	/* No directory fsync: if the name survives a crash, the file holds
	 * only zeros and recovery removes it. */
	unlinkat(sp->dirfd, name, 0);
	p->fd = -1;
	p->state = P_NONE;
}

static void
prep_fail(struct spool *sp, int err, const char *what)
{
	sp_prezero_error(sp, sp->prep.seq, err, what);
	sp->prep.state = P_FAILED;
	sp->prep_blocked = true; /* no new attempt before the next rotation */
	prep_reap(sp);
}

static void
prep_write_submit(struct spool *sp, unsigned i)
{
	struct prep *p = &sp->prep;
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	/* Buffered: the zeroed pages stay in the page cache, so the partial
	 * first and last pages of each record write are found there instead
	 * of being read back from disk. */
	io_uring_prep_write(sqe, p->fd, spool_zeros, p->w_len[i] - p->w_done[i],
			    p->w_off[i] + p->w_done[i]);
	prep_tag(sp, sqe, TAG_PREP_WRITE, i);
}

/* How far zeroing may go now (see SPOOL_ZERO_PACE). */
static uint64_t
prep_allowance(const struct spool *sp)
{
	const struct prep *p = &sp->prep;
	const struct seg *s = sp->cur;
	if (s == NULL || s->seq != p->cur_seq || s->tail < p->cur_tail0)
		return p->size;
	uint64_t a = SPOOL_ZERO_PACE * (s->tail - p->cur_tail0) +
		     (uint64_t)SPOOL_ZERO_INFLIGHT * SPOOL_ZERO_BUF;
	return a < p->size ? a : p->size;
}

/* Keep up to SPOOL_ZERO_INFLIGHT zero writes going, as far as the pacing
 * allows; when all are in, fdatasync the file. Called on every CQE of the
 * preparation and once per loop iteration (records move the pacing on). */
void
sp_prep_pump(struct spool *sp)
{
	struct prep *p = &sp->prep;
	if (p->state != P_ZERO)
		return;
	uint64_t allow = prep_allowance(sp);
	for (unsigned i = 0; i < SPOOL_ZERO_INFLIGHT && p->next < allow; i++) {
		if (p->w_len[i] != 0)
			continue;
		uint64_t n = p->size - p->next;
		if (n > SPOOL_ZERO_BUF)
			n = SPOOL_ZERO_BUF;
		p->w_off[i] = p->next;
		p->w_len[i] = (uint32_t)n;
		p->w_done[i] = 0;
		p->w_sfr[i] = false;
		p->next += n;
		prep_write_submit(sp, i);
	}
	if (p->zeroed == p->size) {
		assert(p->inflight == 0);
		/* The zeros and the extent conversion, now, off the path of
		 * any acknowledgement. */
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		io_uring_prep_fsync(sqe, p->fd, IORING_FSYNC_DATASYNC);
		prep_tag(sp, sqe, TAG_PREP_SYNC, 0);
		p->state = P_SYNC;
	}
}

/* Zero-fill the next segment? Buffered: always (see spool.c). Direct: a
 * write into a fallocated (unwritten) extent makes its RWF_DSYNC commit the
 * extent conversion too, which costs small writes latency (~5% of the
 * msgs/s of 1 KiB mail here) but writing every byte of the segment twice
 * (zeros, then records) costs large writes half the disk's bandwidth
 * (-25% for 64 KiB mail). So zeros only while the current segment's writes
 * average less than SPOOL_DIO_ZERO_BELOW: the disk is waited on, not busy. */
static bool
prep_wants_zero(const struct spool *sp)
{
	if (!sp->direct)
		return true;
	return sp->cur_writes > 0 && sp->cur_wbytes / sp->cur_writes < SPOOL_DIO_ZERO_BELOW;
}

/* Create the next segment's file and start zero-filling it. openat is the
 * one synchronous step: creating an inode waits for no I/O (the journal
 * commits it later), while an IORING_OP_OPENAT would cost an io-wq round
 * trip and one more state for nothing. */
static void
prep_start(struct spool *sp)
{
	struct prep *p = &sp->prep;
	char name[32];
	assert(p->state == P_NONE && p->inflight == 0);
	sp_seg_name(name, sizeof(name), sp->next_seq);
	int fd = openat(sp->dirfd, name, sp_seg_open_flags(sp), 0600);
	if (fd < 0) {
		sp_prezero_error(sp, sp->next_seq, -errno, "create");
		sp->prep_blocked = true;
		return;
	}
	memset(p, 0, sizeof(*p));
	p->zero = prep_wants_zero(sp);
	p->fd = fd;
	p->seq = sp->next_seq++; /* reserved now: recovery keeps seq order */
	p->size = sp->seg_size;
	p->start_ns = sp->now;
	p->cur_seq = sp->cur != NULL ? sp->cur->seq : 0;
	p->cur_tail0 = sp->cur != NULL ? sp->cur->tail : 0;
	p->state = P_ALLOC;
	/* fallocate first, for the reasons given in sp_seg_create. */
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	io_uring_prep_fallocate(sqe, fd, 0, 0, (off_t)p->size);
	prep_tag(sp, sqe, TAG_PREP_ALLOC, 0);
}

/* Start preparing when the current segment is far enough along. */
void
sp_prep_maybe_start(struct spool *sp)
{
	const struct seg *s = sp->cur;
	if (!sp->durable || sp->prep.state != P_NONE || sp->prep_blocked)
		return;
	if (s == NULL || s->tail < s->size / SPOOL_PREP_DIVISOR)
		return;
	prep_start(sp);
}

void
sp_prep_on_cqe(struct spool *sp, unsigned kind, unsigned idx, int res)
{
	struct prep *p = &sp->prep;
	assert(p->inflight > 0 && p->state != P_NONE && p->state != P_READY);
	p->inflight--;
	if (p->state == P_FAILED) {
		/* Whatever it says, the file is being removed. */
		prep_reap(sp);
		return;
	}
	switch (kind) {
	case TAG_PREP_ALLOC:
		assert(p->state == P_ALLOC);
		/* EOPNOTSUPP (a file system without fallocate): the zero
		 * writes allocate the blocks instead. */
		if (res < 0 && res != -EOPNOTSUPP) {
			prep_fail(sp, res, "fallocate");
			return;
		}
		p->state = P_ZERO;
		if (!p->zero)
			p->next = p->zeroed = p->size; /* only the fallocate, made durable */
		sp_prep_pump(sp);
		return;
	case TAG_PREP_WRITE: {
		assert(p->state == P_ZERO && idx < SPOOL_ZERO_INFLIGHT && p->w_len[idx] > 0 &&
		       !p->w_sfr[idx]);
		if (res == -EINTR || res == -EAGAIN) {
			prep_write_submit(sp, idx); /* nothing written: again */
			return;
		}
		if (res <= 0) {
			/* 0: no progress on a regular file, an I/O error. */
			prep_fail(sp, res == 0 ? -EIO : res, res == 0 ? "write (no progress)" : "write");
			return;
		}
		assert((uint32_t)res <= p->w_len[idx] - p->w_done[idx]);
		p->w_done[idx] += (uint32_t)res;
		if (p->w_done[idx] < p->w_len[idx]) {
			prep_write_submit(sp, idx); /* short: the rest */
			return;
		}
		/* Start the writeback of this range now, without waiting for
		 * it (see SPOOL_ZERO_BUF): the final fdatasync then finds
		 * little left to write. */
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		io_uring_prep_sync_file_range(sqe, p->fd, p->w_len[idx], p->w_off[idx],
					      SYNC_FILE_RANGE_WRITE);
		prep_tag(sp, sqe, TAG_PREP_SFR, idx);
		p->w_sfr[idx] = true;
		return;
	}
	case TAG_PREP_SFR:
		assert(p->state == P_ZERO && idx < SPOOL_ZERO_INFLIGHT && p->w_sfr[idx]);
		/* An error here is an I/O error of the zeros: the same as a
		 * failed write. */
		if (res < 0) {
			prep_fail(sp, res, "sync_file_range");
			return;
		}
		p->zeroed += p->w_len[idx];
		p->w_len[idx] = 0; /* the slot is free */
		p->w_sfr[idx] = false;
		sp_prep_pump(sp);
		return;
	case TAG_PREP_SYNC: {
		assert(p->state == P_SYNC);
		if (res < 0) {
			prep_fail(sp, res, "fdatasync");
			return;
		}
		/* The name must be durable before a record in the file is
		 * acknowledged. After the file's fdatasync (which committed
		 * the journal holding the new entry on ext4) this is cheap;
		 * through the ring it costs the loop nothing at all. */
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		io_uring_prep_fsync(sqe, sp->dirfd, 0);
		prep_tag(sp, sqe, TAG_PREP_DIRSYNC, 0);
		p->state = P_DIRSYNC;
		return;
	}
	case TAG_PREP_DIRSYNC:
		assert(p->state == P_DIRSYNC);
		if (res >= 0)
			res = fault_dirsync();
		if (res < 0) {
			prep_fail(sp, res, "fsync of the directory");
			return;
		}
		p->state = P_READY;
		sp->prep_err_logged = false; /* the next failure is news again */
		log_debug("spool: %s/%016" PRIx64 ".seg zero-filled ahead of need in %llu us",
			  sp->dir, p->seq, (unsigned long long)((sp_mono_ns() - p->start_ns) / 1000u));
		return;
	default:
		panic("spool: unknown preparation tag %u", kind);
	}
}

/* Make the prepared segment current if it is ready. 0, or -1 if not. */
static int
prep_take(struct spool *sp)
{
	struct prep *p = &sp->prep;
	if (p->state != P_READY)
		return -1;
	assert(p->inflight == 0 && sp->cur == NULL);
	if (p->seq < sp->last_seq) {
		/* A segment was fallocated while this one was being prepared
		 * and took a later number. Records go to segments in seq order
		 * (recovery and readers rely on it), so this one is renamed
		 * past it; synchronous, like that fallback was, and at most
		 * once per fallback. */
		char from[32], to[32];
		sp_seg_name(from, sizeof(from), p->seq);
		sp_seg_name(to, sizeof(to), sp->next_seq);
		if (renameat(sp->dirfd, from, sp->dirfd, to) < 0) {
			prep_fail(sp, -errno, "rename");
			return -1;
		}
		p->seq = sp->next_seq++;
		int r = sp_dir_sync(sp);
		if (r < 0) {
			/* The new name may not survive a crash: not used
			 * (removed under its new name); the caller makes a
			 * segment the old way, which fsyncs again. */
			prep_fail(sp, r, "fsync of the directory after rename");
			return -1;
		}
	}
	int fd = p->fd;
	p->fd = -1;
	p->state = P_NONE;
	sp_seg_install(sp, fd, p->seq, p->size, p->zero);
	return 0;
}

/* Make sure there is a current segment with room for need bytes. */
int
sp_seg_ensure(struct spool *sp, uint64_t need)
{
	if (sp->cur != NULL && sp->cur->tail + need <= sp->cur->size)
		return 0;
	if (sp->cur != NULL && sp->cur->tail == 0 && sp->cur->size >= need)
		return 0;
	uint64_t size = sp->seg_size;
	if (need > size) /* a record larger than segment_size gets its own file */
		size = (need + SPOOL_SEG_ALIGN - 1) / SPOOL_SEG_ALIGN * SPOOL_SEG_ALIGN;
	if (size == sp->seg_size && sp->prep.state == P_READY) {
		/* The usual rotation: switch to the pre-zeroed segment. */
		sp_seg_retire(sp);
		if (prep_take(sp) == 0) {
			sp->retry_at = 0;
			return 0;
		}
	}
	if (sp->cur == NULL && sp->now < sp->retry_at)
		return sp->open_err;
	/* Nothing ready: do not wait for it, fallocate this one as before
	 * (counted in spool_segments_unzeroed); the preparation goes on. */
	sp_seg_retire(sp);
	int r = sp_seg_create(sp, size, false);
	if (r < 0) {
		sp->open_err = sp_map_errno(-r);
		sp->retry_at = sp->now + SPOOL_RETRY_NS;
		log_err("spool: cannot create segment in %s: %s; refusing mail for %llums", sp->dir,
			strerror(-r), (unsigned long long)(SPOOL_RETRY_NS / 1000000u));
		return sp->open_err;
	}
	sp->retry_at = 0;
	return 0;
}

